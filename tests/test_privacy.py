"""Masking of personal data and receipt URLs (SPEC §7, README "Privacy"): dispatcher.core.privacy."""

from __future__ import annotations

import io
import logging
import re._constants as re_constants
import re._parser as re_parser
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.privacy import (
    RedactingFilter,
    mask_contact,
    mask_email,
    mask_phone,
    mask_url,
    redact,
    safe_code,
    scrub,
)

SECRET = "Zq7sECRETtok3n"
URL = f"https://receive.example.jp/r/{SECRET}?k=abc123"


# masking --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("taro.yamada@docomo.ne.jp", "ta***@docomo.ne.jp"),
        ("taro..yamada.@docomo.ne.jp", "ta***@docomo.ne.jp"),
        ("a@example.jp", "a***@example.jp"),
        ("no-at-sign", "***"),
        ("", "***"),
    ],
)
def test_mask_email_keeps_two_characters_and_the_domain(address: str, masked: str) -> None:
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+819012345678", "090-****-5678"),
        ("+817011112222", "070-****-2222"),
        ("+81 80 1234 9999", "080-****-9999"),
        ("090-1234-5678", "***5678"),
        ("+14155552671", "***2671"),
        ("1234", "***"),
        ("", "***"),
    ],
)
def test_mask_phone_keeps_only_the_last_four_digits(number: str, masked: str) -> None:
    assert mask_phone(number) == masked


def test_mask_contact_picks_by_channel() -> None:
    assert mask_contact("email", "taro@example.jp") == "ta***@example.jp"
    assert mask_contact("sms", "+819012345678") == "090-****-5678"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (URL, "https://receive.example.jp/…"),
        ("https://receive.example.jp", "https://receive.example.jp/…"),
        (f"https://taro:{SECRET}@receive.example.jp/r/x", "https://receive.example.jp/…"),
        (f"https://RECEIVE.example.jp:8443/r/{SECRET}#frag", "https://receive.example.jp/…"),
        ("not a url", "<url>"),
        (f"/r/{SECRET}", "<url>"),
        (f"https://[::1/r/{SECRET}", "<url>"),
    ],
)
def test_mask_url_keeps_scheme_and_host_only(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# redact ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        (f"sending {URL} now", [SECRET, "abc123", "/r/"], ["sending ", "https://receive.example.jp/…", " now"]),
        (f'href="{URL}"', [SECRET], ['href="https://receive.example.jp/…"']),
        (f"<{URL}>", [SECRET], ["<https://receive.example.jp/…>"]),
        ("to taro.yamada@docomo.ne.jp ok", ["taro", "yamada"], ["***@docomo.ne.jp", " ok"]),
        ("to taro..yamada.@docomo.ne.jp", ["taro", "yamada"], ["***@docomo.ne.jp"]),
        ("to +819012345678 ok", ["9012345678", "+81"], ["090-****-5678", " ok"]),
        ("tel +81 90 1234 5678.", ["1234"], ["090-****-5678."]),
        ("tel 090-1234-5678", ["090-1234", "1234-5678"], ["5678"]),
        ("tel 09012345678!", ["0901234"], ["5678!"]),
        ("tel 070 1234 5678", ["070 1234"], ["5678"]),
        # Japanese text glues URLs and numbers to kana/kanji without a word boundary
        (f"受取URL{URL}", [SECRET, "abc123"], ["受取", "receive.example.jp/…"]),
        (f"URLは{URL} です", [SECRET, "abc123"], ["URLは", "receive.example.jp/… です"]),
        ("電話09012345678まで", ["09012345678", "0901234"], ["電話", "まで"]),
        ("番号は090-1234-5678です", ["090-1234"], ["番号は", "です"]),
        ("宛先：taro@ezweb.ne.jp", ["taro"], ["***@ezweb.ne.jp"]),
    ],
)
def test_redact_removes_url_paths_email_local_parts_and_phone_numbers(
    text: str, gone: list[str], kept: list[str]
) -> None:
    redacted = redact(text)

    for secret in gone:
        assert secret not in redacted
    for part in kept:
        assert part in redacted


