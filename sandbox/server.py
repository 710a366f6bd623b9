"""The sandbox server: every simulated provider on one loopback port, plus /_sandbox control endpoints.

Standard library only (``ThreadingHTTPServer``, HTTP/1.1 keep-alive): one
thread per connection is plenty for ~200 req/s on loopback and keeps the
sandbox free of dependencies the clients under test might share. Each
provider call goes through the same pipeline::

    route -> key check (401/403) -> rate limit per key (the provider's 429)
          -> fault draw (latency, 429, 5xx, quota, timeout, malformed) -> the answer

Use ``start_in_thread`` from tests and the demo, ``campaignctl sandbox`` from
a shell. Nothing is logged per request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sandbox import faults as faultlib
from sandbox.bedrock import Bedrock
from sandbox.limits import Limits, plan_rates
from sandbox.provider import CallContext, Provider
from sandbox.qev import Qev
from sandbox.rapidapi_zillow import Zillow56, ZillowCom1
from sandbox.rentcast import RentCast
from sandbox.router import route
from sandbox.ses import Ses
from sandbox.stats import Stats
from sandbox.wire import Request, Response

log = logging.getLogger(__name__)

#: How long a "timeout" fault holds a request before dropping the connection, in s (unscaled: client
#: timeouts are not scaled either). Longer than the clients' read timeouts except Bedrock's 60 s.
DEFAULT_HANG = 30.0
#: Largest request body read, in bytes.
MAX_BODY = 10 * 1024 * 1024
#: Pending connections the listening socket queues.
BACKLOG = 512


class Sandbox:
    """The application: providers, limits, faults and stats; ``dispatch`` turns a Request into a Response."""

    def __init__(self, *, time_scale: float = 1.0, faults: str | Mapping[str, Any] | None = None, seed: int = 0,
                 hang: float = DEFAULT_HANG, rates: Mapping[str, float] | None = None) -> None:
        self.time_scale = time_scale
        self.hang = hang
        self.rates = dict(rates or plan_rates())
        self.limits = Limits(self.rates, time_scale)
        self.injector = faultlib.Injector(faults, seed)
        self.stats = Stats()
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.providers: dict[str, Provider] = {
            "zillow": ZillowCom1(per_minute=round(self.rates["zillow"] * 60)),
            "zillow56": Zillow56(per_minute=round(self.rates["zillow56"] * 60)),
            "rentcast": RentCast(),
            "bedrock": Bedrock(),
            "email_verification": Qev(),
            "ses": Ses(self.stats),
        }

    # -- provider calls ----------------------------------------------------------------------

    def dispatch(self, req: Request) -> Response:
        if req.raw_path.startswith("/_sandbox"):
            return self.control(req)
        provider = route(req, self.providers)
        if isinstance(provider, Response):
            return provider
        name = provider.name
        key = provider.key(req)
        denied = provider.auth_error(req, key)
        if denied is not None:
            self.stats.call(name, time.monotonic(), denied.status, req.raw_path)
            return provider.decorate(req, None, denied)
        decision = self.limits.take(name, key)
        ctx = CallContext(name, key, self.limits.rate(name), decision.remaining, decision.wait, decision.refill)
        if not decision.allowed:
            self.stats.call(name, decision.t, 429, req.raw_path, throttled=True)
            return provider.decorate(req, ctx, provider.throttled(req, ctx))
        fault, settings = self.injector.draw(name)
        if settings is not None and settings.latency:
            self.stopping.wait(settings.latency)
        if fault in ("429", "5xx", "quota"):
            wait = settings.retry_after if settings and settings.retry_after else self.limits.interval(name)
            resp = provider.injected(req, replace(ctx, wait=wait), fault)
            self.stats.call(name, decision.t, resp.status, req.raw_path, fault=fault)
            return provider.decorate(req, ctx, resp)
        resp = provider.handle(req, ctx)  # timeout and malformed: the provider acted, the answer is lost
        if fault == "timeout":
            self.stats.call(name, decision.t, 0, req.raw_path, fault=fault)
            self.stopping.wait(settings.hang if settings and settings.hang is not None else self.hang)
            return Response(0, drop=True)
        if fault == "malformed":
            resp = Response(200, resp.body[: max(0, min(len(resp.body) - 1, len(resp.body) // 2))],
                            {"Content-Type": resp.headers.get("Content-Type", "application/json")})
        self.stats.call(name, decision.t, resp.status, req.raw_path, fault=fault)
        return provider.decorate(req, ctx, resp)

    # -- control -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget calls, emails, buckets and quotas (faults stay as they are)."""
        self.stats.reset()
        self.limits.reset()
        for provider in self.providers.values():
            provider.reset()

    def set_faults(self, spec: str | Mapping[str, Any] | None) -> str:
        return faultlib.describe(self.injector.set(spec))

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime": round(time.monotonic() - self.started, 3), "time_scale": self.time_scale,
                "rates": {p: r * self.time_scale for p, r in self.rates.items()},
                "faults": faultlib.describe(self.injector.current()), "hang": self.hang}

    def control(self, req: Request) -> Response:
        path = req.raw_path.rstrip("/")
        if path == "/_sandbox/stats" and req.method == "GET":
            return Response.json(200, self.stats.snapshot())
        if path == "/_sandbox/calls" and req.method == "GET":
            calls = self.stats.calls()
            if req.query.get("provider"):
                calls = [c for c in calls if c["provider"] == req.query["provider"]]
            if req.query.get("since"):
                try:
                    since = float(req.query["since"])
                except ValueError:
                    return Response.json(400, {"error": "since must be a number (server monotonic seconds)"})
                calls = [c for c in calls if c["t"] >= since]
            return Response.json(200, {"calls": calls, "now": round(time.monotonic(), 6)})
        if path == "/_sandbox/emails" and req.method == "GET":
            return Response.json(200, {"emails": self.stats.messages()})
        if path == "/_sandbox/reset" and req.method == "POST":
            self.reset()
            return Response.json(200, {"ok": True})
        if path == "/_sandbox/health" and req.method == "GET":
            return Response.json(200, self.health())
        if path == "/_sandbox/faults":
            if req.method == "GET":
                return Response.json(200, {"faults": faultlib.describe(self.injector.current())})
            if req.method == "POST":
                try:
                    return Response.json(200, {"faults": self.set_faults(_fault_body(req))})
                except faultlib.FaultSpecError as exc:
                    return Response.json(400, {"error": f"invalid fault spec: {exc}"})
        return Response.json(404, {"error": f"unknown control endpoint {req.method} {req.raw_path}"})


