"""Templates run in Jinja2's sandbox and are never looked for in the working directory (issue 11, finding 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dispatcher import render
from dispatcher.campaign import Campaign, load_campaign
from dispatcher.errors import ConfigError
from dispatcher.render import Renderer

from .helpers import person_rows, write_campaign, write_csv

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "campaigns" / "regionpay-2023-app.toml"
SENDER = "regionpay_compensation_ml@giftpad.jp"
RECEIPT_URL = "https://receive.example.jp/r/Zq7sECRETtok3n?k=a1"


def shipped_sources(**changes: str) -> dict[str, str]:
    folder = ROOT / "templates" / "compensation"
    return {**{p.name: p.read_text("utf-8") for p in folder.iterdir()}, **changes}


def escapes(marker: Path) -> list[str]:
    """Known ways out of a plain Jinja2 environment, each of which would create ``marker`` if it ran."""
    cmd = f"touch {marker}"
    return [
        f"{{{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__['os'].popen('{cmd}').read() }}}}",
        f"{{{{ lipsum.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ self.__init__.__globals__.__builtins__.open('{marker}', 'w').write('x') }}}}",
        f"{{{{ namespace.__init__.__globals__.__builtins__['open']('{marker}', 'w').write('x') }}}}",
        f"{{{{ (cycler|attr('__init__')|attr('__globals__')).os.popen('{cmd}').read() }}}}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
        f"{{{{ c(['touch', '{marker}']).wait() }}}}{{% endif %}}{{% endfor %}}",
        f"{{{{ range.__init__ }}}}{{{{ cycler.__init__.__globals__.__builtins__.exec(\"import os; os.system('{cmd}')\") }}}}",
    ]


@pytest.fixture
def campaign() -> Campaign:
    return load_campaign(SHIPPED)


@pytest.mark.parametrize("template", ["email_subject.txt", "email_body.txt", "email_body.html", "sms.txt"])
@pytest.mark.parametrize("attack", range(8))
def test_a_template_reaching_for_internals_is_refused_when_compiled(
    campaign: Campaign, tmp_path: Path, template: str, attack: int
) -> None:
    # Given a template that would run a shell command or write a file from a plain Jinja2 environment
    marker = tmp_path / "pwned"
    sources = shipped_sources(**{template: escapes(marker)[attack] + " {{ receipt_url }}"})

    # When the campaign's renderer is built (what enqueue, check and every worker do first)
    with pytest.raises(ConfigError) as caught:
        Renderer(campaign, sources, SENDER)

    # Then it is refused with an error naming the template file and the sandbox, and nothing ran
    assert f"template {template}, line 1: refused by the sandbox" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("attack", range(8))
def test_the_sandbox_itself_stops_the_escape_when_rendering(
    campaign: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: int
) -> None:
    # Given the compile-time refusal out of the way (a construct it does not know), so only the sandbox is left
    monkeypatch.setattr(render, "_escape_attempt", lambda tree: None)
    marker = tmp_path / "pwned"
    renderer = Renderer(campaign, shipped_sources(**{"email_body.txt": escapes(marker)[attack]}), SENDER)

    # When the e-mail is rendered
    with pytest.raises(ConfigError, match=r"template email_body\.txt: ") as caught:
        renderer.email({"name": "山田"}, RECEIPT_URL)

    # Then it is refused (unsafe attributes raise, or read as undefined through |attr), nothing ran, and the
    # error carries no recipient value
    assert not marker.exists()
    assert "Zq7sECRET" not in str(caught.value) and "山田" not in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{ text.clear() }}",
        "{{ extra.update({'a': 1}) }}",
        "{{ campaign.pop('id') }}",
        "{% set items = [1] %}{{ items.append(2) }}",
        "{{ text.setdefault('call_centre_phone', '0000') }}",
    ],
)
def test_templates_cannot_change_the_values_they_are_given(campaign: Campaign, source: str) -> None:
    # Given a template that tries to mutate the campaign's texts or the row (shared by every later render)
    renderer = Renderer(campaign, shipped_sources(**{"sms.txt": source + " {{ receipt_url }}"}), SENDER)
    before = dict(campaign.text)

    # When it is rendered
    with pytest.raises(ConfigError, match=r"template sms\.txt: refused by the sandbox"):
        renderer.sms({"extra": {"k": "v"}}, RECEIPT_URL)

    # Then it is refused and the values are untouched
    assert campaign.text == before


@pytest.mark.parametrize("source", ["{{ 'x' * 10000000 }}", "{{ [1, 2] * 1000000 }}", "{{ 10 ** 1000000 }}"])
def test_huge_repetitions_and_powers_are_refused(campaign: Campaign, source: str) -> None:
    # Given a template that would make a worker build a huge value
    renderer = Renderer(campaign, shipped_sources(**{"email_subject.txt": source}), SENDER)

    # When it is rendered, then it is refused before the value is built
    with pytest.raises(ConfigError, match=r"template email_subject\.txt: refused by the sandbox"):
        renderer.email({}, RECEIPT_URL)


def test_the_usual_template_features_still_work_in_the_sandbox(campaign: Campaign) -> None:
    # Given templates using filters, loops, conditions, namespaces, macros and the custom filters
    sms = (
        "{% set ns = namespace(n=0) %}{% for c in 'ab' %}{% set ns.n = ns.n + 1 %}{% endfor %}"
        "{% macro hi(who) %}{{ who }}様{% endmacro %}{{ hi(name) }} {{ ns.n }} {{ amount|yen }} "
        "{{ deadline|jp_date }} {{ 'x' * 3 }} {{ text.call_centre_phone|default('') }} {{ receipt_url }}"
    )
    renderer = Renderer(campaign, shipped_sources(**{"sms.txt": sms}), SENDER)

    # When rendered, then the text is as a plain environment would give it
    assert renderer.sms({"name": "山田", "amount": 1200}, RECEIPT_URL) == (
        f"山田様 2 1,200円 2023年5月31日(水) xxx 0120-479-249 {RECEIPT_URL}"
    )


def test_an_error_that_would_quote_the_receipt_url_is_withheld(campaign: Campaign) -> None:
    # Given a template whose error message would name a missing key that is the recipient's URL
    renderer = Renderer(campaign, shipped_sources(**{"sms.txt": "{{ text[receipt_url] }}"}), SENDER)

    # When it is rendered
    with pytest.raises(ConfigError, match=r"template sms\.txt") as caught:
        renderer.sms({}, RECEIPT_URL)

    # Then the error says what kind of thing failed, not the value
    assert "Zq7sECRET" not in str(caught.value) and "receive.example.jp" not in str(caught.value)


def test_a_filter_failing_on_a_value_does_not_quote_it(campaign: Campaign) -> None:
    renderer = Renderer(campaign, shipped_sources(**{"sms.txt": "{{ '%d' % name }} {{ receipt_url }}"}), SENDER)

    with pytest.raises(ConfigError, match=r"template sms\.txt: TypeError while rendering") as caught:
        renderer.sms({"name": "山田花子"}, RECEIPT_URL)

    assert "山田" not in str(caught.value)
