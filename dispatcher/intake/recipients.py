"""Streaming reader of eligible-user lists (SPEC §5).

The file is never held in memory: rows are decoded, validated and handed on one at a time. Encoding is
detected from the first bytes (UTF-8 with or without BOM, else CP932 as Excel writes it); bytes that do
not decode reject their row instead of aborting the run.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from dispatcher.core.campaign import Campaign
from dispatcher.core.errors import InputError
from dispatcher.core.states import Channel
from dispatcher.intake.contacts import (
    FieldError,
    check_amount,
    check_category,
    check_email,
    check_phone,
    check_receipt_url,
    check_user_id,
)

KNOWN = ("user_id", "email", "phone", "receipt_url", "name", "amount", "inquiry_no", "category")
_KNOWN = frozenset(KNOWN)
SNIFF_BYTES = 1 << 16
MAX_FIELD = 1 << 16

csv.field_size_limit(1 << 20)


@dataclass
class Accepted:
    row: int
    user_id: str
    channel: Channel
    email: str | None
    phone: str | None
    receipt_url: str
    fields: dict[str, Any]
    flags: list[str] = field(default_factory=list)

    @property
    def contact(self) -> str:
        value = self.email if self.channel is Channel.EMAIL else self.phone
        assert value is not None
        return value


@dataclass
class Rejected:
    row: int
    reason: str
    #: The row as read (it may hold a receipt URL: kept out of repr, hence out of logs and tracebacks).
    original: dict[str, str] = field(repr=False)


def detect_encoding(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sample boundary is still UTF-8.
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return "utf-8"
        return "cp932"


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes the decoder could not read (surrogateescape)


def _has_undecodable(value: str) -> bool:
    return _UNDECODABLE.search(value) is not None


class RecipientFile:
    """Iterates the records of one CSV file as ``(row_number, dict)`` pairs, header = row 1."""

    def __init__(self, path: Path, header_check: Callable[[list[str], str], None] | None = None) -> None:
        self.path = path
        self._header_check = header_check or check_header
        self.size = path.stat().st_size
        self._raw: BinaryIO | None = None
        self._read_at_close = 0
        self.encoding = "utf-8"
        self.header: list[str] = []

    @property
    def bytes_read(self) -> int:
        """Bytes taken from the file so far, for a progress bar (the file position of the unbuffered file)."""
        if self._raw is None:
            return 0
        return self._read_at_close if self._raw.closed else self._raw.tell()

    def records(self) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
        """Yield ``(row, values, problem)``; ``values`` is None when the record itself is broken."""
        with self.path.open("rb", buffering=0) as raw:
            self.encoding = detect_encoding(raw.read(SNIFF_BYTES))
            raw.seek(0)
            self._raw = raw
            buffered = io.BufferedReader(raw, buffer_size=1 << 20)
            text = io.TextIOWrapper(buffered, encoding=self.encoding, errors="surrogateescape", newline="")
            reader = csv.reader(text)
            try:
                header = next(reader)
            except StopIteration:
                raise InputError(f"{self.path}: the file is empty (no header row)") from None
            except csv.Error as exc:
                raise InputError(f"{self.path}: header row is not valid CSV: {exc}") from None
            self.header = [h.strip().lower().lstrip("\ufeff") for h in header]
            self._header_check(self.header, str(self.path))
            width = len(self.header)
            row = 1
            try:
                while True:
                    row += 1
                    try:
                        values = next(reader)
                    except StopIteration:
                        return
                    except csv.Error as exc:
                        yield row, None, f"csv: {exc}"
                        continue
                    if not values or not "".join(values).strip():
                        continue  # blank lines are not people
                    if len(values) != width:
                        yield (
                            row,
                            dict(zip(self.header, values, strict=False)),
                            (f"row has {len(values)} fields, the header has {width}"),
                        )
                        continue
                    yield row, dict(zip(self.header, values, strict=True)), None
            finally:
                self._read_at_close = raw.tell()


def check_header(header: list[str], where: str) -> None:
    if "user_id" not in header:
        raise InputError(f"{where}: header has no 'user_id' column")
    if "receipt_url" not in header:
        raise InputError(f"{where}: header has no 'receipt_url' column")
    if "email" not in header and "phone" not in header:
        raise InputError(f"{where}: header needs an 'email' or a 'phone' column")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{where}: column(s) {', '.join(dupes)} appear more than once in the header")
    if any(not h for h in header):
        raise InputError(f"{where}: the header has an empty column name")


def validate_row(row: int, values: dict[str, str], campaign: Campaign) -> Accepted:
    """Check one record; raise FieldError naming the first field at fault."""
    whole = "".join(values.values())  # one scan for the usual row; the field at fault is looked for if any
    if len(whole) > MAX_FIELD or _has_undecodable(whole):
        for key, value in values.items():
            if _has_undecodable(value):
                raise FieldError(key, "has bytes that are not valid text in the file's encoding")
            if len(value) > MAX_FIELD:
                raise FieldError(key, f"is longer than {MAX_FIELD} characters")
    user_id = check_user_id(values.get("user_id", ""))
    email_raw = (values.get("email") or "").strip()
    phone_raw = (values.get("phone") or "").strip()
    if not email_raw and not phone_raw:
        raise FieldError("email/phone", "neither an e-mail address nor a phone number is given")
    flags: list[str] = []
    email = phone = None
    if email_raw:
        email, flag = check_email(email_raw)
        if flag:
            flags.append(flag)
    if phone_raw:
        phone = check_phone(phone_raw)
    receipt_url = check_receipt_url(values.get("receipt_url") or "", campaign.receipt_hosts)
    fields: dict[str, Any] = {}
    name = (values.get("name") or "").strip()
    if name:
        if len(name) > 100:
            raise FieldError("name", "is longer than 100 characters")
        fields["name"] = name
    if (values.get("amount") or "").strip():
        fields["amount"] = check_amount(values["amount"])
    if (values.get("category") or "").strip():
        fields["category"] = check_category(values["category"])
    if (values.get("inquiry_no") or "").strip():
        fields["inquiry_no"] = values["inquiry_no"].strip()
    if not _KNOWN.issuperset(values):
        fields["extra"] = {k: v for k, v in values.items() if k not in KNOWN}
    channel = campaign.channel_for(email is not None, phone is not None)
    return Accepted(row, user_id, channel, email, phone, receipt_url, fields, flags)


def rows_from_dicts(
    rows: Iterable[dict[str, Any]], header_check: Callable[[list[str], str], None] | None = None
) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
    """The Python API's rows, numbered as if they came from a file (first row = 2)."""
    header_checked = False
    for index, raw in enumerate(rows, start=2):
        values = {str(k).strip().lower(): "" if v is None else str(v) for k, v in raw.items()}
        if not header_checked:
            (header_check or check_header)(list(values), "recipients")
            header_checked = True
        yield index, values, None
