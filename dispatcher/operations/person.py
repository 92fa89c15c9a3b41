"""The person desk: one person of a campaign, found the way a caller names them (SPEC §9, second wave).

A caller gives their user id, their inquiry number, or their phone number / e-mail address in any writing;
the view shows what the office may tell them: the masked contact, the state, every attempt's provider id,
the redemption and reminders, and the whole timeline in JST. Never the receipt URL, never a full contact.
Used by ``dispatcher person`` and by the dashboard's person page and API alike.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dispatcher.core.clock import JST
from dispatcher.core.errors import InputError
from dispatcher.core.privacy import mask_contact, redact
from dispatcher.core.states import Channel
from dispatcher.intake.contacts import FieldError, check_email, check_phone
from dispatcher.ledger import Ledger
from dispatcher.ledger.store import Delivery

REMINDER_PREFIX = "reminder:"


class By(StrEnum):
    """What the caller told us."""

    USER = "user"
    INQUIRY = "inquiry"
    CONTACT = "contact"


@dataclass(frozen=True)
class Step:
    """One line of the timeline: a state change with who made it and the provider's code."""

    at: datetime
    from_status: str | None
    to_status: str
    actor: str
    code: str | None
    detail: str | None
    attempt: int


@dataclass(frozen=True)
class ProviderMessage:
    attempt: int
    provider: str
    channel: str
    message_id: str
    sent_at: datetime | None


@dataclass(frozen=True)
class ReminderView:
    campaign_id: str
    template: str
    channel: str
    contact: str  # masked
    status: str
    attempts: int
    first_sent_at: datetime | None
    last_event_at: datetime | None
    history: list[Step]


@dataclass(frozen=True)
class Fallback:
    first_channel: str | None
    first_status: str | None
    first_provider_message_id: str | None
    at: datetime | None


@dataclass(frozen=True)
class PersonView:
    campaign_id: str
    user_id: str
    inquiry_no: str | None
    channel: str
    #: The contact the delivery goes to, masked; ``contacts``: every contact on the row, masked.
    contact: str
    contacts: dict[str, str]
    status: str
    attempts: int
    provider: str | None
    provider_message_ids: list[ProviderMessage]
    first_sent_at: datetime | None
    last_event_at: datetime | None
    flags: list[str]
    reason: str | None
    redeemed_at: datetime | None
    history: list[Step]
    reminders: list[ReminderView] = field(default_factory=list)
    #: After an automatic fallback: the first channel's evidence and when the other channel took over.
    fallback: Fallback | None = None


def normalise_contact(raw: str) -> tuple[Channel, str]:
    """The contact as enqueue stored it: an e-mail address (domain in lower case) or an E.164 mobile number
    from any writing of SPEC §5 (full-width digits, hyphens, ``+81``). Raises InputError naming the field."""
    value = unicodedata.normalize("NFKC", raw).strip()
    try:
        if "@" in value:
            address, _ = check_email(value)
            return Channel.EMAIL, address
        return Channel.SMS, check_phone(value)
    except FieldError as exc:
        # The message names the field and the problem, never the contact itself.
        raise InputError(f"--contact: {exc}") from None


def normalise_inquiry(raw: str) -> str:
    return unicodedata.normalize("NFKC", raw).strip()


def _steps(rows: list[dict[str, Any]]) -> list[Step]:
    return [
        Step(
            at=r["at"],
            from_status=r["from_status"],
            to_status=r["to_status"],
            actor=r["actor"],
            code=r["provider_code"],
            detail=redact(r["detail"]) if r["detail"] else None,
            attempt=r["attempt"],
        )
        for r in rows
    ]


def _contacts(d: Delivery) -> dict[str, str]:
    found = {}
    if d.email:
        found["email"] = mask_contact("email", d.email)
    if d.phone:
        found["sms"] = mask_contact("sms", d.phone)
    return found


def _reminder(ledger: Ledger, purpose: str | None, d: Delivery, trail: list[dict[str, Any]]) -> ReminderView:
    template = (purpose or "").removeprefix(REMINDER_PREFIX) or d.campaign_id
    return ReminderView(
        campaign_id=d.campaign_id,
        template=template,
        channel=d.channel.value,
        contact=mask_contact(d.channel.value, d.contact),
        status=d.status.value,
        attempts=d.attempts,
        first_sent_at=d.first_sent_at,
        last_event_at=d.last_event_at,
        history=_steps(trail),
    )


