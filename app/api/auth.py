"""Bearer API keys. Keys are stored only as SHA-256 hashes; each belongs to one tenant.

The database is authoritative: ASRQ_API_KEYS is copied into it at start-up, `asrq keys add|revoke`
change it while the API runs, and an answer read from it is trusted for at most ``auth_cache_ttl_s``.
The API is open (every caller is tenant ``default``) only while no key exists anywhere, and then only to
loopback clients; ``asrq api`` refuses a non-loopback address in that state.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import ApiKey, utcnow
from app.settings import Settings

log = logging.getLogger("asrq.api.auth")

OPEN_TENANT = "default"
_bearer = HTTPBearer(auto_error=False)
_MISS = object()


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str | None) -> bool:
    """True only for an address that cannot be reached from another machine (names other than localhost: no)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the keys table ----------------------------------------------------------------------------------------------


def sync_env_keys(session: Session, settings: Settings) -> int:
    """Store the hashes of ASRQ_API_KEYS (idempotent); the secrets themselves are never stored.

    A key revoked in the database stays revoked: its row is kept, so it is not added again.
    """
    n = 0
    for tenant, secret in settings.api_key_entries():
        h = hash_key(secret)
        row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == h))
        if row is None:
            session.add(ApiKey(tenant=tenant, key_sha256=h))
            n += 1
        elif row.revoked_at is not None:
            log.warning("ASRQ_API_KEYS holds key %s (tenant %s), revoked at %s: it stays revoked; remove it",
                        row.id, row.tenant, row.revoked_at.isoformat())
    try:
        session.commit()
    except IntegrityError:
        # another API process synced the same keys at the same moment: they are stored either way
        session.rollback()
        return 0
    return n


def keys_exist(session: Session) -> bool:
    """Any key row, revoked ones included: revoking the last key locks the API, it never opens it."""
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def add_key(session: Session, tenant: str) -> tuple[ApiKey, str]:
    secret = "asrq_" + secrets.token_urlsafe(32)
    key = ApiKey(tenant=tenant, key_sha256=hash_key(secret))
    session.add(key)
    session.flush()
    return key, secret


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)))


def revoke_key(session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """Marks the key revoked (once; a second revoke keeps the first time). None: no such key."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


# ---- what the API process knows ----------------------------------------------------------------------------------


class KeyRing:
    """Key lookups by hash and whether any key exists, read from the database and cached for the TTL."""

    def __init__(self, settings: Settings, sessions: Callable[[], Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.ttl_s = settings.auth_cache_ttl_s
        self.tenants: TTLCache = TTLCache(settings.auth_cache_max_keys, self.ttl_s)
        # bad tokens get their own LRU: a flood of them cannot evict a valid key, nor grow memory
        self.unknown: TTLCache = TTLCache(settings.auth_cache_max_keys, self.ttl_s)
        self._cache_lock = threading.Lock()  # sync dependencies run in the threadpool
        self._lock = threading.Lock()
        self._synced = False
        self._required = False
        self._open_until = 0.0

    def sync(self) -> None:
        """Copies ASRQ_API_KEYS into the database once; retried on each request until the database answers."""
        if self._synced:
            return
        with self._lock:
            if not self._synced:
                with self.sessions() as s:
                    sync_env_keys(s, self.settings)
                self._synced = True

    def required(self) -> bool:
        if self._required or self.settings.api_key_entries():
            return True
        if time.monotonic() < self._open_until:
            return False
        with self.sessions() as s:
            exists = keys_exist(s)
        if exists:
            # rows are only ever added or revoked, never deleted: once required, always required
            self._required = True
        else:
            self._open_until = time.monotonic() + self.ttl_s
        return exists

    def tenant_for(self, secret: str) -> str | None:
        h = hash_key(secret)
        with self._cache_lock:
            for cache in (self.tenants, self.unknown):
                hit = cache.get(h, _MISS)
                if hit is not _MISS:
                    return hit
        self.sync()
        with self.sessions() as s:
            tenant = s.scalar(select(ApiKey.tenant).where(ApiKey.key_sha256 == h, ApiKey.revoked_at.is_(None)))
        with self._cache_lock:
            (self.tenants if tenant is not None else self.unknown)[h] = tenant
        return tenant


def current_tenant(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    keys: KeyRing = request.app.state.keys
    if not keys.required():
        # open only to this machine, whatever server runs the app and on whatever address
        if request.client is None or not is_loopback(request.client.host):
            raise HTTPException(401, "this API has no keys yet and answers loopback clients only; "
                                     "add one with `asrq keys add --tenant NAME`", {"WWW-Authenticate": "Bearer"})
        return OPEN_TENANT
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(401, "missing API key (Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"})
    tenant = keys.tenant_for(creds.credentials)
    if tenant is None:
        raise HTTPException(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
    return tenant
