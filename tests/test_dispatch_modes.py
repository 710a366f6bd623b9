"""The feature flag (SPEC §3): queue dispatch and the legacy polling dispatch, end to end on PostgreSQL.

Each mode runs the real ``campaignctl worker`` processes (DISPATCH_MODE picks
the dispatch) against the sandbox, a real Redis (the shared rate limiter, and
the queues in queue mode) and a migrated PostgreSQL database. Both must bring
every campaign to SENT through the same machine, with the legacy status
columns matching the new position on every row, a legal history, and no email
sent twice. A side-by-side run (both modes at once, as during the rollout)
must be just as correct. The queue dispatch runs on a Redis Cluster too
(3 masters + 3 replicas), where each task type's keys live in their own
slot: the same checks hold, and the queues are seen to live on more than
one master.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select

from campaignctl.polling import PollingContext, PollingDispatcher, _size_pool, parse_dispatch_mode
from engine.errors import Transient
from engine.keys import Keys
from engine.outcome import Action
from engine.registry import Handler, Registry
from engine.retry import RetryPolicy
from engine.task import Task
from tests.servers import RedisClusterServer, free_port, stop_groups
from workflow import machine
from workflow.db import make_engine
from workflow.legacy import LEGACY_COLUMNS, legacy_columns
from workflow.models import Base, Campaign
from workflow.states import TASK_TYPES, Stage, Status
from workflow.store import CampaignStore, Expect

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
#: Campaigns per end-to-end run.
CAMPAIGNS = 3
#: Sandbox time scale and RATE_SCALE: Zillow's 10/min runs at 10/s.
SCALE = 60
#: Give up on the campaigns reaching SENT after this long, in s.
RUN_TIMEOUT = 90.0
#: Seconds the services get to stop on SIGTERM before their groups are killed.
STOP_GRACE = 15.0
#: Poller threads of the concurrency test: more than the old pool (5 + 10 overflow) could serve.
CONCURRENCY = 20
#: How often the cluster run looks at which slots hold its keys, in s.
SLOT_WATCH_EVERY = 0.05

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Services:
    """campaignctl subprocesses of one test, each in its own process group, stopped at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        #: The Redis Cluster the services run on (None: a single redis-server).
        self.cluster: RedisClusterServer | None = None

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


def spread_prefix(base: str, cluster: RedisClusterServer) -> str:
    """A key prefix (``base`` plus a suffix) whose task types' queues land on every master of ``cluster``.

    Each type's slot follows from the prefix's hash; 7 types on 3 masters all
    land on one master for about 1 prefix in 700. Picking a prefix that spans
    the masters keeps the test from depending on that luck.
    """
    probe = redis.RedisCluster.from_url(cluster.url)
    masters = len(probe.get_primaries())
    try:
        for i in range(1000):
            prefix = f"{base}s{i}"
            owners = {probe.nodes_manager.get_node_from_slot(probe.keyslot(Keys(prefix).queue(t))).name
                      for t in TASK_TYPES}
            if len(owners) == masters:
                return prefix
    finally:
        probe.close()
    raise AssertionError("no key prefix spreads the queues over every master")


@pytest.fixture
def services(request: pytest.FixtureRequest, pg_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Services]:
    """The services' environment on a migrated, seeded PostgreSQL and a running sandbox.

    Redis is the session's redis-server, or with ``indirect`` parameter
    ``"cluster"`` the session's Redis Cluster (REDIS_CLUSTER=true).
    """
    mode = getattr(request, "param", "node")
    port = free_port()
    if mode == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        redis_url, key_prefix = cluster.url, spread_prefix(key_prefix, cluster)
    else:
        redis_url = request.getfixturevalue("redis_server").url
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        # The code under test (a git worktree), not whichever checkout the virtualenv was installed from.
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": "true" if mode == "cluster" else "false",
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
    if mode == "cluster":
        svc.cluster = cluster
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


