"""Outages of PostgreSQL and Redis: the services log once, back off, and carry on by themselves.

The producer, recovery and workers run as real ``campaignctl`` processes.
PostgreSQL is a server of this module's own (stopped and started here, so the
session's shared server is never disturbed); Redis is the session's server,
or one of the test's own where the test starts it late. Timers are short
(OUTAGE_BACKOFF_MAX=1-2 s) so a service notices the return within a second or
two; every wait has a deadline and nothing asserts a duration.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import Engine, func, select

from campaignctl.wiring import database_outage
from engine.errors import describe
from engine.loop import Outage
from engine.queue import TaskQueue
from engine.registry import Registry
from engine.retry import OutageBackoff
from engine.settings import EngineSettings
from tests.servers import PostgresServer, RedisServer, free_port, serve_or_fail
from tests.workflow.helpers import new_campaigns
from workflow.db import make_engine
from workflow.models import Base, CampaignEvent
from workflow.states import TASK_TYPES, Status
from workflow.store import CampaignStore, Expect

ROOT = Path(__file__).resolve().parents[2]
#: Sandbox --time-scale and RATE_SCALE of the worker test: Zillow's 10/min runs at 5/s.
SCALE = 30
#: A password in DATABASE_URL (trust authentication ignores it) that no log line may show.
DB_PASSWORD = "s3cr3t-Pw"

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.single_node]  # PostgreSQL outages: once is enough


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server only this module uses: the tests stop and start it."""
    yield from serve_or_fail(PostgresServer)


@pytest.fixture
def db(own_pg: PostgresServer) -> Iterator[tuple[str, Engine]]:
    """A fresh database on ``own_pg`` with the schema; its URL carries a password that must never be logged."""
    url = own_pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    yield url.replace("postgres@", f"postgres:{DB_PASSWORD}@"), engine
    engine.dispose()
    if not (own_pg.data / "postmaster.pid").exists():
        own_pg.start()  # a failed test must not leave the next one without its server


class Procs:
    """``campaignctl`` subprocesses of one test, each with its log file; SIGTERMed, then SIGKILLed, at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "campaignctl", *args], cwd=ROOT,
                                    env={**self.env, **extra}, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "campaignctl", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {n} (exit {p.poll()}):\n" + "\n".join(self.log(n).splitlines()[-25:])
                         for n, p in self.procs.items())

    def check_alive(self) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        assert not dead, f"exited: {dead}\n{self.logs()}"

    def wait_for(self, what: str, predicate: Callable[[], object], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.check_alive()
            assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout}s\n{self.logs()}"
            time.sleep(0.05)

    def terminate(self) -> dict[str, int | None]:
        """SIGTERM every process; their exit codes (None: had to be killed)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                codes[name] = None
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        return codes


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Procs]]:
    made: list[Procs] = []

    def make(**env: str) -> Procs:
        full = dict(os.environ)
        full.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", PRODUCER_INTERVAL="0.2", RECOVERY_INTERVAL="0.2",
                    HEARTBEAT_INTERVAL="0.2", LIVENESS_TTL="3", STALL_THRESHOLD="1", OUTAGE_BACKOFF_MAX="1",
                    CLAIM_BLOCK="0.2", LOG_LEVEL="WARNING")
        full.update(env)
        made.append(Procs(full, tmp_path))
        return made[-1]

    yield make
    for p in made:
        p.terminate()


def _outage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ": unavailable (" in line]


def _ready(queue: TaskQueue, task_type: str = "property_data") -> int:
    return int(queue.stats()["queues"][task_type]["ready"])


# -- the backoff, on its own ----------------------------------------------------------------


def test_outage_backoff_grows_with_the_outage_and_stops_at_the_cap() -> None:
    # Given a backoff on a clock the test moves (base 1 s, cap 8 s)
    now = [100.0]
    backoff = OutageBackoff(base=1.0, cap=8.0, clock=lambda: now[0], rng=random.Random(7))
    waits = []
    # When something keeps failing, each try after the wait the backoff asked for
    for _ in range(12):
        wait = backoff.failure()
        waits.append(wait)
        now[0] += wait
    # Then the ceiling (the outage's age, between base and cap) grows about geometrically, jitter keeps
    # each wait in [ceiling/2, ceiling], and the cap holds; success ends the streak and reports it
    print("waits:", " ".join(f"{w:.2f}" for w in waits))
    assert all(0.5 <= w <= 8.0 for w in waits)
    assert waits[-1] >= 4.0 and max(waits[:2]) <= 1.0
    lasted, failures = backoff.success() or (0.0, 0)
    assert failures == 12 and lasted == pytest.approx(sum(waits))
    assert backoff.success() is None and backoff.failure() <= 1.0


