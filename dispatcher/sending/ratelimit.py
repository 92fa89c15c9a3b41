"""Global rate limits in Redis, shared by every worker thread, process and host (SPEC §8).

Dramatiq's Window and Bucket limiters count per calendar second, which lets a sliding second hold twice
the cap, and in raise mode a refusal burns a retry. Here every send is logged with Redis server time in a
sorted set per scope; a send may leave only when the last ``window`` seconds hold fewer than ``cap``
sends in every scope it belongs to (channel, recipient domain). One Lua script checks and records all
scopes atomically. When the provider call ends, the send's entries are stamped again with that time
(:meth:`RateLimiter.sent`): the request reached the provider somewhere between slot and answer, so each
send counts over that whole span and no sliding second *at the provider* holds more than the cap, however
long the gap between slot and request (serialising, a busy host) and whatever the number of hosts.
A daily quota (SES's rolling 24 hours) is counted in hourly buckets: conservative, never over.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from dispatcher.broker import keys
from dispatcher.sending.line import register

#: Runs the acquire script (its keys, its arguments) and returns its reply: by default on the limiter's
#: client; a batch runs it together with its send mark (dispatcher/sending/marks.py).
Runner = Callable[[list[str], list[Any]], Any]

# KEYS: window scopes..., their burst sets (same order), then quota buckets (current hour first)
# ARGV: now_us?(unused) n_windows cap1 window_us1 ... n_quota quota hour_us cost member_prefix
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n_windows = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local prefix = ARGV[3]
local wait = 0
local arg = 4
for i = 1, n_windows do
  local key = KEYS[i]
  local burst = KEYS[n_windows + i]
  local cap = tonumber(ARGV[arg]); local window = tonumber(ARGV[arg + 1])
  local subcap = tonumber(ARGV[arg + 2]); local sub = tonumber(ARGV[arg + 3]); arg = arg + 4
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local used = redis.call('ZCARD', key)
  if used + cost > cap then
    -- the send may leave when enough of the oldest entries have aged out
    local need = used + cost - cap
    local oldest = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now + 1
    if w > wait then wait = w end
  end
  -- and no burst: a tenth of the window holds at most a tenth of the cap. Counted on slot times (the
  -- burst set is never re-stamped), or the end-of-call stamps would stretch every tenth by a call.
  redis.call('ZREMRANGEBYSCORE', burst, '-inf', now - sub - 1)
  local sub_used = redis.call('ZCOUNT', burst, now - sub, '+inf')
  if sub_used + cost > subcap and sub_used > 0 then
    -- only the entry that has to age out is read (a high cap keeps many entries in a tenth)
    local need = math.min(sub_used, sub_used + cost - subcap)
    local entry = redis.call('ZRANGEBYSCORE', burst, now - sub, '+inf', 'WITHSCORES', 'LIMIT', need - 1, 1)
    local w = tonumber(entry[2]) + sub - now + 1
    if w > wait then wait = w end
  end
end
local n_quota = tonumber(ARGV[arg])
if n_quota > 0 then
  local quota = tonumber(ARGV[arg + 1]); local hour = tonumber(ARGV[arg + 2])
  local used = 0
  for i = 1, n_quota do
    used = used + tonumber(redis.call('GET', KEYS[2 * n_windows + i]) or '0')
  end
  if used + cost > quota then
    local w = hour - (now % hour) + 1
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i = 1, n_windows do
  for _, key in ipairs({KEYS[i], KEYS[n_windows + i]}) do
    for c = 1, cost do
      redis.call('ZADD', key, now, prefix .. ':' .. c)
    end
    redis.call('PEXPIRE', key, 120000)
  end
end
if n_quota > 0 then
  redis.call('INCRBY', KEYS[2 * n_windows + 1], cost)
  redis.call('PEXPIRE', KEYS[2 * n_windows + 1], 26 * 3600 * 1000)
end
return 0
"""

# KEYS: the window scopes of one send; ARGV: cost member_prefix. Missing entries (aged out during a long
# call) are added back: the send may have reached the provider only now.
_SENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local prefix = ARGV[2]
for i = 1, #KEYS do
  for c = 1, cost do
    redis.call('ZADD', KEYS[i], now, prefix .. ':' .. c)
  end
  redis.call('PEXPIRE', KEYS[i], 120000)
