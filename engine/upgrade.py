"""Move a single Redis node from the single-tag key layout to the per-type one (``campaignctl upgrade-redis``).

Before the per-type layout (engine/keys.py) every queue key shared the one hash
tag ``{P}`` (P = KEY_PREFIX): ``{P}:queue:<T>``, ``{P}:task_lock:<id>``, ….
The new engine never looks under those names, so a Redis that ran the old one
still holds work there. ``upgrade_layout`` moves it:

==================================  ===========================  ==============================================
old (P = key prefix, T = type)      new                          how
==================================  ===========================  ==============================================
``{P}:queue:<T>``                   ``{P:T}:queue``              appended in order, on the side workers take
                                                                 from first (the old tasks are older)
``{P}:delayed:<T>``                 ``{P:T}:delayed``            merged, due times kept
``{P}:inflight:<T>``                ``{P:T}:queue``              each payload, untouched, on the front
``{P}:claiming:<worker>``           ``{P:T}:queue`` of its type  on the front; a payload naming no known
                                                                 type to ``{P}:failed_tasks``, with the reason
``{P}:dedup:<T>:<campaign>``        ``{P:T}:dedup:<campaign>``   renamed: each names a task that is still
                                                                 somewhere, so it stays exactly as long
``{P}:failed_tasks``                ``{P:T}:failed_tasks``       the entries of a known type, in order; the
                                                                 rest stay (the same name in the new layout)
``{P}:task_lock:*``, ``{P}:leases``  —                           dropped: leases of tasks that are back in a
``{P}:wtasks:*``, ``{P}:op:*``                                   ready list, and answers kept for replays
``P:controls:*``, ``P:stats:*``     ``{P}:controls:*``, …        renamed; merged when both names exist
==================================  ===========================  ==============================================

The registry's keys (``{P}:workers``, ``{P}:worker:*``, ``{P}:generation``,
``{P}:reconciled_until``, ``{P}:pending_hooks``) and the rate-limit buckets
keep their names. In-flight and claimed payloads go back untouched (retry
count and lease losses as they were): their holders were stopped for the
upgrade, not lost. So every payload ends up in exactly one new key.

Each key moves in one Lua script (engine/lua/upgrade/), so a run can be
stopped anywhere and started again, and a run that finds nothing changes
nothing. The scripts touch keys of several hash tags, which only a single node
allows: the old layout never ran on a Redis Cluster, so there is nothing to move
there. The old fleet must be stopped first: a live worker's liveness key makes
``upgrade_layout`` refuse (``force`` overrides; a task a live worker holds then
runs again from its ready list — delivery is at least once anyway).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
import redis

from engine.controls import ControlKeys
from engine.keys import Keys
from engine.scripts import LUA_DIR, compose
from engine.task import MAX_PAYLOAD_BYTES

#: Folder of the upgrade's scripts; engine.scripts does not register them (only this command runs them).
UPGRADE_LUA_DIR = LUA_DIR / "upgrade"
#: Keys Redis looks at per SCAN call (a hint).
SCAN_COUNT = 1000
#: Keys moved or dropped per pipelined round trip.
BATCH = 500
#: Times a claiming list is read again when it changed between the read and the move.
CAS_TRIES = 5

#: Step kinds, in the order a run takes them.
READY, DELAYED, IN_FLIGHT, CLAIMING, DEDUP, DEAD_LETTERS, DROP, CONTROL = (
    "ready", "delayed", "in flight", "claiming", "dedup", "dead letters", "drop", "control")
#: Old task keys the upgrade leaves where they are (their task type is not known).
LEFT = "left"

CLUSTER_REFUSAL = (
    "REDIS_CLUSTER=true: upgrade-redis runs on a single Redis node only. The single-tag layout never worked on a "
    "cluster, so there is nothing there to move, and copying data from one Redis to another is not this command's "
    "job: start the new version on the cluster and recovery's full sweep rebuilds every task from the database")


class UpgradeRefused(Exception):
    """The upgrade will not run here (a cluster) or now (live workers); nothing was changed."""


class ClusterRefused(UpgradeRefused):
    """The client talks to a Redis Cluster: there is nothing of the old layout there, and the scripts need one node."""

    def __init__(self) -> None:
        super().__init__(CLUSTER_REFUSAL)


class WorkersAlive(UpgradeRefused):
    """Workers are registered and alive: the old fleet is not stopped."""

    def __init__(self, prefix: str, worker_ids: Sequence[str]) -> None:
        self.worker_ids = tuple(worker_ids)
        shown = ", ".join(self.worker_ids[:3]) + (", …" if len(self.worker_ids) > 3 else "")
        super().__init__(
            f"{len(self.worker_ids)} live worker(s) under {{{prefix}}} ({shown}): stop every worker, the producer "
            "and recovery first (docs/deployment.md, \"Upgrading from the single-tag key layout\"), or pass --force")


class OldKeys:
    """Names of the single-tag layout, as the engine wrote them before the per-type one."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"

    def queue(self, task_type: str) -> str:
        return f"{self.tag}:queue:{task_type}"

    def delayed(self, task_type: str) -> str:
        return f"{self.tag}:delayed:{task_type}"

    def inflight(self, task_type: str) -> str:
        return f"{self.tag}:inflight:{task_type}"

    def claiming(self, worker_id: str) -> str:
        return f"{self.tag}:claiming:{worker_id}"

    def family(self, name: str, *parts: str) -> str:
        """The SCAN pattern of a family of keys: ``{P}:dedup:<T>:*``, ``{P}:task_lock:*``."""
        return ":".join([glob_escape(self.tag), name, *(glob_escape(p) for p in parts), "*"])

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def failed(self) -> str:
        return f"{self.tag}:failed_tasks"

    @property
    def controls(self) -> dict[str, str]:
        """Attribute of ControlKeys -> the old name (no hash tag)."""
        return {"paused": f"{self.prefix}:controls:paused", "rates": f"{self.prefix}:controls:rates",
                "plans": f"{self.prefix}:controls:plans", "calls": f"{self.prefix}:stats:calls",
                "throttled": f"{self.prefix}:stats:throttled"}


