"""Bring a job's source recording to a local temp file, streaming, with a size cap."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from app.constants import source_key
from app.errors import BadSource, TransientError
from app.settings import Settings
from app.sources import UPLOAD_SCHEME, check_public_host, file_source_path
from app.storage import ObjectNotFound, ObjectStore, S3Store


def fetch_source(job_id: uuid.UUID, source_uri: str, filename: str, store: ObjectStore, settings: Settings,
                 dest: Path) -> Path:
    scheme = urlparse(source_uri).scheme.lower()
    if scheme == UPLOAD_SCHEME:
        try:
            store.download(source_key(job_id, filename), dest)
        except ObjectNotFound as e:
            raise BadSource("the uploaded file is no longer in storage") from e
    elif scheme == "s3":
        _fetch_s3(source_uri, settings, dest)
    elif scheme in ("http", "https"):
        _fetch_http(source_uri, settings, dest)
    elif scheme == "file" and settings.allow_file_sources:
        path = file_source_path(source_uri)
        if not path.is_file():
            raise BadSource(f"no such file: {path.name}")
        shutil.copyfile(path, dest)
    else:
        raise BadSource(f"unsupported source {scheme!r}")
    if dest.stat().st_size > settings.max_upload_bytes:
        raise BadSource(f"source is larger than the {settings.max_upload_bytes} byte limit")
    return dest


def _fetch_s3(uri: str, settings: Settings, dest: Path) -> None:
    parsed = urlparse(uri)
    endpoint = str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None
    store = S3Store(parsed.netloc, "", endpoint, settings.s3_region)
    key = unquote(parsed.path.lstrip("/"))
    try:
        store.download(key, dest)
    except ObjectNotFound as e:
        raise BadSource(f"source object {uri} not found") from e


def _fetch_http(uri: str, settings: Settings, dest: Path) -> None:
    import httpx

    parsed = urlparse(uri)
    # checked again here, not only at submission: DNS may answer differently now
    check_public_host(parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80), settings)
    try:
        with httpx.stream("GET", uri, timeout=30.0, follow_redirects=False) as resp:
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientError(f"source server answered {resp.status_code}")
            if resp.status_code != 200:
                raise BadSource(f"source server answered {resp.status_code}")
            size = 0
            with open(dest, "wb") as out:
                for block in resp.iter_bytes(1024 * 1024):
                    size += len(block)
                    if size > settings.max_upload_bytes:
                        raise BadSource(f"source is larger than the {settings.max_upload_bytes} byte limit")
                    out.write(block)
    except httpx.TransportError as e:
        raise TransientError(f"cannot download source: {type(e).__name__}") from e
