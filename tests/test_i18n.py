"""Japanese for office staff (SPEC §9): with ``LANG=ja_JP.UTF-8`` or ``DISPATCHER_LANG=ja`` the command line's
help, messages and tables are Japanese, click's own texts included; JSON, JSON state names and exit codes are
the same in every language; English stays the default.

The catalogue tests walk the live click command tree, so a command added later with an untranslated help text
fails here by name (``scripts/i18n.py`` adds it to the catalogue; translate it there and run it again).
"""

from __future__ import annotations

import gettext
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.core import i18n
from dispatcher.core.labels import STATUS_LABELS
from dispatcher.core.states import Status

from .helpers import person_rows, write_campaign

ROOT = Path(__file__).resolve().parent.parent
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
#: click's own English that must not be left in a Japanese help page.
CLICK_ENGLISH = ("Usage:", "Options:", "Commands:", "Show this message and exit.", "Show the version and exit.")
LOCALE_VARIABLES = ("DISPATCHER_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("i18n_script", ROOT / "scripts" / "i18n.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands(
    command: click.Command = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group of the tree, with the arguments that reach it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from commands(sub, (*path, name))


def help_texts(command: click.Command) -> list[str]:
    """The English help texts of one command as its help page shows them (the text before any \\f)."""
    texts = [command.help, *(getattr(p, "help", None) for p in command.params)]
    return [inspect.cleandoc(t).partition("\f")[0] for t in texts if t]


def flat(text: str) -> str:
    """Help output with its line wrapping undone, so a wrapped sentence is still found."""
    return " ".join(text.split())


def env_for(**chosen: str) -> dict[str, str]:
    """A locale environment: every locale variable cleared, then the chosen ones set."""
    return {**dict.fromkeys(LOCALE_VARIABLES, ""), **chosen}


JA = env_for(LANG="ja_JP.UTF-8")
EN = env_for(LANG="C.UTF-8")


def invoke(args: list[str], env: dict[str, str], **kwargs: object) -> click.testing.Result:
    # CliRunner sets an empty value by unsetting the variable, as an unset one is what we mean
    return CliRunner().invoke(cli, args, env={k: v or None for k, v in env.items()}, terminal_width=200, **kwargs)


# The catalogue ------------------------------------------------------------------------------------


def test_the_catalogue_is_complete_translated_and_compiled() -> None:
    # Given the messages of the package (_() calls), of the live command tree (help texts) and of click
    script = load_script()
    # When the catalogue tool checks the Japanese files against them
    found = script.hidden_in_fstrings() + script.problems("ja", script.template())
    # Then nothing is missing, untranslated, fuzzy, unused, hidden from the extractor or compiled out of date
    assert found == [], "run `.venv/bin/python scripts/i18n.py`, translate, run it again:\n" + "\n".join(found)


def untranslated_help() -> list[str]:
    """Every help text of the live command tree that the shipped Japanese catalogue does not translate."""
    ja = gettext.translation(i18n.DOMAIN, localedir=i18n.LOCALE_DIR, languages=["ja"])
    missing = []
    for path, command in commands():
        for text in [*help_texts(command), *(t for t in (command.short_help, command.epilog) if t)]:
            shown = ja.gettext(inspect.cleandoc(text))
            if shown == inspect.cleandoc(text) or not JAPANESE.search(shown):
                missing.append(f"dispatcher {' '.join(path)}: {text!r}")
    return missing


def test_every_help_text_of_every_command_has_a_japanese_translation() -> None:
    # Given the command tree as registered now (commands added by later work included), when each help text
    # is looked up in the shipped Japanese catalogue, then each has a Japanese translation
    missing = untranslated_help()
    assert missing == [], "untranslated help (run scripts/i18n.py and translate):\n" + "\n".join(missing)
    assert len(list(commands())) >= 18


def test_a_new_command_without_translations_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a command registered later, as another module would, with English help nobody translated yet
    @click.command()
    @click.option("--user", help="The person's user_id.")
    def person() -> None:
        """Look one person up."""

    monkeypatch.setattr(cli, "commands", dict(cli.commands))  # registered for this test only
    cli.add_command(person)
    # Then the check names the command and each of its texts
    assert untranslated_help() == [
        "dispatcher person: 'Look one person up.'",
        'dispatcher person: "The person\'s user_id."',
    ]
    # and its help page is formatted by our classes, so once translated it is shown in Japanese
    page = invoke(["person", "--help"], JA)
    assert page.exit_code == 0 and "使い方:" in page.output and "Look one person up." in page.output
    assert "このヘルプを表示して終了します。" in page.output
    from dispatcher.cli.translated import TranslatedCommand

    assert type(cli.commands["person"]) is TranslatedCommand


def test_the_checker_finds_untranslated_fuzzy_and_stale_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a copy of the Japanese files in which one message lost its translation, one is fuzzy and the .mo
    # was not compiled again
    script = load_script()
    shutil.copytree(script.LOCALE_DIR, tmp_path / "locale")
    monkeypatch.setattr(script, "LOCALE_DIR", tmp_path / "locale")
    po = script.po_path("ja")
    text = po.read_text("utf-8")
    text = text.replace('msgid "Usage:"\nmsgstr "使い方:"', 'msgid "Usage:"\nmsgstr ""')
    text = text.replace('\nmsgid "Options"\n', '\n#, fuzzy\nmsgid "Options"\n')
    po.write_text(text, "utf-8")
    # When the checker looks at them
    found = "\n".join(script.problems("ja", script.template()))
    # Then it names each problem
    assert "untranslated: 'Usage:'" in found
    assert "fuzzy: 'Options'" in found
    assert "does not match the .po" in found


def test_the_checker_finds_messages_the_extractor_cannot_see(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a module with messages the extractor can and cannot see
    script = load_script()
    monkeypatch.setattr(script, "ROOT", tmp_path)
    source = [
        "x = f\"[red]{_('hidden')}[/]\"",
        'y = _("seen {n}").format(n=1)',
        "z = _(f'built {y}')",
        'w = _("built {n}".format(n=1))',
        "v = _(name)",
    ]
    (tmp_path / "mod.py").write_text("\n".join(source) + "\n", "utf-8")
    # Then the checker names the three the extractor misses, and only them
    found = script.hidden_in_fstrings(tmp_path)
    assert len(found) == 3, found
    assert "mod.py:1: _('hidden') inside an f-string" in found[0]
    assert "mod.py:3: _() of a text built before the lookup" in found[1]
    assert "mod.py:4: _() of a text built before the lookup" in found[2]


def test_every_click_module_looks_its_texts_up_in_our_catalogue() -> None:
    # Given click's modules after the command line was imported
    for info in __import__("pkgutil").iter_modules(click.__path__, "click."):
        try:
            module = importlib.import_module(info.name)
        except (ImportError, AssertionError):
            continue
        # Then none of them still uses the stdlib's global gettext domain
        assert getattr(module, "_", None) is not gettext.gettext, info.name
        assert getattr(module, "ngettext", None) is not gettext.ngettext, info.name


# Which language -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (env_for(LANG="ja_JP.UTF-8"), "ja"),
        (env_for(LC_ALL="ja_JP.UTF-8", LANG="C"), "ja"),
        (env_for(LC_MESSAGES="ja_JP.eucJP", LANG="en_US.UTF-8"), "ja"),
        (env_for(DISPATCHER_LANG="ja"), "ja"),
        (env_for(DISPATCHER_LANG="ja", LANG="C"), "ja"),
        (env_for(DISPATCHER_LANG="en", LANG="ja_JP.UTF-8"), "en"),
        (env_for(LANG="C"), "en"),
        (env_for(LANG="C.UTF-8"), "en"),
        (env_for(), "en"),
    ],
)
def test_the_language_follows_dispatcher_lang_then_the_locale(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value) if value else monkeypatch.delenv(key, raising=False)
    assert i18n.language() == expected
    with i18n.speaking("en"):
        assert i18n.language() == "en"
    assert i18n.language() == expected


# Help pages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p, _c in commands()], ids=lambda p: " ".join(p) or "dispatcher")
def test_each_help_page_is_japanese_with_no_english_sentence_left(path: tuple[str, ...]) -> None:
    command = dict(commands())[path]
    # When an office PC (LANG=ja_JP.UTF-8) and an English one ask for the same help page
    ja = invoke([*path, "--help"], JA)
    en = invoke([*path, "--help"], EN)
    # Then both succeed; the Japanese page is Japanese, with none of the English help texts nor click's English
    assert ja.exit_code == en.exit_code == 0, ja.output + en.output
    assert JAPANESE.search(ja.output)
    assert "使い方:" in ja.output and "このヘルプを表示して終了します。" in ja.output
    for english in [*help_texts(command), *CLICK_ENGLISH]:
        assert flat(english) not in flat(ja.output), f"English left in `{' '.join(path)} --help`: {english!r}"
    # and the English page has every one of them and no Japanese of ours (so the check above can fail)
    for english in [*help_texts(command), "Usage:", "Show this message and exit."]:
        assert flat(english) in flat(en.output), english
    assert "使い方" not in en.output


def test_dispatcher_lang_en_wins_over_a_japanese_locale_and_ja_over_an_english_one() -> None:
    forced_en = invoke(["--help"], env_for(DISPATCHER_LANG="en", LANG="ja_JP.UTF-8"))
    forced_ja = invoke(["--help"], env_for(DISPATCHER_LANG="ja", LANG="C"))
    unset = invoke(["--help"], env_for())
    assert "Usage:" in forced_en.output and "使い方" not in forced_en.output
    assert "Send each eligible person one message" in flat(forced_en.output)
    assert "使い方:" in forced_ja.output and "Usage:" not in forced_ja.output
    assert "Usage:" in unset.output and "使い方" not in unset.output


# click's own messages, exit codes -----------------------------------------------------------------


def test_usage_errors_are_japanese_and_exit_2_in_both_languages() -> None:
    # When an argument is missing, an option unknown, a command unknown, a choice wrong
    cases = [["status"], ["status", "c", "--bogus"], ["nosuch"], ["resend", "c", "--via", "fax"]]
    for args in cases:
        ja = invoke(args, JA)
        en = invoke(args, EN)
        # Then the exit code is 2 either way, and the Japanese error says so in Japanese
        assert ja.exit_code == en.exit_code == 2, (args, ja.output, en.output)
        assert "エラー:" in ja.output and "でヘルプを表示できます。" in ja.output, ja.output
        assert "Error:" not in ja.output and "Try '" not in ja.output
        assert "Error:" in en.output and "Try '" in en.output
    assert "引数が足りません 'CAMPAIGN_ID'" in invoke(["status"], JA).output
    assert "コマンド 'nosuch' はありません。" in invoke(["nosuch"], JA).output


def test_a_refused_confirmation_aborts_in_japanese() -> None:
    # Given a command of our command classes that asks before acting (as cancel and resend do on a terminal)
    from dispatcher.cli.translated import TranslatedGroup
    from dispatcher.core.i18n import _

    @click.group(cls=TranslatedGroup)
    def group() -> None:
        pass

    @group.command()
    def act() -> None:
        click.confirm(_("Resend {count} deliveries?").format(count=3), abort=True)

    # When the operator answers no
    ja = CliRunner().invoke(group, ["act"], input="n\n", env={**JA, "LANG": "ja_JP.UTF-8"})
    en = CliRunner().invoke(group, ["act"], input="n\n", env={**EN, "LANG": "C.UTF-8"})
    # Then the prompt and the abort are Japanese, and the exit code is click's 1 in both
    assert "3 件を再送しますか？ [y/N]" in ja.output and "中断しました。" in ja.output, ja.output
    assert "Resend 3 deliveries? [y/N]" in en.output and "Aborted!" in en.output
    assert ja.exit_code == en.exit_code == 1


# Status: a Japanese table, the same JSON ---------------------------------------------------------


@pytest.fixture
def campaign(ledger_url: str, tmp_path: Path) -> str:
    """A campaign with deliveries in three states."""
    from dispatcher.core.settings import load_settings
    from dispatcher.intake.enqueue import enqueue_campaign
    from dispatcher.ledger import Ledger

    ledger = Ledger(ledger_url)
    enqueue_campaign(
        write_campaign(tmp_path, "ja-test"),
        person_rows(6),
        settings=load_settings(),
        ledger=ledger,
        dispatch=lambda ids: None,
    )
    ids = ledger.in_status("ja-test", [Status.QUEUED])
    for delivery_id, to in ((ids[0], Status.SENT), (ids[1], Status.FAILED)):
        assert ledger.claim(delivery_id) is not None
        ledger.move(delivery_id, to, actor="worker", values={"provider": "outbox"})
    return "ja-test"


def test_status_is_a_japanese_table_while_its_json_is_byte_identical(campaign: str) -> None:
    # When status is asked for on a Japanese and an English machine, as a table and as JSON
    ja_table, en_table = invoke(["status", campaign], JA), invoke(["status", campaign], EN)
    ja_json, en_json = invoke(["status", campaign, "--json"], JA), invoke(["status", campaign, "--json"], EN)
    # Then the JSON is the same bytes, with the machine state names
    assert ja_json.exit_code == en_json.exit_code == 0
    assert ja_json.stdout_bytes == en_json.stdout_bytes
    assert json.loads(ja_json.stdout)["by_status"] == {"failed": 1, "queued": 4, "sent": 1}
    # and the Japanese table names states and channels as the dashboard does, the English one by their names
    assert ja_table.exit_code == en_table.exit_code == 0
    for state in ("queued", "sent", "failed"):
        assert STATUS_LABELS[state] in ja_table.output
        assert state in en_table.output
        assert re.search(rf"\b{state}\b", ja_table.output) is None
    assert "状態" in ja_table.output and "メール" in ja_table.output and "合計" in ja_table.output
    assert "配信 6 件" in ja_table.output and "6 deliveries" in en_table.output


def test_an_unknown_campaign_is_refused_in_japanese_with_exit_1(ledger_url: str) -> None:
    ja, en = invoke(["status", "nope"], JA), invoke(["status", "nope"], EN)
    assert ja.exit_code == en.exit_code == 1
    assert "台帳にキャンペーン 'nope' がありません" in ja.output
    assert "no campaign 'nope' in the ledger" in en.output


# The real console script -------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in LOCALE_VARIABLES}
    full.update({k: v for k, v in env.items() if v})
    full["COLUMNS"] = "200"
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=120, stdin=subprocess.DEVNULL)


