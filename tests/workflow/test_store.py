"""CampaignStore on SQLite and PostgreSQL: compare-and-set, history, legacy sync, start_due, stalled."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from tests.workflow.helpers import TO_REVIEW, drive, new_campaigns
from workflow import machine
from workflow.legacy import LEGACY_COLUMNS, legacy_columns
from workflow.models import Campaign, EmailSend, utcnow
from workflow.states import Stage, Status
from workflow.store import CampaignStore, Expect, Result, upsert_stage_result


def legacy_of(store: CampaignStore, cid: int) -> dict[str, object]:
    t = Campaign.__table__
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(*[t.c[n] for n in LEGACY_COLUMNS]).where(t.c.id == cid)).one()
    return {k: (bool(v) if k == "is_unsubscribed" else v) for k, v in row._mapping.items()}


def test_start_advance_and_a_duplicate_changes_nothing(store: CampaignStore) -> None:
    # Given a due campaign
    [cid] = new_campaigns(store.engine)
    # When the producer starts it and a worker advances it
    assert [c.id for c in store.start_due(limit=10, worker_id="p1")] == [cid]
    first = store.apply(cid, "advance", expect=Expect(Status.PROCESSING, Stage.PROPERTY_DATA), task_id="t1")
    assert first.result is Result.APPLIED
    # Then the same task delivered again is a conflict, and nothing changes
    dup = store.apply(cid, "advance", expect=Expect(Status.PROCESSING, Stage.PROPERTY_DATA), task_id="t1")
    assert dup.result is Result.CONFLICT
    assert "expected stage property_data, found active_listings" in dup.message
    snap = store.get(cid)
    assert (snap.campaign_status, snap.processing_stage, snap.version, snap.run_id) == (
        Status.PROCESSING, Stage.ACTIVE_LISTINGS, 2, 1)
    history = store.history(cid)
    assert [(h["version"], h["trigger"], h["worker_id"], h["task_id"]) for h in history] == [
        (1, "start", "p1", None), (2, "advance", None, "t1")]
    assert legacy_of(store, cid) == legacy_columns(Status.PROCESSING, Stage.ACTIVE_LISTINGS)


def test_illegal_and_not_found(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    out = store.apply(cid, "approve")
    assert out.result is Result.ILLEGAL and out.message == f"campaign {cid}: cannot approve a campaign that is DORMANT"
    assert store.apply(cid + 1000, "start").result is Result.NOT_FOUND
    assert store.get(cid).version == 0 and store.history(cid) == []


def test_stale_version_is_a_conflict(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    drive(store, cid, ["start"])
    out = store.apply(cid, "advance", expect=Expect(version=0))
    assert out.result is Result.CONFLICT and store.get(cid).version == 1


def test_fail_records_the_reason_and_retry_resumes_the_failed_stage(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    drive(store, cid, ["start", "advance"])
    out = store.apply(cid, "fail", error="zillow: 404 address unknown")
    assert out.after.campaign_status is Status.ERROR and out.after.processing_stage is Stage.ACTIVE_LISTINGS
    assert store.get(cid).last_error == "zillow: 404 address unknown"
    assert store.history(cid)[-1]["detail"] == "zillow: 404 address unknown"
    assert legacy_of(store, cid)["listings_status"] == "failed"
    store.apply(cid, "retry")
    snap = store.get(cid)
    assert (snap.campaign_status, snap.processing_stage, snap.last_error) == (
        Status.PROCESSING, Stage.ACTIVE_LISTINGS, None)


def test_a_sent_campaign_is_rearmed_and_started_when_due_again(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    drive(store, cid, TO_REVIEW + ("approve", "mark_sent"))
    snap = store.get(cid)
    assert snap.campaign_status is Status.SENT
    assert snap.next_run_at > utcnow() + store.cycle - dt.timedelta(minutes=1)
    assert store.start_due(limit=10) == []  # not due yet
    [started] = store.start_due(limit=10, now=snap.next_run_at)
    assert (started.campaign_status, started.processing_stage, started.run_id, started.version) == (
        Status.PROCESSING, Stage.PROPERTY_DATA, 2, snap.version + 2)
    assert [h["trigger"] for h in store.history(cid)[-2:]] == ["rearm", "start"]
    assert legacy_of(store, cid) == legacy_columns(Status.PROCESSING, Stage.PROPERTY_DATA)


def test_a_large_batch_writes_the_same_history_as_a_small_one(store: CampaignStore) -> None:
    # Given 60 due campaigns (a batch that PostgreSQL's history COPY takes), 2 of them SENT and due again
    ids = new_campaigns(store.engine, 60)
    for cid in ids[:2]:
        drive(store, cid, TO_REVIEW + ("approve", "mark_sent"))
    later = utcnow() + store.cycle + dt.timedelta(minutes=1)
    # When the producer's path starts them in one batch
    runs = dict(store.start_due_runs(limit=100, now=later))
    # Then every one is PROCESSING at its new run, with gapless history rows (rearm + start for the SENT ones)
    assert set(runs) == set(ids)
    for cid in ids:
        snap = store.get(cid)
        assert snap is not None and snap.campaign_status is Status.PROCESSING and snap.run_id == runs[cid]
        history = store.history(cid)
        assert [h["version"] for h in history] == list(range(1, snap.version + 1))
        expected = ["rearm", "start"] if cid in ids[:2] else ["start"]
        assert [h["trigger"] for h in history[-len(expected):]] == expected
        assert history[-1]["run_id"] == runs[cid] and history[-1]["at"] == later
    assert [h["run_id"] for h in store.history(ids[0])[-2:]] == [1, 2]


def test_start_due_respects_due_time_and_limit(store: CampaignStore) -> None:
    due = new_campaigns(store.engine, 3)
    later = new_campaigns(store.engine, 2, due_in=3600)
    assert len(store.start_due(limit=2)) == 2
    assert [c.id for c in store.start_due(limit=10)] == [due[2]]
    assert store.start_due(limit=10) == []
    assert {c.id for c in store.start_due(limit=10, now=utcnow() + dt.timedelta(hours=2))} == set(later)


def test_unsubscribe_keeps_legacy_columns_and_sets_the_flag(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    drive(store, cid, ["start", "advance", "unsubscribe"])
    cols = legacy_of(store, cid)
    assert cols["is_unsubscribed"] is True and cols["property_data_status"] == "completed"
    assert store.apply(cid, "start").result is Result.ILLEGAL
    assert store.start_due(limit=10, now=utcnow() + dt.timedelta(days=400)) == []


def test_within_runs_in_the_same_transaction(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    drive(store, cid, ["start"])

    def boom(conn, before, after):  # type: ignore[no-untyped-def]
        upsert_stage_result(conn, cid, after.run_id, "property_data", {"beds": 3})
        raise RuntimeError("handler crashed after the write")

    with pytest.raises(RuntimeError):
        store.apply(cid, "advance", within=boom)
    assert store.get(cid).version == 1 and store.stage_result(cid, 1, "property_data") is None

    store.apply(cid, "advance", within=lambda conn, b, a: upsert_stage_result(conn, cid, a.run_id, "property_data",
                                                                             {"beds": 3}))
    assert store.stage_result(cid, 1, "property_data") == {"beds": 3}


def test_follow_up_triggers_commit_together_with_their_own_history_rows(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    drive(store, cid, ["start"] + ["advance"] * 5)
    assert store.get(cid).state_name == "PROCESSING:email_creation"
    version = store.get(cid).version

    # A follow-up that is not an edge from where the first trigger lands is a bug: nothing is written.
    with pytest.raises(machine.IllegalTransition):
        store.apply(cid, "advance", then=[("mark_sent", "x")])
    assert store.get(cid).version == version and len(store.history(cid)) == version

    out = store.apply(cid, "advance", then=[("approve", "AUTO_APPROVE")])
    assert out.applied and out.after is not None and out.after.state_name == "READY_TO_SEND"
    assert store.get(cid).version == version + 2
    tail = store.history(cid)[-2:]
    assert [(e["trigger"], e["version"], e["to_status"]) for e in tail] == [
        ("advance", version + 1, "READY_FOR_REVIEW"), ("approve", version + 2, "READY_TO_SEND")]
    assert tail[1]["detail"] == "AUTO_APPROVE"
    pairs = [(machine.state_name(Status(e["from_status"]), Stage(e["from_stage"])),
              machine.state_name(Status(e["to_status"]), Stage(e["to_stage"]))) for e in store.history(cid)]
    assert machine.check_history(pairs) == []


def test_stage_results_upsert_never_adds_a_row(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    for beds in (3, 4):
        with store.engine.begin() as conn:
            store.save_stage_result(conn, cid, 1, "property_data", {"beds": beds})
    assert store.stage_result(cid, 1, "property_data") == {"beds": 4}
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM stage_results")).scalar() == 1


def test_one_email_send_per_campaign_run(store: CampaignStore) -> None:
    [cid] = new_campaigns(store.engine)
    t = EmailSend.__table__
    row = {"campaign_id": cid, "run_id": 1, "idempotency_key": f"campaign-{cid}-run-1", "recipient": "a@example.com",
           "state": "intent", "created_at": utcnow()}
    with store.engine.begin() as conn:
        conn.execute(t.insert().values(**row))
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(t.insert().values(**{**row, "idempotency_key": "other"}))


def test_counts_and_stalled(store: CampaignStore) -> None:
    ids = new_campaigns(store.engine, 4)
    drive(store, ids[0], ["start", "advance"])
    drive(store, ids[1], TO_REVIEW + ("approve",))
    drive(store, ids[2], ["start", "fail"])
    counts = store.counts()
    assert counts["campaigns"] == {
        "DORMANT": 1, "PROCESSING": 1, "READY_FOR_REVIEW": 0, "READY_TO_SEND": 1, "SEND_OUTCOME_UNKNOWN": 0,
        "SENT": 0, "ERROR": 1, "UNSUBSCRIBED": 0}
    assert counts["stages"]["active_listings"] == 1 and sum(counts["stages"].values()) == 1
    assert store.stalled(dt.timedelta(hours=1)) == []
    assert store.stalled(dt.timedelta(seconds=-60)) == [(ids[0], "active_listings"), (ids[1], "email_sending")]
    assert store.stalled(dt.timedelta(seconds=-60), after_id=ids[0]) == [(ids[1], "email_sending")]
