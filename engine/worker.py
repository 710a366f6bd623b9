"""The worker process: one claim loop, handler threads, a settler thread, a heartbeat thread.

The claim loop leases up to as many tasks as there are free slots (prefetch =
concurrency, so no leased task waits behind a busy thread) and hands them to
the handler threads. A handler that returns puts its task on the settler's
list; the settler acknowledges everything finished since its last round trip
in ONE fenced ack.lua call (group commit: the busier the worker, the bigger
the batch, and an idle worker still acks after one round trip), and only then
frees the slots. Other outcomes (retry, deferral, dead letter) are rare and
settled by the handler thread itself. The heartbeat thread renews the
worker's liveness key and every held lease in one pipeline, and gives up on
tasks that ran past their time limit. A worker that dies is noticed by
recovery within LIVENESS_TTL, not the visibility timeout.

Outages: while Redis is down the claim loop backs off (engine.loop.Outage)
and the heartbeat keeps trying; a handler that fails because a service it
needs is down (``Registry.is_outage``: Redis, ``Unavailable``, or the
application's test, e.g. the database driver's connection errors) has its
task deferred with the outage backoff without spending an attempt, so a
database restart never exhausts retry budgets or dead-letters campaigns.
"""

from __future__ import annotations

import json
import logging
import os
import queue as stdqueue
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
import redis

from engine import metrics
from engine import logcontext
from engine.controls import ControlCache, Controls
from engine.context import TaskContext
from engine.connection import connection_name
from engine.errors import describe
from engine.identity import new_worker_id
from engine.loop import FIRST_RETRY, Outage
from engine.outcome import Action, decide
from engine.queue import Lease, TaskQueue
from engine.ratelimit import RateLimiter
from engine.registry import Registry
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: Handler threads per worker process when none is given. No-op throughput grows with it up to
#: about 16 (bigger claim and ack batches per round trip) and stays flat beyond; real handlers
#: spend most of their time waiting on HTTP or on a rate-limit token (up to MAX_TOKEN_SLEEP), and
#: 16 such waits per process still leave the other queues threads to run on.
DEFAULT_CONCURRENCY = 16
#: How often the claim loop moves due delayed tasks to their ready lists, in s.
PROMOTE_INTERVAL = 0.5
#: First pause of the claim loop after a Redis connection error; grows to OUTAGE_BACKOFF_MAX, in s.
REDIS_ERROR_BACKOFF = 1.0
#: Longest block on an empty queue in --burst mode, in s.
BURST_BLOCK = 0.1


@attrs.define(eq=False)
class _Job:
    lease: Lease
    #: Seconds the handler may run before the worker gives the task up (0: no limit).
    time_limit: float
    ctx: TaskContext | None = None
    #: monotonic() when the handler started; None while the job waits for a thread.
    started: float | None = None
    #: The handler returned (or raised); what is left is settling it.
    finished: bool = False
    #: Given up after its time limit: the slot is free again and its thread exits when the handler returns.
    expired: bool = False


