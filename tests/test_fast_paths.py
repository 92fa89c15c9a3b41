"""The shortcuts taken for throughput give exactly what the general code gives (bench/ and docs/benchmarks.md).

Each shortcut is checked against the general path it replaces: the reference implementations below are
the code as it was before the shortcut, kept here verbatim.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
import uuid
from urllib.parse import urlsplit

import dramatiq
import phonenumbers
import pytest
import redis
from phonenumbers import PhoneNumberType

from dispatcher import broker
from dispatcher.core import clock, sms
from dispatcher.core.campaign import load_campaign
from dispatcher.core.privacy import mask_url
from dispatcher.core.states import Status
from dispatcher.intake.contacts import (
    FieldError,
    check_amount,
    check_category,
    check_phone,
    check_receipt_url,
    check_user_id,
)
from dispatcher.intake.recipients import MAX_FIELD, validate_row
from dispatcher.ledger import Ledger
from dispatcher.sending.render import SMS_TEXT, Renderer, load_template_sources

from .helpers import write_campaign

HOSTS = frozenset({"receive.example.jp"})


# Reference implementations (the general path) -----------------------------------------------------
def reference_phone(raw: str) -> str:
    value = unicodedata.normalize("NFKC", raw).strip()
    value = value.replace("ー", "-").replace("−", "-")
    try:
        number = phonenumbers.parse(value, "JP")
    except phonenumbers.NumberParseException:
        raise FieldError("phone", "is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise FieldError("phone", "is not a valid phone number")
    if number.country_code != 81:
        raise FieldError("phone", "is not a Japanese number (only Japanese mobiles are supported)")
    national = str(number.national_number)
    kind = phonenumbers.number_type(number)
    if kind != PhoneNumberType.MOBILE or not national.startswith(("70", "80", "90")):
        label = {
            PhoneNumberType.FIXED_LINE: "a landline",
            PhoneNumberType.TOLL_FREE: "a toll-free number",
            PhoneNumberType.VOIP: "an IP phone (050)",
            PhoneNumberType.PAGER: "a pager number (020)",
        }.get(kind, "not a 070/080/090 mobile")
        raise FieldError("phone", f"is {label}, cannot receive SMS")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def reference_url(raw: str, allowed_hosts: frozenset[str]) -> str:
    value = raw.strip()
    if not value:
        raise FieldError("receipt_url", "is empty")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value) or not value.isascii():
        raise FieldError("receipt_url", "contains spaces, control or non-ASCII characters")
    if len(value) > 2048:
        raise FieldError("receipt_url", "is longer than 2048 characters")
    try:
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018
    except ValueError:
        raise FieldError("receipt_url", "is not a valid URL") from None
    if parts.scheme.lower() != "https":
        raise FieldError("receipt_url", f"must use https ({mask_url(value)})")
    if parts.username or parts.password:
        raise FieldError("receipt_url", "must not carry a user name or password")
    if host not in allowed_hosts:
        raise FieldError("receipt_url", f"host '{host}' is not in the campaign's receipt_hosts")
    if parts.path in ("", "/") and not parts.query:
        raise FieldError("receipt_url", "has no personal path or query (same URL for everyone?)")
    return value


def reference_user_id(raw: str) -> str:
    value = unicodedata.normalize("NFKC", raw).strip()
    if not value:
        raise FieldError("user_id", "is empty")
    if len(value) > 128:
        raise FieldError("user_id", "is longer than 128 characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise FieldError("user_id", "contains control characters")
    return value


def reference_amount(raw: str) -> int:
    value = unicodedata.normalize("NFKC", raw).strip().replace(",", "").removesuffix("円").strip()
    if not re.fullmatch(r"\d{1,9}", value):
        raise FieldError("amount", "must be a whole, non-negative number of yen")
    return int(value)


def reference_category(raw: str) -> str:
    value = unicodedata.normalize("NFKC", raw).strip().upper()
    if value not in ("A", "B"):
        raise FieldError("category", "must be A or B")
    return value


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except FieldError as exc:
        return "error", str(exc)


# Contacts ---------------------------------------------------------------------------------------------
def _phone_writings(rng: random.Random) -> list[str]:
    full = str.maketrans("0123456789-", "０１２３４５６７８９－")
    out = []
    for _ in range(4000):
        a = f"0{rng.choice('0123456789')}0"
        b = f"{rng.randrange(10000):04d}"
        c = f"{rng.randrange(10000):04d}"
        sep = rng.choice(["-", "", " ", "ー", "−", "－", "  ", "--", "."])
        sep2 = rng.choice(["-", "", " ", sep])
        shape = rng.randrange(6)
        if shape == 0:
            text = f"{a}{sep}{b}{sep2}{c}"
        elif shape == 1:
            text = f"+81{sep}{a[1:]}{sep}{b}{sep2}{c}"
        elif shape == 2:
            text = f"+81 {a}{sep}{b}{sep2}{c}"  # a national prefix kept after the country code
        elif shape == 3:
            text = f"{a}{b}{c}"[: rng.randrange(8, 12)]  # too short
        elif shape == 4:
            text = f"81{sep}{a[1:]}{sep}{b}{c}"
        else:
            text = f" {a}{sep}{b}{sep2}{c}{rng.choice(['', '1', ' '])}"
        if rng.random() < 0.3:
            text = text.translate(full)
        out.append(text)
    return out


def test_phone_shortcut_gives_what_the_full_parse_gives() -> None:
    rng = random.Random(7)
    cases = [
        *_phone_writings(rng),
        "090-1234-5678",
        "09012345678",
        "+81 90 1234 5678",
        "+819012345678",
        "+81-90-1234-5678",
        "０９０-１２３４-５６７８",
        "090ー1234ー5678",
        "090−1234−5678",
        "070-0123-4567",
        "080-0000-0000",
        "0900-123-4567",
        "050-1234-5678",
        "020-1234-5678",
        "03-5244-9370",
        "0120-479-249",
        "+1 650 253 0000",
    ]
    for raw in cases:
        assert outcome(check_phone, raw) == outcome(reference_phone, raw), raw


def test_url_shortcut_gives_what_urlsplit_gives() -> None:
    cases = [
        "https://receive.example.jp/r/abc",
        "HTTPS://Receive.Example.JP/r/abc",
        "https://receive.example.jp",
        "https://receive.example.jp/",
        "https://receive.example.jp/?",
        "https://receive.example.jp/?t=1",
        "https://receive.example.jp?t=1",
        "https://receive.example.jp#x",
        "https://receive.example.jp/#?t=1",
        "https://receive.example.jp/#frag?x",
        "https://receive.example.jp/r?a#b",
        "https://receive.example.jp:443/r",
        "https://user@receive.example.jp/r",
        "https://user:pw@receive.example.jp/r",
        "https://[::1]/r",
        "https://receive.example.com/r/x",
        "https://receive.example.jp./r/x",
        "http://receive.example.jp/r/x",
        "https://receive.example.jp/r/%E3%81%82",
        "https://receive.example.jp/r/a\\b",
        "https://-/r",
        "https://receive.example.jp/r/x y",
        "https://receive.example.jp/r/\x7f",
        " https://receive.example.jp/r/x ",
        "https:/receive.example.jp/r",
        "https:receive.example.jp/r",
        "https://receive.example.jp/r/あ",
        "https://receive.example.jp/" + "a" * 2100,
        "",
        "ftp://receive.example.jp/r",
        "https://receive.example.jp//r",
    ]
    for raw in cases:
        assert outcome(check_receipt_url, raw, HOSTS) == outcome(reference_url, raw, HOSTS), raw


def test_user_id_shortcut_gives_what_the_character_scan_gives() -> None:
    for raw in ["U1", " U1 ", "U\x00", "U\x7f", "U\u200b", "Ｕ１", "u\t1", "", "x" * 129, "利用者\u00ad1", "a\x1fb"]:
        assert outcome(check_user_id, raw) == outcome(reference_user_id, raw), repr(raw)


def test_amount_and_category_shortcuts_give_what_the_rules_give() -> None:
    for raw in [
        "1500",
        "0",
        "000000001",
        "123456789",
        "1234567890",
        "1,500",
        "1500円",
        " 1500 ",
        "１５００",
        "²",
        "12.5",
        "-3",
        "",
        "٣",
        "0x10",
        "1_000",
    ]:
        assert outcome(check_amount, raw) == outcome(reference_amount, raw), raw
    for raw in ["A", "B", "a", " b ", "Ａ", "C", "", "AB"]:
        assert outcome(check_category, raw) == outcome(reference_category, raw), raw


def test_undecodable_and_overlong_fields_are_still_named(tmp_path) -> None:
    campaign = load_campaign(write_campaign(tmp_path))
    base = {"user_id": "U1", "email": "a@example.jp", "phone": "", "receipt_url": "https://receive.example.jp/r/x"}
    bad = b"\xff".decode("utf-8", "surrogateescape")
    for values, field in [
        ({**base, "phone": bad}, "phone"),
        ({**base, "name": "x" * (MAX_FIELD + 1)}, "name"),
        ({**base, "email": "a" * (MAX_FIELD // 2), "phone": "1" * (MAX_FIELD // 2 + 10)}, None),
    ]:
        if field is None:
            with pytest.raises(FieldError) as caught:
                validate_row(2, values, campaign)
            assert caught.value.field in ("email", "phone")  # long, but each field is within the limit
        else:
            with pytest.raises(FieldError) as caught:
                validate_row(2, values, campaign)
            assert caught.value.field == field


# SMS text --------------------------------------------------------------------------------------------
def _renderer(tmp_path, sms_template: str | None = None, name: str = SMS_TEXT) -> Renderer:
    campaign = load_campaign(write_campaign(tmp_path))
    sources = load_template_sources(campaign)
    if sms_template is not None:
        sources[name] = sms_template
    return Renderer(campaign, sources, "sender@example.jp")


def _rendered_by_jinja(renderer: Renderer, fields: dict, url: str) -> str:
    return renderer._render(renderer._sms, renderer.context(fields, url)).strip()


URLS = [
    "https://receive.example.jp/r/abc",
    "https://receive.example.jp/r/a?b=1&c=<2>\"'",
    "https://receive.example.jp/{{ x }}/%s/{}",
    "https://receive.example.jp/" + "z" * 300,
]


def test_sms_of_the_shipped_template_is_joined_not_rendered_and_is_the_same(tmp_path) -> None:
    renderer = _renderer(tmp_path)
    assert renderer._sms_frame is not None
    for url in URLS:
        assert renderer.sms({"name": "佐藤"}, url) == _rendered_by_jinja(renderer, {"name": "佐藤"}, url)


@pytest.mark.parametrize(
    "template",
    [
        "{{ name }} {{ receipt_url }}",  # a per-recipient value
        "{{ receipt_url | upper }}",  # a filter on the URL
        "{% if receipt_url|length > 40 %}long{% endif %}{{ receipt_url }}",
        "{% set u = receipt_url %}{{ u }}",
        "{% macro m() %}{{ receipt_url }}{% endmacro %}{{ m() | upper }}",
        "{{ receipt_url[:20] }}",
        "{{ [1, 2] | random }} {{ receipt_url }}",
        "{{ extra.code }} {{ receipt_url }}",
        "{% for c in receipt_url %}{{ c }}{% endfor %}",
        "{{ text.missing }} {{ receipt_url }}",
    ],
)
def test_templates_that_depend_on_more_than_the_url_are_rendered_every_time(tmp_path, template) -> None:
    renderer = _renderer(tmp_path, template)
    assert renderer._sms_frame is None
    for url in URLS:
        fields = {"name": "佐藤", "extra": {"code": "X1"}}
        try:
            expected = _rendered_by_jinja(renderer, fields, url)
        except Exception as exc:  # the same error either way
            with pytest.raises(type(exc)):
                renderer.sms(fields, url)
            continue
        if "random" not in template:
            assert renderer.sms(fields, url) == expected


def test_url_printed_twice_or_in_a_campaign_loop_is_joined_exactly(tmp_path) -> None:
    template = "{{ receipt_url }} / {% for k in text %}{{ receipt_url }}{% endfor %} {{ deadline | jp_date }}"
    renderer = _renderer(tmp_path, template)
    assert renderer._sms_frame is not None
    for url in URLS:
        assert renderer.sms({}, url) == _rendered_by_jinja(renderer, {}, url)


@pytest.mark.parametrize(
    "text", ["hello", "こんにちは", "a" * 160, "a" * 161, "あ" * 70, "あ" * 71, "{}" * 81, "😀" * 40, "", "€" * 80]
)
def test_sms_measure_is_length_and_parts(text: str) -> None:
    n = sms.utf16_units(text) if not sms.is_gsm7(text) else sum(2 if ch in "^{}\\[~]|€\f" else 1 for ch in text)
    assert sms.measure(text) == (sms.length(text), sms.parts(text))
    assert sms.length(text) == n


# Broker -----------------------------------------------------------------------------------------------
def test_uuid_strings_are_version_4() -> None:
    values = broker._uuid4_strings(2000)
    assert len(set(values)) == 2000
    for value in values:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def _queued_messages(client: redis.Redis, queue: str) -> list[dramatiq.Message]:
    ids = client.lrange(f"dispatcher:{queue}", 0, -1)
    bodies = client.hmget(f"dispatcher:{queue}.msgs", ids)
    messages = [dramatiq.Message.decode(body) for body in bodies]
    assert [m.options["redis_message_id"] for m in messages] == [i.decode() for i in ids]
    return messages


def test_bulk_enqueue_writes_what_dramatiq_writes_and_a_worker_runs_it(redis_url: str) -> None:
    from dispatcher.sending.actors import send_delivery

    rb = broker.install(redis_url)
    client = redis.Redis.from_url(redis_url)
    broker.enqueue_ids(rb, send_delivery, [5, 6, 7])
    send_delivery.send(8)  # Dramatiq's own path, for comparison
    messages = _queued_messages(client, broker.QUEUE)
    fast, own = messages[:3], messages[3]
    for message, expected in zip(fast, [5, 6, 7], strict=True):
        assert message.args == (expected,) and message.kwargs == {}
        assert set(message.asdict()) == set(own.asdict())
        assert message.queue_name == own.queue_name and message.actor_name == own.actor_name
        assert message.options.keys() == own.options.keys()
    assert len({m.message_id for m in messages}) == 4

    # And a Dramatiq worker takes, runs and acknowledges them like its own.
    seen: list[int] = []

    @dramatiq.actor(queue_name="fast-path-test", broker=rb)
    def record(value: int) -> None:
        seen.append(value)

    broker.enqueue_ids(rb, record, list(range(1, 51)))
    worker = dramatiq.Worker(rb, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        rb.join("fast-path-test", timeout=10_000)
    finally:
        worker.stop()
    assert sorted(seen) == list(range(1, 51))
    assert client.hlen("dispatcher:fast-path-test.msgs") == 0


def test_bulk_enqueue_takes_dramatiqs_path_when_a_middleware_hooks_enqueueing(redis_url: str) -> None:
    from dispatcher.sending.actors import send_delivery

    rb = broker.install(redis_url)
    hooked: list[str] = []

    class Hook(dramatiq.Middleware):
        def before_enqueue(self, broker, message, delay):
            hooked.append(message.message_id)

    rb.add_middleware(Hook())
    broker.enqueue_ids(rb, send_delivery, [1, 2])
    assert len(hooked) == 2
    assert [m.args for m in _queued_messages(redis.Redis.from_url(redis_url), broker.QUEUE)] == [(1,), (2,)]


# Ledger ------------------------------------------------------------------------------------------------
def _row(i: int, **extra: object) -> dict:
    return {
        "user_id": f"U{i}",
        "row_no": i + 1,
        "channel": "email",
        "contact": f"u{i}@example.jp",
        "email": f"u{i}@example.jp",
        "phone": None,
        "flags": "",
        "receipt_url": f"https://receive.example.jp/r/{i}",
        "fields": {"name": '名前\\\t"', "amount": i, "extra": {"k": "v"}},
        "sms_parts": None,
        **extra,
    }


@pytest.fixture
def ledger(ledger_url: str, tmp_path) -> Ledger:
    ledger = Ledger(ledger_url)
    campaign = load_campaign(write_campaign(tmp_path))
    ledger.save_campaign(campaign, load_template_sources(campaign))
    yield ledger
    ledger.dispose()


def test_bulk_insert_keeps_the_first_of_each_user_and_the_values(ledger: Ledger) -> None:
    rows = [_row(1), _row(2), {**_row(1), "contact": "other@example.jp"}, _row(3, flags="legacy-local-part")]
    ids = ledger.add_deliveries("test-campaign", rows)
    assert len(ids) == 3 and ids == sorted(ids)
    got = {d.user_id: d for d in (ledger.get(i) for i in ids)}
    assert got["U1"].contact == "u1@example.jp"
    assert got["U2"].fields == {"name": '名前\\\t"', "amount": 2, "extra": {"k": "v"}}
    assert got["U3"].flags == "legacy-local-part"
    assert [h["to_status"] for h in ledger.history(ids[0])] == ["queued"]
    assert ledger.counts("test-campaign") == {("email", "queued"): 3}
    assert ledger.add_deliveries("test-campaign", rows) == []


def test_bulk_insert_stores_what_a_row_by_row_insert_stores(ledger: Ledger, monkeypatch) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import text

    # A whole second: SQLite keeps timestamps as text, and their format must not depend on the path taken.
    monkeypatch.setattr(clock, "now", lambda: datetime(2023, 4, 5, 1, 0, 0, tzinfo=UTC))
    [bulk] = ledger.add_deliveries("test-campaign", [_row(1)])
    with ledger.write() as conn:
        [(generic, _)] = ledger._add_rows_generic(conn, "test-campaign", [_row(2)], clock.now(), "enqueue")
    columns = "created_at, updated_at, dispatched_at, fields, flags, phone, sms_parts, status, attempts"
    with ledger.read() as conn:
        a, b = (
            conn.execute(text(f"SELECT {columns} FROM deliveries WHERE id = :i"), {"i": i}).one()
            for i in (bulk, generic)
        )
        ta, tb = (
            conn.execute(text("SELECT at, actor, attempt FROM transitions WHERE delivery_id = :i"), {"i": i}).one()
            for i in (bulk, generic)
        )
    assert a[:3] == b[:3] and tuple(ta) == tuple(tb)
    assert a[4:] == b[4:]
    assert ledger.get(bulk).fields == _row(1)["fields"] and ledger.get(generic).fields == _row(2)["fields"]


def test_a_move_from_the_callers_copy_returns_the_row_as_stored(ledger: Ledger) -> None:
    # PostgreSQL returns only the attempt count then and rebuilds the rest from the copy: it must match.
    [d] = ledger.add_deliveries("test-campaign", [_row(1)])
    claimed = ledger.claim(d, current=ledger.get(d))
    assert claimed == ledger.get(d) and claimed.status is Status.SENDING and claimed.attempts == 1
    now = clock.now()
    sent = ledger.move(
        d,
        Status.SENT,
        actor="worker",
        current=claimed,
        now=now,
        values={
            "provider": "outbox",
            "provider_message_id": "m-1",
            "reason": None,
            "last_event_at": now,
            "first_sent_at": now,
            "sms_parts": 2,
        },
    )
    assert sent == ledger.get(d) and sent.provider_message_id == "m-1" and sent.first_sent_at == now
    back = ledger.move(d, Status.DELIVERED, actor="feedback", current=sent, values={"not_before": now})
    assert back == ledger.get(d) and back.not_before == now
    assert ledger.claim(d, current=back) is None


def test_a_move_from_an_old_copy_rereads_and_decides_as_before(ledger: Ledger) -> None:
    [d] = ledger.add_deliveries("test-campaign", [_row(1)])
    queued = ledger.get(d)
    first = ledger.claim(d, current=queued)
    assert first is not None and first.attempts == 1
    # Another worker's copy of the queued delivery: its claim must not take it again.
    assert ledger.claim(d, current=queued) is None
    # Sent back to retrying, then claimed again: the copy from the first claim is stale (same state, other
    # attempt); recording "sent" from it re-reads the delivery and records against the current attempt.
    ledger.move(d, Status.RETRYING, actor="worker", expect=[Status.SENDING], current=first)
    second = ledger.claim(d)
    assert second is not None and second.attempts == 2
    moved = ledger.move(
        d, Status.SENT, actor="worker", values={"provider_message_id": "m-2", "provider": "outbox"}, current=first
    )
    assert moved is not None and moved.status is Status.SENT and moved.provider_message_id == "m-2"
    assert [(h["from_status"], h["to_status"], h["attempt"]) for h in ledger.history(d)] == [
        (None, "queued", 0),
        ("queued", "sending", 1),
        ("sending", "retrying", 1),
        ("retrying", "sending", 2),
        ("sending", "sent", 2),
    ]
    assert ledger.delivery_for_message("m-2", provider="outbox", channel="email") == (d, 2)
    assert ledger.counts("test-campaign") == {("email", "sent"): 1}
    assert ledger.count_rows("test-campaign") == {("email", "sent"): 1}


def test_the_send_read_has_the_campaign_state_and_the_suppression(ledger: Ledger) -> None:
    from dispatcher.core.states import Channel

    [d, e] = ledger.add_deliveries("test-campaign", [_row(1), _row(2)])
    ledger.suppress("u2@example.jp", Channel.EMAIL, "hard bounce", "test")
    delivery, state, version, suppressed = ledger.for_send_many([d])[d]
    assert delivery == ledger.get(d) and state == "active" and version is not None and suppressed is None
    assert ledger.for_send_many([e, d])[e][3] == "hard bounce"
    ledger.set_campaign_state("test-campaign", "paused", "test")
    again = ledger.for_send_many([d, 10**9, d])
    assert list(again) == [d] and again[d][1] == "paused" and again[d][2] > version
    assert ledger.for_send_many([]) == {}
    with ledger.pinned():
        assert ledger.get(d) == delivery
        assert ledger.claim(d) is not None
    assert ledger.events_waiting_for(["nothing"]) == set()


def test_json_of_fields_is_what_json_dumps_writes() -> None:
    from dispatcher.ledger.store import _json_dumps

    for value in [
        {},
        {"name": '佐藤"\\ 太郎\n', "amount": 1500, "category": "A"},
        {"a": True},
        {"x": {"y": 1}},
        {"n": None},
        {"f": 1.5},
        {1: 2},
        {"big": 10**30, "neg": -3},
        ["list"],
    ]:
        assert _json_dumps(value) == json.dumps(value)
