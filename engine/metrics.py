"""Every Prometheus metric of campaign-engine, named once, with its unit in the name.

The engine's modules call the small functions below where an event happens
(``task_settled`` when a settle script answered, ``throttled`` when a
provider said 429): one line at the event, nothing recomputed from logs.
Counters live in the process that saw the event; Prometheus sums them over
the fleet.

The fleet-wide figures (queue depth, oldest ready task, dead letters,
campaigns per status and stage, workers, buckets) are not counted by anyone:
they are read from Redis and the database. ``FleetCollector`` turns one
snapshot of them into gauges; the snapshot is taken by ONE process
(recovery's, see campaignctl/fleet.py) at most every FLEET_REFRESH seconds
and every scrape reads the cached copy, so scraping a hundred workers never
scans Redis a hundred times.

The process's liveness for /healthz (``loop_alive``, ``last_loop_beat``) is
here too: it is the one other thing every loop reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The *_created series double every counter's lines for a feature no dashboard here uses.
disable_created_metrics()

#: Every metric name starts with this.
PREFIX = "campaign_engine"
#: Buckets of the task duration histogram, in s (a stage waits on HTTP and on rate-limit tokens).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: What the worker's settle step was called, and what it means for ``tasks_total{outcome}``.
_SETTLE_OUTCOMES = {
    "ack": "succeeded",
    "retry": "retried",
    "defer": "deferred",
    "outage deferral": "deferred",
    "dead-letter": "dead_lettered",
}
#: Every value of the ``outcome`` label, so dashboards see zeros instead of gaps.
TASK_OUTCOMES = ("succeeded", "retried", "deferred", "dead_lettered", "lease_lost")

TASKS = Counter(
    f"{PREFIX}_tasks_total", "Tasks settled by this process, by task type and outcome "
    "(succeeded, retried, deferred, dead_lettered, lease_lost).", ["type", "outcome"])
TASK_DURATION = Histogram(
    f"{PREFIX}_task_duration_seconds", "Time a handler ran, from start to return or raise, by task type.",
    ["type"], buckets=DURATION_BUCKETS)
LIMITER_GRANTS = Counter(
    f"{PREFIX}_ratelimit_grants_total", "Rate-limit tokens granted to handlers, by API.", ["api"])
LIMITER_WAITS = Counter(
    f"{PREFIX}_ratelimit_waits_total", "Times a handler was told to wait for a token (slept or deferred), by API.",
    ["api"])
LIMITER_WAIT_SECONDS = Counter(
    f"{PREFIX}_ratelimit_wait_seconds_total", "Seconds handlers slept waiting for a token, by API.", ["api"])
THROTTLED = Counter(
    f"{PREFIX}_provider_throttled_total", "Provider answers that said 'too many requests' (HTTP 429 or a "
    "throttling error), by API; each pauses the API's bucket for every worker.", ["api"])
LEASES_RECOVERED = Counter(
    f"{PREFIX}_leases_recovered_total", "Leased tasks recovery took back, by cause (dead_worker, lease_expired) "
    "and result (requeued, dead_lettered).", ["cause", "result"])
CAMPAIGNS_STARTED = Counter(
    f"{PREFIX}_producer_campaigns_started_total", "Due campaigns the producer started (first task enqueued).")
OUTAGES = Counter(
    f"{PREFIX}_outages_total", "Outages this process went through: a streak of failures to reach Redis, the "
    "database or a service the handlers need (counted once, when it starts).")


def task_ran(task_type: str, seconds: float) -> None:
    """A handler returned or raised after ``seconds``."""
    TASK_DURATION.labels(task_type).observe(max(0.0, seconds))


def task_settled(task_type: str, step: str, done: bool) -> None:
    """The worker's settle ``step`` (ack, retry, defer, outage deferral, dead-letter) answered ``done``.

    A step the fencing scripts refused means another worker holds the task
    now, or recovery took it: the lease was lost, whatever the handler did.
    """
    outcome = _SETTLE_OUTCOMES.get(step, step) if done else "lease_lost"
    TASKS.labels(task_type, outcome).inc()


def token_granted(api: str) -> None:
    LIMITER_GRANTS.labels(api).inc()


def token_wait(api: str, seconds: float, *, slept: bool) -> None:
    """A handler was told to wait ``seconds`` for a token; ``slept`` False: it deferred its task instead."""
    LIMITER_WAITS.labels(api).inc()
    if slept:
        LIMITER_WAIT_SECONDS.labels(api).inc(max(0.0, seconds))


def throttled(api: str) -> None:
    """A provider answered 429 (or its throttling error) for ``api``."""
    THROTTLED.labels(api).inc()


def lease_recovered(cause: str, action: str) -> None:
    """Recovery settled a leased task with ``action`` (requeued, dead, skipped: not counted)."""
    if action in ("requeued", "dead"):
        LEASES_RECOVERED.labels(cause, "requeued" if action == "requeued" else "dead_lettered").inc()


def campaigns_started(count: int) -> None:
    if count:
        CAMPAIGNS_STARTED.inc(count)


def outage_started() -> None:
    OUTAGES.inc()


# -- liveness of the process loop (/healthz) -----------------------------------------------

_last_beat = time.monotonic()


def loop_alive() -> None:
    """The process's main loop went round once (the claim loop, a service pass, a poll)."""
    global _last_beat
    _last_beat = time.monotonic()


