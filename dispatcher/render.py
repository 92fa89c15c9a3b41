"""Jinja2 rendering of the Japanese messages.

A campaign's templates are snapshotted into the ledger at enqueue time, so every worker on every host
renders exactly what was checked, even if the files change during the campaign.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes

from .campaign import Campaign
from .clock import JST
from .errors import ConfigError

EMAIL_SUBJECT = "email_subject.txt"
EMAIL_TEXT = "email_body.txt"
EMAIL_HTML = "email_body.html"
SMS_TEXT = "sms.txt"
TEMPLATE_FILES = (EMAIL_SUBJECT, EMAIL_TEXT, EMAIL_HTML, SMS_TEXT)
REQUIRED_FILES = (EMAIL_SUBJECT, EMAIL_TEXT, SMS_TEXT)

_WEEKDAYS = "月火水木金土日"
#: Context names whose values are the same for every recipient of a campaign.
_PER_CAMPAIGN = frozenset({"deadline", "campaign", "text", "sender"})
#: Template constructs that could make the output depend on the receipt URL other than by printing it as is
#: (or depend on something else per render: macros and calls, includes, filter blocks, assignments).
_NOT_FRAMEABLE = (nodes.Call, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.Include, nodes.Extends,
                  nodes.Import, nodes.FromImport, nodes.Assign, nodes.AssignBlock, nodes.With, nodes.Scope,
                  nodes.OverlayScope, nodes.EvalContextModifier, nodes.ScopedEvalContextModifier)


def jp_date(value: datetime) -> str:
    local = value.astimezone(JST)
    return f"{local.year}年{local.month}月{local.day}日({_WEEKDAYS[local.weekday()]})"


def jp_short_date(value: datetime) -> str:
    local = value.astimezone(JST)
    return f"{local.month}/{local.day}"


def jp_time(value: datetime) -> str:
    return value.astimezone(JST).strftime("%H:%M")


def yen(value: int) -> str:
    return f"{value:,}円"


def templates_root() -> list[Path]:
    """Where template folders are looked for: the working directory, then the installed copy."""
    here = Path(__file__).resolve().parent
    return [Path("templates"), here / "_data" / "templates", here.parent / "templates"]


def load_template_sources(campaign: Campaign, templates_dir: Path | None = None) -> dict[str, str]:
    candidates = [templates_dir] if templates_dir else []
    if campaign.source is not None:
        candidates.append(campaign.source.parent.parent.parent / "templates")
    candidates += templates_root()
    for root in candidates:
        folder = root / campaign.template
        if folder.is_dir():
            sources = {n: (folder / n).read_text("utf-8") for n in TEMPLATE_FILES if (folder / n).is_file()}
            missing = [n for n in REQUIRED_FILES if n not in sources]
            if missing:
                raise ConfigError(f"template folder {folder}: missing {', '.join(missing)}")
            return sources
    raise ConfigError(f"campaign '{campaign.id}': template folder '{campaign.template}' not found")


@dataclass(frozen=True)
class Email:
    subject: str
    text: str
    html: str | None


class Renderer:
    """Renders one campaign's messages; thread-safe once built."""

    def __init__(self, campaign: Campaign, sources: dict[str, str], sender: str) -> None:
        self.campaign = campaign
        self.sender = sender
        self.env = jinja2.Environment(
            loader=jinja2.DictLoader(sources),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(jp_date=jp_date, jp_short_date=jp_short_date, jp_time=jp_time, yen=yen)
        try:
            self._subject = self.env.get_template(EMAIL_SUBJECT)
            self._text = self.env.get_template(EMAIL_TEXT)
            self._html = self.env.get_template(EMAIL_HTML) if EMAIL_HTML in sources else None
            self._sms = self.env.get_template(SMS_TEXT)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"template {exc.name}, line {exc.lineno}: {exc.message}") from None
        self._sms_frame = self._frame(sources[SMS_TEXT])

    def _frame(self, source: str) -> tuple[str, ...] | None:
        """The SMS text around the receipt URL, when it is the same for every recipient of the campaign.

        That holds when the template uses nothing per recipient but the URL, and the URL only as a bare
        ``{{ receipt_url }}`` (no filter, test, condition or loop on it, no macro or include around it), in a
        template that is not autoescaped. Then ``render(url) == url.join(frame)`` exactly, and an SMS costs
        a string join instead of a Jinja render (the enqueue-time length check runs once per row). The frame
        is taken from two renders with different sentinels, which must agree. None: render every time.
        """
        try:
            tree = self.env.parse(source)
        except jinja2.TemplateSyntaxError:
            return None
        if not meta.find_undeclared_variables(tree) <= _PER_CAMPAIGN | {"receipt_url"}:
            return None
        if any(True for _ in tree.find_all(_NOT_FRAMEABLE)):
            return None
        if any(f.name == "random" for f in tree.find_all(nodes.Filter)):
            return None
        printed = {id(n) for out in tree.find_all(nodes.Output) for n in out.nodes
                   if isinstance(n, nodes.Name) and n.name == "receipt_url"}
        if any(id(n) not in printed or n.ctx != "load" for n in tree.find_all(nodes.Name) if n.name == "receipt_url"):
            return None
        frames = []
        for sentinel in ("\x00<URL&1\"'>\x00", "\x00<URL&2\"'>\x00"):
            try:
                frames.append(tuple(self._sms.render(self.context({}, sentinel)).split(sentinel)))
            except Exception:  # a per-campaign value is missing: every render will say so, keep rendering
                return None
        return frames[0] if frames[0] == frames[1] else None

    def context(self, fields: dict[str, Any], receipt_url: str) -> dict[str, Any]:
        return {
            "name": fields.get("name") or "",
            "amount": fields.get("amount"),
            "category": fields.get("category") or "",
            "inquiry_no": fields.get("inquiry_no") or "",
            "extra": fields.get("extra") or {},
            "receipt_url": receipt_url,
            "deadline": self.campaign.deadline,
            "campaign": {"id": self.campaign.id, "name": self.campaign.name},
            "text": self.campaign.text,
            "sender": self.sender,
        }

    def _render(self, template: jinja2.Template, ctx: dict[str, Any]) -> str:
        try:
            return template.render(ctx)
        except jinja2.UndefinedError as exc:
            # The message names the variable, never its value.
            raise ConfigError(f"template {template.name}: {exc.message}") from None

    def email(self, fields: dict[str, Any], receipt_url: str) -> Email:
        ctx = self.context(fields, receipt_url)
        subject = " ".join(self._render(self._subject, ctx).split())
        text = self._render(self._text, ctx).strip() + "\n"
        html = self._render(self._html, ctx) if self._html is not None else None
        return Email(subject=subject, text=text, html=html)

    def sms(self, fields: dict[str, Any], receipt_url: str) -> str:
        if self._sms_frame is not None and type(receipt_url) is str:
            return receipt_url.join(self._sms_frame).strip()
        return self._render(self._sms, self.context(fields, receipt_url)).strip()
