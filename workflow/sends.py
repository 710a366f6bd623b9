"""The email_sends records: at most one email per campaign run.

One row per (campaign, run), idempotency key ``campaign-<id>-run-<run>``.
States:

- ``intent``   a sender holds the run: recorded before the SES call, with its
               owner (task id + attempt token) and a lease (``lease_until``);
               ``call_started_at`` is set right before the SES call;
- ``sent``     SES answered with a message id (recorded with ``mark_sent``);
- ``unknown``  the outcome cannot be known (a sender died or timed out between
               the SES call and its record, a read timeout, a 5xx): never
               resent blindly, a person resolves it;
- ``not_sent`` known not to have gone out (SES refused or throttled it, or a
               person resolved it so): the next attempt may claim the row again.

Why an owner and a lease: two senders of one run can run at once (a
redelivered task, reconcile after a Redis flush, polling and queue workers side
by side). The second must neither mark the first's live intent unknown nor
reset it, and a first sender that was too slow must not touch the second's
row. So ``claim`` decides what a sender finds, and every later change of an
intent is a compare-and-set on its owner.

All functions take an open connection so callers put them in the same
transaction as the campaign's compare-and-set.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import attrs
from sqlalchemy import Connection, insert, select, update

from workflow.models import EmailSend, utcnow

email_sends = EmailSend.__table__


class SendState(str, enum.Enum):
    INTENT = "intent"
    SENT = "sent"
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"


@attrs.frozen
class Owner:
    """Who holds an intent: one task under one lease (the attempt token changes with every lease)."""

    task_id: str
    attempt: str
    worker_id: str | None = None


class Verdict(str, enum.Enum):
    #: The intent is ours: call SES.
    CLAIMED = "claimed"
    #: The run was sent already: apply mark_sent.
    SENT = "sent"
    #: Another sender holds a live intent: defer until its lease ends.
    BUSY = "busy"
    #: A sender may have called SES and never recorded the outcome: SEND_OUTCOME_UNKNOWN.
    UNKNOWN = "unknown"


@attrs.frozen
class Claim:
    verdict: Verdict
    #: The row as it was found (None when there was none).
    found: dict[str, Any] | None = None
    #: BUSY: seconds until the other sender's lease ends.
    wait: float = 0.0


def run_key(campaign_id: int, run_id: int) -> str:
    return f"campaign-{campaign_id}-run-{run_id}"


def get(conn: Connection, campaign_id: int, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(email_sends).where(email_sends.c.campaign_id == campaign_id, email_sends.c.run_id == run_id)
    ).first()
    return dict(row._mapping) if row is not None else None


def claim(conn: Connection, campaign_id: int, run_id: int, recipient: str, owner: Owner, *,
          lease: float, now: dt.datetime | None = None) -> Claim:
    """Record ``owner``'s intent to send, or say what the row already there means.

    Claimed when there was no row (insert), the row was ``not_sent``, or an
    intent whose lease lapsed before its SES call started (nothing went out:
    taken over). A live intent of another owner is BUSY; a lapsed one whose
    call started, an intent from before owners existed, or ``unknown`` is
    UNKNOWN. A concurrent insert of the same run raises the database's
    IntegrityError: the caller treats it as BUSY.
    """
    now = now or utcnow()
    found = get(conn, campaign_id, run_id)
    if found is None:
        conn.execute(insert(email_sends).values(
            campaign_id=campaign_id, run_id=run_id, idempotency_key=run_key(campaign_id, run_id),
            state=SendState.INTENT.value, recipient=recipient, created_at=now, **_held_by(owner, lease, now),
        ))
        return Claim(Verdict.CLAIMED)
    state = found["state"]
    if state == SendState.SENT.value:
        return Claim(Verdict.SENT, found)
    if state == SendState.NOT_SENT.value:
        return _take(conn, found, owner, recipient, lease, now, only_if=email_sends.c.state == SendState.NOT_SENT.value)
    if state == SendState.INTENT.value and found["lease_until"] is not None:
        if found["lease_until"] > now:
            return Claim(Verdict.BUSY, found, wait=(found["lease_until"] - now).total_seconds())
        if found["call_started_at"] is None:
            return _take(conn, found, owner, recipient, lease, now, only_if=_owned_by_row(found))
    return Claim(Verdict.UNKNOWN, found)


def _take(conn: Connection, found: dict[str, Any], owner: Owner, recipient: str, lease: float,
          now: dt.datetime, *, only_if: Any) -> Claim:
    """Make ``found`` our intent, if it is still as we read it; BUSY if another sender was quicker."""
    changed = conn.execute(
        update(email_sends)
        .where(email_sends.c.id == found["id"], only_if)
        .values(state=SendState.INTENT.value, recipient=recipient, message_id=None, sent_at=None, created_at=now,
                **_held_by(owner, lease, now))
    ).rowcount
    return Claim(Verdict.CLAIMED, found) if changed == 1 else Claim(Verdict.BUSY, found, wait=0.0)


def _held_by(owner: Owner, lease: float, now: dt.datetime) -> dict[str, Any]:
    return {"task_id": owner.task_id, "attempt": owner.attempt, "worker_id": owner.worker_id,
            "lease_until": now + dt.timedelta(seconds=lease), "call_started_at": None}


def _owned_by_row(found: dict[str, Any]) -> Any:
    """The row is still the intent of the owner that ``found`` shows, and its call has not started."""
    return ((email_sends.c.state == SendState.INTENT.value)
            & (email_sends.c.task_id == found["task_id"]) & (email_sends.c.attempt == found["attempt"])
            & email_sends.c.call_started_at.is_(None))


def _mine(campaign_id: int, run_id: int, owner: Owner) -> Any:
    return ((email_sends.c.campaign_id == campaign_id) & (email_sends.c.run_id == run_id)
            & (email_sends.c.task_id == owner.task_id) & (email_sends.c.attempt == owner.attempt))


def start_call(conn: Connection, campaign_id: int, run_id: int, owner: Owner, *, lease: float,
               now: dt.datetime | None = None) -> bool:
    """Right before the SES call: renew our lease and mark the call started. False: the intent is not ours.

    After this nobody can take the intent over (the email may be out), so
    False means someone took over (our lease had lapsed): we must not call SES.
    """
    now = now or utcnow()
    return conn.execute(
        update(email_sends)
        .where(_mine(campaign_id, run_id, owner), email_sends.c.state == SendState.INTENT.value)
        .values(lease_until=now + dt.timedelta(seconds=lease), call_started_at=now)
    ).rowcount == 1


def release(conn: Connection, campaign_id: int, run_id: int, owner: Owner) -> bool:
    """Our intent back to ``not_sent`` (SES certainly did not accept it); False when it is not ours any more."""
    return conn.execute(
        update(email_sends)
        .where(_mine(campaign_id, run_id, owner), email_sends.c.state == SendState.INTENT.value)
        .values(state=SendState.NOT_SENT.value, lease_until=None, call_started_at=None)
    ).rowcount == 1


def record_sent(conn: Connection, campaign_id: int, run_id: int, owner: Owner, message_id: str) -> bool:
    """SES accepted our call: ``sent`` with its message id.

    Also from ``unknown``: another sender may have judged our lapsed intent
    unknown while we were recording; the message id is the better truth.
    """
    return conn.execute(
        update(email_sends)
        .where(_mine(campaign_id, run_id, owner),
               email_sends.c.state.in_([SendState.INTENT.value, SendState.UNKNOWN.value]))
        .values(state=SendState.SENT.value, message_id=message_id, sent_at=utcnow())
    ).rowcount == 1


def mark_unknown(conn: Connection, campaign_id: int, run_id: int, owner: Owner | None) -> bool:
    """The intent of ``owner`` (None: an intent from before owners existed) becomes ``unknown``."""
    query = update(email_sends).where(email_sends.c.campaign_id == campaign_id, email_sends.c.run_id == run_id,
                                      email_sends.c.state == SendState.INTENT.value)
    if owner is None:
        query = query.where(email_sends.c.task_id.is_(None) | email_sends.c.lease_until.is_(None))
    else:
        query = query.where(email_sends.c.task_id == owner.task_id, email_sends.c.attempt == owner.attempt)
    return conn.execute(query.values(state=SendState.UNKNOWN.value)).rowcount == 1


def owner_of(found: dict[str, Any]) -> Owner | None:
    """The owner a row shows (None for an intent recorded before owners existed)."""
    if found.get("task_id") is None or found.get("attempt") is None:
        return None
    return Owner(found["task_id"], found["attempt"], found.get("worker_id"))


def set_state(conn: Connection, campaign_id: int, run_id: int, state: SendState, *,
              only_from: tuple[SendState, ...] | None = None, message_id: str | None = None) -> bool:
    """Move the run's row to ``state`` whoever holds it (a person's resolution); True if a row changed."""
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
