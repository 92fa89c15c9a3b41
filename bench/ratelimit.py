"""Rate limiter: achieved rate and worst sliding one-second window, ours vs Dramatiq's, same run.

2 processes × 8 threads hammer one limit for a few seconds at each cap; every granted slot's wall time is
recorded. Baseline: Dramatiq's WindowRateLimiter (Redis backend) in block mode (raise_on_failure=False,
retry at once), which reaches the cap but counts per calendar second.

    .venv/bin/python bench/ratelimit.py [--caps 10 50 200 1000] [--seconds 6] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time

import redis
from common import machine, max_in_window, redis_url, write_section

PROCESSES, THREADS = 2, 8


def _ours(cap: float, seconds: float, start_at: float, out: mp.Queue) -> None:
    from dispatcher.sending.ratelimit import Limit, RateLimiter

    limiter = RateLimiter(redis.Redis.from_url(redis_url()))
    limit = [Limit(f"bench:{cap}", cap)]
    times: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while time.time() < end:
            if limiter.acquire(limit, max_wait=seconds) == 0 and time.time() < end:
                with lock:
                    times.append(time.time())

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(times)


def _dramatiq(cap: float, seconds: float, start_at: float, out: mp.Queue) -> None:
    from dramatiq.rate_limits import WindowRateLimiter
    from dramatiq.rate_limits.backends import RedisBackend

    backend = RedisBackend(client=redis.Redis.from_url(redis_url()))
    limiter = WindowRateLimiter(backend, f"bench-dramatiq:{cap}:{start_at}", limit=int(cap), window=1)
    times: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while time.time() < end:
            with limiter.acquire(raise_on_failure=False) as acquired:
                if acquired and time.time() < end:
                    with lock:
                        times.append(time.time())
                elif not acquired:
                    time.sleep(0.001)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(times)


def measure(target, cap: float, seconds: float) -> tuple[float, int]:
    queue: mp.Queue = mp.Queue()
    start_at = time.time() + 1.0
    procs = [mp.Process(target=target, args=(cap, seconds, start_at, queue)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in queue.get()]
    for p in procs:
        p.join()
    # Skip the first second: the very first window starts empty for both limiters.
    steady = [t for t in times if t >= start_at + 1.0]
    achieved = len(steady) / (seconds - 1.0)
    return achieved, max_in_window(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--caps", type=float, nargs="*", default=[10, 50, 200, 1000])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    redis.Redis.from_url(redis_url()).flushdb()
    rows = []
    for cap in args.caps:
        ours = measure(_ours, cap, args.seconds)
        base = measure(_dramatiq, cap, args.seconds)
        rows.append((cap, ours, base))
        print(
            f"cap {cap:>6g}/s  ours: {ours[0]:8.1f}/s ({ours[0] / cap:6.1%}), worst 1-s window {ours[1]:5d}"
            f"  | dramatiq WindowRateLimiter: {base[0]:8.1f}/s ({base[0] / cap:6.1%}), worst window {base[1]:5d}",
            flush=True,
        )
    table = [
        "| cap/s | ours: achieved | ours / cap | ours: worst sliding 1 s | Dramatiq Window (block): achieved "
        "| its worst sliding 1 s | worst window, ours vs Dramatiq |",
        "|---|---|---|---|---|---|---|",
    ]
    for cap, (rate, worst), (brate, bworst) in rows:
        table.append(
            f"| {cap:g} | {rate:,.1f} | {rate / cap:.1%} | {worst:,} ({worst / cap:.2f}× cap) | "
            f"{brate:,.1f} | {bworst:,} ({bworst / cap:.2f}× cap) | {worst / max(bworst, 1):.2f} |"
        )
    body = (
        f"## Rate limiter (global, Redis)\n\n{machine()}; {PROCESSES} processes × {THREADS} threads, "
        f"{args.seconds:g} s per cap; command: `.venv/bin/python bench/ratelimit.py --write`.\n"
        "Target: ≥ 97 % of the cap, no sliding one-second window over it.\n\n" + "\n".join(table)
    )
    print(body)
    if args.write:
        write_section("ratelimit", body)


if __name__ == "__main__":
    main()