def test_database_errors_are_outages_and_other_errors_are_not(db: tuple[str, Engine]) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    url, _ = db
    # A refused connection (nothing listens on that port) is an outage, also when a handler wrapped it
    refused = make_engine(url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/x")
    with pytest.raises(OperationalError) as caught:
        refused.connect()
    assert database_outage(caught.value)
    registry = Registry(is_outage=database_outage)
    try:
        raise RuntimeError("stage failed") from caught.value
    except RuntimeError as wrapped:
        assert registry.is_outage(wrapped)
    assert DB_PASSWORD not in describe(caught.value) and "\n" not in describe(caught.value)
    # A bad statement and a constraint violation are not
    engine = make_engine(url)
    with pytest.raises(ProgrammingError) as bad:
        with engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
    assert not registry.is_outage(bad.value)
    assert not registry.is_outage(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert registry.is_outage(redis.ConnectionError("Redis is down"))  # the engine's own knowledge
    engine.dispose()
    refused.dispose()


def test_outage_logs_once_per_streak_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    # Given a tracker of something that fails 50 times in a row, then works
    outage = Outage("thing", base=0.01, cap=0.05, is_outage=lambda e: isinstance(e, ConnectionRefusedError))
    with caplog.at_level("DEBUG", logger="engine.loop"):
        for _ in range(50):
            outage.failed(ConnectionRefusedError("refused"))
        outage.ok()
        outage.ok()
        outage.failed(ValueError("a bug"))
    # Then: one warning when it started, one when it ended; an unexpected error gets its traceback
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(warnings) == 2 and "unavailable" in warnings[0] and "working again" in warnings[1], warnings
    assert "(50 failed tries)" in warnings[1]
    assert len(errors) == 1 and errors[0].exc_info is not None


# -- PostgreSQL restarts under running services ---------------------------------------------


def test_producer_and_recovery_ride_out_a_postgres_restart(
        own_pg: PostgresServer, db: tuple[str, Engine], redis_url: str, redis_client: redis.Redis,
        key_prefix: str, procs: Callable[..., Procs]) -> None:
    url, engine = db
    settings = EngineSettings(redis_url=redis_url, key_prefix=key_prefix)
    queue = TaskQueue(redis_client, settings, TASK_TYPES)
    svc = procs(DATABASE_URL=url, REDIS_URL=redis_url, KEY_PREFIX=key_prefix)
    # Given a producer and a recovery loop that started two due campaigns
    svc.start("producer", "producer")
    svc.start("recovery", "recovery")
    new_campaigns(engine, 2)
    svc.wait_for("the producer to enqueue 2 campaigns", lambda: _ready(queue) == 2)

    # When PostgreSQL stops for a few seconds
    own_pg.stop()
    svc.wait_for("both services to log the outage",
                 lambda: _outage_lines(svc.log("producer")) and _outage_lines(svc.log("recovery")))
    once = svc.run("producer", "--once")
    time.sleep(2.0)  # the outage goes on: many failed passes (every 0.2-1 s), each retried
    svc.check_alive()
    own_pg.start()

    # Then both carry on by themselves: new due campaigns are started, stalled ones re-enqueued
    new_campaigns(engine, 2)
    svc.wait_for("the producer to start the 2 new campaigns", lambda: _ready(queue) == 4)
    redis_client.delete(queue.keys.queue("property_data"))
    for key in redis_client.scan_iter(match=f"*{key_prefix}*dedup*"):
        redis_client.delete(key)
    svc.wait_for("recovery to re-enqueue the 4 PROCESSING campaigns", lambda: _ready(queue) == 4)
    svc.wait_for("both to log that the database works again",
                 lambda: "working again" in svc.log("producer") and "working again" in svc.log("recovery"))
    logs = {name: svc.log(name) for name in ("producer", "recovery")}
    codes = svc.terminate()
    for name, text in logs.items():
        print(f"--- {name}:\n{text}")
    print(f"--- producer --once during the outage (exit {once.returncode}):\n{once.stderr}")
    # One warning per outage, not one per pass, no traceback, no password
    for name, text in logs.items():
        assert 1 <= len(_outage_lines(text)) <= 2, (name, text)
        assert "Traceback" not in text and DB_PASSWORD not in text, (name, text)
    assert once.returncode == 1 and "unavailable" in once.stderr and "Traceback" not in once.stderr
    assert DB_PASSWORD not in once.stderr
    assert codes == {"producer": 0, "recovery": 0}


def test_services_wait_for_redis_at_start_up(db: tuple[str, Engine], key_prefix: str,
                                             procs: Callable[..., Procs]) -> None:
    url, engine = db
    server = RedisServer()  # its port is chosen, nothing listens there yet
    try:
        svc = procs(DATABASE_URL=url, REDIS_URL=server.url, KEY_PREFIX=key_prefix,
                    SANDBOX_URL=f"http://127.0.0.1:{free_port()}")
        new_campaigns(engine, 2)
        # Given producer, recovery and a worker started while Redis is down
        for name, args in (("producer", ["producer"]), ("recovery", ["recovery"]),
                           ("worker", ["worker", "--queues", "email_sending", "--concurrency", "1"])):
            svc.start(name, *args)
        svc.wait_for("all three to wait for Redis",
                     lambda: all(_outage_lines(svc.log(n)) for n in ("producer", "recovery", "worker")))
        no_wait = svc.run("producer", "--no-wait")
        # When Redis comes up
        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        queue = TaskQueue(client, EngineSettings(redis_url=server.url, key_prefix=key_prefix), TASK_TYPES)
        # Then they go on without a restart: the producer starts the due campaigns, the worker registers
        svc.wait_for("the producer to enqueue the 2 due campaigns", lambda: _ready(queue) == 2)
        svc.wait_for("the worker to register", lambda: client.hlen(queue.keys.workers) == 1)
        svc.wait_for("each to log that Redis works again",
                     lambda: all("working again" in svc.log(n) for n in ("producer", "recovery", "worker")))
        codes = svc.terminate()
        for name in ("producer", "recovery", "worker"):
            print(f"--- {name}:\n{svc.log(name)}")
            assert "Traceback" not in svc.log(name) and DB_PASSWORD not in svc.log(name)
        print(f"--- producer --no-wait (exit {no_wait.returncode}):\n{no_wait.stderr}")
        assert no_wait.returncode == 1 and "Redis" in no_wait.stderr and "Traceback" not in no_wait.stderr
        assert codes == {"producer": 0, "recovery": 0, "worker": 0}
        client.close()
    finally:
        server.cleanup()


def test_dead_letter_hook_during_an_outage_leaves_the_campaign_for_recovery(
        own_pg: PostgresServer, db: tuple[str, Engine], redis_client: redis.Redis, redis_url: str,
        key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    from campaignctl.context import AppContext
    from campaignctl.wiring import build_registry, reconcile_source
    from engine.recovery import Recovery

    url, engine = db
    ctx = AppContext({"DATABASE_URL": url, "REDIS_URL": redis_url, "KEY_PREFIX": key_prefix,
                      "STALL_THRESHOLD": "0.2"})
    registry = build_registry(ctx, handlers={})
    store = CampaignStore(engine)
    [cid] = new_campaigns(engine, 1)
    assert store.apply(cid, "start", expect=Expect(Status.DORMANT)).applied
    queue = TaskQueue(redis_client, ctx.settings, TASK_TYPES)
    # Given a task that is dead-lettered while PostgreSQL is down
    queue.enqueue("property_data", cid)
    lease = queue.claim("w", ["property_data"], 1).leases[0]
    own_pg.stop()
    try:
        with caplog.at_level("WARNING"):
            assert queue.dead_letter(lease, "permanent failure: test") is not None
            registry.dead_lettered(lease.task, "permanent failure: test", None)  # must not raise
    finally:
        own_pg.start()
    # Then the campaign is still PROCESSING (the hook could not write), the hook said so in one line...
    snap = store.get(cid)
    assert snap is not None and snap.campaign_status is Status.PROCESSING
    hook_lines = [r for r in caplog.records if "dead-letter hook" in r.getMessage()]
    assert len(hook_lines) == 1 and hook_lines[0].exc_info is None and DB_PASSWORD not in hook_lines[0].getMessage()
    # ...and recovery's reconcile gives it a live task again once it has not moved for STALL_THRESHOLD
    time.sleep(ctx.settings.stall_threshold)
    report = Recovery(redis_client, ctx.settings, queue, registry, reconcile_source(ctx)).run_once()
    assert report.reconciled == 1 and _ready(queue) == 1
    ctx.db.dispose()


# -- a worker whose database restarts in the middle of stage work ------------------------------


def test_worker_defers_tasks_through_a_postgres_restart_without_spending_attempts(
        own_pg: PostgresServer, db: tuple[str, Engine], redis_url: str, redis_client: redis.Redis,
        key_prefix: str, procs: Callable[..., Procs]) -> None:
    url, engine = db
    port = free_port()
    svc = procs(DATABASE_URL=url, REDIS_URL=redis_url, KEY_PREFIX=key_prefix, SANDBOX_URL=f"http://127.0.0.1:{port}",
                RATE_SCALE=str(SCALE), AUTO_APPROVE="1", OUTAGE_BACKOFF_MAX="2", STALL_THRESHOLD="3")
    store = CampaignStore(engine)
    ids = new_campaigns(engine, 4)
    # Given the sandbox (every call 0.2 s slower), producer, recovery and one worker running the real stages
    _start_slow_sandbox(svc, port)
    svc.start("producer", "producer")
    svc.start("recovery", "recovery")
    svc.start("worker", "--log-level", "INFO", "worker", "--concurrency", "4")

    # When PostgreSQL stops as soon as the first stage result is stored, for a few seconds
    svc.wait_for("the first stage to finish", lambda: _events(engine, "advance") >= 1)
    own_pg.stop()
    svc.wait_for("the worker to defer tasks", lambda: "deferring their tasks" in svc.log("worker"))
    time.sleep(2.0)  # the outage goes on: deferred tasks come back and are deferred again
    svc.check_alive()
    own_pg.start()

    # Then every campaign is SENT: no ERROR, no dead letter, no retry attempt spent on the outage
    svc.wait_for("every campaign to be SENT", lambda: _all_sent(store, ids), timeout=60)
    worker_log = svc.log("worker")
    codes = svc.terminate()
    print(f"--- worker:\n{worker_log}\n--- recovery:\n{svc.log('recovery')}\n--- producer:\n{svc.log('producer')}")
    counts = store.counts()["campaigns"]
    print("campaigns:", counts)
    assert counts["ERROR"] == 0 and counts["SENT"] == len(ids)
    assert _events(engine, "fail") == 0
    assert _dead_letters(redis_client, redis_url, key_prefix) == 0
    assert "failed (attempt" not in worker_log and "gave up after" not in worker_log
    assert 1 <= len(_outage_lines(worker_log)) <= 2 and "working again" in worker_log
    assert DB_PASSWORD not in worker_log
    assert codes["worker"] == 0 and codes["producer"] == 0 and codes["recovery"] == 0


def _start_slow_sandbox(svc: Procs, port: int) -> None:
    """The simulated providers, every call 0.2 s slower (so an outage lands in the middle of stage work)."""
    svc.start("sandbox", "sandbox", "--port", str(port), "--time-scale", str(SCALE), "--faults", "*:latency=0.2")
    svc.wait_for("the sandbox", lambda: _sandbox_up(port))


def _all_sent(store: CampaignStore, ids: list[int]) -> bool:
    snaps = [store.get(cid) for cid in ids]
    return all(s is not None and s.campaign_status is Status.SENT for s in snaps)


def _sandbox_up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=1).ok
    except requests.RequestException:
        return False


def _events(engine: Engine, trigger: str) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(CampaignEvent)
                                    .where(CampaignEvent.trigger == trigger)).scalar_one())
    except Exception:  # noqa: BLE001 - the database may be down while the test polls
        return 0


