"""The task queue: enqueue with dedup, two-phase claim, fenced settle operations, the DLQ.

Every state change is one Lua script (engine/lua/), so a task is always in
exactly one place — a ready list, a worker's claiming list, an in-flight hash
(with its lease), a delayed set or the dead letters — whatever instruction a
worker dies at. Scripts that settle a leased task (ack, retry, requeue,
dead-letter, renew) are fenced: they act only while the lease still holds the
caller's lock value, so a worker whose lease was taken away (a zombie) changes
nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import attrs
import redis

from redis.commands.core import Script

from engine.connection import is_cluster
from engine.keys import Keys, split_task_key, task_key
from engine.redact import redact
from engine.scripts import Scripts
from engine.settings import EngineSettings
from engine.task import MAX_PAYLOAD_BYTES, MalformedTask, Task

log = logging.getLogger(__name__)

#: Longest error text kept in a dead-letter entry, in characters.
MAX_ERROR_CHARS = 2000
#: Most due tasks moved per delayed set by one promotion call.
PROMOTE_BATCH = 500


@attrs.frozen
class Lease:
    """A task a worker holds: ``token`` is the lock value (``<token>:<worker>``) that fences it."""

    task: Task
    payload: str
    token: str
    worker_id: str

    @property
    def attempt(self) -> str:
        """The random part of the lock value: unique to this lease of this task."""
        return self.token.split(":", 1)[0]


@attrs.frozen
class Claim:
    leases: list[Lease]
    #: Dead-letter entries (dicts) of malformed payloads found while claiming.
    rejected: list[dict[str, Any]]


@attrs.frozen
class Settled:
    """What recovery did with one task: ``requeued``, ``dead`` or ``skipped`` (someone else has it)."""

    action: str
    task: Task | None = None
    entry: dict[str, Any] | None = None


@attrs.frozen
class Judgement:
    """Recovery's verdict that a worker is dead, as the recovery scripts re-check it on the server.

    ``liveness`` is the worker's liveness value read with the verdict ('' when
    the key was gone: dead by LIVENESS_TTL; the value itself when its
    connections were all gone: dead by CLIENT LIST). ``at_ms`` is the server
    time of the reading; a script refuses a verdict older than ``max_age_ms``.
    """

    worker_id: str
    liveness: str
    at_ms: int
    max_age_ms: int


@attrs.frozen
class AfterLoss:
    """The one decision after a lost lease: ``requeue`` the task (one more lease loss) or ``dead``-letter it."""

    action: str
    task: Task
    #: What goes where: the requeued payload, or the dead-letter entry as JSON.
    push: str
    entry: dict[str, Any] | None = None


def _now() -> float:
    return time.time()


def new_token() -> str:
    """A fencing token: random, made by the client, so a replayed lease call finds its own lock."""
    return secrets.token_hex(8)


def new_op_id() -> str:
    """An operation id for a lease-less script: its answer is kept under it for the replay window."""
    return secrets.token_hex(8)


class TaskQueue:
    """Queues of the given task types under one key prefix."""

    def __init__(self, client: redis.Redis, settings: EngineSettings, task_types: Collection[str]) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.task_types = tuple(task_types)
        self.scripts = Scripts(client)
        #: On Redis Cluster scripts cannot be pipelined (redis-py refuses EVALSHA in a cluster pipeline).
        self.cluster = is_cluster(client)
        self._rotation = 0
        #: (worker, type) whose claim call ran and whose lease call has not answered: maybe leftovers.
        self._unleased: set[tuple[str, str]] = set()

    def _run_scripts(self, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        """Each (script, keys, args), answers in order: one round trip on a single node, one call each on a cluster.

        Every call touches one task type's slot; calls for several types are
        independent (none relies on another having run).
        """
        if self.cluster or len(calls) == 1:
            return [script(keys=keys, args=args) for script, keys, args in calls]
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return pipe.execute() if calls else []

    # -- timing -------------------------------------------------------------------

    @property
    def visibility_ms(self) -> int:
        return max(1, int(self.settings.visibility_timeout * 1000))

    @property
    def replay_ms(self) -> int:
        return max(1, int(self.settings.replay_window * 1000))

    def server_ms(self) -> int:
        """The Redis server's clock in ms (every deadline is on this clock)."""
        sec, usec = self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    # -- enqueue ------------------------------------------------------------------

    def enqueue(self, task_type: str, campaign_id: int, delay: float = 0.0, *, run_id: int | None = None) -> Task | None:
        """Add a task; None when (task_type, campaign_id) already has a live one."""
        task = Task.new(task_type, campaign_id, run_id)
        return task if self._run_scripts([self._enqueue_call(task_type, [task], delay)])[0][0] else None

    def enqueue_many(self, items: Iterable[tuple[str, int] | tuple[str, int, int | None]]) -> list[Task | None]:
        """Enqueue several (task_type, campaign_id[, run_id]); None where one was live.

        One enqueue.lua call per task type present (one round trip in all,
        pipelined, on a single node), however many tasks: the producer's and
        reconcile's batches cost Redis a loop, not a command each.
        """
        tasks = [Task.new(*item) for item in items]
        if not tasks:
            return []
        by_type: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            by_type.setdefault(task.task_type, []).append(i)
        answers = self._run_scripts([self._enqueue_call(task_type, [tasks[i] for i in indexes], 0.0)
                                     for task_type, indexes in by_type.items()])
        out: list[Task | None] = [None] * len(tasks)
        for (task_type, indexes), done in zip(by_type.items(), answers):
            for i, ok in zip(indexes, done):
                if ok:
                    out[i] = tasks[i]
        return out

    def _enqueue_call(self, task_type: str, tasks: Sequence[Task], delay: float) -> tuple[Script, list[str], list[Any]]:
        if task_type not in self.task_types:
            raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(self.task_types)}")
        keys = [self.keys.queue(task_type), self.keys.delayed(task_type)]
        args: list[Any] = [max(0, int(delay * 1000))]
        for task in tasks:
            task.check()  # validated on the way in too
            keys.append(self.keys.dedup(task_type, task.campaign_id))
            args += [task.to_json(), task.task_id]
        return self.scripts.enqueue, keys, args

    # -- claim --------------------------------------------------------------------

    def claim(self, worker_id: str, queues: Sequence[str], count: int, block: float = 0.0) -> Claim:
        """Lease up to ``count`` tasks from ``queues`` (in order); block up to ``block`` s when all are empty.

        Per task type: phase 1 (claim.lua) moves payloads into the worker's
        claiming list of that type; Python validates them; phase 2 (lease.lua)
        leases the valid ones. Only lease.lua knows the task ids, so only it
        can name the lock keys. Each call touches one type's slot.
        """
        leases: list[Lease] = []
        rejected: list[dict[str, Any]] = []
        # Types whose last claim moved payloads that were not leased (the lease call failed) come first:
        # claim.lua hands those leftovers back whenever their type is visited.
        leftover = [t for t in queues if (worker_id, t) in self._unleased]
        for task_type in leftover + [t for t in queues if t not in leftover]:
            if count and len(leases) >= count:
                break  # count 0 (never the worker's) leases what each claiming list holds, nothing more
            claimed = self._claim_type(worker_id, task_type, count - len(leases))
            leases += claimed.leases
            rejected += claimed.rejected
        if leases or rejected or block <= 0 or not queues:
            return Claim(leases, rejected)
        task_type = queues[self._rotation % len(queues)]
        self._rotation += 1
        self._unleased.add((worker_id, task_type))  # an answer lost to a timeout may still have moved one
        if self.redis.blmove(self.keys.queue(task_type), self.keys.claiming(task_type, worker_id), block,
                             "RIGHT", "LEFT") is None:
            return Claim([], [])
        return self._claim_type(worker_id, task_type, count)

    def _claim_type(self, worker_id: str, task_type: str, count: int) -> Claim:
        claiming = self.keys.claiming(task_type, worker_id)
        self._unleased.add((worker_id, task_type))
        raws = self.scripts.claim(keys=[claiming, self.keys.queue(task_type)], args=[count])
        claim = self._lease(worker_id, task_type, raws) if raws else Claim([], [])
        self._unleased.discard((worker_id, task_type))
        return claim

    def _parse_in(self, raw: str, task_type: str) -> Task:
        """A payload found among ``task_type``'s keys; one naming another type is malformed (its keys live elsewhere)."""
        task = Task.from_json(raw, self.task_types)
        if task.task_type != task_type:
            raise MalformedTask(f"task_type {task.task_type!r} found in the {task_type!r} queue")
        return task

    def _lease(self, worker_id: str, task_type: str, raws: Sequence[str]) -> Claim:
        claiming = self.keys.claiming(task_type, worker_id)
        valid: list[tuple[str, Task]] = []
        rejected: list[dict[str, Any]] = []
        for raw in raws:
            try:
                valid.append((raw, self._parse_in(raw, task_type)))
            except MalformedTask as exc:
                entry = self.malformed_entry(raw, exc.reason, worker_id)
                if self._reject(task_type, claiming, raw, entry):
                    log.warning("malformed payload dead-lettered: %s", exc.reason)
                    rejected.append(entry)
        if not valid:
            return Claim([], rejected)
        keys = [claiming, self.keys.leases(task_type), self.keys.wtasks(task_type, worker_id)]
        args: list[Any] = [self.visibility_ms]
        values = []
        for raw, task in valid:
            value = f"{new_token()}:{worker_id}"
            values.append(value)
            keys += [self.keys.inflight(task_type), self.keys.task_lock(task_type, task.task_id)]
            args += [raw, task.task_id, task_type, value]
        done = self.scripts.lease(keys=keys, args=args)
        leases = []
        for (raw, task), value, ok in zip(valid, values, done):
            if ok:
                leases.append(Lease(task, raw, value, worker_id))
            else:
                log.info("task %s %s not leased: taken by recovery or a duplicate of a live task",
                         task.task_type, task.task_id)
        return Claim(leases, rejected)

    def _reject(self, task_type: str, claiming: str, raw: str, entry: dict[str, Any]) -> bool:
        return bool(self.scripts.reject(
            keys=[claiming, self.keys.failed(task_type), self.keys.op(task_type, new_op_id())],
            args=[raw, json.dumps(entry), self.replay_ms]))

    # -- settle (fenced) ------------------------------------------------------------

    def ack(self, lease: Lease) -> bool:
        """The task is done (fenced): False when the lease was lost and nothing changed."""
        return self.ack_many([lease])[0]

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        """Acknowledge several tasks in one round trip; one fenced result per lease, in order.

        A stale lease (its token no longer holds the lock) is rejected on its
        own; the others are settled all the same.
        """
        keys = self.keys
        calls = []
        groups = _by_type(leases)
        for task_type, group in groups.items():
            lease_keys: list[str] = [keys.leases(task_type)]
            args: list[Any] = [self.replay_ms]
            for lease in (leases[i] for i in group):
                task = lease.task
                lease_keys += [keys.task_lock(task_type, task.task_id), keys.inflight(task_type),
                               keys.dedup(task_type, task.campaign_id), keys.wtasks(task_type, lease.worker_id)]
                args += [lease.token, task.task_id, task_type]
            calls.append((self.scripts.ack, lease_keys, args))
        return _ungroup(leases, groups, self._run_scripts(calls))

    def renew(self, leases: Sequence[Lease]) -> list[bool]:
        """Extend every lease (one renew.lua call per task type); one fenced result per lease, in order."""
        calls = []
        groups = _by_type(leases)
        for task_type, group in groups.items():
            keys = [self.keys.leases(task_type)]
            args: list[Any] = [self.visibility_ms]
            for lease in (leases[i] for i in group):
                keys.append(self.keys.task_lock(task_type, lease.task.task_id))
                args += [lease.token, task_key(task_type, lease.task.task_id)]
            calls.append((self.scripts.renew, keys, args))
        return _ungroup(leases, groups, self._run_scripts(calls))

    def release(self, lease: Lease, *, lease_loss: bool = False) -> bool:
        """Back to the front of its ready list, untouched (or counted as a lease loss)."""
        task = lease.task
        if lease_loss:
            task = attrs.evolve(task, lease_losses=task.lease_losses + 1)
        return self._release_as(lease, task)

    def _release_as(self, lease: Lease, task: Task) -> bool:
        t = task.task_type
        return bool(self.scripts.requeue(
            keys=[self.keys.task_lock(t, task.task_id), self.keys.inflight(t), self.keys.leases(t),
                  self.keys.queue(t), self.keys.wtasks(t, lease.worker_id)],
            args=[lease.token, task.task_id, task.task_type, task.to_json(), self.replay_ms],
        ))

    def retry(self, lease: Lease, delay: float, *, spend_attempt: bool = True) -> bool:
        """Into the delayed set, due in ``delay`` s; ``spend_attempt=False`` for deferrals (rate limit, outage)."""
        task = lease.task
        if spend_attempt:
            task = attrs.evolve(task, retry_count=task.retry_count + 1)
        t = task.task_type
        return bool(self.scripts.retry(
            keys=[self.keys.task_lock(t, task.task_id), self.keys.inflight(t), self.keys.leases(t),
                  self.keys.delayed(t), self.keys.wtasks(t, lease.worker_id)],
            args=[lease.token, task.task_id, task.task_type, task.to_json(), max(0, int(delay * 1000)),
                  self.replay_ms],
        ))

    def dead_letter(self, lease: Lease, reason: str, error: str | None = None) -> dict[str, Any] | None:
        """Into the dead letters; returns the entry, or None when the lease was lost."""
        entry = self.task_entry(lease.task, reason, error, lease.worker_id)
        return entry if self._dead_letter(lease, json.dumps(entry)) else None

    def _dead_letter(self, lease: Lease, entry_json: str) -> bool:
        task = lease.task
        t = task.task_type
        return bool(self.scripts.dead_letter(
            keys=[self.keys.task_lock(t, task.task_id), self.keys.inflight(t), self.keys.leases(t),
                  self.keys.failed(t), self.keys.dedup(t, task.campaign_id), self.keys.wtasks(t, lease.worker_id)],
            args=[lease.token, task.task_id, task.task_type, entry_json, self.replay_ms],
        ))

    # -- after a lost lease ----------------------------------------------------------

    def after_lost_lease(self, task: Task, holder: str | None, why: str | None = None) -> AfterLoss:
        """Requeue (one more lease loss, never an attempt) or dead-letter once it lost too many.

        The one place this is decided: recovery (a lapsed lease, a dead
        worker, a dead worker's claiming list) and the worker (a task given up
        after its time limit, a handler still running after the shutdown grace)
        all ask here. A lease lost to infrastructure (a crash, an outage, a
        slow handler) is not the provider's failure: it counts in
        ``lease_losses`` and leaves ``retry_count`` alone.
        """
        losses = task.lease_losses + 1
        if losses > self.settings.max_lease_losses:
            reason = (f"{why}; " if why else "") + f"lost its lease {losses} times: crash loop, hung handler or poison pill"
            entry = self.task_entry(task, reason, None, holder)
            return AfterLoss("dead", task, json.dumps(entry), entry)
        moved = attrs.evolve(task, lease_losses=losses)
        return AfterLoss("requeue", moved, moved.to_json())

    def give_up(self, lease: Lease, why: str) -> AfterLoss | None:
        """The holder gives up its own task as a lease loss (time limit, shutdown): requeue or dead-letter.

        Fenced like every settle; None when the lease was already lost.
        """
        decision = self.after_lost_lease(lease.task, lease.worker_id, why)
        if decision.action == "dead":
            done = self._dead_letter(lease, decision.push)
        else:
            done = self._release_as(lease, decision.task)
        return decision if done else None

    # -- recovery primitives ----------------------------------------------------------

    def lapsed(self, limit: int = 1000) -> list[tuple[str, str]]:
        """(task_type, task_id) of leases whose deadline passed, on the server's clock (up to ``limit`` per type)."""
        now = self.server_ms()
        pipe = self.redis.pipeline(transaction=False)
        for t in self.task_types:
            pipe.zrangebyscore(self.keys.leases(t), "-inf", now, start=0, num=limit)
        return [split_task_key(m) for members in pipe.execute() for m in members]

    def recover_lapsed(self, task_type: str, task_id: str) -> Settled:
        """Take back a task whose lease deadline passed (recover.lua re-checks that on the server)."""
        raw = self.redis.hget(self.keys.inflight(task_type), task_id)
        return self._recover("lapsed", task_type, task_id, raw, None, None, [])

    def recover_held(self, judgement: Judgement, task_type: str, task_id: str) -> Settled:
        """Take back a task held by a worker judged dead, while the verdict still holds on the server."""
        worker_id = judgement.worker_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.task_lock(task_type, task_id))
        pipe.hget(self.keys.inflight(task_type), task_id)
        value, raw = pipe.execute()
        if not value or value.startswith("~") or value.split(":", 1)[-1] != worker_id or raw is None:
            return Settled("skipped")  # settled, lapsed (the lapsed path takes it) or someone else's now
        extra = [value, judgement.liveness, judgement.at_ms, judgement.max_age_ms]
        return self._recover("dead", task_type, task_id, raw, worker_id, judgement, extra)

    def _recover(self, mode: str, task_type: str, task_id: str, raw: str | None, holder: str | None,
                 judgement: Judgement | None, extra: list[Any]) -> Settled:
        keys = self.keys
        task: Task | None = None
        decision: AfterLoss | None = None
        if raw is not None:
            try:
                task = self._parse_in(raw, task_type)
            except MalformedTask as exc:  # leased payloads were validated; a hand-edited hash is all that is left
                entry = self.malformed_entry(raw, exc.reason, holder)
                decision = AfterLoss("dead", Task(task_id, 1, task_type), json.dumps(entry), entry)
            else:
                decision = self.after_lost_lease(task, holder)
        # With nothing in flight the script only drops a stale lease entry (mode lapsed).
        action = decision.action if decision else "requeue"
        script_keys = [keys.task_lock(task_type, task_id), keys.inflight(task_type), keys.leases(task_type),
                       keys.queue(task_type) if action == "requeue" else keys.failed(task_type),
                       keys.dedup(task_type, task.campaign_id if task else 0)]
        if holder:
            script_keys.append(keys.wtasks(task_type, holder))
        if judgement is not None:
            script_keys.append(keys.liveness(task_type, judgement.worker_id))
        done = self.scripts.recover(keys=script_keys, args=[
            mode, task_id, task_type, raw or "", action, decision.push if decision else "", new_op_id(),
            self.replay_ms, *extra])
        if not done or decision is None:
            return Settled("skipped")
        if decision.action == "dead":
            return Settled("dead", task, decision.entry)
        return Settled("requeued", decision.task)

    def recover_claiming(self, worker_id: str, judgement: Judgement | None = None) -> list[Settled]:
        """Put back what a worker moved into its claiming lists but never leased.

        With ``judgement`` (recovery, for a worker it judged dead) each move
        re-checks the verdict on the server, against the copy of the worker's
        liveness key in that type's slot; without it (the worker itself, at
        shutdown) it does not.
        """
        pipe = self.redis.pipeline(transaction=False)
        for t in self.task_types:
            pipe.lrange(self.keys.claiming(t, worker_id), 0, -1)
        out = []
        for task_type, raws in zip(self.task_types, pipe.execute()):
            for raw in raws:
                settled = self._unclaim(task_type, worker_id, raw, judgement)
                if settled is not None:
                    out.append(settled)
        return out

    def _unclaim(self, task_type: str, worker_id: str, raw: str, judgement: Judgement | None) -> Settled | None:
        claiming = self.keys.claiming(task_type, worker_id)
        try:
            task = self._parse_in(raw, task_type)
        except MalformedTask as exc:
            entry = self.malformed_entry(raw, exc.reason, worker_id)
            return Settled("dead", None, entry) if self._reject(task_type, claiming, raw, entry) else None
        decision = self.after_lost_lease(task, worker_id)
        dead = decision.action == "dead"
        keys = [claiming, self.keys.failed(task_type) if dead else self.keys.queue(task_type),
                self.keys.op(task_type, new_op_id()), self.keys.dedup(task_type, task.campaign_id)]
        args: list[Any] = [raw, decision.push, task.task_id if dead else "", self.replay_ms]
        if judgement is not None:
            keys.append(self.keys.liveness(task_type, worker_id))
            args += [judgement.liveness, judgement.at_ms, judgement.max_age_ms]
        if not self.scripts.unclaim(keys=keys, args=args):
            return None
        return Settled("dead", task, decision.entry) if dead else Settled("requeued", decision.task)

    def holds_anything(self, worker_id: str) -> bool:
        """Whether any task type's held set or claiming list of ``worker_id`` is not empty."""
        pipe = self.redis.pipeline(transaction=False)
        for t in self.task_types:
            pipe.scard(self.keys.wtasks(t, worker_id))
            pipe.llen(self.keys.claiming(t, worker_id))
        return any(pipe.execute())

    def unregister(self, worker_id: str, liveness: str) -> bool:
        """Forget a worker judged dead (liveness value as read with the verdict) once it holds nothing.

        The held sets and claiming lists live in each type's slot, so they are
        checked first, apart: a worker judged dead claims nothing meanwhile,
        and one that was not dead after all beats again and re-registers.
        """
        if self.holds_anything(worker_id):
            return False
        return bool(self.scripts.unregister(keys=[self.keys.workers, self.keys.worker(worker_id)],
                                            args=[worker_id, liveness]))

    def promote_due(self, task_types: Sequence[str] | None = None, limit: int = PROMOTE_BATCH) -> int:
        """Move due delayed tasks to their ready lists; returns how many moved (one call per task type)."""
        calls = [(self.scripts.promote, [self.keys.op(t, new_op_id()), self.keys.delayed(t), self.keys.queue(t)],
                  [limit, self.replay_ms]) for t in (task_types or self.task_types)]
        return sum(int(n) for n in self._run_scripts(calls)) if calls else 0

    def defer_hook(self, task: Task | None, reason: str, error: str | None) -> None:
        """Keep a dead-letter hook that could not run (its database was down) for recovery to run again."""
        if task is None:
            return
        self.redis.rpush(self.keys.pending_hooks, json.dumps(
            {"task": json.loads(task.to_json()), "reason": reason, "error": error}))

    def pending_hooks(self, limit: int = 100) -> list[tuple[Task, str, str | None]]:
        """Take up to ``limit`` kept hooks, oldest first (whoever runs them keeps them again if they fail)."""
        raws = self.redis.lpop(self.keys.pending_hooks, limit) or []
        out = []
        for raw in raws:
            try:
                entry = json.loads(raw)
                out.append((Task.from_json(json.dumps(entry["task"]), self.task_types), str(entry["reason"]),
                            entry.get("error")))
            except (ValueError, KeyError, TypeError, MalformedTask):
                log.warning("dropped an unreadable kept dead-letter hook: %.200s", raw)
        return out

    def pending(self, task_types: Sequence[str]) -> int:
        """Ready plus delayed tasks of these types (what ``--burst`` waits for)."""
        pipe = self.redis.pipeline(transaction=False)
        for t in task_types:
            pipe.llen(self.keys.queue(t))
            pipe.zcard(self.keys.delayed(t))
        return sum(pipe.execute())

    # -- inspection ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``{"queues": {type: {"key", "ready", "in_flight", "delayed"}}, "dead_letters": n}`` (SPEC §6)."""
        pipe = self.redis.pipeline(transaction=False)
        for t in self.task_types:
            pipe.llen(self.keys.queue(t))
            pipe.hlen(self.keys.inflight(t))
            pipe.zcard(self.keys.delayed(t))
        for key in self.dlq_keys():
            pipe.llen(key)
        counts = pipe.execute()
        queues = {
            t: {"key": self.keys.queue(t), "ready": counts[3 * i], "in_flight": counts[3 * i + 1],
                "delayed": counts[3 * i + 2]}
            for i, t in enumerate(self.task_types)
        }
        return {"queues": queues, "dead_letters": sum(counts[3 * len(self.task_types):])}

    # -- dead letters ---------------------------------------------------------------

    def task_entry(self, task: Task, reason: str, error: str | None, worker_id: str | None) -> dict[str, Any]:
        return {
            "id": task.task_id,
            "task": json.loads(task.to_json()),
            "task_type": task.task_type,
            "campaign_id": task.campaign_id,
            "reason": reason,
            "error": redact(error)[:MAX_ERROR_CHARS] if error else None,
            "at": _now(),
            "worker_id": worker_id,
        }

    def malformed_entry(self, raw: str, reason: str, worker_id: str | None) -> dict[str, Any]:
        """An entry for a payload that is not a valid task: the raw text is kept, never dropped."""
        task_type = campaign_id = None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict):
            if isinstance(data.get("task_type"), str):
                task_type = data["task_type"]
            if isinstance(data.get("campaign_id"), int) and not isinstance(data.get("campaign_id"), bool):
                campaign_id = data["campaign_id"]
        kept = raw if len(raw) <= 2 * MAX_PAYLOAD_BYTES else raw[: 2 * MAX_PAYLOAD_BYTES]
        return {
            "id": uuid.uuid4().hex,
            "task": kept,
            "task_type": task_type,
            "campaign_id": campaign_id,
            "reason": f"malformed payload: {reason}",
            "error": None if kept is raw else f"payload cut to {len(kept)} of {len(raw)} characters",
            "at": _now(),
            "worker_id": worker_id,
        }

    def dlq_keys(self) -> list[str]:
        """Every dead-letter list: one per task type, and the one for payloads of no known type."""
        return [*(self.keys.failed(t) for t in self.task_types), self.keys.failed_untyped]

    def _dlq_raw(self) -> list[tuple[str, str]]:
        """(list key, raw entry) of every dead letter, oldest first across the lists."""
        pipe = self.redis.pipeline(transaction=False)
        keys = self.dlq_keys()
        for key in keys:
            pipe.lrange(key, 0, -1)
        found = [(key, raw) for key, raws in zip(keys, pipe.execute()) for raw in raws]
        return sorted(found, key=lambda item: _entry_time(item[1]))  # stable: each list's own order is kept

    def dlq_list(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Dead-letter entries, oldest first (a stored entry that is not JSON is shown as ``raw``)."""
        raws = [raw for _, raw in self._dlq_raw()]
        return [_parse_entry(raw) for raw in (raws if limit is None else raws[:limit])]

    def dlq_requeue(self, entry_id: str | None = None) -> dict[str, list[str]]:
        """Enqueue a fresh task (retry_count 0, new task_id) for one entry (``id`` or task id) or all.

        Returns ids by outcome: requeued, already_live (a live task for that
        campaign and type exists; the entry is removed), unusable (no valid
        task type and campaign id to rebuild a task from; the entry stays),
        not_found.
        """
        out: dict[str, list[str]] = {"requeued": [], "already_live": [], "unusable": [], "not_found": []}
        found = False
        for key, raw in self._dlq_raw():
            entry = _parse_entry(raw)
            ids = {str(entry.get("id"))}
            if isinstance(entry.get("task"), dict):
                ids.add(str(entry["task"].get("task_id")))
            if entry_id is not None and entry_id not in ids:
                continue
            found = True
            label = str(entry.get("id"))
            task_type, cid = entry.get("task_type"), entry.get("campaign_id")
            if task_type not in self.task_types or not isinstance(cid, int) or isinstance(cid, bool) or cid <= 0:
                out["unusable"].append(label)
                continue
            if key != self.keys.failed(task_type) and self.cluster:
                out["unusable"].append(label)  # not in its type's slot: only `campaignctl upgrade-redis` moves it
                continue
            task = Task.new(task_type, cid)  # no run id: it works on whatever run the campaign is on now
            result = self.scripts.dlq_requeue(
                keys=[key, self.keys.queue(task_type), self.keys.dedup(task_type, cid),
                      self.keys.op(task_type, new_op_id())],
                args=[raw, task.to_json(), task.task_id, self.replay_ms],
            )
            {1: out["requeued"], 2: out["already_live"]}.get(int(result), out["not_found"]).append(label)
        if entry_id is not None and not found:
            out["not_found"].append(entry_id)
        return out

    def dlq_purge(self) -> int:
        """Delete every dead letter; returns how many there were (one transaction per list: its own slot)."""
        purged = 0
        for key in self.dlq_keys():
            pipe = self.redis.pipeline(transaction=True)
            pipe.llen(key)
            pipe.delete(key)
            purged += int(pipe.execute()[0])
        return purged


def _by_type(leases: Sequence[Lease]) -> dict[str, list[int]]:
    """Indexes of ``leases`` by task type, in order of first appearance (one script call per type)."""
    groups: dict[str, list[int]] = {}
    for i, lease in enumerate(leases):
        groups.setdefault(lease.task.task_type, []).append(i)
    return groups


def _ungroup(leases: Sequence[Lease], groups: dict[str, list[int]], answers: Sequence[Sequence[Any]]) -> list[bool]:
    """Per-type answers (lists of 1/0) back in the order of ``leases``."""
    out = [False] * len(leases)
    for indexes, answer in zip(groups.values(), answers):
        for i, x in zip(indexes, answer):
            out[i] = x == 1
    return out


def _entry_time(raw: str) -> float:
    """A dead letter's ``at`` (0 when unreadable: such entries sort first)."""
    try:
        at = json.loads(raw).get("at")
    except (ValueError, AttributeError):
        return 0.0
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0


def _parse_entry(raw: str) -> dict[str, Any]:
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        return {"id": None, "raw": raw, "reason": "unreadable dead-letter entry"}
    return entry