end
return 0
"""

#: The acquire script as a Lua function of (KEYS, ARGV), for a script that takes a slot and does more.
ACQUIRE_FUNCTION = f"local function acquire(KEYS, ARGV)\n{_ACQUIRE}\nend\n"

HOUR_US = 3_600_000_000
#: The window is also cut in this many slices, each holding at most its share of the cap: sends flow
#: evenly instead of bursting at each window boundary (carriers throttle bursts).
BURST_SLICES = 10


@dataclass(frozen=True)
class Limit:
    scope: str
    per_second: float
    #: The sliding window; slightly over one second so that the spread between taking a slot and the
    #: request reaching the provider cannot squeeze two windows' sends into one provider second.
    window: float = 1.0

    @property
    def cap_and_window_us(self) -> tuple[int, int]:
        """As (sends, microseconds), with small caps kept whole (0.5/s = 1 send per 2 s)."""
        if self.per_second >= 1:
            return max(1, int(self.per_second * self.window)), int(self.window * 1_000_000)
        return 1, int(self.window / self.per_second * 1_000_000)


@dataclass(frozen=True)
class Quota:
    scope: str
    per_day: int


class RateLimiter:
    def __init__(self, client: redis.Redis, *, margin: float = 0.01) -> None:
        self.client = client
        self.margin = margin
        self._script = client.register_script(_ACQUIRE)
        self._sent = client.register_script(_SENT)
        register(_ACQUIRE), register(_SENT)

    def try_acquire(
        self,
        limits: list[Limit],
        quota: Quota | None = None,
        cost: int = 1,
        token: str | None = None,
        run: Runner | None = None,
    ) -> float:
        """Take ``cost`` slots in every limit at once, or none. Returns 0, or seconds to wait.

        ``token`` names the slots, for :meth:`sent` once the provider call is over. ``run``: how to run
        the script (see :data:`Runner`).
        """
        keys_: list[str] = []
        args: list[int | str] = [len(limits), 0, token or uuid.uuid4().hex]
        costs = []
        for limit in limits:
            cap, window_us = limit.cap_and_window_us
            keys_.append(keys.rate(limit.scope))
            window_us += int(self.margin * 1_000_000)
            args += [cap, window_us, max(1, math.ceil(cap / BURST_SLICES)), window_us // BURST_SLICES]
            costs.append(cap)
        keys_ += [keys.rate(f"{limit.scope}:burst") for limit in limits]
        # A message of more parts than the cap can never fit whole: it takes the whole window.
        cost = max(1, min([cost, *costs]))
        args[1] = cost
        if quota is not None:
            now_hour = int(time.time() // 3600)
            keys_ += [keys.quota(f"{quota.scope}:{now_hour - i}") for i in range(24)]
            args += [24, quota.per_day, HOUR_US]
        else:
            args += [0]
        wait_us = int(run(keys_, args) if run is not None else self._script(keys=keys_, args=args))
        return wait_us / 1_000_000

    def acquire(
        self,
        limits: list[Limit],
        quota: Quota | None = None,
        cost: int = 1,
        max_wait: float = 30.0,
        token: str | None = None,
        run: Runner | None = None,
    ) -> float:
        """Block until the send may leave; returns 0, or the wait still needed if over ``max_wait``."""
        if not limits and quota is None:
            return 0.0
        deadline = time.monotonic() + max_wait
        while True:
            wait = self.try_acquire(limits, quota, cost, token, run)
            if wait <= 0:
                return 0.0
            if time.monotonic() + wait > deadline:
                return wait
            # Sleep to the computed moment, plus a little jitter so waiting threads do not stampede.
            time.sleep(wait + random.uniform(0, 0.002))

    def sent(self, limits: list[Limit], token: str, cost: int = 1, client: Any = None) -> None:
        """The provider call that took slots ``token`` is over: they count from now on (see the module).
        ``client``: a pipeline or a batch's :class:`Line` to queue the call on instead."""
        if not limits:
            return
        cost = max(1, min([cost, *(limit.cap_and_window_us[0] for limit in limits)]))
        names = [keys.rate(limit.scope) for limit in limits]
        if client is None:
            self._sent(keys=names, args=[cost, token])
        else:  # queued as a plain EVALSHA (a line loads the script if the server lacks it; see line.py)
            client.evalsha(self._sent.sha, len(names), *names, cost, token)
