"""Operator actions from the dashboard: POST only, CSRF-checked (see :func:`auth.action`), logged with who.

Each calls the same plain operation as the command line. A person's form gets a redirect back to the
campaign page with a notice; a Bearer call gets JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from dispatcher.core.errors import DispatcherError
from dispatcher.core.states import Channel, Status
from dispatcher.operations import control as operations
from dispatcher.operations.control import DEFAULT_RESEND, ResendPlan

from . import params
from .auth import action, principal_of
from .views import render, runtime_of

#: What an operator may pick to resend from the dashboard (never delivered, complained or suppressed).
RESENDABLE = (Status.FAILED, Status.EXPIRED, Status.BOUNCED, Status.UNKNOWN, Status.CANCELLED)


def _answer(request: Request, campaign_id: str, done: str, result: dict[str, Any], extra: str = "") -> Response:
    if principal_of(request).via == "bearer":
        return JSONResponse(result)
    return RedirectResponse(f"/campaigns/{quote(campaign_id, safe='')}?done={done}{extra}", status_code=303)


def _refused(request: Request, status_code: int, message: str) -> Response:
    if principal_of(request).via == "bearer":
        return JSONResponse({"error": message}, status_code=status_code)
    return render(request, "error.html", status_code=status_code, title="操作できませんでした", message=message)


async def _run(request: Request, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an operation in a worker thread; a refusal becomes a 404/409 answer instead of a result."""
    rt = runtime_of(request)
    campaign_id = params.campaign_id(request)
    if campaign_id is None:
        return _refused(request, 404, "そのキャンペーンは台帳にありません。")
    if await run_in_threadpool(rt.ledger.campaign, campaign_id, fresh=True) is None:
        return _refused(request, 404, f"キャンペーン「{campaign_id}」は台帳にありません。")
    try:
        return await run_in_threadpool(operation, rt, campaign_id, *args, who=principal_of(request).who, **kwargs)
    except DispatcherError as exc:
        return _refused(request, 409, f"この操作はできません: {exc}")


@action
async def pause(request: Request) -> Response:
    result = await _run(request, operations.pause, reason="dashboard から一時停止")
    if isinstance(result, Response):
        return result
    return _answer(request, result.campaign_id, "pause", {"campaign": result.campaign_id, "state": result.state})


@action
async def resume(request: Request) -> Response:
    result = await _run(request, operations.resume, request.app.state.dispatch)
    if isinstance(result, Response):
        return result
    return _answer(
        request,
        result.campaign_id,
        "resume",
        {"campaign": result.campaign_id, "state": result.state, "redispatched": result.affected},
    )


@action
async def cancel(request: Request) -> Response:
    result = await _run(request, operations.cancel)
    if isinstance(result, Response):
        return result
    return _answer(
        request,
        result.campaign_id,
        "cancel",
        {"campaign": result.campaign_id, "state": result.state, "cancelled": result.affected},
    )


def resend_choice(form: FormData) -> dict[str, Any]:
    """The resend selection from a form; anything not offered is ignored."""
    offered = {s.value: s for s in RESENDABLE}
    statuses = [offered[v] for v in form.getlist("status") if isinstance(v, str) and v in offered]
    channel, via = form.get("channel"), form.get("via")
    return {
        "statuses": statuses or sorted(DEFAULT_RESEND),
        "channel": Channel(channel) if channel in ("email", "sms") else None,
        "via": Channel(via) if via in ("email", "sms") else None,
    }


def plan_json(plan: ResendPlan) -> dict[str, Any]:
    return {
        "campaign": plan.campaign_id,
        "dry_run": plan.dry_run,
        "selected": plan.selected,
        "requeued": len(plan.requeued),
        "by_channel": plan.by_channel,
        "skipped": plan.skipped,
    }


@action
async def resend(request: Request) -> Response:
    """Without ``confirm=1``: the dry run, shown with a confirm button. With it: the resend itself."""
    form = await request.form()
    choice = resend_choice(form)
    confirmed = form.get("confirm") == "1"
    dispatch = request.app.state.dispatch if confirmed else None
    plan = await _run(request, operations.resend, dispatch, dry_run=not confirmed, **choice)
    if isinstance(plan, Response):
        return plan
    if not confirmed:
        if principal_of(request).via == "bearer":
            return JSONResponse(plan_json(plan))
        return render(request, "resend.html", plan=plan, choice=choice, campaign_id=plan.campaign_id)
    return _answer(request, plan.campaign_id, "resend", plan_json(plan), f"&n={len(plan.requeued)}")
