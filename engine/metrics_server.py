"""The HTTP endpoints every service serves on METRICS_PORT: /metrics, /healthz, /readyz.

- ``/metrics``: the Prometheus text format (prometheus_client's registry).
- ``/healthz``: 200 while the process's main loop goes round (engine.metrics.loop_alive
  within ``stale_after`` seconds), else 503. A liveness probe: restarting the process
  is the cure for a loop that stopped, never for a database that is down.
- ``/readyz``: 200 when every readiness check (Redis, the database) answers, else 503
  with the first failure, its credentials masked. A readiness probe: take the process
  out of rotation, do not restart it.

A standard-library threaded HTTP server in a daemon thread: the services have
no web framework, and three tiny endpoints do not need one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from engine import metrics
from engine.errors import describe
from engine.redact import redact

log = logging.getLogger(__name__)

#: /healthz fails when the main loop has not gone round for this long, in s (longer than the
#: longest outage backoff, OUTAGE_BACKOFF_MAX, plus one pass).
DEFAULT_STALE_AFTER = 90.0

#: name -> check that raises when that dependency is unreachable.
ReadinessChecks = Mapping[str, Callable[[], object]]


class MetricsServer:
    """Serves the three endpoints on ``host:port`` until ``stop()``; ``port`` 0 picks a free one."""

    def __init__(self, port: int, *, host: str = "0.0.0.0", checks: ReadinessChecks | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER, registry: CollectorRegistry = REGISTRY) -> None:
        self.checks = dict(checks or {})
        self.stale_after = stale_after
        self.registry = registry
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics, /healthz and /readyz on port %d", self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def health(self) -> tuple[int, str]:
        age = metrics.last_loop_beat()
        if age > self.stale_after:
            return 503, f"main loop stuck: last round {age:.0f}s ago (limit {self.stale_after:g}s)\n"
        return 200, f"ok: main loop went round {age:.1f}s ago\n"

    def readiness(self) -> tuple[int, str]:
        for name, check in self.checks.items():
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                return 503, redact(f"{name} unavailable: {describe(exc)}") + "\n"
        return 200, "ok: " + ", ".join(self.checks) + " reachable\n" if self.checks else "ok\n"


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._text(*server.health())
            elif path == "/readyz":
                self._text(*server.readiness())
            else:
                self._text(404, "not found: try /metrics, /healthz or /readyz\n")

        def _text(self, status: int, body: str) -> None:
            self._send(status, body.encode(), "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
            log.debug("metrics http: " + format, *args)

    return Handler
