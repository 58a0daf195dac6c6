"""/v1/usage: a tenant's usage per UTC day (audio submitted and transcribed, engine seconds)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from app.api.auth import current_tenant
from app.errors import PermanentError
from app.schemas import UsageDayOut, UsageOut, UsageTotalOut
from app.usage import check_range, totals, usage

router = APIRouter(prefix="/v1", tags=["usage"])

DEFAULT_DAYS = 30


@router.get("/usage", response_model=UsageOut, summary="Usage per UTC day, of the calling key's tenant")
def get_usage(request: Request, tenant: str = Depends(current_tenant),
              start: date | None = Query(None, alias="from", description="first day, YYYY-MM-DD (UTC), inclusive"),
              end: date | None = Query(None, alias="to", description="last day, YYYY-MM-DD (UTC), inclusive")
              ) -> UsageOut:
    end = end or datetime.now(timezone.utc).date()
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    try:
        check_range(start, end)
    except PermanentError as e:
        raise HTTPException(422, str(e)) from e
    with request.app.state.sessions() as s:
        days = usage(s, tenant, start, end)
    return UsageOut(tenant=tenant, start=start, end=end, days=[UsageDayOut(**d.rounded()) for d in days],
                    total=UsageTotalOut(**totals(days)))
