"""The e-mail as it leaves us: the same MIME bytes for every e-mail route (SES raw, SMTP, outbox)."""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from .render import Email

#: Header that lets bounces and replies find the delivery without any personal data.
DELIVERY_HEADER = "X-Dispatcher-Delivery"


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
    msg["To"] = to
    msg["Subject"] = email.subject
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = make_msgid(idstring=delivery_ref.replace(":", "."), domain=domain)
    msg[DELIVERY_HEADER] = delivery_ref
    # base64 keeps every line far below 998 octets whatever the Japanese text does.
    msg.set_content(email.text, charset="utf-8", cte="base64")
    if email.html is not None:
        msg.add_alternative(email.html, subtype="html", charset="utf-8", cte="base64")
    return msg
