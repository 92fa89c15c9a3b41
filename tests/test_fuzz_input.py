"""Bad input, generated (issue 7 "Bad input"): recipient lists no one would write on purpose.

Hypothesis builds CSV files from a model (header, good rows, junk rows, blank records), renders them
with random quoting and line ends, encodes them in UTF-8, UTF-8 with BOM, CP932 or Latin-1, and feeds
them to ``enqueue_campaign(..., dry_run=True)``; a second property feeds raw bytes after a valid header,
a third raw bytes alone, a fourth arbitrary row dicts through the Python API. For every input:

- the only exception is a clean :class:`InputError`/:class:`ConfigError`, and only for a broken header;
- nothing hangs (hypothesis deadline per example, pytest-timeout for the test);
- accepted + rejected == rows read, and rows read == the model's records that are not blank (the reader
  skips records whose every cell is empty or blank; they still take a row number);
- good rows are accepted wherever the file's encoding can be recognised;
- the rejects file is UTF-8 with a BOM, parses back as CSV with one record per rejected row, keeps the
  row numbers of the model, and no cell in it starts with ``=``, ``+``, ``-``, ``@``, tab or CR.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import enqueue_campaign
from dispatcher.core.errors import ConfigError, InputError
from dispatcher.intake.recipients import MAX_FIELD, SNIFF_BYTES

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = ROOT / "config" / "campaigns" / "regionpay-2023-app.toml"
ENCODINGS = ["utf-8", "utf-8-sig", "cp932", "latin-1"]
#: What a spreadsheet would run as a formula (OWASP's list: = + - @ and a leading tab, CR or LF; NUL, which
#: some importers drop), also after leading spaces of any kind (ASCII, no-break, ideographic, U+2000..U+200A,
#: zero-width, word joiner, BOM) and in full-width or small forms (Japanese Excel may read ＝ as =).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\x00")
FORMULA_LOOKALIKES = "=+-@＝＋－＠﹦﹢﹣"
INVISIBLE = " \t\r\n\x00\x0b\x0c\u00a0\u3000\ufeff\u200b\u2060" + "".join(chr(c) for c in range(0x2000, 0x200B))


def formula_looking(value: str) -> bool:
    return value.startswith(FORMULA_START) or value.lstrip(INVISIBLE)[:1] in tuple(FORMULA_LOOKALIKES)


#: Examples per property (bounded for CI; DISPATCHER_FUZZ_EXAMPLES=5000 for a deeper hunt).
EXAMPLES = int(os.environ.get("DISPATCHER_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# Cells -----------------------------------------------------------------------------------------------
PLAUSIBLE = [
    "U000001",
    "user1@example.jp",
    "taro..yamada.@docomo.ne.jp",
    "a.@ezweb.ne.jp",
    "not-an-email",
    "@",
    "a@b",
    "090-1234-5678",
    "09012345678",
    "+81 90 1234 5678",
    "０９０－１２３４－５６７８",
    "03-5244-9370",
    "0120-479-249",
    "050-1234-5678",
    "+1 415 555 2671",
    "https://receive.example.jp/r/tok1",
    "http://receive.example.jp/r/x",
    "https://evil.example/r/x",
    "https://receive.example.jp/",
    "https://user:pw@receive.example.jp/r/1",
    "1,000",
    "1000円",
    "-5",
    "A",
    "B",
    "C",
    "山田太郎",
    "ﾔﾏﾀﾞ ﾀﾛｳ",
    "髙﨑①",
    "〜",
    "",
]
FORMULAS = [
    "=cmd|' /C calc'!A0",
    "=1+2",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
    '=HYPERLINK("http://evil.example/","click")',
    "+81 90 1234 5678",
    "-",
    "=",
    "@",
    "＝cmd|' /C calc'!A0",
    "＋1",
    "－2",
    "＠SUM(A1)",
    "﹦1",
    " =1+1",
    "\u3000=1+1",
    "\u00a0＝1",
    "\n=1+1",
    "\x00=1+1",
    " \t=1",
    "\u2003=1",
    "\u200a+1",
    "\ufeff=1",
    "\u200b@SUM(A1)",
    "\u2060-1",
    " \u200b ＝1",
]
TRICKS = [
    "\u202eexe.pdf",
    "a\u200bb",
    "\u200b",
    "\ufeff",
    "\ufeffuser_id",
    "ＡＢＣ１２３",
    "ｕｓｅｒ＠ｅｘａｍｐｌｅ．ｊｐ",
    "\u3000",
    "e\u0301",
    "\x00",
    "a\x00b",
    '"',
    '""',
    '"quoted"',
    ",",
    "a,b",
    "\r\n",
    "\n",
    "\r",
    "x\ny",
    "\x1b[31m",
    "\u2028",
    "ﾃｽﾄ",
    "\U0001f600",
    "\\",
    "'",
]
HUGE = [MAX_FIELD, MAX_FIELD + 1, MAX_FIELD * 2]
ASCII_MARK = string.ascii_letters + string.digits + "!#$%&()*/:;<>?[]^_`{|}~"

common_cell = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.sampled_from(FORMULAS),
    st.sampled_from(TRICKS),
    st.text(max_size=12),
    st.tuples(
        st.sampled_from(FORMULAS + TRICKS + PLAUSIBLE), st.text(max_size=4), st.sampled_from(FORMULAS + TRICKS)
    ).map("".join),
)
#: One cell in 40 is huge (at, just over, and twice the reader's field limit).
cell = st.integers(0, 39).flatmap(lambda k: st.sampled_from(HUGE).map(lambda n: "A" * n) if k == 0 else common_cell)


def surely_not_blank(value: str) -> bool:
    """A cell that starts with a visible ASCII character is not blank under any of the encodings here
    (delimiters are ASCII, so no multi-byte sequence can swallow that first character)."""
    return bool(value) and value[0] in ASCII_MARK


# The model -------------------------------------------------------------------------------------------
KNOWN = ["user_id", "email", "phone", "receipt_url", "name", "amount", "inquiry_no", "category"]
EXTRA_NAMES = [
    "memo",
    "=cmd|' /C calc'!A0",
    "+x",
    "@y",
    "-z",
    "備考",
    "row",
    "reason",
    " ",
    "",
    "\ufeffnote",
    "EMAIL",
    " user_id ",
    "ＮＯ",
]


class Model:
    """One generated file: what was meant (header, records, good rows) and the bytes written.

    A plain class, not a dataclass, so that hypothesis prints it with the compact ``__repr__``.
    """

    def __init__(
        self, header: list[str], records: list[list[str] | None], good: dict[int, str], encoding: str, data: bytes
    ) -> None:
        self.header = header
        self.records = records  # None: an empty line written as is
        self.good = good  # row number -> user_id of a row that must be accepted
        self.encoding = encoding
        self.data = data

    def __repr__(self) -> str:  # compact: huge cells as their length, not their text
        def short(v: str) -> str:
            return f"<{len(v)} x {v[:1]!r}>" if len(v) > 200 else repr(v)

        rows = ["None" if r is None else "[" + ", ".join(short(v) for v in r) + "]" for r in self.records]
        return (
            f"Model(encoding={self.encoding!r}, bytes={len(self.data)}, header={self.header!r}, "
            f"good={self.good!r}, records=[{', '.join(rows)}])"
        )

    def normalised_header(self) -> list[str]:
        return [h.strip().lower().lstrip("\ufeff") for h in transcode(self.header, self.encoding)]

    def header_is_valid(self) -> bool:
        names = self.normalised_header()
        return (
            "user_id" in names
            and "receipt_url" in names
            and ("email" in names or "phone" in names)
            and len(set(names)) == len(names)
            and all(names)
        )

    def data_rows(self) -> list[int]:
        """Row numbers (header = 1) of the records the reader must hand on: those not blank."""
        return [
            number
            for number, record in enumerate(self.records, start=2)
            if record is not None and any(v.strip(" \t") for v in record)
        ]


def transcode(values: list[str], encoding: str) -> list[str]:
    return [v.encode(encoding, "replace").decode(encoding) for v in values]


def render(rows: list[list[str] | None], quoting: int, terminators: list[str]) -> str:
    out = io.StringIO()
    for i, row in enumerate(rows):
        end = terminators[i % len(terminators)]
        if row is None:
            out.write(end)
            continue
        # Written with CRLF, whatever the line end: with "\n" as its terminator the csv module leaves a
        # field holding a bare "\r" unquoted, which no reader can tell from a line break.
        record = io.StringIO()
        csv.writer(record, quoting=quoting, lineterminator="\r\n").writerow(row)
        out.write(record.getvalue().removesuffix("\r\n") + end)
    return out.getvalue()


@st.composite
def header_names(draw: st.DrawFn) -> list[str]:
    names = ["user_id", "receipt_url"]
    names += draw(st.sampled_from([["email"], ["phone"], ["email", "phone"]]))
    names += draw(st.lists(st.sampled_from(["name", "amount", "inquiry_no", "category"]), unique=True))
    names += draw(st.lists(st.sampled_from(EXTRA_NAMES), max_size=3))
    if draw(st.integers(0, 9)) == 0:  # now and then, a required column goes missing
        names.remove(draw(st.sampled_from(["user_id", "receipt_url"])))
    names = draw(st.permutations(names))
    case = draw(st.sampled_from([str, str.upper, str.title, lambda s: f" {s} "]))
    return [case(n) if n in KNOWN else n for n in names]


def good_row(header: list[str], k: int, with_phone: bool, name: str) -> list[str]:
    values = {
        "user_id": f"GOOD-{k}",
        "email": "" if with_phone else f"good{k}@example.jp",
        "phone": f"090-1234-{k:04d}" if with_phone else "",
        "receipt_url": f"https://receive.example.jp/r/good{k}",
        "name": name,
        "amount": "1000",
        "inquiry_no": f"Q{k}",
        "category": "A",
    }
    return [values.get(h.strip().lower(), "") for h in header]


@st.composite
def models(draw: st.DrawFn) -> Model:
    header = draw(header_names())
    normal = [h.strip().lower() for h in header]
    encoding = draw(st.sampled_from(ENCODINGS))
    records: list[list[str] | None] = []
    good: dict[int, str] = {}
    for number in range(2, 2 + draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["good", "junk", "junk", "blank", "empty-line"]))
        if kind == "good":
            with_phone = "email" not in normal or ("phone" in normal and draw(st.booleans()))
            name = draw(st.sampled_from(["", "Taro", "山田太郎", "=SUM(1)"]))
            records.append(good_row(header, number, with_phone, name))
            good[number] = f"GOOD-{number}"
        elif kind == "junk":
            row = draw(st.lists(cell, min_size=1, max_size=len(header) + 2))
            if not any(surely_not_blank(v) for v in row):
                at = draw(st.integers(0, len(row) - 1))
                row[at] = "x" + row[at]
            records.append(row)
        elif kind == "blank":
            records.append(draw(st.lists(st.sampled_from(["", " ", "\t", "  "]), min_size=1, max_size=len(header) + 1)))
        else:
            records.append(None)
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    terminators = draw(st.lists(st.sampled_from(["\r\n", "\n"]), min_size=1, max_size=3))
    text = render([header, *records], quoting, terminators)
    # Encodings that cannot hold a character write "?" instead, as Excel does.
    data = text.encode("utf-8" if encoding == "utf-8-sig" else encoding, "replace")
    if encoding == "utf-8-sig" or draw(st.integers(0, 19)) == 0:
        data = codecs.BOM_UTF8 + data  # and now and then a stray BOM before a CP932 or Latin-1 file
    return Model(header, records, good, encoding, data)


# Running one input -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    rows: int
    accepted: int
    rejected: int
    reject_rows: list[int]
    rejects_file: list[list[str]] | None


def enqueue_bytes(data: bytes) -> Outcome | InputError | ConfigError:
    with tempfile.TemporaryDirectory(prefix="dispatcher-fuzz-") as tmp:
        path = Path(tmp) / "list.csv"
        path.write_bytes(data)
        try:
            result = enqueue_campaign(CAMPAIGN, path, dry_run=True)
        except (InputError, ConfigError) as exc:
            assert "Traceback" not in str(exc) and str(exc)
            return exc
        rejects = Path(tmp) / "list.rejects.csv"
        parsed = read_rejects(rejects) if rejects.exists() else None
        return Outcome(result.rows, result.accepted, result.rejected, [r.row for r in result.rejects], parsed)


def read_rejects(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8), "the rejects file must start with a UTF-8 BOM"
    text = raw.decode("utf-8")  # strict: it must be valid UTF-8
    records = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    for record in records:
        for value in record:
            assert not formula_looking(value), f"formula-looking cell in the rejects file: {value[:40]!r}"
    return records


def check_consistent(outcome: Outcome) -> None:
    assert outcome.accepted + outcome.rejected == outcome.rows
    assert outcome.reject_rows == sorted(set(outcome.reject_rows)), "reject row numbers must rise"
    assert all(row >= 2 for row in outcome.reject_rows)
    if outcome.rejects_file is not None:
        header, *records = outcome.rejects_file
        assert header[-2:] == ["row", "reason"]
        assert len(records) == outcome.rejected
        assert [int(r[-2]) for r in records] == outcome.reject_rows
        assert all(r[-1] for r in records), "every reject says why"
        assert all(len(r) == len(header) for r in records)


# Properties ------------------------------------------------------------------------------------------
@pytest.mark.timeout(240)
@FUZZ
@given(models())
def test_generated_lists_are_read_row_for_row_and_never_crash(model: Model) -> None:
    outcome = enqueue_bytes(model.data)
    if isinstance(outcome, InputError | ConfigError):
        assert not model.header_is_valid(), f"a valid header was refused: {outcome}"
        return
    assert model.header_is_valid(), "a broken header was accepted"
    check_consistent(outcome)
    expected_rows = model.data_rows()
    assert outcome.rows == len(expected_rows)
    assert set(outcome.reject_rows) <= set(expected_rows)
    # Good rows are accepted wherever the encoding can be recognised: CP932 is recognised in the first
    # SNIFF_BYTES; a Latin-1 file is read as CP932, so only its ASCII survives for sure; a BOM says UTF-8,
    # so a stray one before a CP932 or Latin-1 file makes its non-ASCII rows undecodable.
    stray_bom = model.data.startswith(codecs.BOM_UTF8) and not model.encoding.startswith("utf-8")
    recognisable = not stray_bom and (
        model.encoding.startswith("utf-8")
        or model.data.isascii()
        or (model.encoding == "cp932" and len(model.data) <= SNIFF_BYTES)
    )
    if recognisable:
        refused = sorted(set(model.good) & set(outcome.reject_rows))
        assert not refused, f"good rows rejected: {refused}"
    assert outcome.rejects_file is not None
    assert outcome.rejects_file[0][:-2] == [neutral(h) for h in model.normalised_header()] or not model.data.isascii()


def neutral(value: str) -> str:
    return "'" + value if formula_looking(value) else value


@pytest.mark.timeout(240)
@FUZZ
@given(st.sampled_from(ENCODINGS), st.binary(max_size=2048), st.booleans())
def test_arbitrary_bytes_after_a_valid_header_never_crash(encoding: str, body: bytes, bom: bool) -> None:
    header = "user_id,email,phone,receipt_url,name,amount,inquiry_no,category\r\n".encode(
        "utf-8" if encoding == "utf-8-sig" else encoding
    )
    outcome = enqueue_bytes((codecs.BOM_UTF8 if bom else b"") + header + body)
    assert isinstance(outcome, Outcome), f"a valid header was refused: {outcome}"
    check_consistent(outcome)


@pytest.mark.timeout(240)
@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    outcome = enqueue_bytes(data)
    if isinstance(outcome, Outcome):
        check_consistent(outcome)


@pytest.mark.timeout(240)
@FUZZ
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from([*KNOWN, "memo", "EMAIL", " user_id "]),
            st.one_of(st.none(), cell, st.integers(), st.floats(allow_nan=True)),
            min_size=1,
            max_size=9,
        ),
        max_size=8,
    )
)
def test_arbitrary_row_dicts_through_the_python_api_never_crash(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory(prefix="dispatcher-fuzz-") as tmp:
        rejects = Path(tmp) / "rejects.csv"
        try:
            result = enqueue_campaign(CAMPAIGN, rows, dry_run=True, rejects_path=rejects)
        except (InputError, ConfigError) as exc:
            assert str(exc)
            return
        assert result.accepted + result.rejected == result.rows == len(rows)
        if rejects.exists():
            assert len(read_rejects(rejects)) == result.rejected + 1


def test_a_field_past_the_csv_module_limit_rejects_its_row_and_reading_goes_on(tmp_path: Path) -> None:
    # One field of 1 MiB + 1 (the csv module's limit as the reader sets it), between two good rows
    header = "user_id,email,receipt_url,name\r\n"
    good = "U{0},u{0}@example.jp,https://receive.example.jp/r/t{0},x\r\n"
    data = (
        header
        + good.format(1)
        + 'U2,u2@example.jp,https://receive.example.jp/r/t2,"'
        + "A" * ((1 << 20) + 1)
        + '"\r\n'
        + good.format(3)
    ).encode()
    outcome = enqueue_bytes(data)
    assert isinstance(outcome, Outcome)
    check_consistent(outcome)
    assert (outcome.rows, outcome.accepted, outcome.rejected, outcome.reject_rows) == (3, 2, 1, [3])
