"""Masking of personal data and bearer URLs for logs, reports and pages.

Receipt URLs are bearer credentials for money; e-mail addresses and phone numbers are personal data.
Everything that leaves the ledger for human eyes goes through these functions, and every log record
goes through :class:`RedactingFilter` as a second line of defence.

Every pattern here costs linear time on any input (SPEC §12): a match can start only at the beginning of a
run of the characters it is made of (a negative lookbehind), runs are consumed possessively (no
backtracking into them), and the short patterns (phone numbers) are bounded in length. An attacker who
controls a log line therefore cannot make its redaction quadratic.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

#: A log record's text (message and exception) is cut to this many characters before it is redacted.
MAX_RECORD_CHARS = 8192
#: What :func:`scrub` keeps of a provider's error text (``reason``, transition ``detail``).
MAX_KEPT_CHARS = 300
#: :func:`scrub` looks for the delivery's own secrets in this much text at most (bounds its cost).
_SCRUB_WINDOW = 16384
#: A provider code is kept only when it is this short, a plain token, and holds few digits (never a phone).
MAX_CODE_CHARS = 32
MAX_CODE_DIGITS = 6


def mask_email(address: str) -> str:
    """``taro.yamada@docomo.ne.jp`` -> ``ta***@docomo.ne.jp``."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return "***"
    return f"{local[:2]}***@{domain}"


def mask_domain(domain: str) -> str:
    """``docomo.ne.jp`` -> ``d***.jp``: enough for an operator to tell carriers apart, not the full domain."""
    head, _, tld = domain.rpartition(".")
    if not head:
        return "***"
    return f"{head[:1]}***.{tld[:8]}"


def mask_phone(number: str) -> str:
    """``+819012345678`` -> ``090-****-5678`` (Japanese numbers), else keeps only the last four digits."""
    digits = "".join(ch for ch in number.translate(_FOLD) if "0" <= ch <= "9")
    if number.translate(_FOLD).lstrip().startswith("+81") and len(digits) == 12:
        return f"0{digits[2:4]}-****-{digits[-4:]}"
    return f"***{digits[-4:]}" if len(digits) > 4 else "***"


def mask_contact(channel: str, contact: str) -> str:
    return mask_email(contact) if channel == "email" else mask_phone(contact)


