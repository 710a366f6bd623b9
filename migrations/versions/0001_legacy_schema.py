"""The legacy schema, as the old polling system left it.

One ``campaigns`` table: owner and address, one status column per old service
(NULL and 'pending' both meant "not started"), the unsubscribe flag and the
timestamps. No workflow columns: revision 0002 adds those and backfills them.
Databases of the old system are stamped at this revision
(``campaignctl migrate --stamp 0001``) and upgraded from here.

Revision ID: 0001
Revises:
Create Date: 2024-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The old services' status columns, in the order the old schema declared them.
LEGACY_STATUS_COLUMNS = (
    "property_data_status",
    "listings_status",
    "sales_status",
    "market_data_status",
    "analysis_status",
    "email_status",
)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("street", sa.String(200), nullable=False),
        sa.Column("city", sa.String(100), nullable=False),
        sa.Column("state", sa.String(2), nullable=False),
        sa.Column("zip_code", sa.String(10), nullable=False),
        *[sa.Column(name, sa.String(20), nullable=True, server_default="pending") for name in LEGACY_STATUS_COLUMNS],
        sa.Column("is_unsubscribed", sa.Boolean(), nullable=True, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )


def downgrade() -> None:
    op.drop_table("campaigns")
