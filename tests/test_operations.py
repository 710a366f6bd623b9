"""campaignctl.operations: the functions the CLI and the dashboard share, on a real Redis and database."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
import redis

from campaignctl import operations as ops
from campaignctl.context import AppContext
from engine.controls import ControlCache, Controls
from engine.queue import TaskQueue
from engine.settings import EngineSettings
from migrations import runner
from tests.workflow.helpers import TO_REVIEW, drive, new_campaigns
from workflow.states import PIPELINE, TASK_TYPES, Stage, Status
from workflow.store import upsert_stage_result


@pytest.fixture
def ctx(db_url: str, redis_url: str, redis_client: redis.Redis, key_prefix: str) -> Iterator[AppContext]:
    runner.upgrade(db_url)
    context = AppContext({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "KEY_PREFIX": key_prefix})
    yield context
    context.db.dispose()
    if "redis" in context.__dict__:
        context.redis.close()


def with_draft(ctx: AppContext, cid: int, subject: str = "Your home") -> None:
    """Drive a campaign to READY_FOR_REVIEW with the stage results a real run stores."""
    drive(ctx.store, cid, TO_REVIEW)
    snap = ctx.store.get(cid)
    with ctx.db.begin() as conn:
        upsert_stage_result(conn, cid, snap.run_id, "home_analysis", {"analysis": "A fine house. " * 100})
        upsert_stage_result(conn, cid, snap.run_id, "email_creation", {
            "subject": subject, "body": "Dear owner, ...", "to": snap.email,
            "verdict": {"result": "valid", "reason": "accepted_email", "passed": True, "disposable": False}})


def test_review_queue_oldest_first_with_the_draft(ctx: AppContext) -> None:
    # Given two campaigns reaching review one after the other, and one still processing
    first, second, busy = new_campaigns(ctx.db, 3)
    with_draft(ctx, first, "first")
    with_draft(ctx, second, "second")
    drive(ctx.store, busy, ("start",))
    # When the review queue is read
    drafts = ops.review_queue(ctx)
    # Then it lists the two, oldest first, each with subject, body, verification and a short analysis
    assert [d.campaign_id for d in drafts] == [first, second]
    d = drafts[0]
    assert (d.subject, d.body, d.verification, d.verification_passed) == (
        "first", "Dear owner, ...", "valid (accepted_email)", True)
    assert len(d.analysis) <= ops.ANALYSIS_SUMMARY_CHARS and d.analysis.endswith("…")
    assert d.waiting_since.tzinfo is not None
    assert json.loads(json.dumps(d.to_dict()))["waiting_since"].endswith("+00:00")
    assert [d.campaign_id for d in ops.review_queue(ctx, after=[first])] == [second]
    assert ops.review_count(ctx) == 2


def test_approve_with_the_reviewed_version_refuses_a_changed_campaign(ctx: AppContext) -> None:
    (cid,) = new_campaigns(ctx.db, 1)
    with_draft(ctx, cid)
    seen = ops.draft(ctx, cid)
    result = ops.approve(ctx, cid, version=seen.version - 1)
    assert (result.applied, result.code) == (False, ops.REFUSED)
    result = ops.approve(ctx, cid, version=seen.version)
    assert (result.applied, result.code, result.status) == (True, ops.OK, "READY_TO_SEND")
    assert "queued email_sending task" in result.queued[0]
    assert ops.approve(ctx, 10**6).code == ops.NOT_FOUND


def test_campaign_detail_carries_history_results_and_draft(ctx: AppContext) -> None:
    (cid,) = new_campaigns(ctx.db, 1)
    with_draft(ctx, cid)
    detail = ops.campaign_detail(ctx, cid).to_dict()
    assert detail["campaign_status"] == "READY_FOR_REVIEW"
    assert len(detail["history"]) == len(TO_REVIEW)
    assert all(h["at"].endswith("+00:00") for h in detail["history"])
    assert list(detail["stage_results"]) == ["home_analysis", "email_creation"]
    assert detail["draft"]["subject"] == "Your home"
    assert ops.campaign_detail(ctx, 10**6) is None


def test_list_by_status_stage_and_age(ctx: AppContext) -> None:
    a, b, c = new_campaigns(ctx.db, 3)
    drive(ctx.store, a, ("start",))
    drive(ctx.store, b, ("start", "advance"))
    assert [r.id for r in ops.list_campaigns(ctx, status="PROCESSING")] == [a, b]
    assert [r.id for r in ops.list_campaigns(ctx, stage="active_listings")] == [b]
    assert [r.id for r in ops.list_campaigns(ctx, status=Status.DORMANT)] == [c]
    assert ops.list_campaigns(ctx, older_than=3600) == []
    assert len(ops.list_campaigns(ctx, older_than=0)) == 3


def test_status_summary_has_reasons_unknown_ids_and_time_in_stage(ctx: AppContext) -> None:
    a, b = new_campaigns(ctx.db, 2)
    drive(ctx.store, a, ("start", "advance", "advance"))
    drive(ctx.store, b, ("start",))
    ctx.store.apply(b, "fail", error="zillow said no")
    summary = ops.status_summary(ctx).to_dict()
    assert summary["error_reasons"] == [{"reason": "zillow said no", "count": 1, "ids": [b]}]
    assert summary["time_in_stage"]["property_data"]["n"] == 2
    assert summary["time_in_stage"]["property_data"]["p95"] >= 0
    assert summary["time_in_stage"]["email_creation"] == {"n": 0, "p50": None, "p95": None}


def test_retry_all_only_at_the_given_stage(ctx: AppContext) -> None:
    a, b = new_campaigns(ctx.db, 2)
    drive(ctx.store, a, ("start", "fail"))
    drive(ctx.store, b, ("start", "advance", "fail"))
    result = ops.retry_all(ctx, stage="active_listings")
    assert (result.done, result.queued, result.code) == ((b,), 1, 0)
    result = ops.retry_all(ctx)
    assert result.done == (a,)


def test_queue_stats_oldest_ready_age_paused_and_counts(ctx: AppContext, key_prefix: str) -> None:
    (cid,) = new_campaigns(ctx.db, 1)
    drive(ctx.store, cid, ("start", "advance"))
    queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
    queue.enqueue("active_listings", cid)
    ops.pause_queue(ctx, "active_listings")
    stats = ops.queue_stats(ctx)
    q = stats["queues"]["active_listings"]
    assert q["ready"] == 1 and q["paused"] is True and 0 <= q["oldest_ready_age"] < 60
    assert stats["queues"]["property_data"]["processed"] == 1
    assert stats["queues"]["market_data"]["oldest_ready_age"] is None
    assert ops.resume_queue(ctx, "active_listings").applied
    with pytest.raises(ValueError):
        ops.pause_queue(ctx, "nosuch")


def test_rate_override_is_shown_by_limits_and_read_by_workers(ctx: AppContext) -> None:
    assert ops.limits(ctx)["zillow"]["plan"] == "10/min"
    ops.set_rate(ctx, "zillow", "20/min")
    shown = ops.limits(ctx)["zillow"]
    assert shown["override"] == "20/min" and shown["granted"] == "19.6/min"
    cache = ControlCache(Controls(ctx.redis, ctx.settings.key_prefix), refresh=0)
    assert cache.rate("zillow") == pytest.approx(20 / 60 * 0.98)  # the plan rate × RATE_HEADROOM
    ops.clear_rate(ctx, "zillow")
    assert ops.limits(ctx)["zillow"]["override"] is None and cache.rate("zillow") is None
    with pytest.raises(ValueError):
        ops.set_rate(ctx, "zillow", "fast")


def test_format_rate_uses_the_plan_unit() -> None:
    assert [ops.format_rate(r) for r in (10 / 60, 1.0, 8 / 60, 1 / 3600, 10.0)] == [
        "10/min", "1/s", "8/min", "1/h", "10/s"]


def test_requeue_of_a_dead_letter_retries_its_campaign_or_says_why_not(ctx: AppContext) -> None:
    # Given a campaign whose property_data task was dead-lettered (the campaign went to ERROR)
    a, b = new_campaigns(ctx.db, 2)
    queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
    entries = []
    for cid in (a, b):
        drive(ctx.store, cid, ("start",))
        task = queue.enqueue("property_data", cid)
        claim = queue.claim("w1", ["property_data"], 1)
        queue.dead_letter(claim.leases[0], "permanent: 404")
        ctx.store.apply(cid, "fail", error="permanent: 404")
        entries.append(task.task_id)
    ops.unsubscribe(ctx, b)
    # When the first is requeued, the campaign is retried and the entry is gone
    result = ops.requeue_dead_letter(ctx, entries[0])
    assert (result.applied, result.code, result.status, result.stage) == (True, 0, "PROCESSING", "property_data")
    assert queue.stats()["queues"]["property_data"]["ready"] == 1
    assert ops.dead_letter(ctx, entries[0]) is None
    # And one whose campaign was unsubscribed is refused with where it is, the entry kept
    result = ops.requeue_dead_letter(ctx, entries[1])
    assert (result.applied, result.code) == (False, ops.REFUSED) and "UNSUBSCRIBED" in result.message
    assert ops.dead_letter(ctx, entries[1])["campaign"]["campaign_status"] == "UNSUBSCRIBED"
    assert ops.requeue_dead_letter(ctx, "nosuch").code == ops.NOT_FOUND


def test_an_action_with_a_malformed_redis_url_changes_nothing(db_url: str) -> None:
    runner.upgrade(db_url)
    ctx = AppContext({"DATABASE_URL": db_url, "REDIS_URL": "http://nope"})
    (cid,) = new_campaigns(ctx.db, 1)
    drive(ctx.store, cid, ("start", "fail"))
    with pytest.raises(ValueError, match="REDIS_URL"):
        ops.retry(ctx, cid)
    assert ctx.store.get(cid).campaign_status is Status.ERROR
    ctx.db.dispose()
