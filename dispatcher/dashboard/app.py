"""The dashboard application: routes (SPEC §9), security headers, static files shipped in the package."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from ..runtime import Runtime
from . import actions, api, feedback_routes, metrics, views
from .auth import Auth
from .series import SendsPerMinute

Dispatch = Callable[[list[int]], None]

#: Everything the pages load comes from this server: no CDN, no inline script or style.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_BODY = 1024 * 1024


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


def create_app(rt: Runtime, dispatch: Dispatch | None, *, token: str | None = None) -> Starlette:
    """The dashboard for ``rt``'s ledger; ``dispatch`` hands re-queued deliveries to the broker."""
    token = token or rt.settings.dashboard_token
    if not token:
        raise ConfigError("DISPATCHER_DASHBOARD_TOKEN is not set: the dashboard does not run without a token")
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
        Route("/api/campaigns", api.campaigns, methods=["GET"]),
        Route("/api/campaigns/{campaign_id}", api.campaign, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        *feedback_routes.routes,
        # CSS and script only (no data), so the login page can use them before anyone signs in.
        Mount("/static", StaticFiles(packages=[("dispatcher.dashboard", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], max_body_size=MAX_BODY)
    app.state.rt = rt
    app.state.dispatch = dispatch
    app.state.auth = Auth(token)
    app.state.templates = views.make_templates()
    app.state.sends = SendsPerMinute()
    return app
