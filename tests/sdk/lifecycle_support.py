"""Real receivers for the lifecycle tests: an HTTP webhook receiver that verifies certvault's
signatures, and an SMTP server (aiosmtpd) that records messages."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from aiosmtpd.controller import Controller

import support


@dataclass
class Received:
    event: dict
    headers: dict
    body: bytes


@dataclass
class WebhookReceiver:
    """Accepts POSTs, verifies `X-Certvault-Signature` with `secret`, records each event id
    it accepted (2xx) and every attempt. `down` answers 503 without accepting."""

    secret: str
    down: bool = False
    accepted: list = field(default_factory=list)  # Received, in arrival order
    attempts: int = 0
    bad_signatures: int = 0
    server: Any = None
    thread: Any = None
    lock: Any = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://127.0.0.1:{port}/hook"

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with receiver.lock:
                    receiver.attempts += 1
                    if receiver.down:
                        self.send_response(503)
                        self.end_headers()
                        self.wfile.write(b"down")
                        return
                    ts = self.headers.get("X-Certvault-Timestamp", "")
                    sig = self.headers.get("X-Certvault-Signature", "")
                    want = "v1=" + hmac.new(receiver.secret.encode(), f"{ts}.".encode() + body,
                                            hashlib.sha256).hexdigest()
                    if not hmac.compare_digest(sig, want):
                        receiver.bad_signatures += 1
                        self.send_response(401)
                        self.end_headers()
                        self.wfile.write(b"bad signature")
                        return
                    receiver.accepted.append(Received(json.loads(body), dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self, kind: Optional[str] = None, cert: Optional[str] = None) -> list[dict]:
        with self.lock:
            out = [r.event for r in self.accepted]
        if kind:
            out = [e for e in out if e["event_type"] == kind]
        if cert:
            out = [e for e in out if (e.get("certificate_name") or "").lower() == cert.lower()]
        return out

    def wait_for(self, what: str, pred, timeout: float = 90.0) -> list[dict]:
        return support.wait_until(lambda: (lambda ev: ev if pred(ev) else None)(self.events()),
                                  what, timeout=timeout)


class _Sink:
    def __init__(self):
        self.messages: list = []
        self.lock = threading.Lock()

        # One entry per message: was the session under STARTTLS (session.ssl), was the
        # transport TLS at all (STARTTLS or implicit TLS)?
        self.tls: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        transport = getattr(server, "transport", None)
        on_tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), msg))
            self.tls.append({"starttls": session.ssl is not None, "tls": on_tls})
        return "250 Message accepted for delivery"


class SmtpSink:
    """aiosmtpd on 127.0.0.1, recording (recipients, message).

    `tls_context` with `mode="starttls"`: STARTTLS offered and required before MAIL;
    `mode="tls"`: TLS from the first byte (SMTPS)."""

    def __init__(self, tls_context: Any = None, mode: str = "none"):
        self.handler = _Sink()
        self.port = support.free_port()
        kw: dict = {}
        if mode == "starttls":
            kw = {"tls_context": tls_context, "require_starttls": True}
        elif mode == "tls":
            kw = {"ssl_context": tls_context}
        elif mode != "none":
            raise ValueError(mode)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kw)

    def start(self) -> "SmtpSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def tls(self) -> list:
        with self.handler.lock:
            return list(self.handler.tls)


ADMIN = "/admin/v1"


def admin(api, method: str, path: str, status: int = 200, **kw) -> Any:
    r = api.request(method, ADMIN + path, api_version=None, **kw)
    assert r.status_code == status, support.describe(r)
    return r.json() if r.content else None


def server_now(api) -> int:
    return admin(api, "GET", "/test-clock")["now"]


def advance(api, seconds: int) -> int:
    return admin(api, "POST", "/test-clock/advance", json={"seconds": int(seconds)})["now"]


def advance_to(api, t: int) -> int:
    now = server_now(api)
    return advance(api, max(0, int(t) - now))
