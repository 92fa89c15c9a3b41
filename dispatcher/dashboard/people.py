"""The person desk on the dashboard: the search form's POST, the person page, and its JSON.

The search is a POST with the session's CSRF token, so what was searched (possibly a phone number or an
e-mail address) travels in the request body only: never in a URL, a redirect or the access log. One match
redirects to the person's page, whose URL holds the user id and nothing else; several are listed; none
is a 404 page that does not repeat what was searched.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from dispatcher.core.errors import InputError
from dispatcher.operations.person import By, PersonView, find_people, people_json, person_json

from . import params
from .auth import action, api, page, principal_of
from .views import not_found, render, runtime_of

#: User ids are at most this long (the ledger's column).
MAX_USER_ID = 128
#: Longest search text accepted (an e-mail address is at most 254 characters).
MAX_QUERY = 320


def person_url(campaign_id: str, user_id: str) -> str:
    return f"/campaigns/{quote(campaign_id, safe='')}/people/{quote(user_id, safe='')}"


def _user_id(request: Request) -> str | None:
    value = request.path_params.get("user_id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_USER_ID or not value.isprintable():
        return None
    return value


async def _known_campaign(request: Request) -> str | None:
    campaign_id = params.campaign_id(request)
    if campaign_id is None:
        return None
    record = await run_in_threadpool(runtime_of(request).ledger.campaign, campaign_id)
    return None if record is None else campaign_id


def _wants_json(request: Request) -> bool:
    return principal_of(request).via == "bearer" or request.url.path.startswith("/api/")


def _missing_person(request: Request, campaign_id: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": "no such person in the campaign"}, status_code=404)
    return render(
        request,
        "error.html",
        status_code=404,
        title="見つかりません",
        message=f"キャンペーン「{campaign_id}」に該当する人は見つかりませんでした。",
    )


@action
async def search(request: Request) -> Response:
    """POST ``by`` (user | inquiry | contact) and ``q``; the answer never repeats ``q``."""
    campaign_id = await _known_campaign(request)
    if campaign_id is None:
        return not_found(request, params.campaign_id(request))
    form = await request.form()
    by_value, query = form.get("by"), form.get("q")
    if by_value not in {b.value for b in By} or not isinstance(query, str) or not query.strip():
        return _bad_search(request, "検索の種類と検索する値を入力してください。")
    if len(query) > MAX_QUERY:
        return _bad_search(request, "検索する値が長すぎます。")
    rt = runtime_of(request)
    try:
        views = await run_in_threadpool(find_people, rt.ledger, campaign_id, By(by_value), query)
    except InputError as exc:
        return _bad_search(request, f"電話番号またはメールアドレスとして読めません（{exc}）。")
    if not views:
        return _missing_person(request, campaign_id)
    if principal_of(request).via == "bearer":
        return JSONResponse(people_json(views))
    if len(views) == 1:
        return RedirectResponse(person_url(campaign_id, views[0].user_id), status_code=303)
    return render(request, "people.html", campaign_id=campaign_id, views=views, person_url=person_url)


def _bad_search(request: Request, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=400)
    return render(request, "error.html", status_code=400, title="検索できませんでした", message=message)


async def _load(request: Request) -> tuple[str, PersonView] | Response:
    campaign_id = await _known_campaign(request)
    user_id = _user_id(request)
    if campaign_id is None:
        if _wants_json(request):
            return JSONResponse({"error": "no such campaign in the ledger"}, status_code=404)
        return not_found(request, params.campaign_id(request))
    if user_id is None:
        return _missing_person(request, campaign_id)
    views = await run_in_threadpool(find_people, runtime_of(request).ledger, campaign_id, By.USER, user_id)
    if not views:
        return _missing_person(request, campaign_id)
    return campaign_id, views[0]


@page
async def person_page(request: Request) -> Response:
    loaded = await _load(request)
    if isinstance(loaded, Response):
        return loaded
    campaign_id, view = loaded
    return render(request, "person.html", campaign_id=campaign_id, person=view, data=person_json(view))


@api
async def person_api(request: Request) -> Response:
    loaded = await _load(request)
    if isinstance(loaded, Response):
        return loaded
    data: dict[str, Any] = person_json(loaded[1])
    return JSONResponse(data)
