"""Send marks: what a worker was doing with each delivery of a batch, in Redis, for the sweep after a crash.

A batch of deliveries is claimed in one ledger statement and recorded in another, so between the two the
ledger only says ``sending``. The marks say more, one hash per batch (``dispatcher:x:marks:<token>``):

- ``_``: the epoch the batch was opened in (written before the claim; the ledger's ``claim_mark`` holds
  the same epoch and the token);
- ``<id>`` = ``a``: about to call the provider (written, and acknowledged, right before the call);
- ``<id>`` = ``s<TAB>provider<TAB>message id``: the provider took it; ``n``: it did not (a retryable error);
  ``f<TAB>code``: refused for good; ``r``: revoked by the sweep (the worker must not send it any more).

The epoch is Redis's ``run_id`` (new at every start of the server, whatever it restored from disk) and a
random value in ``dispatcher:x:marks:epoch`` (gone after FLUSHALL/FLUSHDB). When the epoch a batch was
claimed in is not the current one, or its hash lost its ``_`` field (flushed, expired), its marks may be
incomplete and the sweep assumes the worst: ``unknown``, never a resend. The worker's ``a`` and the
sweep's ``r`` are both ``HSETNX`` of the same field, so exactly one of them wins: a delivery the sweep hands
back is never sent by the worker that claimed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from dispatcher.broker import keys
from dispatcher.sending.line import Line, register
from dispatcher.sending.ratelimit import ACQUIRE_FUNCTION

ABOUT, NOT_TAKEN, REVOKED, SENT, REFUSED = "a", "n", "r", "s", "f"
#: What the sweep finds when the marks of a batch cannot be trusted.
LOST = "lost"

_EPOCH_KEY = f"{keys.prefix}:marks:epoch"

# KEYS: epoch key, batch hash; ARGV: a fresh random value for the epoch key, the hash's TTL in seconds
_OPEN = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = run .. ':' .. redis.call('GET', KEYS[1])
redis.call('HSET', KEYS[2], '_', epoch)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return epoch
"""
# KEYS: batch hash; ARGV: field, epoch. 1: marked; 0: the field was set already (revoked); -1: hash lost
_ABOUT = """
if redis.call('HGET', KEYS[1], '_') ~= ARGV[2] then return -1 end
return redis.call('HSETNX', KEYS[1], ARGV[1], 'a')
"""
# A rate slot and the about mark in one: KEYS: batch hash, then the rate limiter's keys; ARGV: field,
# epoch, then the rate limiter's arguments. -1: hash lost; -2: revoked (no slot taken); 0: slot taken and
# marked; > 0: no slot yet, the wait in microseconds (not marked).
_ABOUT_WITH_SLOT = (
    ACQUIRE_FUNCTION
    + """
if redis.call('HGET', KEYS[1], '_') ~= ARGV[2] then return -1 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -2 end
local k, a = {}, {}
for i = 2, #KEYS do k[i - 1] = KEYS[i] end
for i = 3, #ARGV do a[i - 2] = ARGV[i] end
local wait = acquire(k, a)
if wait > 0 then return wait end
redis.call('HSET', KEYS[1], ARGV[1], 'a')
return 0
"""
)
# KEYS: epoch key, batch hash; ARGV: field, epoch. The mark, 'lost', or 'r' when this call revoked it.
_VERDICT = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local value = redis.call('GET', KEYS[1])
if not value or run .. ':' .. value ~= ARGV[2] then return 'lost' end
if redis.call('HGET', KEYS[2], '_') ~= ARGV[2] then return 'lost' end
if redis.call('HSETNX', KEYS[2], ARGV[1], 'r') == 1 then return 'r' end
return redis.call('HGET', KEYS[2], ARGV[1])
"""

_OPEN_SHA, _ABOUT_SHA, _ABOUT_WITH_SLOT_SHA = register(_OPEN), register(_ABOUT), register(_ABOUT_WITH_SLOT)


def batch_key(token: str) -> str:
    return f"{keys.prefix}:marks:{token}"


class MarksLost(RuntimeError):
    """The batch's hash is gone (Redis flushed or restarted): nothing more may be sent under it."""


class Revoked(RuntimeError):
    """The sweep took the delivery back before it was marked: it is no longer this batch's to send."""


