"""Throw-away redis-server and PostgreSQL processes for tests, benchmarks and chaos runs.

Each server gets a free loopback port and a temporary folder, and can be
stopped, killed, restarted (keeping its data) or wiped. Nothing here fakes a
server: if a binary is missing the caller gets a clear error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import attrs
import redis
from redis.crc import key_slot

#: Seconds a stopped server or child process gets to exit on SIGTERM before SIGKILL.
STOP_GRACE = 10.0
#: Where Debian's PostgreSQL 15 server binaries live.
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


class ServerUnavailable(RuntimeError):
    """A server binary is missing or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerUnavailable(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM ``proc``, and SIGKILL it if it is still there after ``grace`` s; returns once it is reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_groups(procs: Iterable[subprocess.Popen[bytes]], grace: float) -> None:
    """Stop children started with ``start_new_session=True``, each with its whole process group.

    SIGTERM to every group first, so they shut down side by side within one
    shared ``grace`` (not one grace each), then SIGKILL to each group, so a
    grandchild that outlived its parent does not leak past the test.
    """
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


class Server(Protocol):
    def start(self) -> Server: ...

    def cleanup(self) -> None: ...


S = TypeVar("S", bound=Server)


def serve_or_fail(make: Callable[[], S]) -> Iterator[S]:
    """For a session fixture (``yield from``): the started server, cleaned up after the session.

    A missing binary or a server that does not come up fails the test that
    needed it - never a skip, so CI cannot go green by not running.
    """
    import pytest

    try:
        server = make()
        server.start()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


class RedisServer:
    """A redis-server on loopback with AOF on, in its own temporary folder."""

    def __init__(self, *, port: int | None = None, binary: str | None = None, appendonly: bool = True) -> None:
        self.binary = binary or os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
        if not self.binary:
            raise ServerUnavailable(
                "redis-server is not installed (apt-get install -y redis-server); tests need a real Redis"
            )
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ce-redis-"))
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 10)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self, *, wipe: bool = False) -> None:
        """Stop and start again on the same port; ``wipe`` starts it empty (data lost)."""
        self.stop()
        if wipe:
            for f in self.dir.iterdir():
                if f.is_dir():
                    shutil.rmtree(f)
                elif f.name != "redis.log":
                    f.unlink()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    for d in (os.environ.get("PG_BIN_DIR", ""), *PG_BIN_DIRS):
        if d and Path(d, name).exists():
            return str(Path(d, name))
    found = shutil.which(name)
    if found:
        return found
    raise ServerUnavailable(
        f"PostgreSQL's {name} was not found (looked in {', '.join(PG_BIN_DIRS)}); "
        "install postgresql-15 or set PG_BIN_DIR"
    )


