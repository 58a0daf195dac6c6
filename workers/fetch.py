"""Bring a job's source recording to a local temp file, streaming, with a size cap applied while the bytes
arrive (a size announced up front is checked first, but a source may lie or grow)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from app.constants import source_key
from app.db.models import Job
from app.db.session import session_scope
from app.errors import BadSource, TransientError
from app.settings import Settings
from app.sources import UPLOAD_SCHEME, check_file_source, check_s3_source, s3_location
from app.storage import ObjectNotFound, ObjectStore, check_key, source_store
from workers.pinned_http import pinned_stream

BLOCK = 1024 * 1024


def fetch_source(job_id: uuid.UUID, source_uri: str, filename: str, store: ObjectStore, settings: Settings,
                 dest: Path, tenant: str | None = None) -> Path:
    scheme = urlparse(source_uri).scheme.lower()
    if scheme == UPLOAD_SCHEME:
        try:
            store.download(source_key(job_id, filename), dest)
        except ObjectNotFound as e:
            raise BadSource("the uploaded file is no longer in storage") from e
    elif scheme == "s3":
        # checked again here, not only at submission: a row queued before the allow-list changed must
        # not be read under the old rules
        check_s3_source(source_uri, settings, tenant if tenant is not None else _tenant_of(job_id))
        _fetch_s3(source_uri, settings, dest)
    elif scheme in ("http", "https"):
        _fetch_http(source_uri, settings, dest)
    elif scheme == "file":
        _fetch_file(check_file_source(source_uri, settings), settings, dest)
    else:
        raise BadSource(f"unsupported source {scheme!r}")
    if dest.stat().st_size > settings.max_upload_bytes:
        raise _too_large(settings.max_upload_bytes)
    return dest


def _too_large(limit: int) -> BadSource:
    return BadSource(f"source is larger than the {limit} byte limit")


def _tenant_of(job_id: uuid.UUID) -> str | None:
    with session_scope() as s:
        job = s.get(Job, job_id)
        return job.tenant if job is not None else None


def copy_capped(blocks: Iterable[bytes], dest: Path, limit: int) -> int:
    """Write ``blocks`` to ``dest``, giving up as soon as more than ``limit`` bytes arrived."""
    size = 0
    with open(dest, "wb") as out:
        for block in blocks:
            size += len(block)
            if size > limit:
                raise _too_large(limit)
            out.write(block)
    return size


def _fetch_s3(uri: str, settings: Settings, dest: Path) -> None:
    bucket, key = s3_location(uri)
    endpoint = str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None
    store = source_store(bucket, endpoint, settings.s3_region)
    try:
        # one GET, no HEAD first: its answer states the size before any of the body is read
        resp = store._call(store.client.get_object, Bucket=bucket, Key=check_key(key))
    except ObjectNotFound as e:
        raise BadSource(f"source object {uri} not found") from e
    body = resp["Body"]
    try:
        if int(resp.get("ContentLength") or 0) > settings.max_upload_bytes:
            raise _too_large(settings.max_upload_bytes)  # refused before any of it was read
        # errors while streaming map like any other storage call (a dropped connection is transient)
        store._call(copy_capped, body.iter_chunks(BLOCK), dest, settings.max_upload_bytes)
    finally:
        body.close()


def _fetch_file(path: Path, settings: Settings, dest: Path) -> None:
    try:
        with open(path, "rb") as src:
            st = os.fstat(src.fileno())  # of what was opened, not of what the name points at later
            if not stat.S_ISREG(st.st_mode):
                raise BadSource(f"not a regular file: {path.name}")
            if st.st_size > settings.max_upload_bytes:
                raise _too_large(settings.max_upload_bytes)
            copy_capped(iter(lambda: src.read(BLOCK), b""), dest, settings.max_upload_bytes)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise BadSource(f"no such file: {path.name}") from e
    except PermissionError as e:
        raise BadSource(f"cannot read file: {path.name}") from e


def _fetch_http(uri: str, settings: Settings, dest: Path) -> None:
    import httpx

    try:
        with pinned_stream("GET", uri, settings, settings.source_timeout_s) as resp:
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientError(f"source server answered {resp.status_code}")
            if resp.status_code != 200:
                raise BadSource(f"source server answered {resp.status_code}")
            announced = resp.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > settings.max_upload_bytes:
                raise _too_large(settings.max_upload_bytes)
            copy_capped(resp.iter_bytes(BLOCK), dest, settings.max_upload_bytes)
    except httpx.TransportError as e:
        raise TransientError(f"cannot download source: {type(e).__name__}") from e
