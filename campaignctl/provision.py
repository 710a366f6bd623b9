"""Create or check, idempotently, the ElastiCache resources the engine runs on (``campaignctl provision-redis``).

Three resources, in the order each needs the one before: a cache subnet
group; a parameter group with ``maxmemory-policy noeviction`` (queues,
leases and buckets must never be evicted; ``cluster-enabled yes`` in cluster
mode); and a replication group with TLS in transit, encryption at rest, an
AUTH token, Multi-AZ and automatic failover.

Planning only reads (describe calls) and yields ``Step``s: a plan line, and
the call that makes the change. A difference ElastiCache cannot change in
place (encryption at rest, cluster mode, the subnet group of a group), or one
that is a migration an operator should start knowingly (resharding, adding
replicas, TLS or an AUTH token on a live group), is a step without a call:
then every difference is reported and nothing at all is changed. So a run
changes everything asked or nothing, unless AWS itself fails half way; a
second run then picks up where the first stopped, and a run with nothing to
do makes no create or modify call.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from campaignctl.cli import Refused, UsageError
from engine.redact import redact

#: Parameter group families this command knows: (engine, default engine version). All support ClusterMode.
FAMILIES = {"redis7": ("redis", "7.1"), "valkey7": ("valkey", "7.2"), "valkey8": ("valkey", "8.0")}
DEFAULT_FAMILY = "redis7"
#: A memory-optimised node with TLS, Multi-AZ and failover; size it to the queued tasks (bench/: bytes per task).
DEFAULT_NODE_TYPE = "cache.r7g.large"
#: Replication group id when --name is not given; the subnet and parameter groups are named after it.
DEFAULT_NAME = "campaign-redis"
#: Redis's own port.
DEFAULT_PORT = 6379
#: ElastiCache's limits: shards of a cluster-mode group, replicas per shard.
MAX_SHARDS, MAX_REPLICAS = 500, 5
#: ElastiCache's longest replication group id, in characters.
MAX_GROUP_ID = 40
#: Seconds between two looks at a group's status when waiting (boto3's waiter polls at this pace).
WAIT_DELAY = 15
#: Tag put on everything this command creates.
TAG = {"Key": "managed-by", "Value": "campaignctl provision-redis"}
#: Description of everything this command creates (shown in the console).
DESCRIPTION = "campaign-engine Redis (campaignctl provision-redis)"

_ID = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_NODE_TYPE = re.compile(r"cache\.[a-z0-9-]+\.[a-z0-9]+")


@dataclass(frozen=True)
class RedisSpec:
    """What the operator asked for; ``check()`` refuses what ElastiCache would refuse half way through."""

    name: str = DEFAULT_NAME
    node_type: str = DEFAULT_NODE_TYPE
    family: str = DEFAULT_FAMILY
    engine_version: str | None = None
    shards: int = 1
    replicas: int = 1
    cluster: bool = False
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    subnet_group: str = ""
    parameter_group: str = ""
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "cluster", self.cluster or self.shards > 1)
        object.__setattr__(self, "subnet_group", self.subnet_group or f"{self.name}-subnets")
        object.__setattr__(self, "parameter_group", self.parameter_group or f"{self.name}-params")

    @property
    def engine(self) -> str:
        return FAMILIES[self.family][0]

    @property
    def version(self) -> str:
        return self.engine_version or FAMILIES[self.family][1]

    @property
    def parameters(self) -> dict[str, str]:
        """The parameter values the engine needs."""
        return {"maxmemory-policy": "noeviction", "cluster-enabled": "yes" if self.cluster else "no"}

    @property
    def nodes(self) -> int:
        return self.shards * (1 + self.replicas)

    def check(self) -> None:
        """UsageError (exit 2) for anything ElastiCache would refuse, before any call is made."""
        if len(self.name) > MAX_GROUP_ID or not _ID.fullmatch(self.name):
            raise UsageError(f"--name {self.name!r}: a replication group id is 1 to {MAX_GROUP_ID} lowercase "
                             "letters, digits and single hyphens, starting with a letter")
        for flag, value in (("--subnet-group", self.subnet_group), ("--parameter-group", self.parameter_group)):
            if len(value) > 255 or not _ID.fullmatch(value):
                raise UsageError(f"{flag} {value!r}: lowercase letters, digits and single hyphens, "
                                 "starting with a letter")
        if self.parameter_group.startswith("default"):
            raise UsageError(f"--parameter-group {self.parameter_group!r}: ElastiCache's default groups "
                             "cannot be changed; name a group of your own")
        if self.family not in FAMILIES:
            raise UsageError(f"--family {self.family!r}: one of {', '.join(FAMILIES)}")
        if self.engine_version and self.engine_version.split(".")[0] != re.sub(r"\D", "", self.family):
            raise UsageError(f"--engine-version {self.engine_version} is not of family {self.family}")
        if not _NODE_TYPE.fullmatch(self.node_type):
            raise UsageError(f"--node-type {self.node_type!r}: a node type looks like cache.r7g.large")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise UsageError(f"--shards {self.shards}: 1 to {MAX_SHARDS}")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise UsageError(f"--replicas {self.replicas}: 1 to {MAX_REPLICAS} (Multi-AZ with automatic "
                             "failover needs a replica in each shard)")
        if not 1 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: 1 to 65535")

    def summary(self) -> str:
        shape = (f"cluster mode, {self.shards} shard(s) × {1 + self.replicas} nodes" if self.cluster
                 else f"1 primary + {self.replicas} replica(s)")
        groups = f", security groups {', '.join(self.security_group_ids)}" if self.security_group_ids else ""
        return (f"{self.engine} {self.version} on {self.node_type}, {shape}, port {self.port}, TLS in transit, "
                f"encryption at rest, AUTH token, Multi-AZ, automatic failover{groups}")


@dataclass(frozen=True)
class Step:
    """One change to one resource: its plan line, and the call that makes it (None: reported, not made).

    ``apply`` gets the AUTH token (None unless the replication group is created).
    """

    resource: str
    change: str
    apply: Callable[[str | None], None] | None = None

    @property
    def line(self) -> str:
        return f"{self.resource}: {self.change}"


@dataclass
class Plan:
    """Every step for one run, in the order they must be made."""

    steps: list[Step] = field(default_factory=list)
    #: Things that could not be checked (said, not fatal).
    notes: list[str] = field(default_factory=list)
    creates_group: bool = False

    @property
    def refused(self) -> list[Step]:
        return [s for s in self.steps if s.apply is None]


# -- AWS calls: one line naming the resource, never a traceback ---------------------------------------------------


def call(resource: str, method: Callable[..., Any], **params: Any) -> Any:
    """``method(**params)``; an AWS failure becomes Refused (exit 1), missing credentials UsageError (exit 2).

    Messages are redacted of ``params['AuthToken']``: AWS does not echo it, but a message is no place to find out.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
    from botocore.parsers import ResponseParserError

    secrets = [str(params.get("AuthToken") or "")]
    try:
        return method(**params)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "error"), error.get("Message", "")
        raise Refused(redact(f"{resource}: {code}: {message}".rstrip(": "), secrets)) from None
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise UsageError(f"{resource}: no AWS credentials ({exc}); set AWS_PROFILE or AWS_ACCESS_KEY_ID "
                         "and AWS_SECRET_ACCESS_KEY") from None
    except BotoCoreError as exc:
        raise Refused(redact(f"{resource}: {exc}", secrets)) from None
    except ResponseParserError as exc:  # not an AWS answer (a proxy's page, an emulator without the operation)
        raise Refused(redact(f"{resource}: {str(exc).splitlines()[0].rstrip(': ')}", secrets)) from None


