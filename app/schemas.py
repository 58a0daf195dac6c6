"""Request and response models of the HTTP API, and the job options with their defaults."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.constants import TRANSCRIPT_FORMATS

Format = Literal["json", "srt", "vtt", "txt"]


class JobOptions(BaseModel):
    """Per-job options. Unknown fields are refused (422), never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    # an installed engine plug-in (workers/engines/registry.py); None: the deployment's default
    engine: str | None = Field(None, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    model: str | None = Field(None, max_length=255)
    language: str | None = Field(None, max_length=16, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")
    hotwords: list[str] = Field(default_factory=list, max_length=100)
    formats: list[Format] = Field(default_factory=lambda: list(TRANSCRIPT_FORMATS))

    @field_validator("hotwords")
    @classmethod
    def _clean_hotwords(cls, v: list[str]) -> list[str]:
        out = []
        for w in v:
            w = w.strip()
            if not w or len(w) > 64 or any(ord(c) < 32 for c in w):
                raise ValueError("hotwords must be 1-64 printable characters each")
            out.append(w)
        return out

    @field_validator("engine")
    @classmethod
    def _installed_engine(cls, v: str | None) -> str | None:
        from workers.engines.registry import unknown_engine_reason

        if v is not None and (reason := unknown_engine_reason(v)) is not None:
            raise ValueError(reason)
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


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    job_ids: list[str]
    count: int
