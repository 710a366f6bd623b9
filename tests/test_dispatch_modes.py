"""The feature flag (SPEC §3): queue dispatch and the legacy polling dispatch, end to end on PostgreSQL.

Each mode runs the real ``campaignctl worker`` processes (DISPATCH_MODE picks
the dispatch) against the sandbox, a real Redis (the shared rate limiter, and
the queues in queue mode) and a migrated PostgreSQL database. Both must bring
every campaign to SENT through the same machine, with the legacy status
columns matching the new position on every row, a legal history, and no email
sent twice. A side-by-side run (both modes at once, as during the rollout)
must be just as correct.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from campaignctl.polling import PollingDispatcher, parse_dispatch_mode
from engine.registry import Registry
from engine.retry import RetryPolicy
from tests.servers import free_port, stop_groups
from workflow import machine
from workflow.db import make_engine
from workflow.legacy import LEGACY_COLUMNS, legacy_columns
from workflow.models import Base, Campaign
from workflow.states import Stage, Status
from workflow.store import CampaignStore, Expect

BIN = Path(sys.executable).parent
#: Campaigns per end-to-end run.
CAMPAIGNS = 3
#: Sandbox time scale and RATE_SCALE: Zillow's 10/min runs at 10/s.
SCALE = 60
#: Give up on the campaigns reaching SENT after this long, in s.
RUN_TIMEOUT = 90.0
#: Seconds the services get to stop on SIGTERM before their groups are killed.
STOP_GRACE = 15.0

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Services:
    """campaignctl subprocesses of one test, each in its own process group, stopped at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def run(self, *args: str, **extra_env: str) -> None:
        result = subprocess.run([str(BIN / "campaignctl"), *args], env={**self.env, **extra_env},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"campaignctl {' '.join(args)}: {result.stdout}{result.stderr}"

    def start(self, name: str, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{name}.log"
        with open(path, "ab") as log:
            proc = subprocess.Popen([str(BIN / "campaignctl"), *args], env={**self.env, **extra_env}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc, path))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {n} (exit {p.poll()}):\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                         for n, p, path in self.procs)

    def check_alive(self) -> None:
        dead = [n for n, p, _ in self.procs if p.poll() is not None]
        assert not dead, f"exited: {dead}\n{self.logs()}"

    def stop(self) -> None:
        stop_groups((proc for _, proc, _ in self.procs), STOP_GRACE)


@pytest.fixture
def services(redis_url: str, pg_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Services]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "SANDBOX_URL": f"http://127.0.0.1:{port}",
        "RATE_SCALE": str(SCALE),
        "AUTO_APPROVE": "1",
        "HEARTBEAT_INTERVAL": "0.5",
        "LIVENESS_TTL": "3",
        "RECOVERY_INTERVAL": "0.5",
        "STALL_THRESHOLD": "5",
        "PRODUCER_INTERVAL": "0.5",
        "POLL_INTERVAL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    svc = Services(env, tmp_path)
    try:
        svc.run("migrate")
        svc.run("seed", "--count", str(CAMPAIGNS))
        svc.start("sandbox", "sandbox", "--port", str(port), "--time-scale", str(SCALE))
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{env['SANDBOX_URL']}/_sandbox/stats", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, svc.logs()
            svc.check_alive()
            time.sleep(0.1)
        yield svc
    finally:
        svc.stop()


def _wait_all_sent(svc: Services, pg_url: str) -> dict[str, int]:
    store = CampaignStore(make_engine(pg_url))
    started = time.monotonic()
    try:
        while True:
            counts = store.counts()["campaigns"]
            if counts["SENT"] == CAMPAIGNS:
                print(f"{CAMPAIGNS} campaigns SENT in {time.monotonic() - started:.1f}s")
                return counts
            assert time.monotonic() - started < RUN_TIMEOUT, f"{counts}\n{svc.logs()}"
            svc.check_alive()
            time.sleep(0.2)
    finally:
        store.engine.dispose()


def _check_database(pg_url: str) -> None:
    """Legacy columns match every row's position; every history is a legal walk of the machine."""
    engine = make_engine(pg_url)
    store = CampaignStore(engine)
    try:
        table = Campaign.__table__
        with engine.connect() as conn:
            rows = conn.execute(select(table)).mappings().all()
        assert len(rows) == CAMPAIGNS
        for row in rows:
            expected = legacy_columns(Status(row["campaign_status"]), Stage(row["processing_stage"]))
            actual = {name: row[name] for name in LEGACY_COLUMNS}
            assert actual == {**actual, **expected}, (row["id"], actual, expected)
            history = store.history(row["id"])
            illegal = machine.check_history(
                (machine.state_name(h["from_status"], h["from_stage"]), machine.state_name(h["to_status"], h["to_stage"]))
                for h in history
            )
            assert illegal == [], (row["id"], illegal)
            assert [h["version"] for h in history] == list(range(1, row["version"] + 1))
    finally:
        engine.dispose()


