"""Shared helpers for the benchmarks: throwaway servers, child processes, tables, the headline line.

Every benchmark starts its own redis-server (and PostgreSQL where it needs one)
on a free port, runs its children in their own process groups, and stops all
of it on exit — normal return, exception, Ctrl-C or SIGTERM — so a run leaves
no orphans behind. Children are ended by the pid we recorded, never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

#: The repository root; children run here so ``bench.*`` and ``tests.*`` import.
ROOT = Path(__file__).resolve().parent.parent
#: The interpreter of the project's virtualenv (the one running us, normally).
PYTHON = sys.executable
#: Grace period between SIGTERM and SIGKILL when stopping a child, in s.
STOP_GRACE = 5.0

_children: list[subprocess.Popen[bytes]] = []
_cleanups: list[Callable[[], None]] = []


def _cleanup_all() -> None:
    while _children:
        stop_process(_children.pop())
    while _cleanups:
        fn = _cleanups.pop()
        with contextlib.suppress(Exception):
            fn()


def _on_signal(signum: int, _frame: Any) -> None:
    _cleanup_all()
    # Re-raise as the conventional exit status of a signalled process.
    raise SystemExit(128 + signum)


atexit.register(_cleanup_all)
signal.signal(signal.SIGTERM, _on_signal)


def at_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the benchmark ends, however it ends (last registered runs first)."""
    _cleanups.append(fn)