def test_redact_leaves_ordinary_text_and_numbers_alone() -> None:
    text = "campaign regionpay-2023-app: 1234 rows, 12 rejected; order 109012345678 at 2023-05-31 23:59:59"

    assert redact(text) == text


def test_redact_handles_several_secrets_in_one_line() -> None:
    text = f"{URL} {URL.replace(SECRET, 'other')} a@example.jp, +819012345678, 080-1111-2222"

    redacted = redact(text)

    assert redacted == (
        "https://receive.example.jp/… https://receive.example.jp/… ***@example.jp, 090-****-5678, ***2222"
    )


# the log filter -------------------------------------------------------------------------------
@pytest.fixture(params=["handler", "logger"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing to a string, with the redacting filter on its handler or on the logger itself."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"tests.privacy.{request.param}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    redacting = RedactingFilter()
    if request.param == "handler":
        handler.addFilter(redacting)
    else:
        logger.addFilter(redacting)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    logger.removeFilter(redacting)
    logger.propagate = True


def test_filter_redacts_arguments_of_a_log_message(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    # When a message is logged with personal data in its arguments
    logger.warning("send failed for %s via %s (%s) url=%s", "U000123", "hanako.sato@docomo.ne.jp", "+819087654321", URL)

    # Then none of it reaches the output in full, and the rest of the line does
    output = stream.getvalue()
    assert "hanako" not in output
    assert "9087654321" not in output
    assert SECRET not in output
    assert "abc123" not in output
    assert output == (
        f"WARNING {logger.name}: send failed for U000123 via ***@docomo.ne.jp (090-****-4321) "
        "url=https://receive.example.jp/…\n"
    )


def test_filter_redacts_the_exception_text_and_traceback(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    secret_url = "https://receive.example.jp/r/" + "TRACEBACKsecret42"

    # Given an exception whose message carries a receipt URL, a phone number and an address
    try:
        raise RuntimeError(f"provider refused {secret_url} for 080-2222-3333 / jiro@ezweb.ne.jp")
    except RuntimeError:
        logger.exception("delivery %s failed", 42)

    # When it is logged with its traceback, then the traceback is kept but its secrets are not
    output = stream.getvalue()
    assert "TRACEBACKsecret42" not in output
    assert "2222-3333" not in output
    assert "jiro" not in output
    assert "delivery 42 failed" in output
    assert "Traceback (most recent call last)" in output
    assert "RuntimeError: provider refused https://receive.example.jp/… for ***3333 / ***@ezweb.ne.jp" in output


def test_filter_redacts_a_url_inside_a_dict_argument(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    logger.info("payload %s", {"to": "+819012345678", "body": f"受取URL{URL}"})

    output = stream.getvalue()
    assert SECRET not in output
    assert "9012345678" not in output
    assert "090-****-5678" in output


def test_filter_keeps_every_record_and_leaves_no_args(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, _ = captured
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "to %s", ("a@example.jp",), None)

    kept = RedactingFilter().filter(record)

    assert kept is True
    assert record.getMessage() == "to ***@example.jp"
    assert record.args == ()
    # Filtering twice (a filter on the logger and on the handler) changes nothing more
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "to ***@example.jp"


def test_message_with_a_literal_percent_survives_redaction(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    logger.info("%d%% sent to %s", 50, "a@example.jp")

    assert stream.getvalue().endswith(": 50% sent to ***@example.jp\n")


def test_two_numbers_side_by_side_are_both_masked() -> None:
    from dispatcher.core.privacy import redact

    text = redact("+819012345678 080-1111-2222 / +81 90 3333 4444")
    for digits in ("9012345678", "1111-2222", "080-1111", "3333 4444"):
        assert digits not in text


# the writings the first redaction missed (issue 11, finding 4) -----------------------------------
@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("電話０９０－１２３４－５６７８まで", ["１２３４", "1234"]),
        ("tel 819012345678 ok", ["9012345678"]),
        ("tel +81 90 1234 5678", ["1234"]),
        ("tel +81(90)1234-5678", ["1234"]),
        ("tel 090(1234)5678", ["1234"]),
        ("tel (090)1234-5678", ["1234"]),
        ("tel 090.1234.5678", ["1234"]),
        ("u=https%3A%2F%2Freceive.example.jp%2Fr%2FZq7sECRET", ["Zq7sECRET", "%2Fr%2F"]),
        ("u=https%253A%252F%252Freceive.example.jp%252Fr%252FZq7sECRET", ["Zq7sECRET"]),
        ("550 mailbox receive.example.jp/r/abc123 unknown", ["abc123", "/r/"]),
        ("bad receive.example.jp%2Fr%2Fabc123", ["abc123"]),
        ("宛先：ｔａｒｏ＠ｅｚｗｅｂ．ｎｅ．ｊｐ", ["ｔａｒｏ", "taro"]),
    ],
)
def test_redact_catches_full_width_national_dotted_percent_encoded_and_schemeless_writings(
    text: str, gone: list[str]
) -> None:
    # When text holds a contact or receipt URL in a writing a provider or a person may use
    redacted = redact(text)

    # Then none of its secret part is left
    for secret in gone:
        assert secret not in redacted, redacted


@pytest.mark.parametrize(
    "text",
    [
        "550 5.1.1 <***@docomo.ne.jp>: Recipient address rejected",
        "補償額は12,000円です。期限は2023年5月31日 23:59 (JST) まで",
        "2023-05-31T23:59:59+09:00 1,234 rows; 12 rejected; 421 4.7.0 try later",
        "ﾃｽﾄ　全角スペース　と　カタカナ　①②③",
        "sender 03-5244-9370, code 1234567, version 5.1.1, path a/b/c",
    ],
)
def test_redact_leaves_japanese_text_dates_amounts_and_smtp_codes_alone(text: str) -> None:
    assert redact(text) == text


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_redact_of_any_text_is_idempotent_and_keeps_text_without_secrets(text: str) -> None:
    # Given any text: redacting twice is redacting once
    once = redact(text)

    assert redact(once) == once
    # and text with no digit, no '@', no '/' or '%' has nothing to hide
    if not any(ch in text for ch in "@/%") and not any(ch.isdigit() for ch in text):
        assert once == text


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["090-1234-5678", "+819012345678", "taro@ezweb.ne.jp", URL, "receive.example.jp/r/abc123"]),
            st.sampled_from(["です", " ", "、", "電話", "URL", "(", ")", "：", "\u3000", ""]),
        )
    )
)
@settings(max_examples=300, deadline=None)
def test_secrets_glued_into_japanese_text_never_survive(pairs: list[tuple[str, str]]) -> None:
    # Given secrets interleaved with Japanese punctuation and words, or written back to back (two addresses
    # glued to ASCII letters are ambiguous, "…ne.jpURLtaro@…" is a valid domain, and a host glued to the end
    # of a number is not looked for (a match may start only where a run of its characters starts, which is
    # what keeps redaction linear), so an address or a number is followed by a character of neither kind)
    parts = [p for secret, glue in pairs for p in (secret, _after(secret, glue))]

    # When redacted, then no secret part is left
    redacted = redact("".join(parts))
    for secret in ("1234-5678", "9012345678", "taro", SECRET, "abc123"):
        assert secret not in redacted


