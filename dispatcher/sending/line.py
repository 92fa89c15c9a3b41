"""One Redis connection a batch's thread holds while it sends: round trips that also carry queued writes.

A send makes one or two Redis round trips (its "about to send" mark, its rate slot). Through redis-py's
pipeline object each costs about three times the CPU of the same commands written on a connection held for
the batch (the pool checkout, the pipeline and its callbacks; docs/benchmarks.md). Writes that need no
answer of their own (the previous send's outcome mark, its rate-slot re-stamp) are queued and go with the
next round trip, or with :meth:`Line.flush`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

#: Lua sources by SHA1, so that a server that lacks one (restarted, SCRIPT FLUSH) gets it loaded.
_SOURCES: dict[str, str] = {}


def register(source: str) -> str:
    """The script's SHA1, for :meth:`Line.script` and :meth:`Line.evalsha`."""
    sha = hashlib.sha1(source.encode()).hexdigest()
    _SOURCES[sha] = source
    return sha


class Line:
    """Not shared between threads: each batch opens its own and closes it when done."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._pool = client.connection_pool
        self._conn: Any = self._pool.get_connection()
        #: Commands queued for the next round trip (their replies are read and dropped, errors raised).
        self.queued: list[tuple[Any, ...]] = []

    def hset(self, key: str, mapping: dict[Any, Any]) -> None:
        """Queued (named like the pipeline's method, so code that queues on a pipeline queues on a line)."""
        if mapping:
            self.queued.append(("HSET", key, *(x for pair in mapping.items() for x in pair)))

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> None:
        """Queued: a script call whose reply nobody needs (:meth:`script` for one that answers)."""
        self.queued.append(("EVALSHA", sha, numkeys, *args))

    def call(self, *command: Any) -> Any:
        """The queued commands, then this one, in one round trip; this one's reply."""
        return self._round_trip(command)[-1]

    def script(self, sha: str, keys: list[Any], args: list[Any]) -> Any:
        """A registered script (see :func:`register`), with the queued commands; its reply."""
        return self.call("EVALSHA", sha, len(keys), *keys, *args)

    def flush(self) -> None:
        if self.queued:
            self._round_trip(None)

    def _round_trip(self, command: tuple[Any, ...] | None) -> list[Any]:
        queued, self.queued = self.queued, []
        try:
            return self._exchange([*queued, command] if command is not None else queued)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # The queued writes may not have arrived: they go again with the next round trip (each one writes
            # this batch's own field, or moves a rate entry later; both are safe to repeat). The caller sees
            # the error and does not act on ``command``.
            self.queued = queued + self.queued
            raise

    def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        conn = self._conn
        if conn is None:
            raise redis.exceptions.ConnectionError("the batch's Redis line is closed")
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:  # an error reply: the others still have to be read
                replies.append(exc)
        for n, (command, reply) in enumerate(zip(commands, replies, strict=True)):
            if isinstance(reply, NoScriptError) and command[0] == "EVALSHA" and command[1] in _SOURCES:
                self.client.script_load(_SOURCES[command[1]])
                conn.send_packed_command(conn.pack_commands([command]))
                replies[n] = reply = conn.read_response()
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)
