"""Templates run in Jinja2's sandbox and are never looked for in the working directory (issue 11, finding 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dispatcher.cli.demo import find_campaign_file
from dispatcher.core.campaign import Campaign, load_campaign
from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import load_settings
from dispatcher.sending import render
from dispatcher.sending.render import Renderer, load_template_sources

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
        "{{ range.__init__ }}"
        f"{{{{ cycler.__init__.__globals__.__builtins__.exec(\"import os; os.system('{cmd}')\") }}}}",
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


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x'|center(300000000) }}",
        "{{ '%*s'|format(100000000, '') }}",
        "{{ campaign.name.ljust(1000000000) }}",
        "{{ 'x'|indent(100000000, true) }}",
    ],
)
def test_huge_widths_given_to_filters_and_methods_are_refused(campaign: Campaign, source: str) -> None:
    # Given a template that pads a string to hundreds of megabytes (4 s of CPU, 300 MB, per render)
    renderer = Renderer(campaign, shipped_sources(**{"email_subject.txt": source}), SENDER)

    # When it is rendered, then it is refused before the string is built
    with pytest.raises(ConfigError, match=r"template email_subject\.txt: refused by the sandbox"):
        renderer.email({}, RECEIPT_URL)


@pytest.mark.parametrize("source", ["{{ lipsum(n=200000) }}", "{% for i in range(99999) %}.{% endfor %}"])
def test_globals_that_make_work_at_will_are_not_available(campaign: Campaign, source: str) -> None:
    # Given a template calling lipsum or range (12.8 s for lipsum(n=200000))
    renderer = Renderer(campaign, shipped_sources(**{"email_subject.txt": source}), SENDER)

    # When it is rendered, then the name is simply not there
    with pytest.raises(ConfigError, match=r"email_subject\.txt"):
        renderer.email({}, RECEIPT_URL)


def test_a_loop_inside_a_loop_is_refused_when_compiled(campaign: Campaign) -> None:
    # Given a template looping over a field inside a loop over it (quadratic in a hostile row's field)
    source = "{% for a in campaign.name %}{% if a %}{% for b in campaign.name %}.{% endfor %}{% endif %}{% endfor %}"

    # When it is compiled, then it is refused naming the file and the line
    with pytest.raises(ConfigError, match=r"template email_body\.txt, line 1: a loop inside a loop"):
        Renderer(campaign, shipped_sources(**{"email_body.txt": source}), SENDER)
    # and one loop is still fine
    Renderer(campaign, shipped_sources(**{"email_body.txt": "{% for a in campaign.name %}{{ a }}{% endfor %}"}), SENDER)


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


# enqueue and check refuse it, naming the file -------------------------------------------------------
def hostile_campaign(tmp_path: Path, template: str, source: str) -> Path:
    """A deployment tree (config/campaigns + templates) whose ``template`` file is ``source``."""
    path = write_campaign(tmp_path)
    (tmp_path / "templates" / "compensation" / template).write_text(source, "utf-8")
    return path


@pytest.mark.parametrize(
    ("template", "source"),
    [
        ("email_body.txt", "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}"),
        ("sms.txt", "{{ lipsum.__globals__['__builtins__']['open']('MARKER', 'w').write('x') }} {{ receipt_url }}"),
        ("sms.txt", "{{ text.clear() }} {{ receipt_url }}"),  # refused only when rendered (enqueue's test render)
    ],
)
def test_enqueue_exits_2_and_check_fails_naming_the_template(
    tmp_path: Path, dispatcher_cmd: list[str], template: str, source: str
) -> None:
    # Given a campaign whose template tries to run code or change shared values, and a list for it
    marker = tmp_path / "pwned"
    campaign = hostile_campaign(tmp_path, template, source.replace("MARKER", str(marker)))
    csv = write_csv(tmp_path / "list.csv", person_rows(6))

    # When an operator enqueues it, and runs the preflight
    enqueue = subprocess.run(
        [*dispatcher_cmd, "enqueue", str(campaign), str(csv), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    check = subprocess.run(
        [*dispatcher_cmd, "check", str(campaign), str(csv)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    # Then enqueue is a configuration error naming the file, check reports a failure naming it, nothing ran
    assert enqueue.returncode == 2, enqueue.stdout + enqueue.stderr
    assert template in enqueue.stderr + enqueue.stdout and "sandbox" in enqueue.stderr + enqueue.stdout
    assert check.returncode == 1, check.stdout + check.stderr
    assert template in check.stdout and "sandbox" in check.stdout
    assert not marker.exists()
    assert not list(tmp_path.glob("*.rejects.csv")) or "sandbox" not in (tmp_path / "list.rejects.csv").read_text()


# no implicit lookup in the working directory ------------------------------------------------------
def hostile_cwd(tmp_path: Path, marker: Path) -> Path:
    """A working directory someone else prepared: templates/compensation that would run code, and a
    config/campaigns/ copy of the shipped campaign that sends receipts to another host."""
    cwd = tmp_path / "shared"
    shutil.copytree(ROOT / "templates" / "compensation", cwd / "templates" / "compensation")
    attack = f"HOSTILE {{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}} {{{{ receipt_url }}}}"
    for name in ("sms.txt", "email_body.txt"):
        (cwd / "templates" / "compensation" / name).write_text(attack, "utf-8")
    (cwd / "config" / "campaigns").mkdir(parents=True)
    hostile = SHIPPED.read_text("utf-8").replace("receive.example.jp", "receive.evil.example")
    (cwd / "config" / "campaigns" / SHIPPED.name).write_text(hostile, "utf-8")
    return cwd


def test_templates_are_not_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dispatcher_cmd: list[str]
) -> None:
    # Given a working directory holding a hostile templates/compensation, and a campaign file elsewhere
    # whose own tree has no templates/ (so the installed ones apply)
    marker = tmp_path / "pwned"
    cwd = hostile_cwd(tmp_path, marker)
    campaign = tmp_path / "deploy" / "config" / "campaigns" / "x.toml"
    campaign.parent.mkdir(parents=True)
    campaign.write_text(SHIPPED.read_text("utf-8"), "utf-8")
    csv = write_csv(tmp_path / "list.csv", person_rows(6))

    # When the templates are loaded, and enqueue runs from that directory
    monkeypatch.chdir(cwd)
    sources = load_template_sources(load_campaign(campaign))
    result = subprocess.run(
        [*dispatcher_cmd, "enqueue", str(campaign), str(csv), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )

    # Then the installed templates are used, never the working directory's (which enqueue would refuse)
    assert sources == shipped_sources()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()


def test_the_demo_uses_the_shipped_campaign_not_one_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a working directory with its own config/campaigns/regionpay-2023-app.toml and templates
    marker = tmp_path / "pwned"
    monkeypatch.chdir(hostile_cwd(tmp_path, marker))

    # When the demo looks for its campaign
    path = find_campaign_file()

    # Then it is the packaged copy, with the packaged templates
    assert path.resolve() != (Path.cwd() / "config" / "campaigns" / SHIPPED.name).resolve()
    assert load_campaign(path).receipt_hosts == frozenset({"receive.example.jp"})
    assert load_template_sources(load_campaign(path)) == shipped_sources()


@pytest.mark.slow
def test_the_demo_run_from_a_hostile_directory_sends_the_shipped_messages(
    tmp_path: Path, dispatcher_cmd: list[str]
) -> None:
    # Given a hostile working directory (and no settings file anywhere)
    marker = tmp_path / "pwned"
    cwd = hostile_cwd(tmp_path, marker)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "AWS_"))}

    # When the demo runs there
    result = subprocess.run(
        [*dispatcher_cmd, "demo", "--size", "12", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=cwd,
    )

    # Then it runs the shipped campaign and templates: nothing hostile ran or was sent
    assert result.returncode == 0, result.stdout + result.stderr
    sent = [p.read_bytes() for p in (tmp_path / "demo" / "outbox").rglob("*") if p.is_file()]
    assert sent and not any(b"receive.evil.example" in body or b"HOSTILE" in body for body in sent)
    assert not marker.exists()


# the settings file -------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["writable by others", "writable by group", "owned by another user"])
@pytest.mark.parametrize("explicit", [False, True])
def test_a_settings_file_another_user_could_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, explicit: bool
) -> None:
    # Given config/dispatcher.toml (the working directory's, or named by DISPATCHER_CONFIG) that another
    # local user could have written: it would choose the providers and the ledger
    path = tmp_path / "config" / "dispatcher.toml"
    path.parent.mkdir()
    path.write_text('email_provider = "smtp"\nsmtp_url = "smtp://127.0.0.1:1"\n', "utf-8")
    if how == "owned by another user":
        if os.geteuid() != 0:
            pytest.skip("only root can give a file to another user")
        os.chown(path, 65534, os.getgid())
    if how == "writable by group":
        shared = _shared_group()
        if shared is None:
            pytest.skip("no group on this machine other than our own private one")
        os.chown(path, -1, shared)
    path.chmod(0o646 if how == "writable by others" else 0o664 if how == "writable by group" else 0o644)
    monkeypatch.chdir(tmp_path)
    if explicit:
        monkeypatch.setenv("DISPATCHER_CONFIG", str(path))
    else:
        monkeypatch.delenv("DISPATCHER_CONFIG")

    # When the settings are loaded
    with pytest.raises(ConfigError) as caught:
        load_settings()

    # Then they are refused with an error naming the file and why
    assert str(path) in str(caught.value) and how.split()[0] in str(caught.value)


def _shared_group() -> int | None:
    """A group we may give a file to that is not the user's own private group."""
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    for group in grp.getgrall():
        if group.gr_name != me and (os.getuid() == 0 or group.gr_gid in os.getgroups()):
            return group.gr_gid
    return None


def test_a_group_writable_settings_file_of_the_owners_private_group_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a checkout made under umask 002 (usual with a private group per user): 0664, our own group
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid())
    try:
        own = grp.getgrnam(me.pw_name)
    except KeyError:
        pytest.skip("no private group named as the user")
    if [m for m in own.gr_mem if m != me.pw_name]:
        pytest.skip("the user's group has other members")
    path = tmp_path / "config" / "dispatcher.toml"
    path.parent.mkdir()
    path.write_text('email_provider = "smtp"\n', "utf-8")
    os.chown(path, -1, own.gr_gid)
    path.chmod(0o664)
    monkeypatch.setenv("DISPATCHER_CONFIG", str(path))

    # When the settings are loaded, then it applies (only the user could have written it)
    assert load_settings().email_provider == "smtp"


def test_a_settings_file_only_its_owner_can_write_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the working directory's config/dispatcher.toml, 0644 and ours (the documented convenience)
    path = tmp_path / "config" / "dispatcher.toml"
    path.parent.mkdir()
    path.write_text('email_provider = "smtp"\n', "utf-8")
    path.chmod(0o644)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPATCHER_CONFIG")

    # When the settings are loaded, then it applies
    assert load_settings().email_provider == "smtp"
