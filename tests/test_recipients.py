"""Reading and validating eligible-user lists (SPEC §5, §9): dispatcher.intake.recipients and enqueue (dry run).

Every test here runs ``enqueue_campaign(..., dry_run=True)`` or the reader itself: no ledger, no broker.
"""

from __future__ import annotations

import codecs
import csv
import io
import shutil
from pathlib import Path
from typing import Any

import pytest

from dispatcher import enqueue_campaign
from dispatcher.core.campaign import load_campaign
from dispatcher.core.errors import InputError
from dispatcher.core.states import Channel
from dispatcher.intake.enqueue import EnqueueResult
from dispatcher.intake.recipients import RecipientFile, detect_encoding, validate_row

from .helpers import write_campaign

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "campaigns" / "regionpay-2023-app.toml"
HEADER = ["user_id", "name", "email", "phone", "receipt_url", "amount", "category", "inquiry_no"]


def url(token: str) -> str:
    return f"https://receive.example.jp/r/{token}"


def person(user_id: str, **values: str) -> dict[str, str]:
    row = {
        "user_id": user_id,
        "name": f"利用者{user_id}",
        "email": f"{user_id.lower()}@example.jp",
        "phone": "",
        "receipt_url": url(f"tok-{user_id}"),
        "amount": "1,000",
        "category": "A",
        "inquiry_no": "",
    }
    row.update(values)
    return row


def csv_text(rows: list[dict[str, str]], header: list[str] = HEADER) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


def run(recipients: Path | list[dict[str, Any]], campaign: Path = SHIPPED, **options: Any) -> EnqueueResult:
    return enqueue_campaign(campaign, recipients, dry_run=True, **options)


def read_rejects(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8), "every CSV we write starts with a UTF-8 BOM"
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


OWN_CAMPAIGN = """
id = "x"
name = "テスト"
template = "compensation"
prefer = "email"
deadline = 2023-05-31T23:59:59+09:00
send_by = 2023-05-28T20:00:00+09:00
receipt_hosts = ["receive.example.jp"]
sms_max_chars = {sms_max_chars}

[text]
organizer = "事務局"
call_centre_name = "コールセンター"
call_centre_phone = "0120-479-249"
call_centre_hours = "平日"
"""


def campaign_file(tmp_path: Path, *, sms_max_chars: int) -> Path:
    """A campaign of our own, laid out as in the repository (config/campaigns/x.toml + templates/)."""
    shutil.copytree(ROOT / "templates" / "compensation", tmp_path / "templates" / "compensation")
    path = tmp_path / "config" / "campaigns" / "x.toml"
    path.parent.mkdir(parents=True)
    path.write_text(OWN_CAMPAIGN.format(sms_max_chars=sms_max_chars), encoding="utf-8")
    return path


# encodings -------------------------------------------------------------------------------------
def test_utf8_file_without_bom_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", csv_text([person("U1", name="山田 太郎"), person("U2", name="佐藤 花子")]))

    result = run(path)

    assert (result.encoding, result.rows, result.accepted, result.rejected) == ("utf-8", 2, 2, 0)


def test_utf8_file_with_bom_is_read_and_the_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    # Given a file as Excel saves "CSV UTF-8": a BOM before "user_id"
    path = write(tmp_path / "list.csv", "\ufeff" + csv_text([person("U1", name="山田 太郎")]))

    # When it is read (a BOM glued to the header would make "user_id" missing: InputError)
    result = run(path)

    # Then the header is recognised and the row accepted
    assert (result.encoding, result.accepted, result.rejected) == ("utf-8-sig", 1, 0)
    reader = RecipientFile(path)
    first = next(values for _, values, _ in reader.records())
    assert first is not None
    assert first["user_id"] == "U1"
    assert reader.header[0] == "user_id"


