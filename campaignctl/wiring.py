"""Wires the application to the generic engine: handlers, dead-letter hook, producer and reconcile sources.

``engine`` knows nothing of campaigns; this module is where campaigns meet it.
``stages`` is imported lazily so the engine commands work before (or without)
the stage handlers. It is also where the engine learns which database errors
mean "the database is down" (``database_outage``): the engine knows Redis,
not SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import exc as sa_exc

from campaignctl.context import AppContext
from campaignctl.limits import rate_limits
from engine.queue import TaskQueue
from engine.ratelimit import RateLimiter
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.task import Task
from workflow.states import PIPELINE, TASK_TYPES, expected_position
from workflow.models import utcnow
from workflow.store import Expect

log = logging.getLogger(__name__)

#: Campaigns read per page by the reconcile source.
RECONCILE_PAGE = 1000
#: Reconcile's window reaches this far before its cursor: a transaction that committed late (its
#: updated_at is its start) or an app server whose clock lags by less than this is still seen.
RECONCILE_LOOKBACK = dt.timedelta(seconds=30)


def build_queue(ctx: AppContext) -> TaskQueue:
    return TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)


def build_limiter(ctx: AppContext) -> RateLimiter:
    return RateLimiter(ctx.redis, ctx.settings, rate_limits(ctx.env))


def load_handlers(ctx: AppContext) -> dict[str, Any]:
    """``stages.handlers.build_handlers(ctx)``: task type -> handler or (handler, RetryPolicy); {} without stages."""
    try:
        from stages.handlers import build_handlers  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name in ("stages", "stages.handlers"):
            log.warning("stages.handlers is not installed: no task handlers registered")
            return {}
        raise
    return dict(build_handlers(ctx))


def database_outage(exc: BaseException) -> bool:
    """Whether a SQLAlchemy error means the database is unreachable or cannot take work right now.

    ``OperationalError`` is, by the DB-API's definition, an error "related to
    the database's operation and not necessarily under the control of the
    programmer": a refused or lost connection, a server shutting down or
    starting up, a deadlock or serialization failure, SQLite's "database is
    locked". ``InterfaceError`` is a connection already closed; a
    ``DBAPIError`` that SQLAlchemy marks ``connection_invalidated`` is a
    disconnect whatever its class; the pool's ``TimeoutError`` means no
    connection could be had in time. Integrity and programming errors are not
    outages: waiting cannot mend them.
    """
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                        sa_exc.DisconnectionError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def ping_database(ctx: AppContext) -> None:
    """One round trip to the database (raises when it is unreachable)."""
    with ctx.db.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


def build_registry(ctx: AppContext, *, worker_id: str | None = None,
                   handlers: dict[str, Any] | None = None) -> Registry:
    """Every stage handler, plus the hook that moves a dead-lettered campaign to ERROR.

    A handler failing because the database is down (``database_outage``) has
    its task deferred by the worker without spending an attempt.
    """
    registry = Registry(is_outage=database_outage)
    for task_type, entry in (load_handlers(ctx) if handlers is None else handlers).items():
        if isinstance(entry, tuple):
            handler, policy = entry
            registry.register(task_type, handler, policy if isinstance(policy, RetryPolicy) else None)
        else:
            registry.register(task_type, entry)
    registry.on_dead_letter(dead_letter_hook(ctx, worker_id))
    return registry


def dead_letter_hook(ctx: AppContext, worker_id: str | None = None) -> Callable[[Task | None, str, str | None], None]:
    """Fail the campaign with the reason — only if it is still where the task expected it.

    A stale dead letter (the campaign moved on, another copy of the task
    succeeded, or the task belongs to an earlier run that ended at this very
    stage) must not fail a campaign, hence the Expect on status, stage and,
    when the task carries one, run.
    """

    def hook(task: Task | None, reason: str, error: str | None) -> None:
        if task is None:
            return  # a malformed payload: no campaign to fail; it waits in the DLQ
        try:
            status, stage = expected_position(task.task_type)
        except ValueError:
            log.warning("dead letter of unknown task type %r: no campaign moved", task.task_type)
            return
        expect = Expect(status=status, stage=stage, run_id=task.run_id)
        outcome = ctx.store.apply(task.campaign_id, "fail", expect=expect,
                                  error=reason, task_id=task.task_id, worker_id=worker_id)
        log.log(logging.WARNING if outcome.applied else logging.INFO, "dead letter -> %s", outcome.message)

    return hook


#: (task type, campaign id, run id): a task to enqueue, carrying the run it belongs to.
RunTask = tuple[str, int, int]


#: The first stage of every run and the provider it calls (one call per campaign).
FIRST_STAGE, FIRST_STAGE_API = PIPELINE[0].value, "zillow"


def producer_backlog(ctx: AppContext) -> int:
    """PRODUCER_MAX_BACKLOG, or by default what the first stage's provider serves in PRODUCER_HORIZON.

    At least PRODUCER_BATCH, so one batch always fits. 0 = no limit.
    """
    settings = ctx.settings
    if settings.producer_max_backlog is not None:
        return settings.producer_max_backlog
    rate = build_limiter(ctx).rate(FIRST_STAGE_API)
    return max(settings.producer_batch, int(rate * settings.producer_horizon))


def build_producer(ctx: AppContext, name: str, stop: Any = None) -> Any:
    """The producer service: due campaigns started set-based, with backpressure on the first stage's queue."""
    from engine.producer import Producer

    return Producer(build_queue(ctx), ctx.settings, producer_source(ctx, name), is_outage=database_outage, stop=stop,
                    backlog_types=(FIRST_STAGE,), max_backlog=producer_backlog(ctx))


