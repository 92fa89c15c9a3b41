"""``outbox``: messages written to files instead of sent. The embedded default and a dry-run aid.

E-mails: one ``.eml`` per message under ``email/``; SMS: JSON lines in ``sms.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import uuid

from dispatcher.core import clock
from dispatcher.core.errors import PermanentError
from dispatcher.core.private import FILE_MODE, private_dir
from dispatcher.core.states import Channel

from .base import Outgoing, OutgoingEmail, OutgoingSms, Provider, SendResult, register

_lock = threading.Lock()
#: Folders made (or found) by this process: one stat per folder, not one per message.
_made: set[str] = set()


def _folder(path: str) -> str:
    if path not in _made:
        private_dir(path)
        _made.add(path)
    return path


def _open_in(folder: str, name: str, flags: int) -> int:
    """A file of the outbox, created 0600 whatever the umask (a message holds the receipt URL and the
    address); the folder is made again if it went away during the run."""
    try:
        return os.open(os.path.join(folder, name), flags, FILE_MODE)
    except FileNotFoundError:
        private_dir(folder)
        return os.open(os.path.join(folder, name), flags, FILE_MODE)


@functools.lru_cache(maxsize=1024)
def _safe(reference: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in reference)


_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")


def _file_name(reference: str) -> str:
    # A delivery's reference is "<id>.<attempt>": already safe (and one per message, so not cached).
    return f"{reference if _DIGITS_AND_DOTS.fullmatch(reference) else _safe(reference)}.eml"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@register
class EmailOutbox(Provider):
    name = "outbox"
    channel = Channel.EMAIL

    def _send(self, outgoing: Outgoing) -> SendResult:
        if not isinstance(outgoing, OutgoingEmail):
            raise PermanentError("outbox: not an e-mail", code="WrongChannel")
        folder = _folder(os.path.join(self.settings.outbox_path, "email", _safe(outgoing.campaign_id)))
        message_id = f"outbox-{uuid.uuid4()}"
        # File names as plain strings: pathlib interns every path part it parses, and a name per message
        # grew the interpreter's table of interned strings by megabytes over a large campaign.
        tmp = f".{message_id}.tmp"
        fd = _open_in(folder, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _write_all(fd, outgoing.raw)
        finally:
            os.close(fd)
        os.replace(os.path.join(folder, tmp), os.path.join(folder, _file_name(outgoing.reference)))
        return SendResult(self.name, message_id)


@register
class SmsOutbox(Provider):
    name = "outbox"
    channel = Channel.SMS

    def _send(self, outgoing: Outgoing) -> SendResult:
        if not isinstance(outgoing, OutgoingSms):
            raise PermanentError("outbox: not an SMS", code="WrongChannel")
        folder = _folder(str(self.settings.outbox_path))
        message_id = f"outbox-{uuid.uuid4()}"
        line = (
            json.dumps(
                {
                    "message_id": message_id,
                    "reference": outgoing.reference,
                    "campaign": outgoing.campaign_id,
                    "to": outgoing.to,
                    "from": self.settings.sms_sender,
                    "text": outgoing.text,
                    "parts": outgoing.parts,
                    "expires_at": outgoing.expires_at.isoformat(),
                    "at": clock.now().isoformat(),
                },
                ensure_ascii=False,
            )
            + "\n"
        )
        data = line.encode("utf-8")
        with _lock:
            # One write() on an O_APPEND descriptor: lines from several processes never interleave.
            fd = _open_in(folder, "sms.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return SendResult(self.name, message_id)
