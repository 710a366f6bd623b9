"""The stage handlers with the real store (SQLite and PostgreSQL), real Redis and the sandbox.

Handlers are called directly with a real TaskContext (queue + shared limiter),
exactly as a worker calls them; the worker itself is covered end to end.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import attrs
import pytest
import redis
from sqlalchemy import func, select

from campaignctl.cli import main as campaignctl
from engine.settings import EngineSettings
from stages.errors import PermanentError, TransientError
from tests.stages.conftest import Harness, Sandbox
from workflow import sends
from workflow.models import EmailSend, StageResult, utcnow
from workflow.seed import NewCampaign, insert_campaigns
from workflow.states import EMAIL_SENDING, PIPELINE, Stage, Status
from workflow.store import CampaignStore

DATA_STAGES = [s.value for s in PIPELINE]


def seed(store: CampaignStore, *, email: str = "", street: str = "12 Maple Street") -> int:
    email = email or f"owner-{uuid.uuid4().hex[:8]}@example.com"
    [cid] = insert_campaigns(store.engine, [NewCampaign("Jane Doe", email, street, "Springfield", "IL", "62704")])
    started = store.start_due(limit=10)
    assert [s.id for s in started] == [cid]
    return cid


@pytest.fixture
def harness(store: CampaignStore, redis_client: redis.Redis, engine_settings: EngineSettings,
            fast_sandbox: Sandbox) -> Harness:
    key = uuid.uuid4().hex[:8]  # fresh sandbox buckets per test
    return Harness(store, redis_client, engine_settings, fast_sandbox,
                   ZILLOW_API_KEY=f"z-{key}", ZILLOW56_API_KEY=f"z56-{key}", RENTCAST_API_KEY=f"rc-{key}",
                   QEV_API_KEY=f"qev-{key}")


def rows(store: CampaignStore, table: Any, cid: int) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(table.c.campaign_id == cid)).scalar()


def ready(harness: Harness, task_type: str) -> int:
    return harness.queue.stats()["queues"][task_type]["ready"]


def run_pipeline(harness: Harness, cid: int) -> None:
    for task_type in DATA_STAGES:
        harness.run(task_type, cid)


def test_pipeline_stores_each_stage_and_enqueues_the_next(harness: Harness, fast_sandbox: Sandbox) -> None:
    store = harness.store
    cid = seed(store)
    for i, task_type in enumerate(DATA_STAGES):
        harness.run(task_type, cid)
        snap = store.get(cid)
        if i + 1 < len(DATA_STAGES):
            assert (snap.campaign_status, snap.processing_stage.value) == (Status.PROCESSING, DATA_STAGES[i + 1])
            assert ready(harness, DATA_STAGES[i + 1]) == 1
        assert store.stage_result(cid, snap.run_id, task_type) is not None
    snap = store.get(cid)
    assert snap.campaign_status is Status.READY_FOR_REVIEW
    draft = store.stage_result(cid, snap.run_id, "email_creation")
    assert draft["subject"] and draft["body"] and draft["verdict"]["passed"]
    assert store.stage_result(cid, snap.run_id, "home_analysis")["analysis"]
    assert rows(store, StageResult.__table__, cid) == len(DATA_STAGES)
    calls = fast_sandbox.stats()["calls"]
    print(calls)
    assert calls.get("zillow", 0) == 3 and calls.get("rentcast", 0) == 2
    assert calls.get("bedrock", 0) == 2 and calls.get("email_verification", 0) == 1
    history = [(e["trigger"], e["task_id"]) for e in store.history(cid)]
    assert all(task_id for trigger, task_id in history if trigger == "advance")


def test_duplicate_and_stale_tasks_call_no_provider(harness: Harness, fast_sandbox: Sandbox) -> None:
    store = harness.store
    cid = seed(store)
    harness.run("property_data", cid)
    before = fast_sandbox.stats()["calls"]
    version = store.get(cid).version
    harness.run("property_data", cid)   # duplicate: the campaign is at active_listings now
    harness.run("email_sending", cid)   # stale: not READY_TO_SEND
    assert fast_sandbox.stats()["calls"] == before
    assert store.get(cid).version == version


def test_missing_campaign_is_discarded(harness: Harness) -> None:
    from engine.errors import Discard

    with pytest.raises(Discard):
        harness.run("property_data", 999_999)


def test_rerun_of_a_stage_upserts_one_row_and_reuses_the_verdict(harness: Harness, fast_sandbox: Sandbox) -> None:
    store = harness.store
    cid = seed(store)
    for task_type in DATA_STAGES[:-1]:
        harness.run(task_type, cid)
    fast_sandbox.faults("bedrock:5xx=1")
    with pytest.raises(TransientError):
        harness.run("email_creation", cid)  # verified, then Bedrock failed: the verdict is kept
    fast_sandbox.faults("")
    harness.run("email_creation", cid)
    run = store.get(cid).run_id
    with store.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(StageResult.__table__).where(
            StageResult.__table__.c.campaign_id == cid, StageResult.__table__.c.stage == "email_creation",
            StageResult.__table__.c.run_id == run)).scalar()
    assert n == 1
    assert fast_sandbox.stats()["calls"].get("email_verification") == 1
    assert store.get(cid).campaign_status is Status.READY_FOR_REVIEW


def test_unknown_address_fails_permanently(harness: Harness, fast_sandbox: Sandbox) -> None:
    cid = seed(harness.store, street="1 Nowhere Road")
    with pytest.raises(PermanentError) as info:
        harness.run("property_data", cid)
    assert "property not found" in str(info.value)
    assert fast_sandbox.stats()["calls"].get("zillow56", 0) == 0  # bad data is no reason to fall back


def test_zillow_outage_falls_back_to_zillow56(harness: Harness, fast_sandbox: Sandbox) -> None:
    harness.deps.settings = harness.provider_settings = type(harness.provider_settings).from_env(
        {"SANDBOX_URL": fast_sandbox.url, "ZILLOW_API_KEY": "unsubscribed-key", "ZILLOW56_API_KEY": "z56-ok",
         "RATE_SCALE": "100"})
    from stages.common import Providers

    harness.deps.providers = Providers(harness.deps.settings)
    cid = seed(harness.store)
    harness.run("property_data", cid)
    snap = harness.store.get(cid)
    assert snap.processing_stage is Stage.ACTIVE_LISTINGS
    assert harness.store.stage_result(cid, snap.run_id, "property_data")["source"] == "zillow56"


def test_paused_zillow_bucket_falls_back_to_zillow56(harness: Harness, fast_sandbox: Sandbox) -> None:
    harness.limiter.pause("zillow", 600)  # longer than MAX_TOKEN_SLEEP: a worker would defer
    cid = seed(harness.store)
    harness.run("property_data", cid)
    snap = harness.store.get(cid)
    assert harness.store.stage_result(cid, snap.run_id, "property_data")["source"] == "zillow56"
    calls = fast_sandbox.stats()["calls"]
    assert calls.get("zillow", 0) == 0 and calls.get("zillow56") == 1


def test_invalid_email_fails_with_the_verdict(harness: Harness, fast_sandbox: Sandbox) -> None:
    cid = seed(harness.store, email="invalid-email@example.com")
    for task_type in DATA_STAGES[:-1]:
        harness.run(task_type, cid)
    with pytest.raises(PermanentError) as info:
        harness.run("email_creation", cid)
    assert "invalid" in str(info.value) and "invalid-email@example.com" in str(info.value)
    assert fast_sandbox.stats()["calls"].get("bedrock", 0) == 1  # the analysis only; no email written


def test_auto_approve_commits_with_the_draft_and_queues_the_send(harness: Harness) -> None:
    store = harness.store
    harness.deps.settings = attrs.evolve(harness.deps.settings, auto_approve=True)
    cid = seed(store)
    run_pipeline(harness, cid)
    snap = store.get(cid)
    assert snap.campaign_status is Status.READY_TO_SEND
    last = store.history(cid)[-2:]
    assert [e["trigger"] for e in last] == ["advance", "approve"]
    assert ready(harness, EMAIL_SENDING) == 1


def _to_ready_to_send(harness: Harness, cid: int) -> None:
    run_pipeline(harness, cid)
    assert harness.store.apply(cid, "approve").applied


def test_email_sending_sends_once(harness: Harness, fast_sandbox: Sandbox) -> None:
    store = harness.store
    cid = seed(store)
    _to_ready_to_send(harness, cid)
    harness.run(EMAIL_SENDING, cid)
    harness.run(EMAIL_SENDING, cid)  # a duplicate delivery
    snap = store.get(cid)
    assert snap.campaign_status is Status.SENT
    email = snap.email
    assert fast_sandbox.stats()["emails"] == {email: 1}
    with store.engine.connect() as conn:
        row = sends.get(conn, cid, snap.run_id)
    assert row["state"] == "sent" and row["message_id"] and row["idempotency_key"] == f"campaign-{cid}-run-{snap.run_id}"


def test_leftover_intent_means_unknown_and_no_ses_call(harness: Harness, fast_sandbox: Sandbox,
                                                      monkeypatch: pytest.MonkeyPatch, db_url: str,
                                                      engine_settings: EngineSettings) -> None:
    store = harness.store
    cid = seed(store)
    _to_ready_to_send(harness, cid)
    snap = store.get(cid)
    with store.engine.begin() as conn:  # what a sender that died after its SES call leaves behind
        dead = sends.Owner("dead-task", "dead-attempt", "dead-worker")
        long_ago = utcnow() - dt.timedelta(minutes=5)
        sends.claim(conn, cid, snap.run_id, snap.email, dead, lease=60, now=long_ago)
        assert sends.start_call(conn, cid, snap.run_id, dead, lease=60, now=long_ago)
    harness.run(EMAIL_SENDING, cid)
    assert store.get(cid).campaign_status is Status.SEND_OUTCOME_UNKNOWN
    assert fast_sandbox.stats()["calls"].get("ses", 0) == 0
    # a person checked SES: it was not sent -> back to READY_TO_SEND, queued, sent once
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("REDIS_URL", engine_settings.redis_url)
    monkeypatch.setenv("KEY_PREFIX", engine_settings.key_prefix)
    assert campaignctl(["resolve", str(cid), "--not-sent"]) == 0
    assert store.get(cid).campaign_status is Status.READY_TO_SEND
    assert ready(harness, EMAIL_SENDING) == 1
    harness.run(EMAIL_SENDING, cid)
    assert store.get(cid).campaign_status is Status.SENT
    assert fast_sandbox.stats()["emails"] == {snap.email: 1}
    assert rows(store, EmailSend.__table__, cid) == 1
    assert campaignctl(["resolve", str(cid), "--sent"]) == 1  # not in SEND_OUTCOME_UNKNOWN: refused


def test_ses_5xx_is_unknown_never_resent(harness: Harness, fast_sandbox: Sandbox) -> None:
    store = harness.store
    cid = seed(store)
    _to_ready_to_send(harness, cid)
    fast_sandbox.faults("ses:5xx=1")
    harness.run(EMAIL_SENDING, cid)
    fast_sandbox.faults("")
    assert store.get(cid).campaign_status is Status.SEND_OUTCOME_UNKNOWN
    harness.run(EMAIL_SENDING, cid)
    assert fast_sandbox.stats()["calls"].get("ses") == 1
    with store.engine.connect() as conn:
        assert sends.get(conn, cid, store.get(cid).run_id)["state"] == "unknown"


def test_ses_refusal_resets_the_intent_so_a_retry_sends(harness: Harness, fast_sandbox: Sandbox) -> None:
    store = harness.store
    cid = seed(store)
    _to_ready_to_send(harness, cid)
    fast_sandbox.faults("ses:429=1")
    from engine.errors import RateLimited

    with pytest.raises(RateLimited):
        harness.run(EMAIL_SENDING, cid)
    fast_sandbox.faults("")
    with store.engine.connect() as conn:
        assert sends.get(conn, cid, store.get(cid).run_id)["state"] == "not_sent"
    harness.limiter.redis.delete(*harness.limiter._bucket("ses"))  # the pause is the engine's business
    harness.limiter.prime()  # (a bucket without keys would open MAX_TOKEN_SLEEP later: see acquire_token.lua)
    harness.run(EMAIL_SENDING, cid)
    assert store.get(cid).campaign_status is Status.SENT
    assert fast_sandbox.stats()["emails"] == {store.get(cid).email: 1}


def test_a_duplicate_email_creation_never_overwrites_the_recorded_draft(
        harness: Harness, fast_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stepped (the chaos suite's invariant 2 failure): run A of email_creation reads no cached verdict and
    calls the verifier; meanwhile run B does the whole stage and records the draft. A's verdict cache
    must not replace B's draft, or the sender finds none and the campaign goes to ERROR while B's
    email may already be out."""
    store = harness.store
    cid = seed(store)
    for task_type in DATA_STAGES[:-1]:
        harness.run(task_type, cid)
    verifier = harness.deps.providers.email_verification
    real_verify = verifier.verify

    def verify_while_run_b_completes(ctx, email):  # type: ignore[no-untyped-def]
        monkeypatch.setattr(verifier, "verify", real_verify)
        harness.run("email_creation", cid)  # run B: verified, drafted, recorded
        return real_verify(ctx, email)

    monkeypatch.setattr(verifier, "verify", verify_while_run_b_completes)
    harness.run("email_creation", cid)  # run A: its record finds the campaign moved on
    draft = store.stage_result(cid, store.get(cid).run_id, "email_creation")
    assert draft and draft["subject"] and draft["body"], draft
    assert store.get(cid).campaign_status is Status.READY_FOR_REVIEW
