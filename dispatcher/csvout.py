"""Every CSV the program writes: UTF-8 with a BOM (Excel opens it right), formula cells neutralised."""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from .private import open_private_for_writing, private_dir

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Spaces a spreadsheet may skip before it looks for a formula (ASCII, no-break and ideographic).
_LEADING_SPACE = " \u00a0\u3000"


def formula_like(text: str) -> bool:
    """Whether a spreadsheet could take this cell for a formula: OWASP's starts, also after leading spaces
    and in their full-width or small forms (``＝``, ``＋``, ``－``, ``＠``), which Japanese Excel may read as
    the ASCII ones."""
    if text.startswith(_FORMULA_START):
        return True
    head = text.lstrip(_LEADING_SPACE)[:1]
    return bool(head) and unicodedata.normalize("NFKC", head)[:1] in ("=", "+", "-", "@")


def neutralise(value: Any) -> str:
    """Prefix a quote to a cell a spreadsheet would run as a formula (``=cmd|...``)."""
    text = "" if value is None else str(value)
    text = text.encode("utf-8", "replace").decode("utf-8")  # undecodable input bytes become U+FFFD
    return "'" + text if formula_like(text) else text


class SafeCsvWriter:
    def __init__(self, path: Path, header: Sequence[str]) -> None:
        private_dir(path.parent)
        # 0600 and never through a symbolic link: rejects and reports hold receipt URLs and contacts.
        fd = open_private_for_writing(path)
        self._fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8-sig", newline="", errors="replace")
        self._writer = csv.writer(self._fh, quoting=csv.QUOTE_MINIMAL)
        self.header = list(header)
        self._writer.writerow([neutralise(h) for h in self.header])
        self.rows = 0

    def write(self, values: Iterable[Any]) -> None:
        self._writer.writerow([neutralise(v) for v in values])
        self.rows += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> SafeCsvWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
