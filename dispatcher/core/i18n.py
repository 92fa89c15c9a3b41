"""The language of the command line: Japanese for office staff when the locale asks for it, English otherwise.

``DISPATCHER_LANG`` (``ja`` / ``en``) wins over ``LC_ALL``, ``LC_MESSAGES`` and ``LANG``. Only what people
read is translated: JSON keys, JSON state names and exit codes never change.
"""

from __future__ import annotations

import gettext
import os
from functools import cache
from pathlib import Path

DOMAIN = "dispatcher"
LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"


def language() -> str:
    """``ja`` or ``en``, from the environment."""
    chosen = os.environ.get("DISPATCHER_LANG", "").strip().lower()
    if not chosen:
        for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
            value = os.environ.get(name, "").strip()
            if value:
                chosen = value.lower()
                break
    return "ja" if chosen.startswith("ja") else "en"


@cache
def translation(lang: str) -> gettext.NullTranslations:
    return gettext.translation(DOMAIN, localedir=LOCALE_DIR, languages=[lang], fallback=True)


def _(message: str) -> str:
    """The message in the user's language (the English text itself when there is no translation)."""
    return translation(language()).gettext(message)