def test_cp932_file_from_excel_is_decoded_with_its_japanese_names(tmp_path: Path) -> None:
    # Given a Shift_JIS/CP932 export with kanji, half-width kana and CP932-only characters (髙, ①, ～)
    rows = [
        person("U1", name="髙橋 一郎"),
        person("U2", name="ﾔﾏﾀﾞ ﾀﾛｳ"),
        person("U3", name="佐藤 花子①～", email="not-an-address"),
    ]
    path = write(tmp_path / "list.csv", csv_text(rows), encoding="cp932")

    # When it is read
    result = run(path)

    # Then the encoding is detected and the text decoded, in the reader and in the rejects file
    assert result.encoding == "cp932"
    assert (result.accepted, result.rejected) == (2, 1)
    names = [values["name"] for _, values, _ in RecipientFile(path).records() if values]
    assert names == ["髙橋 一郎", "ﾔﾏﾀﾞ ﾀﾛｳ", "佐藤 花子①～"]
    rejects = read_rejects(tmp_path / "list.rejects.csv")
    assert [(r["user_id"], r["name"], r["row"]) for r in rejects] == [("U3", "佐藤 花子①～", "4")]
    assert rejects[0]["reason"].startswith("email: ")


def test_cp932_row_with_bytes_invalid_in_cp932_rejects_only_that_row(tmp_path: Path) -> None:
    # Given a CP932 file whose third data row has 0x85 0x40 (an unassigned CP932 code) in its name
    good = csv_text([person("U1", name="山田 太郎"), person("U2", name="鈴木 次郎")]).encode("cp932")
    broken = b"U3,\x85\x40\x82\xa0," + ",".join(["u3@example.jp", "", url("t3"), "", "", ""]).encode() + b"\r\n"
    tail = csv_text([person("U4", name="田中 三郎")]).split("\r\n", 1)[1].encode("cp932")
    path = write(tmp_path / "list.csv", good + broken + tail)

    # When it is read
    result = run(path)

    # Then only that row is rejected, naming the column, and the run goes on
    assert result.encoding == "cp932"
    assert (result.rows, result.accepted, result.rejected) == (4, 3, 1)
    assert [(r.row, r.reason.split(":")[0]) for r in result.rejects] == [(4, "name")]
    assert "not valid text" in result.rejects[0].reason
    # And the rejects file is still valid UTF-8 (the bad bytes become a replacement character)
    rejects = read_rejects(tmp_path / "list.rejects.csv")
    assert [(r["user_id"], r["row"]) for r in rejects] == [("U3", "4")]
    assert rejects[0]["name"].endswith("あ")


def test_utf8_file_with_a_stray_cp932_row_past_the_sniffed_head_rejects_only_that_row(tmp_path: Path) -> None:
    # Given a UTF-8 file, longer than the sample the encoding is detected from, into which someone pasted
    # one CP932-encoded name near the end
    rows = [person(f"U{i}", name="山田 太郎") for i in range(1, 801)]
    head = csv_text(rows).encode("utf-8")
    assert len(head) > 1 << 16
    stray = "U0,佐藤,u0@example.jp,,{},,,\r\n".format(url("t0")).encode("cp932")
    path = write(tmp_path / "list.csv", head + stray)

    # When it is read
    result = run(path)

    # Then the file is read as UTF-8 and only the stray row is rejected, at its row
    assert result.encoding == "utf-8"
    assert (result.accepted, result.rejected) == (800, 1)
    assert result.rejects[0].row == 802
    assert result.rejects[0].reason.startswith("name: has bytes that are not valid text")


def test_detect_encoding() -> None:
    assert detect_encoding(codecs.BOM_UTF8 + b"user_id") == "utf-8-sig"
    assert detect_encoding("user_id,name\nU1,山田".encode()) == "utf-8"
    assert detect_encoding(b"user_id,name\n") == "utf-8"
    assert detect_encoding("user_id,name\nU1,山田".encode("cp932")) == "cp932"
    # A multi-byte character cut by the end of the sample is still UTF-8
    assert detect_encoding("user_id,name\nU1,山田".encode()[:-1]) == "utf-8"


