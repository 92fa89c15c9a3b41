"""The Dramatiq broker, built from settings. All Redis key names of our own live in ``keys``."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq
import dramatiq.common
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import JSONEncoder
from dramatiq.middleware import Middleware

from dispatcher.core.privacy import redact

QUEUE = "deliveries"
NAMESPACE = "dispatcher"


class keys:
    """Every Redis key dispatcher itself uses (the broker's own keys live under ``dispatcher:``)."""

    prefix = "dispatcher:x"

    @staticmethod
    def rate(scope: str) -> str:
        return f"{keys.prefix}:rate:{scope}"

    @staticmethod
    def quota(scope: str) -> str:
        return f"{keys.prefix}:quota:{scope}"

    @staticmethod
    def sweep_lock() -> str:
        return f"{keys.prefix}:sweep-lock"

    @staticmethod
    def send_from_sweep(at: str) -> str:
        """Taken by the one sweeper (across hosts) that releases the work held for the ``send_from`` ``at``."""
        return f"{keys.prefix}:sweep-send-from:{at}"

    @staticmethod
    def dashboard_signing_key() -> str:
        return f"{keys.prefix}:dashboard:signing-key"

    @staticmethod
    def dashboard_session(generation: str, sid: str) -> str:
        return f"{keys.prefix}:dashboard:session:{generation}:{sid}"

    @staticmethod
    def dashboard_pending_resend(nonce: str) -> str:
        return f"{keys.prefix}:dashboard:pending-resend:{nonce}"


#: What is kept of a traceback that Dramatiq's Retries middleware puts in a retried message: its end.
MAX_TRACEBACK_CHARS = 2000


class RedactTracebacks(Middleware):
    """Dramatiq's Retries middleware stores the failure's traceback (exception text included, which may
    quote a contact or a receipt URL) in the options of the message it enqueues again, that is in Redis.
    Before any message is written, that traceback is cut to its last :data:`MAX_TRACEBACK_CHARS` characters
    and redacted. A new message carries no traceback, so the bulk enqueue path may ignore this hook."""

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        text = message.options.get("traceback")
        if text is not None:
            message.options["traceback"] = redact(str(text)[-MAX_TRACEBACK_CHARS:])


def build_broker(redis_url: str) -> RedisBroker:
    # A dead worker's messages come back after heartbeat_timeout; the ledger's claim makes the redelivery
    # harmless, so a short timeout only costs a few harmless re-reads.
    broker = RedisBroker(  # type: ignore[no-untyped-call]  # dramatiq's constructor is unannotated
        url=redis_url, namespace=NAMESPACE, heartbeat_timeout=15_000, maintenance_chance=10_000
    )
    broker.add_middleware(RedactTracebacks())
    return broker


_installed: RedisBroker | None = None


def install(redis_url: str) -> RedisBroker:
    global _installed
    broker = build_broker(redis_url)
    dramatiq.set_broker(broker)
    _installed = broker
    # Actors bind to a broker when declared; a later install (scripts, tests) re-binds ours.
    actors = sys.modules.get("dispatcher.sending.actors")
    for name in ("send_delivery", "send_deliveries"):
        actor = getattr(actors, name, None) if actors is not None else None
        if actor is not None:
            actor.broker = broker
            broker.declare_actor(actor)
    return broker


def uninstall() -> None:
    global _installed
    if _installed is not None:
        _installed.close()
    _installed = None


def installed() -> RedisBroker | None:
    return _installed


def queue_depth(broker: RedisBroker) -> int:
    """Messages held by the broker for our queue (waiting, delayed or in flight)."""
    names = [f"{NAMESPACE}:{QUEUE}.msgs", f"{NAMESPACE}:{dramatiq.common.dq_name(QUEUE)}.msgs"]
    return sum(int(broker.client.hlen(name)) for name in names)


def enqueue_many(broker: RedisBroker, messages: list[dramatiq.Message[Any]], batch: int = 1000) -> None:
    """Enqueue messages through one non-transactional pipeline per ``batch``.

    Dramatiq's own ``enqueue`` costs a round trip per message (~5,000/s here); this runs the broker's
    own dispatch script for each message, pipelined (~25,000/s). It relies on RedisBroker internals
    (``scripts["dispatch"]``), so it falls back to plain ``enqueue`` if they change.
    """
    script = getattr(broker, "scripts", {}).get("dispatch")
    if script is None or not hasattr(broker, "_max_unpack_size"):
        for message in messages:
            broker.enqueue(message)
        return
    from dramatiq.common import current_millis

    for start in range(0, len(messages), batch):
        with broker.client.pipeline(transaction=False) as pipe:
            for message in messages[start : start + batch]:
                message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
                broker.emit_before("enqueue", message, None)
                args = [
                    "enqueue",
                    current_millis(),
                    message.queue_name,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    0,
                    broker._max_unpack_size(),  # type: ignore[no-untyped-call]
                    message.options["redis_message_id"],
                    message.encode(),
                ]
                script(args=args, keys=[broker.namespace], client=pipe)
            pipe.execute()


#: The RFC 4122 variant nibble ("10xx") for each hex digit of random bits.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid4_strings(n: int) -> list[str]:
    """``n`` values shaped as ``str(uuid.uuid4())`` (version 4, RFC 4122 variant), from one read of the OS
    random source."""
    h = os.urandom(16 * n).hex()
    v = _VARIANT
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{v[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


_SLOT = re.compile(r'"\\u0001(ARG|RID|MID|TS)\\u0001"')  # a slot as json.dumps writes "\x01ARG\x01"


def _message_template(actor: dramatiq.Actor[Any, Any]) -> list[str] | None:
    """The encoded message of ``actor(<id>)`` as Dramatiq's RedisBroker would store it, cut at its variable
    parts (argument, Redis message id, message id, timestamp): literal pieces alternate with slot names."""
    probe = actor.message(0).copy(options={"redis_message_id": "R"})
    data = probe.asdict()
    data.update(
        args=["\x01ARG\x01"],
        message_id="\x01MID\x01",
        message_timestamp="\x01TS\x01",
        options={**probe.options, "redis_message_id": "\x01RID\x01"},
    )
    pieces = _SLOT.split(json.dumps(data, separators=(",", ":")))
    return pieces if sorted(pieces[1::2]) == ["ARG", "MID", "RID", "TS"] else None


def _fast_path(broker: RedisBroker) -> bool:
    """Whether messages may be written without Message objects: JSON encoding and no enqueue hooks."""
    if type(dramatiq.get_encoder()) is not JSONEncoder or not hasattr(broker, "broker_id"):
        return False
    return all(isinstance(m, RedactTracebacks) or _no_enqueue_hooks(m) for m in broker.middleware)


def _no_enqueue_hooks(middleware: Middleware) -> bool:
    kind = type(middleware)
    return kind.before_enqueue is Middleware.before_enqueue and kind.after_enqueue is Middleware.after_enqueue


def _format(pieces: list[str], stamp: int) -> tuple[str, list[int]]:
    """A %-format of the message for one timestamp, and which of (id, redis id, message id) fills each slot."""
    fmt = "".join(
        p.replace("%", "%%") if not i % 2 else str(stamp) if p == "TS" else "%s" if p == "ARG" else '"%s"'
        for i, p in enumerate(pieces)
    )
    return fmt, [("ARG", "RID", "MID").index(p) for p in pieces[1::2] if p != "TS"]


def _json_arg(arg: int | Sequence[int]) -> str:
    """An id, or a list of ids, as Dramatiq's JSON encoder writes it."""
    if isinstance(arg, int):
        return str(int(arg))
    return "[" + ",".join(str(int(i)) for i in arg) + "]"


def _encode(
    fmt: str, pick: list[int], chunk: Sequence[int | Sequence[int]], rids: list[str], mids: list[str]
) -> dict[str, str]:
    if pick == [0, 1, 2]:  # Dramatiq's own field order
        return {rid: fmt % (_json_arg(d), rid, mid) for d, rid, mid in zip(chunk, rids, mids, strict=True)}
    bodies = {}
    for d, rid, mid in zip(chunk, rids, mids, strict=True):
        values = (_json_arg(d), rid, mid)
        bodies[rid] = fmt % tuple(values[i] for i in pick)
    return bodies


def enqueue_ids(
    broker: RedisBroker, actor: dramatiq.Actor[Any, Any], ids: Sequence[int | Sequence[int]], batch: int = 5000
) -> None:
    """One message ``actor(arg)`` per element of ``ids`` (a delivery id, or a list of them), written to Redis
    in bulk.

    Dramatiq's enqueue builds, copies and encodes a Message and runs its dispatch script for each message
    (a round trip each: ~5,000/s here; pipelined ~25,000/s). Here each message is encoded from a template
    checked against Dramatiq's own encoding of the first one, and a batch lands with one HSET (the message
    bodies) and one RPUSH (the queue), in one MULTI/EXEC: exactly the keys and values Dramatiq's
    ``enqueue`` command writes, so its workers fetch, ack and recover them as their own. When a middleware
    hooks enqueueing, the encoder is not JSON, or the template does not reproduce Dramatiq's bytes, every
    message goes through Dramatiq's own path (:func:`enqueue_many`).
    """
    if not ids:
        return
    pieces = _message_template(actor) if _fast_path(broker) else None
    if pieces is not None:
        first = actor.message(ids[0]).copy(options={"redis_message_id": "R"})
        fmt, pick = _format(pieces, first.message_timestamp)
        if _encode(fmt, pick, ids[:1], ["R"], [first.message_id])["R"].encode() != first.encode():
            pieces = None
    if pieces is None:
        enqueue_many(broker, [actor.message(i) for i in ids])
        return
    from dramatiq.common import current_millis

    queue_key = f"{broker.namespace}:{actor.queue_name}"
    heartbeats = f"{broker.namespace}:__heartbeats__"
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        stamp = current_millis()
        fmt, pick = _format(pieces, stamp)
        rids = _uuid4_strings(len(chunk))
        bodies = _encode(fmt, pick, chunk, rids, _uuid4_strings(len(chunk)))
        with broker.client.pipeline(transaction=True) as pipe:
            pipe.zadd(heartbeats, {broker.broker_id: stamp})
            mapping: Mapping[Any, Any] = bodies  # redis-py's key type is a union; ours are str
            pipe.hset(f"{queue_key}.msgs", mapping=mapping)
            pipe.rpush(queue_key, *rids)
            pipe.execute()