def describe(resource: str, method: Callable[..., Any], missing: type[Exception], **params: Any) -> Any:
    """The describe call's answer, or None when it raises ``missing`` (the resource's not-found error)."""

    def attempt() -> Any:
        try:
            return method(**params)
        except missing:
            return None

    return call(resource, attempt)


# -- planning -------------------------------------------------------------------------------------------------------


def make_plan(ec: Any, spec: RedisSpec) -> Plan:
    """Read the three resources and list what must change, without changing anything."""
    plan = Plan()
    for step in (plan_subnet_group(ec, spec), plan_parameter_group(ec, spec)):
        if step is not None:
            plan.steps.append(step)
    plan_replication_group(ec, spec, plan)
    return plan


def plan_subnet_group(ec: Any, spec: RedisSpec) -> Step | None:
    where = f"subnet group {spec.subnet_group}"
    found = describe(where, ec.describe_cache_subnet_groups, ec.exceptions.CacheSubnetGroupNotFoundFault,
                     CacheSubnetGroupName=spec.subnet_group)
    want = sorted(spec.subnet_ids)
    if found is None:
        if not want:
            raise UsageError(f"{where} does not exist: give its subnets with --subnet-ids")
        return Step(where, f"create with subnets {', '.join(want)}", lambda _token: call(
            where, ec.create_cache_subnet_group, CacheSubnetGroupName=spec.subnet_group,
            CacheSubnetGroupDescription=DESCRIPTION, SubnetIds=want, Tags=[TAG]))
    have = sorted(s["SubnetIdentifier"] for s in found["CacheSubnetGroups"][0].get("Subnets", []))
    if want and have != want:
        return Step(where, f"set subnets {', '.join(have) or '(none)'} → {', '.join(want)}", lambda _token: call(
            where, ec.modify_cache_subnet_group, CacheSubnetGroupName=spec.subnet_group, SubnetIds=want))
    return None


