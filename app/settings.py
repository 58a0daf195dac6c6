"""One settings class for every process (API, workers, CLI), read from ASRQ_* environment variables.

The defaults are the embedded mode: SQLite, a broker with no server (kombu's filesystem transport),
a local folder for objects and the bundled offline Whisper model, all under ``ASRQ_HOME``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_WHISPER = "bundled:tiny.en"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASRQ_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".asrq")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: AnyHttpUrl | None = None
    s3_region: str = "us-east-1"

    # engine used when a job does not name one
    engine: Literal["whisper", "funasr"] = "whisper"
    model: str = BUNDLED_WHISPER
    models_dir: Path | None = None  # where FunASR model folders live, for jobs naming a model by folder name
    device: str = "cpu"  # "cpu", "cuda" (the worker's pinned card is always cuda:0 of its own view)
    fp16: bool = True  # on GPU only
    cpu_threads: int = Field(0, ge=0)  # threads the engine uses on CPU in all; 0: every core this process may use
    # chunks a CPU worker decodes at once, each on its own replica thread (weights shared); 0: one per
    # thread. Measured on 2 cores, tiny.en int8: two one-thread decoders 1.5x the chunks/s of one
    # two-thread decoder (small matrices leave intra-op threads idle; whole chunks in parallel do not)
    cpu_decoders: int = Field(0, ge=0)

    # chunking
    max_chunk_s: float = Field(30.0, gt=2.0, le=60.0)
    hard_cut_overlap_s: float = Field(1.0, ge=0.0, le=5.0)
    vad_window_s: float = Field(60.0, ge=5.0)
    vad_max_end_silence_ms: int = 300

    # batching
    batch_audio_s: float = Field(240.0, gt=0)  # audio-seconds per inference batch
    batch_max_requests: int = Field(64, ge=1)  # chunk messages gathered per flush
    batch_flush_interval_s: float = Field(0.25, gt=0)

    # delivery and reliability
    max_attempts: int = Field(3, ge=1)
    chunk_lease_s: float = Field(300.0, gt=0)  # a batch takes seconds; a lease this old means a dead worker
    reconcile_interval_s: float = Field(30.0, gt=0)
    reconcile_stale_s: float = Field(300.0, gt=0)
    # measured on 2 CPU cores: prepare of a 24-minute recording 6.9 s (about 175 s for 10 hours),
    # finalize under 0.1 s; the limits leave ten times that
    prepare_time_limit_s: float = Field(1800.0, gt=0)
    finalize_time_limit_s: float = Field(300.0, gt=0)
    visibility_timeout_s: float = Field(7200.0, gt=0)
    retry_backoff_max_s: float = 300.0

    # API
    api_keys: str = ""  # comma-separated "tenant:secret" (or "secret" for tenant "default")
    max_upload_bytes: int = 2 * 1024**3
    max_batch_jobs: int = 10_000
    allow_private_sources: bool = False  # lets source_uri point at loopback/private hosts (tests, labs)
    allow_file_sources: bool = False
    presign_expiry_s: int = 3600
    webhook_timeout_s: float = 10.0

    @model_validator(mode="after")
    def _embedded_defaults(self) -> "Settings":
        home = self.home.expanduser()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'asrq.db'}"
        if not self.broker_url:
            self.broker_url = f"filesystem://{home / 'broker'}"
        if not self.storage_url:
            self.storage_url = f"file://{home / 'objects'}"
        return self

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, v: str) -> str:
        if v and not v.startswith(("sqlite:", "postgresql")):
            raise ValueError("ASRQ_DATABASE_URL must be sqlite:///... or postgresql+psycopg2://...")
        return v

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "filesystem://", "amqp://", "sqla+")):
            raise ValueError("ASRQ_BROKER_URL must be redis://, amqp://, filesystem:// or sqla+...")
        return v

    @field_validator("storage_url")
    @classmethod
    def _check_storage(cls, v: str) -> str:
        if v and not v.startswith(("s3://", "file://")):
            raise ValueError("ASRQ_STORAGE_URL must be s3://bucket/prefix or file:///folder")
        if v.startswith("s3://") and not v[5:].split("/", 1)[0]:
            raise ValueError("ASRQ_STORAGE_URL s3:// needs a bucket name")
        return v

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    def api_key_entries(self) -> list[tuple[str, str]]:
        """(tenant, secret) pairs from ASRQ_API_KEYS."""
        out = []
        for item in filter(None, (s.strip() for s in self.api_keys.split(","))):
            tenant, sep, secret = item.partition(":")
            out.append((tenant, secret) if sep else ("default", tenant))
        return out


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