def _after(secret: str, glue: str) -> str:
    if not secret.startswith("http") and "/" not in secret and (not glue or (glue.isascii() and glue.isalnum())):
        return "、"
    return glue


# linear time and bounded log records (issue 11, finding 3) -------------------------------------
def test_every_unbounded_repetition_in_the_redaction_patterns_is_possessive() -> None:
    # Given the combined pattern redact() runs (bench/redaction.py measures its time; a unit test may not
    # time, so it checks the two properties that make the scan linear)
    from dispatcher.core import privacy

    tree = re_parser.parse(privacy._SECRETS.pattern)

    # Then no unbounded repetition can backtrack (greedy or lazy ones without an upper bound made the old
    # patterns quadratic) ...
    assert _backtracking_repeats(tree) == []
    # ... and every alternative starts with a negative lookbehind, so a failed attempt is not retried at
    # each later position of the same run of characters
    starts = [_first_items(group) for group in _named_groups(tree)]
    assert len(starts) == 5
    for firsts in starts:
        for first in firsts:
            assert first[0] is re_constants.ASSERT_NOT and first[1][0] == -1, first


def _backtracking_repeats(tree: Any) -> list[Any]:
    found: list[Any] = []
    for op, arg in tree:
        if op in (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT) and arg[1] is re_constants.MAXREPEAT:
            found.append((op, arg))
        found.extend(_backtracking_repeats(sub) for sub in _children(op, arg))
    return [item for item in found if item]


