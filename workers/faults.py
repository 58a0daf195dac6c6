"""Fault injection for the reliability tests, off unless ASRQ_FAULT_* variables are set.

They live in the product, not in a mock, so the tests exercise the real worker loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from workers.engines.base import EngineOutOfMemory


def crash_if_poisoned(filenames: Callable[[], list[str]]) -> None:
    """ASRQ_FAULT_CRASH_FILENAME=x: the worker process dies (as a segfault would) on a chunk of file x.
    ``filenames`` is only called when the fault is set, so the hot path pays no lookup."""
    marker = os.environ.get("ASRQ_FAULT_CRASH_FILENAME")
    if marker and any(marker in f for f in filenames()):
        os._exit(137)


def oom_if_too_big(batch_size: int) -> None:
    """ASRQ_FAULT_OOM_ABOVE=n: inference runs out of memory on any batch of more than n chunks."""
    limit = os.environ.get("ASRQ_FAULT_OOM_ABOVE")
    if limit and batch_size > int(limit):
        raise EngineOutOfMemory(f"injected: batch of {batch_size} > {limit}")


def exit_before_publish() -> None:
    """ASRQ_FAULT_EXIT_BEFORE_PUBLISH=1: the API process dies after committing a job, before publishing it."""
    if os.environ.get("ASRQ_FAULT_EXIT_BEFORE_PUBLISH") == "1":
        os._exit(137)
