"""Stage 7: send the approved email through SES, at most once per campaign run.

SES has no idempotency key (providers.md §6.4), so the run's email_sends row is
the key, and it has an owner: this task under this lease (task id + attempt
token), holding the intent for SEND_INTENT_LEASE seconds.

1. take an SES token first (a long wait defers the task before anything is
   recorded);
2. in one transaction, re-check the campaign (READY_TO_SEND, same version) and
   record our ``intent`` for ``campaign-<id>-run-<run>`` (``workflow.sends.claim``).
   What a row already there means: ``sent`` -> apply mark_sent; another
   sender's live intent -> defer until its lease ends (no attempt spent); an
   intent whose lease lapsed before its SES call started -> nothing went out,
   take it over; a lapsed intent whose call started, or ``unknown`` -> a sender
   died or timed out between the call and its record: SEND_OUTCOME_UNKNOWN,
   do NOT call SES;
3. right before the call: renew the task's lease (lost -> release the intent,
   do not send) and, as a compare-and-set on the owner, renew the intent's
   lease and set ``call_started_at`` (no row -> someone took over: do not send);
   then call SES once, with the run key as EmailTag;
4. record the message id (``sent``) and apply mark_sent in one transaction,
   retried in-process through a database outage while the intent's lease
   holds, so a blip right after SES accepted does not make a known send unknown.

A failure where SES certainly did not accept the message (throttled, refused,
no connection) releases the intent (``not_sent``, only if it is still ours) and
raises, so the engine retries (or dead-letters a refusal: ERROR). A failure
whose outcome is unknown (read timeout, 5xx, dropped connection) marks the row
and the campaign unknown; it is never resent blindly (``campaignctl resolve
ID --sent|--not-sent``).

Test hook: CE_TEST_CRASH_AFTER_SES_CALL=1 SIGKILLs the process right after SES
answered and before step 4, which is exactly the window the intent covers.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from campaignctl.wiring import database_outage
from engine.errors import Discard, Permanent
from engine.errors import RateLimited as EngineRateLimited
from engine.task import Task
from stages.clients.ses import SendOutcomeUnknown
from stages.common import Deps, is_stale
from stages.errors import PermanentError, TransientError
from workflow import sends
from workflow.models import Campaign
from workflow.sends import Claim, Owner, Verdict
from workflow.states import Stage, Status
from workflow.store import Expect, Snapshot

log = logging.getLogger("stages.email_sending")
campaigns = Campaign.__table__

#: Environment variable of the crash test hook.
CRASH_HOOK = "CE_TEST_CRASH_AFTER_SES_CALL"
#: Shortest deferral when another sender holds the run, in s (its lease may end in a moment).
BUSY_DEFER_MIN = 1.0
#: First pause before recording a sent email again after a database outage, in s (doubles each time).
RECORD_RETRY_FIRST = 0.2
#: Longest pause between two tries of that record, in s.
RECORD_RETRY_CAP = 5.0


def _crash_hook() -> None:
    if os.environ.get(CRASH_HOOK, "").lower() in ("1", "true", "yes"):
        log.warning("%s set: killing this process between the SES call and its record", CRASH_HOOK)
        os.kill(os.getpid(), signal.SIGKILL)


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    """Send the run's email once, or say (defer, unknown, nothing to do) why this task must not send it."""
    snap = deps.store.get(task.campaign_id)
    if snap is None:
        raise Discard(f"campaign {task.campaign_id} does not exist")
    if is_stale(task, snap):
        return
    if snap.campaign_status is not Status.READY_TO_SEND:
        log.info("email_sending task %s: campaign %s is %s, nothing to do", task.task_id, snap.id, snap.state_name)
        return
    draft = deps.store.stage_result(snap.id, snap.run_id, Stage.EMAIL_CREATION.value) or {}
    if not draft.get("subject") or not draft.get("body"):
        raise Permanent(f"ses: no email draft stored for run {snap.run_id}; retry the campaign from email_creation")
    owner = Owner(task.task_id, getattr(ctx, "attempt", None) or uuid.uuid4().hex, getattr(ctx, "worker_id", None))
    expect = Expect(status=Status.READY_TO_SEND, version=snap.version, run_id=snap.run_id)
    ses = deps.providers.ses  # built before the token is taken (the first build is slow)
    ctx.acquire("ses")  # token first: a deferral here has recorded nothing
    claim = _claim(deps, snap, owner)
    if claim is None:
        return  # the campaign moved since we read it
    if claim.verdict is Verdict.CLAIMED:
        _send(task, ctx, deps, snap, owner, expect, draft, ses)
    elif claim.verdict is Verdict.SENT:
        _settle_sent(task, deps, snap, expect, owner, claim)
    elif claim.verdict is Verdict.BUSY:
        raise _busy(snap, claim)
    else:
        found = claim.found or {}
        _mark_unknown(task, deps, snap, expect, owner, sends.owner_of(found),
                      f"a previous send attempt ({found.get('state')}, task {found.get('task_id')}) "
                      "never recorded its outcome")


