"""uvicorn's server, minus one habit: re-raising SIGTERM/SIGINT after its graceful shutdown.

That re-raise kills the process before the command's own cleanup runs, so the embedded Redis that
``dispatcher dashboard`` started was left running after every stop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
