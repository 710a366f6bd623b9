"""Send intents with an owner and a lease; the polling dispatch's claims and attempts in the database.

Upgrade:
1. email_sends gains ``attempt`` (with the existing ``task_id``, the intent's
   owner), ``lease_until`` and ``call_started_at``. Existing rows keep NULLs:
   an ``intent`` without a lease predates owners, and is treated as a sender
   that may have called SES (unknown), exactly as before.
2. campaigns gains ``claimed_by``, ``claimed_until`` (a poller's claim and its
   lease), ``poll_attempts``, ``poll_version`` and ``poll_not_before`` (the
   retry bookkeeping of the stage at that version).
The downgrade drops them; nothing else reads them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEND_COLUMNS = ("attempt", "lease_until", "call_started_at")
_POLL_COLUMNS = ("claimed_by", "claimed_until", "poll_attempts", "poll_version", "poll_not_before")


def upgrade() -> None:
    with op.batch_alter_table("email_sends") as batch:
        batch.add_column(sa.Column("attempt", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("call_started_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("poll_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("poll_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("poll_not_before", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        for name in reversed(_POLL_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("email_sends") as batch:
        for name in reversed(_SEND_COLUMNS):
            batch.drop_column(name)
