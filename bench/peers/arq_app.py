"""arq worker settings (asyncio; arq runs one process per `arq` command)."""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def noop(ctx: dict[str, Any]) -> None:
    return None


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    #: Jobs run at once per process (arq's default is 10).
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    keep_result = 0
    burst = os.environ.get("BENCH_ARQ_BURST") == "1"
    #: arq polls its queue (a sorted set) this often, in s (its default is 0.5).
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
