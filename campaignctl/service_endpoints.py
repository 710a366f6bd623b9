"""Starts /metrics, /healthz and /readyz for a service process when METRICS_PORT is set.

The service commands (worker, producer, recovery) call ``start`` once, with
the AppContext they already built: readiness pings that Redis and that
database, and recovery alone exports the fleet gauges (one reader of the
fleet for the whole deployment; see campaignctl/fleet.py).
"""

from __future__ import annotations

import logging

from campaignctl import fleet, wiring
from campaignctl.context import AppContext
from engine import metrics
from engine.metrics_server import DEFAULT_STALE_AFTER, MetricsServer

log = logging.getLogger(__name__)

#: Address the endpoints listen on unless METRICS_HOST says otherwise (Prometheus scrapes from elsewhere).
DEFAULT_METRICS_HOST = "0.0.0.0"
#: The one service that exports the fleet-wide gauges.
FLEET_SERVICE = "recovery"


def start(ctx: AppContext, service: str) -> MetricsServer | None:
    """Serve the endpoints of ``service`` on METRICS_PORT; None (nothing served) when it is unset."""
    port = (ctx.env.get("METRICS_PORT") or "").strip()
    if not port:
        return None
    checks = {"redis": lambda: ctx.redis.ping(), "database": lambda: wiring.ping_database(ctx)}
    if service == FLEET_SERVICE:
        metrics.register_fleet(lambda: fleet.read_snapshot(ctx), fleet.FLEET_REFRESH)
    # /healthz must outlast the longest wait of a healthy loop: an outage backoff plus one pass.
    stale_after = max(DEFAULT_STALE_AFTER, 2 * ctx.settings.outage_backoff_max + ctx.settings.producer_interval)
    server = MetricsServer(int(port), host=ctx.env.get("METRICS_HOST") or DEFAULT_METRICS_HOST, checks=checks,
                           stale_after=stale_after).start()
    log.info("%s: /metrics, /healthz and /readyz on port %d", service, server.port)
    return server