def person_view(ledger: Ledger, d: Delivery) -> PersonView:
    """Everything the desk shows about the person of delivery ``d``."""
    reminders = ledger.person_reminders(d.campaign_id, d.user_id)
    trails = ledger.person_trails([d.id, *(r.id for _, r in reminders)])
    messages = [
        ProviderMessage(m["attempt"], m["provider"], m["channel"], m["message_id"], m["sent_at"])
        for m in ledger.person_messages(d.id)
    ]
    if not messages and d.provider_message_id:  # a send recorded without its message row (older ledgers)
        messages = [ProviderMessage(d.attempts, d.provider or "", d.channel.value, d.provider_message_id, None)]
    inquiry = d.fields.get("inquiry_no")
    return PersonView(
        campaign_id=d.campaign_id,
        user_id=d.user_id,
        inquiry_no=str(inquiry) if inquiry else None,
        channel=d.channel.value,
        contact=mask_contact(d.channel.value, d.contact),
        contacts=_contacts(d),
        status=d.status.value,
        attempts=d.attempts,
        provider=d.provider,
        provider_message_ids=messages,
        first_sent_at=d.first_sent_at,
        last_event_at=d.last_event_at,
        flags=[f for f in d.flags.split(",") if f],
        reason=redact(d.reason) if d.reason else None,
        redeemed_at=ledger.redemptions_of(d.campaign_id, [d.user_id]).get(d.user_id),
        history=_steps(trails[d.id]),
        reminders=[_reminder(ledger, purpose, r, trails[r.id]) for purpose, r in reminders],
        fallback=None
        if d.fallback_at is None
        else Fallback(d.first_channel, d.first_status, d.first_provider_message_id, d.fallback_at),
    )


def find_people(ledger: Ledger, campaign_id: str, by: By, value: str) -> list[PersonView]:
    """Every person of the campaign matching what the caller said (usually one; none when unknown).

    Raises InputError when ``value`` cannot be what ``by`` says (an empty value, a contact that is neither
    an e-mail address nor a Japanese mobile number)."""
    if not value.strip():
        raise InputError(f"--{by.value}: is empty")
    if by is By.USER:
        found = ledger.person_by_user(campaign_id, unicodedata.normalize("NFKC", value).strip())
        matches = [] if found is None else [found]
    elif by is By.INQUIRY:
        matches = ledger.people_by_inquiry(campaign_id, normalise_inquiry(value))
    else:
        channel, contact = normalise_contact(value)
        matches = ledger.people_by_contact(campaign_id, channel, contact)
    return [person_view(ledger, d) for d in matches]


def jst(value: datetime | None) -> str | None:
    return value.astimezone(JST).isoformat(timespec="seconds") if value else None


def _steps_json(steps: list[Step]) -> list[dict[str, Any]]:
    return [
        {
            "at": jst(s.at),
            "from": s.from_status,
            "to": s.to_status,
            "actor": s.actor,
            "code": s.code,
            "detail": s.detail,
            "attempt": s.attempt,
        }
        for s in steps
    ]


def person_json(view: PersonView) -> dict[str, Any]:
    """The shape of ``dispatcher person --json`` and ``/api/campaigns/{id}/people/{user_id}``."""
    return {
        "campaign": view.campaign_id,
        "user_id": view.user_id,
        "inquiry_no": view.inquiry_no,
        "channel": view.channel,
        "contact": view.contact,
        "contacts": view.contacts,
        "status": view.status,
        "attempts": view.attempts,
        "provider": view.provider,
        "provider_message_ids": [
            {
                "attempt": m.attempt,
                "provider": m.provider,
                "channel": m.channel,
                "id": m.message_id,
                "sent_at": jst(m.sent_at),
            }
            for m in view.provider_message_ids
        ],
        "first_sent_at": jst(view.first_sent_at),
        "last_event_at": jst(view.last_event_at),
        "flags": view.flags,
        "reason": view.reason,
        "redeemed_at": jst(view.redeemed_at),
        "fallback": None
        if view.fallback is None
        else {
            "first_channel": view.fallback.first_channel,
            "first_status": view.fallback.first_status,
            "first_provider_message_id": view.fallback.first_provider_message_id,
            "at": jst(view.fallback.at),
        },
        "history": _steps_json(view.history),
        "reminders": [
            {
                "campaign": r.campaign_id,
                "template": r.template,
                "channel": r.channel,
                "contact": r.contact,
                "status": r.status,
                "attempts": r.attempts,
                "sent_at": jst(r.first_sent_at),
                "first_sent_at": jst(r.first_sent_at),
                "last_event_at": jst(r.last_event_at),
                "history": _steps_json(r.history),
            }
            for r in view.reminders
        ],
    }


def people_json(views: list[PersonView]) -> dict[str, Any]:
    """One object for what was found: the first match in the contract's shape, with ``matches`` (how many
    people matched) and, when several did, ``others``: the other matches, each in the same shape."""
    first, *rest = views
    data = person_json(first)
    data["matches"] = len(views)
    if rest:
        data["others"] = [person_json(v) for v in rest]
    return data
