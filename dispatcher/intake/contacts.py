"""Validation and normalisation of one recipient's fields (SPEC §5).

Each checker returns the normalised value or raises :class:`FieldError`, whose message names the field
and never repeats a full contact or URL.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberType

from dispatcher.core.privacy import mask_url


class FieldError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


_LOCAL_CHARS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: Flag carried on legacy Japanese carrier addresses that break RFC 5322 but are real.
LEGACY_LOCAL_PART = "legacy-local-part"


#: Line breaks and control characters (C0, DEL, C1, U+2028/U+2029): never part of an address, and a header
#: injection if one ever reached a header.
_LINE_OR_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_email(raw: str) -> tuple[str, str | None]:
    """Return ``(address, flag)``. Tolerates ``a..b.@docomo.ne.jp``-style legacy local parts.

    Only a plain ``local@domain`` of atext and dots passes: every e-mail header is later built from it.
    """
    value = unicodedata.normalize("NFKC", raw)
    if _LINE_OR_CONTROL.search(value):
        raise FieldError("email", "contains a line break or control character")
    value = value.strip(" ")
    if not value.isascii():
        raise FieldError("email", "contains non-ASCII characters (SES accepts 7-bit addresses only)")
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain:
        raise FieldError("email", "is not an e-mail address (no local part or domain)")
    if len(local) > 64 or len(value) > 254:
        raise FieldError("email", "is too long")
    if not _LOCAL_CHARS.match(local):
        raise FieldError("email", "local part has characters that are not allowed")
    if "=?" in local:
        # Mail software decodes "=?charset?b?...?=" (RFC 2047) even inside an address: it can become others.
        raise FieldError("email", "local part contains '=?' (an RFC 2047 encoded word); not a real mailbox")
    labels = domain.lower().split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or not labels[-1].isalpha():
        # The domain itself is not quoted: the reason goes to the rejects file and logs (SPEC §12).
        raise FieldError("email", f"domain ({len(domain)} characters) is not a valid host name")
    flag = None
    if local.startswith(".") or local.endswith(".") or ".." in local:
        flag = LEGACY_LOCAL_PART
    return f"{local}@{domain.lower()}", flag


_MOBILE_PREFIXES = ("70", "80", "90")
#: The usual writings of a Japanese mobile number (after NFKC, so full-width digits are ASCII here):
#: 090-1234-5678, 09012345678, 090 1234 5678, +81 90 1234 5678, +81-90-1234-5678, +819012345678.
#: For these, phonenumbers.parse(value, "JP") always yields country code 81 and the national number
#: written here (its national prefix "0" stripped), so the parse - the costly part - can be skipped;
#: validity and type still come from phonenumbers' metadata. Anything else takes the full parse.
_USUAL_MOBILE = re.compile(r"(?:0|\+81[- ]?)([789]0)[- ]?([0-9]{4})[- ]?([0-9]{4})")
_TYPE_LABELS = {
    PhoneNumberType.FIXED_LINE: "a landline",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.VOIP: "an IP phone (050)",
    PhoneNumberType.PAGER: "a pager number (020)",
}


def _japanese_mobile(national: str, kind: int) -> str:
    """The E.164 form of a number of Japan's country code, or the reason it cannot take an SMS."""
    if kind != PhoneNumberType.MOBILE or not national.startswith(_MOBILE_PREFIXES):
        raise FieldError("phone", f"is {_TYPE_LABELS.get(kind, 'not a 070/080/090 mobile')}, cannot receive SMS")
    return f"+81{national}"


def check_phone(raw: str) -> str:
    """Return the E.164 form of an SMS-capable Japanese mobile number (070/080/090)."""
    value = unicodedata.normalize("NFKC", raw).strip()
    value = value.replace("ー", "-").replace("−", "-")
    usual = _USUAL_MOBILE.fullmatch(value)
    if usual is not None:
        national = "".join(usual.groups())
        # For country code 81 (one region, JP), phonenumbers' is_valid_number is number_type != UNKNOWN.
        kind = phonenumbers.number_type(PhoneNumber(country_code=81, national_number=int(national)))
        if kind == PhoneNumberType.UNKNOWN:
            raise FieldError("phone", "is not a valid phone number")
        return _japanese_mobile(national, kind)
    try:
        number = phonenumbers.parse(value, "JP")
    except phonenumbers.NumberParseException:
        raise FieldError("phone", "is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise FieldError("phone", "is not a valid phone number")
    if number.country_code != 81:
        raise FieldError("phone", "is not a Japanese number (only Japanese mobiles are supported)")
    _japanese_mobile(str(number.national_number), phonenumbers.number_type(number))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: An https URL whose authority is a plain host name (no user, password, port or IPv6 brackets).
_USUAL_URL = re.compile(r"https://([A-Za-z0-9.-]+)([/?#].*)?", re.IGNORECASE | re.DOTALL)


def check_receipt_url(raw: str, allowed_hosts: frozenset[str]) -> str:
    value = raw.strip()
    if not value:
        raise FieldError("receipt_url", "is empty")
    # For ASCII text, "a space or a control character" is exactly [\x00-\x20\x7f].
    if not value.isascii() or _SPACE_OR_CONTROL.search(value):
        raise FieldError("receipt_url", "contains spaces, control or non-ASCII characters")
    if len(value) > 2048:
        raise FieldError("receipt_url", "is longer than 2048 characters")
    usual = _USUAL_URL.fullmatch(value)
    if usual is not None:
        # What urlsplit makes of it: scheme https, the host as written (no user, port or brackets), then the
        # path up to the first "?" or "#", the query from the first "?" up to the first "#".
        host = usual.group(1).lower()
        if host not in allowed_hosts:
            raise FieldError("receipt_url", f"host '{host}' is not in the campaign's receipt_hosts")
        path, _, query = (usual.group(2) or "").split("#", 1)[0].partition("?")
        if path in ("", "/") and not query:
            raise FieldError("receipt_url", "has no personal path or query (same URL for everyone?)")
        return value
    try:
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises on a malformed port
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


_YEN = re.compile(r"\d{1,9}")


def check_amount(raw: str) -> int:
    if 0 < len(raw) <= 9 and raw.isascii() and raw.isdigit():
        return int(raw)  # what the rules below make of plain ASCII digits
    value = unicodedata.normalize("NFKC", raw).strip().replace(",", "").removesuffix("円").strip()
    if not _YEN.fullmatch(value):
        raise FieldError("amount", "must be a whole, non-negative number of yen")
    return int(value)


def check_category(raw: str) -> str:
    if raw in ("A", "B"):
        return raw
    value = unicodedata.normalize("NFKC", raw).strip().upper()
    if value not in ("A", "B"):
        raise FieldError("category", "must be A or B")
    return value


def check_user_id(raw: str) -> str:
    value = unicodedata.normalize("NFKC", raw).strip()
    if not value:
        raise FieldError("user_id", "is empty")
    if len(value) > 128:
        raise FieldError("user_id", "is longer than 128 characters")
    # ASCII has no format (Cf) characters and its control (Cc) characters are [\x00-\x1f\x7f].
    if (
        _ASCII_CONTROL.search(value)
        if value.isascii()
        else any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value)
    ):
        raise FieldError("user_id", "contains control characters")
    return value
