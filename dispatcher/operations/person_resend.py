"""Sending one person their message again (SPEC §9, second wave): ``resend CAMPAIGN --user ID``.

An explicit, audited operator act, optionally to a corrected contact (validated as in ``enqueue``). Allowed
from any state but ``complained`` and ``sending`` (in flight: it may yet arrive); a suppressed contact only
when a new one is given. The re-address and requeue is one ledger transaction, then the broker message:
killed in between, the sweep sends it; a duplicate message is made harmless by the atomic claim. Exactly
one more message, and the old contact gets nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.core import clock, sms
from dispatcher.core.errors import DispatcherError, InputError
from dispatcher.core.i18n import _
from dispatcher.core.privacy import redact
from dispatcher.core.states import Channel, Status
from dispatcher.intake.contacts import FieldError, check_email, check_phone
from dispatcher.ledger.readdress import Address
from dispatcher.ledger.store import CampaignRecord, Delivery
from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)


class Refused(DispatcherError):
    """The act is not allowed for this person now (exit 1); nothing was changed."""


#: Never resent to anyone: the person complained.
NEVER = frozenset({Status.COMPLAINED})
#: In flight: the provider may have it; resending now could send twice.
IN_FLIGHT = frozenset({Status.SENDING})


@dataclass(frozen=True)
class PersonResend:
    campaign_id: str
    user_id: str
    delivery_id: int
    status: Status
    old: Address
    new: Address
    done: bool = False

    @property
    def changes_contact(self) -> bool:
        return self.old != self.new


def new_address(email: str | None, phone: str | None) -> Address | None:
    """A corrected contact as given by an operator, normalised as in ``enqueue``; InputError if invalid."""
    if email and phone:
        raise InputError(_("give either --email or --phone, not both"))
    try:
        if email:
            return Address(Channel.EMAIL, check_email(email)[0])
        if phone:
            return Address(Channel.SMS, check_phone(phone))
    except FieldError as exc:
        raise InputError(str(exc)) from None
    return None


def sms_parts_for(rt: Runtime, record: CampaignRecord, delivery: Delivery) -> int:
    """The SMS this person would get, rendered now; InputError when it is longer than the campaign allows."""
    units, parts = sms.measure(rt.renderer(record).sms(delivery.fields, delivery.receipt_url))
    limit = record.campaign.sms_max_chars
    if units > limit:
        raise InputError(
            _("sms: rendered message is {units} characters, the campaign allows {limit}").format(
                units=units, limit=limit
            )
        )
    return parts


def _check(
    rt: Runtime, campaign_id: str, user_id: str, email: str | None, phone: str | None
) -> tuple[CampaignRecord, Delivery, Address, int | None]:
    given = new_address(email, phone)
    record = rt.ledger.campaign(campaign_id, fresh=True)
    if record is None:
        raise Refused(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id))
    if record.state == "cancelled":
        raise Refused(_("campaign '{campaign}' is cancelled").format(campaign=campaign_id))
    delivery = rt.ledger.person_by_user(campaign_id, user_id)
    if delivery is None:
        raise Refused(
            _("no person with user_id '{user}' in campaign '{campaign}'").format(user=user_id, campaign=campaign_id)
        )
    if delivery.status in NEVER:
        raise Refused(_("user_id '{user}' complained: never sent anything again").format(user=user_id))
    if delivery.status in IN_FLIGHT:
        raise Refused(
            _("user_id '{user}' is being sent right now (sending); look again in a few minutes").format(user=user_id)
        )
    old = Address(delivery.channel, delivery.contact)
    target = given or old
    suppressed = delivery.status is Status.SUPPRESSED or rt.ledger.is_suppressed(old.contact) is not None
    if suppressed and target == old:
        raise Refused(
            _("user_id '{user}': the contact is suppressed; give a new one with --email or --phone").format(
                user=user_id
            )
        )
    if target != old and rt.ledger.is_suppressed(target.contact) is not None:
        raise Refused(_("the new contact {contact} is on the suppression list").format(contact=target.masked()))
    parts = sms_parts_for(rt, record, delivery) if target.channel is Channel.SMS else None
    return record, delivery, target, parts


def plan_person_resend(
    rt: Runtime, campaign_id: str, user_id: str, *, email: str | None = None, phone: str | None = None
) -> PersonResend:
    """What :func:`resend_person` would do, checked, changing nothing (for the confirmation step)."""
    _record, delivery, target, _parts = _check(rt, campaign_id, user_id, email, phone)
    old = Address(delivery.channel, delivery.contact)
    return PersonResend(campaign_id, user_id, delivery.id, delivery.status, old, target)


def resend_person(
    rt: Runtime,
    campaign_id: str,
    user_id: str,
    dispatch: Callable[[list[int]], None] | None,
    *,
    reason: str,
    email: str | None = None,
    phone: str | None = None,
    who: str,
) -> PersonResend:
    """Queue this one person again (to the corrected contact if one is given), then hand it to the broker."""
    # Operators write what the caller said; a contact typed into the reason is masked like any other text.
    reason = redact(" ".join(reason.split()))
    if not reason:
        raise InputError(_("--reason: say why (it goes to the audit trail)"))
    _record, delivery, target, parts = _check(rt, campaign_id, user_id, email, phone)
    old = Address(delivery.channel, delivery.contact)
    moved = rt.ledger.readdress(delivery, target, actor=who, why=f"resend: {reason[:500]}", sms_parts=parts)
    if moved is None:
        raise Refused(f"user_id '{user_id}' changed while resending; nothing done, look again")
    if dispatch is not None:
        dispatch([delivery.id])
        rt.ledger.mark_dispatched([delivery.id], clock.now())
    log.info("campaign %s: one person resent by %s (%s -> %s)", campaign_id, who, old.masked(), target.masked())
    return PersonResend(campaign_id, user_id, delivery.id, delivery.status, old, target, done=True)
