"""A TCP forwarder that stands in for a Redis endpoint whose address moves (ElastiCache's primary endpoint).

Every process of a chaos example connects to one ``REDIS_URL``: this proxy's
loopback port. Each client connection gets its own connection to the current
backend (one to one, so ``CLIENT LIST`` on the server still shows every
client's own name, and a SIGKILLed client's server connection closes as soon
as the kernel closes its socket). A failover is ``switch``: existing
connections are closed (as a DNS change plus the old primary's death does to
real clients) and new ones go to the new backend; ``switch(None)`` refuses
connections for a while (the endpoint resolves nowhere yet).

One thread, one selector, no dependencies: the traffic of a chaos example is
a few hundred small commands a second.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading
from collections.abc import Callable

#: Bytes read from one socket at a time.
CHUNK = 65536
#: How long a connect to the backend may take before the client is turned away, in s.
CONNECT_TIMEOUT_S = 1.0

Backend = tuple[str, int]


class _Pipe:
    """One client connection and its backend connection, with what is still to be written to each."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.out: dict[socket.socket, bytearray] = {client: bytearray(), server: bytearray()}
        self.closed = False

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.server if sock is self.client else self.client


class RedisProxy:
    """Forward 127.0.0.1:<port> to the current backend; see the module docstring."""

    def __init__(self, backend: Backend | None) -> None:
        self.backend = backend
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._pipes: set[_Pipe] = set()
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-redis-proxy", daemon=True)
        #: Connections accepted, refused (no backend or backend down) and cut by a switch, for the timeline.
        self.accepted = 0
        self.refused = 0
        self.cut = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- control (any thread) --------------------------------------------------------------

    def start(self) -> RedisProxy:
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def switch(self, backend: Backend | None) -> int:
        """Send new connections to ``backend`` (None: refuse them) and close every open one; returns how many."""

        def do() -> int:
            self.backend = backend
            n = len(self._pipes)
            for pipe in list(self._pipes):
                self._close(pipe)
            self.cut += n
            return n

        return self._call(do)

    def close_all(self) -> int:
        """Close every open connection (the backend stays); returns how many."""
        return self.switch(self.backend)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._wake()
        self._thread.join(5)
        for pipe in list(self._pipes):
            self._close(pipe)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _call(self, fn: Callable[[], int]) -> int:
        if not self._thread.is_alive():
            return fn()
        done = threading.Event()
        box: list[int] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self._commands.put(run)
        self._wake()
        done.wait(10)
        return box[0] if box else 0

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the loop (proxy thread only) -----------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, events in self._sel.select(timeout=0.5):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    while not self._commands.empty():
                        self._commands.get_nowait()()
                else:
                    pipe: _Pipe = key.data
                    if pipe.closed:
                        continue
                    if events & selectors.EVENT_WRITE:
                        self._flush(pipe, key.fileobj)  # type: ignore[arg-type]
                    if events & selectors.EVENT_READ and not pipe.closed:
                        self._read(pipe, key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            backend = self.backend
            if backend is None:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(backend, timeout=CONNECT_TIMEOUT_S)
            except OSError:
                self.refused += 1
                client.close()
                continue
            for s in (client, server):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, server)
            self._pipes.add(pipe)
            self._sel.register(client, selectors.EVENT_READ, pipe)
            self._sel.register(server, selectors.EVENT_READ, pipe)
            self.accepted += 1

    def _read(self, pipe: _Pipe, sock: socket.socket) -> None:
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(pipe)  # either side gone: the other goes too (no half-open Redis connections)
            return
        peer = pipe.peer(sock)
        pipe.out[peer] += data
        self._flush(pipe, peer)

    def _flush(self, pipe: _Pipe, sock: socket.socket) -> None:
        buf = pipe.out[sock]
        while buf:
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(pipe)
                return
            del buf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
        try:
            self._sel.modify(sock, events, pipe)
        except (KeyError, ValueError):
            pass

    def _close(self, pipe: _Pipe) -> None:
        if pipe.closed:
            return
        pipe.closed = True
        self._pipes.discard(pipe)
        for s in (pipe.client, pipe.server):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
