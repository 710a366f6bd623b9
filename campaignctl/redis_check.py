"""What ``campaignctl check`` finds out about Redis: one node or a cluster, whether every slot is served, eviction.

A single node: it answers, it is a primary (a replica refuses writes), and
its ``maxmemory-policy``. A cluster (REDIS_CLUSTER): CLUSTER NODES from the
node REDIS_URL names gives the masters and replicas and which slots each
master serves (CLUSTER SLOTS leaves out a replica that has not synced yet);
then every node is asked on its own connection (PING, CONFIG GET
maxmemory-policy), so one that does not answer is named. All 16384 slots
must have a master that answers, and the cluster must say ``cluster_state:ok``:
a slot without one is a task type (or the registry, or a bucket) whose
commands fail.

Any policy other than ``noeviction`` is a warning, as at every service's
start-up (engine.connection): Redis then answers, but may drop queued tasks
and leases under memory pressure. A node that refuses CONFIG (ElastiCache)
leaves its policy unknown: its parameter group sets it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import redis

from engine.connection import refuse_cluster_node

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: The policy that never drops our keys.
NOEVICTION = "noeviction"


@attrs.frozen
class RedisReport:
    """What one check found. ``problems`` fail the check (exit 1); ``warnings`` are printed, exit 0."""

    cluster: bool
    masters: int
    replicas: int
    #: Slots whose master answered.
    served: int
    #: node (host:port) -> maxmemory-policy, None where CONFIG was refused (nodes that answered).
    policies: dict[str, str | None]
    problems: tuple[str, ...] = ()
    #: Replicas that did not answer (host:port -> why): everything is served, but their shard cannot fail over.
    replicas_down: dict[str, str] = attrs.field(factory=dict)
    #: Nodes the cluster marks failed that serve nothing (a master whose replica took over, a removed node).
    failed: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        evicting = {node: p for node, p in self.policies.items() if p is not None and p != NOEVICTION}
        out = [f"maxmemory-policy is {policy!r} on {node}: Redis may evict queued tasks and leases; set it to "
               f"{NOEVICTION!r}" for node, policy in evicting.items()]
        out += [f"replica {node} does not answer ({why}): its shard cannot fail over"
                for node, why in self.replicas_down.items()]
        out += [f"{node} is marked failed and serves no slots: restart it (it rejoins as a replica) or "
                "CLUSTER FORGET it" for node in self.failed]
        unknown = [node for node, p in self.policies.items() if p is None]
        if unknown:
            out.append(f"maxmemory-policy unknown on {', '.join(unknown)} (CONFIG refused, as on ElastiCache): "
                       f"make sure the parameter group sets {NOEVICTION!r}")
        return out

    def summary(self) -> str:
        """``3 masters, 3 replicas, all 16384 slots served, maxmemory-policy noeviction on all 6 nodes``."""
        policies = set(self.policies.values())
        if len(policies) == 1 and None not in policies:
            (policy,) = policies
            where = f" on all {len(self.policies)} nodes" if self.cluster else ""
            policy_text = f"maxmemory-policy {policy}{where}"
        else:
            policy_text = "maxmemory-policy " + ", ".join(
                f"{p or 'unknown'} on {node}" for node, p in sorted(self.policies.items()))
        if not self.cluster:
            return f"single node, {policy_text}"
        slots = f"all {SLOTS} slots served" if self.served == SLOTS else f"{self.served} of {SLOTS} slots served"
        return (f"{self.masters} master{'s' if self.masters != 1 else ''}, "
                f"{self.replicas} replica{'s' if self.replicas != 1 else ''}, {slots}, {policy_text}")


def inspect(client: redis.Redis) -> RedisReport:
    """Look at the Redis ``client`` talks to. Raises redis' errors when it does not answer at all."""
    if isinstance(client, redis.RedisCluster):
        return _inspect_cluster(client)
    return _inspect_node(client)


def _inspect_node(client: redis.Redis) -> RedisReport:
    client.ping()
    refuse_cluster_node(client)  # REDIS_CLUSTER unset against a cluster node: a setting, exit 2
    problems = []
    try:
        role = client.info("replication").get("role")
    except redis.ResponseError:
        role = None
    if role == "slave":
        problems.append("REDIS_URL names a replica, which refuses writes: point it at the primary")
    kwargs = client.connection_pool.connection_kwargs
    name = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
    return RedisReport(cluster=False, masters=1, replicas=0, served=0, policies={name: _policy(client)},
                       problems=tuple(problems))


def _policy(node: redis.Redis) -> str | None:
    try:
        return node.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        return None


def _inspect_cluster(client: redis.RedisCluster) -> RedisReport:
    nodes: dict[str, dict[str, Any]] = client.cluster_nodes()  # CLUSTER NODES of the node REDIS_URL names
    state = client.cluster_info().get("cluster_state")
    masters = {name: info for name, info in nodes.items() if "master" in info["flags"] and info["slots"]}
    replicas = {name for name, info in nodes.items() if "slave" in info["flags"]}
    failed = sorted(name for name, info in nodes.items()
                    if name not in masters and name not in replicas and "fail" in info["flags"].split(","))
    down: dict[str, str] = {}
    policies: dict[str, str | None] = {}
    for name in sorted({*masters, *replicas}):
        try:
            with _node(client, name) as node:
                node.ping()  # on its own connection: no cluster-level retries or redirects
                policies[name] = _policy(node)
        except (redis.RedisError, OSError) as exc:
            down[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ranges = {name: [(int(a), int(b)) for a, b, *_ in info["slots"]] for name, info in masters.items()}
    served = sum(b - a + 1 for name, spans in ranges.items() if name not in down for a, b in spans)
    problems = []
    if served < SLOTS:
        problems.append(f"{SLOTS - served} of {SLOTS} slots have no master that answers ({_unserved(ranges, down)})")
    if state != "ok":
        problems.append(f"cluster_state is {state!r}")
    return RedisReport(cluster=True, masters=len(masters), replicas=len(replicas), served=served, policies=policies,
                       problems=tuple(problems), failed=tuple(failed),
                       replicas_down={name: why for name, why in down.items() if name not in masters})


@contextlib.contextmanager
def _node(client: redis.RedisCluster, name: str) -> Iterator[redis.Redis]:
    """A client of the one node ``name`` (host:port): the cluster client's own, or a new one closed afterwards."""
    known = client.get_node(node_name=name)
    if known is not None and known.redis_connection is not None:
        yield known.redis_connection
        return
    host, _, port = name.rpartition(":")
    manager = client.nodes_manager
    node = manager.create_redis_node(host=host, port=int(port), **manager.connection_kwargs)
    try:
        yield node
    finally:
        node.close()


def _unserved(ranges: dict[str, list[tuple[int, int]]], down: dict[str, str]) -> str:
    """``slots 0-5460 of 127.0.0.1:7000: Connection refused; slots 16000-16383 assigned to no master``."""
    parts = [f"slots {', '.join(f'{a}-{b}' for a, b in spans)} of {name}: {down[name]}"
             for name, spans in sorted(ranges.items()) if name in down]
    unclaimed, cursor = [], 0
    for a, b in sorted(span for spans in ranges.values() for span in spans):
        if a > cursor:
            unclaimed.append(f"{cursor}-{a - 1}")
        cursor = max(cursor, b + 1)
    if cursor < SLOTS:
        unclaimed.append(f"{cursor}-{SLOTS - 1}")
    if unclaimed:
        parts.append(f"slots {', '.join(unclaimed)} assigned to no master")
    return "; ".join(parts)
