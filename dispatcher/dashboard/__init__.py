"""The delivery dashboard (SPEC §9, issue 5): pages for operators, JSON API, Prometheus metrics.

``dispatcher dashboard`` serves :func:`create_app` with uvicorn.
"""

from __future__ import annotations

import logging

from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import Settings

from ..runtime import Runtime
from .app import Dispatch, check_credentials, create_app, trusted_proxies

__all__ = ["AccessLogTrim", "check_start", "create_app", "serve"]

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Request targets longer than this are cut in the access log (and their length given).
ACCESS_LOG_TARGET = 200


def check_start(settings: Settings, host: str) -> None:
    """Everything that must hold before the dashboard listens (ConfigError with the reason otherwise)."""
    check_credentials(settings, settings.dashboard_token)
    trusted_proxies(settings)
    if settings.dashboard_insecure_cookies and host not in LOOPBACK:
        raise ConfigError(
            f"DISPATCHER_DASHBOARD_INSECURE_COOKIES is allowed only on loopback ({', '.join(LOOPBACK)}): "
            "over a network the session cookie must be Secure; serve HTTPS (a reverse proxy)"
        )


class AccessLogTrim(logging.Filter):
    """Cuts long request targets in uvicorn's access lines: an attacker's 16 KB path is not copied whole
    into every log line (nor handed whole to the redacting handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and len(args[2]) > ACCESS_LOG_TARGET:
            target = args[2]
            cut = f"{target[:ACCESS_LOG_TARGET]}…[{len(target)} characters]"
            record.args = (args[0], args[1], cut, args[3], args[4])
        return True


def serve(rt: Runtime, dispatch: Dispatch | None, *, host: str, port: int) -> None:
    """Run the dashboard until interrupted (uvicorn; its logs go through our redacting handler)."""
    import uvicorn

    check_start(rt.settings, host)
    app = create_app(rt, dispatch)
    if host not in LOOPBACK:
        log.warning("dashboard listens on %s: put it behind TLS (a reverse proxy) before using it over a network", host)
    logging.getLogger("uvicorn.access").addFilter(AccessLogTrim())
    # Proxy headers are handled inside the app, from DISPATCHER_TRUSTED_PROXIES only (uvicorn's own default
    # would believe any local process).
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, server_header=False, access_log=True, proxy_headers=False
    )
    from .server import Server

    Server(config).run()
