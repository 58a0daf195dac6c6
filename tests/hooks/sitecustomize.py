"""Fault injection for the reliability tests (tests/test_faults.py): a test-only hook, never product code.

The processes the tests start have tests/hooks on PYTHONPATH (tests/services.base_env), so Python imports
this module when it starts. It does nothing unless an ASRQ_FAULT_* variable is set; then it wraps one
product function as that function's module is first imported, so the real worker and API loops run
with the fault in them:

- ASRQ_FAULT_EXIT_BEFORE_PUBLISH=1: the API process dies after committing a job, before publishing it.
- ASRQ_FAULT_CRASH_FILENAME=x: a transcribe worker dies (as a segfault would) on a batch holding a chunk
  of a file whose name contains x.
- ASRQ_FAULT_OOM_ABOVE=n: inference runs out of memory on any batch of more than n chunks.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable


def _after_import(name: str, patch: Callable[[object], None]) -> None:
    """Run ``patch(module)`` right after ``name`` is first imported (or now, if it already is)."""
    if name in sys.modules:
        patch(sys.modules[name])
        return

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module) -> None:  # noqa: ANN001
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, Finder())


def _exit_before_publish(routes) -> None:  # noqa: ANN001
    def die(*_args: object, **_kw: object) -> None:
        os._exit(137)

    routes.try_send = die


def _crash_on_file(marker: str) -> Callable[[object], None]:
    def patch(transcribe) -> None:  # noqa: ANN001
        from sqlalchemy import select

        from app.db.models import Job
        from app.db.session import session_scope

        run_guarded = transcribe._run_guarded

        def crash_if_poisoned(batch, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            with session_scope() as s:
                names = s.scalars(select(Job.filename).where(Job.id.in_({w.job_id for w in batch}))).all()
            if any(marker in n for n in names):
                os._exit(137)
            return run_guarded(batch, *args, **kw)

        transcribe._run_guarded = crash_if_poisoned

    return patch


def _oom_above(limit: int) -> Callable[[object], None]:
    def patch(transcribe) -> None:  # noqa: ANN001
        from workers.engines.base import EngineOutOfMemory

        run_splitting = transcribe.run_splitting_on_oom

        def run_splitting_on_oom(infer, items, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            def infer_or_oom(pairs):  # noqa: ANN001, ANN202
                if len(pairs) > limit:
                    raise EngineOutOfMemory(f"injected: batch of {len(pairs)} > {limit}")
                return infer(pairs)

            return run_splitting(infer_or_oom, items, *args, **kw)

        transcribe.run_splitting_on_oom = run_splitting_on_oom

    return patch


if os.environ.get("ASRQ_FAULT_EXIT_BEFORE_PUBLISH") == "1":
    _after_import("app.api.routes_jobs", _exit_before_publish)
if os.environ.get("ASRQ_FAULT_CRASH_FILENAME"):
    _after_import("workers.tasks.transcribe", _crash_on_file(os.environ["ASRQ_FAULT_CRASH_FILENAME"]))
if os.environ.get("ASRQ_FAULT_OOM_ABOVE"):
    _after_import("workers.tasks.transcribe", _oom_above(int(os.environ["ASRQ_FAULT_OOM_ABOVE"])))
