"""The endpoints of engine/metrics_server.py and the fleet collector's cache, without services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest

from campaignctl import service_endpoints
from campaignctl.context import AppContext
from engine import metrics
from engine.metrics_server import MetricsServer


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    def database_down() -> None:
        raise ConnectionError("could not connect to postgresql://app:s3cret@db:5432/campaigns")

    srv = MetricsServer(0, host="127.0.0.1", checks={"redis": lambda: True, "database": database_down},
                        stale_after=0.5).start()
    yield srv
    srv.stop()


def get(srv: MetricsServer, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{srv.port}{path}", timeout=5)


def test_healthz_follows_the_main_loop(server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a loop that just went round, then one stuck longer than stale_after
    metrics.loop_alive()
    assert get(server, "/healthz").status_code == 200
    monkeypatch.setattr(metrics, "last_loop_beat", lambda: 5.0)
    answer = get(server, "/healthz")
    assert answer.status_code == 503 and "stuck" in answer.text


def test_readyz_names_the_failing_dependency_without_its_password(server: MetricsServer) -> None:
    answer = get(server, "/readyz")
    assert answer.status_code == 503
    assert "database unavailable" in answer.text and "s3cret" not in answer.text


def test_metrics_use_the_prometheus_text_format(server: MetricsServer) -> None:
    metrics.task_settled("property_data", "ack", True)
    metrics.task_settled("property_data", "retry", False)
    answer = get(server, "/metrics")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    assert 'campaign_engine_tasks_total{outcome="succeeded",type="property_data"}' in answer.text
    assert 'campaign_engine_tasks_total{outcome="lease_lost",type="property_data"}' in answer.text
    assert get(server, "/nope").status_code == 404


def test_no_metrics_port_serves_nothing() -> None:
    assert service_endpoints.start(AppContext(env={}), "worker") is None


def test_fleet_collector_reads_at_most_once_per_refresh() -> None:
    # Given a collector over a snapshot reader, and many scrapes in a row
    reads = []

    def read() -> dict:
        reads.append(1)
        return {"queues": {"email_sending": {"ready": 2, "in_flight": 1, "delayed": 0, "oldest_ready_age": 4.5}},
                "dead_letters": 1, "campaigns": {"SENT": 3}, "stages": {"property_data": 0},
                "workers": {"alive": 1, "dead": 0}, "limits": {"ses": {"tokens": 1.0, "paused_until": 12.0}}}

    registry = CollectorRegistry()
    metrics.register_fleet(read, refresh=60.0, registry=registry)
    pages = [generate_latest(registry).decode() for _ in range(20)]
    # Then Redis and the database were read once, and the gauges show the snapshot
    assert len(reads) == 1
    assert 'campaign_engine_queue_tasks{state="ready",type="email_sending"} 2.0' in pages[-1]
    assert 'campaign_engine_queue_oldest_ready_age_seconds{type="email_sending"} 4.5' in pages[-1]
    assert 'campaign_engine_ratelimit_bucket_paused{api="ses"} 1.0' in pages[-1]
    assert "campaign_engine_dead_letter_tasks 1.0" in pages[-1]
