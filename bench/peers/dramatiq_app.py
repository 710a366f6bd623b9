"""Dramatiq on its Redis broker with default middleware (no results backend)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import probe

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(max_retries=0, time_limit=7_200_000)
def hold(tag: str) -> None:
    probe.hold(URL, "dramatiq", tag)