def last_loop_beat() -> float:
    """Seconds since the main loop last went round (since import before the first round)."""
    return time.monotonic() - _last_beat


# -- fleet-wide gauges ---------------------------------------------------------------------

#: ``read() -> dict`` as campaignctl.fleet.read_snapshot builds it.
Snapshot = Mapping[str, Any]


class FleetCollector(Collector):
    """Gauges of the whole fleet from one cached snapshot, refreshed at most every ``refresh`` seconds.

    ``read`` takes the snapshot (Redis and the database); a scrape calls it
    only when the cached one is older than ``refresh``, under a lock, so any
    number of scrapes cost at most one read per ``refresh``. A failed read
    keeps the last snapshot and ``fleet_snapshot_age_seconds`` shows how old
    it is.
    """

    def __init__(self, read: Callable[[], Snapshot], refresh: float) -> None:
        self._read = read
        self.refresh = refresh
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken = 0.0
        self.reads = 0

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            if self._snapshot is None or time.monotonic() - self._taken >= self.refresh:
                try:
                    self._snapshot = self._read()
                    self._taken = time.monotonic()
                    self.reads += 1
                except Exception:  # noqa: BLE001 - an outage: keep serving the last snapshot
                    pass
            return self._snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        if snap is None:
            return
        age = GaugeMetricFamily(f"{PREFIX}_fleet_snapshot_age_seconds",
                                "Age of the snapshot the fleet gauges come from.")
        age.add_metric([], time.monotonic() - self._taken)
        yield age
        depth = GaugeMetricFamily(f"{PREFIX}_queue_tasks", "Tasks in each queue by state (ready, in_flight, "
                                  "delayed).", labels=["type", "state"])
        oldest = GaugeMetricFamily(f"{PREFIX}_queue_oldest_ready_age_seconds",
                                   "Age of the oldest ready task of each queue (0 when empty).", labels=["type"])
        for name, q in snap["queues"].items():
            for state in ("ready", "in_flight", "delayed"):
                depth.add_metric([name, state], q[state])
            oldest.add_metric([name], q.get("oldest_ready_age") or 0.0)
        yield depth
        yield oldest
        yield _gauge("dead_letter_tasks", "Entries in the dead-letter queue.", snap["dead_letters"])
        yield _labelled("campaigns", "Campaigns per status.", "status", snap["campaigns"])
        yield _labelled("campaigns_processing", "PROCESSING campaigns per stage.", "stage", snap["stages"])
        yield _labelled("workers", "Registered workers, alive or dead (liveness key gone, not yet recovered).",
                        "state", {"alive": snap["workers"]["alive"], "dead": snap["workers"]["dead"]})
        tokens = GaugeMetricFamily(f"{PREFIX}_ratelimit_tokens", "Tokens in each API's bucket now.", labels=["api"])
        paused = GaugeMetricFamily(f"{PREFIX}_ratelimit_bucket_paused", "1 while the API's bucket is paused "
                                   "after a 429, else 0.", labels=["api"])
        for api, limit in snap["limits"].items():
            tokens.add_metric([api], limit["tokens"])
            paused.add_metric([api], 1.0 if limit["paused_until"] else 0.0)
        yield tokens
        yield paused


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labelled(name: str, doc: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def register_fleet(read: Callable[[], Snapshot], refresh: float,
                   registry: CollectorRegistry = REGISTRY) -> FleetCollector:
    """Export the fleet gauges from this process (only one service of the fleet should)."""
    collector = FleetCollector(read, refresh)
    registry.register(collector)
    return collector