# row numbers -----------------------------------------------------------------------------------
def test_row_numbers_are_as_a_spreadsheet_shows_them(tmp_path: Path) -> None:
    # Given: row 2 has a quoted name with an embedded newline (one spreadsheet row over two lines),
    # row 3 is blank, row 4 is good, row 5 is bad, row 6 is bad
    text = csv_text([person("U1", name="山田\n太郎")])
    text += "\r\n"
    text += csv_text([person("U2"), person("U3", email="bad"), person("U4", amount="12.5")]).split("\r\n", 1)[1]
    path = write(tmp_path / "list.csv", text)

    # When it is read
    rows = [(row, values["user_id"] if values else None) for row, values, _ in RecipientFile(path).records()]
    result = run(path)

    # Then rows count records, not lines, and the header is row 1
    assert rows == [(2, "U1"), (4, "U2"), (5, "U3"), (6, "U4")]
    assert [(r.row, r.reason.split(":")[0]) for r in result.rejects] == [(5, "email"), (6, "amount")]
    assert (result.rows, result.accepted, result.rejected) == (4, 2, 2)


def test_blank_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    body = csv_text([person("U1"), person("U2")]).split("\r\n")
    text = "\r\n".join([body[0], "", body[1], "", "", ",,,,,,,", "   ", body[2], ""]) + "\r\n"
    path = write(tmp_path / "list.csv", text)

    result = run(path)

    assert (result.rows, result.accepted, result.rejected) == (2, 2, 0)
    assert result.rejects == []


@pytest.mark.parametrize(
    ("line", "fields"),
    [("U9,名前,u9@example.jp", 3), ("U9,名前,u9@example.jp,,https://receive.example.jp/r/t9,1,A,,extra", 9)],
)
def test_row_with_the_wrong_number_of_fields_is_rejected(tmp_path: Path, line: str, fields: int) -> None:
    text = csv_text([person("U1")]) + line + "\r\n" + csv_text([person("U2")]).split("\r\n", 1)[1]
    path = write(tmp_path / "list.csv", text)

    result = run(path)

    assert (result.rows, result.accepted, result.rejected) == (3, 2, 1)
    assert result.rejects[0].row == 3
    assert result.rejects[0].reason == f"row has {fields} fields, the header has {len(HEADER)}"
    rejects = read_rejects(tmp_path / "list.rejects.csv")
    assert (rejects[0]["user_id"], rejects[0]["row"]) == ("U9", "3")


# header ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "missing"),
    [
        (["name", "email", "receipt_url"], "user_id"),
        (["user_id", "email", "phone"], "receipt_url"),
        (["user_id", "name", "receipt_url"], "'email' or a 'phone'"),
    ],
)
def test_missing_required_header_columns_is_an_input_error(tmp_path: Path, header: list[str], missing: str) -> None:
    path = write(tmp_path / "list.csv", ",".join(header) + "\r\n" + ",".join(["x"] * len(header)) + "\r\n")

    with pytest.raises(InputError) as caught:
        run(path)

    assert missing in str(caught.value)


@pytest.mark.parametrize(
    "header",
    ["user_id,email,receipt_url,email", "user_id,email,receipt_url,USER_ID", "user_id,email,receipt_url, Email "],
)
def test_duplicate_header_columns_are_an_input_error(tmp_path: Path, header: str) -> None:
    path = write(tmp_path / "list.csv", header + "\r\nU1,a@example.jp,https://receive.example.jp/r/1,x\r\n")

    with pytest.raises(InputError, match="more than once"):
        run(path)


def test_empty_header_column_name_is_an_input_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "list.csv", "user_id,email,,receipt_url\r\nU1,a@example.jp,x,https://receive.example.jp/r/1\r\n"
    )

    with pytest.raises(InputError, match="empty column name"):
        run(path)


def test_empty_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        run(write(tmp_path / "list.csv", b""))