class SlotWatch:
    """Watches, while a cluster run goes on, which task types' slots hold keys of the run, and on which master.

    Every SLOT_WATCH_EVERY s it asks each type's slot how many keys it holds
    (CLUSTER COUNTKEYSINSLOT, answered by the master that serves the slot)
    and which master that is; ``seen`` maps a type to the masters seen
    holding keys of its slot. (Other tests' keys could share a slot only by
    a 1-in-16384 hash collision of their prefix.)
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.client = redis.RedisCluster.from_url(env["REDIS_URL"], decode_responses=True)
        keys = Keys(env["KEY_PREFIX"])
        self.slots = {t: self.client.keyslot(keys.queue(t)) for t in TASK_TYPES}
        self.seen: dict[str, set[str]] = {t: set() for t in TASK_TYPES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlotWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(SLOT_WATCH_EVERY):
            for task_type, slot in self.slots.items():
                node = self.client.nodes_manager.get_node_from_slot(slot)
                if self.client.cluster_countkeysinslot(slot):
                    self.seen[task_type].add(node.name)

    def masters(self) -> set[str]:
        return set().union(*self.seen.values())


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


def _check_fleet_gauges(svc: Services, port: int) -> None:
    """Recovery's /metrics catches up with the finished run (its snapshot is at most FLEET_REFRESH old)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 20
    while True:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        got = {
            "sent": samples.get(("campaign_engine_campaigns", (("status", "SENT"),))),
            "queued": sum(v for (n, _), v in samples.items() if n == "campaign_engine_queue_tasks"),
            "queue_gauges": sum(1 for (n, _) in samples if n == "campaign_engine_queue_tasks"),
            "alive": samples.get(("campaign_engine_workers", (("state", "alive"),))),
        }
        want = {"sent": CAMPAIGNS, "queued": 0, "queue_gauges": 3 * len(TASK_TYPES), "alive": 2}
        if got == want:
            return
        assert time.monotonic() < deadline, f"fleet gauges {got}, expected {want}\n{svc.logs()}"
        time.sleep(0.5)


def _check_sandbox(svc: Services, *, no_429: bool = False) -> None:
    """Every campaign's email accepted once; with ``no_429``, no provider answered 429 (the shared limiter held)."""
    stats = requests.get(f"{svc.env['SANDBOX_URL']}/_sandbox/stats", timeout=5).json()
    emails = stats.get("emails", {})
    assert sum(emails.values()) == CAMPAIGNS and max(emails.values()) == 1, emails
    print(f"calls {stats.get('calls')} 429s {stats.get('throttled')}")
    if no_429:
        assert not any(stats.get("throttled", {}).values()), stats


@pytest.mark.parametrize("services", ["node", pytest.param("cluster", marks=pytest.mark.cluster)], indirect=True)
def test_queue_dispatch_end_to_end(services: Services, pg_url: str) -> None:
    cluster = services.env["REDIS_CLUSTER"] == "true"
    # Given queue-mode workers, a producer and recovery (on a cluster: watching where the queues' keys live)
    with SlotWatch(services.env) if cluster else contextlib.nullcontext() as watch:
        services.start("producer", "producer")
        metrics_port = free_port()  # recovery exports the fleet gauges
        services.start("recovery", "recovery", METRICS_PORT=str(metrics_port), METRICS_HOST="127.0.0.1")
        for i in range(2):
            services.start(f"worker-{i}", "worker", "--concurrency", "4", DISPATCH_MODE="queue")
        # Then every campaign is sent once, with correct legacy columns and a legal history, and no 429
        _wait_all_sent(services, pg_url)
    _check_database(pg_url)
    _check_sandbox(services, no_429=True)
    # And recovery's fleet gauges, read from every slot, show it: all SENT, every queue empty, two live workers
    _check_fleet_gauges(services, metrics_port)
    if watch is not None:
        # And on a cluster every task type's keys lived in its own slot, on more than one master
        assert all(watch.seen.values()), watch.seen
        assert len(watch.masters()) > 1, watch.seen
        # (and redis-cli's CLUSTER KEYSLOT / CLUSTER SLOTS name the same master for each queue key)
        keys = Keys(services.env["KEY_PREFIX"])
        assert services.cluster is not None
        assert {t: {f"127.0.0.1:{services.cluster.master_of(keys.queue(t))}"} for t in TASK_TYPES} == watch.seen
        print(f"task types per master: { {m: sorted(t for t, s in watch.seen.items() if m in s) for m in watch.masters()} }")


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


def _campaigns_at_property_data(store: CampaignStore, count: int) -> list[int]:
    with store.engine.begin() as conn:
        conn.execute(Campaign.__table__.insert(), [
            {"owner_name": f"Owner {i}", "email": f"o{i}@example.com", "street": f"{i} Main St", "city": "Austin",
             "state": "TX", "zip_code": "78701"} for i in range(count)])
    return [s.id for s in store.start_due(limit=count)]


