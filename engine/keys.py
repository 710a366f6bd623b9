"""Every Redis key name the engine uses, built in one place.

Redis Cluster runs a script only when all its keys hash to one slot, and a
slot lives on one shard. So the keys are grouped by what one script touches:

- each task type has its own hash tag ``{P:<type>}``: its ready list,
  in-flight hash, delayed set, lease set, dedup keys, locks, the claiming and
  held sets of each worker for that type, a copy of each worker's liveness
  key, its dead letters and the answers kept for replays. Every task script
  touches one type, so queues spread over the shards and each script still
  runs in one slot;
- the worker registry (``{P}``): registered workers, their liveness keys,
  reconcile's cursor and generation, the outbox of dead-letter hooks and the
  operator's controls;
- each rate-limit bucket its API's tag ``{<api>}`` (the seed's
  ``ratelimit:{api}:tokens`` / ``:last_refill``).

Work that spans tags (ack a stage, enqueue the next; take back a dead
worker's tasks of several types) is separate calls, each atomic in its slot,
ordered so the guarantees hold; the database is the truth. On a single node
the same names are used (one layout everywhere, no mode to get wrong).

Layout (P = key prefix, T = task type):

=====================================  ======  ==============================================
``{P:T}:queue``                        list    ready payloads; producers LPUSH, workers take from
                                               the right, requeued tasks go back on the right (front)
``{P:T}:claiming:<worker>``            list    payloads a worker moved out of the ready list and has
                                               not leased yet (phase 1 of the claim)
``{P:T}:inflight``                     hash    task_id -> payload of leased tasks
``{P:T}:task_lock:<task_id>``          string  the lease: ``<token>:<worker>`` (token made by the worker), PX =
                                               visibility timeout; after a settle a tombstone
                                               ``~<verb>:<token>`` for the replay window
``{P:T}:leases``                       zset    ``T:<task_id>`` scored by lease deadline (ms)
``{P:T}:wtasks:<worker>``              set     ``T:<task_id>`` leased by that worker
``{P:T}:worker:<worker>``              string  copy of the worker's liveness key (same value and TTL), so
                                               recovery's scripts re-check a verdict inside this slot
``{P:T}:delayed``                      zset    payloads scored by due time (ms)
``{P:T}:dedup:<campaign>``             string  task_id of the one live task of (T, campaign); no TTL:
                                               it lives exactly as long as that task
``{P:T}:failed_tasks``                 list    dead-letter entries (JSON) of this type
``{P:T}:op:<op id>``                   string  answer of a lease-less operation, for the replay window
``{P}:failed_tasks``                   list    dead letters of no known type (and of the old layout)
``{P}:worker:<worker>``                string  liveness key, PX = liveness TTL
``{P}:workers``                        hash    worker id -> JSON info (host, pid, queues, ...)
``{P}:generation``                     string  random id set by reconcile's full sweep; gone = Redis lost its data
``{P}:reconciled_until``               string  reconcile's cursor (the application's opaque "now" of the last pass)
``{P}:pending_hooks``                  list    dead-letter hooks that failed on an outage, for recovery to run again
``P:ratelimit:{<api>}:tokens``         string  tokens left in the bucket (float)
``P:ratelimit:{<api>}:last_refill``    string  server time of the last refill (µs)
``P:ratelimit:{<api>}:paused_until``   string  server time until which the bucket is shut (µs)
``P:ratelimit:{<api>}:op:<op id>``     string  answer of a pause, for the replay window
=====================================  ======  ==============================================

The operator's controls (engine/controls.py) share the registry's tag.
Before this layout every queue key shared the one tag ``{P}``
(``{P}:queue:<T>``, ``{P}:task_lock:<id>``, …): ``campaignctl upgrade-redis``
moves such keys into this layout (docs/deployment.md).
"""

from __future__ import annotations


class Keys:
    """Key names for one key prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: The registry's hash tag.
        self.tag = "{" + prefix + "}"

    def type_tag(self, task_type: str) -> str:
        """The hash tag of every key of one task type."""
        return "{" + f"{self.prefix}:{task_type}" + "}"

    # -- per task type ----------------------------------------------------------------

    def queue(self, task_type: str) -> str:
        return f"{self.type_tag(task_type)}:queue"

    def inflight(self, task_type: str) -> str:
        return f"{self.type_tag(task_type)}:inflight"

    def delayed(self, task_type: str) -> str:
        return f"{self.type_tag(task_type)}:delayed"

    def leases(self, task_type: str) -> str:
        return f"{self.type_tag(task_type)}:leases"

    def task_lock(self, task_type: str, task_id: str) -> str:
        return f"{self.type_tag(task_type)}:task_lock:{task_id}"

    def dedup(self, task_type: str, campaign_id: int) -> str:
        return f"{self.type_tag(task_type)}:dedup:{campaign_id}"

    def claiming(self, task_type: str, worker_id: str) -> str:
        return f"{self.type_tag(task_type)}:claiming:{worker_id}"

    def wtasks(self, task_type: str, worker_id: str) -> str:
        return f"{self.type_tag(task_type)}:wtasks:{worker_id}"

    def liveness(self, task_type: str, worker_id: str) -> str:
        """The copy of ``worker_id``'s liveness key in ``task_type``'s slot."""
        return f"{self.type_tag(task_type)}:worker:{worker_id}"

    def failed(self, task_type: str) -> str:
        return f"{self.type_tag(task_type)}:failed_tasks"

    def op(self, task_type: str, op_id: str) -> str:
        return f"{self.type_tag(task_type)}:op:{op_id}"

    # -- the registry -----------------------------------------------------------------

    @property
    def failed_untyped(self) -> str:
        return f"{self.tag}:failed_tasks"

    def worker(self, worker_id: str) -> str:
        return f"{self.tag}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.tag}:workers"

    @property
    def generation(self) -> str:
        return f"{self.tag}:generation"

    @property
    def reconciled_until(self) -> str:
        return f"{self.tag}:reconciled_until"

    @property
    def pending_hooks(self) -> str:
        return f"{self.tag}:pending_hooks"

    # -- rate limits ----------------------------------------------------------------------

    def ratelimit(self, api: str, part: str) -> str:
        """``part`` is ``tokens``, ``last_refill``, ``paused_until`` or ``op:<op id>``."""
        return f"{self.prefix}:ratelimit:{{{api}}}:{part}"


def task_key(task_type: str, task_id: str) -> str:
    """Member naming one leased task in ``leases`` and ``wtasks``."""
    return f"{task_type}:{task_id}"


def split_task_key(member: str) -> tuple[str, str]:
    """(task_type, task_id); task types never contain ``:``."""
    task_type, _, task_id = member.partition(":")
    return task_type, task_id