#: How each control merges when its old and new names both exist (engine/lua/upgrade/merge_key.lua):
#: a queue paused under either name stays paused; an override set under the new name wins; counters add up.
CONTROL_MERGE = {"paused": "union", "rates": "keep_new", "plans": "keep_new", "calls": "sum", "throttled": "sum"}
#: Families of lease bookkeeping the upgrade drops: old name -> why nothing is lost.
DROPPED = {"task_lock": "leases of tasks now back in a ready list", "leases": "the deadlines of those leases",
           "wtasks": "what each stopped worker held", "op": "answers kept for replayed calls (seconds)"}


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@attrs.frozen
class Step:
    """One old key, or a family of them (``source`` is then a SCAN pattern), and what the upgrade does with it."""

    kind: str
    source: str
    #: The new key, or the pattern of the new keys ('' when dropped or left).
    target: str
    #: Old keys found.
    keys: int
    #: Entries found: list entries, set members, hash fields (one per key for a family of strings).
    entries: int
    #: After a run: entries moved (keys, for a family or a drop); None in a plan.
    done: int | None = None
    #: The task type the step is about, if one.
    task_type: str | None = None
    #: What a person should know: why a key is dropped, what a merge kept.
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "from": self.source, "to": self.target or None, "task_type": self.task_type,
                "keys": self.keys, "entries": self.entries, "done": self.done, "note": self.note or None}


@attrs.frozen
class UpgradeReport:
    prefix: str
    dry_run: bool
    #: What there is to do (a plan), or what was done (``done`` set), in the order of a run.
    steps: tuple[Step, ...]
    #: Old task keys of task types the application does not know (or of no campaign id): not moved.
    left: tuple[Step, ...] = ()
    #: Ids of workers whose liveness key exists.
    live_workers: tuple[str, ...] = ()

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps

    @property
    def moved(self) -> int:
        """Entries moved by a run (0 for a plan)."""
        return sum(s.done or 0 for s in self.steps if s.kind != DROP)

    @property
    def dropped(self) -> int:
        """Keys of lease bookkeeping dropped by a run (0 for a plan)."""
        return sum(s.done or 0 for s in self.steps if s.kind == DROP)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "dry_run": self.dry_run,
            "nothing_to_do": self.nothing_to_do,
            "live_workers": list(self.live_workers),
            "steps": [s.to_dict() for s in self.steps],
            "left": [s.to_dict() for s in self.left],
            "moved": self.moved,
            "dropped_keys": self.dropped,
        }


def old_layout_present(client: redis.Redis | redis.RedisCluster, prefix: str, task_types: Iterable[str]) -> list[str]:
    """The old-layout keys that exist among each type's ready list, in-flight hash and delayed set, and the leases.

    Cheap enough for every start-up (one EXISTS each, pipelined, no SCAN): a
    service of the new version that finds any should refuse or log an error
    naming ``campaignctl upgrade-redis``, since it would never see that work.
    """
    old = OldKeys(prefix)
    names = [key for t in task_types for key in (old.queue(t), old.inflight(t), old.delayed(t))] + [old.leases]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return [name for name, found in zip(names, pipe.execute()) if found]