def _children(op: Any, arg: Any) -> list[Any]:
    if op is re_constants.BRANCH:
        return list(arg[1])
    if op is re_constants.SUBPATTERN:
        return [arg[3]]
    if op in (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT, re_constants.POSSESSIVE_REPEAT):
        return [arg[2]]
    if op in (re_constants.ASSERT, re_constants.ASSERT_NOT):
        return [arg[1]]
    if op is re_constants.ATOMIC_GROUP:
        return [arg]
    return []


def _named_groups(tree: Any) -> list[Any]:
    (op, arg) = tree[0]
    assert op is re_constants.BRANCH
    return [alternative[0][1][3] for alternative in arg[1]]


def _first_items(group: Any) -> list[Any]:
    """The first item of each alternative of a group (a group that is one branch has several)."""
    if len(group) == 1 and group[0][0] is re_constants.BRANCH:
        return [alternative[0] for alternative in group[0][1][1]]
    return [group[0]]


def test_log_filter_cuts_a_huge_record_before_redaction(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    # When a record 100,000 characters long is logged (an attacker-supplied value quoted in full)
    logger.warning("refused type %s", "T" * 100_000 + f" {URL}")

    # Then the output is cut to the bound and says how much was cut
    output = stream.getvalue()
    assert len(output) < 8_500
    assert "characters cut]" in output
    assert SECRET not in output


def test_log_filter_cuts_the_exception_text_too(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    # Given an exception whose message is huge
    try:
        raise ValueError("x" * 50_000)
    except ValueError:
        logger.exception("failed")

    # Then message and traceback together stay within the bound
    assert len(stream.getvalue()) < 8_500
    assert "characters cut]" in stream.getvalue()


# what may be kept of a provider's error (issue 11, finding 4) ------------------------------------
def test_scrub_removes_the_deliverys_own_url_and_contact_in_every_writing() -> None:
    # Given an error text quoting this delivery's URL (full, without scheme, its path, percent-encoded in two
    # ways) and its address and local part, in writings redact() alone would not all recognise
    url, address = "https://receive.example.jp/r/Tok3nXYZ", "hanako.s@ezweb.ne.jp"
    text = (
        f"x {url} receive.example.jp/r/Tok3nXYZ /r/Tok3nXYZ https%3A%2F%2Freceive.example.jp%2Fr%2FTok3nXYZ "
        "receive.example.jp%2fr%2ftok3nxyz HANAKO.S@EZWEB.NE.JP user hanako.s unknown"
    )

    # When scrubbed with the delivery's secrets
    kept = scrub(text, [url, address])

    # Then no writing of either is left, and the rest of the text is
    assert "tok3nxyz" not in kept.lower() and "hanako" not in kept.lower()
    assert kept.startswith("x ") and kept.endswith("unknown")


def test_scrub_bounds_what_it_keeps() -> None:
    kept = scrub("あ" * 100_000, [], limit=300)

    assert len(kept) == 300 and kept.endswith("…")


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("InvalidParameterValue", "InvalidParameterValue"),
        ("550", "550"),
        (31, "31"),
        (819012345678, None),  # a phone number posing as a numeric code
        ("09012345678", None),
        ("bad code with spaces", None),
        ("x" * 40, None),
        (True, None),
        (None, None),
        ("Tok3nXYZ", None),  # the delivery's own receipt token
    ],
)
def test_safe_code_keeps_short_tokens_only(value: object, kept: str | None) -> None:
    assert safe_code(value, ["https://receive.example.jp/r/Tok3nXYZ"]) == kept
