"""The delivery dashboard (SPEC §9, issue 5): pages for operators, JSON API, Prometheus metrics.

``dispatcher dashboard`` serves :func:`create_app` with uvicorn.
"""

from __future__ import annotations

import logging

from ..runtime import Runtime
from .app import Dispatch, create_app

__all__ = ["create_app", "serve"]

log = logging.getLogger(__name__)

#: Shorter tokens are accepted but warned about: the token is the only key to the dashboard.
MIN_TOKEN_LENGTH = 16


def serve(rt: Runtime, dispatch: Dispatch | None, *, host: str, port: int) -> None:
    """Run the dashboard until interrupted (uvicorn; its logs go through our redacting handler)."""
    import uvicorn

    app = create_app(rt, dispatch)
    if len(rt.settings.dashboard_token or "") < MIN_TOKEN_LENGTH:
        log.warning("DISPATCHER_DASHBOARD_TOKEN is shorter than %d characters: use a long random token",
                    MIN_TOKEN_LENGTH)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard listens on %s: put it behind TLS (a reverse proxy) before using it over a network",
                    host)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, server_header=False, access_log=True)
    uvicorn.Server(config).run()
