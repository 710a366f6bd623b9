"""compose.yaml's observability: healthchecks on /healthz, METRICS_PORT, the dashboard, Prometheus under a profile.

Docker is not available here: the files are read as Compose and Prometheus
would read them, and the healthcheck command itself is run against a real
MetricsServer, so a typo in it cannot hide until a deployment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from engine import metrics
from engine.metrics_server import MetricsServer
from tests.test_compose import ROOT, load_compose

#: Services that run a main loop and so serve /metrics and /healthz.
LOOP_SERVICES = ("producer", "data_fetcher", "email_manager", "recovery")


def services() -> dict:
    return load_compose({"POSTGRES_PASSWORD": "x"})["services"]


def test_every_service_serves_metrics_and_has_a_healthcheck_on_healthz() -> None:
    svc = services()
    for name in LOOP_SERVICES:
        assert svc[name]["environment"]["METRICS_PORT"] == "9100", name
        test = " ".join(svc[name]["healthcheck"]["test"])
        assert "/healthz" in test and "METRICS_PORT" in test, name
    assert svc["migrate"]["healthcheck"] == {"disable": True}
    assert "/healthz" in " ".join(svc["dashboard"]["healthcheck"]["test"])


def test_the_healthcheck_command_works_against_a_real_endpoint() -> None:
    # Given a metrics server, and the very command compose runs in the container
    metrics.loop_alive()
    server = MetricsServer(0, host="127.0.0.1").start()
    try:
        command = services()["producer"]["healthcheck"]["test"]
        assert command[0] == "CMD" and command[1] == "python"
        env = {**os.environ, "METRICS_PORT": str(server.port)}
        ok = subprocess.run([sys.executable, *command[2:]], env=env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.stop()
    # Then with nothing listening it fails
    failed = subprocess.run([sys.executable, *command[2:]], env=env, capture_output=True, timeout=30)
    assert failed.returncode != 0


def test_dashboard_service_is_published_on_loopback_only_and_reads_its_token_from_the_environment() -> None:
    dashboard = services()["dashboard"]
    assert dashboard["command"][:2] == ["campaignctl", "dashboard"]
    assert all(str(p).startswith("127.0.0.1:") for p in dashboard["ports"])
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert raw["services"]["dashboard"]["environment"]["DASHBOARD_TOKEN"] == "${DASHBOARD_TOKEN:-}"


def test_prometheus_runs_under_a_profile_and_scrapes_every_loop_service() -> None:
    prometheus = services()["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert any(v.startswith("./monitoring/prometheus.yml:") for v in prometheus["volumes"])
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    scraped = {name for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
               for name in sd["names"] if sd["port"] == 9100}
    assert scraped == set(LOOP_SERVICES)


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    known = Path(ROOT / "engine" / "metrics.py").read_text()
    for expr in exprs:
        for name in re.findall(r"campaign_engine_[a-z_]+", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name).removeprefix("campaign_engine_")
            assert base in known, f"{name} in the Grafana dashboard is not defined in engine/metrics.py"