def plan_parameter_group(ec: Any, spec: RedisSpec) -> Step | None:
    name, where, want = spec.parameter_group, f"parameter group {spec.parameter_group}", spec.parameters
    found = describe(where, ec.describe_cache_parameter_groups, ec.exceptions.CacheParameterGroupNotFoundFault,
                     CacheParameterGroupName=name)

    def set_values(values: dict[str, str]) -> None:
        call(where, ec.modify_cache_parameter_group, CacheParameterGroupName=name,
             ParameterNameValues=[{"ParameterName": k, "ParameterValue": v} for k, v in values.items()])

    if found is None:
        def create(_token: str | None) -> None:
            call(where, ec.create_cache_parameter_group, CacheParameterGroupName=name,
                 CacheParameterGroupFamily=spec.family, Description=DESCRIPTION, Tags=[TAG])
            set_values(want)

        return Step(where, f"create (family {spec.family}) with {_pairs(want)}", create)
    family = found["CacheParameterGroups"][0].get("CacheParameterGroupFamily")
    if family != spec.family:
        return Step(where, f"family is {family}, asked {spec.family}: a parameter group's family cannot change "
                           "(name another group with --parameter-group)")
    have = _parameter_values(ec, where, name, want)
    differ = {k: v for k, v in want.items() if have.get(k) != v}
    if not differ:
        return None
    change = ", ".join(f"{k} {have.get(k) or '(unset)'} → {v}" for k, v in differ.items())
    return Step(where, f"set {change}", lambda _token: set_values(differ))


def _parameter_values(ec: Any, where: str, name: str, wanted: Iterable[str]) -> dict[str, str]:
    """The group's current value of each wanted parameter (paginated: a family has ~100 parameters)."""
    wanted = set(wanted)

    def read() -> dict[str, str]:
        values: dict[str, str] = {}
        for page in ec.get_paginator("describe_cache_parameters").paginate(CacheParameterGroupName=name):
            for p in page.get("Parameters", []):
                if p.get("ParameterName") in wanted:
                    values[p["ParameterName"]] = str(p.get("ParameterValue", ""))
        return values

    return call(where, read)


