"""Object storage behind one small interface: S3-compatible (boto3) or a local folder.

Keys are relative paths built by ``app.constants``; both backends refuse keys that could escape
their root (``..``, absolute paths, control characters).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from app.errors import PermanentError, TransientError
from app.settings import Settings, get_settings

#: objects up to this size move in one request; larger ones through s3transfer (multipart, parallel ranges).
#: s3transfer's own multipart threshold, so nothing that was one request before becomes several
SINGLE_REQUEST_BYTES = 8 * 1024 * 1024

_BAD_KEY = re.compile(r"[\x00-\x1f\x7f\\]")


def check_key(key: str) -> str:
    if not key or key.startswith("/") or _BAD_KEY.search(key) or ".." in key.split("/"):
        raise PermanentError(f"invalid object key {key!r}")
    return key


class ObjectNotFound(PermanentError):
    pass


class ObjectsNotDeleted(TransientError):
    """Storage answered a deletion but kept some objects (S3 DeleteObjects reports them per key, with HTTP
    200: an object lock or legal hold, a bucket policy, an internal error). Whatever named them must stay
    until a later try removes them."""

    def __init__(self, prefix: str, kept: list[tuple[str, str]]) -> None:
        self.prefix, self.kept = prefix, kept
        codes = sorted({code for _, code in kept})
        super().__init__(f"storage kept {len(kept)} object(s) under {prefix!r}: {', '.join(codes)}")


class ObjectStore(ABC):
    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None: ...

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object."""

    @abstractmethod
    def download(self, key: str, dest: Path) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    def delete(self, key: str) -> None:
        """Remove one object (missing is fine). One request where delete_prefix needs a listing first."""
        self.delete_prefix(key)

    @abstractmethod
    def ping(self) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as f:
            f.write(data)
            f.seek(0)
            self.put_stream(key, f, content_type)

    def get_bytes(self, key: str) -> bytes:
        return self.get_range(key, 0, self.size(key))

    def presign(self, key: str, expiry_s: int) -> str | None:
        """A time-limited direct link, where the backend has such a thing."""
        return None


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, f, content_type)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename: a reader never sees half an object, a rewrite is atomic
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
        os.replace(tmp, dest)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))
        except FileNotFoundError as e:
            raise ObjectNotFound(f"object {key} not found") from e

    def download(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError as e:
            raise ObjectNotFound(f"object {key} not found") from e

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as e:
            raise ObjectNotFound(f"object {key} not found") from e

    def delete_prefix(self, prefix: str) -> int:
        target = self._path(prefix.rstrip("/"))
        if target.is_dir():
            n = sum(1 for p in target.rglob("*") if p.is_file())
            kept: list[tuple[str, str]] = []

            def keep(_fn, path: str, exc: tuple) -> None:  # noqa: ANN001
                if not isinstance(exc[1], FileNotFoundError):  # gone already: what a deletion wants
                    kept.append((path, type(exc[1]).__name__))

            shutil.rmtree(target, onerror=keep)
            if kept:
                raise ObjectsNotDeleted(prefix, kept)
            return n
        if target.is_file():
            target.unlink(missing_ok=True)
            return 1
        return 0

    def ping(self) -> None:
        if not self.root.is_dir():
            raise TransientError(f"storage folder {self.root} is missing")


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"object not found in s3://{self.bucket}") from e
            if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise PermanentError(f"storage refused the request: {code}") from e
            raise TransientError(f"storage error: {code or e}") from e
        except BotoCoreError as e:
            raise TransientError(f"storage unreachable: {type(e).__name__}") from e

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        if path.stat().st_size <= SINGLE_REQUEST_BYTES:
            # one PUT: s3transfer's thread pool and futures cost more CPU than the transfer itself for the
            # PCM of a short clip (measured: ~16 ms of prepare's ~170 ms for an 11 s clip went there)
            with open(path, "rb") as f:
                self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=f, **extra)
            return
        self._call(self.client.upload_file, str(path), self.bucket, self._key(key), ExtraArgs=extra or None)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        if len(data) > SINGLE_REQUEST_BYTES:
            super().put_bytes(key, data, content_type)
            return
        # one PUT of the bytes in hand: through upload_fileobj (a spooled file, s3transfer's threads and
        # futures) a transcript's PUT cost twice the CPU (measured 3.8 against 2.0 ms on a 3 KB object)
        extra = {"ContentType": content_type} if content_type else {}
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        # upload_fileobj streams in multipart parts: a large upload never sits whole in memory
        self._call(self.client.upload_fileobj, stream, self.bucket, self._key(key), ExtraArgs=extra)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        resp = self._call(
            self.client.get_object, Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}"
        )
        return self._call(resp["Body"].read)

    def download(self, key: str, dest: Path) -> None:
        # one GET, streamed: download_file would send a HEAD first and hand the bytes through a thread
        # pool; parallel ranged GETs only pay off for objects far larger than one recording's PCM block
        resp = self._call(self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        if int(resp.get("ContentLength") or 0) > SINGLE_REQUEST_BYTES:
            resp["Body"].close()
            self._call(self.client.download_file, self.bucket, self._key(key), str(dest))
            return
        with open(dest, "wb") as out:
            body = resp["Body"]
            while block := self._call(body.read, 1 << 20):
                out.write(block)

    def size(self, key: str) -> int:
        return int(self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; ObjectsNotDeleted if storage kept any of them (DeleteObjects
        answers 200 and lists those it did not delete under Errors), once every page was tried."""
        n = 0
        kept: list[tuple[str, str]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)))):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                resp = self._call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": keys})
                errors = resp.get("Errors") or []
                kept += [(e.get("Key", "?"), e.get("Code", "unknown")) for e in errors]
                n += len(keys) - len(errors)
        if kept:
            raise ObjectsNotDeleted(prefix, kept)
        return n

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def ping(self) -> None:
        self._call(self.client.head_bucket, Bucket=self.bucket)

    def presign(self, key: str, expiry_s: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expiry_s
        )


def store_from_url(url: str, settings: Settings) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    endpoint = str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None
    return S3Store(parsed.netloc, parsed.path, endpoint, settings.s3_region)


@functools.lru_cache(maxsize=4)
def _store(url: str) -> ObjectStore:
    return store_from_url(url, get_settings())


def get_store() -> ObjectStore:
    return _store(get_settings().storage_url)


def source_store(bucket: str, endpoint_url: str | None, region: str) -> S3Store:
    """A store on a bucket that s3:// sources are read from, made once per process and bucket: building a
    boto3 client costs more CPU than the requests it then makes (measured: 6 ms against 2 ms for a GET)."""
    return _source_store(bucket, endpoint_url, region, os.getpid())


@functools.lru_cache(maxsize=16)
def _source_store(bucket: str, endpoint_url: str | None, region: str, _pid: int) -> S3Store:
    # keyed by the process too: a forked child builds its own client rather than share its parent's sockets
    return S3Store(bucket, "", endpoint_url, region)