class PostgresServer:
    """A PostgreSQL cluster on loopback, initialised in a temporary folder.

    ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
    ``postgres`` user through ``runuser`` and the folder is handed to that user.
    fsync and synchronous commit are off: the tests want speed, not durability
    against power loss.
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.initdb = _pg_bin("initdb")
        self.pg_ctl = _pg_bin("pg_ctl")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ce-pg-"))
        self.data = self.dir / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o755)

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServerUnavailable(f"{' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", "-t", "30", "-o", opts, "start")
        _wait_port(self.port, 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url_for(name)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        except ServerUnavailable:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise ServerUnavailable("no free port pair (port, port + 10000) for a cluster node")


class RedisClusterServer:
    """A Redis Cluster on loopback: 3 masters and 3 replicas (``redis-cli --cluster create``), each with AOF on
    (``appendonly=False``: off, as bench.throughput runs its single redis-server).

    ``url`` names one node, as ElastiCache's configuration endpoint does;
    redis-py's RedisCluster discovers the rest. For failover tests
    ``kill(master_of(key))`` SIGKILLs the master that serves a key's slot: with
    a node timeout of 2 s its replica is promoted within a few seconds;
    ``start_node(port)`` starts a killed node again (from its nodes.conf and
    AOF), and it rejoins as a replica of the master that replaced it.

    ``start()`` returns once every slot is served and every replica has
    finished its first sync: a replica that never synced does not take over
    (it counts as "disconnected from master for longer than allowed",
    cluster-replica-validity-factor), so a master killed right after a bare
    ``cluster_state:ok`` would leave its slots unserved for good.
    """

    def __init__(self, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000,
                 appendonly: bool = True) -> None:
        self.binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if not self.binary or not self.cli:
            raise ServerUnavailable("redis-server and redis-cli are needed for a cluster (apt-get install -y redis-server)")
        self.count = masters * (1 + replicas)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.ports = [_free_cluster_port() for _ in range(self.count)]
        self.dir = Path(tempfile.mkdtemp(prefix="ce-cluster-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        """Start the node of ``port`` (again): a killed master rejoins as a replica of its successor."""
        self._start_node(port)
        _wait_port(port, 10)

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen([
            self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
            "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            # A master syncs a new replica at once (the default waits 5 s for more replicas to join).
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(node_dir / "redis.log"),
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> RedisClusterServer:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            _wait_port(port, 10)
        done = subprocess.run(
            [self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise ServerUnavailable(f"redis-cli --cluster create failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        self.wait_healthy()
        self.wait_replicas_synced()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every slot is served (cluster_state:ok on a live node)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for port in self.ports:
                if port not in self.procs or self.procs[port].poll() is not None:
                    continue
                out = subprocess.run([self.cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True)
                if "cluster_state:ok" in out.stdout:
                    return
            time.sleep(0.2)
        raise ServerUnavailable(f"the cluster did not become healthy within {timeout}s")

    @property
    def live_ports(self) -> list[int]:
        """Ports of the nodes running now (started and not killed)."""
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None]

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)

    def nodes(self) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as a live node sees it (the first that answers)."""
        last: Exception | None = None
        for port in self.live_ports:
            client = self._client(port)
            try:
                raw = client.execute_command("CLUSTER", "NODES")
            except redis.RedisError as exc:
                last = exc
                continue
            finally:
                client.close()
            return parse_cluster_nodes(raw if isinstance(raw, str) else str(raw))
        raise ServerUnavailable(f"no cluster node answered CLUSTER NODES ({last!r})")

    def replication(self, port: int) -> dict[str, object]:
        """``INFO replication`` of one node."""
        client = self._client(port)
        try:
            return dict(client.info("replication"))
        finally:
            client.close()

    def synced_replicas(self, master_port: int) -> list[int]:
        """Live replicas of ``master_port`` whose link to it is up (they can take over if it dies)."""
        out = []
        for port in self.live_ports:
            if port == master_port:
                continue
            try:
                info = self.replication(port)
            except redis.RedisError:
                continue
            if info.get("role") == "slave" and int(str(info.get("master_port", 0))) == master_port \
                    and info.get("master_link_status") == "up":
                out.append(port)
        return out

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Until every live master that serves slots has a replica whose first sync is done."""
        deadline = time.monotonic() + timeout
        waiting: list[int] = []
        while time.monotonic() < deadline:
            masters: list[int] = []
            try:
                masters = [n.port for n in self.nodes() if n.is_master and n.slots and n.port in self.live_ports]
                waiting = [m for m in masters if len(self.synced_replicas(m)) < self.replicas]
            except (ServerUnavailable, redis.RedisError):
                waiting = [-1]
            if masters and not waiting:
                return
            time.sleep(0.1)
        raise ServerUnavailable(f"cluster masters {waiting} have no synced replica after {timeout}s")

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot, as the cluster sees it now (a failed master keeps
        its slots until a replica takes them over)."""
        slot = key_slot(key.encode())
        for node in self.nodes():
            if node.is_master and any(slot_in_spec(slot, r) for r in node.slots):
                return node.port
        raise ServerUnavailable(f"no master found for slot {slot}")

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def cleanup(self) -> None:
        for port in list(self.procs):
            proc = self.procs.pop(port)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@attrs.frozen
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    #: The node id of its master ("-" for a master).
    master_id: str
    #: ``connected`` or ``disconnected`` (the cluster bus link as the answering node sees it).
    link: str
    #: Slot ranges it serves, as written (``0-5460``).
    slots: tuple[str, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool({"fail", "fail?"} & self.flags)


def slot_in_spec(slot: int, spec: str) -> bool:
    """Whether ``slot`` is in a CLUSTER NODES slot spec (``5461-10922`` or ``42``; ``[..]`` migrations are not)."""
    if spec.startswith("["):
        return False
    low, _, high = spec.partition("-")
    return int(low) <= slot <= int(high or low)


def parse_cluster_nodes(raw: str) -> list[ClusterNodeInfo]:
    """``CLUSTER NODES``' lines: ``<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``."""
    out = []
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[-1])
        out.append(ClusterNodeInfo(parts[0], port, frozenset(parts[2].split(",")), parts[3], parts[7],
                                   tuple(parts[8:])))
    return out