def _advance(store: CampaignStore) -> Handler:
    def handle(task: Task, ctx: Any) -> None:
        store.apply(task.campaign_id, "advance", expect=Expect(Status.PROCESSING, Stage.PROPERTY_DATA),
                    task_id=task.task_id, worker_id=ctx.worker_id)

    return handle


def _registry(handle: Handler, max_attempts: int = 2) -> Registry:
    registry = Registry()
    registry.register("property_data", handle, RetryPolicy(max_attempts=max_attempts, base=0.01, cap=0.01))
    return registry


def _poller(db_url: str, registry: Registry, name: str, **kwargs: Any) -> PollingDispatcher:
    """A dispatcher with its own engine, as another process would have."""
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("task_types", ["property_data"])
    return PollingDispatcher(store=CampaignStore(make_engine(db_url)), registry=registry, limiter=None,
                             worker_id=name, start_due=False, **kwargs)


def test_two_pollers_never_run_one_campaign_at_once(store: CampaignStore, db_url: str) -> None:
    """Claims are compare-and-set UPDATEs: each campaign's stage runs once with two pollers × 3 threads."""
    # finding 9
    # Given 12 campaigns at property_data and a handler that takes a while and records its runs
    _campaigns_at_property_data(store, 12)
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    advance = _advance(store)

    def handle(task: Task, ctx: Any) -> None:
        with lock:
            runs[task.campaign_id] += 1
        time.sleep(0.2)
        advance(task, ctx)

    pollers = [_poller(db_url, _registry(handle), f"poller-{i}") for i in range(2)]
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


def test_a_claimed_campaign_is_skipped_until_its_claim_lapses(store: CampaignStore, db_url: str) -> None:
    # finding 9: claims are in the database (not a process's memory), and a dead poller's claim lapses
    [cid] = _campaigns_at_property_data(store, 1)
    first = _poller(db_url, _registry(_advance(store)), "poller-a", lease=0.2)
    second = _poller(db_url, _registry(_advance(store)), "poller-b")
    # Given the first poller holds the campaign (and then dies without releasing it)
    held = first.claim()
    assert held is not None and held.campaign_id == cid
    # Then another poller skips it while the claim is live
    assert second.claim() is None
    # And takes it once the claim has lapsed; the dead poller's renewal then fails
    time.sleep(0.3)
    taken = second.claim()
    assert taken is not None and taken.campaign_id == cid
    assert first.renew(held) is False
    second.run_claimed(taken)
    assert store.get(cid).processing_stage is Stage.ACTIVE_LISTINGS
    for p in (first, second):
        p.store.engine.dispose()


def test_the_claim_of_a_running_stage_is_kept_alive(store: CampaignStore, db_url: str) -> None:
    # finding 9: a stage longer than POLL_LEASE keeps its campaign; a claim taken away is reported lost
    [cid] = _campaigns_at_property_data(store, 1)
    first = _poller(db_url, _registry(_advance(store)), "poller-a", lease=1.0)
    second = _poller(db_url, _registry(_advance(store)), "poller-b")
    held = first.claim()
    assert held is not None
    ctx = PollingContext(Task.new("property_data", cid), "poller-a", None, 1.0, attempt=held.token)
    first.keeper.hold(held, ctx)
    # Given the keeper renews the claim before it lapses
    time.sleep(0.6)
    assert first.keeper.renew_all() == 0
    time.sleep(0.6)
    # Then no other poller can take the campaign, though the first lease is over
    assert second.claim() is None
    # When the keeper misses its rounds and another poller takes the lapsed claim
    time.sleep(0.6)
    assert second.claim() is not None
    # Then the next round reports the claim lost to the running handler
    assert first.keeper.renew_all() == 1 and ctx.lease_lost.is_set()
    for p in (first, second):
        p.store.engine.dispose()


def test_running_campaigns_do_not_fill_the_batch(store: CampaignStore, db_url: str) -> None:
    # finding 9: claimed rows are skipped in SQL, so they never take a poller's LIMIT POLL_BATCH
    ids = _campaigns_at_property_data(store, 3)
    busy = _poller(db_url, _registry(_advance(store)), "poller-a", batch=2)
    other = _poller(db_url, _registry(_advance(store)), "poller-b", batch=2)
    # Given two campaigns running on one poller (the oldest two: the whole of a batch of 2)
    running = [busy.claim(), busy.claim()]
    assert sorted(c.campaign_id for c in running if c) == ids[:2]
    # Then another poller still finds the third
    third = other.claim()
    assert third is not None and third.campaign_id == ids[2]
    for p in (busy, other):
        p.store.engine.dispose()


