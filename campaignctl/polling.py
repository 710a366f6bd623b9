"""The legacy dispatch, behind the feature flag ``DISPATCH_MODE=polling``.

The old system found work by polling the database from each service. This
module keeps that dispatch available — for a gradual rollout (run both side by
side, then switch) and as a rollback if the Redis queues misbehave — while
running the **same** stage handlers through the **same** store and machine as
the queue workers. Handlers cannot tell the difference: they get a context
object with the surface of ``engine.context.TaskContext`` (``task``,
``worker_id``, ``attempt``, ``acquire``, ``pause``, ``enqueue``,
``heartbeat``, ``lease_lost``), the shared Redis rate limiter still guards
every provider, and ``engine.outcome.decide`` says what a handler's ending
means, as it does for the queue worker.

Everything a poller knows lives in the campaign's row, so it holds across
threads, processes, hosts and restarts, on SQLite and PostgreSQL alike:

- A claim is a compare-and-set ``UPDATE campaigns SET claimed_by=<token>,
  claimed_until=now+POLL_LEASE WHERE id=? AND version=? AND <not claimed, not
  backing off>``; the row that changes is ours. Claimed rows are skipped in the
  candidates' SQL, so running campaigns never fill a poller's ``LIMIT
  POLL_BATCH``. A claim lapses after POLL_LEASE: a dead poller's campaign is
  taken by another. While a stage runs, the dispatcher's claim keeper renews
  its claim every POLL_LEASE/3 (``PollingContext.heartbeat()`` renews it at
  once). No connection is held while a stage runs.
- Attempts and backoff (``poll_attempts``, ``poll_not_before``) belong to the
  campaign version they were counted at (``poll_version``): the next stage, or
  a retry of a failed campaign, starts at 0; max attempts hold fleet-wide.

Every write of a stage is still a compare-and-set, so a duplicate run is a
no-op, and polling workers can run next to queue workers on the same database.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs
import redis
from sqlalchemy import Engine, or_, select, update

from engine import metrics
from engine.env import env_float, env_int
from engine.identity import new_worker_id
from engine.loop import FIRST_RETRY, Outage
from engine.outcome import Action, Outcome, decide
from engine.ratelimit import wait_for_token
from engine.registry import Registry
from engine.settings import DEFAULT_OUTAGE_BACKOFF_MAX, DEFAULT_VISIBILITY_TIMEOUT
from engine.task import Task
from workflow.db import make_engine
from workflow.models import Campaign, utcnow
from workflow.states import EMAIL_SENDING, TASK_TYPES, Stage, Status, expected_position
from workflow.store import CampaignStore, Expect

log = logging.getLogger(__name__)

#: Pause between two polls that found nothing to do, in s.
DEFAULT_POLL_INTERVAL = 1.0
#: Candidates read per poll.
DEFAULT_POLL_BATCH = 20
#: How long a poller's claim on a campaign lasts unless renewed, in s (POLL_LEASE; default VISIBILITY_TIMEOUT).
DEFAULT_POLL_LEASE = DEFAULT_VISIBILITY_TIMEOUT

campaigns = Campaign.__table__


@attrs.frozen
class PollClaim:
    """One campaign a poller holds: where it was, the claim token, the attempts already spent there."""

    campaign_id: int
    task_type: str
    version: int
    run_id: int
    token: str
    attempts: int


class PollingContext:
    """The ``TaskContext`` surface for a handler run by the poller.

    ``enqueue`` records nothing: in polling mode the database is the queue, and
    the next stage's poller finds the campaign there. ``attempt`` is the claim
    token (unique to this claim, like a queue lease's token); ``heartbeat``
    renews the claim and sets ``lease_lost`` when it was taken away.
    """

    def __init__(self, task: Task, worker_id: str, limiter: Any, max_token_sleep: float,
                 stop: threading.Event | None = None, *, attempt: str | None = None,
                 renew: Callable[[], bool] | None = None) -> None:
        self.task = task
        self.worker_id = worker_id
        self.attempt = attempt or uuid.uuid4().hex
        self._limiter = limiter
        self._max_token_sleep = max_token_sleep
        self._stop = stop or threading.Event()
        self._renew = renew
        #: Set when a renewal found the claim gone (it lapsed and another poller took the campaign).
        self.lease_lost = threading.Event()

    def acquire(self, api: str) -> None:
        """Reserve a token of ``api``'s shared bucket and sleep once until its slot, or defer the stage if the
        slot is too far (the queue worker's way, engine.ratelimit.wait_for_token; a shutdown cancels the wait)."""
        wait_for_token(self._limiter, api, self._max_token_sleep, self._stop)

    def pause(self, api: str, seconds: float) -> None:
        self._limiter.pause(api, seconds)
        metrics.throttled(api)
        self._limiter.controls.controls.count_throttle(api)

    def enqueue(self, task_type: str, campaign_id: int, run_id: int | None = None) -> None:
        return None

    def heartbeat(self) -> bool:
        """Renew the claim now; False (and ``lease_lost`` set) when it is no longer ours."""
        if self.lease_lost.is_set():
            return False
        if self._renew is not None and not self._renew():
            self.lease_lost.set()
            return False
        return True


class _ClaimKeeper:
    """Renews the claims of the stages a dispatcher is running, so a stage longer than POLL_LEASE keeps its campaign.

    The polling counterpart of the queue worker's heartbeat: one thread per
    dispatcher, one UPDATE per round for every claim it holds; a claim found
    gone (it lapsed and another poller took the campaign) sets its context's
    ``lease_lost``. A failed round (the database down) is retried next round.
    """

    #: Rounds per POLL_LEASE: a claim survives two missed rounds.
    ROUNDS_PER_LEASE = 3

    def __init__(self, engine: Callable[[], Engine], lease: float) -> None:
        self._engine = engine
        self.lease = lease
        self._lock = threading.Lock()
        self._held: dict[str, tuple[PollClaim, PollingContext]] = {}

    def hold(self, claim: PollClaim, ctx: PollingContext) -> None:
        with self._lock:
            self._held[claim.token] = (claim, ctx)

    def drop(self, claim: PollClaim) -> None:
        with self._lock:
            self._held.pop(claim.token, None)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease / self.ROUNDS_PER_LEASE):
            try:
                self.renew_all()
            except Exception as exc:  # noqa: BLE001 - next round tries again; the claims last a lease
                log.warning("polling: renewing claims failed (%s); trying again in %.1fs", exc,
                            self.lease / self.ROUNDS_PER_LEASE)

    def renew_all(self) -> int:
        """Extend every held claim by POLL_LEASE from now; returns how many were lost."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return 0
        owned = campaigns.c.claimed_by.in_(list(held))
        with self._engine().begin() as conn:
            conn.execute(update(campaigns).where(owned)
                         .values(claimed_until=utcnow() + dt.timedelta(seconds=self.lease)))
            kept = set(conn.execute(select(campaigns.c.claimed_by).where(owned)).scalars())
        lost = [ctx for token, (_, ctx) in held.items() if token not in kept]
        for ctx in lost:
            ctx.lease_lost.set()
        return len(lost)


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
        lease: float = DEFAULT_POLL_LEASE,
        start_due: bool | None = None,
        outage_backoff_max: float = DEFAULT_OUTAGE_BACKOFF_MAX,
    ) -> None:
        unknown = set(task_types) - set(registry.task_types)
        if unknown:
            raise ValueError(f"no handler for task types {sorted(unknown)}")
        self.store = store
        self.registry = registry
        self.limiter = limiter
        self.worker_id = worker_id
        self.task_types = tuple(task_types)
        self.max_token_sleep = max_token_sleep
        self.poll_interval = poll_interval
        self.batch = batch
        self.lease = lease
        #: The property_data poller also starts due campaigns, as the old property service did.
        self.start_due = (Stage.PROPERTY_DATA.value in self.task_types) if start_due is None else start_due
        self.stop_event = threading.Event()
        self.keeper = _ClaimKeeper(lambda: self.store.engine, lease)
        self._count_lock = threading.Lock()
        #: Releases that failed (the database was down), retried before each claim: (claim, values).
        self._unreleased: list[tuple[PollClaim, dict[str, Any]]] = []
        self.handled = 0
        #: A poll failing (the database down): its backoff and its once-per-outage log lines.
        self._poll_outage = Outage(f"polling worker {worker_id}: database", base=poll_interval,
                                   cap=outage_backoff_max, is_outage=registry.is_outage, logger=log)
        #: Stages failing on an outage: deferred with the backoff the queue worker uses, no attempt spent.
        self._task_outage = Outage(f"polling worker {worker_id}: a service the handlers need", base=FIRST_RETRY,
                                   cap=outage_backoff_max, is_outage=registry.is_outage, logger=log,
                                   consequence="deferring their stages without spending attempts, with backoff")

    @property
    def engine(self) -> Engine:
        return self.store.engine

    # -- running ------------------------------------------------------------

    def run(self, concurrency: int = 1, *, burst: bool = False) -> None:
        """Poll until ``stop()`` (or, with ``burst``, until a poll finds nothing)."""
        threads = [threading.Thread(target=self._loop, args=(burst,), name=f"poller-{i}", daemon=True)
                   for i in range(concurrency)]
        keeper_stop = threading.Event()
        keeper = threading.Thread(target=self.keeper.run, args=(keeper_stop,), name="claim-keeper", daemon=True)
        keeper.start()
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
        keeper_stop.set()
        keeper.join()

    def stop(self) -> None:
        self.stop_event.set()

    def _loop(self, burst: bool) -> None:
        while not self.stop_event.is_set():
            metrics.loop_alive()
            try:
                did = self.poll_once()
                self._poll_outage.ok()
            except Exception as exc:  # noqa: BLE001 - a lost database connection must not end the poller
                # One warning per outage (not a traceback per poll), backing off to OUTAGE_BACKOFF_MAX.
                self.stop_event.wait(self._poll_outage.failed(exc))
                continue
            if did == 0:
                if burst:
                    return
                self.stop_event.wait(self.poll_interval)

    def poll_once(self) -> int:
        """Start due campaigns (if asked), then claim and run one campaign. Returns 1 if it did anything."""
        started = 0
        self._retry_releases()
        if self.start_due:
            started = len(self.store.start_due(limit=self.batch, worker_id=self.worker_id))
        claim = self.claim()
        if claim is None:
            return 1 if started else 0
        self.run_claimed(claim)
        return 1

    # -- claiming -------------------------------------------------------------

    def _available(self, now: dt.datetime) -> Any:
        """Neither claimed by a live poller nor backing off at the campaign's current version."""
        c = campaigns.c
        return (or_(c.claimed_until.is_(None), c.claimed_until < now)
                & or_(c.poll_not_before.is_(None), c.poll_not_before <= now, c.poll_version.is_(None),
                      c.poll_version != c.version))

    def _candidates_query(self, now: dt.datetime) -> Any:
        stages = [t for t in self.task_types if t != EMAIL_SENDING]
        c = campaigns.c
        conditions = []
        if stages:
            conditions.append((c.campaign_status == Status.PROCESSING.value) & c.processing_stage.in_(stages))
        if EMAIL_SENDING in self.task_types:
            conditions.append(c.campaign_status == Status.READY_TO_SEND.value)
        return (
            select(c.id, c.campaign_status, c.processing_stage, c.version, c.run_id, c.poll_attempts, c.poll_version)
            .where(or_(*conditions), self._available(now))
            .order_by(c.updated_at, c.id)
            .limit(self.batch)
        )

    def claim(self) -> PollClaim | None:
        """Claim the first available candidate; None when every one is taken (or there are none)."""
        now = utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(self._candidates_query(now)).all()
        for row in rows:
            claim = self._take(row, now)
            if claim is not None:
                return claim
        return None

    def _take(self, row: Any, now: dt.datetime) -> PollClaim | None:
        """The compare-and-set claim of one candidate: ours if it is still where, and as free as, we read it."""
        token = f"{self.worker_id}/{uuid.uuid4().hex[:12]}"
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(campaigns)
                .where(campaigns.c.id == row.id, campaigns.c.version == row.version, self._available(now))
                .values(claimed_by=token, claimed_until=now + dt.timedelta(seconds=self.lease))
            ).rowcount
        if changed != 1:
            return None
        attempts = row.poll_attempts if row.poll_version == row.version else 0
        return PollClaim(row.id, _task_type(row.campaign_status, row.processing_stage), row.version, row.run_id,
                         token, attempts)

    def renew(self, claim: PollClaim) -> bool:
        """Extend ``claim`` by POLL_LEASE from now; False when it lapsed and another poller took it."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(campaigns)
                .where(campaigns.c.id == claim.campaign_id, campaigns.c.claimed_by == claim.token)
                .values(claimed_until=utcnow() + dt.timedelta(seconds=self.lease))
            ).rowcount == 1

    def _settle(self, claim: PollClaim, *, attempts: int = 0, delay: float | None = None) -> None:
        """Release the claim and write the stage's bookkeeping: attempts spent, and no run before ``delay`` s.

        When the database is down this raises, and the release is retried before the next claim.
        """
        values: dict[str, Any] = {"claimed_by": None, "claimed_until": None, "poll_attempts": attempts,
                                  "poll_version": claim.version if delay is not None else None,
                                  "poll_not_before": utcnow() + dt.timedelta(seconds=delay) if delay is not None
                                  else None}
        try:
            self._release(claim, values)
        except Exception:
            # Kept and retried before the next claim (at worst the claim lapses on its own after POLL_LEASE);
            # raised, so the poll loop backs off as for any outage instead of calling the poll a success.
            with self._count_lock:
                self._unreleased.append((claim, values))
            raise

    def _release(self, claim: PollClaim, values: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(campaigns)
                         .where(campaigns.c.id == claim.campaign_id, campaigns.c.claimed_by == claim.token)
                         .values(**values))

    def _retry_releases(self) -> None:
        """Release the claims an outage kept us from releasing (raises while the database is still down)."""
        with self._count_lock:
            pending, self._unreleased = self._unreleased, []
        for i, (claim, values) in enumerate(pending):
            try:
                self._release(claim, values)
            except Exception:
                with self._count_lock:
                    self._unreleased.extend(pending[i:])
                raise

    # -- running one stage -------------------------------------------------------

    def run_claimed(self, claim: PollClaim) -> Outcome:
        """Run the handler of a claimed campaign and carry out what its ending means (engine.outcome.decide)."""
        task = attrs.evolve(Task.new(claim.task_type, claim.campaign_id, run_id=claim.run_id),
                            retry_count=claim.attempts)
        ctx = PollingContext(task, self.worker_id, self.limiter, self.max_token_sleep, self.stop_event,
                             attempt=claim.token, renew=lambda: self.renew(claim))
        handler = self.registry.handler(claim.task_type)
        assert handler is not None
        error: Exception | None = None
        self.keeper.hold(claim, ctx)
        started = time.monotonic()
        try:
            handler(task, ctx)
        except Exception as exc:  # noqa: BLE001 - every ending is decide()'s to judge
            error = exc
        finally:
            self.keeper.drop(claim)
            metrics.task_ran(claim.task_type, time.monotonic() - started)
        outcome = decide(task, error, self.registry.policy(claim.task_type), self.registry.is_outage)
        self._carry_out(claim, task, outcome, error)
        return outcome

    def _carry_out(self, claim: PollClaim, task: Task, outcome: Outcome, error: Exception | None) -> None:
        cid, task_type = claim.campaign_id, claim.task_type
        metrics.task_settled(task_type, _SETTLE_STEP[outcome.action], True)
        if outcome.action is Action.ACK:
            if outcome.reason:
                log.info("campaign %s %s: %s", cid, task_type, outcome.reason)
            self._task_outage.ok()
            with self._count_lock:
                self.handled += 1
            self._settle(claim)
        elif outcome.action is Action.DEFER:
            if outcome.pause_api and self.limiter is not None:
                self.limiter.pause(outcome.pause_api, outcome.delay)
            self._settle(claim, attempts=claim.attempts, delay=outcome.delay)
        elif outcome.action is Action.OUTAGE:
            assert error is not None
            self._settle(claim, attempts=claim.attempts, delay=self._task_outage.failed(error))
        elif outcome.action is Action.RETRY:
            log.warning("campaign %s %s: %s", cid, task_type, outcome.reason)
            self._settle(claim, attempts=claim.attempts + 1, delay=outcome.delay)
        else:
            self._dead(task, outcome.reason, outcome.error)
            self._settle(claim)

    def _dead(self, task: Task, reason: str, error: str | None) -> None:
        """What the queue engine does with a dead letter: the app's hooks move the campaign to ERROR.

        The fail below is a compare-and-set no-op when a hook already did it; it
        keeps a poller with a bare registry from retrying a dead stage forever.
        """
        self.registry.dead_lettered(task, reason, error)
        status, stage = expected_position(task.task_type)
        self.store.apply(task.campaign_id, "fail", expect=Expect(status=status, stage=stage, run_id=task.run_id),
                         task_id=task.task_id, worker_id=self.worker_id, error=reason)


#: The queue worker's name of the settle step each outcome is (engine.metrics counts them alike).
_SETTLE_STEP = {Action.ACK: "ack", Action.DEFER: "defer", Action.OUTAGE: "outage deferral", Action.RETRY: "retry",
                Action.DEAD: "dead-letter"}


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


def _prime_buckets(limiter: Any) -> None:
    """As a queue worker does: a fleet starting from nothing opens its buckets at once (engine.ratelimit)."""
    if limiter is None:
        return
    try:
        limiter.prime_if_fleet_starts()
    except redis.RedisError as exc:
        log.info("could not prime the rate-limit buckets (%s); they open MAX_TOKEN_SLEEP after first use", exc)


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
    """``campaignctl worker`` with DISPATCH_MODE=polling: poll until SIGTERM/SIGINT (or one pass with --burst).

    The store's engine (shared with the handlers) is replaced by one whose pool
    fits ``concurrency`` threads, so no handler waits for a connection.
    """
    _size_pool(store, concurrency)
    _prime_buckets(limiter)
    dispatcher = PollingDispatcher(
        store=store,
        registry=registry,
        limiter=limiter,
        worker_id=new_worker_id(),
        task_types=restrict(task_types),
        max_token_sleep=max_token_sleep,
        poll_interval=env_float(env, "POLL_INTERVAL", DEFAULT_POLL_INTERVAL, positive=True),
        batch=env_int(env, "POLL_BATCH", DEFAULT_POLL_BATCH, positive=True),
        lease=env_float(env, "POLL_LEASE", env_float(env, "VISIBILITY_TIMEOUT", DEFAULT_POLL_LEASE), positive=True),
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


def _size_pool(store: CampaignStore, concurrency: int) -> None:
    old = store.engine
    store.engine = make_engine(old.url.render_as_string(hide_password=False), concurrency=concurrency)
    old.dispose()
