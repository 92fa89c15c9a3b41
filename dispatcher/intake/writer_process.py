"""Writing an imported list to the ledger and the broker from a process of its own.

Reading and checking rows is Python, and so is most of preparing them for the ledger and the broker; in one
process both share one interpreter lock, so a large import uses one core however many the machine has. In
a spawned process the writes run beside the checks: batches go over a pipe (pickled), in order, at most
``depth`` in flight. Used by ``enqueue`` for large CSV files when it owns the ledger and the default
dispatch; smaller lists and callers with their own ledger or dispatch keep the writer thread.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from datetime import datetime
from typing import Any

#: How long the parent waits on the pipe before it checks that the child is still alive (seconds).
_POLL = 0.5


def hand_over(
    ledger: Any, ids: list[int], hold_from: datetime | None, dispatch: Callable[[list[int]], None] | None
) -> None:
    """New deliveries go to the broker, or, while the campaign's ``send_from`` is ahead, wait in the ledger
    (no broker message: the sweep hands them over when ``send_from`` comes)."""
    from dispatcher.core import clock

    if not ids:
        return
    if hold_from is not None and clock.now() < hold_from:
        ledger.hold(ids, hold_from)
    elif dispatch is not None:
        dispatch(ids)


def _serve(
    ledger_url: str, redis_url: str, campaign_id: str, tasks: Any, results: Any, hold_from: datetime | None = None
) -> None:
    """The child: write each batch, hand its new deliveries to the broker; report once at the end."""
    from dispatcher import broker
    from dispatcher.core.privacy import redact
    from dispatcher.ledger import Ledger

    ledger = None
    present = 0
    error: str | None = None
    try:
        broker.install(redis_url)
        from dispatcher.sending.actors import dispatch_ids

        ledger = Ledger(ledger_url)
    except BaseException as exc:  # reported to the parent, which raises it
        error = redact(f"{type(exc).__name__}: {exc}")
    while (batch := tasks.get()) is not None:
        if error is not None:
            continue  # drain what is queued; nothing more is written after a failure
        try:
            new_ids = ledger.add_deliveries(campaign_id, batch)  # type: ignore[union-attr]
            present += len(batch) - len(new_ids)
            hand_over(ledger, new_ids, hold_from, dispatch_ids)
        except BaseException as exc:
            error = redact(f"{type(exc).__name__}: {exc}")
    if ledger is not None:
        ledger.dispose()
    results.put((present, error))


class WriterProcessError(RuntimeError):
    """The writer process failed; its message names the error (redacted)."""


class ProcessWriter:
    """The same contract as enqueue's writer thread: ``submit`` batches in order, ``close`` waits for all."""

    def __init__(
        self,
        ledger_url: str,
        redis_url: str,
        campaign_id: str,
        result: Any,
        depth: int = 2,
        hold_from: datetime | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.result = result
        self._tasks = context.Queue(maxsize=depth)
        self._results = context.Queue()
        self._process = context.Process(
            target=_serve,
            name="enqueue-writer",
            daemon=True,
            args=(ledger_url, redis_url, campaign_id, self._tasks, self._results, hold_from),
        )
        self._process.start()
        self._outcome: tuple[int, str | None] | None = None
        self._closed = False

    def _put(self, item: list[dict[str, Any]] | None) -> None:
        while True:
            try:
                self._tasks.put(item, timeout=_POLL)
                return
            except queue.Full:
                self._check_alive()

    def _check_alive(self) -> None:
        if not self._process.is_alive() and self._outcome is None:
            try:
                self._outcome = self._results.get(timeout=_POLL)
            except queue.Empty:
                raise WriterProcessError(
                    f"the ledger writer process exited with code {self._process.exitcode}"
                ) from None

    def submit(self, batch: list[dict[str, Any]]) -> None:
        self._check_alive()
        if self._outcome is not None and self._outcome[1] is not None:
            raise WriterProcessError(f"ledger writer: {self._outcome[1]}")
        self._put(batch)

    def close(self, *, raise_error: bool = True) -> None:
        """Wait until everything submitted is written (or failed)."""
        if not self._closed:
            self._closed = True
            try:
                if self._process.is_alive():
                    self._put(None)
                while self._outcome is None:
                    try:
                        self._outcome = self._results.get(timeout=_POLL)
                    except queue.Empty:
                        self._check_alive()
            except WriterProcessError:
                if raise_error:
                    raise
                return
            finally:
                self._process.join(timeout=10)
                if self._process.is_alive():
                    self._process.kill()
                self._tasks.close()
                self._results.close()
            self.result.already_present += self._outcome[0]
        if raise_error and self._outcome is not None and self._outcome[1] is not None:
            raise WriterProcessError(f"ledger writer: {self._outcome[1]}")