def _claim(deps: Deps, snap: Snapshot, owner: Owner) -> Claim | None:
    """Record our intent in one transaction with a re-check of the campaign; None when it moved.

    A concurrent insert of the same run (IntegrityError) means another sender
    recorded its intent a moment ago: BUSY.
    """
    try:
        with deps.store.engine.begin() as conn:
            query = select(campaigns.c.version, campaigns.c.campaign_status).where(campaigns.c.id == snap.id)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None or row.version != snap.version or row.campaign_status != Status.READY_TO_SEND.value:
                log.info("campaign %s moved before its send intent was recorded; nothing to do", snap.id)
                return None
            return sends.claim(conn, snap.id, snap.run_id, snap.email, owner, lease=deps.settings.send_intent_lease)
    except IntegrityError:
        return Claim(Verdict.BUSY)


def _busy(snap: Snapshot, claim: Claim) -> EngineRateLimited:
    """Another sender holds the run: wait for its lease to end, without spending an attempt."""
    holder = (claim.found or {}).get("task_id")
    wait = max(BUSY_DEFER_MIN, claim.wait)
    log.info("campaign %s run %s: task %s is sending it; deferring %.1fs", snap.id, snap.run_id, holder, wait)
    return EngineRateLimited(f"ses: campaign {snap.id} run {snap.run_id} is being sent by task {holder}",
                             retry_after=wait, api=None)


def _send(task: Task, ctx: Any, deps: Deps, snap: Snapshot, owner: Owner, expect: Expect,
          draft: dict[str, Any], ses: Any) -> None:
    leased_until = time.monotonic() + deps.settings.send_intent_lease  # the intent's lease ends after this
    if not _confirm(ctx, deps, snap, owner):
        return
    try:
        message_id = ses.send(None, to=snap.email, subject=draft["subject"], body=draft["body"],
                              run_key=sends.run_key(snap.id, snap.run_id))
    except SendOutcomeUnknown as exc:
        _mark_unknown(task, deps, snap, expect, owner, owner, str(exc))
        return
    except EngineRateLimited as exc:
        _reset(deps, snap, owner)
        ctx.pause("ses", exc.retry_after)
        raise
    except (PermanentError, TransientError):
        _reset(deps, snap, owner)  # SES refused or was never reached: nothing went out
        raise
    except Exception as exc:  # noqa: BLE001 - anything unforeseen may have happened after the send
        _mark_unknown(task, deps, snap, expect, owner, owner, f"unexpected {type(exc).__name__} during the SES call")
        return
    _crash_hook()
    _record_sent(task, ctx, deps, snap, expect, owner, message_id, leased_until)


def _confirm(ctx: Any, deps: Deps, snap: Snapshot, owner: Owner) -> bool:
    """Right before the SES call: our task's lease and our intent must both still hold.

    A lost task lease means another worker has (or will have) the task: we
    release our intent (only if still ours) and send nothing. ``start_call``
    renews the intent's lease and marks the call started in one
    compare-and-set on the owner; no row means our intent lapsed and another
    sender took it over.
    """
    try:
        alive = ctx.heartbeat()
    except BaseException:
        _reset(deps, snap, owner)
        raise
    if not alive:
        log.warning("campaign %s run %s: task %s lost its lease before the SES call; not sending",
                    snap.id, snap.run_id, owner.task_id)
        _reset(deps, snap, owner)
        return False
    with deps.store.engine.begin() as conn:
        started = sends.start_call(conn, snap.id, snap.run_id, owner, lease=deps.settings.send_intent_lease)
    if not started:
        log.warning("campaign %s run %s: the send intent of task %s was taken over; not sending",
                    snap.id, snap.run_id, owner.task_id)
    return started


