"""Bearer API keys. Keys are stored only as SHA-256 hashes; each belongs to one tenant."""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey
from app.settings import Settings, get_settings

OPEN_TENANT = "default"
_bearer = HTTPBearer(auto_error=False)
_cache: dict[str, tuple[str | None, float]] = {}
_CACHE_TTL_S = 30.0


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def sync_env_keys(session: Session, settings: Settings) -> int:
    """Store the hashes of ASRQ_API_KEYS (idempotent); the secrets themselves are never stored."""
    n = 0
    for tenant, secret in settings.api_key_entries():
        h = hash_key(secret)
        if session.scalar(select(ApiKey).where(ApiKey.key_sha256 == h)) is None:
            session.add(ApiKey(tenant=tenant, key_sha256=h))
            n += 1
    session.commit()
    return n


def auth_required(settings: Settings) -> bool:
    return bool(settings.api_key_entries())


def _lookup(request: Request, key_hash: str) -> str | None:
    hit = _cache.get(key_hash)
    if hit and hit[1] > time.monotonic():
        return hit[0]
    for tenant, secret in get_settings().api_key_entries():
        if hmac.compare_digest(hash_key(secret), key_hash):
            _cache[key_hash] = (tenant, time.monotonic() + _CACHE_TTL_S)
            return tenant
    with request.app.state.sessions() as s:
        tenant = s.scalar(select(ApiKey.tenant).where(ApiKey.key_sha256 == key_hash))
    _cache[key_hash] = (tenant, time.monotonic() + _CACHE_TTL_S)
    return tenant


def current_tenant(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    if not request.app.state.auth_required:
        return OPEN_TENANT
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(401, "missing API key (Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"})
    tenant = _lookup(request, hash_key(creds.credentials))
    if tenant is None:
        raise HTTPException(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
    return tenant
