"""dispatcher.sending.mime.build_raw: byte for byte what build_message(...).as_bytes() writes, and the providers
sending those bytes as they are."""

from __future__ import annotations

import email
import email.policy
import email.utils
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.core.errors import PermanentError
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel
from dispatcher.providers import build
from dispatcher.providers.base import OutgoingEmail
from dispatcher.sending.mime import DELIVERY_HEADER, MessageError, build_message, build_raw
from dispatcher.sending.render import Email

SENDER = "regionpay_compensation_ml@giftpad.jp"
SENDER_NAME = "地域クーポン regionPAY 補償事務局"
SUBJECT = "【regionPAY補償】キャッシュレスポイント受取サイトのご案内（受取期限 2023年5月31日(水)）"
TEXT = (
    "山田 太郎 様\n\nポイント受取サイトのご案内です。\r\n受取URL: https://receive.example.jp/r/Zq7sECRETtok3n?k=a1\n"
    "受取期限: 2023年5月31日(水)\r\rお問い合わせ 0120-479-249\n"
)
HTML = '<html><body><p>山田 太郎 様</p>\n<p><a href="https://receive.example.jp/r/x">受取</a></p></body></html>\n'
JST = timezone(timedelta(hours=9))

BASE: dict[str, Any] = {
    "subject": SUBJECT,
    "text": TEXT,
    "html": HTML,
    "to": "taro..yamada.@docomo.ne.jp",
    "sender": SENDER,
    "sender_name": SENDER_NAME,
    "delivery_ref": "123456789.12",
    "sent_at": datetime(2023, 4, 5, 10, 0, tzinfo=JST),
}

_BOUNDARY = re.compile(rb"={15}\d{19}==")
# make_msgid: <centiseconds.pid.random.idstring@domain>
_MSGID_RANDOM = re.compile(rb"(Message-ID:(?:\r\n)? <)\d+\.\d+\.\d+")


def placeholders(raw: bytes) -> bytes:
    """The message with the random boundary and the random part of the Message-ID fixed."""
    raw = _BOUNDARY.sub(b"=====BOUNDARY=====", raw)
    raw, ids = _MSGID_RANDOM.subn(rb"\1TIME.PID.RANDOM", raw)
    assert ids == 1
    return raw


