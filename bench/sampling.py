"""Where the time goes: py-spy samples of a running process, summed into a few named parts.

py-spy is a development tool, not a dependency: ``.venv/bin/pip install py-spy``. Without it the
benchmarks skip their profile and say so. Samples are of threads on the CPU (idle threads are left out).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, rate: int = 200, gil: bool = False) -> list[tuple[list[str], int]] | None:
    """Samples of process ``pid`` (and its threads) for ``seconds``: (stack, count), root first.

    ``gil``: only the thread holding the GIL in each sample (where a many-threaded process spends its
    Python CPU; without it, a thread waiting for the GIL after a socket read counts as running)."""
    exe = py_spy()
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        done = subprocess.run(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                out.name,
                "--nonblocking",
                *(["--gil"] if gil else []),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return None
        return parse(Path(out.name).read_text())


def record_command(command: list[str], output: Path, rate: int = 100) -> list[str]:
    """The command run under py-spy (samples to ``output``); empty when py-spy is missing."""
    exe = py_spy()
    if exe is None:
        return command
    return [
        exe,
        "record",
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
        "--subprocesses",
        "--",
        *command,
    ]


def parse(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # "function (path/file.py:123)" -> "function (path/file.py)": lines apart, one name
            frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
            stacks.append((frames, int(count)))
    return stacks


def share(stacks: list[tuple[list[str], int]], parts: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, float]]:
    """Each part's share of all samples: the first part whose marker (a substring of a frame) is in the
    stack takes the sample, so parts listed first win; what no part takes is "other"."""
    total = sum(n for _, n in stacks) or 1
    taken: Counter[str] = Counter()
    for frames, n in stacks:
        joined = ";".join(frames)
        for label, markers in parts:
            if any(m in joined for m in markers):
                taken[label] += n
                break
        else:
            taken["other"] += n
    return [(label, taken[label] / total) for label, _ in [*parts, ("other", ())] if taken[label]]


def table(rows: list[tuple[str, float]]) -> str:
    return "\n".join(["| part | share of samples |", "|---|---|", *(f"| {label} | {s:.0%} |" for label, s in rows)])


class CpuMeter:
    """CPU seconds used during a run, by process name (short-lived processes included: polled twice a
    second), and how busy the whole machine was; shows what other load shared the cores."""

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval = interval
        #: Processes under this pid are counted under ``tree_name`` instead of their own name.
        self.tree_root: int | None = None
        self.tree_name = "tree"
        #: PostgreSQL backends serving this database are counted as ``postgres-ledger`` (the server is shared).
        self.postgres_database: str | None = None
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self, starting: bool = False) -> None:
        import psutil

        for proc in psutil.process_iter(["name", "create_time"]):
            try:
                times = proc.cpu_times()
                key = (proc.pid, proc.info["create_time"])
                used = times.user + times.system
            except psutil.Error:
                continue
            self._first.setdefault(key, used if starting else 0.0)
            name = proc.info["name"] or "?"
            if self.postgres_database and name == "postgres":
                try:
                    if f" {self.postgres_database} " in " ".join(proc.cmdline()) + " ":
                        name = "postgres-ledger"
                except psutil.Error:
                    pass
            if self.tree_root is not None:
                try:
                    if proc.pid == self.tree_root or any(p.pid == self.tree_root for p in proc.parents()):
                        name = self.tree_name
                except psutil.Error:
                    pass
            self._last[key] = (name, used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> CpuMeter:
        import time

        import psutil

        self._poll(starting=True)
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        import time

        import psutil

        self._stop.set()
        self._thread.join()
        self._poll()
        self.wall = time.monotonic() - self._started
        end = psutil.cpu_times()
        self.machine_busy = sum(
            getattr(end, f) - getattr(self._machine, f) for f in ("user", "system", "irq", "softirq", "nice")
        )
        self.by_name: Counter[str] = Counter()
        for key, (name, used) in self._last.items():
            self.by_name[name] += max(0.0, used - self._first.get(key, 0.0))

    def summary(self, ours: dict[str, str]) -> str:
        """``ours`` maps process names to labels; everything else is "other processes on the machine"."""
        import os

        parts = [f"{label} {self.by_name.get(name, 0.0):.1f}" for name, label in ours.items()]
        mine = sum(self.by_name.get(name, 0.0) for name in ours)
        parts.append(f"everything else on the machine {max(0.0, self.machine_busy - mine):.1f}")
        return (
            f"CPU seconds in {self.wall:.1f} s of wall clock ({os.cpu_count()} cores = "
            f"{self.wall * (os.cpu_count() or 1):.0f} CPU seconds): " + ", ".join(parts)
        )
