"""What an operator asks of the system and does to it: plain functions shared by the CLI and the dashboard.

Every function takes an ``AppContext`` (settings, database, Redis, built
lazily) and returns data — attrs classes with ``to_dict()`` for JSON, or
dicts — never prints. ``campaignctl`` formats them for a terminal, the
dashboard for a page; both get the same answer and the same refusals.

Actions (approve, retry, unsubscribe, resolve, dead-letter requeue) return an
``ActionResult`` whose ``code`` is the CLI's exit code: 0 done, 1 refused (an
illegal transition, Redis unreachable after the database moved), 2 unknown
id. The database is the truth: an action is one compare-and-set, and only
then is the follow-up task queued; recovery queues it if Redis was down.

Times are timezone-aware UTC datetimes (the database stores naive UTC).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from workflow.states import EMAIL_SENDING, PIPELINE, TASK_TYPES, Stage, Status, expected_position, task_type_for

if TYPE_CHECKING:
    from campaignctl.context import AppContext

__all__ = [
    "ActionResult", "BulkResult", "CampaignDetail", "CampaignRow", "Draft", "StatusSummary",
    "approve", "approve_all", "campaign_detail", "clear_rate", "dead_letter", "dead_letters", "draft",
    "format_rate", "limits", "list_campaigns", "pause_queue", "queue_stats", "requeue_dead_letter",
    "resolve", "resume_queue", "retry", "retry_all", "review_queue", "set_rate", "status_summary",
    "unsubscribe", "utc",
]

#: Drafts returned by one ``review_queue`` call unless told otherwise.
REVIEW_BATCH = 10
#: Characters of the home analysis a draft carries as its summary.
ANALYSIS_SUMMARY_CHARS = 400
#: Rows ``list_campaigns`` returns unless told otherwise.
LIST_LIMIT = 100
#: Distinct error reasons ``status_summary`` lists (most frequent first).
TOP_REASONS = 10
#: Campaign ids listed per reason / for SEND_OUTCOME_UNKNOWN.
LIST_IDS = 10
#: Longest error text per reason, in characters.
REASON_WIDTH = 120
#: Most recent stage visits the time-in-stage percentiles are computed from.
TIME_IN_STAGE_SAMPLE = 20000
#: Window of the processed / failed counts per queue, in s.
THROUGHPUT_WINDOW = 3600.0
#: Most recent history rows the processed / failed counts look at (bounds the query on a large history).
THROUGHPUT_SAMPLE = 50000
#: Exit codes, as the CLI documents them.
OK, REFUSED, NOT_FOUND = 0, 1, 2
#: The trigger that ends each task type's work successfully (counted as "processed").
_DONE_TRIGGERS = {EMAIL_SENDING: ("mark_sent",)}


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """A stored naive-UTC time as an aware datetime (so output carries its offset)."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    aware = utc(value)
    return aware.isoformat() if aware is not None else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


# -- results -------------------------------------------------------------------------------------


@attrs.frozen
class ActionResult:
    """What one action did. ``applied`` = the database changed; ``code`` = the CLI's exit code."""

    action: str
    campaign_id: int | None
    applied: bool
    code: int
    message: str
    status: str | None = None
    stage: str | None = None
    #: One line per follow-up task ("queued email_sending task …", "already queued").
    queued: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == OK

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"queued": list(self.queued), "ok": self.ok}


@attrs.frozen
class BulkResult:
    """What an action on many campaigns did (``approve --all``, ``retry --all``)."""

    action: str
    done: tuple[int, ...]
    #: Campaigns that moved meanwhile (someone else acted first): left alone.
    skipped: tuple[int, ...]
    queued: int
    already_queued: int
    #: Set when Redis failed after the database moved (exit 1; recovery queues the tasks).
    error: str | None = None

    @property
    def code(self) -> int:
        return REFUSED if self.error else OK

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "done": list(self.done), "skipped": list(self.skipped),
                "queued": self.queued, "already_queued": self.already_queued, "error": self.error,
                "code": self.code}


@attrs.frozen
class Draft:
    """An email waiting for review: to whom, what it says, and what the checks found."""

    campaign_id: int
    run_id: int
    version: int
    owner_name: str
    to: str
    address: str
    status: str
    #: When the campaign reached its current state (oldest first in the review queue).
    waiting_since: dt.datetime | None
    subject: str | None
    body: str | None
    #: One line: "valid (accepted_email)" / "not checked".
    verification: str
    verification_passed: bool | None
    #: The first ANALYSIS_SUMMARY_CHARS characters of the home analysis.
    analysis: str | None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"waiting_since": _iso(self.waiting_since)}


