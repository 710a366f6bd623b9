"""/metrics, /healthz and /readyz of real services during an end-to-end run, checked against the truth.

(The last test does the same for the polling dispatch: its succeeded tasks per type.)

Real ``campaignctl`` processes (sandbox with injected 429s, producer,
recovery, two queue workers), each with its own METRICS_PORT, bring a few
campaigns to SENT. Then the numbers must match what really happened:

- ``tasks_total{outcome="succeeded"}`` summed over the workers, per task type,
  equals the stages the campaigns passed according to their history;
- ``provider_throttled_total`` per API equals the 429s the sandbox answered
  (``/_sandbox/stats``: throttled + injected 429s);
- recovery's ``campaigns{status}`` gauges equal the database's counts.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from campaignctl import operations
from campaignctl.context import AppContext
from tests.servers import free_port
from tests.test_dispatch_modes import CAMPAIGNS, Services, services  # noqa: F401 - the fixture
from workflow.db import make_engine
from workflow.models import CampaignEvent
from workflow.states import EMAIL_SENDING, PIPELINE, Status
from workflow.store import CampaignStore

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: Injected 429s (about one in three calls of the slow providers), with a short Retry-After (s): 429s must happen.
FAULTS = "zillow:429=0.3,retry_after=0.2;rentcast:429=0.3,retry_after=0.2"
#: Give up on the counters catching up with the database after this long, in s.
SETTLE_TIMEOUT = 20.0
#: Give up on all campaigns reaching SENT after this long, in s.
RUN_TIMEOUT = 120.0


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one /metrics page: (name, sorted labels) -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def stages_passed(pg_url: str) -> Counter[str]:
    """Per task type, how many times a campaign left that stage forward (the truth for succeeded tasks)."""
    engine = make_engine(pg_url)
    table = CampaignEvent.__table__
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(table.c.from_status, table.c.from_stage, table.c.to_status,
                                       table.c.to_stage)).all()
    finally:
        engine.dispose()
    passed: Counter[str] = Counter()
    stages = [s.value for s in PIPELINE]
    for from_status, from_stage, to_status, to_stage in rows:
        if from_status == Status.PROCESSING.value and from_stage in stages and (to_stage, to_status) != (
                from_stage, from_status) and to_status != Status.ERROR.value:
            passed[from_stage] += 1
        if from_status == Status.READY_TO_SEND.value and to_status == Status.SENT.value:
            passed[EMAIL_SENDING] += 1
    return passed


def test_metrics_match_the_truth_during_an_end_to_end_run(services: Services, pg_url: str, tmp_path: Path) -> None:
    # Given a sandbox that answers 429 to some calls, and every service with its own METRICS_PORT
    answer = requests.post(f"{services.env['SANDBOX_URL']}/_sandbox/faults", json={"faults": FAULTS}, timeout=5)
    assert answer.ok, answer.text
    ports = {name: free_port() for name in ("producer", "recovery", "worker-0", "worker-1")}
    services.start("producer", "producer", METRICS_PORT=str(ports["producer"]), METRICS_HOST="127.0.0.1")
    services.start("recovery", "recovery", METRICS_PORT=str(ports["recovery"]), METRICS_HOST="127.0.0.1")
    for name in ("worker-0", "worker-1"):
        services.start(name, "worker", "--concurrency", "4", METRICS_PORT=str(ports[name]), METRICS_HOST="127.0.0.1")

    # When the run is under way, every endpoint answers
    for name, port in ports.items():
        _wait_http(f"http://127.0.0.1:{port}/healthz", services)
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200 and "redis" in ready.text and "database" in ready.text, (name, ready.text)
        assert "campaign_engine_" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    store = CampaignStore(make_engine(pg_url))
    started = time.monotonic()
    while store.counts()["campaigns"]["SENT"] < CAMPAIGNS:
        assert time.monotonic() - started < RUN_TIMEOUT, services.logs()
        services.check_alive()
        scrape(ports["recovery"])  # scraping during the run, as Prometheus would
        time.sleep(0.5)

    # Then the counters match the database and the sandbox once the last acks are in
    truth = stages_passed(pg_url)
    assert truth[EMAIL_SENDING] == CAMPAIGNS, truth
    workers = ("worker-0", "worker-1")
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        pages = {name: scrape(port) for name, port in ports.items()}
        succeeded = {t: sum(total(pages[w], "campaign_engine_tasks_total", type=t, outcome="succeeded")
                            for w in workers) for t in truth}
        sandbox = requests.get(f"{services.env['SANDBOX_URL']}/_sandbox/stats", timeout=5).json()
        sandbox_429 = {api: sandbox["throttled"].get(api, 0) + sandbox["injected"].get(api, {}).get("429", 0)
                       for api in set(sandbox["throttled"]) | set(sandbox["injected"])}
        seen_429 = {api: sum(total(pages[w], "campaign_engine_provider_throttled_total", api=api) for w in workers)
                    for api in sandbox_429}
        db_counts = store.counts()["campaigns"]
        gauges = {s.value: total(pages["recovery"], "campaign_engine_campaigns", status=s.value) for s in Status}
        if (succeeded == dict(truth) and seen_429 == {a: float(n) for a, n in sandbox_429.items()}
                and gauges == {k: float(v) for k, v in db_counts.items()}):
            break
        assert time.monotonic() < deadline, (
            f"succeeded {succeeded} vs stages passed {dict(truth)}\n429s seen {seen_429} vs sandbox {sandbox_429}\n"
            f"campaign gauges {gauges} vs database {db_counts}\n{services.logs()}")
        time.sleep(0.5)
    assert sum(sandbox_429.values()) > 0, f"no 429 was injected: the check proved nothing ({sandbox})"
    # And the fleet-wide count the dashboard and `campaignctl limits` show is the same
    limits = operations.limits(AppContext(env=services.env))
    assert {api: limits[api]["throttled"] for api in sandbox_429} == sandbox_429
    recovery = pages["recovery"]
    assert total(recovery, "campaign_engine_queue_tasks", state="ready") == 0
    assert total(recovery, "campaign_engine_workers", state="alive") == 2
    assert total(pages["producer"], "campaign_engine_producer_campaigns_started_total") == CAMPAIGNS
    assert sum(total(pages[w], "campaign_engine_ratelimit_grants_total") for w in workers) > 0
    assert sum(total(pages[w], "campaign_engine_task_duration_seconds_count") for w in workers) >= sum(truth.values())
    (tmp_path / "metrics-worker-0.txt").write_text(
        requests.get(f"http://127.0.0.1:{ports['worker-0']}/metrics", timeout=5).text)
    (tmp_path / "metrics-recovery.txt").write_text(
        requests.get(f"http://127.0.0.1:{ports['recovery']}/metrics", timeout=5).text)
    print(f"succeeded per type {succeeded}; 429s {seen_429}; campaigns {gauges}; samples in {tmp_path}")
    store.engine.dispose()


def _wait_http(url: str, svc: Services, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} never answered\n{svc.logs()}"
        svc.check_alive()
        time.sleep(0.1)


def test_polling_workers_count_the_same_tasks(services: Services, pg_url: str) -> None:
    # Given only polling-mode workers (the rollback path of the feature flag), each with its METRICS_PORT
    ports = {name: free_port() for name in ("poller-data", "poller-email")}
    services.start("poller-data", "worker", "--concurrency", "2", "--queues",
                   "property_data,active_listings,recent_sales,market_data,home_analysis", DISPATCH_MODE="polling",
                   METRICS_PORT=str(ports["poller-data"]), METRICS_HOST="127.0.0.1")
    services.start("poller-email", "worker", "--concurrency", "2", "--queues", "email_creation,email_sending",
                   DISPATCH_MODE="polling", METRICS_PORT=str(ports["poller-email"]), METRICS_HOST="127.0.0.1")
    for port in ports.values():
        _wait_http(f"http://127.0.0.1:{port}/healthz", services)
    # When every campaign is sent
    store = CampaignStore(make_engine(pg_url))
    started = time.monotonic()
    while store.counts()["campaigns"]["SENT"] < CAMPAIGNS:
        assert time.monotonic() - started < RUN_TIMEOUT, services.logs()
        services.check_alive()
        time.sleep(0.3)
    # Then the pollers' succeeded tasks per type are the stages the campaigns passed
    truth = stages_passed(pg_url)
    deadline = time.monotonic() + SETTLE_TIMEOUT  # a stage's count follows its database write
    while True:
        pages = [scrape(port) for port in ports.values()]
        succeeded = {t: sum(total(p, "campaign_engine_tasks_total", type=t, outcome="succeeded") for p in pages)
                     for t in truth}
        if succeeded == dict(truth):
            break
        assert time.monotonic() < deadline, (succeeded, dict(truth))
        time.sleep(0.3)
    store.engine.dispose()