def test_attempts_survive_a_dispatcher_restart(store: CampaignStore, db_url: str) -> None:
    # finding 9: attempts and backoff live in the database, so max attempts hold across processes
    [cid] = _campaigns_at_property_data(store, 1)

    def fail(task: Task, ctx: Any) -> None:
        raise Transient("zillow: 503")

    # Given a poller whose one attempt failed (of two allowed)
    first = _poller(db_url, _registry(fail), "poller-a")
    assert first.run_claimed(first.claim()).action is Action.RETRY
    first.store.engine.dispose()
    # When a new poller (a restart) takes the campaign once its backoff is over
    restarted = _poller(db_url, _registry(fail), "poller-b")
    time.sleep(0.05)
    claim = restarted.claim()
    assert claim is not None and claim.attempts == 1
    # Then its failure is the last attempt: the campaign goes to ERROR
    assert restarted.run_claimed(claim).action is Action.DEAD
    assert store.get(cid).campaign_status is Status.ERROR
    restarted.store.engine.dispose()


def test_attempts_belong_to_their_stage(store: CampaignStore, db_url: str) -> None:
    # finding 9: the next stage starts at 0 attempts
    [cid] = _campaigns_at_property_data(store, 1)
    failures = [Transient("zillow: 503")]

    def flaky(task: Task, ctx: Any) -> None:
        if failures:
            raise failures.pop()
        _advance(store)(task, ctx)

    registry = _registry(flaky, max_attempts=3)
    registry.register("active_listings", flaky, RetryPolicy(max_attempts=3, base=0.01, cap=0.01))
    poller = _poller(db_url, registry, "poller-a", task_types=["property_data", "active_listings"])
    assert poller.run_claimed(poller.claim()).action is Action.RETRY
    time.sleep(0.05)
    claim = poller.claim()
    assert claim is not None and claim.attempts == 1
    assert poller.run_claimed(claim).action is Action.ACK
    nxt = poller.claim()
    assert nxt is not None and (nxt.task_type, nxt.attempts) == ("active_listings", 0)
    assert store.get(cid).processing_stage is Stage.ACTIVE_LISTINGS
    poller.store.engine.dispose()


def test_concurrency_20_does_not_starve(pg_url: str) -> None:
    # finding 9: no connection is held per poller thread, and the pool fits the concurrency
    engine = make_engine(pg_url)
    Base.metadata.create_all(engine)
    store = CampaignStore(engine)
    _campaigns_at_property_data(store, 40)
    # Given one store (its pool sized to the concurrency) shared by the poller and its handlers, as in a worker
    shared = CampaignStore(make_engine(pg_url, concurrency=CONCURRENCY))
    running, peak = [0], [0]
    lock = threading.Lock()
    advance = _advance(shared)

    def handle(task: Task, ctx: Any) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        with shared.engine.connect() as conn:  # a handler holding a connection while it works
            conn.exec_driver_sql("SELECT 1")
            time.sleep(0.3)
        advance(task, ctx)
        with lock:
            running[0] -= 1

    poller = PollingDispatcher(store=shared, registry=_registry(handle, max_attempts=1), limiter=None,
                               worker_id="poller-a", task_types=["property_data"], start_due=False,
                               poll_interval=0.05)
    # When it runs 20 threads
    thread = threading.Thread(target=poller.run, args=(CONCURRENCY,), kwargs={"burst": True})
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert store.counts()["stages"]["active_listings"] == 40
    # Then every campaign advanced, more than 15 at once (what the old pool could serve), none deferred
    assert poller.handled == 40 and peak[0] > 15, (poller.handled, peak[0])
    shared.engine.dispose()
    engine.dispose()


def test_the_polling_worker_sizes_its_pool_to_the_concurrency(db_url: str) -> None:
    # finding 9
    store = CampaignStore(make_engine(db_url))
    _size_pool(store, CONCURRENCY)
    assert store.engine.pool.size() >= CONCURRENCY
    store.engine.dispose()


def test_dispatch_mode_setting_is_validated() -> None:
    assert parse_dispatch_mode(None) == "queue"
    assert parse_dispatch_mode("Polling") == "polling"
    with pytest.raises(ValueError, match="DISPATCH_MODE"):
        parse_dispatch_mode("celery")