@dataclass
class BatchMarks:
    """The marks of one batch, written by the one thread that sends it, on its own :class:`Line`."""

    line: Line
    token: str
    epoch: str
    #: Deliveries marked "about to send" together with their rate slot (see :meth:`with_slot`).
    marked: set[int] = field(default_factory=set)

    @property
    def claim_mark(self) -> str:
        """What the ledger keeps with each claimed delivery: the epoch and where the marks are."""
        return f"{self.epoch}/{self.token}"

    def about(self, delivery_id: int) -> bool:
        """Mark the delivery as about to be sent (with whatever the line has queued: the outcomes noted so
        far, a rate slot's re-stamp; one round trip).

        True: the provider may be called. False: the sweep revoked it (it is no longer ours). Raises
        :class:`MarksLost` when the hash is gone, and Redis errors as they come: do not call then."""
        reply = self.line.script(_ABOUT_SHA, [batch_key(self.token)], [str(delivery_id), self.epoch])
        if int(reply) < 0:
            raise MarksLost("the send marks of this batch are gone (Redis restarted or flushed)")
        return int(reply) == 1

    def with_slot(self, delivery_id: int) -> Callable[[list[str], list[Any]], int]:
        """A runner for the rate limiter's script (:data:`~.ratelimit.Runner`) that also marks the delivery
        "about to send" when, and only when, its slot is taken: one round trip instead of two. Raises
        :class:`MarksLost`, or :class:`Revoked` (then no slot was taken)."""

        def run(keys_: list[str], args: list[Any]) -> int:
            key = batch_key(self.token)
            reply = int(self.line.script(_ABOUT_WITH_SLOT_SHA, [key, *keys_], [str(delivery_id), self.epoch, *args]))
            if reply == -1:
                raise MarksLost("the send marks of this batch are gone (Redis restarted or flushed)")
            if reply == -2:
                raise Revoked(f"delivery {delivery_id} was taken back by the sweep")
            if reply == 0:
                self.marked.add(delivery_id)
            return reply

        return run

    def outcome(self, delivery_id: int, *parts: str) -> None:
        """Note what the provider answered; written with the next round trip, or by :meth:`flush`."""
        self.line.hset(batch_key(self.token), {str(delivery_id): "\t".join(parts)})

    def flush(self) -> None:
        """Write what is queued (the outcomes noted so far) now."""
        self.line.flush()

    def close(self) -> None:
        """The batch is recorded in the ledger: its marks are no longer needed. The line goes back."""
        try:
            self.line.queued = []
            self.line.call("DEL", batch_key(self.token))
        finally:
            self.line.close()

    def release(self) -> None:
        """The line goes back to the pool (again: harmless); the hash stays, for the sweep."""
        self.line.close()


def open_batch(client: redis.Redis, ttl_seconds: int) -> BatchMarks:
    """A new batch's hash, before its claim. Raises Redis errors (then nothing is claimed)."""
    token = uuid.uuid4().hex
    line = Line(client)
    try:
        epoch = line.script(_OPEN_SHA, [_EPOCH_KEY, batch_key(token)], [uuid.uuid4().hex, ttl_seconds])
    except BaseException:
        line.close()
        raise
    return BatchMarks(line, token, epoch.decode() if isinstance(epoch, bytes) else str(epoch))


def verdict(client: redis.Redis, claim_mark: str, delivery_id: int) -> str:
    """For the sweep: what the marks say about a delivery claimed under ``claim_mark`` (revoking it when
    there is no mark): ``lost``, ``r`` (never called), ``a``, ``n``, ``s\\t…``, ``f\\t…``."""
    epoch, _, token = claim_mark.rpartition("/")
    if not epoch or not token:
        return LOST
    reply = _script(client, "verdict")(
        keys=[_EPOCH_KEY, batch_key(token)], args=[str(delivery_id), epoch], client=client
    )
    if reply is None:
        return LOST
    return reply.decode() if isinstance(reply, bytes) else str(reply)


_SOURCES = {"verdict": _VERDICT}
_registered: dict[str, Any] = {}


def _script(client: redis.Redis, name: str) -> Any:
    """The script object (it runs on the client or pipeline passed to each call)."""
    script = _registered.get(name)
    if script is None:
        script = _registered[name] = client.register_script(_SOURCES[name])
    return script
