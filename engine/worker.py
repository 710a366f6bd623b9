"""The worker process: one claim loop, a pool of handler threads, a heartbeat thread.

The claim loop leases up to as many tasks as there are free handler threads
(prefetch = concurrency, so no leased task waits behind a busy thread), the
pool runs the handlers, and the heartbeat thread renews the worker's liveness
key and every running task's lease in one pipeline. A worker that dies is
noticed by recovery within LIVENESS_TTL, not the visibility timeout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import attrs
import redis

from engine.context import TaskContext
from engine.errors import Discard, Permanent, RateLimited
from engine.identity import new_worker_id
from engine.queue import Lease, TaskQueue, redact
from engine.ratelimit import RateLimiter
from engine.registry import Registry
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: How often the claim loop moves due delayed tasks to their ready lists, in s.
PROMOTE_INTERVAL = 0.5
#: Shortest deferral of a rate-limited task (a 0 s Retry-After would spin), in s.
MIN_DEFER = 0.05
#: Pause after a Redis connection error before the loop tries again, in s.
REDIS_ERROR_BACKOFF = 1.0
#: Longest block on an empty queue in --burst mode, in s.
BURST_BLOCK = 0.1


@attrs.define
class _Job:
    lease: Lease
    ctx: TaskContext
    started: bool = False
    future: Future[None] | None = None


class Worker:
    """Runs the handlers of ``registry`` for tasks of ``queues``.

    Parameters:
        client: a Redis client (decoded responses).
        settings: timers and the key prefix.
        registry: task type -> handler and retry policy, plus dead-letter hooks.
        limiter: the shared rate limiter handed to handlers through TaskContext (None: no limits).
        queues: task types to consume, drained in this order (default: every registered type).
        concurrency: handler threads, and so the most tasks held at once.
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
        concurrency: int = 1,
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
        self.started_at = time.time()
        self._stop = threading.Event()
        self._slot_free = threading.Event()
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._abandon = False
        #: True when handlers were still running after the grace period (the process should exit hard).
        self.left_running = False
        if settings.heartbeat_interval >= settings.liveness_ttl:
            log.warning("HEARTBEAT_INTERVAL (%ss) should be well below LIVENESS_TTL (%ss)",
                        settings.heartbeat_interval, settings.liveness_ttl)

    # -- life cycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running handlers finish (up to SHUTDOWN_GRACE)."""
        self._stop.set()
        self._slot_free.set()

    def run(self, *, install_signals: bool = True) -> int:
        """Work until stopped (SIGTERM/SIGINT) or, with ``burst``, until nothing is left. Returns 0."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self._beat()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="handler")
        log.info("worker %s up: queues %s, concurrency %d%s", self.worker_id, ",".join(self.queues),
                 self.concurrency, ", burst" if self.burst else "")
        try:
            self._claim_loop(pool)
        finally:
            self._shutdown(pool)
            heartbeat.join(timeout=self.settings.heartbeat_interval + 1)
        return 0

    def _claim_loop(self, pool: ThreadPoolExecutor) -> None:
        next_promote = 0.0
        while not self._stop.is_set():
            free = self.concurrency - self._active()
            if free <= 0:
                self._slot_free.wait(self.settings.claim_block)
                self._slot_free.clear()
                continue
            try:
                if time.monotonic() >= next_promote:
                    self.queue.promote_due(self.queues)
                    next_promote = time.monotonic() + PROMOTE_INTERVAL
                block = min(BURST_BLOCK, self.settings.claim_block) if self.burst else self.settings.claim_block
                claim = self.queue.claim(self.worker_id, self.queues, free, block=block)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("Redis unavailable in the claim loop (%s); retrying in %ss", exc, REDIS_ERROR_BACKOFF)
                self._stop.wait(REDIS_ERROR_BACKOFF)
                continue
            for entry in claim.rejected:
                self.registry.dead_lettered(None, entry["reason"], entry.get("error"))
            for lease in claim.leases:
                self._start(pool, lease)
            if self.burst and not claim.leases and not claim.rejected and self._burst_done():
                log.info("worker %s: burst done, nothing left", self.worker_id)
                return

    def _burst_done(self) -> bool:
        if self._active():
            self._slot_free.wait(BURST_BLOCK)
            self._slot_free.clear()
            return False
        if self.queue.pending(self.queues) or self.redis.llen(self.keys.claiming(self.worker_id)):
            self._stop.wait(BURST_BLOCK)  # delayed tasks not yet due
            return False
        return True

    def _shutdown(self, pool: ThreadPoolExecutor) -> None:
        """Let running handlers finish up to the grace period; release the rest to the front of their queue."""
        with self._lock:
            futures = [j.future for j in self._jobs.values() if j.future is not None]
        if futures:
            log.info("worker %s stopping: waiting up to %ss for %d task(s)", self.worker_id,
                     self.settings.shutdown_grace, len(futures))
            wait_futures(futures, timeout=self.settings.shutdown_grace)
        with self._lock:
            self._abandon = True
            leftovers = list(self._jobs.values())
        for job in leftovers:
            # A handler past the grace period counts as a lease loss, so one that never finishes is bounded.
            try:
                released = self.queue.release(job.lease, lease_loss=job.started)
            except redis.RedisError as exc:
                log.warning("could not release %s (%s); recovery will requeue it", job.lease.task.task_id, exc)
                continue
            log.info("released %s %s (%s)", job.lease.task.task_type, job.lease.task.task_id,
                     "still running after the grace period" if job.started else "not started")
            if not released:
                log.warning("lease lost: %s %s", job.lease.task.task_type, job.lease.task.task_id)
        self.left_running = any(j.started for j in leftovers)
        pool.shutdown(wait=not self.left_running, cancel_futures=True)
        self._stop.set()
        try:
            if self.redis.llen(self.keys.claiming(self.worker_id)):
                self.queue.recover_claiming(self.worker_id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.worker(self.worker_id))
            pipe.hdel(self.keys.workers, self.worker_id)
            pipe.delete(self.keys.wtasks(self.worker_id))  # only stale members are left: all was settled
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not unregister %s (%s); recovery will", self.worker_id, exc)

    # -- running tasks ------------------------------------------------------------------

    def _active(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _start(self, pool: ThreadPoolExecutor, lease: Lease) -> None:
        ctx = TaskContext(
            lease.task, self.worker_id, queue=self.queue, limiter=self.limiter,
            max_token_sleep=self.settings.max_token_sleep,
            heartbeat=lambda: self._renew_one(lease),
            sleep=self._stop_aware_sleep,
        )
        job = _Job(lease, ctx)
        with self._lock:
            self._jobs[lease.task.task_id] = job
        job.future = pool.submit(self._execute, job)

    def _stop_aware_sleep(self, seconds: float) -> None:
        # A token wait is never longer than MAX_TOKEN_SLEEP; sleeping through a shutdown is within the grace.
        time.sleep(seconds)

    def _execute(self, job: _Job) -> None:
        with self._lock:
            if self._abandon:
                return
            job.started = True
        try:
            self._handle(job.lease, job.ctx)
        except Exception:  # noqa: BLE001 - settling failed (Redis down): recovery will requeue the task
            log.exception("could not settle %s %s", job.lease.task.task_type, job.lease.task.task_id)
        finally:
            with self._lock:
                if not self._abandon:
                    self._jobs.pop(job.lease.task.task_id, None)
            self._slot_free.set()

    def _handle(self, lease: Lease, ctx: TaskContext) -> None:
        task = lease.task
        handler = self.registry.handler(task.task_type)
        if handler is None:
            self._dead(lease, f"no handler registered for task type {task.task_type!r}", None)
            return
        policy = self.registry.policy(task.task_type)
        try:
            handler(task, ctx)
        except Discard as exc:
            log.info("task %s %s discarded: %s", task.task_type, task.task_id, exc)
            self._settled(self.queue.ack(lease), lease, "discard")
        except RateLimited as exc:
            if exc.api and self.limiter is not None:
                try:
                    self.limiter.pause(exc.api, exc.retry_after)
                except KeyError:
                    log.warning("handler asked to pause unknown API %r", exc.api)
            delay = max(MIN_DEFER, exc.retry_after)
            self._settled(self.queue.retry(lease, delay, spend_attempt=False), lease, "defer")
        except Permanent as exc:
            self._dead(lease, redact(f"permanent failure: {exc}"), _trace(exc))
        except Exception as exc:  # noqa: BLE001 - Transient, and anything unexpected, is retried
            attempts = task.retry_count + 1
            if policy.exhausted(task.retry_count):
                self._dead(lease, redact(f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}"), _trace(exc))
            else:
                delay = policy.backoff(task.retry_count)
                log.info("task %s %s failed (attempt %d/%d), retrying in %.2fs: %s", task.task_type,
                         task.task_id, attempts, policy.max_attempts, delay, redact(str(exc)))
                self._settled(self.queue.retry(lease, delay), lease, "retry")
        else:
            self._settled(self.queue.ack(lease), lease, "ack")

    def _dead(self, lease: Lease, reason: str, error: str | None) -> None:
        entry = self.queue.dead_letter(lease, reason, error)
        if self._settled(entry is not None, lease, "dead-letter"):
            log.warning("task %s %s dead-lettered: %s", lease.task.task_type, lease.task.task_id, reason)
            self.registry.dead_lettered(lease.task, reason, entry["error"] if entry else None)

    def _settled(self, done: bool, lease: Lease, what: str) -> bool:
        if not done:
            log.warning("lease lost: %s of %s %s rejected (another worker holds it now or it was recovered)",
                        what, lease.task.task_type, lease.task.task_id)
        return done

    # -- heartbeat -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            self._beat()

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
        }

    def _beat(self) -> None:
        """Liveness key, registry entry and every running lease, in one round trip."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.ctx.lease_lost.is_set()]
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(self.keys.worker(self.worker_id), str(time.time()),
                     px=max(1, int(self.settings.liveness_ttl * 1000)))
            pipe.hset(self.keys.workers, self.worker_id, json.dumps(self.info()))
            self.queue.renew([j.lease for j in jobs], client=pipe)
            results = pipe.execute()
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        for job, ok in zip(jobs, results[2:]):
            if not ok and self._still_running(job):  # a job settled meanwhile has no lock to renew
                job.ctx.lease_lost.set()
                log.warning("lease lost: %s %s was taken away while running", job.lease.task.task_type,
                            job.lease.task.task_id)

    def _still_running(self, job: _Job) -> bool:
        with self._lock:
            return self._jobs.get(job.lease.task.task_id) is job

    def _renew_one(self, lease: Lease) -> bool:
        ok = bool(self.queue.renew([lease])[0])
        if not ok:
            with self._lock:
                job = self._jobs.get(lease.task.task_id)
            if job is not None:
                job.ctx.lease_lost.set()
        return ok


def _trace(exc: BaseException) -> str:
    return redact("".join(traceback.format_exception_only(type(exc), exc)).strip())
