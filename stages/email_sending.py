"""Stage 7: send the approved email through SES, at most once per campaign run.

SES has no idempotency key (providers.md §6.4), so the run's email_sends row is
the key:

1. in one transaction, re-check the campaign (READY_TO_SEND, same version) and
   record ``intent`` for ``campaign-<id>-run-<run>``. If a row already exists:
   ``sent`` -> just apply mark_sent; ``intent``/``unknown`` -> a previous sender
   may have sent it: apply mark_send_unknown (SEND_OUTCOME_UNKNOWN) and do NOT
   call SES;
2. take an SES token (right before the call; if the limiter defers the task,
   the intent is reset to ``not_sent``: nothing was sent), then call SES
   once, with the run key as EmailTag;
3. in one transaction record the message id (``sent``) and apply mark_sent.

A failure where SES certainly did not accept the message (throttled, refused,
no connection) resets the row to ``not_sent`` and raises, so the engine retries
(or dead-letters a refusal: ERROR). A failure whose outcome is unknown (read
timeout, 5xx, dropped connection) marks the row and the campaign unknown; it is
never resent blindly (``campaignctl resolve ID --sent|--not-sent``).

Test hook: CE_TEST_CRASH_AFTER_SES_CALL=1 SIGKILLs the process right after SES
answered and before step 3, which is exactly the window the intent covers.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from engine.errors import Discard, Permanent
from engine.errors import RateLimited as EngineRateLimited
from engine.task import Task
from stages.clients.ses import SendOutcomeUnknown
from stages.common import Deps
from stages.errors import PermanentError, TransientError
from workflow import sends
from workflow.models import Campaign
from workflow.sends import SendState
from workflow.states import Stage, Status
from workflow.store import Expect, Snapshot

log = logging.getLogger("stages.email_sending")
campaigns = Campaign.__table__

#: Environment variable of the crash test hook.
CRASH_HOOK = "CE_TEST_CRASH_AFTER_SES_CALL"


def _crash_hook() -> None:
    if os.environ.get(CRASH_HOOK, "").lower() in ("1", "true", "yes"):
        log.warning("%s set: killing this process between the SES call and its record", CRASH_HOOK)
        os.kill(os.getpid(), signal.SIGKILL)


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    store = deps.store
    snap = store.get(task.campaign_id)
    if snap is None:
        raise Discard(f"campaign {task.campaign_id} does not exist")
    if snap.campaign_status is not Status.READY_TO_SEND:
        log.info("email_sending task %s: campaign %s is %s, nothing to do", task.task_id, snap.id, snap.state_name)
        return
    draft = store.stage_result(snap.id, snap.run_id, Stage.EMAIL_CREATION.value) or {}
    if not draft.get("subject") or not draft.get("body"):
        raise Permanent(f"ses: no email draft stored for run {snap.run_id}; retry the campaign from email_creation")
    worker_id = getattr(ctx, "worker_id", None)
    expect = Expect(status=Status.READY_TO_SEND, version=snap.version, run_id=snap.run_id)

    try:
        claimed, existing = _claim(deps, snap, task.task_id, worker_id)
    except IntegrityError:
        log.info("campaign %s run %s: another sender recorded its intent just now; leaving it to it",
                 snap.id, snap.run_id)
        return
    if claimed is None:
        return  # the campaign moved since we read it
    if not claimed:
        _settle_existing(task, deps, snap, existing or {}, expect, worker_id)
        return

    ses = deps.providers.ses  # built before the token is taken (the first build is slow)
    try:
        # The token is taken right before the call (a DB transaction in between would bunch calls up
        # and break the provider's rate); a deferral here certainly sent nothing, so the intent is reset.
        ctx.acquire("ses")
    except BaseException:
        _reset(deps, snap)
        raise
    try:
        message_id = ses.send(None, to=snap.email, subject=draft["subject"], body=draft["body"],
                                             run_key=sends.run_key(snap.id, snap.run_id))
    except SendOutcomeUnknown as exc:
        _mark_unknown(task, deps, snap, expect, worker_id, str(exc))
        return
    except EngineRateLimited as exc:
        _reset(deps, snap)
        ctx.pause("ses", exc.retry_after)
        raise
    except (PermanentError, TransientError):
        _reset(deps, snap)  # SES refused or was never reached: nothing went out
        raise
    except Exception as exc:  # noqa: BLE001 - anything unforeseen may have happened after the send
        _mark_unknown(task, deps, snap, expect, worker_id, f"unexpected {type(exc).__name__} during the SES call")
        return
    _crash_hook()
    _record_sent(task, deps, snap, expect, worker_id, message_id)


def _claim(deps: Deps, snap: Snapshot, task_id: str, worker_id: str | None) -> tuple[bool | None, dict | None]:
    """(claimed, existing row); claimed None when the campaign is no longer READY_TO_SEND at this version."""
    with deps.store.engine.begin() as conn:
        query = select(campaigns.c.version, campaigns.c.campaign_status).where(campaigns.c.id == snap.id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None or row.version != snap.version or row.campaign_status != Status.READY_TO_SEND.value:
            log.info("campaign %s moved before its send intent was recorded; nothing to do", snap.id)
            return None, None
        return sends.claim(conn, snap.id, snap.run_id, snap.email, task_id=task_id, worker_id=worker_id)


def _settle_existing(task: Task, deps: Deps, snap: Snapshot, existing: dict, expect: Expect,
                     worker_id: str | None) -> None:
    state = existing.get("state")
    if state == SendState.SENT.value:
        outcome = deps.store.apply(snap.id, "mark_sent", expect=expect, task_id=task.task_id, worker_id=worker_id,
                                   detail=f"already sent, message id {existing.get('message_id')}")
        log.info("campaign %s run %s was already sent: %s", snap.id, snap.run_id, outcome.message)
        return
    _mark_unknown(task, deps, snap, expect, worker_id,
                  f"a previous send attempt ({state}, task {existing.get('task_id')}) never recorded its outcome")


def _mark_unknown(task: Task, deps: Deps, snap: Snapshot, expect: Expect, worker_id: str | None, why: str) -> None:
    def within(conn: Any, before: Snapshot, after: Snapshot) -> None:
        sends.set_state(conn, snap.id, snap.run_id, SendState.UNKNOWN, only_from=(SendState.INTENT, SendState.UNKNOWN))

    outcome = deps.store.apply(snap.id, "mark_send_unknown", expect=expect, task_id=task.task_id,
                               worker_id=worker_id, detail=f"send outcome unknown: {why}", within=within)
    if not outcome.applied:
        with deps.store.engine.begin() as conn:
            sends.set_state(conn, snap.id, snap.run_id, SendState.UNKNOWN, only_from=(SendState.INTENT,))
    log.warning("campaign %s run %s: send outcome unknown (%s); not resending", snap.id, snap.run_id, why)


def _reset(deps: Deps, snap: Snapshot) -> None:
    with deps.store.engine.begin() as conn:
        sends.set_state(conn, snap.id, snap.run_id, SendState.NOT_SENT, only_from=(SendState.INTENT,))


def _record_sent(task: Task, deps: Deps, snap: Snapshot, expect: Expect, worker_id: str | None,
                 message_id: str) -> None:
    def within(conn: Any, before: Snapshot, after: Snapshot) -> None:
        sends.set_state(conn, snap.id, snap.run_id, SendState.SENT, message_id=message_id)

    outcome = deps.store.apply(snap.id, "mark_sent", expect=expect, task_id=task.task_id, worker_id=worker_id,
                               detail=f"SES message id {message_id}", within=within)
    if not outcome.applied:
        # The campaign moved while we sent (e.g. unsubscribed): the email went out all the same; keep that fact.
        with deps.store.engine.begin() as conn:
            sends.set_state(conn, snap.id, snap.run_id, SendState.SENT, message_id=message_id)
        log.warning("campaign %s: email sent (message id %s) but the campaign moved: %s",
                    snap.id, message_id, outcome.message)
