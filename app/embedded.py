"""The embedded one-shot behind ``asrq transcribe``: the same jobs, tasks and tables as a deployment, on
the embedded defaults (SQLite, kombu's filesystem broker, a local folder), with the one worker this
process starts itself (``python -m workers.launcher --embedded``, a real Celery worker)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.catalog.hub import resolve as hub_resolve
from app.constants import source_key, transcript_key
from app.db.models import Job, JobState
from app.db.session import session_scope
from app.errors import PermanentError
from app.jobs import NewJob, create_job, resolved_options
from app.local_worker import start_local_worker, stop_worker, worker_log
from app.messaging import send_prepare
from app.schemas import JobOptions
from app.settings import Settings, get_settings
from app.sources import UPLOAD_SCHEME, safe_filename
from app.storage import get_store


class EmbeddedError(Exception):
    """Why the one-shot could not run (a bad option, a model that is not installed, a worker that died)."""


@dataclass(frozen=True)
class Outcome:
    path: Path
    job_id: uuid.UUID
    state: JobState
    error: str | None


def job_options(engine: str | None, model: str | None, language: str | None,
                settings: Settings) -> tuple[JobOptions, Settings]:
    """The jobs' options and the settings they resolve against; refused (EmbeddedError) before anything runs."""
    pulled = model is not None and settings.models_dir is not None and not model.startswith(("/", "~", ".")) \
        and hub_resolve(settings.models_dir, model) is not None  # a hub id (iic/SenseVoiceSmall) someone pulled
    if model is not None and not model.startswith("bundled:") and not pulled and (
            "/" in model or model.startswith("~") or settings.models_dir is None):
        # a model folder on this machine: jobs name it by absolute path, as a deployment's ASRQ_MODEL does
        # (the API takes only bundled names and folders under ASRQ_MODELS_DIR from clients)
        folder = str(Path(model).expanduser().resolve())
        settings = settings.model_copy(update={"engine": engine or settings.engine, "model": folder})
        engine = model = None
    try:
        options = JobOptions(engine=engine, model=model, language=language)
        resolved_options(options, settings)  # a model that is not installed: refused before anything runs
    except ValidationError as e:
        raise EmbeddedError("; ".join(err["msg"] for err in e.errors())) from e
    except PermanentError as e:
        raise EmbeddedError(str(e)) from e
    return options, settings


def transcribe_files(files: list[Path], engine: str | None, model: str | None, language: str | None,
                     timeout_s: float, worker: subprocess.Popen | None = None) -> list[Outcome]:
    """Submit every file as a job, run the local worker until all of them finished, and return their
    outcomes in the order given (transcripts: ``read_transcript``). ``worker``: one already started with
    ``start_local_worker`` (the command starts it first thing; its start-up then overlaps all that comes
    before the first message); stopped here in any case."""
    log = worker_log(get_settings())
    finished = sent = False
    try:
        options, settings = job_options(engine, model, language, get_settings())
        if worker is None:
            worker = start_local_worker(log)
        from app.db.migrate import upgrade  # alembic: a second of imports, taken while the worker starts

        upgrade(settings.database_url)
        store = get_store()
        jobs: dict[uuid.UUID, Path] = {}
        with session_scope() as s:
            for path in files:
                job_id = uuid.uuid4()
                name = safe_filename(path.name)
                store.put_file(source_key(job_id, name), path)
                create_job(s, "local", NewJob(f"{UPLOAD_SCHEME}:{name}", name, options), settings, job_id)
                jobs[job_id] = path
        sent = True
        send_prepare(list(jobs))
        deadline = time.monotonic() + timeout_s
        while True:
            with session_scope() as s:
                states = {j.id: (j.state, j.error) for j in s.query(Job).filter(Job.id.in_(list(jobs)))}
            if all(st.terminal for st, _ in states.values()):
                finished = True
                break
            if worker.poll() is not None:
                raise EmbeddedError(f"the worker exited (rc={worker.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise EmbeddedError(f"timed out after {timeout_s:.0f} s")
            time.sleep(0.2)
    finally:
        if worker is not None:
            # a worker that got no message, or whose jobs all finished, holds nothing of this run
            stop_worker(worker, idle=finished or not sent)
    return [Outcome(path, job_id, *states[job_id]) for job_id, path in jobs.items()]


def read_transcript(job_id: uuid.UUID, fmt: str) -> tuple[bytes, dict]:
    """A finished job's transcript in ``fmt``, and its JSON document."""
    store = get_store()
    return store.get_bytes(transcript_key(job_id, fmt)), json.loads(store.get_bytes(transcript_key(job_id, "json")))