@attrs.frozen
class CampaignRow:
    id: int
    status: str
    stage: str
    owner_name: str
    email: str
    updated_at: dt.datetime | None
    #: Seconds since the campaign last moved.
    age: float | None
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"updated_at": _iso(self.updated_at)}


@attrs.frozen
class CampaignDetail:
    """One campaign: its state, history, this run's stage results, draft and send record."""

    campaign: dict[str, Any]
    history: list[dict[str, Any]]
    stage_results: dict[str, Any]
    draft: Draft | None
    send: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.campaign, "history": self.history, "stage_results": self.stage_results,
                "draft": self.draft.to_dict() if self.draft else None, "send": self.send}


@attrs.frozen
class StatusSummary:
    """The fleet's campaigns: counts, error reasons, unknown sends, time spent per stage."""

    campaigns: dict[str, int]
    stages: dict[str, int]
    #: [{"reason", "count", "ids"}], most frequent first.
    error_reasons: list[dict[str, Any]]
    unknown_ids: list[int]
    #: stage -> {"n", "p50", "p95"} in seconds, from the history (None when no visit was seen).
    time_in_stage: dict[str, dict[str, float | int | None]]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# -- reading campaigns -----------------------------------------------------------------------------


def _tables():  # type: ignore[no-untyped-def]
    from workflow.models import Campaign, CampaignEvent, EmailSend, StageResult

    return Campaign.__table__, CampaignEvent.__table__, StageResult.__table__, EmailSend.__table__


def _results(conn: Any, pairs: Sequence[tuple[int, int]], stages: Iterable[str]) -> dict[tuple[int, str], Any]:
    """Stage results keyed by (campaign, stage) for these (campaign, run) pairs."""
    from sqlalchemy import and_, or_, select

    _, _, results, _ = _tables()
    if not pairs:
        return {}
    wanted = or_(*[and_(results.c.campaign_id == cid, results.c.run_id == run) for cid, run in pairs])
    rows = conn.execute(
        select(results.c.campaign_id, results.c.stage, results.c.data)
        .where(wanted, results.c.stage.in_(list(stages)))
    ).all()
    out = {}
    for cid, stage, data in rows:
        try:
            out[(cid, stage)] = json.loads(data)
        except ValueError:
            out[(cid, stage)] = {"unreadable": data}
    return out


def _verification(verdict: Any) -> tuple[str, bool | None]:
    if not isinstance(verdict, dict):
        return "not checked", None
    result = verdict.get("result") or "unknown"
    reason = verdict.get("reason")
    flags = [name for name in ("disposable", "role", "accept_all") if verdict.get(name)]
    text = f"{result}" + (f" ({', '.join([reason, *flags] if reason else flags)})" if reason or flags else "")
    passed = verdict.get("passed")
    return text, passed if isinstance(passed, bool) else None


def _draft(row: Any, email: Any, analysis: Any) -> Draft:
    m = row._mapping
    email = email if isinstance(email, dict) else {}
    verification, passed = _verification(email.get("verdict"))
    text = analysis.get("analysis") if isinstance(analysis, dict) else None
    if isinstance(text, str) and len(text) > ANALYSIS_SUMMARY_CHARS:
        text = text[: ANALYSIS_SUMMARY_CHARS - 1].rstrip() + "…"
    return Draft(
        campaign_id=m["id"], run_id=m["run_id"], version=m["version"], owner_name=m["owner_name"],
        to=email.get("to") or m["email"],
        address=f"{m['street']}, {m['city']}, {m['state']} {m['zip_code']}",
        status=m["campaign_status"], waiting_since=utc(m["updated_at"]),
        subject=email.get("subject"), body=email.get("body"),
        verification=verification, verification_passed=passed, analysis=text,
    )


def _drafts(conn: Any, rows: Sequence[Any]) -> list[Draft]:
    found = _results(conn, [(r.id, r.run_id) for r in rows], (Stage.EMAIL_CREATION.value, Stage.HOME_ANALYSIS.value))
    return [_draft(r, found.get((r.id, Stage.EMAIL_CREATION.value)), found.get((r.id, Stage.HOME_ANALYSIS.value)))
            for r in rows]


def review_queue(ctx: AppContext, limit: int = REVIEW_BATCH, *, after: Sequence[int] = ()) -> list[Draft]:
    """Campaigns waiting for review (READY_FOR_REVIEW), oldest first, each with its draft.

    ``after`` lists ids to leave out (the ones a reviewer skipped this session).
    """
    from sqlalchemy import select

    campaigns, _, _, _ = _tables()
    query = (select(campaigns).where(campaigns.c.campaign_status == Status.READY_FOR_REVIEW.value)
             .order_by(campaigns.c.updated_at, campaigns.c.id).limit(limit))
    if after:
        query = query.where(campaigns.c.id.not_in(list(after)))
    with ctx.db.connect() as conn:
        rows = conn.execute(query).all()
        return _drafts(conn, rows)