def mask_url(url: str) -> str:
    """Keep scheme and host so an operator can tell which site; drop the secret path and query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "<url>"
    if not parts.scheme or not host:
        return "<url>"
    return f"{parts.scheme}://{host}/…"


def _fold_table() -> dict[int, str]:
    """One character for one character: NFKC where it gives a single ASCII character (full-width digits,
    letters, ``＋``, ``＠``, ``．``), any decimal digit as its ASCII digit, dashes as ``-``. The length of the
    text never changes, so a match found in the folded text covers the same span of the original."""
    table: dict[int, str] = {}
    for cp in (*range(0x80, 0x10000), *range(0x1D7CE, 0x1D800), *range(0x1FBF0, 0x1FBFA)):
        ch = chr(cp)
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            table[cp] = str(digit)
            continue
        folded = unicodedata.normalize("NFKC", ch)
        if len(folded) == 1 and folded.isascii() and (folded.isprintable() or folded == " "):
            table[cp] = folded
    for dash in "ー−‐‑‒–—―":
        table[ord(dash)] = "-"
    return table


_FOLD = _fold_table()

# No \b in these patterns: Japanese text often glues a URL or number to kana/kanji ("URLhttps://…",
# "電話09012345678"), where \b finds no word boundary and the secret would pass unredacted. Instead each
# pattern may start only where the run of its own characters starts (the lookbehinds), which is also what
# keeps the scan linear. They run on folded text (see _fold_table), so full-width writings match too.
_SCHEME_SEP = r"(?:://|%3[Aa]%2[Ff]%2[Ff]|%253[Aa]%252[Ff]%252[Ff])"
_URL = rf"(?P<url>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+{_SCHEME_SEP}[^\s\"'<>]++)"
_LOCAL = r"A-Za-z0-9_.!#$%&'*+/=?^`{|}~-"
_EMAIL = rf"(?P<email>(?<![{_LOCAL}])[{_LOCAL}]++@(?P<domain>[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++))"
# A host name with a top-level domain, then a path: a URL written without its scheme.
_BARE = r"(?P<bare>(?<![A-Za-z0-9.-])(?P<host>(?:[A-Za-z0-9-]++\.)++[A-Za-z]{2,63}+)(?:/|%2[Ff])[^\s\"'<>]++)"
# International numbers; Japanese mobiles (070/080/090) in any usual writing, with or without 81 in front.
_SEP = r"[ .()-]{0,2}"
_PHONE = (
    r"(?P<phone>(?<!\+)\+\d{1,3}(?:(?:[ .-]\(?|\(|(?<=\)))\d{1,4}\)?){2,4}(?!\d)"
    rf"|(?<!\d)(?:81{_SEP}0?|\(?0)[789]0{_SEP}\d{{4}}{_SEP}\d{{4}}(?!\d))"
)
# Any run of digits joined by "-" or "." (a match always succeeds, so the scan moves past the whole run):
# numbers written back to back ("090-1234-5678090-1234-5678") defeat the (?!\d) ends above. Runs of at
# least RUN_DIGITS digits with a separator (or LONG_RUN_DIGITS without, or PLUS_DIGITS after a "+": an
# international number written without spaces) are masked; shorter ones (dates,
# versions, amounts, a 12-digit order number) are kept as they are.
_RUN = r"(?P<run>(?<!\d)(?P<plus>\+)?\d(?:[.-]?+\d)*+)"
PLUS_DIGITS = 8
RUN_DIGITS = 12
LONG_RUN_DIGITS = 16
_GLUED_SCHEME = re.compile(r"([A-Za-z0-9+.-]+?)(?=https?(?:://|%))", re.IGNORECASE)
_SECRETS = re.compile("|".join((_URL, _EMAIL, _BARE, _PHONE, _RUN)))


def _replacement(match: re.Match[str]) -> str | None:
    """The masked form of a match (found in folded text), or None where the original is to be kept."""
    kind = match.lastgroup
    text = match.group(0)
    if kind == "url":
        # "URLhttps://…" (Japanese text glues a word to the scheme): keep the word, mask the URL.
        glued = _GLUED_SCHEME.match(text)
        head = glued.group(1) if glued else ""
        return head + mask_url(unquote(unquote(text[len(head) :])))
    if kind == "email":
        # The domain is redacted too: a number glued to it ("…ne.jp090-1234-5678") reads as part of it.
        return f"***@{redact(match.group('domain'))}"
    if kind == "bare":
        # Likewise the host: a label may have swallowed a number glued in front ("090-1234-5678URLreceive.…").
        return f"{redact(match.group('host'))}/…"
    if kind == "run":
        digits = sum(ch.isdigit() for ch in text)
        plain = len(text) == digits
        if match.group("plus"):
            if digits < PLUS_DIGITS:
                return None
        elif digits < RUN_DIGITS or (digits < LONG_RUN_DIGITS and plain):
            return None
    return mask_phone(text)


def redact(text: str) -> str:
    """Remove anything that looks like a URL path, an e-mail local part or a phone number. Linear time."""
    folded = text if text.isascii() else text.translate(_FOLD)
    pieces: list[str] = []
    last = 0
    for match in _SECRETS.finditer(folded):
        start, end = match.span()
        masked = _replacement(match)
        if masked is None:
            continue
        pieces.append(text[last:start])
        pieces.append(masked)
        last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def secret_variants(secret: str) -> list[str]:
    """The writings in which a provider may echo one of our secrets: as is, without its scheme, with its
    path alone, percent-encoded; an address also by its local part, a phone number in its national form."""
    secret = secret.strip()
    if not secret:
        return []
    found = {secret, quote(secret, safe=""), quote(secret, safe="/:")}
    _scheme, sep, rest = secret.partition("://")
    if sep and rest:
        found |= {rest, quote(rest, safe=""), quote(rest, safe="/")}
        path = rest.partition("/")[2]
        if len(path) >= 6:
            found |= {"/" + path, quote("/" + path, safe="")}
    local, at, _domain = secret.rpartition("@")
    if at and len(local) >= 3:
        found.add(local)
    digits = "".join(ch for ch in secret if ch.isdigit())
    if secret.startswith("+81") and len(digits) >= 11:
        national = "0" + digits[2:]
        found |= {digits, national, f"{national[:3]}-{national[3:7]}-{national[7:]}"}
    return sorted((v for v in found if len(v) >= 3), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str | None] = (), limit: int = MAX_KEPT_CHARS) -> str:
    """Text fit to keep (a ledger ``reason`` or ``detail``, an exception message): the delivery's own
    ``secrets`` (its receipt URL, its contact) removed in every writing a server may echo them in, then
    :func:`redact`, then cut to ``limit`` characters."""
    window = text[:_SCRUB_WINDOW]
    variants = [v for s in secrets if s for v in secret_variants(s)]
    if variants:
        pattern = re.compile("|".join(re.escape(v) for v in variants), re.IGNORECASE)
        window = pattern.sub("<redacted>", window)
    kept = redact(window)
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


_CODE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_CODE_CHARS}}}")


def safe_code(value: object, secrets: Iterable[str | None] = ()) -> str | None:
    """A provider's error code fit to keep and show: a short token with at most a few digits (a phone
    number posing as a numeric code is refused), not containing one of the delivery's ``secrets``."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    code = str(value)
    if not _CODE.fullmatch(code) or sum(ch.isdigit() for ch in code) > MAX_CODE_DIGITS:
        return None
    lowered = code.lower()
    # A code that holds a secret, or a long code that is a piece of one (a short one, "550", may be by chance).
    if any(
        v.lower() in lowered or (len(code) >= 8 and lowered in v.lower())
        for s in secrets
        if s
        for v in secret_variants(s)
    ):
        return None
    return code


def _truncated(text: str, limit: int = MAX_RECORD_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … [{len(text) - limit} characters cut]"


class RedactingFilter(logging.Filter):
    """Rewrites every record's final message, arguments and exception text included: cut to
    :data:`MAX_RECORD_CHARS` first, then redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            formatter = logging.Formatter()
            message = f"{message}\n{formatter.formatException(record.exc_info)}"
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(_truncated(message))
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
