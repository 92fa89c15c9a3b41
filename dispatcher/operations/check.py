"""``dispatcher check``: preflight before a campaign sends (SPEC §8).

Each finding is pass / warn / fail with a reason. Nothing is sent and nothing is written to the ledger.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dispatcher.core import clock
from dispatcher.core.campaign import Campaign, load_campaign
from dispatcher.core.errors import ConfigError, InputError
from dispatcher.core.i18n import _
from dispatcher.core.settings import Settings
from dispatcher.operations.plan import make_plan
from dispatcher.sending.render import Renderer, load_template_sources


class Level(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    name: str
    level: Level
    reason: str


_DOMESTIC_NUMBER = re.compile(r"^0\d{1,4}-?\d{1,4}-?\d{3,4}$")


def _jst(instant: Any) -> str:
    return str(instant.astimezone(clock.JST).strftime("%Y-%m-%d %H:%M JST"))


def sms_route_finding(settings: Settings) -> Finding:
    provider, sender = settings.sms_provider, settings.sms_sender
    if provider in ("sns", "sms-voice-v2") and _DOMESTIC_NUMBER.match(sender):
        shown = settings.sms_sender_id or settings.sms_origination_number or "a sender ID chosen by AWS"
        return Finding(
            "sms sender",
            Level.WARN,
            f"the notice announces {sender}, but an AWS route to Japan is international: recipients "
            f"see {shown} (or a foreign number), never {sender}; many users block overseas SMS "
            "(SoftBank by default). Use the domestic `http` gateway to show the announced number.",
        )
    if provider == "http":
        return Finding("sms sender", Level.PASS, f"domestic gateway sends from {re.sub(r'[^0-9]', '', sender)}")
    if provider == "outbox":
        return Finding("sms sender", Level.WARN, "SMS provider is `outbox`: SMS are written to files, not sent")
    return Finding("sms sender", Level.PASS, f"sender {sender}")


def email_route_findings(settings: Settings) -> list[Finding]:
    if settings.email_provider == "outbox":
        return [Finding("email sender", Level.WARN, "e-mail provider is `outbox`: e-mails are written to files")]
    if settings.email_provider == "smtp":
        if not settings.smtp_url:
            return [Finding("email sender", Level.FAIL, "DISPATCHER_SMTP_URL is not set")]
        return [Finding("email sender", Level.PASS, f"SMTP relay, From {settings.email_sender}")]
    return ses_findings(settings)


def ses_findings(settings: Settings) -> list[Finding]:
    from botocore.exceptions import BotoCoreError, ClientError

    from dispatcher.providers import aws

    findings = []
    domain = settings.email_sender.rpartition("@")[2]
    try:
        client = aws.client("sesv2", settings)
        verified = False
        for identity in (settings.email_sender, domain):
            try:
                found = client.get_email_identity(EmailIdentity=identity)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NotFoundException":
                    continue
                raise
            verified = (
                verified
                or bool(found.get("VerifiedForSendingStatus"))
                or (found.get("VerificationStatus") == "SUCCESS")
            )
        findings.append(
            Finding(
                "ses identity",
                Level.PASS if verified else Level.FAIL,
                f"{domain} is verified for sending"
                if verified
                else f"neither {settings.email_sender} nor {domain} is verified in SES",
            )
        )
        try:
            quota = client.get_account().get("SendQuota", {})
        except ClientError:
            quota = {}
        max_rate = quota.get("MaxSendRate")
        if max_rate:
            if settings.email_rate is None or settings.email_rate > max_rate:
                findings.append(
                    Finding(
                        "ses rate",
                        Level.FAIL,
                        f"SES MaxSendRate is {max_rate:g}/s; set DISPATCHER_EMAIL_RATE ≤ {max_rate:g}",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "ses rate",
                        Level.PASS,
                        f"DISPATCHER_EMAIL_RATE {settings.email_rate:g}/s ≤ MaxSendRate {max_rate:g}/s",
                    )
                )
    except (BotoCoreError, ClientError, ConfigError) as exc:
        findings.append(Finding("ses identity", Level.WARN, f"could not ask SES: {type(exc).__name__}"))
    findings.append(
        Finding(
            "spf/dkim/dmarc",
            Level.WARN,
            f"not checked from here (no DNS): confirm SPF, DKIM and DMARC for {domain} "
            "(docomo asks for DMARC pass and SPF on the From domain)",
        )
    )
    return findings


def campaign_findings(campaign: Campaign) -> list[Finding]:
    now = clock.now()
    findings = []
    if campaign.send_by <= now:
        findings.append(Finding("send_by", Level.FAIL, f"send_by {campaign.send_by.isoformat()} has passed"))
    else:
        findings.append(
            Finding(
                "send_by",
                Level.PASS,
                f"{(campaign.send_by - now).total_seconds() / 3600:,.1f} hours left until send_by",
            )
        )
    if campaign.send_from is not None:
        findings.append(send_from_finding(campaign, now))
    return findings


def send_from_finding(campaign: Campaign, now: Any) -> Finding:
    assert campaign.send_from is not None
    if campaign.send_from > now:
        hours = (campaign.send_from - now).total_seconds() / 3600
        reason = _("sending starts at send_from {at} ({hours} hours from now); lists enqueued before wait").format(
            at=_jst(campaign.send_from), hours=f"{hours:,.1f}"
        )
    else:
        reason = _("send_from {at} has passed: what is enqueued leaves at once").format(at=_jst(campaign.send_from))
    return Finding("send_from", Level.PASS, reason)


def recipients_findings(campaign: Campaign, recipients: Path, settings: Settings) -> tuple[list[Finding], Any]:
    from dispatcher.intake.enqueue import enqueue_campaign

    result = enqueue_campaign(campaign, recipients, dry_run=True, settings=settings, thorough=True)
    findings = []
    if result.accepted == 0:
        findings.append(Finding("recipients", Level.FAIL, f"no row of {result.rows:,} was accepted"))
    elif result.rejected:
        reasons = Counter(r.reason.split(":")[0] for r in result.rejects)
        top = ", ".join(f"{field} ×{n:,}" for field, n in reasons.most_common(5))
        findings.append(
            Finding(
                "recipients",
                Level.WARN,
                f"{result.rejected:,} of {result.rows:,} rows rejected ({top}); see {result.rejects_path}",
            )
        )
    else:
        findings.append(Finding("recipients", Level.PASS, f"all {result.rows:,} rows valid ({result.encoding})"))
    findings.append(
        Finding("templates", Level.PASS, f"e-mail and SMS rendered for all {result.accepted:,} accepted rows")
    )
    if result.by_channel["sms"]:
        cost = ""
        if settings.sms_price_per_part is not None:
            cost = f", estimated cost {result.sms_parts * settings.sms_price_per_part:,.2f}"
        findings.append(
            Finding(
                "sms length",
                Level.PASS,
                f"{result.by_channel['sms']:,} SMS in {result.sms_parts:,} parts, longest "
                f"{result.sms_max_units} of {campaign.sms_max_chars} characters{cost}",
            )
        )
    if result.flagged:
        findings.append(
            Finding(
                "legacy addresses",
                Level.WARN,
                f"{result.flagged:,} legacy carrier addresses (e.g. a..b.@docomo.ne.jp) accepted; "
                "some relays refuse them",
            )
        )
    return findings, result


def run_checks(campaign_file: Path, recipients: Path | None, settings: Settings) -> list[Finding]:
    try:
        campaign = load_campaign(campaign_file)
        templates = load_template_sources(campaign)
        Renderer(campaign, templates, settings.email_sender)
    except ConfigError as exc:
        return [Finding("campaign", Level.FAIL, str(exc))]
    findings = [Finding("campaign", Level.PASS, f"{campaign.id}: templates '{campaign.template}' compile")]
    findings += campaign_findings(campaign)
    pending: dict[str, tuple[int, int]] = {}
    if recipients is not None:
        try:
            rows, result = recipients_findings(campaign, recipients, settings)
        except (ConfigError, InputError) as exc:
            rows, result = [Finding("recipients", Level.FAIL, str(exc))], None
        findings += rows
        if result is not None:
            pending = {"email": (result.by_channel["email"], 0), "sms": (result.by_channel["sms"], result.sms_parts)}
    findings += email_route_findings(settings)
    findings.append(sms_route_finding(settings))
    if pending:
        plan = make_plan(campaign, pending, settings, clock.now())
        finish = _jst(plan.finish) if plan.finish else "now"
        findings.append(
            Finding(
                "deadline",
                Level.PASS if plan.will_finish else Level.FAIL,
                f"projected finish {finish} vs send_by {campaign.send_by.isoformat()}"
                + ("" if plan.will_finish else ": rates and quotas cannot finish in time"),
            )
        )
    return findings