def review_count(ctx: AppContext) -> int:
    """How many campaigns wait for review."""
    from sqlalchemy import func, select

    campaigns, _, _, _ = _tables()
    with ctx.db.connect() as conn:
        return int(conn.execute(select(func.count()).where(
            campaigns.c.campaign_status == Status.READY_FOR_REVIEW.value)).scalar() or 0)


def draft(ctx: AppContext, campaign_id: int) -> Draft | None:
    """The draft of the campaign's current run (None: no such campaign)."""
    from sqlalchemy import select

    campaigns, _, _, _ = _tables()
    with ctx.db.connect() as conn:
        row = conn.execute(select(campaigns).where(campaigns.c.id == campaign_id)).first()
        return _drafts(conn, [row])[0] if row is not None else None


def _history_entry(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": row["version"], "run_id": row["run_id"],
        "from_status": row["from_status"], "to_status": row["to_status"],
        "from_stage": row["from_stage"], "to_stage": row["to_stage"],
        "trigger": row["trigger"], "at": _iso(row["at"]),
        "task_id": row["task_id"], "worker_id": row["worker_id"], "detail": row["detail"],
    }


def campaign_detail(ctx: AppContext, campaign_id: int) -> CampaignDetail | None:
    """Everything about one campaign (None: no such campaign). ``to_dict()`` is ``show --json``."""
    from sqlalchemy import select

    campaigns, events, results, sends = _tables()
    with ctx.db.connect() as conn:
        row = conn.execute(select(campaigns).where(campaigns.c.id == campaign_id)).first()
        if row is None:
            return None
        m = row._mapping
        history = [_history_entry(dict(r._mapping)) for r in conn.execute(
            select(events).where(events.c.campaign_id == campaign_id).order_by(events.c.version))]
        stage_rows = conn.execute(select(results.c.stage, results.c.data, results.c.updated_at).where(
            results.c.campaign_id == campaign_id, results.c.run_id == m["run_id"])).all()
        send = conn.execute(select(sends).where(sends.c.campaign_id == campaign_id,
                                                sends.c.run_id == m["run_id"])).first()
        the_draft = _drafts(conn, [row])[0]
    order = [s.value for s in PIPELINE]
    stage_results: dict[str, Any] = {}
    for stage, data, _updated in sorted(stage_rows, key=lambda r: order.index(r[0]) if r[0] in order else 99):
        try:
            stage_results[stage] = json.loads(data)
        except ValueError:
            stage_results[stage] = {"unreadable": data}
    campaign = {
        "id": m["id"], "campaign_status": m["campaign_status"], "processing_stage": m["processing_stage"],
        "run_id": m["run_id"], "version": m["version"], "last_error": m["last_error"],
        "owner_name": m["owner_name"], "email": m["email"],
        "address": f"{m['street']}, {m['city']}, {m['state']} {m['zip_code']}",
        "next_run_at": _iso(m["next_run_at"]), "updated_at": _iso(m["updated_at"]),
        "created_at": _iso(m["created_at"]),
    }
    send_dict = None
    if send is not None:
        s = send._mapping
        send_dict = {"state": s["state"], "message_id": s["message_id"], "recipient": s["recipient"],
                     "idempotency_key": s["idempotency_key"], "sent_at": _iso(s["sent_at"]),
                     "created_at": _iso(s["created_at"])}
    has_draft = Stage.EMAIL_CREATION.value in stage_results
    return CampaignDetail(campaign, history, stage_results, the_draft if has_draft else None, send_dict)


def list_campaigns(ctx: AppContext, *, status: Status | str | None = None, stage: Stage | str | None = None,
                   older_than: float | None = None, limit: int = LIST_LIMIT) -> list[CampaignRow]:
    """Campaigns by status, stage and age (unchanged for at least ``older_than`` seconds), oldest first."""
    from sqlalchemy import select

    campaigns, _, _, _ = _tables()
    query = select(campaigns).order_by(campaigns.c.updated_at, campaigns.c.id).limit(limit)
    if status is not None:
        query = query.where(campaigns.c.campaign_status == Status(status).value)
    if stage is not None:
        query = query.where(campaigns.c.processing_stage == Stage(stage).value)
    if older_than is not None:
        query = query.where(campaigns.c.updated_at <= _naive(_now() - dt.timedelta(seconds=older_than)))
    now = _now()
    with ctx.db.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        m = row._mapping
        updated = utc(m["updated_at"])
        out.append(CampaignRow(
            id=m["id"], status=m["campaign_status"], stage=m["processing_stage"], owner_name=m["owner_name"],
            email=m["email"], updated_at=updated,
            age=round((now - updated).total_seconds(), 3) if updated else None, last_error=m["last_error"],
        ))
    return out


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return round(sorted_values[index], 3)