def _dead_letters(client: redis.Redis, redis_url: str, key_prefix: str) -> int:
    queue = TaskQueue(client, EngineSettings(redis_url=redis_url, key_prefix=key_prefix), TASK_TYPES)
    return int(queue.stats()["dead_letters"])



def test_polling_worker_rides_out_a_postgres_restart_without_spending_attempts(
        own_pg: PostgresServer, db: tuple[str, Engine], redis_url: str, key_prefix: str,
        procs: Callable[..., Procs]) -> None:
    """The feature flag's legacy dispatch keeps the same promise as the queue worker."""
    url, engine = db
    port = free_port()
    svc = procs(DATABASE_URL=url, REDIS_URL=redis_url, KEY_PREFIX=key_prefix, SANDBOX_URL=f"http://127.0.0.1:{port}",
                RATE_SCALE=str(SCALE), AUTO_APPROVE="1", DISPATCH_MODE="polling", POLL_INTERVAL="0.2")
    store = CampaignStore(engine)
    ids = new_campaigns(engine, 4)
    # Given the sandbox (every call 0.2 s slower), the producer and one polling worker running the real stages
    _start_slow_sandbox(svc, port)
    svc.start("producer", "producer")
    svc.start("worker", "--log-level", "INFO", "worker", "--concurrency", "4")

    # When PostgreSQL stops as soon as the first stage result is stored, for a few seconds
    svc.wait_for("the first stage to finish", lambda: _events(engine, "advance") >= 1)
    own_pg.stop()
    time.sleep(3.0)
    svc.check_alive()
    own_pg.start()

    # Then every campaign is SENT, none failed, no attempt was spent on the outage
    svc.wait_for("every campaign to be SENT", lambda: _all_sent(store, ids), timeout=60)
    worker_log = svc.log("worker")
    codes = svc.terminate()
    print(f"--- worker:\n{worker_log}")
    assert _events(engine, "fail") == 0 and store.counts()["campaigns"]["SENT"] == len(ids)
    assert "attempt 1 failed" not in worker_log and "Traceback" not in worker_log
    assert 1 <= len(_outage_lines(worker_log)) <= 3 and "working again" in worker_log
    assert DB_PASSWORD not in worker_log
    assert codes["worker"] == 0 and codes["producer"] == 0
