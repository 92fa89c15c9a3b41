"""Dashboard sign-in sessions, recorded server-side so that logging out (or rotating the token) revokes them.

The cookie carries only a random session id, signed with a random key of its own (never derived from the
token: a stolen cookie gives nothing to guess the token against offline). The session itself (its CSRF token
and when it began) lives in Redis under a key that also names the token's *generation*, an HMAC of the token
under the signing key: a new token means a new generation, so every older session stops resolving at once.
Without Redis (scripts and benchmarks that only use the Bearer token) sessions live in this process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Protocol

import redis
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer

from dispatcher.core import clock

from ..broker import keys

#: A session lasts this long from sign-in, whatever it does meanwhile.
SESSION_MAX_AGE = 12 * 3600


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    started: float


class SessionStore(Protocol):
    def signing_key(self) -> bytes: ...
    def put(self, name: str, value: str, ttl: int) -> None: ...
    def get(self, name: str) -> str | None: ...
    def delete(self, name: str) -> None: ...
    def take(self, name: str) -> str | None: ...


class RedisSessionStore:
    """Sessions shared by every dashboard process on the deployment's Redis, expiring with the session."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def signing_key(self) -> bytes:
        # The first dashboard to start creates the key; later ones (and restarts) read the same one.
        self.client.set(keys.dashboard_signing_key(), secrets.token_hex(32), nx=True)
        value = self.client.get(keys.dashboard_signing_key())
        assert isinstance(value, bytes)
        return value

    def put(self, name: str, value: str, ttl: int) -> None:
        self.client.set(name, value, ex=ttl)

    def get(self, name: str) -> str | None:
        value = self.client.get(name)
        return value.decode() if isinstance(value, bytes) else None

    def delete(self, name: str) -> None:
        self.client.delete(name)

    def take(self, name: str) -> str | None:
        """Read and remove in one step (GETDEL): of two requests racing for it, one gets it."""
        value = self.client.getdel(name)
        return value.decode() if isinstance(value, bytes) else None


class MemorySessionStore:
    """One process's sessions; expiry is checked on read (see :meth:`Sessions.resolve`)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._values: dict[str, str] = {}

    def signing_key(self) -> bytes:
        return self._key

    def put(self, name: str, value: str, ttl: int) -> None:
        self._values[name] = value

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def delete(self, name: str) -> None:
        self._values.pop(name, None)

    def take(self, name: str) -> str | None:
        return self._values.pop(name, None)  # one atomic step under the GIL


class _ClockSigner(TimestampSigner):
    """Cookie timestamps from the program's clock, so expiry follows a rehearsal's (or a test's) clock."""

    def get_timestamp(self) -> int:
        return int(clock.now().timestamp())


class Sessions:
    def __init__(self, store: SessionStore, token: str) -> None:
        self.store = store
        key = store.signing_key()
        self._generation = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
        self._cookies = URLSafeTimedSerializer(key, salt="dispatcher-session-v2", signer=_ClockSigner)

    def _name(self, sid: str) -> str:
        return keys.dashboard_session(self._generation, sid)

    def start(self) -> tuple[str, Session]:
        """A new session: the cookie value to hand out and what it stands for."""
        session = Session(secrets.token_urlsafe(24), secrets.token_urlsafe(24), clock.now().timestamp())
        record = json.dumps({"csrf": session.csrf, "started": session.started})
        self.store.put(self._name(session.sid), record, SESSION_MAX_AGE)
        return self._cookies.dumps(session.sid), session

    def resolve(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, or None (unsigned, expired, logged out or from an older token)."""
        if not cookie or len(cookie) > 512:
            return None
        try:
            sid = self._cookies.loads(cookie, max_age=SESSION_MAX_AGE)
        except BadSignature:  # also covers expired and malformed cookies
            return None
        if not isinstance(sid, str):
            return None
        record = self.store.get(self._name(sid))
        if record is None:
            return None
        data = json.loads(record)
        started = float(data["started"])
        if clock.now().timestamp() - started > SESSION_MAX_AGE:
            self.store.delete(self._name(sid))
            return None
        return Session(sid, str(data["csrf"]), started)

    def end(self, session: Session) -> None:
        self.store.delete(self._name(session.sid))


def store_for(client: redis.Redis | None) -> SessionStore:
    return RedisSessionStore(client) if client is not None else MemorySessionStore()