def plan_replication_group(ec: Any, spec: RedisSpec, plan: Plan) -> None:
    where = f"replication group {spec.name}"
    found = describe(where, ec.describe_replication_groups, ec.exceptions.ReplicationGroupNotFoundFault,
                     ReplicationGroupId=spec.name)
    if found is None:
        plan.creates_group = True
        plan.steps.append(Step(where, f"create: {spec.summary()}", lambda token: call(
            where, ec.create_replication_group, **create_params(spec, token))))
        return
    group = found["ReplicationGroups"][0]
    creating = group.get("Status") == "creating"
    refused, changes = _group_differences(spec, group, shape=not creating)
    if creating:
        # Its shards and nodes are not all listed yet, and ElastiCache changes nothing until it is available.
        plan.notes.append(f"{where} is still being created: its shards, nodes and node settings are checked "
                          "once it is available (run again, or with --wait)")
        refused += [f"{text} (to change once it is available)" for text, _ in changes]
        plan.steps.extend(Step(where, text) for text in refused)
        return
    member = _member_settings(ec, group, plan)
    if member is not None:
        pg, subnets, security_groups = member
        if pg != spec.parameter_group:
            changes.append((f"parameter group {pg or '(none)'} → {spec.parameter_group}",
                            {"CacheParameterGroupName": spec.parameter_group}))
        if subnets != spec.subnet_group:
            refused.append(f"its subnet group is {subnets}, asked {spec.subnet_group}: a group's subnet group "
                           "cannot change (pass --subnet-group " + f"{subnets} to keep it)")
        if spec.security_group_ids and sorted(security_groups) != sorted(spec.security_group_ids):
            changes.append((f"security groups {', '.join(sorted(security_groups)) or '(none)'} → "
                            f"{', '.join(sorted(spec.security_group_ids))}",
                            {"SecurityGroupIds": sorted(spec.security_group_ids)}))
    plan.steps.extend(Step(where, text) for text in refused)
    if changes:
        params: dict[str, Any] = {"ReplicationGroupId": spec.name, "ApplyImmediately": True}
        for _, p in changes:
            params.update(p)
        plan.steps.append(Step(where, "modify: " + "; ".join(text for text, _ in changes),
                               lambda _token: call(where, ec.modify_replication_group, **params)))


def create_params(spec: RedisSpec, token: str | None) -> dict[str, Any]:
    """CreateReplicationGroup's arguments. NumNodeGroups + ReplicasPerNodeGroup serve both modes (1 shard
    when cluster mode is off), so the shape is said the same way whatever the mode."""
    if not token:
        raise UsageError("no AUTH token to create the replication group with")
    params: dict[str, Any] = {
        "ReplicationGroupId": spec.name,
        "ReplicationGroupDescription": DESCRIPTION,
        "Engine": spec.engine,
        "EngineVersion": spec.version,
        "CacheNodeType": spec.node_type,
        "CacheParameterGroupName": spec.parameter_group,
        "CacheSubnetGroupName": spec.subnet_group,
        "Port": spec.port,
        "NumNodeGroups": spec.shards,
        "ReplicasPerNodeGroup": spec.replicas,
        "ClusterMode": "enabled" if spec.cluster else "disabled",
        "AutomaticFailoverEnabled": True,
        "MultiAZEnabled": True,
        "TransitEncryptionEnabled": True,
        "AtRestEncryptionEnabled": True,
        "AuthToken": token,
        "Tags": [TAG],
    }
    if spec.security_group_ids:
        params["SecurityGroupIds"] = list(spec.security_group_ids)
    return params


