"""HTML pages: login, the campaigns list, one campaign (and its chart, refreshed by the page's script)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..runtime import Runtime
from ..states import Channel, Status
from . import labels, queries
from .auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    action,
    auth_of,
    failed_login_pause,
    page,
    safe_next,
    set_session_cookie,
)
from .summary import CHART_RANGES, all_views, campaign_view, chart, detail_json


def make_templates() -> Environment:
    env = Environment(loader=PackageLoader("dispatcher.dashboard", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=labels.num, jst=labels.jst, status_label=labels.status_label,
                       channel_label=labels.channel_label, state_label=labels.campaign_state_label,
                       reject_field_label=labels.reject_field_label)
    env.globals.update(STATUS_ORDER=[s.value for s in labels.STATUS_ORDER], CHANNELS=[c.value for c in Channel],
                       CSRF_FIELD=CSRF_FIELD, percent=labels.percent, CHART_RANGES=CHART_RANGES)
    return env


def runtime_of(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    env: Environment = request.app.state.templates
    principal = getattr(request.state, "principal", None)
    html = env.get_template(name).render(request=request, csrf=principal.csrf if principal else None,
                                         signed_in=principal is not None, **context)
    return HTMLResponse(html, status_code=status_code)


def login_form(request: Request, *, status_code: int = 200, next_path: str = "/", error: str | None = None) -> Response:
    return render(request, "login.html", status_code=status_code, next_path=safe_next(next_path), error=error)


async def login(request: Request) -> Response:
    auth = auth_of(request)
    if request.method == "GET":
        if auth.principal(request) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
        return login_form(request, next_path=request.query_params.get("next", "/"))
    form = await request.form()
    token, next_path = form.get("token"), safe_next(str(form.get("next") or "/"))
    if not isinstance(token, str) or not auth.token_matches(token):
        await failed_login_pause()
        return login_form(request, status_code=401, next_path=next_path, error="トークンが正しくありません。")
    cookie, _ = auth.new_session()
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, cookie)
    return response


@action
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@page
async def campaigns_page(request: Request) -> Response:
    views = await run_in_threadpool(all_views, runtime_of(request))
    return render(request, "campaigns.html", views=views)


def _choice(value: str | None, kind: type[Status] | type[Channel]) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:
        return None


def _cursor(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@page
async def campaign_page(request: Request) -> Response:
    rt = runtime_of(request)
    campaign_id = request.path_params["campaign_id"]
    q = request.query_params
    status, channel = _choice(q.get("status"), Status), _choice(q.get("channel"), Channel)
    minutes = int(q["minutes"]) if q.get("minutes", "").isdigit() and int(q["minutes"]) in CHART_RANGES else 60

    def load() -> dict[str, Any] | None:
        view = campaign_view(rt, campaign_id)
        if view is None:
            return None
        page_ = queries.delivery_page(rt.ledger, campaign_id, status=status, channel=channel,
                                      after=_cursor(q.get("after")), before=_cursor(q.get("before")))
        return {"view": view, "detail": detail_json(rt, view), "deliveries": page_,
                "chart_svg": chart(rt, view, minutes, request.app.state.sends)}

    data = await run_in_threadpool(load)
    if data is None:
        return render(request, "error.html", status_code=404, title="見つかりません",
                      message=f"キャンペーン「{campaign_id}」は台帳にありません。")
    done = q.get("done")
    notice = labels.DONE_MESSAGES.get(done or "")
    if notice and done == "resend" and (q.get("n") or "").isdigit():
        notice = f"{int(q['n']):,}件の再送を受け付けました。"
    filters = {"status": status.value if status else "", "channel": channel.value if channel else ""}
    return render(request, "campaign.html", notice=notice, filters=filters, minutes=minutes, **data)


@page
async def chart_fragment(request: Request) -> Response:
    rt = runtime_of(request)
    campaign_id = request.path_params["campaign_id"]
    minutes = request.query_params.get("minutes", "60")
    span = int(minutes) if minutes.isdigit() and int(minutes) in CHART_RANGES else 60

    def draw() -> str | None:
        view = campaign_view(rt, campaign_id)
        return None if view is None else chart(rt, view, span, request.app.state.sends)

    svg = await run_in_threadpool(draw)
    if svg is None:
        return HTMLResponse("", status_code=404)
    return HTMLResponse(svg)
