"""``POST /feedback/sns`` and ``POST /feedback/sms-gateway``: provider events over HTTPS.

These cannot carry the dashboard token; the message authenticates itself (SNS signature, the gateway's
HMAC header), which :mod:`dispatcher.feedback.http` checks, answering 400/403 to what it cannot verify.
Bodies over ``MAX_BODY`` are refused with 413 before any parsing, whether they declare a length or not.
The handlers are imported when called, so the dashboard runs (answering 503) before that module exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

HANDLER_MODULE = "dispatcher.feedback.http"
#: SNS messages are at most 256 KiB; gateway receipts are far smaller.
MAX_BODY = 512 * 1024

Handler = Callable[[bytes, Mapping[str, str]], tuple[int, str]]


def _handler(name: str) -> Handler | None:
    try:
        module = importlib.import_module(HANDLER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name in (HANDLER_MODULE, HANDLER_MODULE.rpartition(".")[0]):
            return None
        raise
    handler: Handler | None = getattr(module, name, None)
    return handler


async def _forward(request: Request, name: str) -> Response:
    handler = _handler(name)
    if handler is None:
        return PlainTextResponse("feedback endpoint not available", status_code=503)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return PlainTextResponse("body too large", status_code=413)
    body = await _read_at_most(request, MAX_BODY)
    if body is None:
        return PlainTextResponse("body too large", status_code=413)
    status, text = await run_in_threadpool(handler, body, request.headers)
    return PlainTextResponse(text, status_code=status)


async def _read_at_most(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` (a chunked body declares no length: it is counted
    as it arrives, so it never sits in memory whole)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def sns(request: Request) -> Response:
    return await _forward(request, "handle_sns")


async def sms_gateway(request: Request) -> Response:
    return await _forward(request, "handle_gateway")


routes = [
    Route("/feedback/sns", sns, methods=["POST"]),
    Route("/feedback/sms-gateway", sms_gateway, methods=["POST"]),
]
