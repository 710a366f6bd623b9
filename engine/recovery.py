"""Recovery: give back what dead workers and lapsed leases hold, promote due retries, reconcile with the database.

Redis is a cache of work; the database is the truth. Besides requeueing tasks
from workers whose liveness key is gone (seconds) and leases past their
deadline (the visibility timeout), each pass asks the application's
reconcile source which campaigns need a live task and enqueues them — dedup
makes that a no-op for campaigns that already have one — so even a FLUSHALL
loses nothing. A pass that fails (Redis or the database down) is retried
with backoff by engine.loop.ServiceLoop; the process never exits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import attrs
import redis

from engine import metrics
from engine.errors import OutageTest
from engine.keys import split_task_key
from engine.loop import ServiceLoop, StopFlag
from engine.queue import Settled, TaskQueue
from engine.registry import Registry
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: ``reconcile() -> [(task_type, campaign_id)]``: work the database says must be live.
ReconcileSource = Callable[[], Iterable[tuple[str, int]]]


@attrs.define
class RecoveryReport:
    dead_workers: list[str] = attrs.Factory(list)
    requeued: int = 0
    dead_lettered: int = 0
    promoted: int = 0
    reconciled: int = 0

    def __bool__(self) -> bool:
        return bool(self.dead_workers or self.requeued or self.dead_lettered or self.promoted or self.reconciled)


class Recovery(ServiceLoop):
    """One recovery loop; several may run at once (every step is a fenced or idempotent script).

    ``is_outage`` (default: the registry's test) tells the loop which
    exceptions of the reconcile source mean "the database is down"; every
    failed pass is retried either way.
    """

    name = "recovery"

    def __init__(
        self,
        client: redis.Redis,
        settings: EngineSettings,
        queue: TaskQueue,
        registry: Registry | None = None,
        reconcile: ReconcileSource | None = None,
        *,
        is_outage: OutageTest | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        if is_outage is None and registry is not None:
            is_outage = registry.is_outage
        super().__init__(settings.recovery_interval, backoff_max=settings.outage_backoff_max, is_outage=is_outage,
                         stop=stop)
        self.redis = client
        self.settings = settings
        self.queue = queue
        self.keys = queue.keys
        self.registry = registry
        self.reconcile = reconcile

    def report(self, result: RecoveryReport) -> None:
        if result:
            log.info("recovery: %s", result)

    def run_once(self) -> RecoveryReport:
        report = RecoveryReport()
        for worker_id in self.dead_workers():
            report.dead_workers.append(worker_id)
            for settled in self.recover_worker(worker_id):
                self._count(report, settled)
                metrics.lease_recovered("dead_worker", settled.action)
        for task_type, task_id in self.queue.lapsed():
            settled = self.queue.recover_leased(task_type, task_id)
            self._count(report, settled)
            metrics.lease_recovered("lease_expired", settled.action)
        report.promoted = self.queue.promote_due()
        if self.reconcile is not None:
            report.reconciled = self.reconcile_once()
        return report

    def dead_workers(self) -> list[str]:
        """Registered workers whose liveness key is gone."""
        ids = list(self.redis.hkeys(self.keys.workers))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.exists(self.keys.worker(worker_id))
        return [w for w, alive in zip(ids, pipe.execute()) if not alive]

    def recover_worker(self, worker_id: str) -> list[Settled]:
        """Requeue a dead worker's leased and half-claimed tasks, then unregister it."""
        out = []
        wtasks = self.keys.wtasks(worker_id)
        for member in self.redis.smembers(wtasks):
            task_type, task_id = split_task_key(member)
            settled = self.queue.recover_leased(task_type, task_id, holder=worker_id, only_holder=True)
            if settled.action == "skipped":
                self.redis.srem(wtasks, member)  # acked, or another worker holds it now
            out.append(settled)
        out += self.queue.recover_claiming(worker_id)
        done = self.queue.scripts.unregister(
            keys=[self.keys.workers, self.keys.worker(worker_id), wtasks, self.keys.claiming(worker_id)],
            args=[worker_id],
        )
        log.warning("worker %s is dead (no liveness key): %d task(s) recovered%s", worker_id,
                    sum(1 for s in out if s.action != "skipped"), "" if done else ", still registered")
        return out

    def reconcile_once(self) -> int:
        """Enqueue what the database says must be live; returns how many were missing."""
        assert self.reconcile is not None
        batch: list[tuple[str, int]] = []
        enqueued = 0
        for item in self.reconcile():
            batch.append(item)
            if len(batch) >= 500:
                enqueued += sum(1 for t in self.queue.enqueue_many(batch) if t is not None)
                batch = []
        if batch:
            enqueued += sum(1 for t in self.queue.enqueue_many(batch) if t is not None)
        if enqueued:
            log.warning("reconcile: %d campaign(s) had no live task and were re-enqueued", enqueued)
        return enqueued

    def _count(self, report: RecoveryReport, settled: Settled) -> None:
        if settled.action == "requeued":
            report.requeued += 1
        elif settled.action == "dead":
            report.dead_lettered += 1
            reason = settled.entry["reason"] if settled.entry else "lost its lease"
            log.warning("dead-lettered %s: %s", settled.task.task_id if settled.task else "a payload", reason)
            if self.registry is not None:
                self.registry.dead_lettered(settled.task, reason, None)
