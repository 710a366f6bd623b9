"""A small supervisor that runs the whole system as separate OS processes and breaks it on schedule.

One ``Cluster`` owns, for one chaos example: a fresh redis-server (AOF on)
behind a TCP proxy that plays its endpoint (tests/chaos/proxy.py; a replica
too when the schedule fails Redis over) — or, for a schedule with
``redis="cluster"``, a Redis Cluster of 3 masters and 3 replicas on loopback
(every process gets REDIS_CLUSTER=true and one live node's URL, as
ElastiCache's configuration endpoint would give) — a fresh database on the suite's
PostgreSQL server, the sandbox, a producer, one or two recovery processes,
several queue workers and optionally a polling worker, each started through
the real ``campaignctl`` command with the same environment an operator would
give it. A supervisor
thread restarts any of those that exits (after a short back-off, as systemd
or Kubernetes would), so a SIGKILL is followed by a new process with a new
worker id, never by a resurrected one.

Faults are applied by ``run_schedule`` at their time; afterwards everything
is put back (stopped workers continued, provider faults cleared, servers up)
and ``wait_for_rest`` waits until the database and Redis are quiet. Nothing
here decides whether the run was correct: ``collect`` gathers the evidence and
``invariants.check`` judges it. A sampler thread reads every task payload in
Redis a few times a second during the run, so the evidence includes the
highest retry_count each task ever carried, not only what is left at rest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import redis
from redis.crc import key_slot
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from engine.connection import is_cluster
from engine.keys import Keys
from tests.chaos.proxy import RedisProxy
from tests.chaos.schedule import PROVIDERS, Fault, Schedule
from tests.servers import (
    ClusterNodeInfo,
    PostgresServer,
    RedisClusterServer,
    RedisServer,
    ServerUnavailable,
    free_port,
)
from workflow.db import make_engine
from workflow.models import Campaign, CampaignEvent, EmailSend
from workflow.states import TASK_TYPES

#: The repository root (where campaignctl runs from).
ROOT = Path(__file__).resolve().parents[2]
#: Pause before the supervisor restarts a process that exited, in s.
RESTART_DELAY_S = 0.3
#: How often the supervisor looks at its processes, in s.
SUPERVISE_INTERVAL_S = 0.1
#: How often wait_for_rest polls the database and Redis, in s.
REST_POLL_S = 0.5
#: The quiet state must hold this long before the run counts as at rest, in s.
REST_STABLE_S = 1.5
#: Grace given to a process on SIGTERM before SIGKILL, in s.
STOP_GRACE_S = 10.0
#: Key prefix of every Redis key the cluster's processes create.
KEY_PREFIX = "chaos"
#: How often the sampler reads every task payload in Redis (ready, in flight, delayed), in s.
SAMPLE_INTERVAL_S = 0.2
#: How long a duplicate_send fault waits for an email_sending task in flight before it gives up, in s.
DUPLICATE_WAIT_S = 10.0
#: How long a failover waits for the replica to catch up with the paused primary, in s.
FAILOVER_SYNC_S = 5.0
#: A "lease lost" this soon after Redis lost data (flush, wipe, crash, master kill) is that loss, not recovery,
#: in s.
LOSS_EXCUSE_S = 5.0
#: How long a master_kill waits for the cluster to promote the killed master's replica, in s (node timeout 2 s
#: plus the election: ~4 s on loopback).
PROMOTION_WAIT_S = 30.0
#: How long a restarted node may take to rejoin as a replica of its successor and finish its sync, in s.
REJOIN_WAIT_S = 30.0
#: Errors of a Redis client while a server or a cluster node is down. ``RedisClusterException`` is not a
#: RedisError: RedisCluster raises it when no startup node answers its discovery.
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

#: Engine timers for chaos runs: short, so recovery happens within an example (seconds, as strings for env).
CHAOS_TIMERS: dict[str, str] = {
    "HEARTBEAT_INTERVAL": "0.5",
    "LIVENESS_TTL": "2",
    "RECOVERY_INTERVAL": "0.5",
    "STALL_THRESHOLD": "4",
    "PRODUCER_INTERVAL": "0.5",
    # A lease a worker could not settle (Redis was down) lapses after this and recovery requeues it: every
    # example with such an outage waits that long to come to rest. Long enough that a zombie's stray lease
    # entry (a broken fence) is still there when the run rests, a few seconds after the zombie wakes.
    "VISIBILITY_TIMEOUT": "30",
    "MAX_TOKEN_SLEEP": "2",
    "SHUTDOWN_GRACE": "5",
    # Polling workers (schedules with polling_workers): poll often, so they compete with the queue workers;
    # a killed poller's claims lapse within an example.
    "POLL_INTERVAL": "0.2",
    "POLL_LEASE": "10",
    # A second sender defers until the first sender's intent lease ends (or the first records its outcome):
    # longer than the SES timeout (2 s) plus an injected latency (1 s) and the record, short enough that a
    # deferred duplicate does not hold an example for a minute.
    "SEND_INTENT_LEASE": "6",
    # Every provider at 10/min, so 10/s at the suite's time scale: 100 ms between grants. At the plan
    # rates SES would run at 600/s, where 1.7 ms of scheduling jitter between the engine's grant and the
    # sandbox's clock already trips the sandbox's bucket (docs/reliability.md, findings).
    "RATE_RENTCAST": "10/min",
    "RATE_EMAIL_VERIFICATION": "10/min",
    "RATE_SES": "10/min",
    # Provider read timeouts: an injected timeout must cost seconds, not a minute.
    "PROVIDER_CONNECT_TIMEOUT": "2",
    **{f"{api.upper()}_TIMEOUT": "2" for api in PROVIDERS},
}


def campaignctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "campaignctl", *args]


#: Nice value of the sandbox process (lower = more CPU when the machine is busy).
SANDBOX_NICE = -10


def provider_priority() -> list[str]:
    """argv prefix that runs the sandbox at a higher CPU priority than the system under test.

    The sandbox stands in for providers that run on their own machines, and
    it judges a call's rate when its handler gets to it. Starved of CPU on a
    busy 2-core box, it let calls queue for up to ~0.4 s and then judged
    them back to back: 429s for calls the engine had paced correctly (the
    load test's call log: engine grants never closer than its interval, the
    delay all between the client's send and the sandbox reading it;
    docs/reliability.md). coreutils ``nice`` runs the command anyway when
    raising the priority is not permitted (not root).
    """
    nice = shutil.which("nice")
    return [nice, "-n", str(SANDBOX_NICE)] if nice else []


@attrs.define
class ProcRecord:
    """One OS process the supervisor started, and how it ended."""

    name: str
    pid: int
    started: float
    ended: float | None = None
    returncode: int | None = None
    #: Why it ended when we ended it ("SIGKILL by schedule", "stopped at shutdown"); None = on its own.
    ended_by: str | None = None
    log: str = ""
    #: What it is: producer, recovery, worker (queue dispatch), poller (DISPATCH_MODE=polling), sescrash, sandbox.
    role: str = ""


class Managed:
    """A named, supervised process: restarted after it exits while ``wanted``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], logdir: Path, role: str = "") -> None:
        self.name = name
        self.role = role or name
        self.argv = argv
        self.env = dict(env)
        self.logdir = logdir
        self.popen: subprocess.Popen[bytes] | None = None
        self.record: ProcRecord | None = None
        self.wanted = True
        self.generation = 0
        self.died_at: float | None = None

    def start(self) -> None:
        self.generation += 1
        log = self.logdir / f"{self.name}.{self.generation}.log"
        fh = open(log, "wb")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        fh.close()
        self.record = ProcRecord(self.name, self.popen.pid, time.monotonic(), log=str(log), role=self.role)
        self.died_at = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen and self.popen.poll() is None else None

    def signal(self, sig: int) -> bool:
        if self.popen is None or self.popen.poll() is not None:
            return False
        try:
            os.kill(self.popen.pid, sig)
        except ProcessLookupError:
            return False
        return True


