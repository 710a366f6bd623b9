"""Tasks carry their campaign's run (issue 11, finding 6): a stale task or dead letter touches nothing.

A campaign that went round once (SENT, then due again) is at the same stage of
a newer run; a task or a dead letter from the earlier run must see that.
"""

from __future__ import annotations

import datetime as dt

from campaignctl.context import AppContext
from campaignctl.wiring import dead_letter_hook, producer_source, reconcile_source
from engine.task import Task
from tests.stages.conftest import Harness, Sandbox
from tests.stages.test_stages import _to_ready_to_send, harness, seed  # noqa: F401 - the fixture
from tests.workflow.helpers import drive
from workflow.models import utcnow
from workflow.states import EMAIL_SENDING, Stage, Status
from workflow.store import CampaignStore


def second_run(store: CampaignStore, cid: int) -> int:
    """Take a started campaign through a whole run and start the next one; returns the old run id."""
    old = store.get(cid).run_id
    drive(store, cid, ["advance"] * 6 + ["approve", "mark_sent"])
    [started] = store.start_due(limit=10, now=utcnow() + dt.timedelta(days=400))
    assert started.id == cid and started.run_id == old + 1
    return old


def test_a_stale_stage_task_does_nothing(harness: Harness, fast_sandbox: Sandbox) -> None:
    # finding 6: a task of an earlier run finds the campaign at its stage in a newer run
    cid = seed(harness.store)
    old = second_run(harness.store, cid)
    before = harness.store.get(cid)
    assert (before.campaign_status, before.processing_stage) == (Status.PROCESSING, Stage.PROPERTY_DATA)
    harness.run_task(Task.new("property_data", cid, run_id=old))
    assert harness.store.get(cid) == before
    assert fast_sandbox.stats()["calls"] == {}


def test_a_stale_send_task_does_nothing(harness: Harness, fast_sandbox: Sandbox) -> None:
    # finding 6: a send task of an earlier run must not send this run's email
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    snap = harness.store.get(cid)
    harness.run_task(Task.new(EMAIL_SENDING, cid, run_id=snap.run_id - 1))
    assert harness.store.get(cid) == snap
    assert fast_sandbox.stats()["calls"].get("ses", 0) == 0
    harness.run_task(Task.new(EMAIL_SENDING, cid, run_id=snap.run_id))
    assert harness.store.get(cid).campaign_status is Status.SENT


def test_a_completed_stage_enqueues_the_next_with_its_run(harness: Harness, fast_sandbox: Sandbox) -> None:
    # finding 6: stages.common.complete passes the run on
    cid = seed(harness.store)
    run = harness.store.get(cid).run_id
    harness.run_task(Task.new("property_data", cid, run_id=run))
    claim = harness.queue.claim("test-worker", ["active_listings"], 1)
    assert [lease.task.run_id for lease in claim.leases] == [run]


def test_a_stale_dead_letter_does_not_fail_the_newer_run(store: CampaignStore, db_url: str) -> None:
    # finding 6: the dead-letter hook's expectation carries the task's run
    ctx = AppContext({"DATABASE_URL": db_url})
    cid = seed(store)
    old = second_run(store, cid)
    hook = dead_letter_hook(ctx, "test-worker")
    hook(Task.new("property_data", cid, run_id=old), "gave up after 5 attempts", None)
    assert store.get(cid).campaign_status is Status.PROCESSING
    hook(Task.new("property_data", cid, run_id=old + 1), "gave up after 5 attempts", None)
    assert store.get(cid).campaign_status is Status.ERROR
    ctx.db.dispose()


def test_producer_and_reconcile_sources_carry_the_run(store: CampaignStore, db_url: str) -> None:
    # finding 6: the producer and reconcile enqueue tasks with the campaign's run
    ctx = AppContext({"DATABASE_URL": db_url, "STALL_THRESHOLD": "0.001"})
    from tests.workflow.helpers import new_campaigns

    [cid] = new_campaigns(store.engine, 1)
    assert producer_source(ctx)(10) == [("property_data", cid, 1)]
    assert list(reconcile_source(ctx)()) == [("property_data", cid, 1)]
    ctx.db.dispose()