def time_in_stage(ctx: AppContext, sample: int = TIME_IN_STAGE_SAMPLE) -> dict[str, dict[str, float | int | None]]:
    """Per stage, p50/p95 of the time campaigns spent in it, from the last ``sample`` visits in the history.

    A visit starts with the event that entered the stage and ends with the
    campaign's next event (the next version); visits still open are left out.
    """
    from sqlalchemy import and_, select

    _, events, _, _ = _tables()
    enter = events.alias("enter")
    leave = events.alias("leave")
    query = (
        select(enter.c.to_stage, enter.c.at, leave.c.at)
        .join(leave, and_(leave.c.campaign_id == enter.c.campaign_id, leave.c.version == enter.c.version + 1))
        .where(enter.c.to_status == Status.PROCESSING.value)
        .order_by(enter.c.id.desc())
        .limit(sample)
    )
    with ctx.db.connect() as conn:
        rows = conn.execute(query).all()
    spans: dict[str, list[float]] = {s.value: [] for s in PIPELINE}
    for stage, began, ended in rows:
        if stage in spans and began is not None and ended is not None:
            spans[stage].append(max(0.0, (ended - began).total_seconds()))
    out: dict[str, dict[str, float | int | None]] = {}
    for stage, values in spans.items():
        values.sort()
        out[stage] = {"n": len(values), "p50": _percentile(values, 0.5), "p95": _percentile(values, 0.95)}
    return out


def status_summary(ctx: AppContext) -> StatusSummary:
    """Counts per status and stage, ERROR reasons with ids, unknown sends, time in stage."""
    from sqlalchemy import func, select

    campaigns, _, _, _ = _tables()
    counts = ctx.store.counts()
    reason = func.coalesce(campaigns.c.last_error, "(no reason recorded)")
    reasons = []
    with ctx.db.connect() as conn:
        groups = conn.execute(
            select(reason, func.count()).where(campaigns.c.campaign_status == Status.ERROR.value)
            .group_by(reason).order_by(func.count().desc(), reason).limit(TOP_REASONS)
        ).all()
        for text, n in groups:
            ids = conn.execute(
                select(campaigns.c.id).where(campaigns.c.campaign_status == Status.ERROR.value, reason == text)
                .order_by(campaigns.c.id).limit(LIST_IDS)
            ).scalars().all()
            short = text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 1] + "…"
            reasons.append({"reason": short, "count": int(n), "ids": list(ids)})
        unknown = conn.execute(
            select(campaigns.c.id).where(campaigns.c.campaign_status == Status.SEND_OUTCOME_UNKNOWN.value)
            .order_by(campaigns.c.id).limit(LIST_IDS)
        ).scalars().all()
    return StatusSummary(counts["campaigns"], counts["stages"], reasons, list(unknown), time_in_stage(ctx))


# -- actions -------------------------------------------------------------------------------------


def check_settings(ctx: AppContext) -> None:
    """Raise ValueError naming the setting before anything changes (a bad REDIS_URL, a bad number).

    Builds the Redis client without a round trip: a malformed URL fails here,
    an unreachable Redis later (after the database moved, which is safe).
    """
    from engine.connection import connect

    settings = ctx.settings
    if "redis" not in ctx.__dict__:
        try:
            connect(settings, check=False)
        except ValueError as exc:
            from engine.redact import redact_url

            raise ValueError(f"REDIS_URL is not a Redis URL ({redact_url(settings.redis_url)}): {exc}") from None