class Worker:
    """Runs the handlers of ``registry`` for tasks of ``queues``.

    Parameters:
        client: a Redis client (decoded responses).
        settings: timers and the key prefix.
        registry: task type -> handler and retry policy, plus dead-letter hooks.
        limiter: the shared rate limiter handed to handlers through TaskContext (None: no limits).
        queues: task types to consume, drained in this order (default: every registered type).
        concurrency: handler threads, and so the most tasks held at once (default DEFAULT_CONCURRENCY).
        burst: exit once these queues, their delayed sets and this worker's tasks are all empty.
        task_types: every task type the application knows (payload validation); default the registry's.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: EngineSettings,
        registry: Registry,
        limiter: RateLimiter | None = None,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        burst: bool = False,
        *,
        task_types: Sequence[str] | None = None,
        worker_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.redis = client
        self.settings = settings
        self.registry = registry
        self.limiter = limiter
        self.queues = tuple(queues or registry.task_types)
        self.concurrency = concurrency
        self.burst = burst
        self.worker_id = worker_id or new_worker_id()
        self.queue = TaskQueue(client, settings, task_types or registry.task_types)
        self.keys = self.queue.keys
        registry.bind_outbox(self.queue.defer_hook)
        #: Operator controls (engine/controls.py): queues paused at runtime are not claimed.
        self._controls = ControlCache(Controls(client, settings.key_prefix))
        self.started_at = time.time()
        self._stop = threading.Event()
        #: Stops the heartbeat; set only once shutdown is done, so liveness and leases are kept during the grace.
        self._heartbeat_stop = threading.Event()
        self._slot_free = threading.Event()
        self._lock = threading.Lock()
        #: Notified (under _lock) whenever a job leaves _jobs.
        self._changed = threading.Condition(self._lock)
        #: Every task this worker holds a lease on, by task id: waiting, running, or waiting for its ack.
        self._jobs: dict[str, _Job] = {}
        #: Leased jobs for the handler threads; None tells a thread to exit.
        self._work: stdqueue.SimpleQueue[_Job | None] = stdqueue.SimpleQueue()
        #: Jobs whose handler returned, for the settler's next ack call.
        self._acks: list[_Job] = []
        self._ack_ready = threading.Event()
        self._settler_stop = False
        #: Jobs the heartbeat found past their time limit, for the reaper to give up (None: exit).
        self._overdue: stdqueue.SimpleQueue[_Job | None] = stdqueue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._time_limits: dict[str, float] = {}
        self._abandon = False
        #: True when handlers were still running after the grace period (the process should exit hard).
        self.left_running = False
        cap = settings.outage_backoff_max
        #: Redis failing the claim loop, the heartbeat, and handlers failing on an outage: backoff and log lines.
        self._claim_outage = Outage(f"worker {self.worker_id}: Redis (claiming tasks)", base=REDIS_ERROR_BACKOFF,
                                    cap=cap, logger=log)
        self._beat_outage = Outage(f"worker {self.worker_id}: heartbeat", base=settings.heartbeat_interval or 1.0,
                                   cap=cap, logger=log, consequence="trying again every HEARTBEAT_INTERVAL")
        self._task_outage = Outage(
            f"worker {self.worker_id}: a service the handlers need", base=FIRST_RETRY, cap=cap,
            is_outage=registry.is_outage, logger=log,
            consequence=f"deferring their tasks without spending attempts, with backoff (at most {max(cap, FIRST_RETRY):g}s)")
        if settings.heartbeat_interval >= settings.liveness_ttl:
            log.warning("HEARTBEAT_INTERVAL (%ss) should be well below LIVENESS_TTL (%ss)",
                        settings.heartbeat_interval, settings.liveness_ttl)

    # -- life cycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running handlers finish (up to SHUTDOWN_GRACE)."""
        self._stop.set()
        self._slot_free.set()

    def _on_signal(self, *_: object) -> None:
        # The handler runs in the main thread, possibly while that thread is inside _slot_free.wait()
        # holding the event's lock: setting the event right here would deadlock. A thread can wait for it.
        threading.Thread(target=self.stop, name="stop", daemon=True).start()

    def run(self, *, install_signals: bool = True) -> int:
        """Work until stopped (SIGTERM/SIGINT) or, with ``burst``, until nothing is left. Returns 0."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        logcontext.set_worker(self.worker_id)
        self._prime_buckets()
        self._beat()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        settler = threading.Thread(target=self._settle_loop, name="settler", daemon=True)
        settler.start()
        reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)
        reaper.start()
        for _ in range(self.concurrency):
            self._spawn_handler()
        log.info("worker %s up: queues %s, concurrency %d%s", self.worker_id, ",".join(self.queues),
                 self.concurrency, ", burst" if self.burst else "")
        try:
            self._claim_loop()
        finally:
            self._shutdown(settler, heartbeat)
            self._overdue.put(None)
            reaper.join(timeout=5.0)
        return 0

    def _prime_buckets(self) -> None:
        """The first worker of a fleet (none registered yet) opens the buckets that have no keys now.

        Otherwise a bucket without keys opens MAX_TOKEN_SLEEP after its first
        call (acquire_token.lua: Redis may have lost it while callers slept on
        its slots). With no worker registered there is nobody asleep on one.
        """
        if self.limiter is None:
            return
        try:
            primed = self.limiter.prime_if_fleet_starts()
            if primed:
                log.info("worker %s: first of the fleet, rate-limit buckets open now: %s", self.worker_id,
                         ", ".join(primed))
        except redis.RedisError as exc:
            log.info("could not prime the rate-limit buckets (%s); they open MAX_TOKEN_SLEEP after first use", exc)

    def _claim_loop(self) -> None:
        next_promote = 0.0
        while not self._stop.is_set():
            metrics.loop_alive()
            free = self.concurrency - len(self._jobs)
            if free <= 0:
                self._slot_free.wait(self.settings.claim_block)
                self._slot_free.clear()
                continue
            try:
                now = time.monotonic()
                if now >= next_promote:
                    self.queue.promote_due(self.queues)
                    next_promote = now + PROMOTE_INTERVAL
                block = min(BURST_BLOCK, self.settings.claim_block) if self.burst else self.settings.claim_block
                active = self._controls.active(self.queues)
                if not active:  # every queue of this worker is paused by an operator
                    self._stop.wait(self.settings.claim_block)
                    continue
                claim = self.queue.claim(self.worker_id, active, free, block=block)
                for entry in claim.rejected:
                    self.registry.dead_lettered(None, entry["reason"], entry.get("error"))
                for lease in claim.leases:
                    self._start(lease)
                done = self.burst and not claim.leases and not claim.rejected and self._burst_done()
            except redis.RedisError as exc:
                if not self._claim_outage.is_outage(exc):
                    raise
                self._stop.wait(self._claim_outage.failed(exc))
                continue
            self._claim_outage.ok()
            if done:
                log.info("worker %s: burst done, nothing left", self.worker_id)
                return

    def _burst_done(self) -> bool:
        if self._jobs:
            self._slot_free.wait(BURST_BLOCK)
            self._slot_free.clear()
            return False
        if self.queue.pending(self._controls.active(self.queues)) or self.queue.holds_anything(self.worker_id):
            self._stop.wait(BURST_BLOCK)  # delayed tasks not yet due
            return False
        return True

    def _shutdown(self, settler: threading.Thread, heartbeat: threading.Thread) -> None:
        """Let running handlers finish up to the grace period; release the rest to the front of their queue.

        The heartbeat goes on during the grace period: a worker finishing a
        long task must not look dead to recovery (LIVENESS_TTL is shorter
        than SHUTDOWN_GRACE by default) nor let the task's lease lapse.
        """
        self._stop.set()
        with self._changed:
            if self._jobs:
                log.info("worker %s stopping: waiting up to %ss for %d task(s)", self.worker_id,
                         self.settings.shutdown_grace, len(self._jobs))
                self._changed.wait_for(lambda: not self._jobs, timeout=self.settings.shutdown_grace)
            self._abandon = True
            leftovers = [j for j in self._jobs.values() if not j.finished]
        self._heartbeat_stop.set()
        heartbeat.join(timeout=self.settings.heartbeat_interval + 5)
        # The settler acks what finished (also during the grace period above), then exits.
        self._settler_stop = True
        self._ack_ready.set()
        settler.join(timeout=self.settings.shutdown_grace)
        for job in leftovers:
            # A handler past the grace period counts as a lease loss, so one that never finishes is bounded.
            running = job.started is not None
            task = job.lease.task
            try:
                if running:
                    given = self.queue.give_up(job.lease, "still running after the shutdown grace")
                    released = given is not None
                    if given is not None and given.action == "dead":
                        self.registry.dead_lettered(task, given.entry["reason"] if given.entry else "", None)
                else:
                    released = self.queue.release(job.lease)
            except redis.RedisError as exc:
                log.warning("could not release %s (%s); recovery will requeue it", task.task_id, exc)
                continue
            log.info("released %s %s (%s)", task.task_type, task.task_id,
                     "still running after the grace period" if running else "not started")
            if not released:
                log.warning("lease lost: %s %s", task.task_type, task.task_id)
        self.left_running = any(j.started is not None for j in leftovers)
        for _ in self._threads:
            self._work.put(None)
        if not self.left_running:
            for thread in self._threads:
                thread.join(timeout=1.0)
        try:
            self.queue.recover_claiming(self.worker_id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.worker(self.worker_id))
            pipe.hdel(self.keys.workers, self.worker_id)
            for t in self.queue.task_types:
                # Only stale members are left: all was settled.
                pipe.delete(self.keys.wtasks(t, self.worker_id))
                pipe.delete(self.keys.liveness(t, self.worker_id))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not unregister %s (%s); recovery will", self.worker_id, exc)

    # -- running tasks ------------------------------------------------------------------

    def _spawn_handler(self) -> None:
        thread = threading.Thread(target=self._handler_loop, name=f"handler_{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _time_limit(self, task_type: str) -> float:
        limit = self._time_limits.get(task_type)
        if limit is None:
            policy_limit = self.registry.policy(task_type).time_limit
            limit = self.settings.task_time_limit if policy_limit is None else policy_limit
            self._time_limits[task_type] = limit
        return limit

    def _start(self, lease: Lease) -> None:
        job = _Job(lease, self._time_limit(lease.task.task_type))
        with self._lock:
            self._jobs[lease.task.task_id] = job
        self._work.put(job)

    def _handler_loop(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            with self._lock:
                if self._abandon:
                    continue  # shutting down: the job is released as not started
                job.started = time.monotonic()
            task = job.lease.task
            try:
                with logcontext.task_scope(task.task_id, task.campaign_id, task.task_type):
                    self._handle(job)
            except BaseException as exc:  # noqa: BLE001 - settling failed (Redis down): recovery will requeue the task
                task = job.lease.task
                if isinstance(exc, Exception) and self._claim_outage.is_outage(exc):
                    log.warning("could not settle %s %s (%s); recovery will requeue it", task.task_type, task.task_id,
                                describe(exc))
                else:
                    log.exception("could not settle %s %s", task.task_type, task.task_id)
                self._finish([job])
            if job.expired:
                return  # a fresh thread took this one's place when the task was given up

    def _stop_aware_sleep(self, seconds: float) -> None:
        # A token wait is never longer than MAX_TOKEN_SLEEP; sleeping through a shutdown is within the grace.
        time.sleep(seconds)

    def _handle(self, job: _Job) -> None:
        lease = job.lease
        task = lease.task
        ctx = job.ctx = TaskContext(
            task, self.worker_id, queue=self.queue, limiter=self.limiter,
            max_token_sleep=self.settings.max_token_sleep,
            heartbeat=lambda: self._renew_one(lease),
            sleep=self._stop_aware_sleep,
            attempt=lease.attempt,
        )
        handler = self.registry.handler(task.task_type)
        if handler is None:
            self._returned(job)
            self._dead(job, f"no handler registered for task type {task.task_type!r}", None)
            return
        error: BaseException | None = None
        try:
            handler(task, ctx)
        except Exception as exc:  # noqa: BLE001 - what it means is decided by engine.outcome
            error = exc
        self._returned(job)
        outcome = decide(task, error, self.registry.policy(task.task_type), self.registry.is_outage)
        if outcome.action is Action.ACK:
            if outcome.reason:
                log.info("task %s %s %s", task.task_type, task.task_id, outcome.reason)
            self._queue_ack(job)
            self._task_outage.ok()
        elif outcome.action is Action.DEFER:
            if outcome.pause_api and self.limiter is not None:
                try:
                    self.limiter.pause(outcome.pause_api, outcome.delay)
                except KeyError:
                    log.warning("handler asked to pause unknown API %r", outcome.pause_api)
            self._settle(job, self.queue.retry(lease, outcome.delay, spend_attempt=False), "defer")
        elif outcome.action is Action.OUTAGE:
            assert isinstance(error, Exception)
            self._defer_for_outage(job, error)
        elif outcome.action is Action.DEAD:
            self._dead(job, outcome.reason, outcome.error)
        else:
            log.info("task %s %s failed, retrying in %.2fs: %s", task.task_type, task.task_id, outcome.delay,
                     outcome.reason)
            self._settle(job, self.queue.retry(lease, outcome.delay), "retry")

    def _defer_for_outage(self, job: _Job, exc: Exception) -> None:
        """A service the handler needs is down: not the task's fault, so no attempt is spent.

        The wait grows with the outage (engine.retry.OutageBackoff, shared by
        every handler thread of this worker) up to OUTAGE_BACKOFF_MAX; the
        first deferral of an outage logs one warning, the rest log at DEBUG.
        With no end to the deferrals a task can wait out any outage: with the
        database down there is nothing better to do anyway, since moving the
        campaign to ERROR needs the database too.
        """
        delay = self._task_outage.failed(exc)
        task = job.lease.task
        log.debug("task %s %s deferred %.2fs by an outage: %s", task.task_type, task.task_id, delay, describe(exc))
        self._settle(job, self.queue.retry(job.lease, delay, spend_attempt=False), "outage deferral")

    def _returned(self, job: _Job) -> None:
        """The handler is out: from now on the time limit no longer applies to this job."""
        with self._lock:
            job.finished = True
        metrics.task_ran(job.lease.task.task_type, time.monotonic() - (job.started or time.monotonic()))

    def _queue_ack(self, job: _Job) -> None:
        """Hand a finished job to the settler; its slot frees once the ack is stored."""
        with self._lock:
            self._acks.append(job)
        self._ack_ready.set()

    def _dead(self, job: _Job, reason: str, error: str | None) -> None:
        entry = self.queue.dead_letter(job.lease, reason, error)
        if self._settle(job, entry is not None, "dead-letter"):
            log.warning("task %s %s dead-lettered: %s", job.lease.task.task_type, job.lease.task.task_id, reason)
            self.registry.dead_lettered(job.lease.task, reason, entry["error"] if entry else None)

    def _settle(self, job: _Job, done: bool, what: str) -> bool:
        metrics.task_settled(job.lease.task.task_type, what, done)
        self._finish([job])
        if not done:
            self._lost(job, what)
        return done

    def _lost(self, job: _Job, what: str) -> None:
        task = job.lease.task
        if job.expired:
            log.warning("%s of %s %s rejected: the task was given up after its time limit", what,
                        task.task_type, task.task_id)
        else:
            log.warning("lease lost: %s of %s %s rejected (another worker holds it now or it was recovered)",
                        what, task.task_type, task.task_id)

    def _finish(self, jobs: Sequence[_Job]) -> None:
        """These jobs hold nothing any more: free their slots."""
        with self._changed:
            for job in jobs:
                task_id = job.lease.task.task_id
                if self._jobs.get(task_id) is job:
                    del self._jobs[task_id]
            self._changed.notify_all()
        self._slot_free.set()

    # -- settler ---------------------------------------------------------------------------

    def _settle_loop(self) -> None:
        """Group commit of acks: one ack.lua call for everything that finished during the previous one."""
        while True:
            if not self._settler_stop:  # stopping: drain without waiting, then exit
                self._ack_ready.wait()
            self._ack_ready.clear()
            with self._lock:
                batch, self._acks = self._acks, []
            if batch:
                self._flush_acks(batch)
            elif self._settler_stop:
                return

    def _flush_acks(self, batch: list[_Job]) -> None:
        try:
            results = self.queue.ack_many([job.lease for job in batch])
        except redis.RedisError as exc:
            # Not acked: their leases lapse (no longer renewed) and recovery requeues them: at least once.
            log.warning("could not acknowledge %d task(s) (%s); recovery will requeue them", len(batch), exc)
            results = [True] * len(batch)
        self._finish(batch)
        for job, ok in zip(batch, results):
            metrics.task_settled(job.lease.task.task_type, "ack", ok)
            if not ok:
                self._lost(job, "ack")

    # -- heartbeat -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Renew, and only renew: anything slow here (a database hook) would stop the beats past LIVENESS_TTL."""
        while not self._heartbeat_stop.wait(self.settings.heartbeat_interval):
            self._expire_overdue()
            self._beat()

    def _reap_loop(self) -> None:
        """Give up the tasks the heartbeat found past their time limit (Redis calls, the dead-letter hook)."""
        while True:
            job = self._overdue.get()
            if job is None:
                return
            started = job.started or time.monotonic()
            try:
                self._give_up(job, time.monotonic() - started)
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad give-up
                log.exception("could not give up %s %s", job.lease.task.task_type, job.lease.task.task_id)

    def info(self) -> dict[str, Any]:
        with self._lock:
            current = [f"{j.lease.task.task_type}:{j.lease.task.task_id}" for j in self._jobs.values()]
        return {
            "id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "started": self.started_at,
            "heartbeat": time.time(),
            "current_tasks": current,
            #: Recovery may judge this worker dead as soon as no connection of this name is left.
            "conn_named": connection_name(self.redis) == self.worker_id,
        }

    def _beat(self) -> None:
        """Liveness key, registry entry and every held lease, in one round trip."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.ctx is None or not j.ctx.lease_lost.is_set()]
        try:
            try:
                results = self._beat_once(jobs)
            except redis.exceptions.NoScriptError:
                # The pipeline checked the script cache on one server and ran on another (a restart or
                # failover in between): it loads the scripts again now. Waiting a whole interval would eat
                # into the lease when the server pauses next.
                results = self._beat_once(jobs)
        except redis.RedisError as exc:
            self._beat_outage.failed(exc)
            return
        self._beat_outage.ok()
        for job, ok in zip(jobs, results):
            # A job settled meanwhile has no lock to renew; one waiting for its ack learns of a lost lease from the ack.
            if not ok and not job.finished and self._still_running(job):
                if job.ctx is not None:
                    job.ctx.lease_lost.set()
                log.warning("lease lost: %s %s was taken away while running", job.lease.task.task_type,
                            job.lease.task.task_id)

    def _beat_once(self, jobs: list[_Job]) -> list[bool]:
        """The liveness key (and its copy in each consumed type's slot, for recovery's scripts), the registry
        entry, then every held lease (one renew call per task type)."""
        value, ttl = str(time.time()), max(1, int(self.settings.liveness_ttl * 1000))
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(self.worker_id), value, px=ttl)
        pipe.hset(self.keys.workers, self.worker_id, json.dumps(self.info()))
        for t in self._liveness_types():
            pipe.set(self.keys.liveness(t, self.worker_id), value, px=ttl)
        pipe.execute()
        return self.queue.renew([j.lease for j in jobs])

    def _liveness_types(self) -> set[str]:
        """The types whose slots need this worker's liveness copy: those it claims and those it holds."""
        with self._lock:
            held = {j.lease.task.task_type for j in self._jobs.values()}
        return set(self.queues) | held

    def _still_running(self, job: _Job) -> bool:
        with self._lock:
            return self._jobs.get(job.lease.task.task_id) is job

    def _expire_overdue(self) -> None:
        """Give up tasks whose handler ran past its time limit (a hung handler must not hold a task forever)."""
        now = time.monotonic()
        with self._lock:
            overdue = [j for j in self._jobs.values()
                       if j.time_limit > 0 and j.started is not None and not j.finished
                       # Waiting for a rate-limit token is not running long (TaskContext.waited).
                       and now - j.started - (j.ctx.waited if j.ctx is not None else 0.0) > j.time_limit]
            for job in overdue:
                job.expired = True
                del self._jobs[job.lease.task.task_id]
        for job in overdue:
            if job.ctx is not None:
                job.ctx.lease_lost.set()
            self._overdue.put(job)

    def _give_up(self, job: _Job, ran: float) -> None:
        """Release an overdue task as a lease loss (dead letter once it lost too many); free its slot.

        The handler thread cannot be killed; it is left to finish on its own
        and exits then, and a fresh thread takes its place now. Whatever the
        old handler settles later is fenced out: the lease is gone.
        """
        if job.ctx is not None:
            job.ctx.lease_lost.set()
        with self._lock:
            replace = not self._abandon
        if replace:
            self._spawn_handler()
        with self._changed:
            self._changed.notify_all()
        self._slot_free.set()
        task = job.lease.task
        metrics.task_settled(task.task_type, "time limit", False)
        try:
            given = self.queue.give_up(job.lease, f"ran past its time limit of {job.time_limit:g}s")
        except redis.RedisError as exc:
            log.warning("task %s %s ran past its time limit of %gs; could not release it (%s), recovery will",
                        task.task_type, task.task_id, job.time_limit, exc)
            return
        if given is None:
            log.info("task %s %s ran past its time limit but was settled meanwhile", task.task_type, task.task_id)
        elif given.action == "dead":
            reason = given.entry["reason"] if given.entry else "ran past its time limit"
            log.warning("task %s %s dead-lettered: %s", task.task_type, task.task_id, reason)
            self.registry.dead_lettered(task, reason, None)
        else:
            log.warning("task %s %s ran past its time limit of %gs (%.1fs): released to its queue as lease "
                        "loss %d of %d; its handler thread is abandoned", task.task_type, task.task_id,
                        job.time_limit, ran, given.task.lease_losses, self.settings.max_lease_losses)

    def _renew_one(self, lease: Lease) -> bool:
        ok = bool(self.queue.renew([lease])[0])
        if not ok:
            with self._lock:
                job = self._jobs.get(lease.task.task_id)
            if job is not None and job.ctx is not None:
                job.ctx.lease_lost.set()
        return ok

