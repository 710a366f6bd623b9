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
from sqlalchemy import select

from campaignctl.context import AppContext
from campaignctl.limits import rate_limits
from engine.queue import TaskQueue
from engine.ratelimit import RateLimiter
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.task import Task
from workflow.models import Campaign
from workflow.states import TASK_TYPES, expected_position, task_type_for
from workflow.store import Expect

log = logging.getLogger(__name__)

#: Campaigns read per page by the reconcile source.
RECONCILE_PAGE = 1000


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


def producer_source(ctx: AppContext, worker_id: str | None = None) -> Callable[[int], list[RunTask]]:
    """Start due campaigns (compare-and-set in the database) and return their first tasks, with their run."""

    def source(limit: int) -> list[RunTask]:
        out = []
        for snap in ctx.store.start_due(limit=limit, worker_id=worker_id):
            task_type = task_type_for(snap.campaign_status, snap.processing_stage)
            if task_type is not None:
                out.append((task_type, snap.id, snap.run_id))
        return out

    return source


def reconcile_source(ctx: AppContext) -> Callable[[], Iterator[RunTask]]:
    """Campaigns that need a live task and have not moved for STALL_THRESHOLD, page by page, with their run."""
    older_than = dt.timedelta(seconds=ctx.settings.stall_threshold)

    def source() -> Iterator[RunTask]:
        after = 0
        while True:
            rows = ctx.store.stalled(older_than, limit=RECONCILE_PAGE, after_id=after)
            runs = _run_ids(ctx, [cid for cid, _ in rows])
            for cid, task_type in rows:
                if cid in runs:
                    yield task_type, cid, runs[cid]
            if len(rows) < RECONCILE_PAGE:
                return
            after = rows[-1][0]

    return source


def _run_ids(ctx: AppContext, ids: list[int]) -> dict[int, int]:
    """The current run of each campaign in ``ids`` (a campaign deleted meanwhile is left out)."""
    if not ids:
        return {}
    campaigns = Campaign.__table__
    with ctx.store.engine.connect() as conn:
        return dict(conn.execute(select(campaigns.c.id, campaigns.c.run_id).where(campaigns.c.id.in_(ids))).all())
