"""``campaignctl`` engine commands: JSON shapes, exit codes."""

from __future__ import annotations

import json

import pytest
import redis

from campaignctl.cli import main
from engine.queue import TaskQueue
from engine.settings import EngineSettings
from migrations import runner
from tests.workflow.helpers import drive, new_campaigns
from workflow.db import make_engine
from workflow.store import CampaignStore
from workflow.states import TASK_TYPES


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: EngineSettings, sqlite_url: str) -> EngineSettings:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("REDIS_CLUSTER", "true" if settings.redis_cluster else "false")
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("RATE_ZILLOW", "30/min")
    monkeypatch.setenv("STALL_THRESHOLD", str(settings.stall_threshold))
    return settings


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_queues_json_has_the_spec_shape(env: EngineSettings, redis_client: redis.Redis,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    queue = TaskQueue(redis_client, env, TASK_TYPES)
    queue.enqueue("market_data", 1)
    queue.enqueue("email_sending", 2, delay=60)
    redis_client.rpush(queue.keys.failed("market_data"), json.dumps({"id": "x", "reason": "r"}))
    out = _json(capsys, "queues", "--json")
    assert set(out) == {"queues", "dead_letters"}  # type: ignore[arg-type]
    assert list(out["queues"]) == list(TASK_TYPES)  # type: ignore[index]
    for name, row in out["queues"].items():  # type: ignore[index]
        assert set(row) >= {"key", "ready", "in_flight", "delayed"}  # SPEC §6, plus the operator's columns
        assert set(row) - {"key", "ready", "in_flight", "delayed"} == {"oldest_ready_age", "paused", "processed",
                                                                       "failed"}
        assert row["key"] == queue.keys.queue(name)
    assert out["queues"]["market_data"]["ready"] == 1  # type: ignore[index]
    assert 0 <= out["queues"]["market_data"]["oldest_ready_age"] < 60  # type: ignore[index]
    assert out["queues"]["email_sending"]["delayed"] == 1  # type: ignore[index]
    assert out["dead_letters"] == 1  # type: ignore[index]
    assert main(["queues"]) == 0
    assert "market_data" in capsys.readouterr().out


def test_workers_and_limits_json(env: EngineSettings, redis_client: redis.Redis,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    queue = TaskQueue(redis_client, env, TASK_TYPES)
    redis_client.hset(queue.keys.workers, "h:1:ab", json.dumps({"id": "h:1:ab", "queues": ["market_data"],
                                                                "concurrency": 2, "current_tasks": []}))
    redis_client.set(queue.keys.worker("h:1:ab"), "1", px=5000)
    redis_client.hset(queue.keys.workers, "h:2:cd", json.dumps({"id": "h:2:cd"}))
    workers = _json(capsys, "workers", "--json")["workers"]  # type: ignore[index]
    assert [(w["id"], w["alive"]) for w in workers] == [("h:1:ab", True), ("h:2:cd", False)]
    limits = _json(capsys, "limits", "--json")["limits"]  # type: ignore[index]
    assert set(limits) == {"zillow", "zillow56", "rentcast", "bedrock", "email_verification", "ses"}
    assert limits["zillow"]["rate"] == pytest.approx(0.5 * 0.98)  # RATE_ZILLOW=30/min, run at the default 0.98 headroom
    assert set(limits["zillow"]) >= {"rate", "burst", "tokens", "paused_until"}
    # A bucket Redis has never seen is empty (it opens MAX_TOKEN_SLEEP after its first call unless primed)
    assert limits["zillow"]["tokens"] == 0.0 and limits["zillow"]["paused_until"] is None
    assert (limits["zillow"]["plan"], limits["zillow"]["granted"]) == ("30/min", "29.4/min")
    assert limits["bedrock"]["plan"] == "8/min" and limits["zillow"]["calls"] == 0
    assert main(["workers"]) == 0 and main(["limits"]) == 0


def test_dlq_list_requeue_purge(env: EngineSettings, redis_client: redis.Redis, sqlite_url: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    # Given campaign 4 waiting at home_analysis whose task payload was malformed (dead-lettered at claim)
    runner.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    (cid,) = new_campaigns(engine, 1)
    drive(CampaignStore(engine), cid, ["start"] + ["advance"] * 4)
    engine.dispose()
    queue = TaskQueue(redis_client, env, TASK_TYPES)
    redis_client.lpush(queue.keys.queue("home_analysis"), json.dumps({"campaign_id": cid, "task_type": "home_analysis"}))
    redis_client.lpush(queue.keys.queue("home_analysis"), "garbage")
    assert queue.claim("w", TASK_TYPES, 5).leases == []
    entries = _json(capsys, "dlq", "list", "--json")["dead_letters"]  # type: ignore[index]
    assert len(entries) == 2 and all(e["reason"].startswith("malformed payload") for e in entries)
    fixable = next(e for e in entries if e["campaign_id"] == cid)
    assert _json(capsys, "dlq", "show", fixable["id"], "--json")["campaign"]["processing_stage"] == "home_analysis"  # type: ignore[index]
    assert main(["dlq", "show", "nope"]) == 2
    assert capsys.readouterr().err == "campaignctl dlq show: no dead letter with id 'nope'\n"
    assert main(["dlq", "requeue", "nope"]) == 2
    assert capsys.readouterr().err == "campaignctl dlq requeue: no dead letter with id 'nope'\n"
    assert main(["dlq", "requeue", fixable["id"]]) == 0
    assert queue.stats()["queues"]["home_analysis"]["ready"] == 1
    assert main(["dlq", "requeue", "--all"]) == 1  # the garbage cannot be rebuilt: refused
    capsys.readouterr()
    assert _json(capsys, "dlq", "purge", "--json") == {"purged": 1}
    assert _json(capsys, "dlq", "list", "--json")["dead_letters"] == []  # type: ignore[index]


@pytest.mark.parametrize("argv", [
    ["worker", "--queues", "nope"],
    ["worker", "--concurrency", "0"],
    ["worker", "--concurrency", "x"],
    ["dlq"],
    ["dlq", "requeue"],
    ["dlq", "requeue", "a", "--all"],
    ["queues", "--bogus"],
    ["producer", "extra"],
])
def test_bad_arguments_exit_2(env: EngineSettings, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_producer_and_recovery_once(env: EngineSettings, redis_client: redis.Redis, sqlite_url: str) -> None:
    from tests.workflow.helpers import new_campaigns
    from workflow.db import make_engine
    from workflow.models import Base

    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    new_campaigns(engine, 3)
    assert main(["producer", "--once"]) == 0
    queue = TaskQueue(redis_client, env, TASK_TYPES)
    assert queue.stats()["queues"]["property_data"]["ready"] == 3
    redis_client.delete(queue.keys.queue("property_data"))
    for key in redis_client.scan_iter(match=f"*{env.key_prefix}*dedup*"):
        redis_client.delete(key)
    import time
    time.sleep(env.stall_threshold + 0.1)
    assert main(["recovery", "--once"]) == 0
    assert queue.stats()["queues"]["property_data"]["ready"] == 3  # rebuilt from the database
    engine.dispose()