class Cluster:
    """The system under test for one example; use as a context manager."""

    def __init__(
        self,
        *,
        pg: PostgresServer,
        workdir: Path,
        schedule: Schedule,
        time_scale: float,
        extra_env: Mapping[str, str] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.pg = pg
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.schedule = schedule
        self.time_scale = time_scale
        self.extra_env = dict(extra_env or {})
        self.say = say
        #: The current Redis primary (a failover replaces it), its replica (schedules with a failover),
        #: primaries killed by a failover, and the endpoint every process connects to.
        self.redis_server: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.old_redis: list[RedisServer] = []
        self.proxy: RedisProxy | None = None
        #: The Redis Cluster of a schedule with redis="cluster" (then none of the above), and the node whose URL
        #: every process is given (moved to a live node when it is killed, as a configuration endpoint's DNS would).
        self.redis_cluster: RedisClusterServer | None = None
        self.entry_port = 0
        #: Every master_kill: target, slot, port, synced replicas, wall-clock kill/promotion/rejoin, new master.
        self.master_kills: list[dict[str, Any]] = []
        self._sample_client: redis.Redis | None = None
        self.keys = Keys(KEY_PREFIX)
        self.db_url = ""
        self.db: Engine | None = None
        self.sandbox: Managed | None = None
        self.sandbox_url = ""
        self.procs: dict[str, Managed] = {}
        self.records: list[ProcRecord] = []
        self._lock = threading.RLock()
        self._stop_supervisor = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._timers: list[threading.Thread] = []
        #: What the schedule did, in order: (seconds since start, description).
        self.timeline: list[tuple[float, str]] = []
        #: Pids we SIGKILLed or SIGSTOPped (the only senders allowed to leave an unknown outcome).
        self.killed_pids: set[int] = set()
        self.stopped_pids: set[int] = set()
        self.unsubscribed: dict[int, dict[str, Any]] = {}
        self.provider_faults_seen: dict[str, set[str]] = {}
        self.active_specs: list[str] = []
        self.servers_restarted: set[str] = set()
        self.t0 = 0.0
        #: time.time() - time.monotonic(): process records are monotonic, the processes' logs wall-clock.
        self.wall_offset = time.time() - time.monotonic()
        self.campaign_ids: list[int] = []
        self.kinds: dict[int, str] = {}
        #: Wall-clock (start, end, kind) of every fault that made Redis lose data.
        self.redis_losses: list[tuple[float, float, str]] = []
        self.redis_pauses: list[tuple[float, float]] = []
        #: task_id -> the highest counters any sample saw for it (see _sample).
        self.task_samples: dict[str, dict[str, Any]] = {}
        self.samples_taken = 0
        self._sampler: threading.Thread | None = None
        #: Duplicate email_sending tasks injected: {campaign_id, task_id, original, at}.
        self.duplicates: list[dict[str, Any]] = []
        self.failovers = 0

    # -- life cycle --------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "HYPOTHESIS", "CHAOS"))}
        env.update(
            {
                "DATABASE_URL": self.db_url,
                "REDIS_URL": self.redis_url,
                "REDIS_CLUSTER": "true" if self.redis_cluster else "false",
                "KEY_PREFIX": KEY_PREFIX,
                "SANDBOX_URL": self.sandbox_url,
                "RATE_SCALE": str(self.time_scale),
                "AUTO_APPROVE": "true",
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "INFO"),
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(CHAOS_TIMERS)
        env.update(self.extra_env)
        return env

    @property
    def redis_url(self) -> str:
        """The URL every process is given: the proxy's, or on a cluster one live node's."""
        if self.redis_cluster:
            return f"redis://127.0.0.1:{self.entry_port}/0"
        return self.proxy.url if self.proxy else ""

    def start(self) -> None:
        if self.schedule.redis == "cluster":
            self.redis_cluster = RedisClusterServer().start()
            self.entry_port = self.redis_cluster.ports[0]
        else:
            self.redis_server = RedisServer(appendonly=True).start()
            self.proxy = RedisProxy(("127.0.0.1", self.redis_server.port)).start()
            if any(f.kind == "redis_failover" for f in self.schedule.faults):
                self.replica = self._start_replica(self.redis_server)
        name = f"chaos_{os.getpid()}_{int(time.time() * 1000) % 10_000_000}"
        self.db_url = self.pg.create_database(name)
        self.db = make_engine(self.db_url, pool_size=2)
        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        self.run_cli("migrate", timeout=120, check=True)
        self.sandbox = Managed(
            "sandbox",
            provider_priority() + campaignctl_argv("sandbox", "--port", str(port), "--time-scale", str(self.time_scale)),
            self.base_env(),
            self.logdir,
        )
        self.sandbox.start()
        self._wait_sandbox()
        self.seed()
        self._start_processes()
        self._wait_for_first_start()
        self.t0 = time.monotonic()
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()
        self._sampler = threading.Thread(target=self._sample_loop, name="chaos-sampler", daemon=True)
        self._sampler.start()

    def _wait_for_first_start(self, timeout: float = 60.0) -> None:
        """Fault times count from the producer's first start, not from the processes' imports."""
        assert self.db is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.connect() as conn:
                started = conn.execute(
                    select(text("count(*)")).select_from(Campaign.__table__)
                    .where(Campaign.__table__.c.campaign_status != "DORMANT")
                ).scalar()
            if started:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the producer started no campaign within {timeout}s; see {self.logdir}")

    def _wait_sandbox(self, timeout: float = 30.0) -> None:
        assert self.sandbox and self.sandbox.popen
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sandbox.popen.poll() is not None:
                raise RuntimeError(f"the sandbox exited {self.sandbox.popen.returncode}; see {self.sandbox.record.log}")
            try:
                self.sandbox_get("/_sandbox/stats")
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f"the sandbox did not answer within {timeout}s")

    def _start_processes(self) -> None:
        env = self.base_env()
        s = self.schedule
        specs: list[tuple[str, str, list[str], dict[str, str]]] = [("producer", "producer", campaignctl_argv("producer"), env)]
        for i in range(max(1, s.recoveries)):
            specs.append((recovery_name(i), "recovery", campaignctl_argv("recovery"), env))
        for i in range(s.workers):
            wenv = dict(env)
            if i == 0 and s.clock_skew:
                wenv.update(skewed_clock_env(s.clock_skew))
            specs.append((f"worker{i}", "worker", campaignctl_argv("worker", "--concurrency", str(s.concurrency)), wenv))
        for i in range(s.polling_workers):
            penv = dict(env, DISPATCH_MODE="polling")
            specs.append((f"poller{i}", "poller", campaignctl_argv("worker", "--concurrency", str(s.concurrency)), penv))
        if s.ses_crash_worker:
            cenv = dict(env)
            cenv["CE_TEST_CRASH_AFTER_SES_CALL"] = "1"
            specs.append(("sescrash", "sescrash",
                          campaignctl_argv("worker", "--queues", "email_sending", "--concurrency", "1"), cenv))
        with self._lock:
            for name, role, argv, penv in specs:
                proc = Managed(name, argv, penv, self.logdir, role=role)
                proc.start()
                self.procs[name] = proc
                self.records.append(proc.record)  # type: ignore[arg-type]

    def _supervise(self) -> None:
        while not self._stop_supervisor.wait(SUPERVISE_INTERVAL_S):
            with self._lock:
                for proc in self.procs.values():
                    if proc.popen is None or not proc.wanted:
                        continue
                    rc = proc.popen.poll()
                    if rc is None:
                        continue
                    now = time.monotonic()
                    if proc.record and proc.record.ended is None:
                        proc.record.ended, proc.record.returncode = now, rc
                        proc.died_at = now
                        if proc.record.ended_by is None:
                            self.note(f"{proc.name} (pid {proc.record.pid}) exited on its own, rc={rc}")
                    if proc.died_at is not None and now - proc.died_at >= RESTART_DELAY_S:
                        proc.start()
                        self.records.append(proc.record)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        self._stop_supervisor.set()
        if self._supervisor:
            self._supervisor.join(5)
        for t in self._timers:
            t.join(15)
        with self._lock:
            procs = list(self.procs.values()) + ([self.sandbox] if self.sandbox else [])
            for proc in procs:
                proc.wanted = False
                if proc.popen and proc.popen.poll() is None:
                    if proc.record:
                        proc.record.ended_by = proc.record.ended_by or "stopped at shutdown"
                    proc.signal(signal.SIGCONT)
                    proc.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc in procs:
                if proc.popen is None:
                    continue
                try:
                    proc.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    if proc.record:
                        proc.record.ended_by = "SIGKILL at shutdown (did not stop on SIGTERM)"
                    proc.signal(signal.SIGKILL)
                    proc.popen.wait()
                if proc.record and proc.record.ended is None:
                    proc.record.ended, proc.record.returncode = time.monotonic(), proc.popen.returncode
        if self._sampler:
            self._sampler.join(5)
        if self._sample_client is not None:
            self._sample_client.close()
        if self.db is not None:
            self.db.dispose()
        if self.proxy:
            self.proxy.stop()
        for server in [self.redis_server, self.replica, *self.old_redis, self.redis_cluster]:
            if server:
                server.cleanup()

    # -- helpers ---------------------------------------------------------------

    def note(self, what: str) -> None:
        t = time.monotonic() - self.t0 if self.t0 else 0.0
        self.timeline.append((t, what))

    def run_cli(self, *args: str, timeout: float = 60, check: bool = False, env: Mapping[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        run_env = dict(env or self.base_env())
        run_env["LOG_LEVEL"] = "WARNING"
        done = subprocess.run(
            campaignctl_argv(*args), env=run_env, cwd=str(ROOT),
            capture_output=True, text=True, timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"campaignctl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done

    def redis_client(self, timeout: float = 5.0) -> redis.Redis:
        """A client of the current primary (not through the proxy), or a RedisCluster client on a cluster.

        A RedisCluster client discovers the shards when it is made, so on a
        cluster this raises (REDIS_DOWN_ERRORS) while no node answers.
        """
        if self.redis_cluster:
            return redis.RedisCluster.from_url(  # type: ignore[return-value]
                self.redis_url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout)
        assert self.redis_server
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True, socket_timeout=timeout)

    def sandbox_get(self, path: str) -> Any:
        with urllib.request.urlopen(self.sandbox_url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def sandbox_post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(
            self.sandbox_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    # -- seeding -----------------------------------------------------------------

    def seed(self) -> None:
        """Insert the batch straight into the database: due now, one recipient per campaign.

        Seeding by hand (not ``campaignctl seed``) lets the schedule choose
        which campaigns must fail (an address Zillow does not know, an email
        the verifier rejects) and keeps every recipient unique, so the
        sandbox's per-recipient email count is a per-campaign count.
        """
        assert self.db is not None
        s = self.schedule
        rows = []
        for i in range(s.campaigns):
            kind = "normal"
            if i < s.unknown_addresses:
                kind = "unknown_address"
            elif i < s.unknown_addresses + s.bad_emails:
                kind = "bad_email"
            rows.append((seed_row(i, kind), kind))
        with self.db.begin() as conn:
            for row, kind in rows:
                cid = conn.execute(
                    insert(Campaign.__table__).values(**row).returning(Campaign.__table__.c.id)
                ).scalar_one()
                self.campaign_ids.append(cid)
                self.kinds[cid] = kind

    # -- faults ------------------------------------------------------------------

    def run_schedule(self) -> None:
        """Apply every fault at its time, then put everything back."""
        for fault in sorted(self.schedule.faults, key=lambda f: f.at):
            delay = self.t0 + fault.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self.apply(fault)
            except Exception as exc:  # a fault that could not be applied is reported, not fatal
                self.note(f"could not apply {fault.describe()}: {exc!r}")
        for t in self._timers:
            t.join(30)
        self.restore()

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        def run() -> None:
            time.sleep(delay)
            action()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._timers.append(t)

    def apply(self, fault: Fault) -> None:
        k = fault.kind
        if k == "kill_worker":
            self.kill(self.worker_name(fault.target))
        elif k == "kill_producer":
            self.kill("producer")
        elif k == "kill_recovery":
            self.kill(recovery_name(fault.target % max(1, self.schedule.recoveries)))
        elif k == "stop_worker":
            self.stop_process(self.worker_name(fault.target), fault.duration)
        elif k == "stop_producer":
            self.stop_process("producer", fault.duration)
        elif k == "stop_recovery":
            self.stop_process(recovery_name(fault.target % max(1, self.schedule.recoveries)), fault.duration)
        elif k == "unsubscribe":
            cid = self.campaign_ids[fault.target % len(self.campaign_ids)]
            t = threading.Thread(target=self.unsubscribe, args=(cid,), daemon=True)
            t.start()
            self._timers.append(t)
        elif k == "provider_faults":
            self.provider_faults_on(fault.spec, fault.duration)
        elif k == "redis_restart":
            self.note(f"redis: graceful stop, down {fault.duration:.1f}s, start (AOF kept)")
            assert self.redis_server
            self.redis_server.stop()
            time.sleep(fault.duration)
            self.redis_server.start()
            self.servers_restarted.add("redis")
        elif k == "redis_crash":
            self.note(f"redis: SIGKILL, down {fault.duration:.1f}s, start from the AOF")
            assert self.redis_server
            lost_at = time.time()
            self.redis_server.kill()
            time.sleep(fault.duration)
            self.redis_server.start()
            self.redis_losses.append((lost_at, time.time(), k))
            self.servers_restarted.add("redis")
        elif k == "redis_flushall":
            self.note("redis: FLUSHALL")
            lost_at = time.time()
            self.redis_client().flushall()
            self.redis_losses.append((lost_at, time.time(), k))
            self.servers_restarted.add("redis")
        elif k == "redis_wipe":
            self.note(f"redis: SIGKILL, down {fault.duration:.1f}s, start empty")
            assert self.redis_server
            lost_at = time.time()
            self.redis_server.kill()
            time.sleep(fault.duration)
            for f in self.redis_server.dir.iterdir():
                if f.is_dir():
                    shutil.rmtree(f)
                elif f.name != "redis.log":
                    f.unlink()
            self.redis_server.start()
            self.redis_losses.append((lost_at, time.time(), k))
            self.servers_restarted.add("redis")
        elif k == "redis_stop":
            self.stop_redis(fault.duration)
            self.servers_restarted.add("redis")
        elif k == "redis_failover":
            self.failover(fault.duration)
            self.servers_restarted.add("redis")
        elif k == "master_kill":
            self.master_kill(fault.spec or "registry", fault.duration)
        elif k == "duplicate_send":
            t = threading.Thread(target=self.inject_duplicate_send, daemon=True)
            t.start()
            self._timers.append(t)
        elif k == "pg_restart":
            self.note(f"postgres: fast shutdown, down {fault.duration:.1f}s, start")
            self.pg.stop()
            time.sleep(fault.duration)
            self.pg.start()
            self.servers_restarted.add("postgres")
        else:
            raise ValueError(f"unknown fault kind {k!r}")

    def worker_name(self, target: int) -> str:
        """Queue workers first, then polling workers (a target past both wraps around)."""
        s = self.schedule
        i = target % max(1, s.workers + s.polling_workers)
        return f"worker{i}" if i < s.workers else f"poller{i - s.workers}"

    # -- Redis faults beyond restarts ------------------------------------------------------

    def stop_redis(self, duration: float) -> None:
        """SIGSTOP the primary for ``duration`` s: clients hang, every key's TTL runs on (Redis expires by wall clock)."""
        assert self.redis_server and self.redis_server.proc
        proc = self.redis_server.proc
        proc.send_signal(signal.SIGSTOP)
        self.redis_pauses.append((time.time(), time.time() + duration))
        self.note(f"redis: SIGSTOP (pid {proc.pid}) for {duration:.1f}s")

        def resume() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                self.note(f"redis: SIGCONT (pid {proc.pid})")

        self._later(duration, resume)

    def _start_replica(self, primary: RedisServer) -> RedisServer:
        replica = RedisServer(appendonly=True).start()
        # The primary's full sync waits 5 s by default for more replicas to join (repl-diskless-sync-delay).
        redis.Redis(port=primary.port, socket_timeout=5).config_set("repl-diskless-sync-delay", 0)
        r = redis.Redis(port=replica.port, decode_responses=True, socket_timeout=5)
        r.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if r.info("replication").get("master_link_status") == "up":
                return replica
            time.sleep(0.05)
        raise RuntimeError(f"replica on {replica.port} did not sync with {primary.port}")

    def failover(self, cutoff: float) -> None:
        """Promote the replica, kill the old primary, move the endpoint (the proxy) to the new one.

        Like a managed failover: writes on the old primary are paused
        (``CLIENT PAUSE WRITE``), the replica catches up with its offset, is
        promoted with ``REPLICAOF NO ONE``, the old primary is SIGKILLed and
        every client connection is cut. For ``cutoff`` s the endpoint leads
        nowhere (DNS still moving); then new connections reach the new
        primary. Acknowledged writes are not lost; a reply in flight when the
        connection is cut is, so clients retry commands that already ran
        (the replay case of SPEC §4a). A new replica is started for the next failover.
        """
        assert self.redis_server and self.proxy
        old, new = self.redis_server, self.replica
        if new is None:
            self.note("redis failover: no replica (the schedule had none at start); skipped")
            return
        lossless = True
        try:
            r_old = redis.Redis(port=old.port, decode_responses=True, socket_timeout=2)
            r_new = redis.Redis(port=new.port, decode_responses=True, socket_timeout=2)
            r_old.execute_command("CLIENT", "PAUSE", str(int((FAILOVER_SYNC_S + 2) * 1000)), "WRITE")
            want = int(r_old.info("replication")["master_repl_offset"])
            deadline = time.monotonic() + FAILOVER_SYNC_S
            while int(r_new.info("replication").get("slave_repl_offset", -1)) < want:
                if time.monotonic() > deadline:
                    lossless = False
                    break
                time.sleep(0.01)
        except redis.RedisError as exc:
            self.note(f"redis failover: could not pause/sync the old primary ({exc!r}); promoting anyway")
            lossless = False
        lost_at = time.time()
        redis.Redis(port=new.port, socket_timeout=5).replicaof("NO", "ONE")
        cut = self.proxy.switch(None)
        old.kill()
        self.old_redis.append(old)
        self.redis_server, self.replica = new, None
        self.note(f"redis failover: replica {new.port} promoted, old primary {old.port} killed, {cut} connection(s) "
                  f"cut, endpoint down {cutoff:.1f}s" + ("" if lossless else " (replica had not caught up: writes lost)"))
        if not lossless:
            self.redis_losses.append((lost_at, time.time() + cutoff, "redis_failover"))
        time.sleep(cutoff)
        self.proxy.switch(("127.0.0.1", new.port))
        self.note(f"redis failover: endpoint -> {new.port}")
        self.failovers += 1
        if self.failovers < sum(1 for f in self.schedule.faults if f.kind == "redis_failover"):
            self.replica = self._start_replica(new)

    # -- Redis Cluster faults -------------------------------------------------------------------

    def slot_key(self, target: str) -> str:
        """A key in the slot a master_kill aims at: the registry's ``{P}`` or a task type's ``{P:T}``."""
        return self.keys.workers if target == "registry" else self.keys.queue(target)

    def master_kill(self, target: str, rejoin_after: float) -> None:
        """SIGKILL the master serving ``target``'s slot; the cluster promotes its replica after the node timeout.

        Replication is asynchronous: what the master acknowledged but had not
        yet sent to its replica dies with it (a lease, an ack, an enqueue), as
        in a crash. So the kill is recorded as a Redis data loss lasting until
        the promotion (``redis_losses``), and invariant 9 excuses lease losses
        right after it as it does after a crash. A thread waits for the
        promotion (the timeline says how long it took) and, when
        ``rejoin_after`` > 0, starts the killed node again that long after the
        kill: it rejoins as a replica of its successor, so a later kill of the
        same shard has a replica to promote. A master with no synced replica
        (its replica was killed and is not back) is not killed: its slots
        would stay unserved for the rest of the example. Nor is a master
        killed while an earlier kill's failover is still under way: with 3
        masters, two down at once leave no majority to vote either replica
        in, and the cluster never recovers; the kill waits for the promotion
        (the timeline says so).
        """
        cluster = self.redis_cluster
        if cluster is None:
            self.note(f"master_kill {target}: not a cluster schedule; skipped")
            return
        pending = [m for m in self.master_kills if m["promoted_at"] is None and not m.get("gave_up")]
        if pending:
            waited = time.monotonic()
            while any(m["promoted_at"] is None and not m.get("gave_up") for m in pending):
                time.sleep(0.05)
            self.note(f"master_kill {target}: waited {time.monotonic() - waited:.1f}s for the failover of "
                      f"{pending[-1]['target']} to finish (two masters down at once leave no majority)")
        key = self.slot_key(target)
        port = cluster.master_of(key)
        replicas = cluster.synced_replicas(port)
        if not replicas:
            self.note(f"master_kill {target}: master {port} has no synced replica; skipped")
            return
        record: dict[str, Any] = {"target": target, "slot": key_slot(key.encode()), "port": port,
                                  "replicas": replicas, "killed_at": time.time(), "at": time.monotonic() - self.t0,
                                  "promoted_at": None, "new_master": None, "rejoined_at": None}
        pid = cluster.procs[port].pid
        cluster.kill(port)
        self.master_kills.append(record)
        self.servers_restarted.add("redis")
        self.note(f"redis cluster: SIGKILL master {port} (pid {pid}) serving {target} (slot {record['slot']}); "
                  f"synced replica(s) {replicas}")
        if port == self.entry_port:
            self._move_entry(exclude=port)
        self._later(0.0, lambda: self._follow_failover(record, key, rejoin_after))

    def _move_entry(self, exclude: int) -> None:
        """Point REDIS_URL of every process started from now on at a live node (a configuration endpoint's DNS)."""
        assert self.redis_cluster
        live = [p for p in self.redis_cluster.live_ports if p != exclude]
        if not live:
            return
        self.entry_port = live[0]
        with self._lock:
            for proc in self.procs.values():
                proc.env["REDIS_URL"] = self.redis_url
        self.note(f"redis cluster: REDIS_URL of new processes -> node {self.entry_port}")

    def _follow_failover(self, record: dict[str, Any], key: str, rejoin_after: float) -> None:
        assert self.redis_cluster
        cluster, port = self.redis_cluster, record["port"]
        deadline = time.monotonic() + PROMOTION_WAIT_S
        while time.monotonic() < deadline:
            try:
                new = cluster.master_of(key)
            except (ServerUnavailable, *REDIS_DOWN_ERRORS):
                new = port
            if new != port:
                record["promoted_at"], record["new_master"] = time.time(), new
                break
            time.sleep(0.05)
        ended = record["promoted_at"] or time.time()
        self.redis_losses.append((record["killed_at"], ended, "master_kill"))
        if record["new_master"] is None:
            record["gave_up"] = True
            self.note(f"redis cluster: no replica of {port} promoted within {PROMOTION_WAIT_S:.0f}s")
        else:
            self.note(f"redis cluster: replica {record['new_master']} promoted to master of {record['target']} "
                      f"{ended - record['killed_at']:.1f}s after the kill")
        if rejoin_after <= 0:
            return
        time.sleep(max(0.0, record["killed_at"] + rejoin_after - time.time()))
        try:
            cluster.start_node(port)
        except ServerUnavailable as exc:
            self.note(f"redis cluster: node {port} did not start again: {exc}")
            return
        deadline = time.monotonic() + REJOIN_WAIT_S
        while time.monotonic() < deadline:
            try:
                master = cluster.master_of(key)
                if port in cluster.synced_replicas(master):
                    record["rejoined_at"] = time.time()
                    self.note(f"redis cluster: node {port} started again, a synced replica of {master}")
                    return
            except (ServerUnavailable, *REDIS_DOWN_ERRORS):
                pass
            time.sleep(0.1)
        self.note(f"redis cluster: node {port} started again but is no synced replica after {REJOIN_WAIT_S:.0f}s")

    def inject_duplicate_send(self) -> None:
        """LPUSH a second, valid email_sending task for a campaign whose send is in flight (or READY_TO_SEND).

        A duplicate delivery SPEC §4 allows (at least once): the payload is
        fresh (new task id, retry_count 0, the campaign's run id), so nothing
        but the send intent stands between it and a second email.
        """
        assert self.db is not None
        deadline = time.monotonic() + DUPLICATE_WAIT_S
        while time.monotonic() < deadline:
            target = None
            seen = {d["campaign_id"] for d in self.duplicates}  # one duplicate per campaign
            try:
                r = self.redis_client()
            except REDIS_DOWN_ERRORS:
                time.sleep(0.1)  # no cluster node answers discovery: look again
                continue
            try:
                for raw in r.hvals(self.keys.inflight("email_sending")):
                    data = json.loads(raw)
                    if data.get("campaign_id") not in seen:
                        target = (data["campaign_id"], data.get("run_id"), f"in flight as task {data.get('task_id')}")
                        break
                if target is None:
                    with self.db.connect() as conn:
                        row = conn.execute(
                            select(Campaign.__table__.c.id, Campaign.__table__.c.run_id)
                            .where(Campaign.__table__.c.campaign_status == "READY_TO_SEND")
                            .order_by(Campaign.__table__.c.id)
                        ).first()
                    if row is not None and row.id not in seen:
                        target = (row.id, row.run_id, "READY_TO_SEND in the database")
                if target is not None and self._push_duplicate(r, *target):
                    return
            except (*REDIS_DOWN_ERRORS, ValueError, KeyError, SQLAlchemyError):
                pass  # Redis or PostgreSQL is down under another fault: look again
            finally:
                r.close()
            time.sleep(0.02)
        self.note(f"duplicate_send: no email_sending task in flight within {DUPLICATE_WAIT_S:.0f}s; nothing injected")

    def _push_duplicate(self, r: redis.Redis, cid: int, run_id: int | None, why: str) -> bool:
        """Push a fresh email_sending payload for ``cid`` unless another fault already duplicated it."""
        payload: dict[str, Any] = {"task_id": uuid.uuid4().hex, "campaign_id": cid, "task_type": "email_sending",
                                   "retry_count": 0, "enqueued_at": time.time()}
        if run_id is not None:
            payload["run_id"] = run_id
        with self._lock:
            if cid in {d["campaign_id"] for d in self.duplicates}:
                return False
            r.lpush(self.keys.queue("email_sending"), json.dumps(payload))
            self.duplicates.append({"campaign_id": cid, "task_id": payload["task_id"], "original": why,
                                    "at": time.time()})
        self.note(f"duplicate email_sending task {payload['task_id'][:8]} for campaign {cid} ({why})")
        return True

    # -- sampling the task counters ------------------------------------------------------------

    def _sample_loop(self) -> None:
        while not self._stop_supervisor.wait(SAMPLE_INTERVAL_S):
            try:
                self._sample()
            except REDIS_DOWN_ERRORS:
                # Redis is restarting, stopped or failing over: sample again later (on a cluster with a client
                # that discovers the shards again).
                if self._sample_client is not None:
                    self._sample_client.close()
                    self._sample_client = None

    def _sample(self) -> None:
        """Record, per task id, the highest retry_count and lease_losses seen in a ready list, hash or delayed set."""
        if self.redis_cluster:
            # One client for the run: discovering the shards five times a second would cost more than the reads.
            if self._sample_client is None:
                self._sample_client = self.redis_client(timeout=1.0)
            r = self._sample_client
        else:
            assert self.redis_server
            r = redis.Redis(port=self.redis_server.port, decode_responses=True, socket_timeout=1,
                            socket_connect_timeout=1)
        try:
            pipe = r.pipeline(transaction=False)
            for t in TASK_TYPES:
                pipe.lrange(self.keys.queue(t), 0, -1)
                pipe.hvals(self.keys.inflight(t))
                pipe.zrange(self.keys.delayed(t), 0, -1)
            found = pipe.execute()
        finally:
            if not self.redis_cluster:
                r.close()
        now = time.time()
        self.samples_taken += 1
        for where, payloads in zip(("ready", "in flight", "delayed") * len(TASK_TYPES), found):
            for raw in payloads:
                self.record_payload(raw, where, now)

    def record_payload(self, raw: Any, where: str, at: float) -> None:
        try:
            data = json.loads(raw) if isinstance(raw, str | bytes) else raw
            task_id = data["task_id"]
        except (ValueError, TypeError, KeyError):
            return
        if not isinstance(data, dict):
            return
        mine = self.task_samples.setdefault(task_id, {
            "task_id": task_id, "task_type": data.get("task_type"), "campaign_id": data.get("campaign_id"),
            "retry_count": 0, "lease_losses": 0, "where": where, "at": at})
        for counter in ("retry_count", "lease_losses"):
            value = data.get(counter, 0)
            if isinstance(value, int) and value > mine[counter]:
                mine[counter] = value
                if counter == "retry_count":
                    mine["where"], mine["at"] = where, at

    def kill(self, name: str) -> None:
        with self._lock:
            proc = self.procs[name]
            pid = proc.pid
            if pid is None or proc.record is None:
                self.note(f"kill {name}: not running")
                return
            proc.record.ended_by = "SIGKILL by schedule"
            self.killed_pids.add(pid)
            proc.signal(signal.SIGKILL)
        self.note(f"SIGKILL {name} (pid {pid})")

    def stop_process(self, name: str, duration: float) -> None:
        """SIGSTOP ``name`` for ``duration`` s, then SIGCONT: past LIVENESS_TTL a worker becomes a zombie."""
        with self._lock:
            proc = self.procs[name]
            popen, pid = proc.popen, proc.pid
            if pid is None or popen is None:
                self.note(f"SIGSTOP {name}: not running")
                return
            self.stopped_pids.add(pid)
            proc.signal(signal.SIGSTOP)
        self.note(f"SIGSTOP {name} (pid {pid}) for {duration:.1f}s")

        def resume() -> None:
            if popen.poll() is None:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                self.note(f"SIGCONT {name} (pid {pid})")

        self._later(duration, resume)

    def unsubscribe(self, cid: int) -> None:
        """``campaignctl unsubscribe ID``, retried after a refusal or an outage, as an operator would.

        A refusal (exit 1) is a compare-and-set conflict with a worker moving
        the campaign at that instant; the retry applies to the new position.
        """
        started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        done = None
        for attempt in range(1, 11):
            done = self.run_cli("unsubscribe", str(cid))
            if done.returncode == 0:
                self.unsubscribed[cid] = {"requested_at": started, "attempts": attempt}
                self.note(f"unsubscribed campaign {cid}: {done.stdout.strip()[-200:]}"
                          + (f" (attempt {attempt})" if attempt > 1 else ""))
                return
            self.note(f"unsubscribe {cid}: exit {done.returncode}: {done.stderr.strip()[-200:]}")
            time.sleep(0.3)
        self.note(f"unsubscribe {cid} gave up after 10 attempts")

    def provider_faults_on(self, spec: str, duration: float) -> None:
        with self._lock:
            self.active_specs.append(spec)
            self._post_faults()
        for provider, kinds in parse_fault_spec(spec).items():
            self.provider_faults_seen.setdefault(provider, set()).update(kinds)
        self.note(f"sandbox faults on: {spec} for {duration:.1f}s")

        def off() -> None:
            with self._lock:
                self.active_specs.remove(spec)
                self._post_faults()
            self.note(f"sandbox faults off: {spec}")

        self._later(duration, off)

    def _post_faults(self) -> None:
        merged = merge_fault_specs(self.active_specs)
        self.sandbox_post("/_sandbox/faults", {"faults": merged})

    def restore(self) -> None:
        """Undo whatever is still broken: continue stopped workers, clear provider faults."""
        with self._lock:
            for proc in self.procs.values():
                proc.signal(signal.SIGCONT)
            if self.redis_server and self.redis_server.proc and self.redis_server.proc.poll() is None:
                self.redis_server.proc.send_signal(signal.SIGCONT)
            self.active_specs.clear()
            try:
                self._post_faults()
            except (urllib.error.URLError, OSError) as exc:
                self.note(f"could not clear sandbox faults: {exc!r}")
        self.note("schedule over; everything restored")

    # -- waiting -----------------------------------------------------------------

    def quiet_state(self) -> dict[str, Any]:
        """What is still moving: campaigns not resting, tasks ready/in flight/delayed, leases."""
        assert self.db is not None
        out: dict[str, Any] = {}
        with self.db.connect() as conn:
            rows = conn.execute(
                select(Campaign.__table__.c.campaign_status, text("count(*)")).group_by(Campaign.__table__.c.campaign_status)
            ).all()
        out["statuses"] = {s: n for s, n in rows}
        out["moving"] = sum(n for s, n in rows if s in ("DORMANT", "PROCESSING", "READY_TO_SEND"))
        with self.redis_client() as r:
            out["queues"] = redis_queue_counts(r)
        return out

    def wait_for_rest(self, timeout: float) -> tuple[bool, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                state = self.quiet_state()
            except Exception as exc:  # servers restarting: just look again
                state = {"error": repr(exc)}
                quiet_since = None
                time.sleep(REST_POLL_S)
                continue
            q = state["queues"]
            # Rest = no campaign moving and no task anywhere a worker could pick it up or is running it.
            # Lease bookkeeping (leases, locks, workers' held sets) is NOT waited for: it must be gone by
            # now, and invariant 5 checks that. Waiting for it would let a stray lease entry (a zombie's
            # unfenced renewal) lapse after the visibility timeout and hide the bug.
            quiet = state["moving"] == 0 and not any(q[k] for k in WORK_COUNTS)
            if quiet:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= REST_STABLE_S:
                    self.note("at rest")
                    return True, state
            else:
                quiet_since = None
            time.sleep(REST_POLL_S)
        self.note("not at rest before the deadline")
        return False, state

    # -- evidence ----------------------------------------------------------------

    def collect(self) -> Evidence:
        assert self.db is not None
        with self.db.connect() as conn:
            campaigns = [dict(r._mapping) for r in conn.execute(select(Campaign.__table__).order_by(Campaign.__table__.c.id))]
            events = [dict(r._mapping) for r in conn.execute(
                select(CampaignEvent.__table__).order_by(CampaignEvent.__table__.c.campaign_id, CampaignEvent.__table__.c.version))]
            sends = [dict(r._mapping) for r in conn.execute(select(EmailSend.__table__))]
        queues_cli = self.run_cli("queues", "--json")
        dlq_cli = self.run_cli("dlq", "list", "--json")
        with self.redis_client() as r:
            return self._evidence(r, campaigns, events, sends, queues_cli, dlq_cli)

    def _evidence(self, r: redis.Redis, campaigns: list[dict[str, Any]], events: list[dict[str, Any]],
                  sends: list[dict[str, Any]], queues_cli: subprocess.CompletedProcess[str],
                  dlq_cli: subprocess.CompletedProcess[str]) -> Evidence:
        dead_letters = _json_or_error(dlq_cli)
        entries = dead_letters.get("dead_letters", dead_letters.get("entries")) if isinstance(dead_letters, dict) \
            else dead_letters
        for entry in entries or []:
            if isinstance(entry, dict) and isinstance(entry.get("task"), dict):
                self.record_payload(entry["task"], "dead letters", time.time())
        procs = self.process_table()
        return Evidence(
            campaigns=campaigns,
            events=events,
            sends=sends,
            kinds=dict(self.kinds),
            sandbox_stats=self.sandbox_get("/_sandbox/stats"),
            sandbox_calls=self.sandbox_get("/_sandbox/calls").get("calls", []),
            queues=_json_or_error(queues_cli),
            dead_letters=dead_letters,
            redis_counts=redis_queue_counts(r),
            lock_keys=live_locks(r, r.scan_iter(match=f"{{{KEY_PREFIX}:*}}:task_lock:*", count=1000)),
            lease_entries=[m for t in TASK_TYPES for m in r.zrange(self.keys.leases(t), 0, -1)],
            held_entries=held_by_worker(r, KEY_PREFIX),
            killed_pids=set(self.killed_pids),
            stopped_pids=set(self.stopped_pids),
            crash_hook_pids={rec.pid for rec in self.records if rec.name == "sescrash"},
            unsubscribed=dict(self.unsubscribed),
            provider_faults=dict(self.provider_faults_seen),
            servers_restarted=set(self.servers_restarted),
            time_scale=self.time_scale,
            rates=self.plan_rates(),
            exits=[attrs.asdict(rec) for rec in self.records if rec.ended is not None],
            procs=procs,
            lease_lost=[e for p in procs if p["role"] in ("worker", "sescrash") for e in scan_log(p, LEASE_LOST)],
            dead_declared=[e for p in procs if p["role"] == "recovery" for e in scan_log(p, DEAD_DECLARED)],
            poll_attempts=[e for p in procs if p["role"] == "poller" for e in scan_log(p, POLL_ATTEMPT)],
            redis_losses=list(self.redis_losses),
            redis_pauses=list(self.redis_pauses),
            task_samples=list(self.task_samples.values()),
            samples_taken=self.samples_taken,
            duplicates=list(self.duplicates),
            t0=self.t0,
            redis_mode=self.schedule.redis,
            master_kills=[dict(m) for m in self.master_kills],
            cluster_nodes=self.redis_cluster.nodes() if self.redis_cluster else [],
        )

    def process_table(self) -> list[dict[str, Any]]:
        """Every process the supervisor started: role, pid, wall-clock life, how it ended, its log and clock."""
        out = []
        for rec in self.records:
            env = self.procs[rec.name].env if rec.name in self.procs else {}
            out.append({
                "name": rec.name, "role": rec.role, "pid": rec.pid, "log": rec.log,
                "started": rec.started + self.wall_offset,
                "ended": None if rec.ended is None else rec.ended + self.wall_offset,
                "returncode": rec.returncode, "ended_by": rec.ended_by,
                "crash_hook": env.get("CE_TEST_CRASH_AFTER_SES_CALL", "") in ("1", "true", "yes"),
                "tz": env.get("TZ", ""), "skew": float(env.get("CHAOS_CLOCK_SKEW", "0") or 0),
            })
        return out

    def plan_rates(self) -> dict[str, float]:
        """The providers' own limits (calls/s before the time scale), as the sandbox enforces them.

        Not the engine's table: the engine grants RATE_HEADROOM (0.9) of these
        on purpose, and invariant 4 and the load test's bound are about what the
        provider allows.
        """
        from sandbox.limits import plan_rates

        return plan_rates(self.base_env())

    def describe_run(self) -> str:
        lines = [f"  {t:6.1f}s  {what}" for t, what in self.timeline]
        return "\n".join(lines)

    def log_tails(self, lines: int = 25) -> str:
        out = []
        for log in sorted(self.logdir.glob("*.log")):
            body = log.read_text(errors="replace").splitlines()
            interesting = [l for l in body if any(w in l for w in ("Traceback", "Error", "ERROR", "CRITICAL", "WARNING"))]
            if interesting:
                out.append(f"--- {log.name} ({len(body)} lines), last warnings/errors:")
                out.extend("    " + l for l in interesting[-lines:])
        return "\n".join(out)


def recovery_name(i: int) -> str:
    return "recovery" if i == 0 else f"recovery{i + 1}"


#: What scan_log looks for (one match per line; named groups become fields).
LEASE_LOST = re.compile(r"lease lost: (?:(?P<what>[\w-]+) of )?(?P<task_type>[a-z_]+) (?P<task>[0-9a-f]{8,})")
DEAD_DECLARED = re.compile(r"worker (?P<worker>\S+) is dead \((?P<how>.*)\): (?P<recovered>\d+) task\(s\) recovered")
POLL_ATTEMPT = re.compile(
    r"campaign (?P<campaign_id>\d+) (?P<task_type>[a-z_]+): attempt (?P<attempt>\d+)(?:/\d+)? failed")
#: The timestamp campaignctl's log format starts each line with (asctime).
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def scan_log(proc: Mapping[str, Any], pattern: re.Pattern[str]) -> list[dict[str, Any]]:
    """Lines of ``proc``'s log matching ``pattern``, each with its real wall-clock time.

    A skewed worker's log stamps are in its own time zone and off by its
    skew; both are undone here so every process's lines share one clock.
    """
    path = Path(proc["log"])
    if not path.exists():
        return []
    tz = ZoneInfo(proc["tz"]) if proc.get("tz") else None
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if not m:
            continue
        at = None
        t = _LOG_TIME.match(line)
        if t:
            stamp = dt.datetime.strptime(t.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
            at = stamp.timestamp() + int(t.group(2)) / 1000 - proc.get("skew", 0.0)
        out.append({"at": at, "pid": proc["pid"], "name": proc["name"], "line": line[:300], **m.groupdict()})
    return out


def example_dir() -> Path:
    """A folder for one example's logs, outside pytest's rotating temp folders (kept when the example fails)."""
    root = Path(os.environ.get("CHAOS_LOG_DIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="chaos-", dir=root))


@attrs.define
class Evidence:
    """Everything the invariants look at, gathered once the run is at rest."""

    campaigns: list[dict[str, Any]]
    events: list[dict[str, Any]]
    sends: list[dict[str, Any]]
    kinds: dict[int, str]
    sandbox_stats: dict[str, Any]
    sandbox_calls: list[dict[str, Any]]
    queues: Any
    dead_letters: Any
    redis_counts: dict[str, int]
    lock_keys: list[str]
    killed_pids: set[int]
    stopped_pids: set[int]
    crash_hook_pids: set[int]
    unsubscribed: dict[int, dict[str, Any]]
    provider_faults: dict[str, set[str]]
    servers_restarted: set[str]
    time_scale: float
    #: Plan rates in calls/s before the time scale, as the processes read them (RATE_<API>).
    rates: dict[str, float]
    exits: list[dict[str, Any]]
    #: Members of the lease set (``<type>:<task_id>``) at rest.
    lease_entries: list[str] = attrs.Factory(list)
    #: Worker id -> tasks its held set (``wtasks``) still names at rest.
    held_entries: dict[str, list[str]] = attrs.Factory(dict)
    #: Every process started (Cluster.process_table): role, pid, wall-clock start/end, how it ended, crash hook.
    procs: list[dict[str, Any]] = attrs.Factory(list)
    #: "lease lost" lines of queue workers: {at (wall s), pid, name, task, line}.
    lease_lost: list[dict[str, Any]] = attrs.Factory(list)
    #: Recovery's "worker W is dead ... N task(s) recovered" lines: {at, pid, name, worker, recovered, line}.
    dead_declared: list[dict[str, Any]] = attrs.Factory(list)
    #: Polling workers' "attempt N failed" lines: {at, pid, name, campaign_id, task_type, attempt, line}.
    poll_attempts: list[dict[str, Any]] = attrs.Factory(list)
    #: Wall-clock (start, end, kind) of every fault that made Redis lose data.
    redis_losses: list[tuple[float, float, str]] = attrs.Factory(list)
    #: Wall-clock (start, end) of every SIGSTOP of Redis: a worker learns of a loss only once Redis answers again.
    redis_pauses: list[tuple[float, float]] = attrs.Factory(list)
    #: Per task id the highest retry_count/lease_losses seen in Redis during the run or in the dead letters.
    task_samples: list[dict[str, Any]] = attrs.Factory(list)
    samples_taken: int = 0
    #: Duplicate email_sending tasks the schedule injected.
    duplicates: list[dict[str, Any]] = attrs.Factory(list)
    #: time.monotonic() when the schedule's clock started (the sandbox's call log uses the same clock).
    t0: float = 0.0
    #: "single" (one redis-server) or "cluster" (a Redis Cluster).
    redis_mode: str = "single"
    #: Cluster.master_kills: {target, slot, port, replicas, killed_at, at (on the schedule's clock), promoted_at,
    #: new_master, rejoined_at}; times are wall-clock unless said otherwise.
    master_kills: list[dict[str, Any]] = attrs.Factory(list)
    #: The cluster's own view at rest (CLUSTER NODES of a live node); empty on one redis-server.
    cluster_nodes: list[ClusterNodeInfo] = attrs.Factory(list)


def _json_or_error(done: subprocess.CompletedProcess[str]) -> Any:
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-1000:]}"}
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"error": f"not JSON: {done.stdout[:500]!r}"}


#: Counts of redis_queue_counts that are work (a task to run or running); the others are lease bookkeeping.
WORK_COUNTS = ("ready", "in_flight", "delayed", "claiming")


def redis_queue_counts(r: redis.Redis, prefix: str = KEY_PREFIX) -> dict[str, int]:
    """Ready, in-flight, delayed and half-claimed tasks, lease entries, lock keys and workers' held tasks.

    Key names as in engine/keys.py. The lists, hashes and the lease set are
    read in one MULTI (one consistent snapshot: a lease entry without an
    in-flight task is never a race of this read); the scanned keys after it.
    """
    keys = Keys(prefix)
    # One MULTI on a single node; a cluster answers per shard (no snapshot across slots there).
    pipe = r.pipeline(transaction=not is_cluster(r))
    for t in TASK_TYPES:
        pipe.llen(keys.queue(t))
        pipe.hlen(keys.inflight(t))
        pipe.zcard(keys.delayed(t))
    for t in TASK_TYPES:
        pipe.zcard(keys.leases(t))
    counts = pipe.execute()
    n = 3 * len(TASK_TYPES)
    per_type, leases = counts[:n], sum(counts[n:])
    locks = len(live_locks(r, r.scan_iter(match=f"{{{prefix}:*}}:task_lock:*", count=1000)))
    claiming = sum(r.llen(k) for k in r.scan_iter(match=f"{{{prefix}:*}}:claiming:*", count=1000))
    held = sum(r.scard(k) for k in r.scan_iter(match=f"{{{prefix}:*}}:wtasks:*", count=1000))
    return {
        "ready": sum(per_type[0::3]),
        "in_flight": sum(per_type[1::3]),
        "delayed": sum(per_type[2::3]),
        "claiming": claiming,
        "leases": leases,
        "locks": locks,
        "held": held,
    }


def held_by_worker(r: redis.Redis, prefix: str) -> dict[str, list[str]]:
    """Worker id -> the tasks its held sets (``wtasks``, one per task type) still name."""
    held: dict[str, list[str]] = {}
    for key in r.scan_iter(match=f"{{{prefix}:*}}:wtasks:*", count=1000):
        members = r.smembers(key)
        if members:
            held.setdefault(key.rsplit(":wtasks:", 1)[-1], []).extend(members)
    return {w: sorted(m) for w, m in held.items()}


#: A settled lease's lock is replaced by a tombstone ``~<verb>:<token>`` that lives the replay window (so a
#: replayed settle answers as the first did, engine/lua/includes/take_leased.lua): not a lease.
TOMBSTONE_PREFIX = "~"


def live_locks(r: redis.Redis, names: Any) -> list[str]:
    """The task_lock keys among ``names`` that hold a lease (not a settled lease's tombstone), sorted."""
    names = sorted(names)
    if not names:
        return []
    # Locks of different task types live in different slots: a cluster reads them one slot at a time.
    values = r.mget_nonatomic(names) if is_cluster(r) else r.mget(names)  # type: ignore[attr-defined]
    return [k for k, v in zip(names, values) if v is not None and not str(v).startswith(TOMBSTONE_PREFIX)]


def seed_row(i: int, kind: str) -> dict[str, Any]:
    streets = ("Maple St", "Oak Ave", "Cedar Ln", "Elm Dr", "Birch Rd", "Pine Ct", "Walnut Way", "Spruce Pl")
    row: dict[str, Any] = {
        "owner_name": f"Owner {i}",
        "email": f"owner{i}@homes.example.com",
        "street": f"{100 + i} {streets[i % len(streets)]}",
        "city": "Springfield",
        "state": "IL",
        "zip_code": f"627{i % 100:02d}",
    }
    if kind == "unknown_address":
        row["street"] = f"{100 + i} Nowhere Lane"
    elif kind == "bad_email":
        row["email"] = f"invalid-email@bad{i}.example.com"
    return row


def skewed_clock_env(skew: float) -> dict[str, str]:
    """Environment of a worker whose clock is wrong.

    faketime is not available and the engine has no clock knob: it reads
    Redis ``TIME`` for leases, liveness and rate limits. So the worker gets a
    far-off time zone (naive local-time bugs would show) and, through
    tests/chaos/skew/sitecustomize.py, a ``time.time`` that is ``skew`` seconds off.
    """
    tz = "Pacific/Kiritimati" if skew > 0 else "Pacific/Pago_Pago"
    return {
        "TZ": tz,
        "CHAOS_CLOCK_SKEW": str(skew),
        "PYTHONPATH": f"{Path(__file__).parent / 'skew'}{os.pathsep}{ROOT}",
    }


def parse_fault_spec(spec: str) -> dict[str, dict[str, float]]:
    """``"zillow:429=0.2,5xx=0.1;*:timeout=0.1"`` -> {provider: {fault: value}} ("*" expanded)."""
    out: dict[str, dict[str, float]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        provider, _, faults = part.partition(":")
        targets = PROVIDERS if provider.strip() == "*" else (provider.strip(),)
        for item in filter(None, (f.strip() for f in faults.split(","))):
            name, _, value = item.partition("=")
            for t in targets:
                out.setdefault(t, {})[name.strip()] = float(value)
    return out


#: Fault settings given in seconds (sandbox/faults.py SECONDS), not as a probability.
SECONDS_FAULTS = frozenset({"latency", "retry_after", "hang"})


def merge_fault_specs(specs: list[str]) -> str:
    """Several active windows as one spec; where two set the same fault, the larger wins."""
    merged: dict[str, dict[str, float]] = {}
    for spec in specs:
        for provider, faults in parse_fault_spec(spec).items():
            for name, value in faults.items():
                merged.setdefault(provider, {})[name] = max(value, merged.get(provider, {}).get(name, 0.0))
    for faults in merged.values():
        # The sandbox draws at most one fault per call, so its probabilities must add up to 1 at most
        # (latency, retry_after and hang are seconds, not probabilities).
        odds = [name for name in faults if name not in SECONDS_FAULTS]
        total = sum(faults[name] for name in odds)
        if total > 1:
            for name in odds:
                faults[name] = round(faults[name] / total, 3) - 0.001
    return ";".join(f"{p}:" + ",".join(f"{k}={v:g}" for k, v in sorted(f.items())) for p, f in sorted(merged.items()))

