"""A small fault-injecting HTTP proxy in front of the moto server (issue 3, "What must be shown").

Worker processes point ``AWS_ENDPOINT_URL`` at the proxy. It passes every request through to moto
untouched, except the two send calls, which it can answer itself:

- SES v2 ``SendEmail`` (``POST /v2/email/outbound-emails``, REST-JSON): the recipient is
  ``Destination.ToAddresses[0]``;
- SNS ``Publish`` (query protocol, form body ``Action=Publish``): the recipient is ``PhoneNumber``.

Controls are plain attributes, read on every request, so a test may change them while workers run:

- ``throttle_rate``: share of send calls answered with the provider's throttling error, not forwarded
  (SES v2: HTTP 429 ``x-amzn-ErrorType: TooManyRequestsException``; SNS: 400 ``<Code>Throttling</Code>``);
- ``server_error_rate``: share answered with HTTP 500 or 503, not forwarded;
- ``reject``: recipients answered with a permanent error, not forwarded (SES ``MessageRejected``,
  SNS ``InvalidParameter``);
- ``drop_after_forward``: recipients whose request is forwarded (moto stores the message) after which the
  client's connection is closed without any answer: the provider accepted, the answer was lost.

The random draws come from one seeded generator. Every send call is logged in ``attempts`` (what reached
the provider's front door, with the proxy's verdict); the ones moto accepted also in ``accepted``, stamped
with the time they arrived. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SES_SEND_PATH = "/v2/email/outbound-emails"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


@dataclass(frozen=True)
class Send:
    """One send call seen by the proxy."""

    monotonic: float
    wall: float
    service: str  # "ses" | "sns"
    recipient: str
    #: accepted | dropped (accepted by moto, answer withheld) | throttled | server-error | rejected
    #: | upstream-error (moto itself refused it)
    outcome: str


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 3) -> None:
        parts = urlsplit(upstream)
        if parts.hostname != "127.0.0.1":
            raise ValueError("the fault proxy only talks to 127.0.0.1")
        self.upstream = (parts.hostname, parts.port or 80)
        self.throttle_rate = 0.0
        self.server_error_rate = 0.0
        self.reject: set[str] = set()
        self.drop_after_forward: set[str] = set()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.attempts: list[Send] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> str:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # What happened -----------------------------------------------------------------------------
    def _record(self, send: Send) -> None:
        with self._lock:
            self.attempts.append(send)

    def sends(self, service: str | None = None) -> list[Send]:
        with self._lock:
            return [s for s in self.attempts if service is None or s.service == service]

    @property
    def accepted(self) -> list[Send]:
        """Send calls moto accepted (including those whose answer the proxy then dropped)."""
        return [s for s in self.sends() if s.outcome in ("accepted", "dropped")]

    def accepted_counts(self, service: str | None = None) -> Counter[str]:
        """Accepted sends per recipient."""
        return Counter(s.recipient for s in self.accepted if service is None or s.service == service)

    def attempt_counts(self, service: str | None = None) -> Counter[str]:
        """Every send call that reached the proxy, per recipient, whatever the answer."""
        return Counter(s.recipient for s in self.sends(service))

    def accepted_times(self, service: str | None = None) -> list[float]:
        return sorted(s.monotonic for s in self.accepted if service is None or s.service == service)

    def max_in_window(self, window: float = 1.0, service: str | None = None) -> int:
        """The largest number of accepted sends that arrived within any sliding ``window`` seconds."""
        return max_in_window(self.accepted_times(service), window)

    def achieved_rate(self, window: float = 1.0, service: str | None = None) -> float:
        """Accepted sends per second over the run: see :func:`mean_window_count`."""
        return mean_window_count(self.accepted_times(service), window) / window

    def reset(self) -> None:
        with self._lock:
            self.attempts.clear()

    # Decisions (called by the handler threads) -------------------------------------------------
    def _draw(self) -> tuple[float, float]:
        with self._lock:
            return self._random.random(), self._random.random()

    def _choose_500_or_503(self) -> int:
        with self._lock:
            return self._random.choice((500, 503))


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Max number of instants in any half-open interval [t, t + window) (two pointers over sorted times)."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def mean_window_count(times: list[float], window: float = 1.0) -> float:
    """Mean count of instants in a window [t, t + window) slid over the whole run [first, last - window].

    For a steady stream this is the rate (× window) whether sends come evenly or in bursts: a send at s
    is in the windows starting in [s - window, s], so it contributes the overlap of that range with the
    run, and the sum is divided by the run's length. It does not reward a burst at the start or the end.
    """
    times = sorted(times)
    if len(times) < 2 or times[-1] - times[0] <= window:
        raise ValueError("the run is too short to measure a rate over a sliding window")
    lo, hi = times[0], times[-1] - window
    covered = sum(max(0.0, min(s, hi) - max(s - window, lo)) for s in times)
    return covered / (hi - lo)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away mid-request (a worker being stopped) are not the test's business.
        pass


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    # ------------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_call(self, body: bytes) -> tuple[str, str] | None:
        """(service, recipient) when this request is a send call, else None."""
        if self.command != "POST":
            return None
        path = urlsplit(self.path).path
        scope = _SCOPE.search(self.headers.get("Authorization", ""))
        service = scope.group(1) if scope else ""
        if path == SES_SEND_PATH:
            try:
                request = json.loads(body or b"{}")
                recipient = str(request["Destination"]["ToAddresses"][0])
            except (ValueError, KeyError, IndexError, TypeError):
                recipient = ""
            return "ses", recipient
        if service == "sns" and "x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            form = parse_qs(body.decode("utf-8", "replace"))
            if form.get("Action") == ["Publish"]:
                target = form.get("PhoneNumber") or form.get("TargetArn") or form.get("TopicArn") or [""]
                return "sns", target[0]
        return None

    def _handle(self) -> None:
        proxy = self.owner
        arrived, wall = time.monotonic(), time.time()
        body = self._read_body()
        call = self._send_call(body)
        if call is None:
            self._forward(body)
            return
        service, recipient = call

        def note(outcome: str) -> None:
            proxy._record(Send(arrived, wall, service, recipient, outcome))

        if recipient in proxy.reject:
            note("rejected")
            self._error(service, "permanent")
            return
        throttle, server_error = proxy._draw()
        if throttle < proxy.throttle_rate:
            note("throttled")
            self._error(service, "throttle")
            return
        if server_error < proxy.server_error_rate:
            note("server-error")
            self._error(service, "server", status=proxy._choose_500_or_503())
            return
        drop = recipient in proxy.drop_after_forward
        status = self._forward(body, answer=not drop)
        if not 200 <= status < 300:
            note("upstream-error")
        elif drop:
            note("dropped")
        else:
            note("accepted")
        if drop:
            # The provider has the message; the client never hears so.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _forward(self, body: bytes, *, answer: bool = True) -> int:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            status = response.status
            reply_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            reason = response.reason
        finally:
            upstream.close()
        if answer:
            self.send_response_only(status, reason)
            for key, value in reply_headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        return status

    def _error(self, service: str, kind: str, status: int = 400) -> None:
        request_id = str(uuid.uuid4())
        if service == "ses":
            code, status, message = {
                "throttle": ("TooManyRequestsException", 429, "Maximum sending rate exceeded."),
                "permanent": ("MessageRejected", 400, "Email address is not deliverable (fault proxy)."),
                "server": (
                    "InternalFailure" if status == 500 else "ServiceUnavailable",
                    status,
                    "Service unavailable (fault proxy).",
                ),
            }[kind]
            payload = json.dumps({"message": message}).encode()
            headers = [
                ("Content-Type", "application/json"),
                ("x-amzn-ErrorType", code),
                ("x-amzn-RequestId", request_id),
            ]
        else:
            code, kind_type, status, message = {
                "throttle": ("Throttling", "Sender", 400, "Rate exceeded"),
                "permanent": (
                    "InvalidParameter",
                    "Sender",
                    400,
                    "Invalid parameter: PhoneNumber Reason: rejected by fault proxy",
                ),
                "server": (
                    "InternalFailure" if status == 500 else "ServiceUnavailable",
                    "Receiver",
                    status,
                    "Service unavailable (fault proxy)",
                ),
            }[kind]
            payload = (
                '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                f"<Error><Type>{kind_type}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                f"<RequestId>{request_id}</RequestId></ErrorResponse>"
            ).encode()
            headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
        self.send_response_only(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
