"""A small supervisor that runs the whole system as separate OS processes and breaks it on schedule.

One ``Cluster`` owns, for one chaos example: a fresh redis-server (AOF on), a
fresh database on the suite's PostgreSQL server, the sandbox, a producer,
several workers and recovery, each started through the real ``campaignctl``
command with the same environment an operator would give it. A supervisor
thread restarts any of those that exits (after a short back-off, as systemd
or Kubernetes would), so a SIGKILL is followed by a new process with a new
worker id, never by a resurrected one.

Faults are applied by ``run_schedule`` at their time; afterwards everything
is put back (stopped workers continued, provider faults cleared, servers up)
and ``wait_for_rest`` waits until the database and Redis are quiet. Nothing
here decides whether the run was correct: ``collect`` gathers the evidence and
``invariants.check`` judges it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import redis
from sqlalchemy import Engine, insert, select, text

from tests.chaos.schedule import PROVIDERS, Fault, Schedule
from tests.servers import PostgresServer, RedisServer, free_port
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


class Managed:
    """A named, supervised process: restarted after it exits while ``wanted``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], logdir: Path) -> None:
        self.name = name
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
        self.record = ProcRecord(self.name, self.popen.pid, time.monotonic(), log=str(log))
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
        self.redis_server: RedisServer | None = None
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
        self.campaign_ids: list[int] = []
        self.kinds: dict[int, str] = {}

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
                "REDIS_URL": self.redis_server.url if self.redis_server else "",
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

    def start(self) -> None:
        self.redis_server = RedisServer(appendonly=True).start()
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
        specs: list[tuple[str, list[str], dict[str, str]]] = [
            ("producer", campaignctl_argv("producer"), env),
            ("recovery", campaignctl_argv("recovery"), env),
        ]
        for i in range(s.workers):
            wenv = dict(env)
            if i == 0 and s.clock_skew:
                wenv.update(skewed_clock_env(s.clock_skew))
            specs.append((f"worker{i}", campaignctl_argv("worker", "--concurrency", str(s.concurrency)), wenv))
        if s.ses_crash_worker:
            cenv = dict(env)
            cenv["CE_TEST_CRASH_AFTER_SES_CALL"] = "1"
            specs.append(("sescrash", campaignctl_argv("worker", "--queues", "email_sending", "--concurrency", "1"), cenv))
        with self._lock:
            for name, argv, penv in specs:
                proc = Managed(name, argv, penv, self.logdir)
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
        if self.db is not None:
            self.db.dispose()
        if self.redis_server:
            self.redis_server.cleanup()

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

    def redis_client(self) -> redis.Redis:
        assert self.redis_server
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True, socket_timeout=5)

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
            self.kill(f"worker{fault.target % max(1, self.schedule.workers)}")
        elif k == "kill_producer":
            self.kill("producer")
        elif k == "kill_recovery":
            self.kill("recovery")
        elif k == "stop_worker":
            self.stop_process(f"worker{fault.target % max(1, self.schedule.workers)}", fault.duration)
        elif k == "stop_producer":
            self.stop_process("producer", fault.duration)
        elif k == "stop_recovery":
            self.stop_process("recovery", fault.duration)
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
            self.redis_server.kill()
            time.sleep(fault.duration)
            self.redis_server.start()
            self.servers_restarted.add("redis")
        elif k == "redis_flushall":
            self.note("redis: FLUSHALL")
            self.redis_client().flushall()
            self.servers_restarted.add("redis")
        elif k == "redis_wipe":
            self.note(f"redis: SIGKILL, down {fault.duration:.1f}s, start empty")
            assert self.redis_server
            self.redis_server.kill()
            time.sleep(fault.duration)
            for f in self.redis_server.dir.iterdir():
                if f.is_dir():
                    shutil.rmtree(f)
                elif f.name != "redis.log":
                    f.unlink()
            self.redis_server.start()
            self.servers_restarted.add("redis")
        elif k == "pg_restart":
            self.note(f"postgres: fast shutdown, down {fault.duration:.1f}s, start")
            self.pg.stop()
            time.sleep(fault.duration)
            self.pg.start()
            self.servers_restarted.add("postgres")
        else:
            raise ValueError(f"unknown fault kind {k!r}")

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
        out["queues"] = redis_queue_counts(self.redis_client())
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
        r = self.redis_client()
        return Evidence(
            campaigns=campaigns,
            events=events,
            sends=sends,
            kinds=dict(self.kinds),
            sandbox_stats=self.sandbox_get("/_sandbox/stats"),
            sandbox_calls=self.sandbox_get("/_sandbox/calls").get("calls", []),
            queues=_json_or_error(queues_cli),
            dead_letters=_json_or_error(dlq_cli),
            redis_counts=redis_queue_counts(r),
            lock_keys=sorted(r.scan_iter(match=f"*{KEY_PREFIX}*task_lock*", count=1000)),
            lease_entries=r.zrange(f"{{{KEY_PREFIX}}}:leases", 0, -1),
            held_entries={k.rsplit(":wtasks:", 1)[-1]: sorted(r.smembers(k))
                          for k in r.scan_iter(match=f"{{{KEY_PREFIX}}}:wtasks:*", count=1000) if r.scard(k)},
            killed_pids=set(self.killed_pids),
            stopped_pids=set(self.stopped_pids),
            crash_hook_pids={rec.pid for rec in self.records if rec.name == "sescrash"},
            unsubscribed=dict(self.unsubscribed),
            provider_faults=dict(self.provider_faults_seen),
            servers_restarted=set(self.servers_restarted),
            time_scale=self.time_scale,
            rates=self.plan_rates(),
            exits=[attrs.asdict(rec) for rec in self.records if rec.ended is not None],
        )

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
    tag = f"{{{prefix}}}"
    pipe = r.pipeline(transaction=True)
    for t in TASK_TYPES:
        pipe.llen(f"{tag}:queue:{t}")
        pipe.hlen(f"{tag}:inflight:{t}")
        pipe.zcard(f"{tag}:delayed:{t}")
    pipe.zcard(f"{tag}:leases")
    counts = pipe.execute()
    per_type, leases = counts[:-1], counts[-1]
    locks = sum(1 for _ in r.scan_iter(match=f"{tag}:task_lock:*", count=1000))
    claiming = sum(r.llen(k) for k in r.scan_iter(match=f"{tag}:claiming:*", count=1000))
    held = sum(r.scard(k) for k in r.scan_iter(match=f"{tag}:wtasks:*", count=1000))
    return {
        "ready": sum(per_type[0::3]),
        "in_flight": sum(per_type[1::3]),
        "delayed": sum(per_type[2::3]),
        "claiming": claiming,
        "leases": leases,
        "locks": locks,
        "held": held,
    }


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

