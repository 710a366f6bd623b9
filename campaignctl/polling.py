"""The legacy dispatch, behind the feature flag ``DISPATCH_MODE=polling``.

The old system found work by polling the database from each service. This
module keeps that dispatch available — for a gradual rollout (run both side by
side, then switch) and as a rollback if the Redis queues misbehave — while
running the **same** stage handlers through the **same** store and machine as
the queue workers. Handlers cannot tell the difference: they get a context
object with the surface of ``engine.context.TaskContext`` (``task``,
``worker_id``, ``acquire``, ``pause``, ``enqueue``, ``heartbeat``), and the
shared Redis rate limiter still guards every provider.

How a poller claims a campaign:

- PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` picks candidates without
  waiting on rows another poller is looking at, and a session-level advisory
  lock (``pg_try_advisory_lock``) on the campaign id is held on the poller's
  own connection while the stage runs. The row lock ends with the short
  claiming transaction, so the handler's own compare-and-set is not blocked;
  the advisory lock keeps a second poller off the campaign and dies with the
  connection if the poller crashes.
- SQLite (one machine, usually one poller per service as in the old system):
  candidates are read plainly; threads of one process never share a campaign,
  and the handler's compare-and-set decides any race between processes.

Either way every write is a compare-and-set, so a duplicate run is a no-op,
and polling workers can run next to queue workers on the same database.
Retries are tracked in the poller's memory: a restart forgets the attempt
count of a failing stage (the old system did not count at all).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
from sqlalchemy import Connection, Engine, func, select, text

from engine import metrics
from engine.env import env_float, env_int
from engine.errors import Discard, Permanent, RateLimited, Transient
from engine.identity import new_worker_id
from engine.loop import FIRST_RETRY, Outage
from engine.registry import Registry
from engine.settings import DEFAULT_OUTAGE_BACKOFF_MAX
from engine.task import Task
from workflow.models import Campaign
from workflow.states import EMAIL_SENDING, TASK_TYPES, Stage, Status, expected_position
from workflow.store import CampaignStore, Expect

log = logging.getLogger(__name__)

#: Pause between two polls that found nothing to do, in s.
DEFAULT_POLL_INTERVAL = 1.0
#: Candidates read per poll.
DEFAULT_POLL_BATCH = 20
#: First key of the two-key advisory locks, so ours never collide with another application's (int4).
ADVISORY_LOCK_CLASS = 0x43450001

campaigns = Campaign.__table__

class PollingContext:
    """The ``TaskContext`` surface for a handler run by the poller.

    ``enqueue`` records nothing: in polling mode the database is the queue, and
    the next stage's poller finds the campaign there.
    """

    def __init__(self, task: Task, worker_id: str, limiter: Any, max_token_sleep: float,
                 stop: threading.Event | None = None) -> None:
        self.task = task
        self.worker_id = worker_id
        self._limiter = limiter
        self._max_token_sleep = max_token_sleep
        self._stop = stop or threading.Event()
        #: Never set here: the poller's claim (advisory lock or CAS) cannot be taken away mid-run.
        self.lease_lost = threading.Event()

    def acquire(self, api: str) -> None:
        """Wait for a token of ``api``'s shared bucket, or defer the stage if the wait is long."""
        while True:
            grant = self._limiter.acquire(api)
            if grant.granted:
                return
            if grant.wait > self._max_token_sleep:
                raise RateLimited(f"{api}: next token in {grant.wait:.2f}s", retry_after=grant.wait, api=None)
            if self._stop.wait(grant.wait):
                raise RateLimited(f"{api}: shutting down while waiting for a token", retry_after=0.0, api=None)

    def pause(self, api: str, seconds: float) -> None:
        self._limiter.pause(api, seconds)
        metrics.throttled(api)
        self._limiter.controls.controls.count_throttle(api)

    def enqueue(self, task_type: str, campaign_id: int) -> None:
        return None

    def heartbeat(self) -> bool:
        return True


