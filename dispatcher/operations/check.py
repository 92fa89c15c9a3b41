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
from dispatcher.core.i18n import N_, _
from dispatcher.core.settings import Settings
from dispatcher.operations.plan import make_plan
from dispatcher.sending.render import Renderer, load_template_sources


class Level(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


#: How a level is shown in the table (translated there); JSON carries the value.
LEVEL_TEXT = {Level.PASS: N_("PASS"), Level.WARN: N_("WARN"), Level.FAIL: N_("FAIL")}


@dataclass(frozen=True)
class Finding:
    #: The check's English name, the same in every language (JSON ``check``); shown with ``_()``.
    name: str
    level: Level
    #: Why, in the user's language (``check --json`` builds its findings in English).
    reason: str


_DOMESTIC_NUMBER = re.compile(r"^0\d{1,4}-?\d{1,4}-?\d{3,4}$")


def _jst(instant: Any) -> str:
    return str(instant.astimezone(clock.JST).strftime("%Y-%m-%d %H:%M JST"))


def sms_route_finding(settings: Settings) -> Finding:
    provider, sender = settings.sms_provider, settings.sms_sender
    if provider in ("sns", "sms-voice-v2") and _DOMESTIC_NUMBER.match(sender):
        shown = settings.sms_sender_id or settings.sms_origination_number or "a sender ID chosen by AWS"
        return Finding(
            N_("sms sender"),
            Level.WARN,
            _(
                "the notice announces {sender}, but an AWS route to Japan is international: recipients "
                "see {shown} (or a foreign number), never {sender}; many users block overseas SMS "
                "(SoftBank by default). Use the domestic `http` gateway to show the announced number."
            ).format(sender=sender, shown=shown),
        )
    if provider == "http":
        digits = re.sub(r"[^0-9]", "", sender)
        return Finding(N_("sms sender"), Level.PASS, _("domestic gateway sends from {number}").format(number=digits))
    if provider == "outbox":
        return Finding(N_("sms sender"), Level.WARN, _("SMS provider is `outbox`: SMS are written to files, not sent"))
    return Finding(N_("sms sender"), Level.PASS, _("sender {sender}").format(sender=sender))


def email_route_findings(settings: Settings) -> list[Finding]:
    if settings.email_provider == "outbox":
        return [Finding(N_("email sender"), Level.WARN, _("e-mail provider is `outbox`: e-mails are written to files"))]
    if settings.email_provider == "smtp":
        if not settings.smtp_url:
            return [Finding(N_("email sender"), Level.FAIL, _("DISPATCHER_SMTP_URL is not set"))]
        relay = _("SMTP relay, From {sender}").format(sender=settings.email_sender)
        return [Finding(N_("email sender"), Level.PASS, relay)]
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
                N_("ses identity"),
                Level.PASS if verified else Level.FAIL,
                _("{domain} is verified for sending").format(domain=domain)
                if verified
                else _("neither {sender} nor {domain} is verified in SES").format(
                    sender=settings.email_sender, domain=domain
                ),
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
                        N_("ses rate"),
                        Level.FAIL,
                        _("SES MaxSendRate is {max_rate:g}/s; set DISPATCHER_EMAIL_RATE ≤ {max_rate:g}").format(
                            max_rate=max_rate
                        ),
                    )
                )
            else:
                findings.append(
                    Finding(
                        N_("ses rate"),
                        Level.PASS,
                        _("DISPATCHER_EMAIL_RATE {rate:g}/s ≤ MaxSendRate {max_rate:g}/s").format(
                            rate=settings.email_rate, max_rate=max_rate
                        ),
                    )
                )
    except (BotoCoreError, ClientError, ConfigError) as exc:
        asked = _("could not ask SES: {error}").format(error=type(exc).__name__)
        findings.append(Finding(N_("ses identity"), Level.WARN, asked))
    findings.append(
        Finding(
            N_("spf/dkim/dmarc"),
            Level.WARN,
            _(
                "not checked from here (no DNS): confirm SPF, DKIM and DMARC for {domain} "
                "(docomo asks for DMARC pass and SPF on the From domain)"
            ).format(domain=domain),
        )
    )
    return findings


