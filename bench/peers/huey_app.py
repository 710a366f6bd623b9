"""Huey on Redis; results are only stored for tasks that return something (ours return None)."""

from __future__ import annotations

import os

from huey import RedisHuey

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

huey = RedisHuey("bench", url=URL, results=False)


@huey.task()
def noop() -> None:
    return None
