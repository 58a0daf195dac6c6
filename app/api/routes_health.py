from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.messaging import ping_broker
from app.storage import get_store

router = APIRouter()


def _check(fn) -> str:  # noqa: ANN001
    try:
        fn()
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure is reported, none is raised
        return f"error: {type(e).__name__}"


@router.get("/healthz", tags=["health"])
def healthz(request: Request) -> JSONResponse:
    def db() -> None:
        with request.app.state.sessions() as s:
            s.execute(text("SELECT 1"))

    checks = {"database": _check(db), "broker": _check(ping_broker), "storage": _check(lambda: get_store().ping())}
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", "checks": checks}, 200 if ok else 503)
