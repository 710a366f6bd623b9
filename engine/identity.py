"""Worker identity: unique per process, so a restarted container never inherits a dead worker's id."""

from __future__ import annotations

import os
import secrets
import socket


def new_worker_id() -> str:
    """``host:pid:random``; the random part tells apart two processes that reuse a pid (containers)."""
    host = socket.gethostname().replace(":", "-") or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"
