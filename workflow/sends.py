"""The email_sends records: at most one email per campaign run.

One row per (campaign, run), idempotency key ``campaign-<id>-run-<run>``.
States:

- ``intent``   recorded just before the SES call;
- ``sent``     SES answered with a message id (recorded with ``mark_sent``);
- ``unknown``  the outcome cannot be known (a sender died after ``intent``, a
               read timeout, a 5xx): never resent blindly, a person resolves it;
- ``not_sent`` known not to have gone out (SES refused or throttled it, or a
               person resolved it so): the next attempt may claim the row again.

All functions take an open connection so callers put them in the same
transaction as the campaign's compare-and-set.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import Connection, insert, select, update

from workflow.models import EmailSend, utcnow

email_sends = EmailSend.__table__


class SendState(str, enum.Enum):
    INTENT = "intent"
    SENT = "sent"
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"


def run_key(campaign_id: int, run_id: int) -> str:
    return f"campaign-{campaign_id}-run-{run_id}"


def get(conn: Connection, campaign_id: int, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(email_sends).where(email_sends.c.campaign_id == campaign_id, email_sends.c.run_id == run_id)
    ).first()
    return dict(row._mapping) if row is not None else None


def claim(conn: Connection, campaign_id: int, run_id: int, recipient: str, *,
          task_id: str | None, worker_id: str | None) -> tuple[bool, dict[str, Any] | None]:
    """Record the intent to send. Returns (claimed, the row that was there before, if any).

    Claimed when no row existed (insert) or the row was ``not_sent`` (it goes
    back to ``intent``). A concurrent insert of the same run raises the
    database's IntegrityError: the caller treats it as "someone else is sending".
    """
    existing = get(conn, campaign_id, run_id)
    if existing is None:
        conn.execute(insert(email_sends).values(
            campaign_id=campaign_id, run_id=run_id, idempotency_key=run_key(campaign_id, run_id),
            state=SendState.INTENT.value, recipient=recipient, task_id=task_id, worker_id=worker_id,
            created_at=utcnow(),
        ))
        return True, None
    if existing["state"] == SendState.NOT_SENT.value:
        changed = conn.execute(
            update(email_sends)
            .where(email_sends.c.id == existing["id"], email_sends.c.state == SendState.NOT_SENT.value)
            .values(state=SendState.INTENT.value, recipient=recipient, task_id=task_id, worker_id=worker_id,
                    message_id=None, sent_at=None, created_at=utcnow())
        ).rowcount
        return changed == 1, existing
    return False, existing


def set_state(conn: Connection, campaign_id: int, run_id: int, state: SendState, *,
              only_from: tuple[SendState, ...] | None = None, message_id: str | None = None) -> bool:
    """Move the run's row to ``state`` (only from ``only_from`` states when given); True if a row changed."""
    query = update(email_sends).where(email_sends.c.campaign_id == campaign_id, email_sends.c.run_id == run_id)
    if only_from:
        query = query.where(email_sends.c.state.in_([s.value for s in only_from]))
    values: dict[str, Any] = {"state": state.value}
    if state is SendState.SENT:
        values["sent_at"] = utcnow()
        if message_id is not None:
            values["message_id"] = message_id
    return conn.execute(query.values(**values)).rowcount == 1


def record_resolution(conn: Connection, campaign_id: int, run_id: int, recipient: str, state: SendState) -> None:
    """A person's resolution of an unknown send: update the row, or create it if it is missing."""
    if get(conn, campaign_id, run_id) is None:
        conn.execute(insert(email_sends).values(
            campaign_id=campaign_id, run_id=run_id, idempotency_key=run_key(campaign_id, run_id),
            state=state.value, recipient=recipient, created_at=utcnow(),
            sent_at=utcnow() if state is SendState.SENT else None,
        ))
    else:
        set_state(conn, campaign_id, run_id, state)
