"""Queue names, task names and the storage key layout: the one place they are spelled."""

from __future__ import annotations

import uuid

QUEUE_PREPARE = "prepare"
QUEUE_TRANSCRIBE = "transcribe"
QUEUE_FINALIZE = "finalize"
QUEUE_MAINTENANCE = "maintenance"
ALL_QUEUES = (QUEUE_PREPARE, QUEUE_TRANSCRIBE, QUEUE_FINALIZE, QUEUE_MAINTENANCE)
CPU_QUEUES = (QUEUE_PREPARE, QUEUE_FINALIZE, QUEUE_MAINTENANCE)

TASK_PREPARE = "asrq.prepare"
TASK_TRANSCRIBE = "asrq.transcribe"
TASK_FINALIZE = "asrq.finalize"
TASK_RECONCILE = "asrq.reconcile"
TASK_WEBHOOK = "asrq.webhook"

TRANSCRIPT_FORMATS = ("json", "srt", "vtt", "txt")

# PCM layout of the prepared audio object: what ranged reads of chunks depend on
PCM_SAMPLE_RATE = 16000
PCM_BYTES_PER_SAMPLE = 2  # s16le mono


def job_prefix(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/"


def source_key(job_id: uuid.UUID, filename: str) -> str:
    return f"jobs/{job_id}/source/{filename}"


def pcm_key(job_id: uuid.UUID) -> str:
    return f"jobs/{job_id}/audio.s16le"


def transcript_key(job_id: uuid.UUID, fmt: str) -> str:
    return f"jobs/{job_id}/transcript.{fmt}"
