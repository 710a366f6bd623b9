"""Recovery: give back what dead workers and lapsed leases hold, promote due retries, reconcile with the database.

Redis is a cache of work; the database is the truth. Besides taking back the
tasks of workers it judges dead and of leases past their deadline, each pass
asks the application's reconcile source which campaigns need a live task and
enqueues them — dedup makes that a no-op for campaigns that already have one —
so even a FLUSHALL loses nothing. A pass that fails (Redis or the database
down) is retried with backoff by engine.loop.ServiceLoop.

The rules that make any number of recovery loops safe, and keep an outage from
looking like a mass death (docs/architecture.md, "Recovery rules"):

- A lease is taken back only by one script (recover.lua) that sees, on the
  server clock, that its deadline has passed, or that its holder is still
  judged dead: the holder's liveness key still holds what recovery read with
  its verdict, and the verdict is fresh. Two loops cannot both act, and a
  worker that beats again in between keeps its task.
- A worker is dead when its liveness key is gone (it missed LIVENESS_TTL of
  beats: hung, partitioned, or killed), or at once when it named its
  connections (CLIENT SETNAME) and none of them exists any more (its process
  is gone: the kernel closed its sockets). Where CLIENT LIST is refused, or a
  proxy hides connections, only the TTL rule is used; the log says so once.
- After an outage — a failed pass, a Redis call slower than the stall guard,
  a Redis restart or failover (a new server run id) — there is no
  liveness-based recovery until one LIVENESS_TTL has passed with Redis
  reachable: workers that could not beat meanwhile get the time to beat again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
import redis

from engine import metrics
from engine.connection import connection_name, is_cluster
from engine.errors import OutageTest
from engine.keys import split_task_key
from engine.loop import ServiceLoop, StopFlag
from engine.queue import Judgement, Settled, TaskQueue, new_op_id
from engine.registry import Registry
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: ``reconcile() -> [(task_type, campaign_id[, run_id])]``: work the database says must be live (a full sweep
#: every pass); or an ``IncrementalSource``, which looks only at what changed.
ReconcileSource = Callable[[], Iterable[tuple[Any, ...]]]


class IncrementalSource(Protocol):
    """What the database says must be live, in O(changed) per pass.

    ``mark()`` names "now" as an opaque cursor; ``changed(cursor)`` yields the
    work of what changed since that cursor was marked (and may look back a
    little, for transactions that committed late); ``full()`` yields all of it.
    Enqueue is deduplicated, so yielding work that is live already is harmless.
    """

    def mark(self) -> str: ...

    def changed(self, since: str) -> Iterable[tuple[Any, ...]]: ...

    def full(self) -> Iterable[tuple[Any, ...]]: ...
#: Campaigns enqueued per round trip by reconcile.
RECONCILE_BATCH = 500
#: Reconcile sweeps once every this many recovery intervals (it reads the database; the rest reads Redis only).
RECONCILE_EVERY = 4


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
    """One recovery loop; several may run at once (every step is a fenced, re-checked or idempotent script).

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
        reconcile: ReconcileSource | IncrementalSource | None = None,
        *,
        is_outage: OutageTest | None = None,
        stop: StopFlag | None = None,
        clock: Callable[[], float] = time.monotonic,
        quiet: float | None = None,
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
        if registry is not None:
            registry.bind_outbox(queue.defer_hook)
        self.reconcile = reconcile
        self._clock = clock
        #: No liveness-based recovery before this (monotonic s): set at start (``quiet`` s, default one
        #: LIVENESS_TTL: the workers get one TTL to beat before anyone is judged) and after every outage.
        self.quiet_until = clock() + (settings.liveness_ttl if quiet is None else quiet)
        #: monotonic() of the last judgement whose every Redis call was fast; a longer gap may hide a stall.
        self._last_seen: float | None = None
        self._server_run_id: str | None = None
        #: Whether CLIENT LIST may tell dead workers (None: not tried yet).
        self._client_list_ok: bool | None = None
        #: run_once reconciles too, unless run() gave reconciling a thread of its own.
        self._reconcile_inline = True

    # -- the pass ---------------------------------------------------------------------

    def report(self, result: RecoveryReport) -> None:
        if result:
            log.info("recovery: %s", result)

    def run(self, *, once: bool = False) -> int:
        """Pass after pass; reconcile runs in a thread of its own, so a long sweep never delays dead-worker
        and lapsed-lease recovery (``once``: one pass of each, in order)."""
        if once or self.reconcile is None:
            return super().run(once=once)
        reconciler = _Reconciler(self)
        thread = threading.Thread(target=reconciler.run, name="reconcile", daemon=True)
        self._reconcile_inline = False
        thread.start()
        try:
            return super().run()
        finally:
            thread.join(timeout=self.settings.outage_backoff_max + 5)

    def run_once(self) -> RecoveryReport:
        report = RecoveryReport()
        try:
            self._recover_dead_workers(report)
            for task_type, task_id in self.queue.lapsed():
                settled = self.queue.recover_lapsed(task_type, task_id)
                self._count(report, settled)
                metrics.lease_recovered("lease_expired", settled.action)
            report.promoted = self.queue.promote_due()
        except redis.RedisError:
            self.outage_seen("a Redis call failed")
            raise
        if self.reconcile is not None and self._reconcile_inline:
            report.reconciled = self.reconcile_once()
        return report

    def outage_seen(self, why: str) -> None:
        """No liveness-based recovery until one LIVENESS_TTL with Redis reachable has passed from now."""
        until = self._clock() + self.settings.liveness_ttl
        if until > self.quiet_until:
            if self._clock() >= self.quiet_until:
                log.warning("recovery: %s; no worker is judged dead for the next %gs (LIVENESS_TTL), so workers "
                            "that could not beat meanwhile keep their tasks", why, self.settings.liveness_ttl)
            self.quiet_until = until

    # -- judging workers --------------------------------------------------------------

    def _recover_dead_workers(self, report: RecoveryReport) -> None:
        for judgement in self.dead_workers():
            report.dead_workers.append(judgement.worker_id)
            for settled in self.recover_worker(judgement):
                self._count(report, settled)
                metrics.lease_recovered("dead_worker", settled.action)

    def dead_workers(self) -> list[Judgement]:
        """Registered workers judged dead now, each with what the recovery scripts must re-check.

        Returns nothing while recovery is quiet after an outage. Every Redis
        call of the judgement is timed: one slower than the stall guard (or a
        gap since the last judgement long enough to hide a stall, or a new
        server run id) starts a quiet period instead of a verdict.
        """
        guard = self.settings.stall_guard
        started = self._clock()
        run_id = self._server_run()
        if self._server_run_id is not None and run_id != self._server_run_id:
            self.outage_seen("Redis restarted or failed over (new server run id)")
        self._server_run_id = run_id
        registered = self.redis.hgetall(self.keys.workers)
        ids = sorted(registered)
        # Read before the liveness keys: the verdict's age counts from no later than its reading.
        at_ms = self.queue.server_ms()
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.get(self.keys.worker(worker_id))
        liveness = dict(zip(ids, pipe.execute()))
        connected = self._connected_names(ids, registered) if ids else None
        now = self._clock()
        gap = now - self._last_seen if self._last_seen is not None else 0.0
        self._last_seen = now
        if now - started > guard:
            self.outage_seen(f"Redis took {now - started:.2f}s to answer (stall guard {guard:.2f}s)")
        elif gap > self.settings.liveness_ttl - self.settings.heartbeat_interval - guard:
            self.outage_seen(f"recovery did not look at Redis for {gap:.2f}s")
        if now < self.quiet_until:
            return []
        max_age = max(1, int(guard * 1000))
        dead = []
        for worker_id in ids:
            value = liveness.get(worker_id)
            if value is None:
                dead.append(Judgement(worker_id, "", at_ms, max_age))
            elif connected is not None and _named(registered.get(worker_id)) and worker_id not in connected:
                dead.append(Judgement(worker_id, value, at_ms, max_age))
        return dead

    def _server_run(self) -> str:
        """The server's run id; on a cluster, every primary's (a failover promotes a replica: a new one)."""
        if is_cluster(self.redis):
            infos = self.redis.info("server", target_nodes=self.redis.PRIMARIES)  # type: ignore[call-arg]
            return ",".join(sorted(str(i.get("run_id", "")) for i in infos.values()))
        info = self.redis.info("server")
        return str(info.get("run_id", ""))

    def _connected_names(self, ids: list[str], registered: dict[str, str]) -> set[str] | None:
        """Names of the connections open now, or None when CLIENT LIST cannot tell (then only the TTL rule)."""
        if self._client_list_ok is False or not any(_named(registered.get(w)) for w in ids):
            return None
        own = connection_name(self.redis)
        try:
            if is_cluster(self.redis):
                # A worker's connections spread over the shards it talks to: alive while any is left.
                per_node = self.redis.client_list(target_nodes=self.redis.PRIMARIES)  # type: ignore[call-arg]
                names = {c.get("name", "") for clients in per_node.values() for c in clients}
            else:
                names = {c.get("name", "") for c in self.redis.client_list()}
        except redis.ResponseError as exc:
            self._disable_client_list(f"CLIENT LIST is refused ({exc})")
            return None
        if not own or own not in names:
            self._disable_client_list("recovery's own named connection is not in CLIENT LIST (a proxy, or an "
                                      "unnamed client)" if own else "recovery's connections are not named")
            return None
        self._client_list_ok = True
        return names

    def _disable_client_list(self, why: str) -> None:
        self._client_list_ok = False
        log.warning("recovery: %s; dead workers are found by LIVENESS_TTL (%gs) only", why, self.settings.liveness_ttl)

    # -- taking back --------------------------------------------------------------------

    def recover_worker(self, judgement: Judgement) -> list[Settled]:
        """Take back a dead worker's leased and half-claimed tasks, then unregister it."""
        worker_id = judgement.worker_id
        out = []
        types = self.queue.task_types
        pipe = self.redis.pipeline(transaction=False)
        for t in types:
            pipe.smembers(self.keys.wtasks(t, worker_id))
        for t, members in zip(types, pipe.execute()):
            wtasks = self.keys.wtasks(t, worker_id)
            for member in members:
                task_type, task_id = split_task_key(member)
                settled = self.queue.recover_held(judgement, t, task_id) if task_type == t else Settled("skipped")
                if settled.action == "skipped" and not self._holds(worker_id, t, task_id):
                    self.redis.srem(wtasks, member)  # settled, lapsed or another worker's now: a stale member
                out.append(settled)
        out += self.queue.recover_claiming(worker_id, judgement)
        done = self.queue.unregister(worker_id, judgement.liveness)
        how = "no liveness key" if not judgement.liveness else "none of its connections is left"
        log.warning("worker %s is dead (%s): %d task(s) recovered%s", worker_id, how,
                    sum(1 for s in out if s.action != "skipped"), "" if done else ", still registered")
        return out

    def _holds(self, worker_id: str, task_type: str, task_id: str) -> bool:
        value = self.redis.get(self.keys.task_lock(task_type, task_id))
        return bool(value) and not value.startswith("~") and value.split(":", 1)[-1] == worker_id

    def reconcile_once(self) -> int:
        """Enqueue what the database says must be live; returns how many were missing.

        With an IncrementalSource only what changed since the last pass is
        looked at; the cursor lives in Redis beside a generation key. When the
        generation key is gone, Redis lost its data (or this is the first
        pass ever): one full sweep rebuilds every task, then a new generation
        starts. Campaigns whose dead-letter hook could not run (the database
        was down) are retried from the hook outbox on every pass.
        """
        assert self.reconcile is not None
        enqueued = 0
        self._run_pending_hooks()
        source = self.reconcile
        if not hasattr(source, "changed"):
            return self._enqueue_all(source())  # type: ignore[operator]
        generation, cursor = self.redis.mget(self.keys.generation, self.keys.reconciled_until)
        mark = source.mark()  # type: ignore[union-attr]
        if generation is None or cursor is None:
            log.warning("reconcile: no generation key in Redis (first start, or Redis lost its data): one full sweep")
            enqueued = self._enqueue_all(source.full())  # type: ignore[union-attr]
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(self.keys.generation, new_op_id())
            pipe.set(self.keys.reconciled_until, mark)
            pipe.execute()
        else:
            enqueued = self._enqueue_all(source.changed(cursor))  # type: ignore[union-attr]
            # Only while the generation holds: a cursor written after Redis lost its data would skip the sweep.
            self.queue.scripts.advance_cursor(keys=[self.keys.generation, self.keys.reconciled_until],
                                              args=[generation, mark])
        return enqueued

    def _run_pending_hooks(self) -> None:
        """Run again the dead-letter hooks that failed on an outage (engine.registry's outbox)."""
        if self.registry is None:
            return
        for task, reason, error in self.queue.pending_hooks():
            self.registry.dead_lettered(task, reason, error)

    def _enqueue_all(self, items: Iterable[tuple[Any, ...]]) -> int:
        batch: list[tuple[Any, ...]] = []
        enqueued = 0
        for item in items:
            batch.append(item)
            if len(batch) >= RECONCILE_BATCH:
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


class _Reconciler(ServiceLoop):
    """Recovery's reconcile sweep as a loop of its own (every RECONCILE_EVERY recovery intervals, same stop flag)."""

    name = "reconcile"

    def __init__(self, recovery: Recovery) -> None:
        settings = recovery.settings
        super().__init__(settings.recovery_interval * RECONCILE_EVERY, backoff_max=settings.outage_backoff_max,
                         is_outage=recovery.outage.is_outage, stop=recovery._stop)
        self.recovery = recovery

    def run_once(self) -> int:
        return self.recovery.reconcile_once()


def _named(info: str | None) -> bool:
    """Whether a registry entry says the worker names its connections with its id."""
    if not info:
        return False
    try:
        return bool(json.loads(info).get("conn_named"))
    except (ValueError, AttributeError):
        return False
