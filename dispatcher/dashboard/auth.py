"""Who may use the dashboard: the deployment's token, as a Bearer header or through a login session; the
read-only metrics token for ``/metrics`` alone.

Sessions are server-side (see :mod:`.sessions`): logout and token rotation revoke them. Every token check
(form, Bearer, metrics) is paced per client and globally (see :mod:`.pacing`). The session carries a CSRF
token that every state-changing form must echo back; Bearer calls carry the token itself and need none.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .pacing import FailurePacer, client_key, retry_after
from .sessions import SESSION_MAX_AGE, Session, Sessions, SessionStore

Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)

SESSION_COOKIE = "dispatcher_session"
CSRF_FIELD = "csrf_token"
#: Longer "tokens" are not compared at all (ours are far shorter; this bounds the work an attacker buys).
MAX_CANDIDATE = 1024


@dataclass(frozen=True)
class Principal:
    #: Written to the transition log and the campaign's state reason.
    who: str
    via: Literal["session", "bearer"]
    #: The session's CSRF token (None for Bearer calls).
    csrf: str | None = None
    session: Session | None = None
    #: The read-only metrics token: opens /metrics and nothing else.
    metrics_only: bool = False


@dataclass(frozen=True)
class Paced:
    """Too many failed token checks: not checked now, try again after this many seconds."""

    seconds: float


Outcome = Principal | Paced | None


def _same(candidate: str, secret: bytes) -> bool:
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), secret)


class Auth:
    def __init__(
        self,
        token: str,
        store: SessionStore,
        *,
        metrics_token: str | None = None,
        secure_cookies: bool = True,
        pacer: FailurePacer | None = None,
    ) -> None:
        self._token = token.encode()
        self._metrics_token = metrics_token.encode() if metrics_token else None
        self.sessions = Sessions(store, token)
        self.secure_cookies = secure_cookies
        self.pacer = pacer or FailurePacer()

    def check_token(self, request: Request, candidate: str, *, accept_metrics: bool = False) -> Outcome:
        """Compare a presented token, unless this client (or everyone) has failed too often lately."""
        client = client_key(request.client.host if request.client else None)
        wait = self.pacer.wait(client)
        if wait is not None:
            return Paced(wait)
        if len(candidate) <= MAX_CANDIDATE:
            if _same(candidate, self._token):
                self.pacer.succeeded(client)
                return Principal("dashboard:api-token", "bearer")
            if accept_metrics and self._metrics_token is not None and _same(candidate, self._metrics_token):
                self.pacer.succeeded(client)
                return Principal("dashboard:metrics-token", "bearer", metrics_only=True)
        locked = self.pacer.failed(client)
        # The candidate itself is never logged: it may be a mistyped real token.
        if locked is not None:
            log.warning(
                "dashboard: repeated failed token checks from %s; its next ones are refused for %.0f s", client, locked
            )
        return None

    def principal(self, request: Request, *, accept_metrics: bool = False) -> Outcome:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            # A wrong token is not rescued by a cookie.
            return self.check_token(request, credential.strip(), accept_metrics=accept_metrics)
        session = self.sessions.resolve(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        return Principal(f"dashboard:{session.sid[:8]}", "session", session.csrf, session)

    def csrf_ok(self, principal: Principal, submitted: object) -> bool:
        if principal.via == "bearer":
            return True
        return (
            isinstance(submitted, str)
            and principal.csrf is not None
            and hmac.compare_digest(submitted.encode(), principal.csrf.encode())
        )


def auth_of(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


def principal_of(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def unauthorized_json() -> Response:
    return JSONResponse(
        {"error": "authentication required: Authorization: Bearer <DISPATCHER_DASHBOARD_TOKEN>"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="dispatcher"'},
    )


def too_many_json(paced: Paced) -> Response:
    return JSONResponse(
        {"error": "too many failed sign-in attempts: try again later"},
        status_code=429,
        headers={"Retry-After": retry_after(paced.seconds)},
    )


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2048:
        return "/"
    return target


def _usable(outcome: Outcome, *, metrics: bool = False) -> Principal | None:
    if isinstance(outcome, Principal) and (metrics or not outcome.metrics_only):
        return outcome
    return None


def page(handler: Endpoint) -> Endpoint:
    """A page for people: without credentials, 401 with the login form in place."""

    async def guarded(request: Request) -> Response:
        outcome = auth_of(request).principal(request)
        if isinstance(outcome, Paced):
            return too_many_json(outcome)
        principal = _usable(outcome)
        if principal is None:
            # The form is the views' (set on the app at start): auth stays below the pages it guards.
            login_form: Callable[..., Response] = request.app.state.login_form
            return login_form(request, status_code=401, next_path=request.url.path)
        request.state.principal = principal
        return await handler(request)

    return guarded


def _machine(handler: Endpoint, *, metrics: bool) -> Endpoint:
    async def guarded(request: Request) -> Response:
        outcome = auth_of(request).principal(request, accept_metrics=metrics)
        if isinstance(outcome, Paced):
            return too_many_json(outcome)
        principal = _usable(outcome, metrics=metrics)
        if principal is None:
            return unauthorized_json()
        request.state.principal = principal
        return await handler(request)

    return guarded


def api(handler: Endpoint) -> Endpoint:
    """A machine endpoint: without credentials, 401 and a WWW-Authenticate challenge."""
    return _machine(handler, metrics=False)


def metrics_api(handler: Endpoint) -> Endpoint:
    """Like :func:`api`, but the read-only metrics token opens it too."""
    return _machine(handler, metrics=True)


def action(handler: Endpoint) -> Endpoint:
    """A state-changing POST: credentials, and the session's CSRF token unless called with the Bearer token."""

    async def guarded(request: Request) -> Response:
        auth = auth_of(request)
        outcome = auth.principal(request)
        if isinstance(outcome, Paced):
            return too_many_json(outcome)
        principal = _usable(outcome)
        if principal is None:
            return unauthorized_json()
        form = await request.form()
        if not auth.csrf_ok(principal, form.get(CSRF_FIELD)):
            return JSONResponse(
                {"error": "missing or wrong CSRF token: reload the page and try again"}, status_code=403
            )
        request.state.principal = principal
        return await handler(request)

    return guarded


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    # Secure whatever scheme this process sees: behind a TLS-terminating proxy it sees plain HTTP.
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=auth_of(request).secure_cookies,
    )