def upgrade_layout(client: redis.Redis | redis.RedisCluster, prefix: str, task_types: Sequence[str], *,
                   dry_run: bool = False, force: bool = False) -> UpgradeReport:
    """Move every key of the single-tag layout under ``prefix`` into the per-type layout (see the module docstring).

    ``client`` decodes responses (as engine.connection.connect makes it).
    With ``dry_run`` only the plan: what there is, key by key, and nothing
    changed. Raises ``ClusterRefused`` on a Redis Cluster client, and
    ``WorkersAlive`` while a worker's liveness key exists and there is
    something to move (unless ``force``), before changing anything.
    """
    if isinstance(client, redis.RedisCluster):
        raise ClusterRefused
    return _Upgrade(client, prefix, tuple(task_types)).run(dry_run=dry_run, force=force)


@attrs.define
class _Found:
    """What one SCAN of ``{P}:*`` found, by name."""

    #: "queue", "delayed", "inflight" -> the task types that have one.
    per_type: dict[str, set[str]] = attrs.field(factory=lambda: {"queue": set(), "delayed": set(), "inflight": set()})
    #: Task type -> dedup keys (with a numeric campaign id; the others in ``odd_dedup``).
    dedup: dict[str, int] = attrs.field(factory=dict)
    odd_dedup: dict[str, int] = attrs.field(factory=dict)
    #: Worker ids with a claiming list.
    claiming: set[str] = attrs.field(factory=set)
    #: "task_lock", "wtasks", "op" -> keys.
    bookkeeping: dict[str, int] = attrs.field(factory=dict)
    #: Worker ids with a liveness key.
    workers: set[str] = attrs.field(factory=set)


