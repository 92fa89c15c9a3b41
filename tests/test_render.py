"""The Japanese messages (SPEC §6): dispatcher.sending.render, dispatcher.sending.mime, dispatcher.core.sms."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dispatcher.core.campaign import Campaign, load_campaign
from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import load_settings
from dispatcher.core.sms import is_gsm7, length, parts, utf16_units
from dispatcher.sending.mime import DELIVERY_HEADER, build_message
from dispatcher.sending.render import Email, Renderer, jp_date, jp_short_date, jp_time, load_template_sources, yen

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "campaigns" / "regionpay-2023-app.toml"
SENDER = "regionpay_compensation_ml@giftpad.jp"
SENDER_NAME = "地域クーポン regionPAY 補償事務局"
RECEIPT_URL = "https://receive.example.jp/r/Zq7sECRETtok3n?k=a1&v=2"
SUBJECT = "【regionPAY補償】キャッシュレスポイント受取サイトのご案内（受取期限 2023年5月31日(水)）"


@pytest.fixture
def campaign() -> Campaign:
    return load_campaign(SHIPPED)


@pytest.fixture
def renderer(campaign: Campaign) -> Renderer:
    return Renderer(campaign, load_template_sources(campaign), SENDER)


def sources_with(changes: dict[str, str]) -> dict[str, str]:
    """The shipped templates with some files replaced."""
    folder = ROOT / "templates" / "compensation"
    return {**{p.name: p.read_text("utf-8") for p in folder.iterdir()}, **changes}


# templates ------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["email_subject.txt", "email_body.txt", "email_body.html", "sms.txt"])
def test_unknown_variable_raises_config_error_naming_the_template_not_the_values(
    campaign: Campaign, template: str
) -> None:
    # Given a template that uses a variable the renderer does not provide (a typo)
    sources = sources_with({template: "{{ name }} {{ receipt_url }} {{ reciept_url }}"})
    renderer = Renderer(campaign, sources, SENDER)

    # When a message is rendered
    with pytest.raises(ConfigError) as caught:
        if template == "sms.txt":
            renderer.sms({"name": "山田 太郎"}, RECEIPT_URL)
        else:
            renderer.email({"name": "山田 太郎"}, RECEIPT_URL)

    # Then the error names the template and the variable, and carries no personal value
    message = str(caught.value)
    assert template in message
    assert "reciept_url" in message
    assert "Zq7sECRETtok3n" not in message
    assert "山田" not in message


def test_unknown_attribute_of_a_known_variable_is_an_error_too(campaign: Campaign) -> None:
    sources = sources_with({"sms.txt": "{{ text.call_center_phone }} {{ receipt_url }}"})  # 'centre' misspelt
    renderer = Renderer(campaign, sources, SENDER)

    with pytest.raises(ConfigError, match=r"sms\.txt") as caught:
        renderer.sms({}, RECEIPT_URL)

    assert "call_center_phone" in str(caught.value)
    assert "Zq7sECRETtok3n" not in str(caught.value)


def test_unknown_variable_in_a_condition_is_an_error_not_false(campaign: Campaign) -> None:
    sources = sources_with({"sms.txt": "{% if vip %}VIP{% endif %}{{ receipt_url }}"})

    with pytest.raises(ConfigError, match="vip"):
        Renderer(campaign, sources, SENDER).sms({}, RECEIPT_URL)


def test_template_syntax_error_is_a_config_error_with_template_and_line(campaign: Campaign) -> None:
    sources = sources_with({"email_body.txt": "line one\n{{ name }\n"})

    with pytest.raises(ConfigError, match=r"template email_body\.txt, line 2"):
        Renderer(campaign, sources, SENDER)


def test_extra_columns_reach_templates_as_extra(campaign: Campaign) -> None:
    sources = sources_with({"sms.txt": "{{ extra.shop }} {{ receipt_url }}"})

    text = Renderer(campaign, sources, SENDER).sms({"extra": {"shop": "松江店"}}, RECEIPT_URL)

    assert text == f"松江店 {RECEIPT_URL}"


def test_templates_are_found_beside_the_campaign_file(tmp_path: Path) -> None:
    # Given a campaign of our own at <root>/config/campaigns/x.toml with <root>/templates/compensation
    shutil.copytree(ROOT / "templates" / "compensation", tmp_path / "templates" / "compensation")
    (tmp_path / "templates" / "compensation" / "sms.txt").write_text("自前 {{ receipt_url }}", "utf-8")
    path = tmp_path / "config" / "campaigns" / "x.toml"
    path.parent.mkdir(parents=True)
    path.write_text(SHIPPED.read_text("utf-8"), "utf-8")

    sources = load_template_sources(load_campaign(path))

    assert sources["sms.txt"] == "自前 {{ receipt_url }}"


def test_missing_required_template_file_is_a_config_error(tmp_path: Path, campaign: Campaign) -> None:
    folder = tmp_path / "compensation"
    shutil.copytree(ROOT / "templates" / "compensation", folder)
    (folder / "sms.txt").unlink()

    with pytest.raises(ConfigError, match=r"missing sms\.txt"):
        load_template_sources(campaign, templates_dir=tmp_path)


def test_html_template_is_optional(tmp_path: Path, campaign: Campaign) -> None:
    folder = tmp_path / "compensation"
    shutil.copytree(ROOT / "templates" / "compensation", folder)
    (folder / "email_body.html").unlink()

    sources = load_template_sources(campaign, templates_dir=tmp_path)
    rendered = Renderer(campaign, sources, SENDER).email({}, RECEIPT_URL)

    assert "email_body.html" not in sources
    assert rendered.html is None
    assert RECEIPT_URL in rendered.text


def test_unknown_template_folder_is_a_config_error(
    tmp_path: Path, campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    other = dataclasses.replace(campaign, template="no-such-template", source=None)

    with pytest.raises(ConfigError, match="no-such-template"):
        load_template_sources(other)


# e-mail text ----------------------------------------------------------------------------------
def test_html_part_escapes_markup_in_a_name_and_the_text_part_keeps_it(renderer: Renderer) -> None:
    name = "<script>alert('x')</script>山田"

    rendered = renderer.email({"name": name}, RECEIPT_URL)

    assert rendered.html is not None
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;山田 様" in rendered.html
    # The & of the query string is escaped in the HTML attribute and shown verbatim in the text part
    assert 'href="https://receive.example.jp/r/Zq7sECRETtok3n?k=a1&amp;v=2"' in rendered.html
    assert rendered.text.startswith(f"{name} 様\n")
    assert RECEIPT_URL in rendered.text


def test_email_text_follows_the_notice(renderer: Renderer) -> None:
    rendered = renderer.email({"name": "山田 太郎", "amount": 12345, "category": "B"}, RECEIPT_URL)

    assert rendered.subject == SUBJECT
    text = rendered.text
    assert text.startswith("山田 太郎 様\n")
    assert f"\n{RECEIPT_URL}\n" in text  # on a line of its own: phones make it a link
    assert "受取期限：2023年5月31日(水) 23:59まで" in text
    assert "補償額：12,345円" in text
    assert "重複決済" in text  # category B wording
    assert "0120-479-249" in text
    assert SENDER in text
    assert text.endswith("しまね旅キャンペーン事務局\n")


def test_email_without_optional_fields_uses_the_generic_greeting(renderer: Renderer) -> None:
    rendered = renderer.email({}, RECEIPT_URL)

    assert rendered.text.startswith("しまね旅キャンペーンご利用者様\n")
    assert "補償額" not in rendered.text
    assert "ご利用いただけなかった地域クーポン残額" in rendered.text  # category A wording by default


def test_subject_is_one_line(campaign: Campaign) -> None:
    sources = sources_with({"email_subject.txt": "件名\n{{ campaign.name }}\r\n  続き\n"})

    subject = Renderer(campaign, sources, SENDER).email({}, RECEIPT_URL).subject

    assert subject == "件名 地域クーポン補償（アプリ利用者） 続き"


def test_sms_text(renderer: Renderer) -> None:
    text = renderer.sms({"name": "山田"}, RECEIPT_URL)

    assert text == f"【regionPAY補償】ポイント受取URL {RECEIPT_URL} 期限5/31 問合せ0120-479-249"
    assert "\n" not in text


def test_date_filters_show_jst() -> None:
    # 2023-05-31 15:30 UTC is already 1 June in Japan
    instant = datetime(2023, 5, 31, 15, 30, tzinfo=UTC)

    assert jp_date(instant) == "2023年6月1日(木)"
    assert jp_short_date(instant) == "6/1"
    assert jp_time(instant) == "00:30"
    assert jp_date(datetime(2023, 2, 24, 12, tzinfo=UTC)) == "2023年2月24日(金)"
    assert yen(1234567) == "1,234,567円"


# MIME -----------------------------------------------------------------------------------------
def build(renderer: Renderer, to: str = "taro.yamada@docomo.ne.jp", **fields: object) -> bytes:
    rendered = renderer.email({"name": "山田 太郎", "amount": 3000, **fields}, RECEIPT_URL)
    settings = load_settings()  # as the worker does: the sender comes from the deployment settings
    message = build_message(
        rendered,
        to=to,
        sender=settings.email_sender,
        sender_name=settings.email_sender_name,
        delivery_ref="regionpay-2023-app:42",
        sent_at=datetime(2023, 4, 5, 1, 0, tzinfo=UTC),
    )
    return message.as_bytes()


def test_built_email_parses_back_to_the_japanese_message(renderer: Renderer) -> None:
    # Given the e-mail as it leaves us
    raw = build(renderer)

    # When a mail client parses it
    parsed = email.message_from_bytes(raw, policy=email.policy.default)

    # Then subject and display name are the Japanese originals, From is the configured sender
    assert parsed["Subject"] == SUBJECT
    sender = parsed["From"].addresses[0]
    assert sender.display_name == SENDER_NAME
    assert sender.addr_spec == SENDER
    assert parsed["To"].addresses[0].addr_spec == "taro.yamada@docomo.ne.jp"
    assert parsed[DELIVERY_HEADER] == "regionpay-2023-app:42"
    assert parsed["Message-ID"].endswith("@giftpad.jp>")
    # And a plain-text part (feature phones) carries the person's URL and the deadline
    plain = parsed.get_body(preferencelist=("plain",))
    assert plain is not None
    assert plain.get_content_charset() == "utf-8"
    body = plain.get_content()
    assert RECEIPT_URL in body
    assert "2023年5月31日(水)" in body
    assert "山田 太郎 様" in body
    html = parsed.get_body(preferencelist=("html",))
    assert html is not None
    assert "山田 太郎 様" in html.get_content()
    assert parsed.get_content_type() == "multipart/alternative"


def test_headers_are_7bit_and_rfc2047_encoded(renderer: Renderer) -> None:
    raw = build(renderer)
    head = raw.split(b"\r\n\r\n", 1)[0]

    head.decode("ascii")  # raises if any header is not 7-bit
    assert b"=?utf-8?" in head
    # The receipt URL is a bearer credential: it is in the body only, never in a header
    assert b"Zq7sECRETtok3n" not in head
    assert b"From: =?utf-8?" in head


def test_every_line_is_at_most_998_octets(renderer: Renderer) -> None:
    # Given a name and an inquiry text long enough to break a naive encoder, and the legacy address form
    raw = build(renderer, to="taro..yamada.@docomo.ne.jp", name="長" * 100)
    sources = sources_with(
        {"email_body.txt": "{{ receipt_url }}" + "あ" * 3000, "email_body.html": "<p>" + "い" * 3000 + "</p>"}
    )
    long_body = Renderer(load_campaign(SHIPPED), sources, SENDER).email({}, RECEIPT_URL)
    raw_long = build_message(
        long_body,
        to="a@example.jp",
        sender=SENDER,
        sender_name=SENDER_NAME * 10,
        delivery_ref="c:1",
        sent_at=datetime(2023, 4, 5, tzinfo=UTC),
    ).as_bytes()

    for message in (raw, raw_long):
        lines = message.split(b"\r\n")
        assert max(len(line) for line in lines) <= 998
        assert all(b"\n" not in line and b"\r" not in line for line in lines)
    parsed = email.message_from_bytes(raw_long, policy=email.policy.default)
    assert parsed.get_body(preferencelist=("plain",)).get_content().count("あ") == 3000  # type: ignore[union-attr]


def test_legacy_carrier_address_survives_the_to_header(renderer: Renderer) -> None:
    parsed = email.message_from_bytes(build(renderer, to="taro..yamada.@docomo.ne.jp"), policy=email.policy.default)

    assert parsed["To"].addresses[0].addr_spec == "taro..yamada.@docomo.ne.jp"


def test_text_only_email_is_a_single_plain_part() -> None:
    rendered = Email(subject="件名", text="本文 https://receive.example.jp/r/x\n", html=None)

    message = build_message(
        rendered,
        to="a@example.jp",
        sender=SENDER,
        sender_name=SENDER_NAME,
        delivery_ref="c:1",
        sent_at=datetime(2023, 4, 5, tzinfo=UTC),
    )
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)

    assert parsed.get_content_type() == "text/plain"
    # Text parts travel in canonical form: CRLF line ends
    assert parsed.get_content() == "本文 https://receive.example.jp/r/x\r\n"


def test_from_is_the_configured_sender_by_default() -> None:
    settings = load_settings()

    assert settings.email_sender == SENDER
    assert (settings.email_sender_name, settings.sms_sender) == (SENDER_NAME, "03-5244-9370")


def test_from_follows_a_configured_sender(campaign: Campaign, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a deployment that sends from another announced address and name
    monkeypatch.setenv("DISPATCHER_EMAIL_SENDER", "notice@mail.example.jp")
    monkeypatch.setenv("DISPATCHER_EMAIL_SENDER_NAME", "補償事務局（テスト）")
    renderer = Renderer(campaign, load_template_sources(campaign), load_settings().email_sender)

    # When an e-mail is built
    parsed = email.message_from_bytes(build(renderer), policy=email.policy.default)

    # Then From, the Message-ID domain and the "send-only address" line in the text all follow it
    sender = parsed["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("補償事務局（テスト）", "notice@mail.example.jp")
    assert parsed["Message-ID"].endswith("@mail.example.jp>")
    plain = parsed.get_body(preferencelist=("plain",))
    assert plain is not None
    assert "送信専用アドレス（notice@mail.example.jp）" in plain.get_content()


# SMS arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "units", "expected_parts"),
    [
        ("", 0, 1),
        ("あ", 1, 1),
        ("あ" * 70, 70, 1),
        ("あ" * 71, 71, 2),
        ("あ" * 134, 134, 2),
        ("あ" * 135, 135, 3),
        ("あ" * 201, 201, 3),
        ("あ" * 202, 202, 4),
        ("a" * 69 + "あ", 70, 1),  # one Japanese character makes the whole message UCS-2
        ("a" * 70 + "あ", 71, 2),
    ],
)
def test_ucs2_parts_are_70_single_and_67_when_split(text: str, units: int, expected_parts: int) -> None:
    assert not is_gsm7(text) or text == ""
    assert length(text) == units
    assert parts(text) == expected_parts


@pytest.mark.parametrize(
    ("text", "units", "expected_parts"),
    [
        ("a" * 160, 160, 1),
        ("a" * 161, 161, 2),
        ("a" * 306, 306, 2),
        ("a" * 307, 307, 3),
        ("Hello @ 10:00 ¥100", 18, 1),
        ("€" * 80, 160, 1),  # extension characters take an escape septet: 2 each
        ("€" * 81, 162, 2),
        ("[x]" + "a" * 155, 160, 1),
        ("[x]" + "a" * 156, 161, 2),
    ],
)
def test_gsm7_parts_are_160_single_and_153_when_split(text: str, units: int, expected_parts: int) -> None:
    assert is_gsm7(text)
    assert length(text) == units
    assert parts(text) == expected_parts


def test_emoji_counts_two_utf16_units() -> None:
    assert utf16_units("😀") == 2
    assert length("😀") == 2
    assert is_gsm7("a😀") is False
    assert length("あ" * 68 + "😀") == 70
    assert parts("あ" * 68 + "😀") == 1
    assert parts("あ" * 69 + "😀") == 2
    assert length("あ" * 69 + "😀") == 71


def test_parts_formula_matches_67_per_part_for_long_messages() -> None:
    for n in range(71, 700, 7):
        assert parts("あ" * n) == math.ceil(n / 67)


def test_shipped_sms_with_a_typical_url_is_two_parts(renderer: Renderer) -> None:
    text = renderer.sms({}, "https://receive.example.jp/r/ABCDEFGH")

    assert length(text) == 83
    assert parts(text) == 2
