"""The command line's gettext catalogues, in one command: extract, update, compile (Babel, a dev/test tool).

    .venv/bin/python scripts/i18n.py           # after adding or changing strings: update the .po, compile the .mo
    .venv/bin/python scripts/i18n.py --check   # exit 1 and name every message that is missing, untranslated,
                                               # fuzzy, or compiled out of date (tests/test_i18n.py runs this)

Messages come from three places, all in one catalogue (domain ``dispatcher``):

- ``_("…")``, ``N_("…")`` and ``ngettext("…", "…", n)`` calls in ``dispatcher/`` (Babel's Python extractor);
- every help text of the click command tree, walked live: command docstrings, ``short_help``, ``epilog`` and
  each option's and argument's ``help`` (the keys ``dispatcher.cli.translated`` looks up when help is shown);
- click's own texts ("Usage:", "Error: Missing argument …"), extracted from the installed click.

Updating keeps every translation whose English text is unchanged, adds new messages untranslated (translate
them in ``dispatcher/locale/ja/LC_MESSAGES/dispatcher.po`` and run this again to compile), drops messages
nobody uses any more, and never guesses (no fuzzy matching). Only the stdlib's gettext reads the .mo at run time.
"""

from __future__ import annotations

import argparse
import ast
import gettext
import importlib.metadata
import inspect
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dispatcher"
LOCALE_DIR = PACKAGE / "locale"
DOMAIN = "dispatcher"
LANGUAGES = ("ja",)
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(lang: str) -> Path:
    return po_path(lang).with_suffix(".mo")


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def command_help_texts(command: click.Command, path: str = "dispatcher") -> Iterator[tuple[str, str]]:
    """(where, text) for every help text of ``command`` and its subcommands, in the form help looks them up."""
    for where, text in (
        (path, command.help),
        (f"{path} (short help)", command.short_help),
        (f"{path} (epilog)", command.epilog),
    ):
        if text:
            yield where, inspect.cleandoc(text)
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            yield f"{path} {param.opts[0] if param.opts else param.name}", inspect.cleandoc(text)
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from command_help_texts(sub, f"{path} {name}")


def hidden_in_fstrings(folder: Path = PACKAGE) -> list[str]:
    """Messages the extractor cannot see, so they would never be translated: ``_("…")`` written inside an
    f-string, and ``_()`` of a text built before the lookup (``_(f"…")``, ``_("…".format(…))``, ``_("…" % x)``)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            calls = [node] if isinstance(node, ast.Call) else []
            if isinstance(node, ast.JoinedStr):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)]
            for call in calls:
                if not (isinstance(call.func, ast.Name) and call.func.id in KEYWORDS and call.args):
                    continue
                where, first = f"{_shown(path)}:{call.lineno}", call.args[0]
                if isinstance(node, ast.JoinedStr) and isinstance(first, ast.Constant):
                    found.append(f"{where}: {call.func.id}({first.value!r}) inside an f-string: move it out")
                elif _built(first):
                    found.append(
                        f"{where}: {call.func.id}() of a text built before the lookup: "
                        'write _("… {name} …").format(name=…)'
                    )
    return found


def _built(node: ast.expr) -> bool:
    """A text made from a literal before the lookup: f"…", "…" % x, "…" + x, "…".format(…)."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return isinstance(node.left, (ast.Constant, ast.JoinedStr))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return isinstance(node.func.value, (ast.Constant, ast.JoinedStr))
    return False


def template() -> Catalog:
    """Every message the command line may show, as a fresh template."""
    from dispatcher.cli import cli

    catalog = Catalog(domain=DOMAIN, project="dispatcher", fuzzy=False)
    sources = [(PACKAGE, "dispatcher"), (Path(click.__file__).parent, f"click {importlib.metadata.version('click')}")]
    for folder, label in sources:
        for filename, _lineno, message, comments, context in extract_from_dir(
            str(folder), method_map=[("**.py", "python")], keywords=KEYWORDS, comment_tags=("TRANSLATORS:",)
        ):
            catalog.add(message, None, auto_comments=[f"{label}: {filename}", *comments], context=context)
    for where, text in command_help_texts(cli):
        catalog.add(text, None, auto_comments=[f"help: {where}"])
    return catalog


def load_po(lang: str) -> Catalog:
    path = po_path(lang)
    if not path.exists():
        return Catalog(locale=lang, domain=DOMAIN, project="dispatcher", fuzzy=False)
    with path.open("rb") as f:
        return read_po(f, locale=lang, domain=DOMAIN)


def po_bytes(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=120, no_location=True, ignore_obsolete=True, sort_output=True)
    return buffer.getvalue()


def mo_bytes(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def update(lang: str, fresh: Catalog) -> Catalog:
    catalog = load_po(lang)
    created = catalog.creation_date
    catalog.update(fresh, no_fuzzy_matching=True, update_header_comment=False)
    catalog.creation_date = created  # the header changes only when the messages do
    catalog.fuzzy = False
    catalog.project, catalog.version = "dispatcher", ""
    catalog.msgid_bugs_address = catalog.last_translator = catalog.language_team = "the dispatcher maintainers"
    return catalog


def problems(lang: str, fresh: Catalog) -> list[str]:
    """What is wrong with ``lang``'s files against ``fresh``: one line per message, empty when all is well."""
    found: list[str] = []
    po = load_po(lang)
    for message in fresh:
        if not message.id:
            continue
        key = message.id if isinstance(message.id, str) else message.id[0]
        have = po.get(message.id, context=message.context)
        if have is None:
            found.append(f"{lang}: missing: {key!r} ({'; '.join(message.auto_comments)})")
        elif have.fuzzy:
            found.append(f"{lang}: fuzzy: {key!r}")
        elif not all(have.string if isinstance(have.string, tuple) else [have.string]):
            found.append(f"{lang}: untranslated: {key!r} ({'; '.join(message.auto_comments)})")
    for message in po:
        if message.id and fresh.get(message.id, context=message.context) is None:
            key = message.id if isinstance(message.id, str) else message.id[0]
            found.append(f"{lang}: no longer used (run scripts/i18n.py): {key!r}")
    mo = mo_path(lang)
    if not mo.exists():
        found.append(f"{lang}: {_shown(mo)} is missing (run scripts/i18n.py)")
    else:
        with mo.open("rb") as f:
            shipped = gettext.GNUTranslations(f)
        with io.BytesIO(mo_bytes(po)) as f:
            compiled = gettext.GNUTranslations(f)
        if shipped._catalog != compiled._catalog:  # type: ignore[attr-defined]
            found.append(f"{lang}: {_shown(mo)} does not match the .po (run scripts/i18n.py)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each problem")
    args = parser.parse_args(argv)
    fresh = template()
    if args.check:
        found = hidden_in_fstrings() + [line for lang in LANGUAGES for line in problems(lang, fresh)]
        for line in found:
            print(line)
        print(f"{len(fresh)} messages; {len(found)} problem(s)")
        return 1 if found else 0
    for line in hidden_in_fstrings():
        print(line)
    for lang in LANGUAGES:
        catalog = update(lang, fresh)
        po_path(lang).parent.mkdir(parents=True, exist_ok=True)
        po_path(lang).write_bytes(po_bytes(catalog))
        mo_path(lang).write_bytes(mo_bytes(load_po(lang)))
        todo = [line for line in problems(lang, fresh) if "untranslated" in line or "missing" in line]
        print(f"{lang}: {len(catalog)} messages, {len(todo)} to translate in {_shown(po_path(lang))}")
        for line in todo:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
