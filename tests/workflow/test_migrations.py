"""Alembic on SQLite and PostgreSQL: up, down, up again; head == models; the backfill.

Revision 0001 is the old system's schema; rows are written there exactly as the
old services left them (including NULLs and odd spellings), then 0002 must
give every row the position ``position_from_legacy`` reads from its columns.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from migrations import runner
from tests.workflow.helpers import drive
from workflow import machine
from workflow.db import make_engine
from workflow.legacy import LEGACY_COLUMNS, STAGE_COLUMNS, legacy_columns, position_from_legacy
from workflow.models import Base
from workflow.states import Stage, Status
from workflow.store import CampaignStore

NEW_TABLES = {"campaign_events", "stage_results", "email_sends"}
NEW_COLUMNS = {"campaign_status", "processing_stage", "version", "run_id", "next_run_at", "last_error"}
#: Revision 0003: the polling dispatch's claims and attempts, the send intent's owner and lease.
POLL_COLUMNS = {"claimed_by", "claimed_until", "poll_attempts", "poll_version", "poll_not_before"}
INTENT_COLUMNS = {"attempt", "lease_until", "call_started_at"}

#: The campaigns table as schema 0001 has it (only what the tests write and read).
legacy = sa.Table(
    "campaigns",
    sa.MetaData(),
    sa.Column("id", sa.Integer(), primary_key=True),
    *[sa.Column(n, sa.String()) for n in ("owner_name", "email", "street", "city", "state", "zip_code")],
    sa.Column("created_at", sa.DateTime()),
    sa.Column("updated_at", sa.DateTime()),
    *[sa.Column(n, sa.String()) for n in STAGE_COLUMNS.values()],
    sa.Column("is_unsubscribed", sa.Boolean()),
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, Base.metadata)


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def insert_legacy(engine: Engine, rows: list[dict[str, Any]]) -> list[int]:
    """Write campaigns as the old system did (schema 0001); returns their ids in order."""
    stamp = dt.datetime(2023, 5, 1, 12, 0, 0)
    values = [
        {"owner_name": f"Owner {i}", "email": f"o{i}@example.com", "street": f"{i} Main St", "city": "Austin",
         "state": "TX", "zip_code": "78701", "created_at": stamp, "updated_at": stamp + dt.timedelta(seconds=i),
         **row}
        for i, row in enumerate(rows)
    ]
    with engine.begin() as conn:
        if len({frozenset(v) for v in values}) > 1:
            # executemany takes its columns from the first row: rows that leave columns to the
            # server defaults must go one by one
            return [conn.execute(legacy.insert().returning(legacy.c.id), v).scalar_one() for v in values]
        return list(conn.execute(legacy.insert().returning(legacy.c.id, sort_by_parameter_order=True), values).scalars())


def positions(engine: Engine) -> dict[int, tuple[Status, Stage]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, campaign_status, processing_stage FROM campaigns")).all()
    return {r[0]: (Status(r[1]), Stage(r[2])) for r in rows}


def test_upgrade_downgrade_upgrade_and_head_matches_models(db_url: str, engine: Engine) -> None:
    runner.upgrade(db_url)
    assert runner.current(engine=engine) == runner.head() == "0003"
    assert tables(engine) == {"campaigns"} | NEW_TABLES
    assert schema_diff(engine) == []

    runner.downgrade(db_url, "0002")
    assert columns(engine, "campaigns") & POLL_COLUMNS == set()
    assert columns(engine, "email_sends") & INTENT_COLUMNS == set()
    runner.upgrade(db_url)
    assert schema_diff(engine) == []

    runner.downgrade(db_url, "0001")
    assert tables(engine) == {"campaigns"}
    assert columns(engine, "campaigns") & (NEW_COLUMNS | POLL_COLUMNS) == set()
    assert set(LEGACY_COLUMNS) <= columns(engine, "campaigns")

    runner.downgrade(db_url, "base")
    assert tables(engine) == set()
    assert runner.current(engine=engine) is None

    runner.upgrade(db_url)
    assert schema_diff(engine) == []
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("campaigns")}
    assert {"ix_campaigns_status_next_run_at", "ix_campaigns_status_updated_at"} <= indexes


def test_backfill_reads_every_machine_position_back(db_url: str, engine: Engine) -> None:
    # Given one legacy row per position the machine can reach, written by legacy_columns
    runner.upgrade(db_url, "0001")
    rows = []
    for name in machine.STATES:
        cols = dict(legacy_columns(*machine.position(name)))
        if name == "UNSUBSCRIBED":
            # the flag wins over whatever the status columns still say
            cols = {**legacy_columns(Status.PROCESSING, Stage.MARKET_DATA), "is_unsubscribed": True}
        rows.append(cols)
    ids = insert_legacy(engine, rows)
    # When 0002 runs
    runner.upgrade(db_url)
    # Then every row is back at its position, at version 0 of run 0, due when it was last touched
    got = positions(engine)
    assert [got[i] for i in ids] == [machine.position(n) for n in machine.STATES]
    with engine.connect() as conn:
        for version, run_id, next_run_at, updated_at in conn.execute(
            sa.text("SELECT version, run_id, next_run_at, updated_at FROM campaigns")
        ):
            assert (version, run_id, next_run_at) == (0, 0, updated_at)


#: Rows the old threads left behind, and where each belongs (written out by hand, not computed).
MESSY: list[tuple[dict[str, Any], tuple[Status, Stage]]] = [
    ({}, (Status.DORMANT, Stage.IDLE)),  # server defaults
    ({c: None for c in LEGACY_COLUMNS}, (Status.DORMANT, Stage.IDLE)),  # NULL meant "not started"
    ({"property_data_status": "Completed"}, (Status.PROCESSING, Stage.ACTIVE_LISTINGS)),
    ({"property_data_status": "COMPLETED", "listings_status": None, "sales_status": "completed"},
     (Status.PROCESSING, Stage.ACTIVE_LISTINGS)),
    ({"property_data_status": "completed", "listings_status": "failed", "sales_status": "completed"},
     (Status.ERROR, Stage.ACTIVE_LISTINGS)),
    ({"property_data_status": "failed", "market_data_status": "failed"}, (Status.ERROR, Stage.PROPERTY_DATA)),
    ({"property_data_status": "processing"}, (Status.PROCESSING, Stage.PROPERTY_DATA)),
    ({"property_data_status": "in_progress"}, (Status.PROCESSING, Stage.PROPERTY_DATA)),
    ({"email_status": "sent"}, (Status.SENT, Stage.IDLE)),
    ({"email_status": "SENT", "is_unsubscribed": True}, (Status.UNSUBSCRIBED, Stage.IDLE)),
    ({"email_status": "drafted", "listings_status": "failed"}, (Status.READY_FOR_REVIEW, Stage.IDLE)),
    ({"email_status": "approved"}, (Status.READY_TO_SEND, Stage.IDLE)),
    ({"email_status": "send_unknown"}, (Status.SEND_OUTCOME_UNKNOWN, Stage.IDLE)),
    ({"email_status": "send_failed"}, (Status.ERROR, Stage.IDLE)),
    ({**{c: "completed" for c in STAGE_COLUMNS.values()}}, (Status.READY_FOR_REVIEW, Stage.IDLE)),
    ({**{c: "completed" for c in STAGE_COLUMNS.values()}, "email_status": "pending"},
     (Status.PROCESSING, Stage.EMAIL_CREATION)),
    ({**{c: "completed" for c in STAGE_COLUMNS.values()}, "email_status": None, "is_unsubscribed": False},
     (Status.PROCESSING, Stage.EMAIL_CREATION)),
    ({"analysis_status": "completed"}, (Status.PROCESSING, Stage.PROPERTY_DATA)),
    ({"is_unsubscribed": None, "sales_status": "failed"}, (Status.ERROR, Stage.RECENT_SALES)),
]


def test_backfill_of_messy_legacy_rows(db_url: str, engine: Engine) -> None:
    runner.upgrade(db_url, "0001")
    ids = insert_legacy(engine, [row for row, _ in MESSY])
    runner.upgrade(db_url)
    got = positions(engine)
    assert [got[i] for i in ids] == [want for _, want in MESSY]
    # the legacy values themselves are kept as the old system wrote them; only NULL became 'pending'
    with engine.connect() as conn:
        row = conn.execute(sa.select(legacy).where(legacy.c.id == ids[3])).one()._mapping
    assert (row["property_data_status"], row["listings_status"]) == ("COMPLETED", "pending")


def test_backfill_agrees_with_position_from_legacy_on_random_rows(db_url: str, engine: Engine) -> None:
    """More rows than one backfill batch, with values drawn from everything the old threads wrote."""
    rng = random.Random(20240501)
    values = [None, "pending", "processing", "completed", "failed", "Completed", "FAILED", "in_progress"]
    email_values = values + ["drafted", "approved", "sent", "send_unknown", "send_failed", "Sent"]
    rows = []
    for _ in range(5200):
        row: dict[str, Any] = {c: rng.choice(values) for c in list(STAGE_COLUMNS.values())[:-1]}
        row["email_status"] = rng.choice(email_values)
        row["is_unsubscribed"] = rng.choice([None, False, False, False, True])
        rows.append(row)
    runner.upgrade(db_url, "0001")
    ids = insert_legacy(engine, rows)
    runner.upgrade(db_url)
    got = positions(engine)
    assert [got[i] for i in ids] == [position_from_legacy(r) for r in rows]
    assert len(set(got.values())) > 10


def test_positions_survive_downgrade_and_upgrade(db_url: str, engine: Engine) -> None:
    """The legacy columns are kept in sync, so the old schema still holds each campaign's position."""
    runner.upgrade(db_url)
    store = CampaignStore(engine)
    from tests.workflow.helpers import new_campaigns

    ids = new_campaigns(engine, 5)
    drive(store, ids[1], ["start", "advance", "advance"])
    drive(store, ids[2], ["start", "advance", "fail"])
    drive(store, ids[3], ["start"] + ["advance"] * 6 + ["approve", "mark_sent"])
    drive(store, ids[4], ["start", "unsubscribe"])
    before = positions(engine)
    runner.downgrade(db_url, "0001")
    runner.upgrade(db_url)
    assert positions(engine) == before
