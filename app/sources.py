"""Where a job's audio comes from: uploads, s3:// objects (allow-listed), https:// URLs (SSRF checks),
file://; and where completion webhooks may go."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import unicodedata
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from app.errors import BadSource, TransientError
from app.settings import S3_BUCKET_NAME, Settings

UPLOAD_SCHEME = "upload"
ALLOWED_SCHEMES = ("s3", "https", "http", "file")
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+", re.UNICODE)

#: (host, port) -> every address it resolves to; BadSource if it does not exist, TransientError if DNS is down
Lookup = Callable[[str, int], list[str]]


def safe_filename(name: str | None, fallback: str = "audio") -> str:
    """A file name that is safe as one path component: no separators, no '..', no control characters."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C")
    base = _UNSAFE_NAME.sub("_", base).strip(" .")[:200]
    return base or fallback


def _parse(uri: str, what: str):  # noqa: ANN202
    if any(ord(c) < 32 for c in uri):
        raise BadSource(f"{what} contains control characters")
    try:
        parsed = urlparse(uri)
        port = parsed.port  # raises on a port out of range or not a number
    except ValueError as e:
        raise BadSource(f"malformed {what}: {e}") from e
    return parsed, port


def lookup_target(url: str, settings: Settings) -> tuple[str, int] | None:
    """The (host, port) whose addresses checking this http(s) source or webhook URL looks up; None when
    it needs no lookup (another scheme, private targets allowed) or is malformed (its check says so)."""
    if settings.allow_private_sources:
        return None
    try:
        parsed, port = _parse(url, "url")
    except BadSource:
        return None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https") or not parsed.hostname:
        return None
    return parsed.hostname, port or (443 if scheme == "https" else 80)


def validate_source_uri(uri: str, settings: Settings, tenant: str | None = None, lookup: Lookup | None = None) -> str:
    """Check a client-given source URI for ``tenant`` (None: only what every tenant may read); raise
    BadSource with a reason a client can act on. ``lookup``: how its host is resolved (``resolve_all``
    for the API; default getaddrinfo, as a worker does)."""
    parsed, port = _parse(uri, "source_uri")
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BadSource(f"unsupported source_uri scheme {scheme or '(none)'!r}; use s3:// or https://")
    if scheme == "s3":
        check_s3_source(uri, settings, tenant)
    elif scheme in ("http", "https"):
        if scheme == "http" and not settings.allow_private_sources:
            raise BadSource("plain http:// sources are refused; use https://")
        if not parsed.hostname:
            raise BadSource("source_uri has no host")
        check_public_host(parsed.hostname, port or (443 if scheme == "https" else 80), settings, lookup)
    elif scheme == "file":
        check_file_source(uri, settings)
    return uri


def validate_webhook_url(url: str, settings: Settings, resolve: bool = True, lookup: Lookup | None = None) -> str:
    """https:// only (http:// too where private targets are allowed), to a public host. ``resolve=False``
    leaves the address check to the connection, which resolves once and connects to what it checked."""
    parsed, port = _parse(url, "webhook_url")
    scheme = parsed.scheme.lower()
    if scheme != "https" and not (scheme == "http" and settings.allow_private_sources):
        raise BadSource("webhook_url must be an https:// URL")
    if not parsed.hostname:
        raise BadSource("webhook_url has no host")
    if resolve:
        check_public_host(parsed.hostname, port or (443 if scheme == "https" else 80), settings, lookup)
    return url


def s3_location(uri: str) -> tuple[str, str]:
    """(bucket, key) exactly as the worker will read them."""
    parsed = urlparse(uri)
    return parsed.netloc, unquote(parsed.path.lstrip("/"))


def _under(key: str, prefix: tuple[str, ...]) -> bool:
    # whole path segments: a rule for calls/ must not let calls-private/ through
    segments = key.split("/")
    return len(segments) > len(prefix) and tuple(segments[: len(prefix)]) == prefix


def _own_storage(bucket: str, key: str, settings: Settings) -> bool:
    if not settings.storage_url.startswith("s3://"):
        return False
    # the prefix exactly as app.storage.store_from_url uses it (not percent-decoded, inner '//' kept)
    parsed = urlparse(settings.storage_url)
    own_bucket, own_key = parsed.netloc, parsed.path.strip("/")
    own_prefix = tuple(own_key.split("/")) if own_key else ()
    # bucket names compared without case: refuse rather than trust an endpoint to tell them apart
    return bucket.lower() == own_bucket.lower() and tuple(key.split("/")[: len(own_prefix)]) == own_prefix


