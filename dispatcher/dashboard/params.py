"""Query and path values as the dashboard accepts them: anything else is a 400 (or, for an id, a 404), never
a 500 from deep inside a query. Refusals never quote the value back."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request

#: Campaign ids are at most this long (the ledger's column and the campaign file's rule).
MAX_CAMPAIGN_ID = 64
#: Ids in the ledger are 64-bit; more digits than this is not an id.
MAX_DIGITS = 18

E = TypeVar("E", bound=Enum)


def bad(name: str, why: str) -> HTTPException:
    return HTTPException(400, f"bad query parameter '{name}': {why}")


def one(request: Request, name: str) -> str | None:
    """The single value of ``name``, None when absent; given twice it is ambiguous, so refused."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise bad(name, "given more than once")
    return values[0] if values else None


def number(request: Request, name: str) -> int | None:
    """A non-negative whole number in ASCII digits (no sign, no full-width or superscript digits)."""
    value = one(request, name)
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS):
        raise bad(name, f"expected a whole number of at most {MAX_DIGITS} digits")
    return int(value)


def choice(request: Request, name: str, kind: type[E]) -> E | None:
    value = one(request, name)
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise bad(name, "expected one of " + ", ".join(str(k.value) for k in kind)) from None


def among(request: Request, name: str, allowed: tuple[int, ...], default: int) -> int:
    value = number(request, name)
    if value is None:
        return default
    if value not in allowed:
        raise bad(name, "expected one of " + ", ".join(map(str, allowed)))
    return value


def campaign_id(request: Request) -> str | None:
    """The campaign id of the path, or None when it cannot be one (too long, control characters)."""
    value = request.path_params.get("campaign_id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CAMPAIGN_ID or not value.isprintable():
        return None
    return value
