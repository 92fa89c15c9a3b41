"""Jinja2 rendering of the Japanese messages.

A campaign's templates are snapshotted into the ledger at enqueue time, so every worker on every host
renders exactly what was checked, even if the files change during the campaign.

Templates are code run on every worker, so they run in Jinja2's immutable sandbox (SPEC §12): no access
to private or internal attributes (``__globals__``, ``__subclasses__``, ...), no mutation of the values
handed in, bounded ranges and repetitions. Names that can only be an escape attempt are refused when the
template is compiled, so ``check`` and ``enqueue`` name the file before anything is sent; the sandbox
itself stops whatever else is tried while rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dispatcher.core.campaign import Campaign
from dispatcher.core.clock import JST
from dispatcher.core.errors import ConfigError

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
_NOT_FRAMEABLE = (
    nodes.Call,
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.Include,
    nodes.Extends,
    nodes.Import,
    nodes.FromImport,
    nodes.Assign,
    nodes.AssignBlock,
    nodes.With,
    nodes.Scope,
    nodes.OverlayScope,
    nodes.EvalContextModifier,
    nodes.ScopedEvalContextModifier,
)


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
    """The installed template folders: the wheel's copy, or the repository's in a source checkout.

    Never the working directory: whoever can write there would choose the code every worker runs.
    """
    return [packaged_data("templates")]


def packaged_data(name: str) -> Path:
    """A folder shipped with the package: ``dispatcher/_data/NAME`` in a wheel, else the repository's own
    ``NAME/`` beside the package (an editable install or a checkout, recognised by its pyproject.toml)."""
    here = Path(__file__).resolve().parents[1]  # the dispatcher package (this module is in sending/)
    wheel = here / "_data" / name
    if wheel.is_dir() or not (here.parent / "pyproject.toml").is_file():
        return wheel
    return here.parent / name


def deployment_templates(campaign_file: Path) -> Path | None:
    """``templates/`` beside the ``config/`` folder that holds the campaign file (SPEC §9), if it is in one."""
    for folder in campaign_file.parents:
        if folder.name == "config":
            return folder.parent / "templates"
    return None


def load_template_sources(campaign: Campaign, templates_dir: Path | None = None) -> dict[str, str]:
    candidates = [templates_dir] if templates_dir else []
    if campaign.source is not None:
        beside = deployment_templates(campaign.source)
        if beside is not None:
            candidates.append(beside)
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


#: Longest string or list a template may build by repetition (``"x" * n``), and largest exponent.
MAX_REPEAT = 100_000
MAX_EXPONENT = 64


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with repetition and powers bounded too (a worker's memory is shared)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent above {MAX_EXPONENT} is not allowed")
        if operator == "*":
            sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
            counts = [v for v in (left, right) if isinstance(v, int)]
            if sizes and counts and sizes[0] * counts[0] > MAX_REPEAT:
                raise SecurityError(f"repetition longer than {MAX_REPEAT} is not allowed")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _bounded_sizes(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


#: Globals a notice has no use for and that cost work at will (``lipsum(n=200000)``, ``range`` in loops).
_DROPPED_GLOBALS = ("range", "lipsum", "cycler", "joiner")
#: Loops inside loops multiply: a notice never needs them, and over a long field they are quadratic.
MAX_LOOP_DEPTH = 1


def _bounded_sizes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Widths and counts given to a method or filter (``center(300000000)``, ``"%*s"|format(10**8, "")``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_REPEAT:
            raise SecurityError(f"a size above {MAX_REPEAT} is not allowed")


def _bounded_filter(function: Any) -> Any:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _bounded_sizes(args[1:], kwargs)  # the first is the value being filtered (an amount may be large)
        return function(*args, **kwargs)

    for marker in ("jinja_pass_arg",):  # keep Jinja's pass_context/pass_environment marks
        if hasattr(function, marker):
            setattr(bounded, marker, getattr(function, marker))
    return bounded


def _loop_too_deep(tree: nodes.Template) -> int | None:
    """The line of a loop nested deeper than :data:`MAX_LOOP_DEPTH`, if any."""

    def walk(node: nodes.Node, depth: int) -> int | None:
        for child in node.iter_child_nodes():
            inner = depth + isinstance(child, nodes.For)
            if inner > MAX_LOOP_DEPTH:
                return child.lineno
            found = walk(child, inner)
            if found is not None:
                return found
        return None

    return walk(tree, 0)


def _escape_attempt(tree: nodes.Template) -> int | None:
    """The line of a private or dunder name reached through ``.x``, ``["x"]`` or ``|attr("x")``: only an
    escape from the sandbox would want one. (The name is not quoted back: it is the template's text.)"""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name: object = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            first = node.args[0]
            name = first.value if isinstance(first, nodes.Const) else None
        else:
            name = None
        if isinstance(name, str) and name.startswith("_"):
            return node.lineno
    return None


def _unquoted(message: str, ctx: dict[str, Any]) -> str:
    """The error text, unless it quotes one of the recipient's values (``{{ text[receipt_url] }}`` names
    the missing key, which is the URL): the message names the variable, never a value."""
    values = [ctx.get(k) for k in ("receipt_url", "name", "inquiry_no")] + list((ctx.get("extra") or {}).values())
    if any(isinstance(v, str) and len(v) >= 3 and v in message for v in values):
        return "undefined value (the error text quoted a recipient's value and is withheld)"
    return message


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
        self.env = _Sandbox(
            loader=jinja2.DictLoader(sources),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        for name in _DROPPED_GLOBALS:
            self.env.globals.pop(name, None)
        self.env.filters = {name: _bounded_filter(f) for name, f in self.env.filters.items()}
        self.env.filters.update(jp_date=jp_date, jp_short_date=jp_short_date, jp_time=jp_time, yen=yen)
        try:
            self._subject = self.env.get_template(EMAIL_SUBJECT)
            self._text = self.env.get_template(EMAIL_TEXT)
            self._html = self.env.get_template(EMAIL_HTML) if EMAIL_HTML in sources else None
            self._sms = self.env.get_template(SMS_TEXT)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"template {exc.name}, line {exc.lineno}: {exc.message}") from None
        for name, source in sources.items():
            tree = self.env.parse(source, name)
            deep = _loop_too_deep(tree)
            if deep is not None:
                raise ConfigError(f"template {name}, line {deep}: a loop inside a loop is not allowed in a notice")
            escape = _escape_attempt(tree)
            if escape is not None:
                raise ConfigError(
                    f"template {name}, line {escape}: refused by the sandbox: a private or internal "
                    "attribute (a name starting with '_') is not available to templates"
                )
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
        printed = {
            id(n)
            for out in tree.find_all(nodes.Output)
            for n in out.nodes
            if isinstance(n, nodes.Name) and n.name == "receipt_url"
        }
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
        except SecurityError as exc:
            # Names an attribute or operation and a type, never a value.
            raise ConfigError(f"template {template.name}: refused by the sandbox: {exc}") from None
        except jinja2.TemplateError as exc:
            raise ConfigError(f"template {template.name}: {_unquoted(exc.message or '', ctx)}") from None
        except Exception as exc:
            # A filter or operator failed on a value (e.g. int() of a name): its text may quote that value.
            raise ConfigError(f"template {template.name}: {type(exc).__name__} while rendering") from None

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