def producer_source(ctx: AppContext, worker_id: str | None = None) -> Callable[[int], list[RunTask]]:
    """Start due campaigns (set-based, in the database) and return their first tasks, with the run id."""

    def source(limit: int) -> list[RunTask]:
        # Every started campaign is at the first stage: no snapshots needed, only ids and runs.
        return [(FIRST_STAGE, cid, run_id) for cid, run_id in ctx.store.start_due_runs(limit=limit,
                                                                                       worker_id=worker_id)]

    return source


def reconcile_source(ctx: AppContext) -> ReconcileFromDatabase:
    """What recovery's reconcile enqueues: campaigns that need a live task, by what changed."""
    return ReconcileFromDatabase(ctx)


class ReconcileFromDatabase:
    """engine.recovery.IncrementalSource over the campaigns table.

    A campaign that needs a task (PROCESSING, READY_TO_SEND) and has had none
    for STALL_THRESHOLD since it last changed gets one. The cursor is a time:
    each pass reads only the campaigns whose ``updated_at`` passed the
    threshold since the last pass (looking back RECONCILE_LOOKBACK more, for
    transactions that committed late), through the (status, updated_at)
    index — a pass costs what changed, whether a million campaigns rest or
    wait in queues. ``full()`` pages through every such campaign (after Redis
    lost its data). Tasks carry the campaign's run id.
    """

    def __init__(self, ctx: AppContext) -> None:
        self.store = ctx.store
        self.stall = dt.timedelta(seconds=ctx.settings.stall_threshold)

    def __call__(self) -> Iterator[tuple[str, int, int]]:
        """Every campaign that needs a task (the full sweep), for callers that want a plain callable."""
        return self.full()

    def mark(self) -> str:
        return (utcnow() - self.stall).isoformat()

    def full(self) -> Iterator[tuple[str, int, int]]:
        return self._pages(utcnow() - self.stall, None)

    def changed(self, since: str) -> Iterator[tuple[str, int, int]]:
        try:
            after = dt.datetime.fromisoformat(since) - RECONCILE_LOOKBACK
        except ValueError:
            log.warning("reconcile cursor %r is not a time: sweeping everything once", since)
            return self.full()
        return self._pages(utcnow() - self.stall, after)

    def _pages(self, until: dt.datetime, changed_after: dt.datetime | None) -> Iterator[tuple[str, int, int]]:
        if changed_after is not None:  # what changed in a window: few rows, read through the updated_at index
            for cid, task_type, run_id in self.store.needing_task(until, changed_after=changed_after, limit=None):
                yield task_type, cid, run_id
            return
        after = 0
        while True:
            rows = self.store.needing_task(until, limit=RECONCILE_PAGE, after_id=after)
            for cid, task_type, run_id in rows:
                yield task_type, cid, run_id
            if len(rows) < RECONCILE_PAGE:
                return
            after = rows[-1][0]