"""What a benchmark task records, the same for every queue: when and where it started.

The recovery benchmark needs "this task started again, on another process, at
time t"; the first start of a hold task blocks (its worker is then SIGKILLed),
any later start returns at once.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache

import redis

#: How long a hold task blocks on its first start; longer than any benchmark waits, in s.
HOLD_SECONDS = 3600.0


@lru_cache(maxsize=None)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def starts_key(system: str) -> str:
    return f"bench:{system}:starts"


def record_start(url: str, system: str, tag: str) -> bool:
    """Log this start (tag, pid, wall time); True when it is the task's first start."""
    r = _client(url)
    first = bool(r.set(f"bench:{system}:first:{tag}", os.getpid(), nx=True))
    r.rpush(starts_key(system), json.dumps({"tag": tag, "pid": os.getpid(), "t": time.time(), "first": first}))
    return first


def hold(url: str, system: str, tag: str) -> None:
    """Block for an hour on the first start (the worker is killed meanwhile); return on a re-run."""
    if record_start(url, system, tag):
        time.sleep(HOLD_SECONDS)


def starts(url: str, system: str) -> list[dict]:
    return [json.loads(x) for x in _client(url).lrange(starts_key(system), 0, -1)]
