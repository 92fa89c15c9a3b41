"""Who may use the dashboard: the deployment's token, as a Bearer header or through a login session.

Sessions are signed cookies (itsdangerous) keyed by a secret derived from the token, so rotating the
token logs everybody out. The cookie carries a random session id and a per-session CSRF token that every
state-changing form must echo back; Bearer calls carry the token itself and need no CSRF token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]

SESSION_COOKIE = "dispatcher_session"
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf_token"
#: Slows down guessing the token through the login form.
FAILED_LOGIN_DELAY = 0.5


@dataclass(frozen=True)
class Principal:
    #: Written to the transition log and the campaign's state reason.
    who: str
    via: Literal["session", "bearer"]
    #: The session's CSRF token (None for Bearer calls).
    csrf: str | None = None


class Auth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()
        secret = hmac.new(self._token, b"dispatcher dashboard session v1", hashlib.sha256).hexdigest()
        self._signer = URLSafeTimedSerializer(secret, salt="dispatcher-session")

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def new_session(self) -> tuple[str, Principal]:
        """A fresh signed cookie value and the principal it stands for."""
        sid, csrf = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
        return self._signer.dumps({"sid": sid, "csrf": csrf}), Principal(f"dashboard:{sid[:8]}", "session", csrf)

    def from_cookie(self, value: str | None) -> Principal | None:
        if not value:
            return None
        try:
            data = self._signer.loads(value, max_age=SESSION_MAX_AGE)
        except BadSignature:  # also covers expired and malformed cookies
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("csrf"), str):
            return None
        return Principal(f"dashboard:{data['sid'][:8]}", "session", data["csrf"])

    def principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credential = header.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(credential.strip()):
                return Principal("dashboard:api-token", "bearer")
            return None  # a wrong token is not rescued by a cookie
        return self.from_cookie(request.cookies.get(SESSION_COOKIE))

    def csrf_ok(self, principal: Principal, submitted: object) -> bool:
        if principal.via == "bearer":
            return True
        return (isinstance(submitted, str) and principal.csrf is not None
                and hmac.compare_digest(submitted.encode(), principal.csrf.encode()))


def auth_of(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


def principal_of(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def unauthorized_json() -> Response:
    return JSONResponse({"error": "authentication required: Authorization: Bearer <DISPATCHER_DASHBOARD_TOKEN>"},
                        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="dispatcher"'})


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def page(handler: Endpoint) -> Endpoint:
    """A page for people: without credentials, 401 with the login form in place."""

    async def guarded(request: Request) -> Response:
        principal = auth_of(request).principal(request)
        if principal is None:
            from .views import login_form

            return login_form(request, status_code=401, next_path=request.url.path)
        request.state.principal = principal
        return await handler(request)

    return guarded


def api(handler: Endpoint) -> Endpoint:
    """A machine endpoint: without credentials, 401 and a WWW-Authenticate challenge."""

    async def guarded(request: Request) -> Response:
        principal = auth_of(request).principal(request)
        if principal is None:
            return unauthorized_json()
        request.state.principal = principal
        return await handler(request)

    return guarded


def action(handler: Endpoint) -> Endpoint:
    """A state-changing POST: credentials, and the session's CSRF token unless called with the Bearer token."""

    async def guarded(request: Request) -> Response:
        auth = auth_of(request)
        principal = auth.principal(request)
        if principal is None:
            return unauthorized_json()
        form = await request.form()
        if not auth.csrf_ok(principal, form.get(CSRF_FIELD)):
            return JSONResponse({"error": "missing or wrong CSRF token: reload the page and try again"},
                                status_code=403)
        request.state.principal = principal
        return await handler(request)

    return guarded


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")


async def failed_login_pause() -> None:
    await asyncio.sleep(FAILED_LOGIN_DELAY)
