"""The dashboard application: routes (SPEC §9), security headers, static files shipped in the package."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import Settings, weak_secret

from ..runtime import Runtime
from . import actions, api, feedback_routes, metrics, people, person_actions, views
from .auth import Auth
from .series import SendsPerMinute
from .sessions import store_for

Dispatch = Callable[[list[int]], None]

#: Everything the pages load comes from this server: no CDN, no inline script or style.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
MAX_BODY = 1024 * 1024
#: Longest request target (path and query) served; the pages' own links are far shorter.
MAX_URI = 4096


class SecurityHeaders:
    """Adds the same protective headers to every answer; nothing but static files may be cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UriLimit:
    """Refuses overlong request targets before routing or logging spends anything on them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        if scope["type"] == "http" and target > MAX_URI:
            await PlainTextResponse("request target too long", status_code=414)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def check_credentials(settings: Settings, token: str | None) -> str:
    """The dashboard token, once it and the metrics token are fit to guard anything (else ConfigError)."""
    if not token:
        raise ConfigError("DISPATCHER_DASHBOARD_TOKEN is not set: the dashboard does not run without a token")
    problem = weak_secret(token)
    if problem:
        raise ConfigError(f"DISPATCHER_DASHBOARD_TOKEN {problem}")
    if settings.metrics_token is not None and hmac.compare_digest(settings.metrics_token, token):
        raise ConfigError(
            "DISPATCHER_METRICS_TOKEN must differ from DISPATCHER_DASHBOARD_TOKEN "
            "(it is handed to scrapers and opens /metrics only)"
        )
    return token


def trusted_proxies(settings: Settings) -> list[str]:
    """DISPATCHER_TRUSTED_PROXIES as addresses and networks; a wildcard or a name is refused."""
    for entry in settings.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"DISPATCHER_TRUSTED_PROXIES: entry {len(entry)} characters long is not an IP "
                "address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return list(settings.trusted_proxies)


def create_app(rt: Runtime, dispatch: Dispatch | None, *, token: str | None = None) -> Starlette:
    """The dashboard for ``rt``'s ledger; ``dispatch`` hands re-queued deliveries to the broker."""
    settings = rt.settings
    token = check_credentials(settings, token or settings.dashboard_token)
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/login", views.login, methods=["GET", "POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/", views.campaigns_page, methods=["GET"]),
        Route("/campaigns/{campaign_id}", views.campaign_page, methods=["GET"]),
        Route("/campaigns/{campaign_id}/chart", views.chart_fragment, methods=["GET"]),
        Route("/campaigns/{campaign_id}/pause", actions.pause, methods=["POST"]),
        Route("/campaigns/{campaign_id}/resume", actions.resume, methods=["POST"]),
        Route("/campaigns/{campaign_id}/cancel", actions.cancel, methods=["POST"]),
        Route("/campaigns/{campaign_id}/resend", actions.resend, methods=["POST"]),
        Route("/campaigns/{campaign_id}/people", people.search, methods=["POST"]),
        Route("/campaigns/{campaign_id}/resend-person", person_actions.resend_person_action, methods=["POST"]),
        Route("/campaigns/{campaign_id}/people/{user_id:path}", people.person_page, methods=["GET"]),
        Route("/api/campaigns/{campaign_id}/people/{user_id:path}", people.person_api, methods=["GET"]),
        Route("/api/campaigns", api.campaigns, methods=["GET"]),
        Route("/api/campaigns/{campaign_id}", api.campaign, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        *feedback_routes.routes,
        # CSS and script only (no data), so the login page can use them before anyone signs in.
        Mount("/static", StaticFiles(packages=[("dispatcher.dashboard", "static")]), name="static"),
    ]
    middleware = [
        # X-Forwarded-For/-Proto are believed from the listed proxies only (the client key for pacing).
        Middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_proxies(settings)),
        Middleware(SecurityHeaders),
        Middleware(UriLimit),
    ]
    app = Starlette(routes=routes, middleware=middleware, max_body_size=MAX_BODY)
    app.state.rt = rt
    app.state.dispatch = dispatch
    app.state.auth = Auth(
        token,
        store_for(rt.redis),
        metrics_token=settings.metrics_token,
        secure_cookies=not settings.dashboard_insecure_cookies,
    )
    app.state.templates = views.make_templates()
    app.state.login_form = views.login_form
    app.state.sends = SendsPerMinute()
    return app
