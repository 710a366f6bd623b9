"""Tables: campaigns, their append-only history, stage results and email sends.

These declarations describe the head of the Alembic history; the migrations in
``migrations/versions`` are what create them in a real database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Constraint names are explicit so SQLite batch migrations can find them again.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Naive UTC: SQLite has no time zones, so every timestamp is stored as UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    street: Mapped[str] = mapped_column(String(200))
    city: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(2))
    zip_code: Mapped[str] = mapped_column(String(10))

    campaign_status: Mapped[str] = mapped_column(String(32), default="DORMANT")
    processing_stage: Mapped[str] = mapped_column(String(32), default="idle")
    #: Bumped by one on every applied transition: the compare-and-set token.
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: The current cycle; stage results and sends are keyed by it.
    run_id: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    # The old system's columns, kept in sync on every transition (workflow.legacy).
    # Their server defaults are the old schema's (migration 0001), so old writers still work.
    property_data_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    listings_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    sales_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    market_data_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    analysis_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    email_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    is_unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    # The polling dispatch's claim and retry bookkeeping (campaignctl.polling), in the database so it
    # holds across pollers, processes and restarts. The queue dispatch never reads these.
    #: Who runs this campaign's stage now: a poller's claim token (worker id and a random part).
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The claim lapses at this time (UTC); a dead poller's campaign is then taken by another.
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    #: Failed attempts of the stage at ``poll_version`` (any transition starts again at 0).
    poll_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The campaign version the attempts and the backoff belong to.
    poll_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: No poller runs the stage at ``poll_version`` before this time (UTC): retry backoff, deferrals.
    poll_not_before: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (
        Index("ix_campaigns_status_next_run_at", "campaign_status", "next_run_at"),
        Index("ix_campaigns_status_updated_at", "campaign_status", "updated_at"),
    )


class CampaignEvent(Base):
    """One applied transition. Rows are only ever inserted."""

    __tablename__ = "campaign_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int] = mapped_column(Integer)
    #: The campaign's version after this transition (gapless per campaign).
    version: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    from_stage: Mapped[str] = mapped_column(String(32))
    to_stage: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (UniqueConstraint("campaign_id", "version", name="uq_campaign_events_campaign_version"),)


class StageResult(Base):
    """What a stage produced for one run; a re-run of the stage overwrites it."""

    __tablename__ = "stage_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("campaign_id", "run_id", "stage", name="uq_stage_results_campaign_run_stage"),
    )


class EmailSend(Base):
    """The send intent and outcome for one campaign run (at most one email per run)."""

    __tablename__ = "email_sends"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(Integer)
    #: ``campaign-<id>-run-<run>``; also sent to SES as a tag so a send can be traced.
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    #: intent -> sent | unknown -> sent | not_sent
    state: Mapped[str] = mapped_column(String(20), default="intent")
    recipient: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The owner of the intent is (task_id, attempt): the task and its lease (fencing token).
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The owner's hold on the intent lapses at this time (UTC); NULL on rows from before owners existed.
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    #: Set right before the SES call: after it, nobody may take the intent over (the email may be out).
    call_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (UniqueConstraint("campaign_id", "run_id", name="uq_email_sends_campaign_run"),)
