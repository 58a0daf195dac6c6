"""GET /v1/engines: the engines and models installed on this deployment, for the web page's options form.

Read from the filesystem only (entry points and model folders); nothing is loaded or downloaded. A job that
names something else still gets the 422 that lists what is installed: this is the same list, asked for first.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from app.api.auth import current_tenant
from app.catalog.models import installed_models
from app.catalog.plugins import engine_names
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["engines"])


class EngineOut(BaseModel):
    name: str
    models: list[str]  # as a job names them: bundled:…, folder names under ASRQ_MODELS_DIR


class EnginesOut(BaseModel):
    engines: list[EngineOut]
    default_engine: str  # what a job that names no engine gets (ASRQ_ENGINE)
    default_model: str | None  # …and no model (ASRQ_MODEL), for that engine; None: a folder outside the list


def installed(settings: Settings) -> list[EngineOut]:
    return [EngineOut(name=e, models=[m for m in installed_models(e, settings) if not _server_path(m)])
            for e in engine_names()]


def _server_path(model: str) -> bool:
    # the deployment's own default may be an absolute folder: a client cannot name one (422), and the
    # server's paths are not for tenants to read
    return model.startswith(("/", "~"))


@router.get("/engines", response_model=EnginesOut, summary="Installed engines and their models")
async def get_engines(request: Request, _tenant: str = Depends(current_tenant)) -> EnginesOut:
    settings = request.app.state.settings
    engines = await run_in_threadpool(installed, settings)
    model = str(settings.model)
    return EnginesOut(engines=engines, default_engine=settings.engine,
                      default_model=None if _server_path(model) else model)
