"""The e-mail as it leaves us: the same MIME bytes for every e-mail route (SES raw, SMTP, outbox).

:func:`build_message` is the reference: the message as the standard ``email`` package builds it.
:func:`build_raw` writes exactly the bytes ``build_message(...).as_bytes()`` gives (but for the random
multipart boundary and the random part of the Message-ID) without building a message object: parsing
headers into the header registry and flattening the message cost milliseconds per message, more than
anything else in a send.
"""

from __future__ import annotations

import random
import re
import sys
from binascii import b2a_base64
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any, cast

from dispatcher.core.errors import PermanentError
from dispatcher.sending.render import Email

#: Header that lets bounces and replies find the delivery without any personal data.
DELIVERY_HEADER = "X-Dispatcher-Delivery"


class MessageError(PermanentError):
    """This delivery's values cannot make a safe e-mail (a header that cannot be written, a recipient that
    is not exactly one plain address). Retrying cannot help. The message names the header, never a value;
    the email package's own exception, when there is one, is the ``__cause__``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="message")


#: The only recipients we write: an addr-spec of atext and dots (the legacy docomo/au forms included) at a
#: host name. No quotes, comments, angle brackets, commas, spaces or control characters; and no "=?",
#: which the email package's header parser decodes as an RFC 2047 encoded word *inside* the address
#: (``=?utf-8?b?...?=@example.jp`` can become two recipients), whatever the Python patch level.
_PLAIN_RECIPIENT = re.compile(
    r"(?!.*=\?)[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?[.])+[A-Za-z]{2,63}"
)


def _checked_recipient(to: str) -> str:
    if len(to) > 254 or not _PLAIN_RECIPIENT.fullmatch(to):
        raise MessageError("recipient is not one plain e-mail address; nothing was sent")
    return to


def _check_written_recipient(line: bytes, to: str) -> None:
    """The To: line as written must read back as exactly the delivery's contact and nothing else: the last
    guard should the address rules above or the email package's folding ever let a second recipient in.
    (The header registry, the costlier parser, is checked against the same rules in tests/test_mime.py.)"""
    value = line.decode("ascii", "replace").partition(":")[2].replace("\r\n", "").strip()
    if getaddresses([value]) != [("", to)]:
        raise MessageError("the To header does not read back as the recipient alone; nothing was sent")


def build_message(
    email: Email,
    *,
    to: str,
    sender: str,
    sender_name: str,
    delivery_ref: str,
    sent_at: datetime,
) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    local, _, domain = sender.partition("@")
    msg["From"] = Address(display_name=sender_name, username=local, domain=domain)
    msg["To"] = _checked_recipient(to)
    msg["Subject"] = email.subject
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = make_msgid(idstring=delivery_ref.replace(":", "."), domain=domain)
    msg[DELIVERY_HEADER] = delivery_ref
    # base64 keeps every line far below 998 octets whatever the Japanese text does.
    msg.set_content(email.text, charset="utf-8", cte="base64")
    if email.html is not None:
        msg.add_alternative(email.html, subtype="html", charset="utf-8", cte="base64")
    return msg


def build_raw(
    email: Email,
    *,
    to: str,
    sender: str,
    sender_name: str,
    delivery_ref: str,
    sent_at: datetime,
) -> bytes:
    """``build_message(...).as_bytes()``, byte for byte, at a fraction of the cost.

    Same arguments; the same faults in the same order: what build_message raises while building (a
    recipient that is not one plain address, a line break in a header value, text that is not UTF-8) is
    raised before what as_bytes() raises (a header that cannot be written in ASCII). Every fault is a
    :class:`MessageError` (permanent), with the email package's exception, if any, as its cause; the
    written To: line is checked to read back as ``to`` alone.
    """
    try:
        return _build_raw(
            email, to=to, sender=sender, sender_name=sender_name, delivery_ref=delivery_ref, sent_at=sent_at
        )
    except MessageError:
        raise
    except (ValueError, TypeError, UnicodeError, LookupError) as exc:
        # Header and charset faults of the email package; its message may quote a value, so ours does not.
        raise MessageError(f"the message cannot be built ({type(exc).__name__}); nothing was sent") from exc


def _build_raw(
    email: Email,
    *,
    to: str,
    sender: str,
    sender_name: str,
    delivery_ref: str,
    sent_at: datetime,
) -> bytes:
    local, _, domain = sender.partition("@")
    # As build_message builds: every header parsed (or known not to need it), then the bodies encoded.
    head = [
        _from_header(sender_name, local, domain),
        _header("To", _checked_recipient(to)),
        _cached_header("Subject", email.subject),
        _header("Date", format_datetime(sent_at)),
        _message_id_header(make_msgid(idstring=delivery_ref.replace(":", "."), domain=domain)),
        _header(DELIVERY_HEADER, delivery_ref),
    ]
    text = _base64_body(email.text)
    html = None if email.html is None else _base64_body(email.html)
    # As as_bytes() writes: the parts, then the headers folded.
    lines = [_write(item) for item in head]
    _check_written_recipient(lines[1], to)
    if html is None:
        return b"".join([*lines, _SINGLE_PART_HEADERS, text])
    # The generator's boundary (email.generator.Generator._make_boundary). It checks that no line of the
    # parts is the boundary; base64 lines and these part headers never are, so the first draw is kept.
    boundary = (_BOUNDARY_FORMAT % random.randrange(sys.maxsize)).encode("ascii")
    return b"".join(
        [
            *lines,
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="',
            boundary,
            b'"\r\n\r\n',
            b"--",
            boundary,
            _TEXT_PART_HEADERS,
            text,
            b"\r\n--",
            boundary,
            _HTML_PART_HEADERS,
            html,
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]
    )


_BOUNDARY_FORMAT = "=" * 15 + f"%0{len(repr(sys.maxsize - 1))}d" + "=="
_SINGLE_PART_HEADERS = (
    b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\nMIME-Version: 1.0\r\n\r\n'
)
_TEXT_PART_HEADERS = b'\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
# add_alternative() gives the new part its own MIME-Version header.
_HTML_PART_HEADERS = (
    b'\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\nMIME-Version: 1.0\r\n\r\n'
)

# Headers ----------------------------------------------------------------------------------------
#: Values the SMTP policy writes back unchanged when the line fits in 78 characters (checked against the
#: policy in tests/test_mime.py): an addr-spec of atext and a plain domain (the legacy docomo/au forms
#: ``taro..yamada.@docomo.ne.jp`` included), an unstructured token of printable ASCII without "?" (no
#: encoded word can start) and the date as format_datetime writes it (a year from 1000: the parser reads
#: two-digit years as 19xx/20xx). Anything else (quotes, comments, spaces, non-ASCII, CR/LF, a long line)
#: goes through the policy.
_ATEXT = "A-Za-z0-9!#$%&'*+/=^_`{|}~.-"
_VERBATIM = {
    "To": re.compile(f"[{_ATEXT}]+@[A-Za-z0-9.-]+"),
    "Message-ID": re.compile(f"<[{_ATEXT}]+@[A-Za-z0-9.-]+>"),
    DELIVERY_HEADER: re.compile(r"[!->@-~]+"),
    "Date": re.compile(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} [1-9]\d{3} \d\d:\d\d:\d\d [+-]\d{4}"),
}
_MAX_LINE_LENGTH: int = SMTP.max_line_length or 78  # 78 is what the SMTP policy holds
_DOT_ATOM = "[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+(?:[.][A-Za-z0-9!#$%&'*+/=^_`{|}~-]+)*"
_DOT_ATOM_MSGID = re.compile(f"<{_DOT_ATOM}@[A-Za-z0-9-]+(?:[.][A-Za-z0-9-]+)*>")
_MSGID_MOVES = _MAX_LINE_LENGTH - len("Message-ID: ") + 1


class _Pending:
    """A header parsed as ``msg[name] = value`` parses it, to be folded when the message is written."""

    __slots__ = ("header", "key")

    def __init__(self, header: object, key: tuple[object, ...] | None) -> None:
        self.header = header
        self.key = key


def _header(name: str, value: str) -> bytes | _Pending:
    if len(name) + 2 + len(value) <= _MAX_LINE_LENGTH and _VERBATIM[name].fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return _Pending(_parse(name, value), None)


def _message_id_header(msgid: str) -> bytes | _Pending:
    """A msg-id is never folded inside, but one that does not fit after the name and fits on a line of
    its own goes to the next line. Its length depends on the process id and a random number, and ids of
    67 to 77 characters are common, so that rule is spelled out here."""
    if _DOT_ATOM_MSGID.fullmatch(msgid):
        if _MSGID_MOVES <= len(msgid) < _MAX_LINE_LENGTH:
            return f"Message-ID:\r\n {msgid}\r\n".encode("ascii")
        return f"Message-ID: {msgid}\r\n".encode("ascii")
    return _header("Message-ID", msgid)


#: Folded header lines by (name, value): the sender and the subject are the same in every message of a
#: campaign, and folding their RFC 2047 encoded words is most of the price of a message. Bounded: emptied
#: when full (per-person subjects would otherwise keep out the next campaign's).
_folded: dict[tuple[object, ...], bytes] = {}
_FOLDED_MAX = 256


def _cached_header(name: str, value: str) -> bytes | _Pending:
    key = (name, value)
    line = _folded.get(key)
    return line if line is not None else _Pending(_parse(name, value), key)


def _from_header(sender_name: str, local: str, domain: str) -> bytes | _Pending:
    key = ("From", sender_name, local, domain)
    line = _folded.get(key)
    if line is not None:
        return line
    return _Pending(_parse("From", Address(display_name=sender_name, username=local, domain=domain)), key)


def _parse(name: str, value: str | Address) -> object:
    # What msg[name] = value does: refuse CR/LF (and other line breaks) in a str, parse into the registry.
    return SMTP.header_store_parse(name, value)[1]


def _fold(name: str, header: object) -> bytes:
    # What the generator does for each header.
    return SMTP.fold_binary(name, cast(str, header))  # a header-registry object: a str subclass


def _write(item: bytes | _Pending) -> bytes:
    if isinstance(item, bytes):
        return item
    header: Any = item.header
    line = _fold(header.name, header)
    if item.key is not None:
        if len(_folded) >= _FOLDED_MAX:
            _folded.clear()
        _folded[item.key] = line
    return line


def _base64_body(text: str) -> bytes:
    """The body set_content(text, cte="base64") gives: CRLF lines with a final CRLF, base64 in 76-char lines."""
    data = text.encode("utf-8")
    # bytes.splitlines() (what the email package uses) breaks at \r\n, \r and \n only.
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if not data.endswith(b"\n"):
        data += b"\r\n"
    # The email package encodes 57-byte chunks into 76-char lines; 57 is a multiple of 3, so that is the
    # base64 of the whole cut every 76 characters.
    encoded = b2a_base64(data, newline=False)
    return b"".join([encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76)])