def _check_sandbox(svc: Services) -> None:
    stats = requests.get(f"{svc.env['SANDBOX_URL']}/_sandbox/stats", timeout=5).json()
    emails = stats.get("emails", {})
    assert sum(emails.values()) == CAMPAIGNS and max(emails.values()) == 1, emails
    print(f"calls {stats.get('calls')} 429s {stats.get('throttled')}")


def test_queue_dispatch_end_to_end(services: Services, pg_url: str) -> None:
    # Given queue-mode workers, a producer and recovery
    services.start("producer", "producer")
    services.start("recovery", "recovery")
    for i in range(2):
        services.start(f"worker-{i}", "worker", "--concurrency", "4", DISPATCH_MODE="queue")
    # Then every campaign is sent once, with correct legacy columns and a legal history
    _wait_all_sent(services, pg_url)
    _check_database(pg_url)
    _check_sandbox(services)


def test_polling_dispatch_end_to_end(services: Services, pg_url: str) -> None:
    # Given only polling-mode workers (no producer: the property_data poller starts due campaigns)
    services.start("poller-data", "worker", "--concurrency", "2", "--queues",
                   "property_data,active_listings,recent_sales,market_data,home_analysis", DISPATCH_MODE="polling")
    services.start("poller-email", "worker", "--concurrency", "2", "--queues", "email_creation,email_sending",
                   DISPATCH_MODE="polling")
    # Then every campaign is sent once, with correct legacy columns and a legal history
    _wait_all_sent(services, pg_url)
    _check_database(pg_url)
    _check_sandbox(services)


def test_both_dispatch_modes_side_by_side(services: Services, pg_url: str) -> None:
    # Given the rollout's middle step: pollers and queue workers on one database
    services.start("producer", "producer")
    services.start("recovery", "recovery")
    services.start("queue-worker", "worker", "--concurrency", "4", DISPATCH_MODE="queue")
    services.start("poller", "worker", "--concurrency", "2", DISPATCH_MODE="polling")
    # Then the result is the same as either alone
    _wait_all_sent(services, pg_url)
    _check_database(pg_url)
    _check_sandbox(services)


def test_two_pollers_never_run_one_campaign_at_once(pg_url: str) -> None:
    """SKIP LOCKED + the advisory lock: each campaign's stage runs once with two pollers × 3 threads."""
    # Given 12 campaigns at property_data and a handler that takes a while and records its runs
    engine = make_engine(pg_url)
    Base.metadata.create_all(engine)
    store = CampaignStore(engine)
    with engine.begin() as conn:
        conn.execute(Campaign.__table__.insert(), [
            {"owner_name": f"Owner {i}", "email": f"o{i}@example.com", "street": f"{i} Main St", "city": "Austin",
             "state": "TX", "zip_code": "78701"} for i in range(12)])
    assert len(store.start_due(limit=100)) == 12
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        with lock:
            runs[task.campaign_id] += 1
        time.sleep(0.2)
        store.apply(task.campaign_id, "advance", expect=Expect(Status.PROCESSING, Stage.PROPERTY_DATA),
                    task_id=task.task_id, worker_id=ctx.worker_id)

    registry = Registry()
    registry.register("property_data", handle, RetryPolicy(max_attempts=2, base=0.1, cap=0.1))
    pollers = [PollingDispatcher(store=CampaignStore(make_engine(pg_url)), registry=registry, limiter=None,
                                 worker_id=f"poller-{i}", task_types=["property_data"], poll_interval=0.05,
                                 start_due=False) for i in range(2)]
    # When both poll with three threads each until nothing is left
    threads = [threading.Thread(target=p.run, args=(3,), kwargs={"burst": True}) for p in pollers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then every campaign advanced, and no stage ran twice
    counts = store.counts()
    assert counts["stages"]["active_listings"] == 12, counts
    assert runs and max(runs.values()) == 1, runs
    print(f"handled per poller: {[p.handled for p in pollers]}")
    for p in pollers:
        p.store.engine.dispose()
    engine.dispose()


def test_dispatch_mode_setting_is_validated() -> None:
    assert parse_dispatch_mode(None) == "queue"
    assert parse_dispatch_mode("Polling") == "polling"
    with pytest.raises(ValueError, match="DISPATCH_MODE"):
        parse_dispatch_mode("celery")
