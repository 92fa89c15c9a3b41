"""Validation and normalisation of one recipient's fields (SPEC §5): dispatcher.intake.contacts."""

from __future__ import annotations

import pytest

from dispatcher.intake.contacts import (
    LEGACY_LOCAL_PART,
    FieldError,
    check_amount,
    check_category,
    check_email,
    check_phone,
    check_receipt_url,
    check_user_id,
)

HOSTS = frozenset({"receive.example.jp"})
SECRET = "Zq7sECRETtok3n"


# phone -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "090-1234-5678",
        "09012345678",
        "+81 90 1234 5678",
        "+819012345678",
        "０９０-１２３４-５６７８",  # full-width digits and hyphens, as typed in Excel with an IME
        "０９０１２３４５６７８",
        "090ー1234ー5678",  # katakana long vowel mark used as a dash
        "090−1234−5678",  # U+2212 minus sign
        "  090-1234-5678  ",
        "090 1234 5678",
    ],
)
def test_phone_usual_japanese_writings_normalise_to_e164(raw: str) -> None:
    assert check_phone(raw) == "+819012345678"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("070-1234-5678", "+817012345678"),
        ("080-9876-5432", "+818098765432"),
        ("090-1111-2222", "+819011112222"),
    ],
)
def test_phone_every_sms_capable_mobile_prefix_is_accepted(raw: str, expected: str) -> None:
    assert check_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("03-5244-9370", "landline"),  # the campaign's own SMS sender number: a Tokyo landline
        ("0120-479-249", "toll-free"),  # the call centre
        ("050-1234-5678", "IP phone"),
        ("020-1234-5678", "pager"),
        ("060-1234-5678", "070/080/090"),  # a mobile to phonenumbers, but not one that gets our SMS
    ],
)
def test_phone_numbers_that_cannot_receive_sms_are_rejected_with_their_kind(raw: str, why: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_phone(raw)

    assert caught.value.field == "phone"
    assert str(caught.value).startswith("phone: ")
    assert why in str(caught.value)
    assert "cannot receive SMS" in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "not a number", "090-1234-567", "090-1234-56789", "abc-defg-hijk", "090-1234-5678-9999-1"],
)
def test_phone_garbage_is_rejected_naming_the_field(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_phone(raw)

    assert caught.value.field == "phone"
    assert str(caught.value).startswith("phone: ")


@pytest.mark.parametrize("raw", ["+44 7911 123456", "+1 415 555 2671", "+82 10 1234 5678", "+86 138 0013 8000"])
def test_phone_foreign_mobiles_are_rejected_as_not_japanese(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_phone(raw)

    assert caught.value.field == "phone"
    assert "not a Japanese number" in str(caught.value)


def test_phone_error_does_not_repeat_the_number() -> None:
    with pytest.raises(FieldError) as caught:
        check_phone("03-5244-9370")

    assert "5244" not in str(caught.value)
    assert "9370" not in str(caught.value)


# email -----------------------------------------------------------------------------------------
def test_email_plain_address_is_accepted_without_flag() -> None:
    assert check_email("taro.yamada@example.jp") == ("taro.yamada@example.jp", None)


@pytest.mark.parametrize(
    "raw",
    ["taro..yamada.@docomo.ne.jp", ".taro@ezweb.ne.jp", "taro.@ezweb.ne.jp", "a..b@docomo.ne.jp"],
)
def test_email_legacy_carrier_local_part_is_accepted_and_flagged(raw: str) -> None:
    # Given a pre-2009 docomo/au address that breaks RFC 5322 but belongs to a real user
    # When it is checked
    address, flag = check_email(raw)

    # Then it is kept exactly (the carrier delivers to it) and flagged for the report
    assert address == raw
    assert flag == LEGACY_LOCAL_PART == "legacy-local-part"


def test_email_full_width_ascii_is_normalised() -> None:
    assert check_email("ｔａｒｏ．ｙａｍａｄａ＠ｄｏｃｏｍｏ．ｎｅ．ｊｐ") == ("taro.yamada@docomo.ne.jp", None)


def test_email_domain_is_lower_cased_but_local_part_is_kept() -> None:
    assert check_email("  Taro.Yamada@DoCoMo.NE.JP ") == ("Taro.Yamada@docomo.ne.jp", None)


@pytest.mark.parametrize("raw", ["山田@example.jp", "taro@例え.jp", "tarö@example.jp", "taro@ｅxample.jp\u200b"])
def test_email_non_ascii_is_rejected(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_email(raw)

    assert caught.value.field == "email"
    assert "non-ASCII" in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        "taro@localhost",
        "taro@exa_mple.jp",
        "taro@-example.jp",
        "taro@example-.jp",
        "taro@example..jp",
        "taro@example.123",
        "taro@.example.jp",
        "taro@example.jp.",
    ],
)
def test_email_bad_domains_are_rejected(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_email(raw)

    assert caught.value.field == "email"
    assert "domain" in str(caught.value)
    # and the reason (kept in the rejects file) does not quote the domain
    domain = raw.rpartition("@")[2]
    assert domain.strip(".") not in str(caught.value)


@pytest.mark.parametrize("raw", ["taro", "@example.jp", "taro@", "", "a b@example.jp", "a@b@example.jp", "a(b)@x.jp"])
def test_email_malformed_addresses_are_rejected(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_email(raw)

    assert caught.value.field == "email"
    assert str(caught.value).startswith("email: ")


def test_email_overlong_local_part_is_rejected() -> None:
    with pytest.raises(FieldError, match="too long"):
        check_email("a" * 65 + "@example.jp")
    assert check_email("a" * 64 + "@example.jp")[0] == "a" * 64 + "@example.jp"


def test_email_error_does_not_repeat_the_local_part() -> None:
    with pytest.raises(FieldError) as caught:
        check_email("hanako.secret@exa_mple.jp")

    assert "hanako" not in str(caught.value)


# receipt_url -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        f"https://receive.example.jp/r/{SECRET}",
        f"https://receive.example.jp/?t={SECRET}",
        f"https://receive.example.jp?t={SECRET}",
        f"HTTPS://receive.example.jp/r/{SECRET}",
        f"https://receive.example.jp:443/r/{SECRET}",
    ],
)
def test_receipt_url_https_on_an_allowed_host_with_a_personal_part_is_accepted(raw: str) -> None:
    assert check_receipt_url(raw, HOSTS) == raw


def test_receipt_url_is_stripped_and_host_compared_case_insensitively() -> None:
    url = f"https://Receive.Example.JP/r/{SECRET}"
    assert check_receipt_url(f"  {url} ", HOSTS) == url


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (f"http://receive.example.jp/r/{SECRET}", "https"),
        (f"ftp://receive.example.jp/r/{SECRET}", "https"),
        (f"javascript:alert(1)//{SECRET}", "https"),
        (f"https://evil.example.com/r/{SECRET}", "receipt_hosts"),
        (f"https://receive.example.jp.evil.example.com/r/{SECRET}", "receipt_hosts"),
        (f"https://example.jp/r/{SECRET}", "receipt_hosts"),
        (f"https://taro:{SECRET}@receive.example.jp/r/x", "user name or password"),
        (f"https://{SECRET}@receive.example.jp/r/x", "user name or password"),
        (f"https://receive.example.jp@evil.example.com/r/{SECRET}", "user name or password"),
        (f"https://receive.example.jp/r/{SECRET} x", "spaces"),
        (f"https://receive.example.jp/r/{SECRET}\tx", "spaces"),
        (f"https://receive.example.jp/r/{SECRET}\x07", "control"),
        (f"https://receive.example.jp/r/{SECRET}\x7f/x", "control"),
        (f"https://receive.example.jp/r/{SECRET}\r\nX-Injected: 1", "control"),
        (f"https://receive.example.jp/r/{SECRET}/受取", "non-ASCII"),
        ("https://receive.example.jp/", "personal path"),
        ("https://receive.example.jp", "personal path"),
        (f"https://receive.example.jp/#{SECRET}", "personal path"),
        (f"https://receive.example.jp:port/r/{SECRET}", "not a valid URL"),
        (f"https://[::1/r/{SECRET}", "not a valid URL"),
        (f"https://receive.example.jp/r/{SECRET}" + "x" * 2048, "2048"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_receipt_url_problems_are_rejected_without_leaking_the_secret(raw: str, why: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_receipt_url(raw, HOSTS)

    message = str(caught.value)
    assert caught.value.field == "receipt_url"
    assert message.startswith("receipt_url: ")
    assert why in message
    # The path is a bearer credential for money: the reason goes into rejects files and logs.
    assert SECRET not in message
    assert "/r/" not in message


def test_receipt_url_wrong_scheme_message_keeps_only_scheme_and_host() -> None:
    with pytest.raises(FieldError) as caught:
        check_receipt_url(f"http://receive.example.jp/r/{SECRET}?k={SECRET}", HOSTS)

    assert str(caught.value) == "receipt_url: must use https (http://receive.example.jp/…)"


def test_receipt_url_allow_list_is_the_campaigns() -> None:
    # Given a campaign that allows two hosts
    hosts = frozenset({"receive.example.jp", "receive2.example.jp"})

    # Then both are accepted and a third is not
    assert check_receipt_url("https://receive2.example.jp/r/abc", hosts)
    with pytest.raises(FieldError, match=r"'receive3\.example\.jp' is not in the campaign's receipt_hosts"):
        check_receipt_url("https://receive3.example.jp/r/abc", hosts)


# amount ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12345", 12345),
        ("12,345", 12345),
        ("12,345円", 12345),
        ("１２，３４５円", 12345),
        ("１２３４５", 12345),
        (" 500 ", 500),
        ("0", 0),
        ("1,000,000", 1_000_000),
        ("999999999", 999_999_999),
    ],
)
def test_amount_in_usual_writings_is_parsed_to_whole_yen(raw: str, expected: int) -> None:
    assert check_amount(raw) == expected


@pytest.mark.parametrize("raw", ["12.5", "-1", "－１", "abc", "円", "", "1e3", "1234567890", "¥1000", "1,000ドル"])
def test_amount_that_is_not_whole_non_negative_yen_is_rejected(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_amount(raw)

    assert caught.value.field == "amount"
    assert str(caught.value).startswith("amount: ")


# category --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"), [("A", "A"), ("B", "B"), ("a", "A"), (" b ", "B"), ("Ａ", "A"), ("ｂ", "B")]
)
def test_category_a_or_b_is_normalised(raw: str, expected: str) -> None:
    assert check_category(raw) == expected


@pytest.mark.parametrize("raw", ["C", "AB", "", "1", "Ａ Ｂ"])
def test_category_other_values_are_rejected(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_category(raw)

    assert caught.value.field == "category"
    assert "A or B" in str(caught.value)


# user_id ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("U000001", "U000001"),
        ("  U1  ", "U1"),
        ("Ｕ０００１", "U0001"),
        ("利用者-1", "利用者-1"),
        ("x" * 128, "x" * 128),
    ],
)
def test_user_id_is_normalised(raw: str, expected: str) -> None:
    assert check_user_id(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 129, "longer than 128"),
        ("U\x001", "control"),
        ("U\u200b1", "control"),  # zero-width space: looks identical to "U1" in a spreadsheet
        ("U\u202e1", "control"),  # right-to-left override
    ],
)
def test_user_id_problems_are_rejected(raw: str, why: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_user_id(raw)

    assert caught.value.field == "user_id"
    assert why in str(caught.value)


def test_field_error_is_a_value_error_carrying_the_field() -> None:
    error = FieldError("phone", "is odd")

    assert isinstance(error, ValueError)
    assert error.field == "phone"
    assert str(error) == "phone: is odd"


def test_amount_with_a_space_before_yen() -> None:
    from dispatcher.intake.contacts import check_amount

    assert check_amount("1,000 円") == 1000


@pytest.mark.parametrize(
    "raw",
    [
        "=?utf-8?b?dmljdGltQGV2aWwuZXhhbXBsZSw=?=@example.jp",  # decodes to "victim@evil.example,"
        "=?iso-2022-jp?q?x?=@example.jp",
        "taro=?x@example.jp",
        "ｔａｒｏ＝？ｘ＠example.jp",  # full width: NFKC makes it "=?" too
    ],
)
def test_email_with_an_encoded_word_in_the_local_part_is_rejected_without_echoing_it(raw: str) -> None:
    # Given an address whose local part holds an RFC 2047 encoded word (mail software decodes it, even there)
    # When it is checked
    with pytest.raises(FieldError) as caught:
        check_email(raw)

    # Then it is refused with a reason that names the trick, not the address
    assert caught.value.field == "email"
    assert "=?" in str(caught.value) and "RFC 2047" in str(caught.value)
    assert "dmljdGlt" not in str(caught.value) and "taro" not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        "taro@example.jp\r\nBcc: x@example.jp",
        "taro@example.jp\n",
        "\rtaro@example.jp",
        "ta\tro@example.jp",
        "taro\x00@example.jp",
        "taro@example.jp\x85",
        "taro@example.jp\u2028x@example.jp",
    ],
)
def test_email_with_a_line_break_or_control_character_anywhere_is_rejected(raw: str) -> None:
    # Given an address with a CR/LF, tab, NUL, NEL or line separator, even at either end (no silent strip)
    # When it is checked
    with pytest.raises(FieldError) as caught:
        check_email(raw)

    # Then it is refused as such, and the reason carries no part of the address
    assert "line break or control character" in str(caught.value)
    assert "taro" not in str(caught.value) and "example" not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        "Taro <taro@example.jp>",
        "taro@example.jp, b@example.jp",
        '"a b"@example.jp',
        "a;b@example.jp",
        "a:b@example.jp",
        "a,b@example.jp",
        "a<b@example.jp",
    ],
)
def test_email_display_names_lists_and_quotes_are_rejected(raw: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_email(raw)

    assert caught.value.field == "email"
    assert "taro" not in str(caught.value)
