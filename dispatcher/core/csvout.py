"""Every CSV the program writes: UTF-8 with a BOM (Excel opens it right), formula cells neutralised."""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from dispatcher.core.private import open_private_for_writing, private_dir

#: What a spreadsheet may run as a formula (OWASP: ``= + - @``, and a leading tab, CR or LF, which some
#: programs drop before they look), also in their full-width or small forms (``＝``, ``＋``, ``－``, ``＠``,
#: ``﹦``), which Japanese Excel may read as the ASCII ones.
_FORMULA_SIGNS = ("=", "+", "-", "@")
_FORMULA_START = (*_FORMULA_SIGNS, "\t", "\r", "\n", "\x00")
#: What a spreadsheet or an import may skip before it looks for a formula: ASCII and Unicode spaces
#: (U+2000..U+200A, no-break, ideographic), zero-width ones (ZWSP, word joiner, BOM) and the control
#: characters above, in any mix.
_LEADING_SPACE = (
    " \t\r\n\x00\x0b\x0c\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u200b\u200c\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff"
)


def formula_like(text: str) -> bool:
    """Whether a spreadsheet could take this cell for a formula: OWASP's starts, also after any leading
    spaces or invisible characters and in full-width or small forms."""
    if text.startswith(_FORMULA_START):
        return True
    head = text.lstrip(_LEADING_SPACE)[:1]
    return bool(head) and unicodedata.normalize("NFKC", head)[:1] in _FORMULA_SIGNS


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
