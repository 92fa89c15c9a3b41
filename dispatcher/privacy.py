"""Masking of personal data and bearer URLs for logs, reports and pages.

Receipt URLs are bearer credentials for money; e-mail addresses and phone numbers are personal data.
Everything that leaves the ledger for human eyes goes through these functions, and every log record
goes through :class:`RedactingFilter` as a second line of defence.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit


def mask_email(address: str) -> str:
    """``taro.yamada@docomo.ne.jp`` -> ``ta***@docomo.ne.jp``."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return "***"
    return f"{local[:2]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+819012345678`` -> ``090-****-5678`` (Japanese numbers), else keeps only the last four digits."""
    digits = re.sub(r"\D", "", number)
    if number.startswith("+81") and len(digits) == 12:
        return f"0{digits[2:4]}-****-{digits[-4:]}"
    return f"***{digits[-4:]}" if len(digits) > 4 else "***"


def mask_contact(channel: str, contact: str) -> str:
    return mask_email(contact) if channel == "email" else mask_phone(contact)


def mask_url(url: str) -> str:
    """Keep scheme and host so an operator can tell which site; drop the secret path and query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    if not parts.scheme or not parts.hostname:
        return "<url>"
    return f"{parts.scheme}://{parts.hostname}/…"


# No \b in these patterns: Japanese text often glues a URL or number to kana/kanji ("URLhttps://…",
# "電話09012345678"), where \b finds no word boundary and the secret would pass unredacted. A phone
# number only must not start or end inside a longer run of digits.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# International numbers and Japanese mobile numbers in any usual writing.
_PHONE = re.compile(r"\+\d{1,3}(?:[ -]\d{1,4}){2,3}(?!\d)|\+\d{9,15}|(?<!\d)0[789]0[- ]?\d{4}[- ]?\d{4}(?!\d)")


def redact(text: str) -> str:
    """Remove anything that looks like a URL path, an e-mail local part or a phone number."""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _EMAIL.sub(lambda m: f"***@{m.group(1)}", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Rewrites every record's final message, arguments and exception text included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            formatter = logging.Formatter()
            message = f"{message}\n{formatter.formatException(record.exc_info)}"
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message)
        record.args = ()
        return True


def install_log_redaction(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
