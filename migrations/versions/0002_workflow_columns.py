"""Workflow columns, history, stage results, email sends; backfill from legacy columns.

Upgrade, in this order (SQLite rebuilds ``campaigns`` in batch mode, so it is
altered before any table references it):
1. add campaign_status, processing_stage, version, run_id, next_run_at,
   last_error (nullable for now);
2. backfill: every row's position is ``workflow.legacy.position_from_legacy``
   of its legacy columns (the same function the tests check against the
   machine), NULL legacy statuses become 'pending' (which they always meant),
   next_run_at = updated_at;
3. make the new columns and the legacy columns NOT NULL, add the indexes the
   producer (status + next_run_at) and recovery (status + updated_at) query;
4. create campaign_events, stage_results and email_sends.
The downgrade drops all of it again; the legacy columns were kept in sync on
every transition, so the old system reads the current state.

Revision ID: 0002
Revises: 0001
Create Date: 2024-01-02 00:00:00
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from workflow.legacy import LEGACY_COLUMNS, STAGE_COLUMNS, position_from_legacy

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Rows read and written per round trip of the backfill.
BACKFILL_BATCH = 5000

_NEW_COLUMNS = ("campaign_status", "processing_stage", "version", "run_id", "next_run_at", "last_error")


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("campaign_status", sa.String(32), nullable=True))
        batch.add_column(sa.Column("processing_stage", sa.String(32), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("next_run_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))

    _backfill()

    with op.batch_alter_table("campaigns") as batch:
        batch.alter_column("campaign_status", existing_type=sa.String(32), nullable=False)
        batch.alter_column("processing_stage", existing_type=sa.String(32), nullable=False)
        batch.alter_column("version", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("run_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("next_run_at", existing_type=sa.DateTime(), nullable=False)
        for name in STAGE_COLUMNS.values():
            batch.alter_column(name, existing_type=sa.String(20), existing_server_default="pending", nullable=False)
        batch.alter_column("is_unsubscribed", existing_type=sa.Boolean(), existing_server_default=sa.false(),
                           nullable=False)
        batch.create_index("ix_campaigns_status_next_run_at", ["campaign_status", "next_run_at"])
        batch.create_index("ix_campaigns_status_updated_at", ["campaign_status", "updated_at"])

    op.create_table(
        "campaign_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(32), nullable=False),
        sa.Column("to_status", sa.String(32), nullable=False),
        sa.Column("from_stage", sa.String(32), nullable=False),
        sa.Column("to_stage", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE",
                                name=op.f("fk_campaign_events_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_events")),
        sa.UniqueConstraint("campaign_id", "version", name="uq_campaign_events_campaign_version"),
    )
    op.create_index(op.f("ix_campaign_events_campaign_id"), "campaign_events", ["campaign_id"])
    op.create_table(
        "stage_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE",
                                name=op.f("fk_stage_results_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_results")),
        sa.UniqueConstraint("campaign_id", "run_id", "stage", name="uq_stage_results_campaign_run_stage"),
    )
    op.create_table(
        "email_sends",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(100), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE",
                                name=op.f("fk_email_sends_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_sends")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_email_sends_idempotency_key")),
        sa.UniqueConstraint("campaign_id", "run_id", name="uq_email_sends_campaign_run"),
    )


def downgrade() -> None:
    op.drop_table("email_sends")
    op.drop_table("stage_results")
    op.drop_index(op.f("ix_campaign_events_campaign_id"), table_name="campaign_events")
    op.drop_table("campaign_events")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_index("ix_campaigns_status_updated_at")
        batch.drop_index("ix_campaigns_status_next_run_at")
        for name in STAGE_COLUMNS.values():
            batch.alter_column(name, existing_type=sa.String(20), existing_server_default="pending", nullable=True)
        batch.alter_column("is_unsubscribed", existing_type=sa.Boolean(), existing_server_default=sa.false(),
                           nullable=True)
        for name in reversed(_NEW_COLUMNS):
            batch.drop_column(name)


def _backfill() -> None:
    """Set every row's position from its legacy columns, in batches of ids.

    The rule lives in Python (``position_from_legacy``) rather than a SQL CASE
    so the migration and the tests share one definition; rows are grouped by
    resulting position so each batch is a handful of UPDATE … WHERE id IN (…).
    """
    if context.is_offline_mode():
        raise RuntimeError("revision 0002 reads rows to backfill them; run it online, not with --sql")
    bind = op.get_bind()
    campaigns = sa.table(
        "campaigns",
        sa.column("id", sa.Integer()),
        *[sa.column(name) for name in LEGACY_COLUMNS],
        *[sa.column(name) for name in _NEW_COLUMNS],
        sa.column("updated_at", sa.DateTime()),
    )
    for name in STAGE_COLUMNS.values():
        bind.execute(sa.update(campaigns).where(campaigns.c[name].is_(None)).values({name: "pending"}))
    bind.execute(
        sa.update(campaigns).where(campaigns.c.is_unsubscribed.is_(None)).values(is_unsubscribed=sa.false())
    )
    bind.execute(sa.update(campaigns).values(version=0, run_id=0, next_run_at=campaigns.c.updated_at))
    after_id = 0
    while True:
        rows = bind.execute(
            sa.select(campaigns.c.id, *[campaigns.c[name] for name in LEGACY_COLUMNS])
            .where(campaigns.c.id > after_id)
            .order_by(campaigns.c.id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for row in rows:
            status, stage = position_from_legacy(row._mapping)
            groups[(status.value, stage.value)].append(row.id)
        for (status, stage), ids in groups.items():
            bind.execute(
                sa.update(campaigns)
                .where(campaigns.c.id.in_(ids))
                .values(campaign_status=status, processing_stage=stage)
            )
        after_id = rows[-1].id
