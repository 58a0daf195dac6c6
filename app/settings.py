"""One settings class for every process (API, workers, CLI), read from ASRQ_* environment variables.

The defaults are the embedded mode: SQLite, a broker with no server (kombu's filesystem transport),
a local folder for objects and the bundled offline Whisper model, all under ``ASRQ_HOME``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import AnyHttpUrl, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.hotword_list import parse_hotwords_text

BUNDLED_WHISPER = "bundled:tiny.en"
S3_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # permissive: legacy names too


class S3SourceRule(NamedTuple):
    tenant: str | None  # None: every tenant
    bucket: str
    prefix: tuple[str, ...]  # key segments a source must lie under; () is the whole bucket


@functools.lru_cache(maxsize=16)
@functools.lru_cache(maxsize=8)
def parse_tenant_weights(value: str) -> dict[str, float]:
    """ "acme=2,globex=0.5" -> {"acme": 2.0, "globex": 0.5}; weights must be positive."""
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in value.split(","))):
        tenant, sep, weight = item.partition("=")
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if not sep or not tenant.strip() or not (w > 0 and math.isfinite(w)):
            raise ValueError(f"ASRQ_TENANT_WEIGHTS: {item!r} is not tenant=positive weight")
        out[tenant.strip()] = w
    return out


def parse_s3_source_allow(value: str) -> tuple[S3SourceRule, ...]:
    """ASRQ_S3_SOURCE_ALLOW -> rules; raises ValueError naming the entry it cannot read."""
    rules = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        # a key may hold '=' (date=2024-01-01/): only text before the first '/' can name a tenant
        tenant, sep, location = entry.partition("=")
        if not sep or "/" in tenant:
            tenant, location = "", entry
        elif not tenant.strip():
            raise ValueError(f"ASRQ_S3_SOURCE_ALLOW entry {entry!r}: empty tenant before '='")
        location = location.strip().removeprefix("s3://")
        bucket, _, prefix = location.partition("/")
        segments = tuple(prefix.strip("/").split("/")) if prefix.strip("/") else ()
        if not S3_BUCKET_NAME.match(bucket) or any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"ASRQ_S3_SOURCE_ALLOW entry {entry!r}: expected [tenant=]bucket[/folder/]")
        rules.append(S3SourceRule(tenant.strip() or None, bucket, segments))
    return tuple(rules)


@functools.lru_cache(maxsize=4)
def _hotwords_file(path: str, _mtime_ns: int) -> tuple[str, ...]:
    return tuple(parse_hotwords_text(Path(path).read_bytes(), f"ASRQ_HOTWORDS_FILE {path}"))


def read_hotwords_file(path: Path) -> tuple[str, ...]:
    """The entries of a hotwords file, read again only when it changes; OSError/ValueError say why not."""
    return _hotwords_file(str(path), path.stat().st_mtime_ns)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASRQ_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".asrq")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: AnyHttpUrl | None = None
    s3_region: str = "us-east-1"

    # engine used when a job does not name one: an installed engine plug-in (app/catalog/plugins.py),
    # checked when a process starts (check_engine_setting), not here: settings know no plug-ins
    engine: str = "whisper"
    model: str = BUNDLED_WHISPER
    models_dir: Path | None = None  # where FunASR model folders live, for jobs naming a model by folder name
    # punctuation for jobs that name none (app/catalog/postprocess.py): a FunASR CT-Transformer folder (a name
    # under ASRQ_MODELS_DIR, or a path), or "none". Engines that punctuate themselves (whisper) never get one
    punc_model: str = Field("none", min_length=1)
    device: str = "cpu"  # "cpu", "cuda" (the worker's pinned card is always cuda:0 of its own view)
    # the models a worker process keeps loaded, in MiB in all (workers/engines/registry.py): the least
    # recently used are unloaded to make room. Unset: a quarter of the host's memory, half the card's on CUDA
    engine_cache_mb: float | None = Field(None, gt=0)
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
    # how prepare runs FSMN-VAD: "onnx", a numpy fbank and the bundled ONNX network (workers/vad_onnx.py,
    # no torch); "torch", FunASR's own fbank and network (workers/vad.py). Same segments (within one
    # 10 ms frame, tests/test_vad_onnx.py); onnx costs a third of the CPU
    vad_runtime: Literal["onnx", "torch"] = "onnx"

    # batching
    # audio-seconds per inference batch on CPU; on CUDA the budget is sized from the card's free memory
    # and the model's memory cost, measured after load (workers/engines/base.py), and this is the
    # fallback when it cannot be measured
    batch_audio_s: float = Field(240.0, gt=0)
    # share of the card's free memory (after the model is loaded) one batch may use; the rest is margin
    # for what the measurement misses, and an out-of-memory batch is still halved
    gpu_memory_fraction: float = Field(0.8, gt=0, le=1)
    batch_max_requests: int = Field(64, ge=1)  # chunk messages gathered per flush
    batch_flush_interval_s: float = Field(0.25, gt=0)

    # delivery and reliability
    max_attempts: int = Field(3, ge=1)
    # A claimed chunk's lease, renewed by its worker's heartbeat every quarter of it while inference
    # runs: a worker that died hands its chunks on within this long.
    chunk_lease_s: float = Field(60.0, gt=0)
    reconcile_interval_s: float = Field(30.0, gt=0)
    # each worker says every this long which queues it consumes (app/consumers.py); one silent for three
    # of these counts as gone, and a queue that nobody consumes shows as asrq_queue_consumers 0
    consumer_beat_s: float = Field(15.0, gt=0)
    # A job PREPARING/FINALIZING holds a lease this long (renewed the same way), and a job or chunk
    # still this long is checked against the broker: re-sent if its message was lost.
    reconcile_stale_s: float = Field(60.0, gt=0)
    # the API answers a batch before it publishes its messages, and promises them first: a job whose
    # publish is promised does not count as lost for this long (app/sent_index.py); past it, the API that
    # promised is taken for dead and the reconciler sends what is missing
    publish_promise_s: float = Field(120.0, gt=0)
    # a transcribe task that holds its chunks longer than this is hung: its heartbeat stops
    transcribe_time_limit_s: float = Field(1800.0, gt=0)
    # measured on 2 CPU cores: prepare of a 24-minute recording 6.9 s (about 175 s for 10 hours),
    # finalize under 0.1 s; the limits leave ten times that. Punctuation and ITN run in finalize, on the
    # whole text: measured on the same 2 cores, a ct-punc-sized CT-Transformer 0.7-0.9 ms and zh ITN up
    # to 0.7 ms a character (only clauses with a numeral go through it; 3-4x both on a busy box), so 10
    # hours of Mandarin (~150,000 characters) take minutes: finalize gets the prepare limit
    prepare_time_limit_s: float = Field(1800.0, gt=0)
    finalize_time_limit_s: float = Field(1800.0, gt=0)
    # punctuated jobs one finalize takes together, so their texts go through the punctuation model in one
    # call (measured, a ct-punc-sized model on 2 cores: 8 jobs per call cost 95 ms each, one per call 231 ms)
    finalize_group_max: int = Field(8, ge=1)
    # ... within bounds, so the mates' work never eats the time limit of the job whose task it is: mates
    # whose texts would bring the group's past this many characters are given back at once (punctuation and
    # ITN cost up to ~1.6 ms a character together, 3-4x that on a busy box), and once the task has run this
    # long no further mate is started (the rest are given back to their own finalize)
    finalize_group_chars_max: int = Field(20000, ge=0)
    finalize_group_budget_s: float = Field(120.0, ge=0)
    # how long Redis keeps a message delivered to a worker before handing it to another: it bounds the
    # wait of work whose worker died before taking it. A twin of a still-running task is harmless
    # (leases and claims make it a no-op), so this need not exceed the longest task.
    visibility_timeout_s: float = Field(1800.0, gt=0)
    retry_backoff_max_s: float = 300.0

    # deployment-wide hotwords: a UTF-8 text file, one per line (at most 1,000), added after each job's own
    # (deduplicated, capped at 1,000) on models that take hotwords (app/catalog/hotwords.py)
    hotwords_file: Path | None = None

    # fair share between tenants (app/fair_share.py). A tenant's standing is its recent usage (audio
    # seconds, halved every half-life) plus its audio in flight, per unit of weight; standings below
    # step_s share the top tier, then one tier per factor 10. A job not yet decoded counts nominal_job_s.
    fair_share_step_s: float = Field(600.0, gt=0)
    fair_share_half_life_s: float = Field(3600.0, gt=0)
    fair_share_nominal_job_s: float = Field(60.0, gt=0)
    # comma-separated "tenant=weight" (default 1): a weight of 2 gets twice the share of a weight of 1
    tenant_weights: str = ""
    # a tenant's jobs not yet finished, beyond which a submission gets 429 (0: no cap)
    max_queued_jobs_per_tenant: int = Field(100_000, ge=0)

    # API
    api_keys: str = ""  # comma-separated "tenant:secret" (or "secret" for tenant "default")
    # how long a key lookup is trusted: a revoked key, or the first key added to an open API, takes
    # effect within this long
    auth_cache_ttl_s: float = Field(30.0, gt=0)
    auth_cache_max_keys: int = Field(10_000, ge=1)  # LRU size; bad tokens have their own, so they evict no good key
    max_upload_bytes: int = 2 * 1024**3  # multipart uploads
    # every other body (JSON): 10,000 jobs of about 1.6 KB each (URI, webhook, options) fit
    max_json_bytes: int = Field(16 * 1024**2, ge=1024)
    max_batch_jobs: int = 10_000
    # CA bundle (PEM file) for https sources and webhooks, where they use a private CA; default: certifi's
    source_ca_bundle: Path | None = None
    allow_private_sources: bool = False  # lets source_uri point at loopback/private hosts (tests, labs)
    allow_file_sources: bool = False
    # where s3:// sources may be read from, with the service's own credentials; anything else is refused.
    # Comma-separated "bucket" or "bucket/folder/" for every tenant, "tenant=bucket/folder/" for one
    # tenant (on top of the shared entries). The service's own storage is refused even if listed.
    s3_source_allow: str = ""
    source_timeout_s: float = Field(30.0, gt=0)  # connect, and each read, of an https:// source download
    # the API's lookups of https source and webhook hosts (SSRF checks): all the distinct hosts of one
    # request together, side by side; a resolver slower than this answers 503 instead of holding a thread
    dns_timeout_s: float = Field(5.0, gt=0)
    presign_expiry_s: int = 3600
    # each phase (connect, send, response headers) of the one POST a delivery try makes: a slow receiver
    # holds one thread of the webhook pool for a few times this, not more
    webhook_timeout_s: float = Field(5.0, gt=0)
    # webhook tries in flight at once per webhook pool (threads: they wait on the network, not the CPU), so a
    # receiver that never answers costs its tries' timeouts side by side, not one after another
    webhook_concurrency: int = Field(32, ge=1)
    # job-end webhooks (app/webhooks.py): the wait before each retry, jittered +-20% (Standard
    # Webhooks' schedule: a receiver down for a day still gets the event), the last wait repeated up to
    # the try limit; then the delivery is failed
    webhook_retry_schedule_s: str = "5,300,1800,7200,18000,36000"
    webhook_max_tries: int = Field(8, ge=1)  # the last try 27-33 hours after the first
    # how often the beat's sweep sends the deliveries that are due, and how many per run
    webhook_sweep_interval_s: float = Field(5.0, gt=0)
    webhook_sweep_batch: int = Field(500, ge=1)
    # Prometheus: how long the API's /metrics reuses its reading of job states and queue depths
    metrics_cache_s: float = Field(5.0, ge=0)
    # bearer token the API's /metrics asks for; unset: /metrics answers loopback clients only
    metrics_token: str = ""

    # retention (workers/tasks/maintenance.py). A finished job's decoded PCM is removed at once; an
    # uploaded source is kept this many days after the job finished (to re-run it), and the
    # transcript and the job's rows this many days, after which nothing of the job remains but its
    # tenant's daily usage totals
    source_retention_days: float = Field(7.0, gt=0)
    retention_days: float = Field(30.0, gt=0)
    maintenance_interval_s: float = Field(60.0, gt=0)
    # jobs one maintenance transaction handles: each batch is short, so a killed run loses little and a
    # backlog of expired jobs is worked off in steps that never hold locks for long
    maintenance_batch_jobs: int = Field(500, ge=1)
    maintenance_max_batches: int = Field(40, ge=1)  # per run; the next run takes the rest

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

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _check_webhook_schedule(cls, v: str) -> str:
        try:
            delays = [float(x) for x in v.split(",") if x.strip()]
        except ValueError as e:
            raise ValueError("ASRQ_WEBHOOK_RETRY_SCHEDULE_S: comma-separated seconds, e.g. 5,300,1800") from e
        if not delays or any(d < 0 for d in delays):
            raise ValueError("ASRQ_WEBHOOK_RETRY_SCHEDULE_S: at least one delay, none negative")
        return v

    def webhook_retry_delays_s(self) -> list[float]:
        return [float(x) for x in self.webhook_retry_schedule_s.split(",") if x.strip()]

    @field_validator("tenant_weights")
    @classmethod
    def _check_tenant_weights(cls, v: str) -> str:
        parse_tenant_weights(v)
        return v

    def tenant_weight(self, tenant: str) -> float:
        return parse_tenant_weights(self.tenant_weights).get(tenant, 1.0)

    @field_validator("s3_source_allow")
    @classmethod
    def _check_s3_source_allow(cls, v: str) -> str:
        parse_s3_source_allow(v)
        return v

    @field_validator("hotwords_file")
    @classmethod
    def _check_hotwords_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            v = v.expanduser()
            try:
                read_hotwords_file(v)
            except OSError as e:
                raise ValueError(f"ASRQ_HOTWORDS_FILE {v}: {e.strerror or e}") from e
        return v

    def default_hotwords(self) -> tuple[str, ...]:
        if self.hotwords_file is None:
            return ()
        try:
            return read_hotwords_file(self.hotwords_file)
        except (OSError, ValueError) as e:
            # it was valid at start-up: jobs keep flowing, without the defaults, rather than all failing
            logging.getLogger("asrq.settings").warning("ASRQ_HOTWORDS_FILE unusable now, not applied: %s", e)
            return ()

    def s3_source_rules(self) -> tuple[S3SourceRule, ...]:
        return parse_s3_source_allow(self.s3_source_allow)

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
