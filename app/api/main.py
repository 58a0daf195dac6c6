"""The FastAPI application: routers, error mapping, lifespan. No connection is made at import time."""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError

from app import metrics
from app.api import auth
from app.api.limits import BodySizeLimit
from app.api.routes_audio import router as audio_router
from app.api.routes_health import router as health_router
from app.api.routes_jobs import router as jobs_router
from app.api.routes_models import router as models_router
from app.api.routes_ui import install_ui
from app.api.routes_usage import router as usage_router
from app.catalog.plugins import check_engine_setting
from app.db.session import session_factory
from app.errors import BadSource, PermanentError, TooManyQueued, TransientError
from app.jobs import IdempotencyConflict, JobNotFound
from app.settings import Settings, get_settings

log = logging.getLogger("asrq.api")


def _detail_handler(status: int):  # noqa: ANN202
    async def handler(_r: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status)

    return handler


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_engine_setting(settings)  # an API whose default engine is not installed does not start

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        app.state.settings = settings
        app.state.sessions = session_factory()
        app.state.keys = auth.KeyRing(settings, app.state.sessions)
        app.state.metrics = metrics.CollectorRegistry(auto_describe=True)
        app.state.metrics.register(metrics.StateCollector(settings, app.state.sessions, settings.metrics_cache_s))
        try:
            app.state.keys.sync()
        except (OperationalError, DBAPIError):
            log.warning("database unreachable at start-up; ASRQ_API_KEYS is stored once it answers")
        yield

    app = FastAPI(title="asrq", version="0.1.0", lifespan=lifespan,
                  description="Submit recordings, follow jobs, fetch timestamped transcripts.")
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes,
                       max_json_bytes=settings.max_json_bytes)
    app.include_router(jobs_router)
    app.include_router(audio_router)
    app.include_router(usage_router)
    app.include_router(models_router)
    app.include_router(health_router)
    install_ui(app)  # the web page at /ui/

    # most specific first: Starlette picks the handler of the nearest class in the exception's MRO
    for exc, status in ((JobNotFound, 404), (IdempotencyConflict, 409), (BadSource, 422), (PermanentError, 400)):
        app.add_exception_handler(exc, _detail_handler(status))

    @app.exception_handler(TooManyQueued)
    async def _too_many(_r: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, 429, headers={"Retry-After": "30"})

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(TransientError)
    async def _unavailable(_r: Request, e: Exception) -> JSONResponse:
        # a restarting database is a wait, not a server bug: 503 tells clients to retry
        log.warning("service unavailable: %s", type(e).__name__)
        return JSONResponse({"detail": "a backing service is unavailable; retry shortly"}, 503,
                            headers={"Retry-After": "5"})

    @app.get("/metrics", include_in_schema=False)
    def metrics_route(request: Request) -> Response:
        # job counts by tenant are not for everyone: the bearer ASRQ_METRICS_TOKEN, or, without one, only a
        # scraper on this host
        token = settings.metrics_token
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"detail": "metrics need the bearer ASRQ_METRICS_TOKEN"}, 401)
        elif request.client is None or not auth.is_loopback(request.client.host):
            return JSONResponse({"detail": "set ASRQ_METRICS_TOKEN to scrape metrics from another host"}, 403)
        body = metrics.exposition(metrics.process_registry(), request.app.state.metrics)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    _publish_batch_schema(app)
    return app


def _publish_batch_schema(app: FastAPI) -> None:
    """POST /v1/jobs/batch reads its body itself, after authentication (app/api/routes_jobs.py), so
    FastAPI never sees its model: add it to the OpenAPI components the route's requestBody refers to."""
    from fastapi.openapi.utils import get_openapi

    from app.schemas import BatchCreate

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema = BatchCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["BatchCreate"] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

