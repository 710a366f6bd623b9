"""Every Redis key name the engine uses, built in one place.

Queue keys share the hash tag ``{<prefix>}`` so every queue script touches
keys of one slot (Redis Cluster runs a script only when all its keys hash to
one slot). Rate-limit keys are tagged per API instead: one bucket's three keys
share a slot, and different APIs spread over the cluster.

Layout (P = key prefix):

=================================  ======  ===============================================
``{P}:queue:<type>``               list    ready payloads; producers LPUSH, workers take from
                                           the right, requeued tasks go back on the right (front)
``{P}:claiming:<worker>``          list    payloads a worker moved out of the ready lists and has
                                           not leased yet (phase 1 of the claim)
``{P}:inflight:<type>``            hash    task_id -> payload of leased tasks
``{P}:task_lock:<task_id>``        string  the lease: ``<token>:<worker>`` (token made by the worker), PX =
                                           visibility timeout; after a settle a tombstone
                                           ``~<verb>:<token>`` for the replay window
``{P}:leases``                     zset    ``<type>:<task_id>`` scored by lease deadline (ms)
``{P}:wtasks:<worker>``            set     ``<type>:<task_id>`` leased by that worker
``{P}:op:<op id>``                 string  answer of a lease-less operation, for the replay window
``{P}:generation``                 string  random id set by reconcile's full sweep; gone = Redis lost its data
``{P}:reconciled_until``           string  reconcile's cursor (the application's opaque "now" of the last pass)
``{P}:pending_hooks``              list    dead-letter hooks that failed on an outage, for recovery to run again
``{P}:delayed:<type>``             zset    payloads scored by due time (ms)
``{P}:dedup:<type>:<campaign>``    string  task_id of the one live task of (type, campaign); no TTL:
                                           it lives exactly as long as that task
``{P}:failed_tasks``               list    dead-letter entries (JSON)
``{P}:worker:<worker>``            string  liveness key, PX = liveness TTL
``{P}:workers``                    hash    worker id -> JSON info (host, pid, queues, ...)
``P:ratelimit:{<api>}:tokens``     string  tokens left in the bucket (float)
``P:ratelimit:{<api>}:last_refill`` string server time of the last refill (µs)
``P:ratelimit:{<api>}:paused_until`` string server time until which the bucket is shut (µs)
``P:ratelimit:{<api>}:op:<op id>``  string  answer of a pause, for the replay window
=================================  ======  ===============================================
"""

from __future__ import annotations


class Keys:
    """Key names for one key prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"

    def queue(self, task_type: str) -> str:
        return f"{self.tag}:queue:{task_type}"

    def inflight(self, task_type: str) -> str:
        return f"{self.tag}:inflight:{task_type}"

    def delayed(self, task_type: str) -> str:
        return f"{self.tag}:delayed:{task_type}"

    def task_lock(self, task_id: str) -> str:
        return f"{self.tag}:task_lock:{task_id}"

    def dedup(self, task_type: str, campaign_id: int) -> str:
        return f"{self.tag}:dedup:{task_type}:{campaign_id}"

    def claiming(self, worker_id: str) -> str:
        return f"{self.tag}:claiming:{worker_id}"

    def wtasks(self, worker_id: str) -> str:
        return f"{self.tag}:wtasks:{worker_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.tag}:worker:{worker_id}"

    def op(self, op_id: str) -> str:
        return f"{self.tag}:op:{op_id}"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def generation(self) -> str:
        return f"{self.tag}:generation"

    @property
    def reconciled_until(self) -> str:
        return f"{self.tag}:reconciled_until"

    @property
    def pending_hooks(self) -> str:
        return f"{self.tag}:pending_hooks"

    @property
    def failed(self) -> str:
        return f"{self.tag}:failed_tasks"

    @property
    def workers(self) -> str:
        return f"{self.tag}:workers"

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
