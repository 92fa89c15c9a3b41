"""Resend to one person from their page: an explicit operator act in two steps (check, then confirm).

The first POST checks what would happen (the same checks as ``dispatcher resend --user``) and shows it,
old and new contact masked. What was asked is kept on the server for ten minutes under a random key, so
the confirmation page carries that key only, not the typed contact; the second POST (``confirm``) takes
it, once, in the same session, and queues the one more message. Who did it (``dashboard:<session>``) and
why go to the audit trail.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from dispatcher.broker import keys
from dispatcher.core.errors import DispatcherError, InputError
from dispatcher.operations.person_resend import PersonResend, plan_person_resend, resend_person

from . import params
from .auth import action, auth_of, principal_of
from .people import MAX_QUERY, MAX_USER_ID, person_url
from .views import render, runtime_of

#: Longest reason kept (the audit trail keeps 1,000 characters of detail).
MAX_REASON = 500
#: How long a checked resend waits for its confirmation.
PENDING_SECONDS = 600


def _keep(request: Request, asked: dict[str, Any]) -> str:
    nonce = secrets.token_urlsafe(24)
    value = json.dumps({**asked, "who": principal_of(request).who, "until": time.time() + PENDING_SECONDS})
    auth_of(request).sessions.store.put(keys.dashboard_pending_resend(nonce), value, PENDING_SECONDS)
    return nonce


def _take(request: Request, nonce: object) -> dict[str, Any] | None:
    """The resend this session checked under ``nonce``, once (a second confirmation finds nothing)."""
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 64:
        return None
    store = auth_of(request).sessions.store
    name = keys.dashboard_pending_resend(nonce)
    raw = store.take(name)  # atomic: a double click confirms once
    if raw is None:
        return None
    asked: dict[str, Any] = json.loads(raw)
    if asked.get("who") != principal_of(request).who or float(asked.get("until", 0)) < time.time():
        return None
    return asked


def _field(form: Any, name: str, limit: int) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] if value else None


def _refused(request: Request, status_code: int, message: str) -> Response:
    if principal_of(request).via == "bearer":
        return JSONResponse({"error": message}, status_code=status_code)
    return render(request, "error.html", status_code=status_code, title="再送できませんでした", message=message)


def _json(plan: PersonResend) -> dict[str, object]:
    return {
        "campaign": plan.campaign_id,
        "user_id": plan.user_id,
        "status": plan.status.value,
        "from": plan.old.masked(),
        "to": plan.new.masked(),
        "channel": plan.new.channel.value,
        "done": plan.done,
    }


@action
async def resend_person_action(request: Request) -> Response:
    """POST ``user_id``, ``reason``, optional ``email`` or ``phone``: the check. POST ``confirm``: do it.

    A Bearer call (a script) does it in one step with ``confirm=1`` beside the fields."""
    campaign_id = params.campaign_id(request)
    if campaign_id is None:
        return _refused(request, 404, "そのキャンペーンは台帳にありません。")
    rt = runtime_of(request)
    if await run_in_threadpool(rt.ledger.campaign, campaign_id) is None:
        return _refused(request, 404, f"キャンペーン「{campaign_id}」は台帳にありません。")
    form = await request.form()
    bearer = principal_of(request).via == "bearer"
    confirming = form.get("confirm")
    if confirming is not None and not bearer:
        asked = _take(request, confirming)
        if asked is None or asked.get("campaign") != campaign_id:
            return _refused(request, 409, "確認の期限が切れたか、すでに実行済みです。もう一度やり直してください。")
    else:
        parsed = _asked(form, campaign_id)
        if isinstance(parsed, str):
            return _refused(request, 400, parsed)
        asked = parsed
    user_id, email, phone, reason = asked["user_id"], asked["email"], asked["phone"], asked["reason"]
    do_it = confirming is not None
    try:
        if not do_it:
            plan = await run_in_threadpool(
                lambda: plan_person_resend(rt, campaign_id, user_id, email=email, phone=phone)
            )
        else:
            dispatch = request.app.state.dispatch
            who = principal_of(request).who
            plan = await run_in_threadpool(
                lambda: resend_person(
                    rt, campaign_id, user_id, dispatch, reason=reason, email=email, phone=phone, who=who
                )
            )
    except InputError as exc:  # an invalid new contact: the reason names the field, never the value
        return _refused(request, 400, f"新しい連絡先が使えません: {exc}")
    except DispatcherError as exc:
        return _refused(request, 409, f"この人には再送できません: {exc}")
    if bearer:
        return JSONResponse(_json(plan))
    if not do_it:
        return render(
            request,
            "person_resend.html",
            campaign_id=campaign_id,
            plan=plan,
            reason=reason,
            nonce=_keep(request, asked),
            person_url=person_url(campaign_id, user_id),
        )
    return RedirectResponse(f"{person_url(campaign_id, user_id)}?done={quote('resend')}", status_code=303)


def _asked(form: Any, campaign_id: str) -> dict[str, Any] | str:
    """The fields of the first step, or what is wrong with them (in the operator's words)."""
    user_id = _field(form, "user_id", MAX_USER_ID + 1)
    email, phone = _field(form, "email", MAX_QUERY + 1), _field(form, "phone", MAX_QUERY + 1)
    reason = _field(form, "reason", MAX_REASON)
    if user_id is None or len(user_id) > MAX_USER_ID:
        return "利用者IDがありません。"
    if email and phone:
        return "新しい連絡先はメールか電話番号のどちらか一つにしてください。"
    if any(v is not None and len(v) > MAX_QUERY for v in (email, phone)):
        return "新しい連絡先が長すぎます。"
    if reason is None:
        return "再送の理由を入力してください（監査記録に残ります）。"
    return {"campaign": campaign_id, "user_id": user_id, "email": email, "phone": phone, "reason": reason}
