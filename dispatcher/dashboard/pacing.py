"""Pacing of failed token checks (login form, Bearer header, metrics token), per client and for everyone.

A request is never delayed: while a budget is spent the token is not even compared and the answer is 429
with ``Retry-After``, so guessing gets slower without holding the event loop or anyone else's request.

- Per client (an IPv4 address, an IPv6 /64): the first few failures are free, then each one locks that
  client out for twice as long as the previous one, up to :data:`MAX_LOCK` seconds.
- Globally: at most :data:`GLOBAL_BUDGET` failures per :data:`GLOBAL_WINDOW` seconds, from all clients
  together (an attacker with many addresses). While that is spent, only clients that signed in successfully
  recently keep being checked, so operators already at work are not locked out by someone else's attack.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

FREE_FAILURES = 5
MAX_LOCK = 15 * 60.0
#: A client's failures are forgotten this long after its last one.
FORGET_AFTER = 3600.0
GLOBAL_BUDGET = 100
GLOBAL_WINDOW = 60.0
#: A client that presented a valid token stays "known" (checked during a global lock-out) this long.
KNOWN_FOR = 12 * 3600.0
#: Bounds on what is remembered, so a flood of addresses cannot grow the process.
MAX_CLIENTS = 50_000

_T = TypeVar("_T")


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


def client_key(host: str | None) -> str:
    """What failures are counted against: an IPv4 address, or an IPv6 /64 (one subscriber's usual share)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "other"  # a unix socket or a name: all such peers share one budget
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailurePacer:
    def __init__(
        self,
        *,
        free: int = FREE_FAILURES,
        global_budget: int = GLOBAL_BUDGET,
        global_window: float = GLOBAL_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.global_window = global_window
        self.clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()
        self._known: OrderedDict[str, float] = OrderedDict()
        #: Times of the most recent failures, at most the global budget of them.
        self._recent: deque[float] = deque(maxlen=global_budget)
        #: Counters for the operator (and the tests): guesses answered 429 without a check.
        self.refused = 0
        self.failed_total = 0

    def wait(self, client: str) -> float | None:
        """Seconds ``client`` must wait before its token is checked again; None when it may go ahead."""
        now = self.clock()
        entry = self._clients.get(client)
        if entry is not None and entry.locked_until > now:
            return self._refuse(entry.locked_until - now)
        if self._global_spent(now) and not self._is_known(client, now):
            return self._refuse(self._recent[0] + self.global_window - now)
        return None

    def failed(self, client: str) -> float | None:
        """Count a failure; returns for how long the client is now locked out, if it is."""
        now = self.clock()
        self.failed_total += 1
        self._recent.append(now)
        entry = self._clients.pop(client, None)
        if entry is None or now - entry.last > FORGET_AFTER:
            entry = _Failures()
        entry.count += 1
        entry.last = now
        if entry.count > self.free:
            entry.locked_until = now + min(2.0 ** (entry.count - self.free - 1), MAX_LOCK)
        self._clients[client] = entry
        _bound(self._clients)
        return entry.locked_until - now if entry.locked_until > now else None

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
        self._known.pop(client, None)
        self._known[client] = self.clock()
        _bound(self._known)

    def _refuse(self, seconds: float) -> float:
        self.refused += 1
        return max(seconds, 1.0)

    def _global_spent(self, now: float) -> bool:
        full = len(self._recent) == self._recent.maxlen
        return full and now - self._recent[0] < self.global_window

    def _is_known(self, client: str, now: float) -> bool:
        since = self._known.get(client)
        return since is not None and now - since < KNOWN_FOR


def _bound(entries: OrderedDict[str, _T]) -> None:
    while len(entries) > MAX_CLIENTS:
        entries.popitem(last=False)


def retry_after(seconds: float) -> str:
    return str(math.ceil(seconds))