def test_header_names_are_matched_case_and_space_insensitively(tmp_path: Path) -> None:
    text = " User_ID ,EMAIL,Receipt_URL\r\nU1,a@example.jp,https://receive.example.jp/r/1\r\n"

    result = run(write(tmp_path / "list.csv", text))

    assert (result.accepted, result.rejected) == (1, 0)


def test_header_only_file_has_no_rows_and_an_empty_rejects_file(tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", ",".join(HEADER) + "\r\n")

    result = run(path)

    assert (result.rows, result.accepted, result.rejected) == (0, 0, 0)
    assert read_rejects(tmp_path / "list.rejects.csv") == []
    assert (tmp_path / "list.rejects.csv").read_text("utf-8-sig").splitlines() == [",".join([*HEADER, "row", "reason"])]


# duplicates ------------------------------------------------------------------------------------
def test_duplicate_user_id_within_the_file_rejects_later_rows(tmp_path: Path) -> None:
    # Given U1 on row 2 (spanning two lines), again on row 4 and written full-width on row 5
    rows = [
        person("U1", name="山田\n太郎"),
        person("U2"),
        person("U1", email="other@example.jp"),
        person("Ｕ１", receipt_url=url("full-width")),
    ]
    path = write(tmp_path / "list.csv", csv_text(rows))

    result = run(path)

    # Then the later ones are rejected, pointing at the first
    assert (result.accepted, result.rejected) == (2, 2)
    assert [(r.row, r.reason) for r in result.rejects] == [
        (4, "user_id: duplicate of row 2"),
        (5, "user_id: duplicate of row 2"),
    ]


def test_a_row_rejected_for_another_reason_does_not_claim_its_user_id(tmp_path: Path) -> None:
    # Given a bad first try for U1 and a corrected row for U1 below it
    rows = [person("U1", email="broken"), person("U1")]

    result = run(write(tmp_path / "list.csv", csv_text(rows)))

    # Then the corrected row is the one accepted
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.rejects[0].row == 2
    assert result.rejects[0].reason.startswith("email: ")


# channels and SMS length -----------------------------------------------------------------------
def test_sms_longer_than_the_campaign_allows_is_rejected_at_enqueue(tmp_path: Path) -> None:
    # Given the shipped campaign (sms_max_chars = 134) and a receipt URL long enough to push the SMS past it
    long_url = url("t" * 100)
    rows = [
        person("U1", email="", phone="090-1234-5678"),
        person("U2", email="", phone="090-1234-5679", receipt_url=long_url),
        person("U3", phone="090-1234-5670", receipt_url=long_url),  # e-mail wins: no SMS is rendered
    ]

    result = run(write(tmp_path / "list.csv", csv_text(rows)))

    assert load_campaign(SHIPPED).sms_max_chars == 134
    assert (result.accepted, result.rejected) == (2, 1)
    assert result.rejects[0].row == 3
    assert result.rejects[0].reason.startswith("sms: rendered message is ")
    assert result.rejects[0].reason.endswith("the campaign allows 134")
    assert long_url not in result.rejects[0].reason
    assert result.by_channel == {"email": 1, "sms": 1}
    assert result.sms_parts == 2  # 83 UTF-16 units with a short URL: two UCS-2 parts


def test_sms_limit_comes_from_the_campaign_file(tmp_path: Path) -> None:
    # Given our own campaign allowing one UCS-2 part only (70): the standard SMS text needs more
    campaign = campaign_file(tmp_path, sms_max_chars=70)
    rows = [person("U1", email="", phone="090-1234-5678"), person("U2")]

    result = run(write(tmp_path / "list.csv", csv_text(rows)), campaign=campaign)

    assert (result.accepted, result.rejected) == (1, 1)
    assert result.rejects[0].reason.startswith("sms: ")
    assert result.rejects[0].reason.endswith("allows 70")


@pytest.mark.parametrize(("prefer", "expected"), [("email", "email"), ("sms", "sms")])
def test_prefer_decides_the_channel_when_both_contacts_are_present(tmp_path: Path, prefer: str, expected: str) -> None:
    campaign = write_campaign(tmp_path, prefer=prefer)
    rows = [
        person("U1", phone="090-1234-5678"),  # both: the campaign decides
        person("U2", email="", phone="080-1234-5678"),  # only a phone: SMS whatever the preference
        person("U3"),  # only an e-mail
    ]

    result = run(write(tmp_path / "list.csv", csv_text(rows)), campaign=campaign)

    other = "sms" if expected == "email" else "email"
    assert result.accepted == 3
    assert result.by_channel == {expected: 2, other: 1}


def test_validate_row_normalises_contacts_and_picks_the_preferred_channel(tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(tmp_path, prefer="sms"))
    values = person(
        "U1",
        email="Taro..Yamada.@DOCOMO.ne.jp",
        phone="０９０-１２３４-５６７８",
        amount="１，２３４円",
        category="b",
        inquiry_no=" Q-1 ",
    )
    values["shop"] = "松江店"

    accepted = validate_row(2, values, campaign)

    assert accepted.channel is Channel.SMS
    assert accepted.contact == accepted.phone == "+819012345678"
    assert accepted.email == "Taro..Yamada.@docomo.ne.jp"
    assert accepted.flags == ["legacy-local-part"]
    assert accepted.fields == {
        "name": "利用者U1",
        "amount": 1234,
        "category": "B",
        "inquiry_no": "Q-1",
        "extra": {"shop": "松江店"},
    }


def test_legacy_carrier_address_is_accepted_and_counted_as_flagged(tmp_path: Path) -> None:
    rows = [person("U1", email="taro..yamada.@docomo.ne.jp"), person("U2")]

    result = run(write(tmp_path / "list.csv", csv_text(rows)))

    assert (result.accepted, result.rejected, result.flagged) == (2, 0, 1)


# many kinds of bad rows ------------------------------------------------------------------------
BAD_ROWS: list[tuple[str, dict[str, str], str]] = [
    ("empty user_id", person("", email="e1@example.jp"), "user_id"),
    ("control character in user_id", person("U\u200b9", receipt_url=url("b2")), "user_id"),
    ("neither contact", person("B3", email="", phone=""), "email/phone"),
    ("bad e-mail", person("B4", email="taro@@example.jp"), "email"),
    ("non-ASCII e-mail", person("B5", email="山田@example.jp"), "email"),
    ("landline", person("B6", email="", phone="03-5244-9370"), "phone"),
    ("foreign phone", person("B7", email="", phone="+1 415 555 2671"), "phone"),
    ("http receipt URL", person("B8", receipt_url="http://receive.example.jp/r/b8"), "receipt_url"),
    ("phishing-shaped host", person("B9", receipt_url="https://receive.example.jp.evil.example/r/b9"), "receipt_url"),
    ("no personal path", person("B10", receipt_url="https://receive.example.jp/"), "receipt_url"),
    ("missing receipt URL", person("B11", receipt_url=""), "receipt_url"),
    ("fractional amount", person("B12", amount="12.5"), "amount"),
    ("negative amount", person("B13", amount="-1"), "amount"),
    ("unknown category", person("B14", category="C"), "category"),
    ("name too long", person("B15", name="長" * 101), "name"),
    ("SMS too long", person("B16", email="", phone="090-1234-0016", receipt_url=url("x" * 120)), "sms"),
    ("duplicate user_id", person("G1", email="dup@example.jp"), "user_id"),
    ("overlong cell", person("B18", inquiry_no="9" * 70_000), "inquiry_no"),
]


def test_every_kind_of_bad_row_is_rejected_with_its_row_and_a_reason_naming_the_field(tmp_path: Path) -> None:
    # Given good rows with every kind of bad row between them
    rows: list[dict[str, str]] = []
    expected: dict[int, tuple[str, str]] = {}
    goods = 0
    for index, (kind, bad, field) in enumerate(BAD_ROWS):
        good = person(f"G{index + 1}", phone="070-1234-0000" if index % 2 else "")
        rows.append(good)
        goods += 1
        rows.append(bad)
        expected[len(rows) + 1] = (kind, field)  # +1: the header is row 1
    path = write(tmp_path / "list.csv", csv_text(rows))

    # When the list is validated
    result = run(path)

    # Then each bad row is in the rejects file with its spreadsheet row and a reason naming its field
    rejects = read_rejects(tmp_path / "list.rejects.csv")
    assert list(rejects[0]) == [*HEADER, "row", "reason"]
    got = {int(r["row"]): r["reason"] for r in rejects}
    assert set(got) == set(expected), f"rows rejected: {sorted(got)}"
    for row, (kind, field) in expected.items():
        assert got[row].startswith(f"{field}: "), f"{kind} (row {row}): {got[row]}"
    assert len(BAD_ROWS) >= 10
    assert len({field for _, _, field in BAD_ROWS}) >= 10
    # And the good rows are all accepted, nothing lost
    assert result.accepted == goods
    assert result.rejected == len(BAD_ROWS)
    assert result.accepted + result.rejected == result.rows == len(rows)
    assert [(r.row, r.reason) for r in result.rejects] == [(int(r["row"]), r["reason"]) for r in rejects]


def test_rejects_file_keeps_the_original_cells_and_neutralises_formulas(tmp_path: Path) -> None:
    # Given rejected rows whose cells a spreadsheet would run as formulas
    rows = [
        person("=1+2", email="bad", name='=HYPERLINK("http://evil.example/","click")'),
        person("R2", email="", phone="+1 415 555 2671", name="+cmd|' /C calc'!A0"),
        person("R3", amount="-1", name="@SUM(A1:A9)", inquiry_no="-2+3"),
        person("R4", category="C", name="\t=1+1"),
    ]
    path = write(tmp_path / "list.csv", csv_text(rows))

    result = run(path)

    # Then the rejects file is UTF-8 with BOM and every such cell starts with a quote
    assert result.rejected == 4
    raw = (tmp_path / "list.rejects.csv").read_bytes()
    assert raw.decode("utf-8").startswith("\ufeffuser_id,")
    rejects = read_rejects(tmp_path / "list.rejects.csv")
    assert rejects[0]["user_id"] == "'=1+2"
    assert rejects[0]["name"] == '\'=HYPERLINK("http://evil.example/","click")'
    assert rejects[1]["phone"] == "'+1 415 555 2671"
    assert rejects[1]["name"] == "'+cmd|' /C calc'!A0"
    assert rejects[2]["amount"] == "'-1"
    assert rejects[2]["name"] == "'@SUM(A1:A9)"
    assert rejects[2]["inquiry_no"] == "'-2+3"
    assert rejects[3]["name"] == "'\t=1+1"
    # And the harmless cells are untouched
    assert rejects[1]["receipt_url"] == url("tok-R2")
    formula_start = ("=", "+", "-", "@")
    for record in rejects:
        assert not any(cell.startswith(formula_start) for cell in record.values())


def test_rejects_path_can_be_chosen(tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", csv_text([person("U1", email="bad")]))
    target = tmp_path / "out" / "bad-rows.csv"

    result = run(path, rejects_path=target)

    assert result.rejects_path == target
    assert [r["user_id"] for r in read_rejects(target)] == ["U1"]
    assert not (tmp_path / "list.rejects.csv").exists()


def test_dry_run_touches_no_ledger(tmp_path: Path) -> None:
    result = run(write(tmp_path / "list.csv", csv_text([person("U1")])))

    assert result.dry_run is True
    assert result.accepted == result.new == 1
    assert not (tmp_path / "var" / "dispatcher.db").exists()


# the Python API --------------------------------------------------------------------------------
def test_enqueue_campaign_takes_an_iterable_of_dicts(tmp_path: Path) -> None:
    # Given rows from a script: any iterable (here a generator), ints and None as values
    def rows() -> Any:
        yield {"user_id": "S1", "email": "s1@example.jp", "receipt_url": url("s1"), "amount": 1500, "name": None}
        yield {"user_id": "S2", "email": "", "phone": "090-1234-5678", "receipt_url": url("s2")}
        yield {"user_id": "S3", "email": "s3@example.jp", "receipt_url": "http://receive.example.jp/r/s3"}
        yield {"user_id": "S1", "email": "again@example.jp", "receipt_url": url("s1b")}

    # When they are enqueued (dry run)
    result = enqueue_campaign(str(SHIPPED), rows(), dry_run=True)

    # Then they are validated exactly as a file would be, numbered as if the first row were row 2
    assert (result.rows, result.accepted, result.rejected, result.already_present) == (4, 2, 2, 0)
    assert result.by_channel == {"email": 1, "sms": 1}
    assert [(r.row, r.reason.split(":")[0]) for r in result.rejects] == [(4, "receipt_url"), (5, "user_id")]
    assert result.rejects[1].reason == "user_id: duplicate of row 2"
    assert result.rejects[0].original["user_id"] == "S3"
    # And no rejects file is written unless asked for
    assert result.rejects_path is None
    assert result.encoding is None


def test_enqueue_campaign_with_dicts_writes_rejects_when_asked(tmp_path: Path) -> None:
    campaign = load_campaign(SHIPPED)
    rows = [person("D1"), person("D2", category="Z", name="=evil()")]
    target = tmp_path / "rejects.csv"

    result = enqueue_campaign(campaign, rows, dry_run=True, rejects_path=target)

    assert (result.accepted, result.rejected) == (1, 1)
    rejects = read_rejects(target)
    assert [(r["user_id"], r["name"], r["row"]) for r in rejects] == [("D2", "'=evil()", "3")]
    assert rejects[0]["reason"].startswith("category: ")


def test_enqueue_campaign_with_dicts_checks_the_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="receipt_url"):
        enqueue_campaign(SHIPPED, [{"user_id": "U1", "email": "a@example.jp"}], dry_run=True)


def test_enqueue_campaign_with_no_rows_accepts_nothing() -> None:
    result = enqueue_campaign(SHIPPED, [], dry_run=True)

    assert (result.rows, result.accepted, result.rejected) == (0, 0, 0)


@pytest.mark.parametrize(
    "cell",
    ["＝cmd|' /C calc'!A0", "＋81 90", "－1", "＠SUM(A1)", "﹦1", " =1+1", "\u3000=1", "\u00a0＝1", "=1", "\t1", "\r1"],
)
def test_formula_cells_are_neutralised_also_in_full_width_and_after_spaces(cell: str) -> None:
    from dispatcher.core.csvout import neutralise

    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["山田", "090-1234-5678", "ＡＢＣ", "　山田", " a", "", "'=1"])
def test_ordinary_cells_are_written_as_they_are(cell: str) -> None:
    from dispatcher.core.csvout import neutralise

    assert neutralise(cell) == cell


def test_a_row_refused_for_its_sms_does_not_make_the_next_row_with_its_id_a_duplicate(tmp_path: Path) -> None:
    from tests.helpers import write_campaign

    long_url = "https://receive.example.jp/r/" + "x" * 200
    rows = [
        {"user_id": "S1", "email": "", "phone": "090-1234-5678", "receipt_url": long_url},
        {"user_id": "S1", "email": "s1@example.jp", "receipt_url": "https://receive.example.jp/r/s1"},
        {"user_id": "S1", "email": "again@example.jp", "receipt_url": "https://receive.example.jp/r/s1b"},
    ]
    result = enqueue_campaign(write_campaign(tmp_path), rows, dry_run=True)
    assert [(r.row, r.reason.split(":")[0]) for r in result.rejects] == [(2, "sms"), (4, "user_id")]
    assert result.rejects[1].reason == "user_id: duplicate of row 3"
    assert result.accepted == 1