@attrs.define
class _Backoff:
    attempts: int = 0
    not_before: float = 0.0


class PollingDispatcher:
    """Polls the database for campaigns at the given task types and runs their handlers."""

    def __init__(
        self,
        *,
        store: CampaignStore,
        registry: Registry,
        limiter: Any,
        worker_id: str,
        task_types: Sequence[str] = TASK_TYPES,
        max_token_sleep: float = 10.0,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        batch: int = DEFAULT_POLL_BATCH,
        start_due: bool | None = None,
        outage_backoff_max: float = DEFAULT_OUTAGE_BACKOFF_MAX,
    ) -> None:
        unknown = set(task_types) - set(registry.task_types)
        if unknown:
            raise ValueError(f"no handler for task types {sorted(unknown)}")
        self.store = store
        self.engine: Engine = store.engine
        self.registry = registry
        self.limiter = limiter
        self.worker_id = worker_id
        self.task_types = tuple(task_types)
        self.max_token_sleep = max_token_sleep
        self.poll_interval = poll_interval
        self.batch = batch
        #: The property_data poller also starts due campaigns, as the old property service did.
        self.start_due = (Stage.PROPERTY_DATA.value in self.task_types) if start_due is None else start_due
        self.postgres = self.engine.dialect.name == "postgresql"
        self.stop_event = threading.Event()
        self._mutex = threading.Lock()
        self._busy: set[int] = set()
        self._backoff: dict[tuple[int, str], _Backoff] = {}
        self.handled = 0
        #: A poll failing (the database down): its backoff and its once-per-outage log lines.
        self._poll_outage = Outage(f"polling worker {worker_id}: database", base=poll_interval,
                                   cap=outage_backoff_max, is_outage=registry.is_outage, logger=log)
        #: Stages failing on an outage: deferred with the backoff the queue worker uses, no attempt spent.
        self._task_outage = Outage(f"polling worker {worker_id}: a service the handlers need", base=FIRST_RETRY,
                                   cap=outage_backoff_max, is_outage=registry.is_outage, logger=log,
                                   consequence="deferring their stages without spending attempts, with backoff")

    # -- running ------------------------------------------------------------

    def run(self, concurrency: int = 1, *, burst: bool = False) -> None:
        """Poll until ``stop()`` (or, with ``burst``, until a poll finds nothing)."""
        threads = [threading.Thread(target=self._loop, args=(burst,), name=f"poller-{i}", daemon=True)
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)

    def stop(self) -> None:
        self.stop_event.set()

    def _loop(self, burst: bool) -> None:
        claim_conn: Connection | None = None
        try:
            while not self.stop_event.is_set():
                metrics.loop_alive()
                try:
                    if claim_conn is None and self.postgres:
                        claim_conn = self.engine.connect()
                    did = self.poll_once(claim_conn)
                    self._poll_outage.ok()
                except Exception as exc:  # noqa: BLE001 - a lost database connection must not end the poller
                    if claim_conn is not None:
                        claim_conn.invalidate()
                        claim_conn.close()
                        claim_conn = None
                    # One warning per outage (not a traceback per poll), backing off to OUTAGE_BACKOFF_MAX.
                    self.stop_event.wait(self._poll_outage.failed(exc))
                    continue
                if did == 0:
                    if burst:
                        return
                    self.stop_event.wait(self.poll_interval)
        finally:
            if claim_conn is not None:
                claim_conn.close()

    def poll_once(self, claim_conn: Connection | None = None) -> int:
        """Start due campaigns (if asked), then claim and run one campaign. Returns 1 if it ran one."""
        started = 0
        if self.start_due:
            started = len(self.store.start_due(limit=self.batch, worker_id=self.worker_id))
        claimed = self._claim(claim_conn)
        if claimed is None:
            return 1 if started else 0
        campaign_id, task_type = claimed
        try:
            self._run(campaign_id, task_type)
        finally:
            self._release(campaign_id, claim_conn)
        return 1

    # -- claiming -------------------------------------------------------------

    def _candidates_query(self) -> Any:
        stages = [t for t in self.task_types if t != EMAIL_SENDING]
        conditions = []
        if stages:
            conditions.append((campaigns.c.campaign_status == Status.PROCESSING.value)
                              & campaigns.c.processing_stage.in_(stages))
        if EMAIL_SENDING in self.task_types:
            conditions.append(campaigns.c.campaign_status == Status.READY_TO_SEND.value)
        where = conditions[0] if len(conditions) == 1 else conditions[0] | conditions[1]
        return (
            select(campaigns.c.id, campaigns.c.campaign_status, campaigns.c.processing_stage)
            .where(where)
            .order_by(campaigns.c.updated_at, campaigns.c.id)
            .limit(self.batch)
        )

    def _eligible(self, campaign_id: int, task_type: str, now: float) -> bool:
        if campaign_id in self._busy:
            return False
        backoff = self._backoff.get((campaign_id, task_type))
        return backoff is None or backoff.not_before <= now

    def _claim(self, claim_conn: Connection | None) -> tuple[int, str] | None:
        query = self._candidates_query()
        now = time.monotonic()
        if self.postgres:
            assert claim_conn is not None
            with claim_conn.begin():
                rows = claim_conn.execute(query.with_for_update(skip_locked=True)).all()
                for cid, status, stage in rows:
                    task_type = _task_type(status, stage)
                    with self._mutex:
                        if not self._eligible(cid, task_type, now):
                            continue
                    locked = claim_conn.execute(
                        select(func.pg_try_advisory_lock(ADVISORY_LOCK_CLASS, cid))
                    ).scalar()
                    if locked:
                        with self._mutex:
                            self._busy.add(cid)
                        return cid, task_type
            return None
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        with self._mutex:
            for cid, status, stage in rows:
                task_type = _task_type(status, stage)
                if self._eligible(cid, task_type, now):
                    self._busy.add(cid)
                    return cid, task_type
        return None

    def _release(self, campaign_id: int, claim_conn: Connection | None) -> None:
        with self._mutex:
            self._busy.discard(campaign_id)
        if self.postgres and claim_conn is not None:
            with claim_conn.begin():
                claim_conn.execute(text("SELECT pg_advisory_unlock(:k1, :k2)"),
                                   {"k1": ADVISORY_LOCK_CLASS, "k2": campaign_id})

    # -- running one stage -------------------------------------------------------

    def _run(self, campaign_id: int, task_type: str) -> None:
        status, stage = expected_position(task_type)
        snapshot = self.store.get(campaign_id)
        if snapshot is None or (snapshot.campaign_status, snapshot.processing_stage) != (status, stage):
            return  # moved on since the candidate was read (another poller, a queue worker, an operator)
        key = (campaign_id, task_type)
        with self._mutex:
            backoff = self._backoff.get(key) or _Backoff()
        task = attrs.evolve(Task.new(task_type, campaign_id), retry_count=backoff.attempts)
        ctx = PollingContext(task, self.worker_id, self.limiter, self.max_token_sleep, self.stop_event)
        policy = self.registry.policy(task_type)
        handler = self.registry.handler(task_type)
        assert handler is not None
        started = time.monotonic()
        try:
            handler(task, ctx)
        except RateLimited as exc:
            if exc.api:
                self.limiter.pause(exc.api, exc.retry_after)
            self._defer(key, backoff, exc.retry_after)
            metrics.task_settled(task_type, "defer", True)
            return
        except Discard as exc:
            log.info("campaign %s %s: nothing to do (%s)", campaign_id, task_type, exc)
            self._forget(key)
            metrics.task_settled(task_type, "ack", True)
            return
        except Permanent as exc:
            self._dead(task, f"permanent failure: {exc}", repr(exc))
            self._forget(key)
            return
        except Exception as exc:  # noqa: BLE001 - Transient, or unexpected (counts as transient)
            if self.registry.is_outage(exc):
                self._defer(key, backoff, self._task_outage.failed(exc))
                metrics.task_settled(task_type, "outage deferral", True)
                return
            if policy.exhausted(backoff.attempts):
                kind = "transient" if isinstance(exc, Transient) else type(exc).__name__
                self._dead(task, f"{kind} failure after {backoff.attempts + 1} attempts: {exc}", repr(exc))
                self._forget(key)
            else:
                log.warning("campaign %s %s: attempt %d failed: %s", campaign_id, task_type, backoff.attempts + 1, exc)
                delay = policy.backoff(backoff.attempts)
                self._defer(key, attrs.evolve(backoff, attempts=backoff.attempts + 1), delay)
                metrics.task_settled(task_type, "retry", True)
            return
        finally:
            metrics.task_ran(task_type, time.monotonic() - started)
        self._forget(key)
        self._task_outage.ok()
        self.handled += 1
        metrics.task_settled(task_type, "ack", True)

    def _defer(self, key: tuple[int, str], backoff: _Backoff, seconds: float) -> None:
        with self._mutex:
            self._backoff[key] = attrs.evolve(backoff, not_before=time.monotonic() + seconds)

    def _forget(self, key: tuple[int, str]) -> None:
        with self._mutex:
            self._backoff.pop(key, None)

    def _dead(self, task: Task, reason: str, error: str) -> None:
        """What the queue engine does with a dead letter: the app's hooks move the campaign to ERROR.

        The fail below is a compare-and-set no-op when a hook already did it; it
        keeps a poller with a bare registry from retrying a dead stage forever.
        """
        self.registry.dead_lettered(task, reason, error)
        metrics.task_settled(task.task_type, "dead-letter", True)
        status, stage = expected_position(task.task_type)
        self.store.apply(task.campaign_id, "fail", expect=Expect(status=status, stage=stage), task_id=task.task_id,
                         worker_id=self.worker_id, error=reason)


