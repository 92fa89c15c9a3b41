"""Log redaction on hostile input: ``redact()`` and the whole log filter, against a linear pass, same run.

Each input is built to defeat a backtracking pattern (long runs of what one pattern is made of, without the
character that would complete it). The baseline is ``str.translate`` over the same text (one linear pass in
C, touching every character); ratios near a constant across 40 KB, 512 KB and 5 MB mean linear time (a
quadratic pattern would grow the ratio about 12x and 10x between the sizes).

    .venv/bin/python bench/redaction.py [--sizes 40000 524288 5242880] [--write]
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import string
import time
from collections.abc import Callable
from functools import partial

from common import machine, write_section

from dispatcher.core.privacy import RedactingFilter, redact

UNITS: dict[str, str] = {
    "digits": "1",
    "a@a.": "a@a.",
    "http://": "http://",
    "+1 1 1": "+1 1 1 ",
    "letters": "a",
    "host.path": "a.b",
    "percent": "%3A%2F",
    "alternating": "a1.-+@/",
    "full-width digits": "０",
    "japanese + digits": "電話0",
}
_IDENTITY = str.maketrans("", "")
#: A second baseline: the cheapest regular-expression scan that must look at every position (no literal
#: prefix for the engine to skip ahead with), i.e. what one linear pattern costs at least.
_ONE_PASS = re.compile(r"(?<=[^\x00])\x00")


def hostile(kind: str, size: int) -> str:
    if kind == "random printable":
        rng = random.Random(size)
        return "".join(rng.choices(string.printable, k=size))
    unit = UNITS[kind]
    return (unit * (size // len(unit) + 1))[:size]


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _translate(text: str) -> str:
    return text.translate(_IDENTITY)


def log_filter(text: str) -> None:
    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "refused %s", (text,), None)
    RedactingFilter().filter(record)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[40_000, 524_288, 5_242_880])
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    kinds = [*UNITS, "random printable"]
    lines = [
        f"machine: {machine()}",
        "",
        "| input | size | translate | one regex pass | redact() | / translate | / regex pass | log filter |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst: dict[int, float] = {}
    for size in args.sizes:
        for kind in kinds:
            text = hostile(kind, size)
            base, scan, ours, logged = (
                best_of(partial(fn, text)) for fn in (_translate, _ONE_PASS.search, redact, log_filter)
            )
            worst[size] = max(worst.get(size, 0.0), ours / base)
            lines.append(
                f"| {kind} | {size:,} | {base * 1000:.2f} ms | {scan * 1000:.2f} ms | {ours * 1000:.1f} ms "
                f"| {ours / base:.0f}x | {ours / scan:.1f}x | {logged * 1000:.2f} ms |"
            )
    lines.append("")
    lines.append(
        "worst redact()/baseline ratio per size: "
        + ", ".join(f"{size:,}: {ratio:.1f}x" for size, ratio in worst.items())
    )
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("Log redaction on hostile input", body)


if __name__ == "__main__":
    main()