def _group_differences(spec: RedisSpec, group: dict[str, Any], *,
                       shape: bool = True) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(differences this command will not change, (change, ModifyReplicationGroup arguments) it will).

    ``shape``: compare shards and replicas too (not while the group is being created: they are not all listed).
    """
    refused: list[str] = []
    changes: list[tuple[str, dict[str, Any]]] = []
    status = group.get("Status", "")
    if status in ("deleting", "create-failed"):
        refused.append(f"its status is {status}")
    engine = group.get("Engine")
    if engine and engine != spec.engine:
        refused.append(f"its engine is {engine}, asked {spec.engine} (an engine upgrade is not run here)")
    if bool(group.get("ClusterEnabled")) != spec.cluster:
        on = "on" if group.get("ClusterEnabled") else "off"
        refused.append(f"cluster mode is {on}, asked {'on' if spec.cluster else 'off'}: create a new group "
                       "under another --name and move to it")
    if not group.get("TransitEncryptionEnabled"):
        refused.append("TLS in transit is off: enable it with modify-replication-group "
                       "--transit-encryption-mode preferred, then required, once clients use rediss://")
    if not group.get("AtRestEncryptionEnabled"):
        refused.append("encryption at rest is off: it cannot be turned on for an existing group; "
                       "create a new group under another --name and move to it")
    if not group.get("AuthTokenEnabled"):
        refused.append("it has no AUTH token: add one with modify-replication-group --auth-token "
                       "--auth-token-update-strategy ROTATE, then move clients to it")
    shards = len(group.get("NodeGroups") or [])
    if shape and shards != spec.shards:
        refused.append(f"it has {shards} shard(s), asked {spec.shards}: reshard online with "
                       "modify-replication-group-shard-configuration")
    elif shape and len(group.get("MemberClusters") or []) != spec.nodes:
        have = len(group.get("MemberClusters") or []) // max(shards, 1) - 1
        refused.append(f"it has {have} replica(s) per shard, asked {spec.replicas}: change them with "
                       "increase-replica-count or decrease-replica-count")
    if group.get("AutomaticFailover") not in ("enabled", "enabling"):
        changes.append((f"automatic failover {group.get('AutomaticFailover', '(unset)')} → enabled",
                        {"AutomaticFailoverEnabled": True}))
    if group.get("MultiAZ") != "enabled":
        changes.append((f"Multi-AZ {group.get('MultiAZ', '(unset)')} → enabled", {"MultiAZEnabled": True}))
    if group.get("CacheNodeType") != spec.node_type:
        changes.append((f"node type {group.get('CacheNodeType')} → {spec.node_type}",
                        {"CacheNodeType": spec.node_type}))
    return refused, changes


def _member_settings(ec: Any, group: dict[str, Any], plan: Plan) -> tuple[str, str, list[str]] | None:
    """(parameter group, subnet group, security group ids) of the group's first node: DescribeReplicationGroups
    does not say them. None (and a note) when that node cannot be read."""
    members = group.get("MemberClusters") or []
    if not members:
        plan.notes.append(f"replication group {group.get('ReplicationGroupId')}: no member node yet, so its "
                          "parameter group, subnet group and security groups were not checked")
        return None
    where = f"node {members[0]} of replication group {group.get('ReplicationGroupId')}"
    found = describe(where, ec.describe_cache_clusters, ec.exceptions.CacheClusterNotFoundFault,
                     CacheClusterId=members[0])
    if not found or not found.get("CacheClusters"):
        plan.notes.append(f"{where}: not found, so the group's parameter group, subnet group and security "
                          "groups were not checked")
        return None
    node = found["CacheClusters"][0]
    return (node.get("CacheParameterGroup", {}).get("CacheParameterGroupName", ""),
            node.get("CacheSubnetGroupName", ""),
            [g["SecurityGroupId"] for g in node.get("SecurityGroups", []) if g.get("SecurityGroupId")])


def _pairs(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


# -- after the changes -----------------------------------------------------------------------------------------------


def wait_available(ec: Any, spec: RedisSpec, timeout: float) -> None:
    """Block until the group is ``available`` (boto3's waiter), or Refused after ``timeout`` seconds."""
    from botocore.exceptions import WaiterError

    where = f"replication group {spec.name}"
    delay = max(1, min(WAIT_DELAY, int(timeout)))
    try:
        ec.get_waiter("replication_group_available").wait(
            ReplicationGroupId=spec.name,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))})
    except WaiterError as exc:
        groups = (exc.last_response or {}).get("ReplicationGroups") or [{}]
        status = groups[0].get("Status") or (exc.last_response or {}).get("Error", {}).get("Code", "unknown")
        raise Refused(f"{where}: not available after {timeout:g} s (status {status})") from None


