"""Loading an eligible-user list into a campaign (SPEC §3 step 1), for the CLI and for scripts.

Per campaign: load the definition and templates once, check that they render. Per row: validate,
normalise, measure the SMS; accepted rows go to the ledger in batches (idempotent per campaign +
user_id) and only the newly inserted ones are handed to the broker.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dispatcher.core import sms
from dispatcher.core.campaign import Campaign, load_campaign
from dispatcher.core.csvout import SafeCsvWriter
from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import Settings, load_settings
from dispatcher.core.states import Channel
from dispatcher.intake.contacts import FieldError
from dispatcher.intake.recipients import Accepted, RecipientFile, Rejected, rows_from_dicts, validate_row
from dispatcher.intake.rowmap import RowsByHash
from dispatcher.intake.writer_process import ProcessWriter, hand_over
from dispatcher.ledger import Ledger
from dispatcher.sending.render import Renderer, load_template_sources

log = logging.getLogger(__name__)

BATCH = 5000
#: Interpreter switch interval (seconds) while the writer thread runs (see enqueue_campaign).
WRITER_SWITCH_INTERVAL = 0.001
#: Files at least this large are written by a process of their own (about 40,000 rows; smaller ones would
#: spend more on starting it than they gain).
PROCESS_WRITER_MIN_BYTES = 4_000_000
#: Keep at most this many rejects in the returned result (all of them always go to the rejects file).
REJECTS_IN_RESULT = 100_000


@dataclass
class EnqueueResult:
    campaign_id: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    already_present: int = 0
    flagged: int = 0
    by_channel: dict[str, int] = field(default_factory=lambda: {"email": 0, "sms": 0})
    sms_parts: int = 0
    sms_max_units: int = 0
    rejects: list[Rejected] = field(default_factory=list)
    #: Rejections counted by the field at fault.
    reasons: dict[str, int] = field(default_factory=dict)
    rejects_path: Path | None = None
    encoding: str | None = None
    dry_run: bool = False

    @property
    def new(self) -> int:
        return self.accepted - self.already_present


Dispatch = Callable[[list[int]], None]
Progress = Callable[[int], None]


def default_rejects_path(recipients: Path) -> Path:
    return recipients.with_name(recipients.stem + ".rejects.csv")


class _Checker:
    """Validates rows for one campaign, including what the templates make of them."""

    def __init__(self, campaign: Campaign, renderer: Renderer, *, thorough: bool = False) -> None:
        self.campaign = campaign
        self.renderer = renderer
        self.thorough = thorough
        self.sms_max_units = 0
        self.seen = RowsByHash()  # hash(user_id) -> first accepted row: duplicates within this file
        self._email_checked = False

    def check(self, row: int, values: dict[str, str]) -> tuple[Accepted, int]:
        accepted = validate_row(row, values, self.campaign)
        key = hash(accepted.user_id)
        first = self.seen.claim(key, row)
        if first is not None:
            raise FieldError("user_id", f"duplicate of row {first}")
        try:
            return accepted, self._check_rendered(accepted)
        except BaseException:
            self.seen.release(key)  # refused after all: a later row with this id is not a duplicate of it
            raise

    def _check_rendered(self, accepted: Accepted) -> int:
        """What the templates make of an accepted row; the SMS parts (0 for an e-mail)."""
        if accepted.channel is Channel.SMS:
            units, parts = sms.measure(self.renderer.sms(accepted.fields, accepted.receipt_url))
            if units > self.campaign.sms_max_chars:
                raise FieldError(
                    "sms", f"rendered message is {units} characters, the campaign allows {self.campaign.sms_max_chars}"
                )
            self.sms_max_units = max(self.sms_max_units, units)
            return parts
        if self.thorough or not self._email_checked:
            # Every row has the same columns, so one render proves the e-mail templates for all.
            self.renderer.email(accepted.fields, accepted.receipt_url)
            self._email_checked = True
        return 0


def _ledger_row(a: Accepted, parts: int) -> dict[str, Any]:
    return {
        "user_id": a.user_id,
        "row_no": a.row,
        "channel": a.channel.value,
        "contact": a.contact,
        "email": a.email,
        "phone": a.phone,
        "flags": ",".join(a.flags),
        "receipt_url": a.receipt_url,
        "fields": a.fields,
        "sms_parts": parts or None,
    }


class _Writer:
    """Writes accepted rows to the ledger and hands the new ones to the broker, on a thread of its own.

    Reading and validating the next rows (Python) overlaps the database and Redis working on the previous
    batch. Batches are written one at a time, in order, exactly as they were filled; at most ``depth`` wait,
    so memory stays bounded. The first error stops the writing and is raised in the caller's thread.
    """

    def __init__(
        self,
        ledger: Ledger,
        campaign: Campaign,
        dispatch: Dispatch | None,
        result: EnqueueResult,
        depth: int = 2,
    ) -> None:
        self.ledger = ledger
        self.campaign_id = campaign.id
        self.hold_from = campaign.send_from
        self.dispatch = dispatch
        self.result = result
        self.error: BaseException | None = None
        self._raised = False
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="enqueue-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain what is queued; nothing more is written after a failure
            try:
                new_ids = self.ledger.add_deliveries(self.campaign_id, batch)
                self.result.already_present += len(batch) - len(new_ids)
                hand_over(self.ledger, new_ids, self.hold_from, self.dispatch)
            except BaseException as exc:  # handed to the caller's thread
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None and not self._raised:
            self._raised = True
            raise self.error

    def submit(self, batch: list[dict[str, Any]]) -> None:
        self._raise()
        self._queue.put(batch)

    def close(self, *, raise_error: bool = True) -> None:
        """Wait until everything submitted is written (or failed)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error:
            self._raise()