def check_s3_source(uri: str, settings: Settings, tenant: str | None) -> None:
    """An s3:// source is read with the service's own credentials, so it must lie in a bucket/folder the
    deployment allows for this tenant (ASRQ_S3_SOURCE_ALLOW), and never in the service's own storage."""
    bucket, key = s3_location(uri)
    if not bucket or not key.strip("/"):
        raise BadSource("s3 source_uri must be s3://bucket/key")
    if not S3_BUCKET_NAME.match(bucket):  # no userinfo, port or other netloc tricks
        raise BadSource(f"s3 source_uri has an invalid bucket name {bucket!r}")
    if any(s in (".", "..") for s in key.split("/")):
        raise BadSource("source_uri key must not contain '.' or '..' segments")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise BadSource("source_uri contains control characters")
    if _own_storage(bucket, key, settings):
        raise BadSource("s3 sources may not point into this service's own storage")
    if not any(r.bucket == bucket and _under(key, r.prefix)
               for r in settings.s3_source_rules() if r.tenant is None or r.tenant == tenant):
        raise BadSource(f"this server does not allow sources from s3://{bucket}/{key}")


def check_file_source(uri: str, settings: Settings) -> Path:
    """file:// (labs, single machines): allowed only when enabled, and never inside this service's own
    folders (other jobs' uploads and audio, the database)."""
    if not settings.allow_file_sources:
        raise BadSource("file:// sources are disabled on this server")
    path = file_source_path(uri).resolve()
    own = [settings.home.resolve()]
    if settings.storage_url.startswith("file://"):
        own.append(Path(urlparse(settings.storage_url).path).resolve())
    if any(path.is_relative_to(d) for d in own):
        raise BadSource("file sources may not point into this service's own folders")
    return path


def lookup_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (getaddrinfo: it may block for as long as the resolver takes)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno == socket.EAI_AGAIN:  # the resolver is down or timed out: a retry can help
            raise TransientError(f"cannot resolve host {host!r} now (temporary DNS failure)") from e
        raise BadSource(f"cannot resolve host {host!r}") from e
    except UnicodeError as e:  # a name IDNA cannot encode (empty/long label)
        raise BadSource(f"cannot resolve host {host!r}") from e
    return list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))


#: the API's lookups run on these threads, shared by every request: a resolver that hangs holds them, never
#: the threads that answer requests, and a request waits for its lookups at most ASRQ_DNS_TIMEOUT_S
DNS_THREADS = 32
_dns_pool: ThreadPoolExecutor | None = None
_dns_pool_lock = threading.Lock()


def _dns() -> ThreadPoolExecutor:
    global _dns_pool
    with _dns_pool_lock:
        if _dns_pool is None:
            _dns_pool = ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="asrq-dns")
        return _dns_pool


def resolve_all(hosts: Iterable[tuple[str, int]], timeout_s: float) -> Lookup:
    """Look up each distinct (host, port) once, side by side, and wait for all of them at most ``timeout_s``
    in all. Returns the Lookup that answers from those results: a host that did not resolve in time
    answers TransientError (503: the client retries), like a resolver that is down."""
    futures: dict[tuple[str, int], Future] = {h: _dns().submit(lookup_addresses, *h) for h in dict.fromkeys(hosts)}
    _done, late = wait(futures.values(), timeout=timeout_s)
    for f in late:
        f.cancel()  # not started yet: it never will; one under way finishes on its pool thread

    def lookup(host: str, port: int) -> list[str]:
        f = futures.get((host, port))
        if f is None:  # not one of the hosts given: looked up on its own, with the same bound
            return resolve_all([(host, port)], timeout_s)(host, port)
        if not f.done() or f.cancelled():
            raise TransientError(f"cannot resolve host {host!r} now (no DNS answer within {timeout_s:g} s)")
        return f.result()

    return lookup


def resolve_checked(host: str, port: int, settings: Settings, lookup: Lookup | None = None) -> list[str]:
    """Every address ``host`` resolves to, each one checked (unless private targets are allowed). Connect
    only to these: a second lookup could answer differently (DNS rebinding)."""
    addresses = (lookup or lookup_addresses)(host, port)
    if not settings.allow_private_sources:
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not ip.is_global or ip.is_multicast:
                raise BadSource("the URL points at a private, loopback or link-local address")
    if not addresses:
        raise BadSource(f"cannot resolve host {host!r}")
    return addresses


def check_public_host(host: str, port: int, settings: Settings, lookup: Lookup | None = None) -> None:
    """Refuse hosts that resolve to loopback, private, link-local or reserved addresses (SSRF)."""
    if settings.allow_private_sources:
        return
    resolve_checked(host, port, settings, lookup)


def filename_from_uri(uri: str) -> str:
    return safe_filename(unquote(urlparse(uri).path.rsplit("/", 1)[-1]))


def file_source_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))
