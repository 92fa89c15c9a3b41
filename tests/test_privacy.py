"""Masking of personal data and receipt URLs (SPEC §7, README "Privacy"): dispatcher.privacy."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from dispatcher.privacy import RedactingFilter, mask_contact, mask_email, mask_phone, mask_url, redact

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
    logger.warning("send failed for %s via %s (%s) url=%s", "U000123", "hanako.sato@docomo.ne.jp",
                   "+819087654321", URL)

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
    from dispatcher.privacy import redact

    text = redact("+819012345678 080-1111-2222 / +81 90 3333 4444")
    for digits in ("9012345678", "1111-2222", "080-1111", "3333 4444"):
        assert digits not in text