def _retime(ledger: Ledger, campaign: Campaign, old: datetime) -> None:
    """The file's ``send_from`` differs from the one the ledger had: what waited for the old one waits for
    the new one (moved earlier: it leaves earlier; removed: it is due now). Anything already on the broker
    meets the worker's own check against the definition just saved."""
    moved = ledger.retime_held(campaign.id, old, campaign.send_from)
    new = campaign.send_from.isoformat() if campaign.send_from else "no send_from"
    log.info("campaign %s: send_from moved from %s to %s; %d held deliveries follow", campaign.id, old, new, moved)


def enqueue_campaign(
    campaign: str | Path | Campaign,
    recipients: str | Path | Iterable[dict[str, Any]],
    *,
    rejects_path: str | Path | None = None,
    dry_run: bool = False,
    settings: Settings | None = None,
    ledger: Ledger | None = None,
    dispatch: Dispatch | None = None,
    progress: Progress | None = None,
    thorough: bool = False,
) -> EnqueueResult:
    """Validate a recipient list and add its new people to the campaign.

    ``recipients`` is a CSV path or an iterable of row dicts (same columns as the CSV). Returns the counts
    and the rejects; raises :class:`ConfigError` / :class:`InputError` when nothing can be done at all.
    ``dispatch`` receives the ids of newly inserted deliveries (default: the Dramatiq actor).
    ``thorough`` renders the e-mail for every row, not only the first (preflight).
    """
    settings = settings or load_settings()
    if not isinstance(campaign, Campaign):
        campaign = load_campaign(campaign)
    templates = load_template_sources(campaign)
    renderer = Renderer(campaign, templates, settings.email_sender)
    checker = _Checker(campaign, renderer, thorough=thorough)
    result = EnqueueResult(campaign.id, dry_run=dry_run)

    source: RecipientFile | None = None
    records: Iterator[tuple[int, dict[str, str] | None, str | None]]
    header: list[str]
    rejects_file: Path | None
    if isinstance(recipients, str | Path):
        source = RecipientFile(Path(recipients))
        records = source.records()
        rejects_file = Path(rejects_path) if rejects_path else default_rejects_path(Path(recipients))
    else:
        records = rows_from_dicts(recipients)
        rejects_file = Path(rejects_path) if rejects_path else None

    own_ledger = ledger is None and not dry_run
    default_dispatch = False
    if not dry_run:
        ledger = ledger or Ledger(settings.ledger_url)
        existing = ledger.campaign(campaign.id, fresh=True)
        if existing is not None and existing.state == "cancelled":
            raise ConfigError(f"campaign '{campaign.id}' is cancelled; nothing can be added to it")
        ledger.save_campaign(campaign, templates)
        if existing is not None and existing.campaign.send_from not in (None, campaign.send_from):
            _retime(ledger, campaign, existing.campaign.send_from)
        if dispatch is None:
            from dispatcher.sending.actors import dispatch_ids

            dispatch = dispatch_ids
            default_dispatch = True

    writer: SafeCsvWriter | None = None
    batch: list[dict[str, Any]] = []
    ledger_writer: _Writer | ProcessWriter | None = None
    if (
        own_ledger
        and default_dispatch
        and source is not None
        and settings.redis_url
        and source.size >= PROCESS_WRITER_MIN_BYTES
    ):
        # A large file: the writes get a process (and a core) of their own; see dispatcher.intake.writer_process.
        ledger_writer = ProcessWriter(
            settings.ledger_url, settings.redis_url, campaign.id, result, hold_from=campaign.send_from
        )
    elif not dry_run and ledger is not None:
        ledger_writer = _Writer(ledger, campaign, dispatch, result)
    switch_interval = sys.getswitchinterval()
    if isinstance(ledger_writer, _Writer) and ledger is not None and ledger.dialect != "sqlite":
        # The writer thread waits on the database server and Redis many times per batch, and each time it must
        # get the interpreter lock back from the thread that validates rows: by default that takes up to 5 ms,
        # which made the writer, not the database, the bottleneck. A shorter interval hands the lock back
        # sooner. (SQLite works inside this process: there it only adds switching, so it is left alone.)
        sys.setswitchinterval(min(switch_interval, WRITER_SWITCH_INTERVAL))

    def flush() -> None:
        nonlocal batch
        if batch and ledger_writer is not None:
            ledger_writer.submit(batch)
        batch = []

    try:
        for row, values, problem in records:
            result.rows += 1
            if source is not None and writer is None and rejects_file is not None:
                header = source.header
                writer = SafeCsvWriter(rejects_file, [*header, "row", "reason"])
            elif writer is None and rejects_file is not None and values is not None:
                header = list(values)
                writer = SafeCsvWriter(rejects_file, [*header, "row", "reason"])
            if problem is None and values is not None:
                try:
                    accepted, parts = checker.check(row, values)
                except FieldError as exc:
                    problem = str(exc)
                else:
                    result.accepted += 1
                    result.by_channel[accepted.channel.value] += 1
                    result.sms_parts += parts
                    result.flagged += bool(accepted.flags)
                    batch.append(_ledger_row(accepted, parts))
                    if len(batch) >= BATCH:
                        flush()
            if problem is not None:
                result.rejected += 1
                cause = problem.split(":", 1)[0] if ":" in problem else "row"
                result.reasons[cause] = result.reasons.get(cause, 0) + 1
                original = values or {}
                if len(result.rejects) < REJECTS_IN_RESULT:
                    result.rejects.append(Rejected(row, problem, original))
                if writer is not None:
                    writer.write([*(original.get(h, "") for h in writer.header[:-2]), row, problem])
            if progress is not None and source is not None and result.rows % 1000 == 0:
                progress(source.bytes_read)
        flush()
        if ledger_writer is not None:
            ledger_writer.close()
        if ledger is not None and not dry_run:
            ledger.record_import(
                campaign.id,
                str(recipients) if source is not None else "<rows from a script>",
                rows=result.rows,
                accepted=result.accepted,
                new=result.new,
                rejected=result.rejected,
                rejects_path=str(rejects_file) if rejects_file else None,
                reasons=result.reasons,
            )
    finally:
        if ledger_writer is not None:
            ledger_writer.close(raise_error=False)  # after an error here: let what was submitted finish
        sys.setswitchinterval(switch_interval)
        if writer is None and rejects_file is not None and source is not None and source.header:
            writer = SafeCsvWriter(rejects_file, [*source.header, "row", "reason"])
        if writer is not None:
            writer.close()
        if own_ledger and ledger is not None:
            ledger.dispose()
    if progress is not None and source is not None:
        progress(source.size)
    result.rejects_path = rejects_file if writer is not None else None
    result.encoding = source.encoding if source else None
    result.sms_max_units = checker.sms_max_units
    log.info(
        "campaign %s: %d rows, %d accepted (%d new), %d rejected",
        campaign.id,
        result.rows,
        result.accepted,
        result.new,
        result.rejected,
    )
    return result
