"""A worker process for the engine tests: ``python -m tests.engine.worker_proc MODE``.

Settings come from the environment (KEY_PREFIX, LIVENESS_TTL, ...). Modes:

- ``hold``: the first start of a task (SET NX marker) sleeps an hour — the test
  kills the process meanwhile; any later start records itself and returns.
- ``store``: advances the campaign in the database (DATABASE_URL) one stage,
  the way a stage handler does, and enqueues the next stage's task.
- ``bucket``: not a worker: reserves tokens from the ``hammer`` bucket for
  DURATION seconds as fast as the limiter allows, sleeping until each slot as
  a task would, recording ``<decided>,<slot>`` (server times) of each grant in
  ``<prefix>:test:grants``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from engine.connection import connect
from engine.identity import new_worker_id
from engine.ratelimit import Limit, RateLimiter
from engine.registry import Registry
from engine.settings import EngineSettings
from engine.worker import Worker

TYPES = ("alpha", "beta")


def hold_registry(r, settings: EngineSettings) -> Registry:  # type: ignore[no-untyped-def]
    starts = f"{settings.key_prefix}:test:starts"

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        first = r.set(f"{settings.key_prefix}:test:first:{task.task_id}", ctx.worker_id, nx=True)
        r.rpush(starts, json.dumps({"task_id": task.task_id, "pid": os.getpid(), "t": time.time(),
                                    "first": bool(first), "worker": ctx.worker_id}))
        if first:
            time.sleep(3600)

    registry = Registry()
    for t in TYPES:
        registry.register(t, handle)
    return registry


def store_registry(settings: EngineSettings) -> tuple[Registry, tuple[str, ...]]:
    from workflow.db import make_engine
    from workflow.states import TASK_TYPES, expected_position, task_type_for
    from workflow.store import CampaignStore, Expect

    store = CampaignStore(make_engine(os.environ["DATABASE_URL"]))

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        status, stage = expected_position(task.task_type)
        time.sleep(float(os.environ.get("STAGE_SECONDS", "0")))
        out = store.apply(task.campaign_id, "advance", expect=Expect(status, stage), task_id=task.task_id,
                          worker_id=ctx.worker_id)
        if out.applied and out.after is not None:
            nxt = task_type_for(out.after.campaign_status, out.after.processing_stage)
            if nxt:
                ctx.enqueue(nxt, task.campaign_id)

    registry = Registry()
    for t in TASK_TYPES:
        if t != "email_sending":
            registry.register(t, handle)
    return registry, TASK_TYPES


def hammer(r, settings: EngineSettings) -> None:  # type: ignore[no-untyped-def]
    limiter = RateLimiter(r, settings, {"hammer": Limit(rate=float(os.environ["RATE"]), burst=1)})
    end = time.time() + float(os.environ["DURATION"])
    key = f"{settings.key_prefix}:test:grants"
    while time.time() < end:
        grant = limiter.reserve("hammer", max_wait=settings.max_token_sleep)
        if grant.granted:
            r.rpush(key, f"{grant.at!r},{grant.slot!r}")
        time.sleep(grant.wait)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")
    mode = sys.argv[1]
    settings = EngineSettings.from_env()
    worker_id = new_worker_id()
    # Named connections, as campaignctl worker makes them: recovery sees at once when this process is gone.
    r = connect(settings, client_name=worker_id)
    if mode == "bucket":
        hammer(r, settings)
        return 0
    if mode == "hold":
        registry, types = hold_registry(r, settings), TYPES
    else:
        registry, types = store_registry(settings)
    concurrency = int(os.environ.get("CONCURRENCY", "2"))
    worker = Worker(r, settings, registry, None, concurrency=concurrency, task_types=types,
                    burst=os.environ.get("BURST") == "1", worker_id=worker_id)
    r.rpush(f"{settings.key_prefix}:test:workers", f"{os.getpid()} {worker.worker_id}")
    code = worker.run()
    if worker.left_running:  # as campaignctl worker does: stuck handler threads must not block the exit
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