def campaign_findings(campaign: Campaign) -> list[Finding]:
    now = clock.now()
    findings = []
    if campaign.send_by <= now:
        passed = _("send_by {send_by} has passed").format(send_by=campaign.send_by.isoformat())
        findings.append(Finding(N_("send_by"), Level.FAIL, passed))
    else:
        hours = f"{(campaign.send_by - now).total_seconds() / 3600:,.1f}"
        findings.append(Finding(N_("send_by"), Level.PASS, _("{hours} hours left until send_by").format(hours=hours)))
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
        none = _("no row of {rows} was accepted").format(rows=f"{result.rows:,}")
        findings.append(Finding(N_("recipients"), Level.FAIL, none))
    elif result.rejected:
        reasons = Counter(r.reason.split(":")[0] for r in result.rejects)
        top = ", ".join(f"{field} ×{n:,}" for field, n in reasons.most_common(5))
        findings.append(
            Finding(
                N_("recipients"),
                Level.WARN,
                _("{rejected} of {rows} rows rejected ({top}); see {path}").format(
                    rejected=f"{result.rejected:,}", rows=f"{result.rows:,}", top=top, path=result.rejects_path
                ),
            )
        )
    else:
        valid = _("all {rows} rows valid ({encoding})").format(rows=f"{result.rows:,}", encoding=result.encoding)
        findings.append(Finding(N_("recipients"), Level.PASS, valid))
    rendered = _("e-mail and SMS rendered for all {accepted} accepted rows").format(accepted=f"{result.accepted:,}")
    findings.append(Finding(N_("templates"), Level.PASS, rendered))
    if result.by_channel["sms"]:
        cost = ""
        if settings.sms_price_per_part is not None:
            cost = _(", estimated cost {cost}").format(cost=f"{result.sms_parts * settings.sms_price_per_part:,.2f}")
        findings.append(
            Finding(
                N_("sms length"),
                Level.PASS,
                _("{sms} SMS in {parts} parts, longest {longest} of {most} characters").format(
                    sms=f"{result.by_channel['sms']:,}",
                    parts=f"{result.sms_parts:,}",
                    longest=result.sms_max_units,
                    most=campaign.sms_max_chars,
                )
                + cost,
            )
        )
    if result.flagged:
        findings.append(
            Finding(
                N_("legacy addresses"),
                Level.WARN,
                _(
                    "{count} legacy carrier addresses (e.g. a..b.@docomo.ne.jp) accepted; some relays refuse them"
                ).format(count=f"{result.flagged:,}"),
            )
        )
    return findings, result


def run_checks(campaign_file: Path, recipients: Path | None, settings: Settings) -> list[Finding]:
    try:
        campaign = load_campaign(campaign_file)
        templates = load_template_sources(campaign)
        Renderer(campaign, templates, settings.email_sender)
    except ConfigError as exc:
        return [Finding(N_("campaign"), Level.FAIL, str(exc))]
    compiled = _("{campaign}: templates '{template}' compile").format(campaign=campaign.id, template=campaign.template)
    findings = [Finding(N_("campaign"), Level.PASS, compiled)]
    findings += campaign_findings(campaign)
    pending: dict[str, tuple[int, int]] = {}
    if recipients is not None:
        try:
            rows, result = recipients_findings(campaign, recipients, settings)
        except (ConfigError, InputError) as exc:
            rows, result = [Finding(N_("recipients"), Level.FAIL, str(exc))], None
        findings += rows
        if result is not None:
            pending = {"email": (result.by_channel["email"], 0), "sms": (result.by_channel["sms"], result.sms_parts)}
    findings += email_route_findings(settings)
    findings.append(sms_route_finding(settings))
    if pending:
        plan = make_plan(campaign, pending, settings, clock.now())
        finish = _jst(plan.finish) if plan.finish else _("now")
        projected = _("projected finish {finish} vs send_by {send_by}").format(
            finish=finish, send_by=campaign.send_by.isoformat()
        )
        findings.append(
            Finding(
                N_("deadline"),
                Level.PASS if plan.will_finish else Level.FAIL,
                projected + ("" if plan.will_finish else _(": rates and quotas cannot finish in time")),
            )
        )
    return findings