class _FrozenClock:
    """email.utils' view of the time module, at a fixed instant (make_msgid reads time.time())."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def time(self) -> float:
        return 1680656400.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def same_draws(seed: int) -> Iterator[Callable[[], None]]:
    """Make both builders draw the same Message-ID and boundary: a fixed clock for make_msgid, and the
    random generator reset before each build (the Message-ID line's folding depends on its length, so
    masking the random parts afterwards would not be enough). Not a fixture: hypothesis tests use it too."""
    saved_random, saved_time = random.getstate(), email.utils.time
    email.utils.time = _FrozenClock(saved_time)  # type: ignore[assignment]
    try:
        yield lambda: random.seed(seed)
    finally:
        email.utils.time = saved_time
        random.setstate(saved_random)


def outcome(build_fn: Callable[..., Any], **fields: Any) -> tuple[str, Any]:
    args = dict(fields)
    mail = Email(args.pop("subject"), args.pop("text"), args.pop("html"))
    try:
        result = build_fn(mail, **args)
        raw = result if isinstance(result, bytes) else result.as_bytes()
    except MessageError as exc:  # build_raw's own error: the email package's, when it has one, is its cause
        cause = exc.__cause__ or exc
        return "raises", (type(cause), str(cause))
    except Exception as exc:  # the same exception, with the same message, is part of "the same"
        return "raises", (type(exc), str(exc))
    return "bytes", raw


def assert_same(seed: int = 0, **changes: Any) -> bytes | None:
    """build_raw gives exactly build_message(...).as_bytes(), or raises exactly what it raises."""
    fields = {**BASE, **changes}
    with same_draws(seed) as reset:
        reset()
        expected = outcome(build_message, **fields)
        reset()
        got = outcome(build_raw, **fields)
    assert got == expected
    return got[1] if got[0] == "bytes" else None


def _args(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in ("subject", "text", "html")}


# Fixed cases ------------------------------------------------------------------------------------
def test_typical_japanese_message_is_byte_for_byte_the_email_package_output() -> None:
    raw = assert_same()
    assert raw is not None
    # And the comparison is not vacuous: the whole structure is in those bytes
    assert raw.startswith(b"From: =?utf-8?b?")
    assert b"\r\nTo: taro..yamada.@docomo.ne.jp\r\n" in raw
    assert b"multipart/alternative" in raw and re.search(rb"--={15}\d{19}==--\r\n\Z", raw)
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize("html", [None, HTML])
def test_with_their_own_random_draws_only_boundary_and_message_id_differ(html: str | None) -> None:
    # Each builder draws its own boundary and Message-ID: equal once those are replaced by placeholders
    fields = {**_args(BASE), "delivery_ref": "7.1"}  # a Message-ID line that fits whatever the draw
    expected = build_message(Email(SUBJECT, TEXT, html), **fields).as_bytes()
    got = build_raw(Email(SUBJECT, TEXT, html), **fields)
    assert placeholders(got) == placeholders(expected)
    assert got != expected


def test_a_differing_byte_is_caught() -> None:
    # The comparison must be able to fail: a one-character change in the text shows
    with same_draws(1) as reset:
        reset()
        expected = outcome(build_message, **BASE)
        reset()
        got = outcome(build_raw, **{**BASE, "text": TEXT + "x"})
    assert got[0] == expected[0] == "bytes" and got != expected


@pytest.mark.parametrize("html", [None, HTML, "", "<p>\r\n</p>"])
def test_html_or_text_only(html: str | None) -> None:
    raw = assert_same(html=html)
    assert raw is not None
    assert (b"multipart/alternative" in raw) == (html is not None)


@pytest.mark.parametrize(
    "subject",
    [
        SUBJECT,
        "Your compensation points are ready",
        "",
        " leading and trailing spaces ",
        "A long ASCII subject line that will certainly need folding because it goes on and on and on past 78",
        "=?utf-8?q?looks_encoded?= but is not",
        'Specials: <a@b.jp>, "quoted" (comment); [x]',
        "混在 mixed 日本語 and English 件名 " * 4,
        "ｶﾀｶﾅ 半角 ①②③ 〜～ 𠮷野家",
        "trailing line break\n",
    ],
)
def test_subjects(subject: str) -> None:
    assert assert_same(subject=subject) is not None


@pytest.mark.parametrize("subject", ["line\nbreak", "line\r\nbreak", "cr\ronly", "sep\u2028arator", "a\x0bb"])
def test_subject_with_a_line_break_raises_like_build_message(subject: str) -> None:
    with pytest.raises(MessageError, match="cannot be built") as caught:
        build_raw(Email(subject, TEXT, None), **_args(BASE))
    assert isinstance(caught.value, PermanentError)
    assert isinstance(caught.value.__cause__, ValueError) and "linefeed" in str(caught.value.__cause__)
    assert assert_same(subject=subject) is None  # both raise, the same exception and message


@pytest.mark.parametrize(
    "sender_name", [SENDER_NAME, "Example Support", "", 'Support, "Team" (JP)', "補償事務局" * 12, "name\nwith break"]
)
def test_sender_names(sender_name: str) -> None:
    assert_same(sender_name=sender_name)


@pytest.mark.parametrize("sender", [SENDER, "notice@mail.example.jp", "no-at-sign", "a@b"])
def test_senders(sender: str) -> None:
    assert_same(sender=sender)


@pytest.mark.parametrize(
    "to",
    [
        "taro..yamada.@docomo.ne.jp",  # legacy docomo: consecutive dots, dot before @
        ".taro@docomo.ne.jp",
        "taro.@ezweb.ne.jp",  # legacy au
        "hanako-_.-@au.com",
        "user+campaign2023@example.jp",
        "a+b+c@softbank.ne.jp",
        "UPPER.Case@Example.JP",
        "odd!#$%&'*/=^_`{|}~@example.jp",
        "x" * 64 + "@" + "sub." * 10 + "example.jp",  # very long: folded by the policy
        "y" * 60 + "@docomo.ne.jp",  # around the 78-character line
        "y" * 61 + "@docomo.ne.jp",
        "y" * 62 + "@docomo.ne.jp",
        "=?utf-8?q?x?=@example.jp",
        '"quoted local"@example.jp',
        "山田 <taro@example.jp>",
        "Taro Yamada <taro@example.jp>",
        " taro@example.jp",
        "taro@[192.0.2.1]",
        "taro@例え.jp",
        "a@b@c",
        "a@",
        "",
        "taro@example.jp\r\nBcc: x@example.jp",
    ],
)
def test_recipient_addresses(to: str) -> None:
    assert_same(to=to)


def test_legacy_carrier_address_is_written_verbatim() -> None:
    raw = assert_same(to="taro..yamada.@docomo.ne.jp")
    assert raw is not None and b"\r\nTo: taro..yamada.@docomo.ne.jp\r\n" in raw


@pytest.mark.parametrize(
    "sent_at",
    [
        datetime(2023, 4, 5, 1, 0, tzinfo=UTC),
        datetime(2023, 4, 5, 10, 0, tzinfo=JST),
        datetime(2023, 4, 5, 10, 0, 59, 999999, tzinfo=JST),
        datetime(2023, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2023, 4, 5, 1, 0),  # naive: -0000
        datetime(1999, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(50, 1, 1, tzinfo=UTC),  # a two-digit year reads back as 2050
        datetime(2023, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30, seconds=15))),
    ],
)
def test_dates(sent_at: datetime) -> None:
    assert_same(sent_at=sent_at)


@pytest.mark.parametrize(
    "delivery_ref",
    [
        "123456789.12",
        "7.1",
        "regionpay-2023-app:42",
        "c:1",
        "9" * 30 + "." + "9" * 10,
        "x" * 70,
        "x" * 200,
        "with space.1",
        "question?.1",
        "=?utf-8?q?a?=",
        "",
        "ref\n.1",
        "日本.1",
    ],
)
def test_delivery_references(delivery_ref: str) -> None:
    assert_same(delivery_ref=delivery_ref)


@pytest.mark.parametrize("extra", range(0, 40))
def test_message_id_lines_of_every_length_around_the_fold(extra: int) -> None:
    # The Message-ID line moves to a line of its own when it does not fit after the name but fits alone
    for seed in range(3):
        assert_same(seed=seed, delivery_ref="1" * (1 + extra) + ".12")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "\r\n",
        "\r",
        "no final newline",
        "a\nb\rc\r\nd",
        "\n\n\n",
        "\r\r\n\n",
        "a\r\n\r\n",
        "line\n" * 500,
        "あ" * 3000,
        "ab\x0bc\x0cd\x1ce\x85f\u2028g\u2029h\n",
        "tab\tand  spaces  \n",
        "From here on\nFrom there\n.\n",
        "x" * 56,
        "x" * 57,
        "x" * 58,
        "x" * 114,
        "\r\n" * 1000,
    ],
)
def test_bodies(text: str) -> None:
    raw = assert_same(text=text)
    assert raw is not None
    raw_text_only = assert_same(text=text, html=None)
    assert raw_text_only is not None
    assert all(len(line) <= 76 for line in raw_text_only.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))


def test_html_body_mixes() -> None:
    assert_same(html="<p>" + "い" * 3000 + "</p>\r<br>\n<br>\r\n")


def test_text_that_is_not_utf8_encodable_raises_like_build_message() -> None:
    assert assert_same(text="surrogate \udc80 here") is None
    assert assert_same(html="surrogate \udc80 here") is None


def test_the_built_message_parses_back() -> None:
    raw = build_raw(Email(SUBJECT, TEXT, HTML), **_args(BASE))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == SUBJECT
    assert parsed["From"].addresses[0].display_name == SENDER_NAME
    assert parsed["To"].addresses[0].addr_spec == "taro..yamada.@docomo.ne.jp"
    assert parsed[DELIVERY_HEADER] == "123456789.12"
    assert parsed["Message-ID"].endswith(".123456789.12@giftpad.jp>")
    plain = parsed.get_body(("plain",))
    assert plain is not None and "https://receive.example.jp/r/Zq7sECRETtok3n?k=a1" in plain.get_content()


def test_the_sender_and_subject_are_folded_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatcher.sending import mime

    folded: list[str] = []
    fold = mime._fold
    monkeypatch.setattr(mime, "_fold", lambda name, header: folded.append(name) or fold(name, header))
    monkeypatch.setattr(mime, "_folded", {})
    for i in range(3):
        build_raw(Email(SUBJECT, TEXT, None), **{**_args(BASE), "delivery_ref": f"{i}.1"})
    assert folded == ["From", "Subject"]  # the first message only; the others are written verbatim


def test_the_folded_header_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatcher.sending import mime

    monkeypatch.setattr(mime, "_folded", {})
    for i in range(mime._FOLDED_MAX + 10):
        assert_same(subject=f"{SUBJECT} {i}", html=None)
    assert 0 < len(mime._folded) <= mime._FOLDED_MAX
    assert_same(subject=f"{SUBJECT} 3", html=None)  # and what is kept is what the policy writes


@pytest.mark.parametrize(
    "changes",
    [
        {"to": "taro@例え.jp", "subject": "line\nbreak"},  # To folds fine; the subject is refused at build time
        {"delivery_ref": "日本.1", "subject": "line\nbreak"},  # the Message-ID cannot be written; the subject first
        {"delivery_ref": "日本.1", "text": "\udc80"},  # body encoding (build time) before the Message-ID (writing)
        {"delivery_ref": "日本.1", "to": "a@"},
        {"text": "x\udc80", "html": "xyz \udc81"},  # the text part is encoded first
    ],
)
def test_of_several_faults_the_one_build_message_meets_first_is_raised(changes: dict[str, Any]) -> None:
    assert assert_same(**changes) is None


# Generated cases --------------------------------------------------------------------------------
ATEXT = "abcxyzABC0189!#$%&'*+/=?^_`{|}~.-"
locals_ = st.text(alphabet=ATEXT, min_size=1, max_size=70)
domains = st.text(alphabet="abcz09.-", min_size=1, max_size=30)
addresses = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains),
    st.builds(
        lambda local, carrier: f"{local}@{carrier}",
        locals_,
        st.sampled_from(["docomo.ne.jp", "ezweb.ne.jp", "au.com", "softbank.ne.jp", "i.softbank.jp"]),
    ),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
)
pieces = st.sampled_from(["\r", "\n", "\r\n", "a", "あ", " ", "\t", "\u2028", "x" * 30, "𠮷" * 19])
bodies = st.one_of(
    st.lists(pieces, max_size=200).map("".join),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))),
)
subjects = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))),
    st.text(alphabet=' abcXYZ=?<>@()",;:日本語件名'),
    st.just(SUBJECT),
)
offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60 - 59, 23 * 60 + 59))
instants = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.one_of(offsets, st.just(UTC), st.none()),
)
refs = st.one_of(
    st.builds(lambda d, a: f"{d}.{a}", st.integers(0, 10**12), st.integers(0, 99)),
    st.text(alphabet="abc019:.-_?= ", max_size=60),
)
GENERATED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@GENERATED
@given(subject=subjects, text=bodies, html=st.one_of(st.none(), bodies), seed=st.integers(0, 2**32))
def test_generated_subjects_and_bodies(subject: str, text: str, html: str | None, seed: int) -> None:
    assert_same(seed=seed, subject=subject, text=text, html=html)


@GENERATED
@given(to=addresses, sender_name=subjects, seed=st.integers(0, 2**32))
def test_generated_addresses_and_names(to: str, sender_name: str, seed: int) -> None:
    assert_same(seed=seed, to=to, sender_name=sender_name, html=None)


@GENERATED
@given(sent_at=instants, delivery_ref=refs, seed=st.integers(0, 2**32))
def test_generated_dates_and_references(sent_at: datetime, delivery_ref: str, seed: int) -> None:
    assert_same(seed=seed, sent_at=sent_at, delivery_ref=delivery_ref, html=None)


# The outgoing e-mail and the providers ---------------------------------------------------------
def raw_message(ref: str = "7.1", html: str | None = HTML) -> bytes:
    return build_raw(Email(SUBJECT, TEXT, html), **{**_args(BASE), "delivery_ref": ref})


def test_outgoing_email_holds_bytes_or_a_message() -> None:
    raw = raw_message()
    from_bytes = OutgoingEmail("7.1", "camp", "taro..yamada.@docomo.ne.jp", raw)
    assert from_bytes.raw is raw
    assert from_bytes.message["Subject"] == SUBJECT
    assert from_bytes.message.get_content_type() == "multipart/alternative"
    assert from_bytes.message.as_bytes() == raw  # the parsed message writes the same bytes back

    message = build_message(Email(SUBJECT, TEXT, None), **_args(BASE))
    from_message = OutgoingEmail("7.1", "camp", "taro..yamada.@docomo.ne.jp", message)
    assert from_message.message is message
    assert from_message.raw == message.as_bytes()
    assert from_message.raw is from_message.raw  # serialised once


def test_outbox_writes_the_raw_bytes_as_given() -> None:
    settings_ = load_settings()
    provider = build(Channel.EMAIL, settings_)
    raw = raw_message("7.1")
    result = provider.send(OutgoingEmail("7.1", "camp", "taro..yamada.@docomo.ne.jp", raw))
    [written] = (settings_.outbox_path / "email" / "camp").glob("*.eml")
    assert written.read_bytes() == raw
    assert result.provider == "outbox"
    # And a message object still goes out as its own bytes
    message = build_message(Email(SUBJECT, TEXT, None), **{**_args(BASE), "delivery_ref": "8.1"})
    provider.send(OutgoingEmail("8.1", "camp", "a@example.jp", message))
    assert (settings_.outbox_path / "email" / "camp" / "8.1.eml").read_bytes() == message.as_bytes()


# Recipients: one plain address, nothing else (issue 11, finding 6) ------------------------------
HOSTILE_RECIPIENTS = [
    "=?utf-8?b?dmljdGltQGV2aWwuZXhhbXBsZSw=?=@example.jp",  # decodes to "victim@evil.example,"
    "=?utf-8?q?x?=@example.jp",
    "a=?@example.jp",
    "taro@example.jp\r\nBcc: x@example.jp",
    "taro@example.jp\nBcc: x@example.jp",
    "taro@example.jp, other@example.jp",
    "Taro <taro@example.jp>",
    '"quoted"@example.jp',
    "taro(comment)@example.jp",
    "taro;x@example.jp",
    "ta ro@example.jp",
    "taro\x00@example.jp",
    "taro@[192.0.2.1]",
    "taro@example.jp:25",
    "",
]


@pytest.mark.parametrize("to", HOSTILE_RECIPIENTS)
def test_a_recipient_that_is_not_one_plain_address_is_a_permanent_error_naming_no_value(to: str) -> None:
    # Given a delivery whose contact is not one plain address (e.g. RFC 2047 encoded words in the local part)
    # When its e-mail is built, by the fast builder and by the reference one
    with pytest.raises(MessageError) as raw_error:
        build_raw(Email(SUBJECT, TEXT, None), **{**_args(BASE), "to": to})
    with pytest.raises(MessageError):
        build_message(Email(SUBJECT, TEXT, None), **{**_args(BASE), "to": to})

    # Then it is our own permanent error (never retried), and the message does not quote the address
    assert isinstance(raw_error.value, PermanentError) and raw_error.value.code == "message"
    assert "example.jp" not in str(raw_error.value) and "taro" not in str(raw_error.value)


def test_the_written_to_header_must_read_back_as_the_contact_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the address rules loosened (as a future edit or another Python's parser might): a list passes them
    from dispatcher.sending import mime

    monkeypatch.setattr(mime, "_PLAIN_RECIPIENT", re.compile(r".+@.+"))
    two = "taro@example.jp,victim@evil.example"

    # When the e-mail is built
    with pytest.raises(MessageError, match="read back"):
        build_raw(Email(SUBJECT, TEXT, None), **{**_args(BASE), "to": two})

    # Then the read-back of the To: line still refuses it; a single address still passes the same path
    assert build_raw(Email(SUBJECT, TEXT, None), **{**_args(BASE), "to": "taro@example.jp"})


@GENERATED
@given(
    local=locals_.filter(lambda s: "=?" not in s),
    domain=st.sampled_from(["docomo.ne.jp", "ezweb.ne.jp", "au.com", "example.jp", "i.softbank.jp"]),
)
def test_every_accepted_recipient_reads_back_alone_with_both_parsers(local: str, domain: str) -> None:
    # Given any address of atext and dots the builders accept (legacy docomo forms included)
    to = f"{local}@{domain}"
    raw = build_raw(Email(SUBJECT, TEXT, None), **{**_args(BASE), "to": to})

    # When the To: line is read back by getaddresses and by the header registry
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    value = parsed["To"]

    # Then both see exactly that one address
    assert email.utils.getaddresses([str(value)]) == [("", to)]
    assert [f"{a.username}@{a.domain}" for a in value.addresses] == [to]
