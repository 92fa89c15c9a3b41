"""HTML pages: login, the campaigns list, one campaign (and its chart, refreshed by the page's script)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dispatcher.core import clock
from dispatcher.core.states import Channel, Status

from ..runtime import Runtime
from . import funnel, labels, params, queries
from .auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    Paced,
    Principal,
    action,
    auth_of,
    page,
    principal_of,
    safe_next,
    set_session_cookie,
)
from .pacing import retry_after
from .summary import CHART_RANGES, all_views, campaign_view, chart, detail_json


def make_templates() -> Environment:
    env = Environment(
        loader=PackageLoader("dispatcher.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=labels.num,
        jst=labels.jst,
        status_label=labels.status_label,
        channel_label=labels.channel_label,
        state_label=labels.campaign_state_label,
        reject_field_label=labels.reject_field_label,
    )
    env.globals.update(
        STATUS_ORDER=[s.value for s in labels.STATUS_ORDER],
        CHANNELS=[c.value for c in Channel],
        CSRF_FIELD=CSRF_FIELD,
        percent=labels.percent,
        CHART_RANGES=CHART_RANGES,
    )
    return env


def runtime_of(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    env: Environment = request.app.state.templates
    principal = getattr(request.state, "principal", None)
    html = env.get_template(name).render(
        request=request, csrf=principal.csrf if principal else None, signed_in=principal is not None, **context
    )
    return HTMLResponse(html, status_code=status_code)


def login_form(request: Request, *, status_code: int = 200, next_path: str = "/", error: str | None = None) -> Response:
    return render(request, "login.html", status_code=status_code, next_path=safe_next(next_path), error=error)


async def login(request: Request) -> Response:
    auth = auth_of(request)
    if request.method == "GET":
        next_path = params.one(request, "next")
        if isinstance(auth.principal(request), Principal):
            return RedirectResponse(safe_next(next_path), status_code=303)
        return login_form(request, next_path=next_path or "/")
    form = await request.form()
    token, next_path = form.get("token"), safe_next(str(form.get("next") or "/"))
    outcome = auth.check_token(request, token if isinstance(token, str) else "")
    if isinstance(outcome, Paced):
        response = login_form(
            request,
            status_code=429,
            next_path=next_path,
            error="失敗が続いたため、しばらく受け付けません。時間をおいてお試しください。",
        )
        response.headers["Retry-After"] = retry_after(outcome.seconds)
        return response
    if outcome is None:
        return login_form(request, status_code=401, next_path=next_path, error="トークンが正しくありません。")
    cookie, _ = auth.sessions.start()
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, cookie)
    return response


@action
async def logout(request: Request) -> Response:
    session = principal_of(request).session
    if session is not None:
        # Revoked server-side: a copy of the cookie kept elsewhere no longer works either.
        auth_of(request).sessions.end(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=auth_of(request).secure_cookies
    )
    return response


@page
async def campaigns_page(request: Request) -> Response:
    views = await run_in_threadpool(all_views, runtime_of(request))
    return render(request, "campaigns.html", views=views)


def not_found(request: Request, campaign_id: str | None) -> Response:
    # An id that cannot exist is not repeated back.
    named = f"キャンペーン「{campaign_id}」" if campaign_id else "そのキャンペーン"
    message = f"{named}は台帳にありません。"
    return render(request, "error.html", status_code=404, title="見つかりません", message=message)


@page
async def campaign_page(request: Request) -> Response:
    rt = runtime_of(request)
    campaign_id = params.campaign_id(request)
    status, channel = params.choice(request, "status", Status), params.choice(request, "channel", Channel)
    after, before = params.number(request, "after"), params.number(request, "before")
    minutes = params.among(request, "minutes", CHART_RANGES, 60)
    done, resent = params.one(request, "done"), params.number(request, "n")
    if campaign_id is None:
        return not_found(request, None)

    def load() -> dict[str, Any] | None:
        view = campaign_view(rt, campaign_id)
        if view is None:
            return None
        page_ = queries.delivery_page(
            rt.ledger, campaign_id, status=status, channel=channel, after=after, before=before
        )
        counts = {(ch, st): n for ch, by in view.status["by_channel"].items() for st, n in by.items()}
        goal = funnel.build(rt.ledger, campaign_id, counts, view.deadline, clock.now())
        return {
            "view": view,
            "detail": detail_json(rt, view),
            "deliveries": page_,
            "chart_svg": chart(rt, view, minutes, request.app.state.sends),
            "funnel": goal,
            "funnel_svg": funnel.funnel_chart(goal),
        }

    data = await run_in_threadpool(load)
    if data is None:
        return not_found(request, campaign_id)
    notice = labels.DONE_MESSAGES.get(done or "")
    if notice and done == "resend" and resent is not None:
        notice = f"{resent:,}件の再送を受け付けました。"
    filters = {"status": status.value if status else "", "channel": channel.value if channel else ""}
    return render(request, "campaign.html", notice=notice, filters=filters, minutes=minutes, **data)


@page
async def chart_fragment(request: Request) -> Response:
    rt = runtime_of(request)
    campaign_id = params.campaign_id(request)
    span = params.among(request, "minutes", CHART_RANGES, 60)
    if campaign_id is None:
        return HTMLResponse("", status_code=404)

    def draw() -> str | None:
        view = campaign_view(rt, campaign_id)
        return None if view is None else chart(rt, view, span, request.app.state.sends)

    svg = await run_in_threadpool(draw)
    if svg is None:
        return HTMLResponse("", status_code=404)
    return HTMLResponse(svg)