class _Upgrade:
    def __init__(self, client: redis.Redis, prefix: str, task_types: tuple[str, ...]) -> None:
        self.client = client
        self.prefix = prefix
        self.task_types = task_types
        self.old = OldKeys(prefix)
        self.new = Keys(prefix)
        controls = ControlKeys(prefix)
        #: Old control name -> (new name, how the two merge).
        self.controls = {name: (getattr(controls, attr), CONTROL_MERGE[attr])
                         for attr, name in self.old.controls.items()}
        self._scripts: dict[str, Any] | None = None

    @property
    def scripts(self) -> dict[str, Any]:
        if self._scripts is None:
            self._scripts = {path.stem: self.client.register_script(compose(path.read_text()))
                             for path in sorted(UPGRADE_LUA_DIR.glob("*.lua"))}
        return self._scripts

    def run(self, *, dry_run: bool, force: bool) -> UpgradeReport:
        plan = self.plan(dry_run=dry_run)
        if dry_run or plan.nothing_to_do:
            return plan
        if plan.live_workers and not force:
            raise WorkersAlive(self.prefix, plan.live_workers)
        done: list[Step] = []
        split = False
        for step in plan.steps:
            if step.kind != DEAD_LETTERS:
                done.append(self._do(step))
            elif not split:
                split = True
                done += self._split_dead_letters([s for s in plan.steps if s.kind == DEAD_LETTERS])
        return attrs.evolve(plan, steps=tuple(done))

    # -- the plan -----------------------------------------------------------------------

    def _survey(self) -> _Found:
        found = _Found()
        start = len(self.old.tag) + 1
        for name in self.client.scan_iter(match=glob_escape(self.old.tag) + ":*", count=SCAN_COUNT):
            head, _, tail = name[start:].partition(":")
            if not tail:
                continue
            if head in found.per_type:
                found.per_type[head].add(tail)
            elif head == "dedup":
                task_type, _, cid = tail.partition(":")
                counts = found.dedup if cid.isdigit() else found.odd_dedup
                counts[task_type] = counts.get(task_type, 0) + 1
            elif head == "claiming":
                found.claiming.add(tail)
            elif head in ("task_lock", "wtasks", "op"):
                found.bookkeeping[head] = found.bookkeeping.get(head, 0) + 1
            elif head == "worker":
                found.workers.add(tail)
        return found

    def plan(self, *, dry_run: bool = True) -> UpgradeReport:
        """One SCAN of ``{P}:*`` names the old keys; one pipelined round trip sizes them."""
        old, new, types = self.old, self.new, self.task_types
        found = self._survey()
        has = found.per_type
        unknown = sorted(set().union(*has.values()) - set(types))
        # (kind, old key, new key, task type, size command): the keys that are moved whole, in the order of a run.
        whole: list[tuple[str, str, str, str | None, str]] = [
            *((READY, old.queue(t), new.queue(t), t, "llen") for t in types if t in has["queue"]),
            *((DELAYED, old.delayed(t), new.delayed(t), t, "zcard") for t in types if t in has["delayed"]),
            *((IN_FLIGHT, old.inflight(t), new.queue(t), t, "hlen") for t in types if t in has["inflight"]),
            *((CLAIMING, old.claiming(w), new.queue("<type>"), None, "llen") for w in sorted(found.claiming)),
            (DROP, old.leases, "", None, "zcard"),
            *((CONTROL, name, target, None, "scard" if how == "union" else "hlen")
              for name, (target, how) in self.controls.items()),
            *((LEFT, f"{old.tag}:{head}:{t}", "", t, size) for t in unknown
              for head, size in (("queue", "llen"), ("delayed", "zcard"), ("inflight", "hlen")) if t in has[head]),
        ]
        pipe = self.client.pipeline(transaction=False)
        for _, key, _, _, size in whole:
            getattr(pipe, size)(key)
        sizes = {key: int(n) for (_, key, _, _, _), n in zip(whole, pipe.execute())}
        steps: list[Step] = []
        left: list[Step] = []
        for kind, key, target, task_type, _ in whole:
            if not sizes[key]:
                continue  # an aggregate key with no entries does not exist
            step = Step(kind, key, target, 1, sizes[key], task_type=task_type,
                        note=DROPPED["leases"] if key == old.leases else "")
            (left if kind == LEFT else steps).append(step)
        steps += [Step(DEDUP, old.family("dedup", t), f"{new.type_tag(t)}:dedup:*", found.dedup[t], found.dedup[t],
                       task_type=t) for t in types if found.dedup.get(t)]
        left += [Step(LEFT, old.family("dedup", t), "", n, n, task_type=t, note="unknown task type")
                 for t, n in sorted(found.dedup.items()) if t not in types]
        left += [Step(LEFT, old.family("dedup", t), "", n, n, task_type=t, note="campaign id not a number")
                 for t, n in sorted(found.odd_dedup.items())]
        left = [attrs.evolve(s, note=s.note or "unknown task type") for s in left]
        steps += [Step(DEAD_LETTERS, old.failed, new.failed(t), 1, n, task_type=t)
                  for t, n in self._typed_dead_letters().items()]
        steps += [Step(DROP, old.family(head), "", found.bookkeeping[head], found.bookkeeping[head], note=DROPPED[head])
                  for head in ("task_lock", "wtasks", "op") if found.bookkeeping.get(head)]
        order = (READY, DELAYED, IN_FLIGHT, CLAIMING, DEDUP, DEAD_LETTERS, DROP, CONTROL)
        steps.sort(key=lambda s: order.index(s.kind))  # stable: within a kind, as built
        return UpgradeReport(self.prefix, dry_run, tuple(steps), tuple(left), tuple(sorted(found.workers)))

    def _typed_dead_letters(self) -> dict[str, int]:
        """Entries of the old dead letters per known task type (what split_dead_letters.lua moves)."""
        counts: dict[str, int] = {}
        for raw in self.client.lrange(self.old.failed, 0, -1):
            task_type, _ = _known_type(raw, self.task_types)
            if task_type is not None:
                counts[task_type] = counts.get(task_type, 0) + 1
        return {t: counts[t] for t in self.task_types if t in counts}

    # -- the run ------------------------------------------------------------------------

    def _do(self, step: Step) -> Step:
        if step.kind == READY:
            return self._merge(step, "append")
        if step.kind == DELAYED:
            return self._merge(step, "min")
        if step.kind == IN_FLIGHT:
            return attrs.evolve(step, done=int(self.scripts["requeue_inflight"](keys=[step.source, step.target])))
        if step.kind == CLAIMING:
            return self._unclaim(step)
        if step.kind == DEDUP:
            return self._move_dedup(step)
        if step.kind == DROP:
            return self._drop(step)
        if step.kind == CONTROL:
            return self._merge(step, self.controls[step.source][1])
        raise AssertionError(f"no way to run a {step.kind!r} step")

    def _merge(self, step: Step, how: str) -> Step:
        n, outcome = self.scripts["merge_key"](keys=[step.source, step.target], args=[how])
        note = "merged with what the new key held" if outcome == "merged" else ""
        return attrs.evolve(step, done=0 if outcome == "none" else int(n), note=note)

    def _unclaim(self, step: Step) -> Step:
        """Each payload of a stopped worker's claiming list back on the front of its type's ready list."""
        worker_id = step.source[len(self.old.claiming("")):]
        types = self.task_types
        keys = [step.source, self.new.failed_untyped, *(self.new.queue(t) for t in types)]
        for _ in range(CAS_TRIES):
            raws = self.client.lrange(step.source, 0, -1)
            if not raws:
                return attrs.evolve(step, done=0)
            args: list[Any] = [len(raws), *raws]
            dead = 0
            for raw in raws:
                task_type, why = _known_type(raw, types)
                if task_type is not None:
                    args += [3 + types.index(task_type), raw]  # KEYS[3..]: the ready lists, in type order
                else:
                    dead += 1
                    args += [2, json.dumps(unreadable_entry(raw, why, worker_id))]
            moved = int(self.scripts["unclaim_all"](keys=keys, args=args))
            if moved >= 0:
                note = f"{dead} to {self.new.failed_untyped}: no known task type" if dead else ""
                return attrs.evolve(step, done=moved, note=note)
        raise UpgradeRefused(f"{step.source} kept changing while it was read: is a worker of the old version "
                             "still running?")

    def _move_dedup(self, step: Step) -> Step:
        assert step.task_type is not None
        moved = kept = 0
        for batch in _batches(self.client.scan_iter(match=step.source, count=SCAN_COUNT), BATCH):
            pipe = self.client.pipeline(transaction=False)
            for name in batch:
                cid = name.rsplit(":", 1)[1]
                if cid.isdigit():
                    self.scripts["merge_key"](keys=[name, self.new.dedup(step.task_type, int(cid))],
                                              args=["keep_new"], client=pipe)
            for _, outcome in pipe.execute():
                moved += outcome == "renamed"
                kept += outcome == "dropped"
        note = f"{kept} whose new key already existed (that one kept)" if kept else ""
        return attrs.evolve(step, done=moved, note=note)

    def _drop(self, step: Step) -> Step:
        if step.source == self.old.leases:
            return attrs.evolve(step, done=int(self.client.unlink(step.source)))
        dropped = 0
        for batch in _batches(self.client.scan_iter(match=step.source, count=SCAN_COUNT), BATCH):
            dropped += int(self.client.unlink(*batch))
        return attrs.evolve(step, done=dropped)

    def _split_dead_letters(self, planned: Sequence[Step]) -> list[Step]:
        """One call for every known type; a step per type that had entries (planned, or found meanwhile)."""
        new = self.new
        counts = self.scripts["split_dead_letters"](keys=[self.old.failed, *(new.failed(t) for t in self.task_types)],
                                                    args=list(self.task_types))
        by_target = {s.target: s for s in planned}
        out = []
        for t, n in zip(self.task_types, counts):
            step = by_target.get(new.failed(t))
            if step is None and n:
                step = Step(DEAD_LETTERS, self.old.failed, new.failed(t), 1, int(n), task_type=t)
            if step is not None:
                out.append(attrs.evolve(step, done=int(n)))
        return out


