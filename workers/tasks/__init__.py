"""Celery tasks: thin wrappers that do the I/O around the pipeline stages."""

from workers import signals  # noqa: F401  (per-process set-up)
from workers.tasks import finalize, maintenance, prepare, reconcile, stream, transcribe, webhook  # noqa: F401  (registers the tasks)
