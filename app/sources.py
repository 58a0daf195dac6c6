"""Where a job's audio comes from: uploads, s3:// objects, https:// URLs (with SSRF checks), file://."""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from app.errors import BadSource
from app.settings import Settings

UPLOAD_SCHEME = "upload"
ALLOWED_SCHEMES = ("s3", "https", "http", "file")
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+", re.UNICODE)


def safe_filename(name: str | None, fallback: str = "audio") -> str:
    """A file name that is safe as one path component: no separators, no '..', no control characters."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C")
    base = _UNSAFE_NAME.sub("_", base).strip(" .")[:200]
    return base or fallback


def validate_source_uri(uri: str, settings: Settings) -> str:
    """Check a client-given source URI; raise BadSource with a reason a client can act on."""
    if any(ord(c) < 32 for c in uri):
        raise BadSource("source_uri contains control characters")
    try:
        parsed = urlparse(uri)
        port = parsed.port  # raises on a port out of range or not a number
    except ValueError as e:
        raise BadSource(f"malformed source_uri: {e}") from e
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BadSource(f"unsupported source_uri scheme {scheme or '(none)'!r}; use s3:// or https://")
    if scheme == "s3":
        if not parsed.netloc or not parsed.path.strip("/"):
            raise BadSource("s3 source_uri must be s3://bucket/key")
        if ".." in unquote(parsed.path).split("/"):
            raise BadSource("source_uri key must not contain '..'")
    elif scheme in ("http", "https"):
        if scheme == "http" and not settings.allow_private_sources:
            raise BadSource("plain http:// sources are refused; use https://")
        if not parsed.hostname:
            raise BadSource("source_uri has no host")
        check_public_host(parsed.hostname, port or (443 if scheme == "https" else 80), settings)
    elif scheme == "file" and not settings.allow_file_sources:
        raise BadSource("file:// sources are disabled on this server")
    return uri


def check_public_host(host: str, port: int, settings: Settings) -> None:
    """Refuse hosts that resolve to loopback, private, link-local or reserved addresses (SSRF)."""
    if settings.allow_private_sources:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:  # UnicodeError: a name IDNA cannot encode (empty/long label)
        raise BadSource(f"cannot resolve source host {host!r}") from e
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise BadSource("source_uri points at a private, loopback or link-local address")


def filename_from_uri(uri: str) -> str:
    return safe_filename(unquote(urlparse(uri).path.rsplit("/", 1)[-1]))


def file_source_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))
