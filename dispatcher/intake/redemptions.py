"""The receipt site's redemption list in (SPEC §9, second wave): ``dispatcher redeemed`` and
:func:`record_redemptions` for scripts.

Columns ``user_id`` (required) and ``redeemed_at`` (optional, ISO 8601; a time without an offset is JST),
in the encodings of a recipient list. Every row names a person of the campaign or is rejected with the
field at fault; nothing is lost and loading the same list again changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dispatcher.core import clock
from dispatcher.core.clock import JST
from dispatcher.core.csvout import SafeCsvWriter
from dispatcher.core.errors import DispatcherError, InputError
from dispatcher.intake.contacts import FieldError, check_user_id
from dispatcher.intake.recipients import RecipientFile, Rejected
from dispatcher.ledger import Ledger

log = logging.getLogger(__name__)

BATCH = 5000
#: A redemption time this far ahead of our clock is a mistake in the file, not a fact.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass
class RedemptionResult:
    campaign_id: str
    rows: int = 0
    #: Newly recorded people.
    recorded: int = 0
    #: Already recorded without a time; this list gave it.
    filled: int = 0
    #: Already recorded (or twice in this list): nothing changed.
    already: int = 0
    rejected: int = 0
    rejects: list[Rejected] = field(default_factory=list)
    rejects_path: Path | None = None
    encoding: str | None = None


def check_header(header: list[str], where: str) -> None:
    if "user_id" not in header:
        raise InputError(f"{where}: header has no 'user_id' column")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{where}: column(s) {', '.join(dupes)} appear more than once in the header")


def parse_redeemed_at(raw: str, now: datetime) -> datetime | None:
    """An ISO 8601 time (a date alone is its midnight); without an offset it is JST. Empty: None."""
    text = raw.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError("redeemed_at", "is not an ISO 8601 time (e.g. 2023-05-01T10:30:00+09:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=JST)
    if value > now + FUTURE_TOLERANCE:
        raise FieldError("redeemed_at", "is in the future")
    return value


def _records(rows: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
    for index, raw in enumerate(rows, start=2):
        values = {str(k).strip().lower(): "" if v is None else str(v) for k, v in raw.items()}
        if index == 2:
            check_header(list(values), "redemptions")
        yield index, values, None


def record_redemptions(
    campaign_id: str,
    rows: str | Path | Iterable[Mapping[str, Any]],
    *,
    ledger: Ledger | None = None,
    rejects_path: str | Path | None = None,
    source: str | None = None,
    actor: str | None = None,
) -> RedemptionResult:
    """Record who has redeemed their points in ``campaign_id``.

    ``rows``: a CSV path (UTF-8 with or without BOM, or CP932) or an iterable of dicts with ``user_id`` and
    optional ``redeemed_at``. Unknown user ids and bad times are rejected rows (in the result, and in the
    rejects CSV when ``rejects_path`` is given or ``rows`` is a file: ``*.rejects.csv`` beside it).
    Raises :class:`DispatcherError` when the campaign is not in the ledger.
    """
    if ledger is None:
        from dispatcher.core.settings import load_settings

        ledger = Ledger(load_settings().ledger_url)
    if ledger.campaign(campaign_id, fresh=True) is None:
        raise DispatcherError(f"no campaign '{campaign_id}' in the ledger")
    if actor is None:
        from dispatcher.operations.control import operator_name

        actor = operator_name()
    result = RedemptionResult(campaign_id)
    file: RecipientFile | None = None
    if isinstance(rows, str | Path):
        path = Path(rows)
        if not path.is_file():
            raise InputError(f"redemption list not found: {path}")
        file = RecipientFile(path, header_check=check_header)
        records = file.records()
        source = source or path.name
        rejects_file: Path | None = Path(rejects_path) if rejects_path else path.with_name(path.stem + ".rejects.csv")
    else:
        records = _records(rows)
        source = source or "api"
        rejects_file = Path(rejects_path) if rejects_path else None
    writer: SafeCsvWriter | None = None
    header: list[str] = []
    #: (row, values, user_id, redeemed_at, reason): kept in row order so the rejects file is too.
    batch: list[tuple[int, dict[str, str], str, datetime | None, str | None]] = []

    def reject(row: int, values: dict[str, str], reason: str) -> None:
        nonlocal writer, header
        result.rejected += 1
        if len(result.rejects) < 100_000:
            result.rejects.append(Rejected(row, reason, values))
        if rejects_file is not None:
            if writer is None:
                header = list(file.header) if file is not None else list(values)
                writer = SafeCsvWriter(rejects_file, [*header, "row", "reason"])
            writer.write([*(values.get(h, "") for h in header), row, reason])

    def flush() -> None:
        known = ledger.known_users(campaign_id, [uid for _, _, uid, _, why in batch if why is None])
        good = []
        for row, values, uid, at, why in batch:
            if why is not None:
                reject(row, values, why)
            elif uid in known:
                good.append((uid, at))
            else:
                reject(row, values, "user_id: not in this campaign")
        counts = ledger.add_redemptions(campaign_id, good, source=source or "", actor=actor or "")
        result.recorded += counts.new
        result.filled += counts.filled
        result.already += len(good) - counts.new - counts.filled
        batch.clear()

    now = clock.now()
    try:
        for row, values, problem in records:
            result.rows += 1
            if values is None or problem is not None:
                batch.append((row, values or {}, "", None, problem or "csv: broken record"))
                continue
            try:
                uid = check_user_id(values.get("user_id", ""))
                at = parse_redeemed_at(values.get("redeemed_at", ""), now)
            except FieldError as exc:
                batch.append((row, values, "", None, str(exc)))
                continue
            batch.append((row, values, uid, at, None))
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    finally:
        if writer is not None:
            writer.close()
    result.encoding = file.encoding if file is not None else None
    result.rejects_path = rejects_file if writer is not None else None
    log.info(
        "redemptions for %s from %s by %s: %d rows, %d recorded, %d times filled in, %d already known, %d rejected",
        campaign_id,
        source,
        actor,
        result.rows,
        result.recorded,
        result.filled,
        result.already,
        result.rejected,
    )
    return result