def settings(ec: Any, spec: RedisSpec, token_from: str) -> list[str]:
    """The lines to put in the engine's environment: REDIS_URL (the configuration endpoint in cluster mode, the
    primary endpoint otherwise), REDIS_CLUSTER, and where REDIS_PASSWORD comes from (never the token)."""
    where = f"replication group {spec.name}"
    found = describe(where, ec.describe_replication_groups, ec.exceptions.ReplicationGroupNotFoundFault,
                     ReplicationGroupId=spec.name)
    group = found["ReplicationGroups"][0] if found else {}
    cluster = bool(group.get("ClusterEnabled", spec.cluster))
    if cluster:
        endpoint = group.get("ConfigurationEndpoint") or {}
    else:
        endpoint = ((group.get("NodeGroups") or [{}])[0]).get("PrimaryEndpoint") or {}
    lines = []
    if endpoint.get("Address"):
        lines.append(f"REDIS_URL=rediss://{endpoint['Address']}:{endpoint.get('Port') or spec.port}/0")
    else:
        lines.append(f"# REDIS_URL: the endpoint is known once {where} is available "
                     "(run again with --wait, or later)")
    lines.append(f"REDIS_CLUSTER={'true' if cluster else 'false'}")
    lines.append(password_line(token_from))
    return lines


def password_line(token_from: str) -> str:
    return f"# REDIS_PASSWORD must be set to the AUTH token (from {token_from}); it is never printed"


# -- one run ---------------------------------------------------------------------------------------------------------


def make_clients(region: str | None, endpoint_url: str | None) -> tuple[Any, Any]:
    """(ElastiCache, Secrets Manager) clients.

    The region is ``region``, else AWS_REGION (which botocore itself does not read), else botocore's own
    (AWS_DEFAULT_REGION, the profile). With no ``endpoint_url`` boto3 honours AWS_ENDPOINT_URL itself.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, NoRegionError

    config = Config(retries={"mode": "standard"})
    try:
        session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
        return (session.client("elasticache", endpoint_url=endpoint_url, config=config),
                session.client("secretsmanager", endpoint_url=endpoint_url, config=config))
    except NoRegionError:
        raise UsageError("no AWS region: set AWS_REGION or pass --region") from None
    except (BotoCoreError, ValueError) as exc:  # a malformed endpoint URL, a broken profile
        raise UsageError(str(exc)) from None


def run(spec: RedisSpec, ec: Any, secrets: Any, token_source: Any, env: Any, *, dry_run: bool, wait: bool,
        wait_timeout: float, say: Callable[[str], None]) -> int:
    """Plan, then (unless ``dry_run``) apply every step in order, optionally wait, and say the settings.

    ``token_source`` is an ``auth_token.TokenSource``; it is read only when the group is to be created, and
    before anything is created, so a missing or malformed token changes nothing (a dry run reads it too).
    """
    spec.check()
    plan = make_plan(ec, spec)
    for note in plan.notes:
        say(f"note: {note}")
    refused = plan.refused
    if refused:
        for step in plan.steps:
            say(("differs: " if step.apply is None else "would change: ") + step.line)
        raise Refused(f"{len(refused)} difference(s) this command does not change (above); nothing was changed")
    token = token_source.read(env, secrets) if plan.creates_group else None
    if dry_run:
        for step in plan.steps:
            say(f"plan: {step.line}")
        say("dry run: nothing was changed" if plan.steps else
            f"dry run: {_resources(spec)} are already as asked")
        if plan.creates_group:
            say("# REDIS_URL: the endpoint is known once the group exists")
            say(f"REDIS_CLUSTER={'true' if spec.cluster else 'false'}")
            say(password_line(token_source.describe()))
            return 0
    else:
        for step in plan.steps:
            assert step.apply is not None
            step.apply(token)
            say(f"done: {step.line}")
        if not plan.steps:
            say(f"{_resources(spec)} are already as asked: nothing changed")
        if wait:
            say(f"waiting for replication group {spec.name} to be available (up to {wait_timeout:g} s)")
            wait_available(ec, spec, wait_timeout)
    for line in settings(ec, spec, token_source.describe()):
        say(line)
    return 0


def _resources(spec: RedisSpec) -> str:
    return (f"subnet group {spec.subnet_group}, parameter group {spec.parameter_group} and "
            f"replication group {spec.name}")
