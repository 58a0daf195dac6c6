"""Request and response models of the HTTP API, and the job options with their defaults."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.catalog.plugins import unknown_engine_reason
from app.constants import TRANSCRIPT_FORMATS
from app.hotword_list import MAX_HOTWORDS, check_hotword

Format = Literal["json", "srt", "vtt", "txt"]

class JobOptions(BaseModel):
    """Per-job options. Unknown fields are refused (422), never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    # an installed engine plug-in (app/catalog/plugins.py); None: the deployment's default
    engine: str | None = Field(None, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    model: str | None = Field(None, max_length=255)
    language: str | None = Field(None, max_length=16, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")
    hotwords: list[str] = Field(default_factory=list, max_length=MAX_HOTWORDS)
    formats: list[Format] = Field(default_factory=lambda: list(TRANSCRIPT_FORMATS))
    # fair share (app/fair_share.py): within a tenant's standing, high goes before normal before low
    priority: Literal["low", "normal", "high"] = "normal"
    # a CT-Transformer folder under ASRQ_MODELS_DIR, or "none"; None: the deployment's default for the
    # engine (ASRQ_PUNC_MODEL; none for engines that punctuate themselves). Checked at submission (422)
    punc_model: str | None = Field(None, min_length=1, max_length=255)
    # numbers, dates, money, percentages written as digits; None: on for Mandarin (zh) only
    itn: bool | None = None

    @field_validator("hotwords")
    @classmethod
    def _clean_hotwords(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(check_hotword(w) for w in v))

    @field_validator("engine")
    @classmethod
    def _installed_engine(cls, v: str | None) -> str | None:
        if v is not None and (reason := unknown_engine_reason(v)) is not None:
            raise ValueError(reason)
        return v

    @field_validator("punc_model")
    @classmethod
    def _safe_punc_model(cls, v: str | None) -> str | None:
        # like model: a folder the operator installed, never an arbitrary path
        if v is not None and (v.startswith(("/", "~")) or ".." in v.split("/") or not v.isprintable()):
            raise ValueError("punc_model must be 'none' or a folder name under the models directory")
        return v

    @field_validator("model")
    @classmethod
    def _safe_model(cls, v: str | None) -> str | None:
        # a client names a model the operator installed (bundled:…, or a folder under ASRQ_MODELS_DIR);
        # it never points a worker at an arbitrary path
        if v is not None and (v.startswith(("/", "~")) or ".." in v.split("/") or any(ord(c) < 32 for c in v)):
            raise ValueError("model must be a bundled model or a folder name under the models directory")
        return v


class JobCreate(JobOptions):
    source_uri: str = Field(..., min_length=1, max_length=4096)
    webhook_url: str | None = Field(None, max_length=2048)
    idempotency_key: str | None = Field(None, max_length=255)


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(..., min_length=1)


class Progress(BaseModel):
    chunks_done: int
    chunks_total: int | None
    audio_s: float | None


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    transcribing_at: datetime | None
    finished_at: datetime | None
    queued_s: float | None
    processing_s: float | None


class JobOut(BaseModel):
    id: str
    state: str
    source_uri: str
    filename: str
    options: dict
    progress: Progress
    duration_s: float | None
    language: str | None
    error: str | None
    timings: Timings
    webhook_url: str | None = None
    batch_id: str | None = None  # the batch submit that created it


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    job_ids: list[str]
    count: int
    batch_id: str | None = None  # follow the batch with GET /v1/jobs?batch=


# ---- bulk status and usage (issue 12) ----------------------------------------------------------------------------

class StatusQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the route refuses more than ASRQ_MAX_BATCH_JOBS (413), as a batch submit does
    ids: list[uuid.UUID] = Field(..., min_length=1)
    full: bool = False  # whole job records (as GET /v1/jobs/{id}) instead of the status fields


class JobStatusOut(BaseModel):
    id: str
    state: str
    progress: Progress
    error: str | None
    finished_at: datetime | None


class StatusOut(BaseModel):
    jobs: list[JobStatusOut | JobOut]
    not_found: list[str]  # unknown ids and other tenants' jobs alike
    counts: dict[str, int]  # jobs found, by state


class UsageDayOut(BaseModel):
    day: date
    jobs_submitted: int
    audio_submitted_s: float
    jobs_completed: int
    audio_transcribed_s: float
    engine_s: float


class UsageTotalOut(BaseModel):
    jobs_submitted: int
    audio_submitted_s: float
    jobs_completed: int
    audio_transcribed_s: float
    engine_s: float


class UsageOut(BaseModel):
    tenant: str
    start: date = Field(..., serialization_alias="from")
    end: date = Field(..., serialization_alias="to")
    days: list[UsageDayOut]
    total: UsageTotalOut
