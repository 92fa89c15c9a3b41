"""The language of the command line: Japanese for office staff when the locale asks for it, English otherwise.

``DISPATCHER_LANG`` (``ja`` / ``en``) wins over ``LC_ALL``, ``LC_MESSAGES`` and ``LANG``. Only what people
read is translated: JSON keys, JSON state names and exit codes never change.

The catalogues are stdlib gettext files (``dispatcher/locale/<lang>/LC_MESSAGES/dispatcher.mo``), shipped in
the package; ``scripts/i18n`` extracts, updates and compiles them. Nothing here calls ``locale.setlocale``:
the Japanese text needs only our catalogue, not an installed ``ja_JP`` OS locale.

The language is decided each time a text is looked up, never at import: click declares help texts when the
commands are defined, and a test (or a long-lived process) may change the environment afterwards.
"""

from __future__ import annotations

import gettext
import importlib
import os
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

DOMAIN = "dispatcher"
LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"
LANGUAGES = ("en", "ja")

_forced: ContextVar[str | None] = ContextVar("dispatcher_language", default=None)


def language() -> str:
    """``ja`` or ``en``: a forced language (:func:`speaking`) first, then the environment."""
    forced = _forced.get()
    if forced is not None:
        return forced
    chosen = os.environ.get("DISPATCHER_LANG", "").strip().lower()
    if not chosen:
        for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
            value = os.environ.get(name, "").strip()
            if value:
                chosen = value.lower()
                break
    return "ja" if chosen.startswith("ja") else "en"


@contextmanager
def speaking(lang: str) -> Iterator[None]:
    """Look every text up in ``lang`` inside the block, whatever the environment says.

    Machine-readable output (``--json``) is built inside ``speaking("en")`` so it is the same in every language.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r} (one of {', '.join(LANGUAGES)})")
    token = _forced.set(lang)
    try:
        yield
    finally:
        _forced.reset(token)


@cache
def translation(lang: str) -> gettext.NullTranslations:
    return gettext.translation(DOMAIN, localedir=LOCALE_DIR, languages=[lang], fallback=True)


def _(message: str) -> str:
    """The message in the user's language (the English text itself when there is no translation).

    Messages with values are written with named fields and formatted after translation, so the
    translator sees the whole sentence: ``_("no campaign '{campaign}'").format(campaign=campaign_id)``.
    """
    return translation(language()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The singular or plural message for ``n`` in the user's language (Japanese has one form)."""
    return translation(language()).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark ``message`` for the catalogue without translating it now: it is stored or compared in English
    (a check's name, a skip reason) and translated with ``_()`` where it is shown."""
    return message


def translate_click() -> None:
    """Let click's own texts ("Usage:", "Show this message and exit.", "Error: Missing argument …",
    "Aborted!") follow :func:`language` too.

    click looks them up with ``from gettext import gettext as _`` in each of its modules, that is in the
    stdlib's global domain with the stdlib's own reading of the environment, which knows nothing of
    ``DISPATCHER_LANG`` and would need a global ``textdomain`` switch for the whole process. Instead each
    click module's ``_`` / ``ngettext`` is pointed at ours; click's messages are in our catalogue
    (``scripts/i18n`` extracts them from the installed click). Idempotent.
    """
    import click

    for info in pkgutil.iter_modules(click.__path__, "click."):
        try:
            module = importlib.import_module(info.name)
        except (ImportError, AssertionError):  # click._winconsole asserts it is on Windows
            continue
        if getattr(module, "_", None) is gettext.gettext:
            module._ = _  # type: ignore[attr-defined]
        if getattr(module, "ngettext", None) is gettext.ngettext:
            module.ngettext = ngettext  # type: ignore[attr-defined]
