"""Queue names, task names and the storage key layout: the one place they are spelled."""

from __future__ import annotations

import uuid

QUEUE_PREPARE = "prepare"
QUEUE_TRANSCRIBE = "transcribe"
QUEUE_FINALIZE = "finalize"
QUEUE_MAINTENANCE = "maintenance"  # retention
# The reconciler and the webhook POSTs each have a queue and a pool of their own (workers/launcher.py): a
# pass must never wait behind prepares or thousands of webhook tries, and a receiver that never answers
# holds only webhook threads, never a prepare or a finalize.
QUEUE_RECONCILE = "reconcile"
QUEUE_WEBHOOK = "webhook"  # deliveries and the sweep that sends the due ones
ALL_QUEUES = (QUEUE_PREPARE, QUEUE_TRANSCRIBE, QUEUE_FINALIZE, QUEUE_MAINTENANCE, QUEUE_RECONCILE, QUEUE_WEBHOOK)
CPU_QUEUES = (QUEUE_PREPARE, QUEUE_FINALIZE, QUEUE_MAINTENANCE, QUEUE_RECONCILE, QUEUE_WEBHOOK)
# broker priority levels (Redis: one list per level, "<queue>\x06\x16<level>" for levels above 0; level 0,
# the queue's own list, is served first). app/fair_share.py decides each message's level
PRIORITY_STEPS = tuple(range(10))
# the index of sent messages (app/sent_index.py): one Redis hash per task, item id -> what was sent and when,
# so that the reconciler asks about the few items it suspects instead of reading every queue
SENT_INDEX_PREFIX = "asrq:sent:"
# who consumes each queue: one sorted set per queue, worker name -> when it last said so (app/consumers.py)
CONSUMERS_PREFIX = "asrq:consumers:"
SENT_HEADER = "asrq_sent"  # a message's publish time (epoch seconds), in its headers

TASK_PREPARE = "asrq.prepare"
TASK_TRANSCRIBE = "asrq.transcribe"
TASK_FINALIZE = "asrq.finalize"
TASK_RECONCILE = "asrq.reconcile"
TASK_WEBHOOK = "asrq.webhook"
TASK_WEBHOOK_SWEEP = "asrq.webhook_sweep"
TASK_MAINTENANCE = "asrq.maintenance"  # retention: decoded audio, sources, expired jobs

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