def _task_type(status: str, stage: str) -> str:
    return EMAIL_SENDING if status == Status.READY_TO_SEND.value else stage


def parse_dispatch_mode(value: str | None) -> str:
    """``queue`` (default) or ``polling``; anything else is a configuration error."""
    mode = (value or "queue").strip().lower()
    if mode not in ("queue", "polling"):
        raise ValueError(f"DISPATCH_MODE must be 'queue' or 'polling', got {value!r}")
    return mode


def restrict(task_types: Collection[str] | None) -> tuple[str, ...]:
    """The worker's --queues, validated against the known task types."""
    if not task_types:
        return TASK_TYPES
    unknown = set(task_types) - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"unknown queues {sorted(unknown)}; known: {', '.join(TASK_TYPES)}")
    return tuple(task_types)


def run_polling_worker(
    *,
    store: CampaignStore,
    registry: Registry,
    limiter: Any,
    max_token_sleep: float,
    task_types: Collection[str] | None,
    concurrency: int,
    burst: bool,
    env: Mapping[str, str],
) -> int:
    """``campaignctl worker`` with DISPATCH_MODE=polling: poll until SIGTERM/SIGINT (or one pass with --burst)."""
    dispatcher = PollingDispatcher(
        store=store,
        registry=registry,
        limiter=limiter,
        worker_id=new_worker_id(),
        task_types=restrict(task_types),
        max_token_sleep=max_token_sleep,
        poll_interval=env_float(env, "POLL_INTERVAL", DEFAULT_POLL_INTERVAL, positive=True),
        batch=env_int(env, "POLL_BATCH", DEFAULT_POLL_BATCH, positive=True),
        outage_backoff_max=env_float(env, "OUTAGE_BACKOFF_MAX", DEFAULT_OUTAGE_BACKOFF_MAX, positive=True),
    )
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: dispatcher.stop())
    log.info("polling worker %s on %s (concurrency %d)", dispatcher.worker_id, ",".join(dispatcher.task_types),
             concurrency)
    dispatcher.run(concurrency, burst=burst)
    log.info("polling worker %s stopped after %d stages", dispatcher.worker_id, dispatcher.handled)
    return 0
