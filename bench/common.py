"""Shared helpers for the benchmarks: machine facts, sliding windows, writing docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import date
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {date.today().isoformat()}"


def redis_url() -> str:
    return os.environ.get("DISPATCHER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Largest number of events inside any sliding window of ``window`` seconds."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between <!-- name --> markers in docs/benchmarks.md."""
    DOCS.parent.mkdir(exist_ok=True)
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text, encoding="utf-8")


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