def _settle_sent(task: Task, deps: Deps, snap: Snapshot, expect: Expect, owner: Owner, claim: Claim) -> None:
    found = claim.found or {}
    outcome = deps.store.apply(snap.id, "mark_sent", expect=expect, task_id=task.task_id, worker_id=owner.worker_id,
                               detail=f"already sent, message id {found.get('message_id')}")
    log.info("campaign %s run %s was already sent: %s", snap.id, snap.run_id, outcome.message)


def _mark_unknown(task: Task, deps: Deps, snap: Snapshot, expect: Expect, me: Owner, whose: Owner | None,
                  why: str) -> None:
    """The campaign to SEND_OUTCOME_UNKNOWN, and the intent of ``whose`` (only) to ``unknown``.

    ``whose`` is our own intent after an SES call of unknown outcome, or the
    lapsed intent of a sender that died after its call (None: an intent from
    before owners existed).
    """

    def within(conn: Any, before: Snapshot, after: Snapshot) -> None:
        sends.mark_unknown(conn, snap.id, snap.run_id, whose)

    outcome = deps.store.apply(snap.id, "mark_send_unknown", expect=expect, task_id=task.task_id,
                               worker_id=me.worker_id, detail=f"send outcome unknown: {why}", within=within)
    if not outcome.applied:
        with deps.store.engine.begin() as conn:
            sends.mark_unknown(conn, snap.id, snap.run_id, whose)
    log.warning("campaign %s run %s: send outcome unknown (%s); not resending", snap.id, snap.run_id, why)


def _reset(deps: Deps, snap: Snapshot, owner: Owner) -> None:
    """Nothing went out: our intent back to ``not_sent`` — never another sender's."""
    with deps.store.engine.begin() as conn:
        if not sends.release(conn, snap.id, snap.run_id, owner):
            log.info("campaign %s run %s: the send intent is no longer task %s's; left as it is",
                     snap.id, snap.run_id, owner.task_id)


def _record_sent(task: Task, ctx: Any, deps: Deps, snap: Snapshot, expect: Expect, owner: Owner,
                 message_id: str, deadline: float) -> None:
    """Record what SES accepted, retrying through a database outage until our intent's lease ends.

    Until then nobody else judges the send (a second sender defers), so a
    record that lands within it keeps the send known; the task's lease is
    renewed between tries so it is not handed to another worker meanwhile.
    ``deadline`` is on the monotonic clock.
    """
    pause = RECORD_RETRY_FIRST
    while True:
        try:
            _record_sent_once(task, deps, snap, expect, owner, message_id)
            return
        except Exception as exc:
            if not database_outage(exc) or time.monotonic() + pause >= deadline:
                raise
            log.warning("campaign %s run %s: SES accepted message %s but the database is unreachable (%s); "
                        "trying again in %.1fs", snap.id, snap.run_id, message_id, type(exc).__name__, pause)
        time.sleep(pause)
        _renew(ctx)
        pause = min(pause * 2, RECORD_RETRY_CAP)


def _renew(ctx: Any) -> None:
    try:
        ctx.heartbeat()
    except Exception as exc:  # noqa: BLE001 - the record matters more than the renewal
        log.info("renewing the task lease failed while recording a send: %s", exc)


def _record_sent_once(task: Task, deps: Deps, snap: Snapshot, expect: Expect, owner: Owner,
                      message_id: str) -> None:
    def within(conn: Any, before: Snapshot, after: Snapshot) -> None:
        sends.record_sent(conn, snap.id, snap.run_id, owner, message_id)

    outcome = deps.store.apply(snap.id, "mark_sent", expect=expect, task_id=task.task_id, worker_id=owner.worker_id,
                               detail=f"SES message id {message_id}", within=within)
    if outcome.applied:
        return
    # The campaign moved while we sent (unsubscribed; or judged unknown once our lease lapsed): the email
    # went out all the same; keep that fact, and settle an unknown send of this run with it.
    with deps.store.engine.begin() as conn:
        sends.record_sent(conn, snap.id, snap.run_id, owner, message_id)
    resolved = deps.store.apply(snap.id, "resolve_sent",
                                expect=Expect(status=Status.SEND_OUTCOME_UNKNOWN, run_id=snap.run_id),
                                task_id=task.task_id, worker_id=owner.worker_id,
                                detail=f"SES message id {message_id} recorded late")
    log.warning("campaign %s: email sent (message id %s) but the campaign moved: %s%s", snap.id, message_id,
                outcome.message, "; resolved as sent" if resolved.applied else "")
