"""JSON for scripts and the pages' polling: ``/api/campaigns`` and ``/api/campaigns/{id}``; ``/healthz``."""

from __future__ import annotations

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dispatcher.core import clock

from . import params
from .auth import api
from .summary import all_views, campaign_view, detail_json, summary_json
from .views import runtime_of


@api
async def campaigns(request: Request) -> Response:
    views = await run_in_threadpool(all_views, runtime_of(request))
    return JSONResponse({"now": clock.now().isoformat(), "campaigns": [summary_json(v) for v in views]})


@api
async def campaign(request: Request) -> Response:
    rt = runtime_of(request)
    campaign_id = params.campaign_id(request)
    if campaign_id is None:
        return JSONResponse({"error": "no such campaign in the ledger"}, status_code=404)

    def load() -> dict[str, object] | None:
        view = campaign_view(rt, campaign_id)
        return None if view is None else detail_json(rt, view)

    data = await run_in_threadpool(load)
    if data is None:
        return JSONResponse({"error": f"no campaign '{campaign_id}' in the ledger"}, status_code=404)
    return JSONResponse(data)


async def healthz(request: Request) -> Response:
    """No authentication and no data: only whether this process can reach its ledger."""

    def ping() -> None:
        with runtime_of(request).ledger.read() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await run_in_threadpool(ping)
    except Exception:  # any failure to reach the database is "not healthy", whatever its kind
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})
