"""LOG_FORMAT=json: one JSON object per line with the task's context; transitions quiet at INFO; stop lines."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import redis

from campaignctl import logs
from engine.queue import TaskQueue
from engine.ratelimit import Limit, RateLimiter
from engine.registry import Registry
from engine.settings import EngineSettings
from engine.worker import Worker
from migrations import runner
from tests.engine.conftest import TYPES

CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")


def test_json_lines_carry_worker_task_campaign_stage_and_provider(redis_client: redis.Redis,
                                                                  settings: EngineSettings) -> None:
    # Given a JSON log handler and a handler that calls a provider and logs
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.acquire("zillow")
        logging.getLogger("stages.test").info("fetched the home")

    registry = Registry()
    registry.register("alpha", handle)
    TaskQueue(redis_client, settings, TYPES).enqueue("alpha", 42)
    limiter = RateLimiter(redis_client, settings, {"zillow": Limit(rate=100.0)})
    try:
        Worker(redis_client, settings, registry, limiter, concurrency=1, burst=True, task_types=TYPES,
               worker_id="host:1:abc").run(install_signals=False)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    # Then every line is one JSON object, and the handler's line names its task, campaign, stage and provider
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = next(d for d in docs if d["message"] == "fetched the home")
    assert (mine["worker_id"], mine["campaign_id"], mine["stage"], mine["provider"]) == (
        "host:1:abc", 42, "alpha", "zillow")
    assert mine["task_id"] and mine["level"] == "INFO" and mine["time"].endswith("+00:00")
    assert all(d["worker_id"] == "host:1:abc" for d in docs)


def test_transitions_chatter_is_off_at_info_and_on_at_debug() -> None:
    logs.setup(logging.INFO, "text")
    assert not logging.getLogger("transitions.core").isEnabledFor(logging.INFO)
    logs.setup(logging.DEBUG, "text")
    assert logging.getLogger("transitions.core").isEnabledFor(logging.DEBUG)
    logs.setup(logging.WARNING, "text")


def test_services_say_when_they_stop_in_json(tmp_path: Path, redis_url: str, redis_mode: str, key_prefix: str) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    runner.upgrade(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATE_", "REDIS_", "LOG_"))}
    env.update(DATABASE_URL=db, REDIS_URL=redis_url, REDIS_CLUSTER=str(redis_mode == "cluster"), KEY_PREFIX=key_prefix,
               LOG_FORMAT="json", LOG_LEVEL="info")
    for argv, stopped in ((["producer", "--once"], "producer stopped"), (["recovery", "--once"], "recovery stopped"),
                          (["worker", "--burst"], "stopped (exit 0)")):
        proc = subprocess.run([CAMPAIGNCTL, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        docs = [json.loads(line) for line in proc.stderr.splitlines()]
        assert any(stopped in d["message"] for d in docs), proc.stderr
        assert all(d.get("worker_id", "").startswith(argv[0] if argv[0] != "worker" else "") for d in docs)
        assert all(d.get("worker_id") for d in docs if d["logger"] != "campaignctl.config_check"), proc.stderr
        assert not any(d["logger"].startswith("transitions") for d in docs)