def test_the_console_script_speaks_japanese_from_the_environment(dispatcher_cmd: list[str], campaign: str) -> None:
    # Given the installed `dispatcher` script, the locale only in its environment (the OS may not have ja_JP)
    helped = run([*dispatcher_cmd, "--help"], JA)
    english = run([*dispatcher_cmd, "--help"], EN)
    forced = run([*dispatcher_cmd, "--help"], env_for(DISPATCHER_LANG="en", LANG="ja_JP.UTF-8"))
    usage_ja = run([*dispatcher_cmd, "plan"], JA)
    usage_en = run([*dispatcher_cmd, "plan"], EN)
    table = run([*dispatcher_cmd, "status", campaign], JA)
    as_json = [run([*dispatcher_cmd, "status", campaign, "--json"], env) for env in (JA, EN)]
    # Then help is Japanese only where asked for, errors too, exit codes and JSON are the same
    assert helped.returncode == english.returncode == forced.returncode == 0, helped.stderr
    assert "使い方:" in helped.stdout and "配信の件数を状態別・チャネル別に表示します。" in helped.stdout
    assert "Usage:" in english.stdout and "使い方" not in english.stdout
    assert "Usage:" in forced.stdout and "使い方" not in forced.stdout
    assert usage_ja.returncode == usage_en.returncode == 2
    assert "エラー: 引数が足りません" in usage_ja.stderr and "Error: Missing argument" in usage_en.stderr
    assert table.returncode == 0 and STATUS_LABELS["sent"] in table.stdout and "Traceback" not in table.stderr
    assert as_json[0].returncode == as_json[1].returncode == 0
    assert as_json[0].stdout == as_json[1].stdout and '"sent": 1' in as_json[0].stdout


def test_the_console_script_needs_no_japanese_os_locale(dispatcher_cmd: list[str]) -> None:
    # Given a locale name the OS surely lacks, in every variable Python's locale module reads
    odd = env_for(LC_ALL="ja_JP.UTF-8", LC_MESSAGES="ja_JP.UTF-8", LANG="ja_JP.UTF-8")
    # When help and an error are asked for
    helped = run([*dispatcher_cmd, "--help"], odd)
    refused = run([*dispatcher_cmd, "status"], odd)
    # Then both work, in Japanese, with their usual exit codes
    assert refused.returncode == 2 and "エラー:" in refused.stderr and "Traceback" not in refused.stderr
    assert helped.returncode == 0 and "使い方:" in helped.stdout, helped.stderr
