"""Reconcile in O(changed): the cursor, the generation key, the full sweep after Redis lost its data, the hook outbox."""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis
from sqlalchemy import update

from campaignctl.context import AppContext
from campaignctl.wiring import ReconcileFromDatabase, dead_letter_hook
from engine.queue import TaskQueue
from engine.recovery import Recovery
from engine.registry import Registry
from engine.settings import EngineSettings
from engine.task import Task
from tests.workflow.helpers import new_campaigns
from workflow.db import make_engine
from workflow.models import Base, Campaign
from workflow.states import TASK_TYPES, Status
from workflow.store import CampaignStore


class _Counting(ReconcileFromDatabase):
    """The real source, counting the campaigns each pass reads."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.read: list[int] = []

    def full(self):  # type: ignore[no-untyped-def]
        items = list(super().full())
        self.read.append(len(items))
        return iter(items)

    def changed(self, since: str):  # type: ignore[no-untyped-def]
        items = list(super().changed(since))
        self.read.append(len(items))
        return iter(items)


def _setup(sqlite_url: str, redis_env: dict[str, str], key_prefix: str, n: int) -> tuple[Any, CampaignStore, list[int]]:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    ids = new_campaigns(engine, n)
    ctx = AppContext({"DATABASE_URL": sqlite_url, **redis_env, "KEY_PREFIX": key_prefix,
                      "STALL_THRESHOLD": "0"})
    return ctx, ctx.store, ids


def _age(store: CampaignStore, hours: float) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(Campaign.__table__).values(
            updated_at=Campaign.__table__.c.updated_at - dt.timedelta(hours=hours)))


def test_a_pass_reads_only_what_changed_and_a_lost_generation_sweeps_everything(
        sqlite_url: str, redis_env: dict[str, str], key_prefix: str, redis_client: redis.Redis) -> None:
    # Given 30 campaigns started an hour ago (their tasks queued), and recovery's reconcile
    ctx, store, ids = _setup(sqlite_url, redis_env, key_prefix, 30)
    store.start_due(limit=100)
    _age(store, 1)
    source = _Counting(ctx)
    queue = TaskQueue(redis_client, ctx.settings, TASK_TYPES)
    recovery = Recovery(redis_client, ctx.settings, queue, reconcile=source, quiet=0)
    # When it runs the first time (no generation key): a full sweep enqueues all 30
    assert recovery.reconcile_once() == 30 and source.read == [30]
    # Then later passes read nothing while nothing changes
    assert recovery.reconcile_once() == 0 and recovery.reconcile_once() == 0
    assert source.read[1:] == [0, 0]
    # When one campaign changes (its task is lost with it: a worker died between commit and enqueue)
    redis_client.delete(queue.keys.dedup("property_data", ids[0]))
    with store.engine.begin() as conn:
        conn.execute(update(Campaign.__table__).where(Campaign.__table__.c.id == ids[0])
                     .values(updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
    # Then the next pass reads that one and enqueues it
    assert recovery.reconcile_once() == 1 and source.read[-1] == 1
    # When Redis loses its data
    redis_client.flushdb()
    # Then the next pass sees no generation key and sweeps everything once
    assert recovery.reconcile_once() == 30 and source.read[-1] == 30
    # (the one that changed a moment ago is still inside the look-back window: read again, enqueued no more)
    assert recovery.reconcile_once() == 0 and source.read[-1] == 1


def test_a_dead_letter_hook_that_failed_on_an_outage_is_run_again_by_recovery(
        sqlite_url: str, redis_env: dict[str, str], key_prefix: str, redis_client: redis.Redis) -> None:
    # Given a campaign at property_data whose task was dead-lettered while the database was down
    ctx, store, (cid,) = _setup(sqlite_url, redis_env, key_prefix, 1)
    [snap] = store.start_due(limit=1)
    registry = Registry(is_outage=lambda exc: isinstance(exc, ConnectionError))
    hook = dead_letter_hook(ctx)
    down = [True]

    def flaky_hook(task: Task | None, reason: str, error: str | None) -> None:
        if down[0]:
            raise ConnectionError("database is down")
        hook(task, reason, error)

    registry.on_dead_letter(flaky_hook)
    queue = TaskQueue(redis_client, ctx.settings, TASK_TYPES)
    recovery = Recovery(redis_client, ctx.settings, queue, registry, ReconcileFromDatabase(ctx), quiet=0)
    task = Task.new("property_data", cid, snap.run_id)
    assert registry.dead_lettered(task, "permanent failure: no such address", None) is False
    assert store.get(cid).campaign_status is Status.PROCESSING  # type: ignore[union-attr]
    # When the database is back and recovery reconciles
    down[0] = False
    recovery.reconcile_once()
    # Then the kept hook ran: the campaign is in ERROR with the reason, and nothing is kept any more
    after = store.get(cid)
    assert after is not None and after.campaign_status is Status.ERROR
    assert "no such address" in (after.last_error or "")
    assert redis_client.llen(queue.keys.pending_hooks) == 0


def test_the_cursor_never_moves_past_a_generation_that_is_gone(
        redis_client: redis.Redis, settings: EngineSettings) -> None:
    queue = TaskQueue(redis_client, settings, TASK_TYPES)
    redis_client.set(queue.keys.generation, "g1")
    assert queue.scripts.advance_cursor(keys=[queue.keys.generation, queue.keys.reconciled_until], args=["g0", "x"]) == 0
    assert redis_client.get(queue.keys.reconciled_until) is None


def test_the_producer_starts_no_more_than_the_first_queue_has_room_for(
        sqlite_url: str, redis_env: dict[str, str], key_prefix: str, redis_client: redis.Redis) -> None:
    from campaignctl.wiring import producer_source
    from engine.producer import Producer

    # Given 10 due campaigns and a producer whose first queue may hold 3 tasks
    ctx, store, ids = _setup(sqlite_url, redis_env, key_prefix, 10)
    queue = TaskQueue(redis_client, ctx.settings, TASK_TYPES)
    producer = Producer(queue, ctx.settings, producer_source(ctx, "p1"), backlog_types=("property_data",),
                        max_backlog=3)
    # When it runs, Then it starts 3 and leaves the rest DORMANT (due)
    assert producer.run_once() == 3
    assert store.counts()["campaigns"]["PROCESSING"] == 3 and store.counts()["campaigns"]["DORMANT"] == 7
    assert producer.run_once() == 0
    # When workers take 2 of them, Then the next pass starts 2 more, oldest due first, each task with its run id
    leases = queue.claim("W1", ("property_data",), 2).leases
    assert all(lease.task.run_id == 1 for lease in leases)
    assert producer.run_once() == 2
    assert store.counts()["campaigns"]["PROCESSING"] == 5