def _known_type(raw: str | bytes, task_types: Sequence[str]) -> tuple[str | None, str]:
    """(its task type, '') when ``raw`` is a JSON object naming a known one; else (None, why not)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, "payload is not JSON"
    if not isinstance(data, dict):
        return None, f"payload is a JSON {type(data).__name__}, not an object"
    task_type = data.get("task_type")
    if not isinstance(task_type, str):
        return None, "payload has no task_type"
    if task_type not in task_types:
        return None, f"unknown task type {task_type!r}"
    return task_type, ""


def unreadable_entry(raw: str | bytes, why: str, worker_id: str) -> dict[str, Any]:
    """A dead-letter entry, shaped as the engine's for a malformed payload, for one the upgrade cannot place."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    data: Any = None
    try:
        data = json.loads(raw)
    except ValueError:
        pass
    task_type = data.get("task_type") if isinstance(data, dict) and isinstance(data.get("task_type"), str) else None
    cid = data.get("campaign_id") if isinstance(data, dict) else None
    kept = raw if len(raw) <= 2 * MAX_PAYLOAD_BYTES else raw[: 2 * MAX_PAYLOAD_BYTES]
    return {
        "id": uuid.uuid4().hex,
        "task": kept,
        "task_type": task_type,
        "campaign_id": cid if type(cid) is int else None,
        "reason": f"malformed payload: {why} (in worker {worker_id}'s claiming list when upgrade-redis ran)",
        "error": None if kept is raw else f"payload cut to {len(kept)} of {len(raw)} characters",
        "at": time.time(),
        "worker_id": worker_id,
    }


def _batches(names: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for name in names:
        batch.append(name)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