def _enqueue(ctx: AppContext, jobs: Sequence[tuple[int, str, int]]) -> tuple[list[str], str | None]:
    """Queue (campaign, task type, run id) after the database moved: (lines, error or None)."""
    import redis

    from engine.queue import TaskQueue
    from engine.redact import redact_url

    lines: list[str] = []
    try:
        queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
        tasks = queue.enqueue_many([(task_type, cid, run_id) for cid, task_type, run_id in jobs])
        for (cid, task_type, _), task in zip(jobs, tasks, strict=True):
            lines.append(f"campaign {cid}: a {task_type} task is already queued" if task is None
                         else f"campaign {cid}: queued {task_type} task {task.task_id}")
    except redis.RedisError as exc:
        first = redact_url(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        return lines, (f"Redis at {redact_url(ctx.settings.redis_url)} is unreachable ({first}): "
                       f"{len(jobs) - len(lines)} task(s) not queued; the database is the truth and recovery "
                       "will queue them once Redis is back")
    return lines, None


def _act(ctx: AppContext, action: str, campaign_id: int, trigger: str, *, expect: Any = None,
         within: Any = None, follow_up: bool = True, detail: str | None = None) -> ActionResult:
    from workflow.store import Result

    check_settings(ctx)
    outcome = ctx.store.apply(campaign_id, trigger, expect=expect, within=within, worker_id="campaignctl",
                              detail=detail or f"campaignctl {action}")
    if outcome.result is Result.NOT_FOUND:
        return ActionResult(action, campaign_id, False, NOT_FOUND, f"no campaign with id {campaign_id}")
    if not outcome.applied:
        before = outcome.before
        return ActionResult(action, campaign_id, False, REFUSED, outcome.message,
                            before.campaign_status.value if before else None,
                            before.processing_stage.value if before else None)
    after = outcome.after
    lines: list[str] = []
    error = None
    task_type = task_type_for(after.campaign_status, after.processing_stage) if follow_up else None
    if task_type is not None:
        lines, error = _enqueue(ctx, [(campaign_id, task_type, after.run_id)])
    message = outcome.message if error is None else f"{outcome.message}, but {error}"
    return ActionResult(action, campaign_id, True, REFUSED if error else OK, message,
                        after.campaign_status.value, after.processing_stage.value, tuple(lines))


def approve(ctx: AppContext, campaign_id: int, *, version: int | None = None, by: str | None = None) -> ActionResult:
    """READY_FOR_REVIEW -> READY_TO_SEND and queue the send.

    ``version`` (from the draft the reviewer read) refuses the approval if the
    campaign changed since — the reviewer approves what they saw, nothing else.
    """
    from workflow.store import Expect

    expect = Expect(status=Status.READY_FOR_REVIEW, version=version) if version is not None else None
    return _act(ctx, "approve", campaign_id, "approve", expect=expect,
                detail=f"approved by {by}" if by else None)


def unsubscribe(ctx: AppContext, campaign_id: int, *, by: str | None = None) -> ActionResult:
    """Stop a campaign for good (any state -> UNSUBSCRIBED)."""
    return _act(ctx, "unsubscribe", campaign_id, "unsubscribe", follow_up=False,
                detail=f"unsubscribed by {by}" if by else None)


def retry(ctx: AppContext, campaign_id: int) -> ActionResult:
    """ERROR -> the step that failed, and queue its task."""
    return _act(ctx, "retry", campaign_id, "retry")


def resolve(ctx: AppContext, campaign_id: int, *, sent: bool) -> ActionResult:
    """Settle a SEND_OUTCOME_UNKNOWN campaign after checking SES (``sent``: it went out)."""
    from workflow import sends
    from workflow.sends import SendState
    from workflow.store import Expect

    state = SendState.SENT if sent else SendState.NOT_SENT

    def within(conn: Any, before: Any, after: Any) -> None:
        sends.record_resolution(conn, before.id, before.run_id, before.email, state)

    return _act(ctx, "resolve", campaign_id, "resolve_sent" if sent else "resolve_not_sent",
                expect=Expect(status=Status.SEND_OUTCOME_UNKNOWN), within=within)


def _bulk(ctx: AppContext, action: str, trigger: str, ids: Sequence[int], expect: Any) -> BulkResult:
    check_settings(ctx)
    done: list[int] = []
    skipped: list[int] = []
    jobs: list[tuple[int, str, int]] = []
    for cid in ids:
        outcome = ctx.store.apply(cid, trigger, expect=expect, worker_id="campaignctl",
                                  detail=f"campaignctl {action} --all")
        if outcome.applied:
            done.append(cid)
            task_type = task_type_for(outcome.after.campaign_status, outcome.after.processing_stage)
            if task_type is not None:
                jobs.append((cid, task_type, outcome.after.run_id))
        else:
            skipped.append(cid)
    lines, error = _enqueue(ctx, jobs) if jobs else ([], None)
    queued = sum(1 for line in lines if ": queued " in line)
    return BulkResult(action, tuple(done), tuple(skipped), queued, len(lines) - queued, error)


def approve_all(ctx: AppContext) -> BulkResult:
    """Approve every READY_FOR_REVIEW campaign and queue their sends."""
    from workflow.store import Expect, bulk_campaign_ids

    return _bulk(ctx, "approve", "approve", bulk_campaign_ids(ctx.db, [Status.READY_FOR_REVIEW]),
                 Expect(status=Status.READY_FOR_REVIEW))


def retry_all(ctx: AppContext, *, stage: Stage | str | None = None) -> BulkResult:
    """Retry every campaign in ERROR (only those that failed at ``stage`` when given)."""
    from sqlalchemy import select

    from workflow.store import Expect

    campaigns, _, _, _ = _tables()
    query = select(campaigns.c.id).where(campaigns.c.campaign_status == Status.ERROR.value).order_by(campaigns.c.id)
    want = Stage(stage) if stage is not None else None
    if want is not None:
        query = query.where(campaigns.c.processing_stage == want.value)
    with ctx.db.connect() as conn:
        ids = list(conn.execute(query).scalars())
    return _bulk(ctx, "retry", "retry", ids, Expect(status=Status.ERROR, stage=want))


# -- queues, limits, controls ------------------------------------------------------------------------


def _controls(ctx: AppContext):  # type: ignore[no-untyped-def]
    from engine.controls import Controls

    return Controls(ctx.redis, ctx.settings.key_prefix)


def _throughput(ctx: AppContext, window: float) -> dict[str, dict[str, int]]:
    """Per task type, from the history over the last ``window`` seconds (among the last THROUGHPUT_SAMPLE
    transitions, so the query stays cheap on a large history): processed (its step completed) and failed (the
    campaign went to ERROR from it)."""
    from sqlalchemy import func, select

    _, events, _, _ = _tables()
    since = _naive(_now() - dt.timedelta(seconds=window))
    recent = (select(events.c.trigger, events.c.from_status, events.c.from_stage, events.c.at)
              .order_by(events.c.id.desc()).limit(THROUGHPUT_SAMPLE).subquery())
    query = (select(recent.c.trigger, recent.c.from_status, recent.c.from_stage, func.count())
             .where(recent.c.at >= since, recent.c.trigger.in_(["advance", "fail", "mark_sent", "mark_send_unknown"]))
             .group_by(recent.c.trigger, recent.c.from_status, recent.c.from_stage))
    out = {t: {"processed": 0, "failed": 0} for t in TASK_TYPES}
    with ctx.db.connect() as conn:
        rows = conn.execute(query).all()
    for trigger, from_status, from_stage, n in rows:
        task_type = task_type_for(Status(from_status), Stage(from_stage)) if from_status in Status.__members__ else None
        if task_type not in out:
            continue
        if trigger == "fail":
            out[task_type]["failed"] += int(n)
        elif trigger in _DONE_TRIGGERS.get(task_type, ("advance",)) or trigger == "mark_send_unknown":
            out[task_type]["processed"] += int(n)
    return out


def queue_stats(ctx: AppContext, *, window: float = THROUGHPUT_WINDOW) -> dict[str, Any]:
    """``queues --json``: SPEC §6's fields plus, per queue, the age of its oldest ready task (s), whether it
    is paused, and the tasks processed / failed over the last ``window`` seconds (from the history)."""
    from engine.keys import Keys
    from engine.queue import TaskQueue
    from engine.task import Task

    queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
    stats = queue.stats()
    keys = Keys(ctx.settings.key_prefix)
    pipe = ctx.redis.pipeline(transaction=False)
    for t in TASK_TYPES:
        pipe.lindex(keys.queue(t), -1)  # workers take from the right: the oldest ready task
    oldest = pipe.execute()
    paused = _controls(ctx).paused()
    now = time.time()
    try:
        counts = _throughput(ctx, window)
    except Exception:  # noqa: BLE001 - the database is optional here: Redis answers the rest
        counts = None
    for t, raw in zip(TASK_TYPES, oldest, strict=True):
        age = None
        if raw is not None:
            try:
                age = round(max(0.0, now - Task.from_json(raw).enqueued_at), 3)
            except Exception:  # noqa: BLE001 - a malformed payload waits for a worker to dead-letter it
                age = None
        entry = stats["queues"][t]
        entry["oldest_ready_age"] = age
        entry["paused"] = t in paused
        entry["processed"] = counts[t]["processed"] if counts else None
        entry["failed"] = counts[t]["failed"] if counts else None
    return stats


def pause_queue(ctx: AppContext, task_type: str) -> ActionResult:
    """Workers stop claiming ``task_type`` (running tasks finish; queued ones wait)."""
    _known_queue(task_type)
    changed = _controls(ctx).pause(task_type)
    return ActionResult("pause", None, changed, OK,
                        f"queue {task_type} paused" if changed else f"queue {task_type} was already paused")


def resume_queue(ctx: AppContext, task_type: str) -> ActionResult:
    _known_queue(task_type)
    changed = _controls(ctx).resume(task_type)
    return ActionResult("resume", None, changed, OK,
                        f"queue {task_type} resumed" if changed else f"queue {task_type} was not paused")


def _known_queue(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown queue {task_type!r}; known: {', '.join(TASK_TYPES)}")


def format_rate(per_second: float) -> str:
    """A rate in the unit a provider's plan uses: 0.1667 -> "10/min", 1.0 -> "1/s", 0.0003 -> "1/h"."""
    for factor, unit in ((1.0, "s"), (60.0, "min"), (3600.0, "h")):
        value = per_second * factor
        if value >= 1 or unit == "h":
            return f"{value:.4g}/{unit}"
    raise AssertionError("unreachable")


def _plan_apis(ctx: AppContext) -> dict[str, Any]:
    from stages.settings import rate_limits as plan_limits

    return plan_limits(ctx.env)


def set_rate(ctx: AppContext, api: str, rate: str) -> ActionResult:
    """Override ``api``'s plan rate at runtime ("20/min"); every worker follows within seconds."""
    from engine.env import parse_rate

    plans = _plan_apis(ctx)
    if api not in plans:
        raise ValueError(f"unknown API {api!r}; known: {', '.join(plans)}")
    from campaignctl.limits import rate_limits

    per_second = parse_rate(rate, "the rate")
    headroom = rate_limits(ctx.env)[api].rate / plans[api].rate
    _controls(ctx).set_rate(api, per_second * headroom, plan=per_second)
    return ActionResult("set-rate", None, True, OK,
                        f"{api}: plan rate overridden to {format_rate(per_second)} "
                        f"(configured {format_rate(plans[api].rate)}); clear with --clear")


def clear_rate(ctx: AppContext, api: str) -> ActionResult:
    plans = _plan_apis(ctx)
    if api not in plans:
        raise ValueError(f"unknown API {api!r}; known: {', '.join(plans)}")
    changed = _controls(ctx).clear_rate(api)
    return ActionResult("clear-rate", None, changed, OK,
                        f"{api}: back to the configured {format_rate(plans[api].rate)}" if changed
                        else f"{api}: no override was set")


def limits(ctx: AppContext) -> dict[str, dict[str, Any]]:
    """Per API: ``plan`` (the configured plan rate, e.g. "10/min"), ``override`` (a runtime plan rate or None),
    ``granted`` (what the limiter grants after RATE_HEADROOM and RATE_SCALE, plan units), ``rate`` (the same in
    calls/s), ``burst``, ``tokens``, ``paused_until`` (ISO UTC or None), ``paused_for`` (s), ``calls`` and
    ``throttled`` (429s) counted since the counters' reset."""
    from campaignctl.limits import rate_limits
    from engine.ratelimit import RateLimiter

    plans = _plan_apis(ctx)
    limiter = RateLimiter(ctx.redis, ctx.settings, rate_limits(ctx.env))
    status = limiter.status()
    controls = _controls(ctx)
    overrides = controls.plans()
    counters = controls.counters()
    out = {}
    for api, s in status.items():
        override = overrides.get(api)
        paused_until = s["paused_until"]
        out[api] = {
            "plan": format_rate(plans[api].rate),
            "override": format_rate(override) if override is not None else None,
            "granted": format_rate(s["rate"]),
            "rate": s["rate"],
            "burst": s["burst"],
            "tokens": s["tokens"],
            "paused_until": _iso(dt.datetime.fromtimestamp(paused_until, dt.timezone.utc)) if paused_until else None,
            "paused_for": s["paused_for"],
            "calls": counters["calls"].get(api, 0),
            "throttled": counters["throttled"].get(api, 0),
        }
    return out


# -- dead letters -----------------------------------------------------------------------------------


def _entry(entry: dict[str, Any]) -> dict[str, Any]:
    at = entry.get("at")
    out = dict(entry)
    if isinstance(at, (int, float)):
        out["at"] = dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat()
    return out


def dead_letters(ctx: AppContext) -> list[dict[str, Any]]:
    """Dead-letter entries, oldest first, times as ISO 8601 UTC."""
    from engine.queue import TaskQueue

    return [_entry(e) for e in TaskQueue(ctx.redis, ctx.settings, TASK_TYPES).dlq_list()]


def dead_letter(ctx: AppContext, entry_id: str) -> dict[str, Any] | None:
    """One entry by its id or its task's id, with its campaign's state now (None: not found)."""
    for entry in dead_letters(ctx):
        task = entry.get("task")
        if entry_id in (str(entry.get("id")), str(task.get("task_id")) if isinstance(task, dict) else None):
            cid = entry.get("campaign_id")
            snap = ctx.store.get(cid) if isinstance(cid, int) and not isinstance(cid, bool) else None
            entry["campaign"] = None if snap is None else {
                "campaign_status": snap.campaign_status.value, "processing_stage": snap.processing_stage.value,
                "last_error": snap.last_error, "run_id": snap.run_id}
            return entry
    return None


def requeue_dead_letter(ctx: AppContext, entry_id: str) -> ActionResult:
    """Run a dead letter's work again — through its campaign, the only way work runs.

    A dead letter moved its campaign to ERROR; requeueing the bare task would
    find the campaign in ERROR and do nothing. So: a campaign in ERROR at the
    task's step is retried (ERROR -> that step, task queued) and the entry
    removed; a campaign still waiting at that step (a malformed payload never
    moved it) gets a fresh task; a campaign elsewhere is refused with where it
    is (it moved on, was unsubscribed, or was already retried), and the entry
    stays.
    """
    from workflow.store import Expect

    check_settings(ctx)
    entry = dead_letter(ctx, entry_id)
    if entry is None:
        return ActionResult("dlq-requeue", None, False, NOT_FOUND, f"no dead letter with id {entry_id!r}")
    cid, task_type = entry.get("campaign_id"), entry.get("task_type")
    if task_type not in TASK_TYPES or not isinstance(cid, int) or isinstance(cid, bool) or cid <= 0:
        return ActionResult("dlq-requeue", None, False, REFUSED,
                            f"dead letter {entry_id} names no valid task type and campaign: fix or purge it")
    campaign = entry["campaign"]
    if campaign is None:
        return ActionResult("dlq-requeue", cid, False, REFUSED,
                            f"dead letter {entry_id}: campaign {cid} does not exist any more; purge it")
    status, stage = expected_position(task_type)
    if (campaign["campaign_status"], campaign["processing_stage"]) == (status.value, stage.value):
        # The campaign still waits for this step (a malformed payload never moved it): a fresh task is the fix.
        from engine.queue import TaskQueue

        queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
        out = queue.dlq_requeue(entry_id)
        if out["unusable"] and queue.cluster:
            out = _requeue_across_slots(ctx, queue, entry_id, task_type, cid)
        if out["requeued"]:
            return ActionResult("dlq-requeue", cid, True, OK, f"campaign {cid}: queued a fresh {task_type} task",
                                status.value, stage.value)
        if out["already_live"]:
            return ActionResult("dlq-requeue", cid, True, OK,
                                f"campaign {cid}: a {task_type} task is already queued; entry removed",
                                status.value, stage.value)
        return ActionResult("dlq-requeue", cid, False, NOT_FOUND, f"no dead letter with id {entry_id!r}")
    failed_stage = Stage.IDLE if task_type == EMAIL_SENDING else stage
    if campaign["campaign_status"] != Status.ERROR.value or campaign["processing_stage"] != failed_stage.value:
        where = campaign["campaign_status"] + (f":{campaign['processing_stage']}"
                                               if campaign["processing_stage"] != "idle" else "")
        return ActionResult("dlq-requeue", cid, False, REFUSED,
                            f"dead letter {entry_id}: campaign {cid} is {where}, not ERROR at {task_type}: "
                            "nothing to retry (purge the entry, or act on the campaign)",
                            campaign["campaign_status"], campaign["processing_stage"])
    result = _act(ctx, "dlq-requeue", cid, "retry", expect=Expect(status=Status.ERROR, stage=failed_stage),
                  detail=f"campaignctl dlq requeue {entry_id}")
    if result.applied:
        _remove_entry(ctx, entry_id)
    return result


def _requeue_across_slots(ctx: AppContext, queue: Any, entry_id: str, task_type: str,
                          campaign_id: int) -> dict[str, list[str]]:
    """Requeue a dead letter kept in another type's list, on Redis Cluster: what dlq_requeue.lua does, in two steps.

    A payload found in the wrong queue is dead-lettered into the list of the
    queue it was found in, while its task belongs to another type: on a
    cluster that list and the type's queue live in different slots, so the one
    script cannot touch both (the engine answers "unusable"). Each step here is
    atomic in its own slot: queue a fresh task (deduplicated: at most one live
    task per campaign and type), then remove the entry. A crash between the two
    leaves the entry; requeueing it again finds the task live and removes it.
    """
    task = queue.enqueue(task_type, campaign_id)
    removed = _remove_entry(ctx, entry_id)
    out: dict[str, list[str]] = {"requeued": [], "already_live": [], "unusable": [], "not_found": []}
    if not removed and task is None:
        out["not_found"].append(entry_id)  # someone else requeued or purged it meanwhile
    else:
        out["requeued" if task is not None else "already_live"].append(entry_id)
    return out


def _remove_entry(ctx: AppContext, entry_id: str) -> bool:
    """Remove one dead letter by its id or its task's id; False when none is left."""
    from engine.queue import TaskQueue

    for key in TaskQueue(ctx.redis, ctx.settings, TASK_TYPES).dlq_keys():
        for raw in ctx.redis.lrange(key, 0, -1):
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            task = data.get("task") if isinstance(data, dict) else None
            if isinstance(data, dict) and entry_id in (str(data.get("id")),
                                                       str(task.get("task_id")) if isinstance(task, dict) else None):
                if ctx.redis.lrem(key, 1, raw):
                    return True
    return False