def _fault_body(req: Request) -> str | Mapping[str, Any] | None:
    """``{"faults": SPEC}``, ``{"spec": SPEC}``, ``{provider: {fault: value}}`` or a plain-text spec."""
    body = req.json()
    if body is None:
        text = req.body.decode("utf-8", "replace").strip()
        if text.startswith(("{", "[")):
            raise faultlib.FaultSpecError("the body is not valid JSON")
        return text
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        for name in ("faults", "spec"):
            if name in body:
                return body[name] if body[name] is not None else ""
        return body
    raise faultlib.FaultSpecError("expected {\"faults\": \"provider:fault=p,...\"}")


class Handler(BaseHTTPRequestHandler):
    """Reads one request, asks the Sandbox, writes the answer (or drops the connection)."""

    protocol_version = "HTTP/1.1"
    #: Headers and body leave in one write with TCP_NODELAY: otherwise Nagle plus delayed ACKs add
    #: ~40 ms to every keep-alive answer and cap a connection at ~25 req/s.
    disable_nagle_algorithm = True
    server_version = "campaign-engine-sandbox"
    sys_version = ""
    server: SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # nothing per request

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._write(Response.json(413, {"message": "request body too large"}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        req = Request.parse(self.command, self.path, dict(self.headers.items()), body)
        try:
            resp = self.server.app.dispatch(req)
        except Exception:  # a sandbox bug must not look like a provider answer
            log.exception("sandbox error on %s %s", self.command, req.raw_path)
            resp = Response.json(500, {"message": "sandbox internal error (a bug in the simulator)"},
                                 {"x-sandbox-error": "1"})
        if resp.drop:
            self.close_connection = True
            return
        self._write(resp)

    def _write(self, resp: Response) -> None:
        self.send_response_only(resp.status)
        self.send_header("Date", self.date_time_string())
        if not any(name.lower() == "server" for name in resp.headers):
            self.send_header("Server", self.server_version)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(resp.body)
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], app: Sandbox) -> None:
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up mid-answer are normal here (timeout faults); stay quiet.
        log.debug("connection error from %s", client_address, exc_info=True)


@dataclass
class SandboxHandle:
    """A running sandbox: its URL, its app, and how to stop it."""

    url: str
    host: str
    port: int
    app: Sandbox
    server: SandboxHTTPServer
    thread: threading.Thread

    def stats(self) -> dict[str, Any]:
        return self.app.stats.snapshot()

    def calls(self) -> list[dict[str, Any]]:
        return self.app.stats.calls()

    def reset(self) -> None:
        self.app.reset()

    def faults(self, spec: str | Mapping[str, Any] | None) -> str:
        return self.app.set_faults(spec)

    def stop(self) -> None:
        """Stop serving; hanging timeout faults wake up at once (they wait on the stop event)."""
        self.app.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(port: int = 0, host: str = "127.0.0.1", *, time_scale: float = 1.0,
                    faults: str | Mapping[str, Any] | None = None, seed: int = 0, hang: float = DEFAULT_HANG,
                    rates: Mapping[str, float] | None = None) -> SandboxHandle:
    """Start a sandbox serving in a daemon thread; ``port=0`` picks a free port (see ``handle.url``).

    Raises ``faults.FaultSpecError`` for an invalid ``faults`` spec and ``ValueError`` for a bad time scale.
    """
    app = Sandbox(time_scale=time_scale, faults=faults, seed=seed, hang=hang, rates=rates)
    server = SandboxHTTPServer((host, port), app)
    bound_host, bound_port = server.server_address[:2]
    shown = bound_host if bound_host not in ("0.0.0.0", "::") else "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"sandbox-{bound_port}", daemon=True)
    thread.start()
    return SandboxHandle(f"http://{shown}:{bound_port}", str(bound_host), int(bound_port), app, server, thread)