# --- child processes -------------------------------------------------------------------------


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: ours plus the repo on PYTHONPATH plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so its own children die with it).

    Output goes to ``log`` (a file) or is discarded: benchmark children are
    chatty and their output would distort the timings if piped back.
    """
    out: Any = subprocess.DEVNULL
    if log is not None:
        out = open(log, "ab")  # noqa: SIM115 - closed by the child's exit
    proc = subprocess.Popen(
        list(args),
        cwd=ROOT,
        env=bench_env(env),
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )
    if log is not None:
        out.close()
    _children.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> None:
    """Signal the child's process group, wait ``grace`` seconds, then SIGKILL the group."""
    if proc in _children:
        _children.remove(proc)
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # grandchildren may outlive a dead leader
        return
    _kill_group(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
    _kill_group(proc.pid, signal.SIGKILL)


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group at once (a crash: no cleanup runs)."""
    _kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc in _children:
        _children.remove(proc)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_cpu(pgids: Sequence[int]) -> float:
    """CPU seconds (user + system, own + reaped children) of every live process in these process groups."""
    if not pgids:
        return float("nan")
    wanted, total = set(pgids), 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ... utime(14) stime cutime cstime.
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[2]) in wanted:
            total += sum(int(x) for x in fields[11:15]) / tick
    return total


def python_module(module: str, *args: str) -> list[str]:
    return [PYTHON, "-m", module, *args]


def venv_script(name: str) -> str:
    """A console script installed next to our interpreter (celery, rq, dramatiq, huey_consumer, arq)."""
    path = Path(PYTHON).parent / name
    if not path.exists():
        raise SystemExit(f"{name} is not installed: run .venv/bin/pip install -e '.[bench]'")
    return str(path)


# --- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(*, appendonly: bool = False) -> Iterator[Any]:
    """A throwaway redis-server; AOF off by default (the peers are measured without it too)."""
    from tests.servers import RedisServer

    server = RedisServer(appendonly=appendonly).start()
    at_exit(server.cleanup)
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def redis_cluster(*, appendonly: bool = True, replicas: int = 1) -> Iterator[Any]:
    """A throwaway Redis Cluster on loopback: 3 masters, ``replicas`` replicas each (tests/servers.py)."""
    from tests.servers import RedisClusterServer

    server = RedisClusterServer(replicas=replicas, appendonly=appendonly)
    at_exit(server.cleanup)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class RedisTarget:
    """One redis-server or a Redis Cluster, seen the same way by a benchmark that runs on both.

    ``client()`` is what the engine would build (redis.Redis or
    redis.RedisCluster, decoded replies); ``env`` is what its child processes
    need (REDIS_URL, REDIS_CLUSTER). The per-process figures (memory, CPU)
    are read from each server process with a plain client of its own.
    """

    def __init__(self, label: str, url: str, ports: Sequence[int], *, cluster: bool) -> None:
        import redis

        self.label, self.url, self.cluster = label, url, cluster
        self.nodes = {port: redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in ports}
        self._client: Any = None

    @classmethod
    def of_server(cls, server: Any) -> RedisTarget:
        return cls("one node", server.url, [server.port], cluster=False)

    @classmethod
    def of_cluster(cls, server: Any) -> RedisTarget:
        masters = len(server.ports) // (1 + server.replicas)
        return cls(f"{masters}-master cluster", server.url, server.ports, cluster=True)

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "REDIS_CLUSTER": "true" if self.cluster else "false"}

    def client(self) -> Any:
        import redis

        if self._client is None:
            self._client = (redis.RedisCluster.from_url(self.url, decode_responses=True) if self.cluster
                            else redis.Redis.from_url(self.url, decode_responses=True))
        return self._client

    def masters(self) -> list[Any]:
        return [c for c in self.nodes.values() if c.info("replication")["role"] == "master"]

    def replicas(self) -> list[Any]:
        return [c for c in self.nodes.values() if c.info("replication")["role"] != "master"]

    def flush(self) -> None:
        for c in self.masters():
            c.flushall()
        self.settle()

    def settle(self, timeout: float = 10.0) -> None:
        """Until every replica has applied all its master has written (no replication buffer left to drain)."""
        deadline = time.monotonic() + timeout
        while self.cluster and time.monotonic() < deadline:
            behind = False
            for c in self.masters():
                info = c.info("replication")
                offset = int(info.get("master_repl_offset", 0))
                for i in range(int(info.get("connected_slaves", 0))):
                    if int(info[f"slave{i}"]["offset"]) < offset:
                        behind = True
            if not behind:
                return
            time.sleep(0.05)

    def used_memory(self) -> tuple[int, int]:
        """(used_memory summed over the masters, the same less replication and AOF buffers)."""
        total = net = 0
        for c in self.masters():
            info = c.info("memory")
            used = int(info["used_memory"])
            total += used
            net += used - sum(int(info.get(k, 0)) for k in
                              ("mem_replication_backlog", "mem_clients_slaves", "mem_aof_buffer"))
        return total, net

    def script_calls(self) -> int:
        """EVALSHA and EVAL calls served so far, summed over the masters (INFO commandstats)."""
        total = 0
        for c in self.masters():
            stats = c.info("commandstats")
            total += sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))
        return total

    def cpu(self) -> tuple[float, float]:
        """CPU seconds (user + sys) of the masters and of the replicas."""
        m = r = 0.0
        for c in self.nodes.values():
            info = c.info("cpu")
            seconds = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
            if c.info("replication")["role"] == "master":
                m += seconds
            else:
                r += seconds
        return m, r

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for c in self.nodes.values():
            c.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[Any]:
    from tests.servers import PostgresServer

    server = PostgresServer().start()
    at_exit(server.cleanup)
    try:
        yield server
    finally:
        server.cleanup()


def redis_client(url: str, *, decode: bool = True) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=decode)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "") -> bool:
    """Poll ``predicate`` until true or ``timeout`` s pass; return whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    if what:
        print(f"  (gave up waiting for {what} after {timeout:.0f} s)")
    return False


# --- output ----------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into docs/benchmarks.md)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def headline(what: str, ratio: float) -> None:
    """The last line of every benchmark: ``headline: <what> ratio=<value>``."""
    print(f"headline: {what} ratio={ratio:.2f}", flush=True)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import redis

    info: dict[str, str] = {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis-py": redis.__version__,
    }
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    with contextlib.suppress(OSError):
        # Other work on the machine skews every figure; the load at the start is printed with them.
        info["load average (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
        info["redis-server"] = out.split()[2].removeprefix("v=") if out else "?"
    with contextlib.suppress(OSError):
        model = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        if model:
            info["cpu"] = model[0].split(":", 1)[1].strip()
    return info


def print_machine(**versions: str) -> None:
    info = machine() | versions
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
