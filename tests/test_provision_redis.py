"""``campaignctl provision-redis`` against moto's standalone server, through boto3 as in production.

moto (5.2.5) models subnet groups, replication groups and Secrets Manager;
it has no parameter groups at all, no ModifyCacheSubnetGroup, and it does not
create the member nodes of a replication group, so DescribeCacheClusters of a
member says "not found". Those calls are scripted with botocore's Stubber,
scoped to them (``ScopedStubber``): every other call of the same client goes
on to moto, so one run of the command talks to both, in one client, as it
would talk to AWS. Every ElastiCache call is recorded (a ``before-parameter-
build`` hook, which fires for stubbed calls too), so "changes nothing" is
counted, not guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import requests
from botocore.stub import ANY, Stubber

from campaignctl import cli, provision
from tests.servers import free_port

REGION = "us-east-1"
TOKEN = "s3cret-Token-0123456789abcdef"
#: ElastiCache calls that change something.
WRITES = ("Create", "Modify", "Delete", "Increase", "Decrease", "Reboot")
#: The command's own client factory (the fixture swaps in clients with a Stubber).
REAL_MAKE_CLIENTS = provision.make_clients


class ScopedStubber(Stubber):
    """botocore's Stubber for the operations moto does not model; every other call goes on to moto."""

    OPERATIONS = frozenset({"CreateCacheParameterGroup", "DescribeCacheParameterGroups", "DescribeCacheParameters",
                            "ModifyCacheParameterGroup", "ModifyCacheSubnetGroup", "DescribeCacheClusters"})

    def _get_response_handler(self, model, params, context, **kwargs):  # type: ignore[no-untyped-def]
        if model.name not in self.OPERATIONS:
            return None
        return super()._get_response_handler(model, params, context, **kwargs)

    def _assert_expected_params(self, model, params, context, **kwargs):  # type: ignore[no-untyped-def]
        if model.name in self.OPERATIONS:
            super()._assert_expected_params(model, params, context, **kwargs)


@dataclass
class Aws:
    """The clients the command gets, the stubber of what moto lacks, and every ElastiCache call made."""

    url: str
    ec: Any
    secrets: Any
    ec2: Any
    stub: ScopedStubber
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def writes(self) -> list[str]:
        return [name for name, _ in self.calls if name.startswith(WRITES)]

    def params_of(self, operation: str) -> dict[str, Any]:
        return next(p for name, p in self.calls if name == operation)

    def subnets(self, count: int = 2) -> list[str]:
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        return [self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                       AvailabilityZone=f"{REGION}{'abc'[i]}")["Subnet"]["SubnetId"]
                for i in range(count)]

    # -- the Stubber's script for what moto lacks --------------------------------------------------------------

    def no_parameter_group(self, name: str) -> None:
        self.stub.add_client_error("describe_cache_parameter_groups", "CacheParameterGroupNotFound",
                                   f"CacheParameterGroup {name} not found.", 404,
                                   expected_params={"CacheParameterGroupName": name})

    def parameter_group(self, name: str, family: str, values: dict[str, str]) -> None:
        self.stub.add_response("describe_cache_parameter_groups", {"CacheParameterGroups": [
            {"CacheParameterGroupName": name, "CacheParameterGroupFamily": family, "Description": "x"}]},
            {"CacheParameterGroupName": name})
        # A family has ~100 parameters; a few besides the ones asked for.
        parameters = [{"ParameterName": "maxmemory-samples", "ParameterValue": "3"},
                      *({"ParameterName": k, "ParameterValue": v} for k, v in values.items()),
                      {"ParameterName": "timeout", "ParameterValue": "0"}]
        self.stub.add_response("describe_cache_parameters", {"Parameters": parameters},
                               {"CacheParameterGroupName": name})

    def creates_parameter_group(self, name: str, family: str, values: dict[str, str]) -> None:
        self.stub.add_response("create_cache_parameter_group", {"CacheParameterGroup": {
            "CacheParameterGroupName": name, "CacheParameterGroupFamily": family}},
            {"CacheParameterGroupName": name, "CacheParameterGroupFamily": family, "Description": ANY,
             "Tags": ANY})
        self.sets_parameters(name, values)

    def sets_parameters(self, name: str, values: dict[str, str]) -> None:
        self.stub.add_response("modify_cache_parameter_group", {"CacheParameterGroupName": name}, {
            "CacheParameterGroupName": name,
            "ParameterNameValues": [{"ParameterName": k, "ParameterValue": v} for k, v in values.items()]})

    def member(self, node: str, parameter_group: str, subnet_group: str, security_groups: list[str]) -> None:
        self.stub.add_response("describe_cache_clusters", {"CacheClusters": [{
            "CacheClusterId": node, "CacheSubnetGroupName": subnet_group,
            "CacheParameterGroup": {"CacheParameterGroupName": parameter_group, "ParameterApplyStatus": "in-sync"},
            "SecurityGroups": [{"SecurityGroupId": g, "Status": "active"} for g in security_groups]}]},
            {"CacheClusterId": node})

    def as_created(self, name: str, family: str = "redis7", cluster: bool = False, security_groups: list[str] = (),
                   values: dict[str, str] | None = None) -> None:
        """The script of a run that finds the parameter group and the group's first node as the first run left
        them (what moto would answer, had it the model)."""
        values = values or {"maxmemory-policy": "noeviction", "cluster-enabled": "yes" if cluster else "no"}
        self.parameter_group(f"{name}-params", family, values)
        group = self.ec.describe_replication_groups(ReplicationGroupId=name)["ReplicationGroups"][0]
        self.member(group["MemberClusters"][0], f"{name}-params", f"{name}-subnets", list(security_groups))


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # The server's request log runs in its threads, into whatever stderr a test had captured: keep it quiet.
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.disabled = True
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    werkzeug.disabled = False


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    # Given an empty AWS account (moto), dummy credentials and a region from the environment
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "REDIS_AUTH_TOKEN", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    ec, secrets = provision.make_clients(None, None)
    stub = ScopedStubber(ec)
    stub.activate()
    state = Aws(moto_url, ec, secrets, boto3.client("ec2", region_name=REGION, endpoint_url=moto_url), stub)
    ec.meta.events.register("before-parameter-build.elasticache",
                            lambda model, params, **_: state.calls.append((model.name, dict(params))))
    monkeypatch.setattr(provision, "make_clients", lambda region, endpoint_url: (ec, secrets))
    yield state
    stub.deactivate()


def run(capsys: pytest.CaptureFixture[str], aws: Aws, argv: list[str]) -> tuple[int, str, str]:
    """The command as a user runs it (cli.main: an uncaught exception fails the test); the script used up."""
    aws.calls.clear()
    try:
        code = cli.main(["provision-redis", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    aws.stub.assert_no_pending_responses()
    return code, out, err


def group(aws: Aws, name: str) -> dict[str, Any]:
    return aws.ec.describe_replication_groups(ReplicationGroupId=name)["ReplicationGroups"][0]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_first_run_creates_everything_with_the_asked_settings(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two subnets, a security group and a token in the environment
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    subnets = aws.subnets()
    aws.no_parameter_group("rq-params")
    aws.creates_parameter_group("rq-params", "redis7", {"maxmemory-policy": "noeviction", "cluster-enabled": "no"})
    # When the command runs for the first time
    code, out, err = run(capsys, aws, ["--name", "rq", "--subnet-ids", ",".join(subnets), "--node-type",
                                       "cache.r7g.xlarge", "--replicas", "2", "--security-group-ids", "sg-0123456789abcdef0"])
    # Then everything is created (the parameter group with noeviction: the Stubber checked the call's arguments)
    assert code == 0, err
    assert aws.writes() == ["CreateCacheSubnetGroup", "CreateCacheParameterGroup", "ModifyCacheParameterGroup",
                            "CreateReplicationGroup"]
    made = aws.ec.describe_cache_subnet_groups(CacheSubnetGroupName="rq-subnets")["CacheSubnetGroups"][0]
    assert sorted(s["SubnetIdentifier"] for s in made["Subnets"]) == sorted(subnets)
    g = group(aws, "rq")
    assert g["TransitEncryptionEnabled"] and g["AtRestEncryptionEnabled"] and g["AuthTokenEnabled"]
    assert g["MultiAZ"] == "enabled" and g["AutomaticFailover"] == "enabled"
    assert g["CacheNodeType"] == "cache.r7g.xlarge" and not g["ClusterEnabled"]
    assert len(g["NodeGroups"]) == 1 and len(g["MemberClusters"]) == 3
    # What moto does not give back, read from the create call itself
    asked = aws.params_of("CreateReplicationGroup")
    assert asked["CacheParameterGroupName"] == "rq-params" and asked["CacheSubnetGroupName"] == "rq-subnets"
    assert asked["SecurityGroupIds"] == ["sg-0123456789abcdef0"] and asked["AuthToken"] == TOKEN
    # And the settings to use are printed, with the primary endpoint and no token
    endpoint = g["NodeGroups"][0]["PrimaryEndpoint"]
    assert f"REDIS_URL=rediss://{endpoint['Address']}:{endpoint['Port']}/0" in out.splitlines()
    assert "REDIS_CLUSTER=false" in out.splitlines()
    assert "REDIS_PASSWORD must be set to the AUTH token (from REDIS_AUTH_TOKEN)" in out


def test_cluster_mode_uses_the_configuration_endpoint(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    aws.no_parameter_group("cq-params")
    aws.creates_parameter_group("cq-params", "valkey8", {"maxmemory-policy": "noeviction", "cluster-enabled": "yes"})
    code, out, err = run(capsys, aws, ["--name", "cq", "--subnet-ids", ",".join(aws.subnets(3)), "--family",
                                       "valkey8", "--shards", "3", "--replicas", "2", "--wait"])
    assert code == 0, err
    g = group(aws, "cq")
    assert g["ClusterEnabled"] and len(g["NodeGroups"]) == 3 and len(g["MemberClusters"]) == 9
    assert g["Engine"] == "valkey" and aws.params_of("CreateReplicationGroup")["EngineVersion"].startswith("8.")
    config = g["ConfigurationEndpoint"]
    assert f"REDIS_URL=rediss://{config['Address']}:{config['Port']}/0" in out.splitlines()
    assert config["Address"].startswith("clustercfg.") and "REDIS_CLUSTER=true" in out.splitlines()


def test_a_second_run_changes_nothing(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a first run that created everything
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    argv = ["--name", "sq", "--subnet-ids", ",".join(aws.subnets()), "--cluster", "--security-group-ids",
            "sg-0123456789abcdef0"]
    aws.no_parameter_group("sq-params")
    aws.creates_parameter_group("sq-params", "redis7", {"maxmemory-policy": "noeviction", "cluster-enabled": "yes"})
    first = run(capsys, aws, argv)
    assert first[0] == 0, first
    # When the same command runs again (and once more as a dry run)
    for extra in ([], ["--dry-run"]):
        aws.as_created("sq", cluster=True, security_groups=["sg-0123456789abcdef0"])
        code, out, err = run(capsys, aws, argv + extra)
        # Then no create or modify call is made, it says so, and the settings are printed again
        assert code == 0 and aws.writes() == [], (out, err)
        assert "already as asked" in out and "REDIS_CLUSTER=true" in out
        assert [line for line in out.splitlines() if line.startswith("REDIS_URL=rediss://clustercfg.")]


def test_dry_run_prints_the_plan_and_creates_nothing(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    aws.no_parameter_group("dq-params")
    code, out, err = run(capsys, aws, ["--name", "dq", "--subnet-ids", ",".join(aws.subnets()), "--dry-run"])
    assert code == 0 and aws.writes() == [], err
    plan = [line for line in out.splitlines() if line.startswith("plan: ")]
    assert [line.split(":")[1].strip() for line in plan] == [
        "subnet group dq-subnets", "parameter group dq-params", "replication group dq"]
    assert "maxmemory-policy=noeviction" in plan[1] and "TLS in transit" in plan[2]
    assert "nothing was changed" in out
    assert aws.ec.describe_replication_groups()["ReplicationGroups"] == []
    assert aws.ec.describe_cache_subnet_groups()["CacheSubnetGroups"] == []


def test_the_token_comes_from_secrets_manager_and_is_never_printed_or_logged(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the token in a JSON secret, another in the environment, and DEBUG logging (botocore logs bodies)
    aws.secrets.create_secret(Name="prod/redis", SecretString='{"token": "%s"}' % TOKEN)
    monkeypatch.setenv("REDIS_AUTH_TOKEN", "env-token-not-this-one-0123")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    aws.no_parameter_group("tq-params")
    aws.creates_parameter_group("tq-params", "redis7", {"maxmemory-policy": "noeviction", "cluster-enabled": "no"})
    code, out, err = run(capsys, aws, ["--name", "tq", "--subnet-ids", ",".join(aws.subnets()),
                                       "--auth-token-secret", "prod/redis", "--auth-token-secret-key", "token"])
    # Then the group has the secret's token, and no output or log line holds it (run() asserts that too)
    assert code == 0, err
    assert aws.params_of("CreateReplicationGroup")["AuthToken"] == TOKEN and group(aws, "tq")["AuthTokenEnabled"]
    assert "from secret prod/redis (field token)" in out
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.INFO
    # And a secret that is missing, a JSON secret without --auth-token-secret-key, or a token ElastiCache would
    # refuse, changes nothing (exit 2, one line)
    aws.secrets.create_secret(Name="short", SecretString="too-short")
    for secret, said in (("nosuch", "secret nosuch: not found"), ("short", "16 to 128 characters"),
                         ("prod/redis", "holds a JSON object: name the token's field with --auth-token-secret-key")):
        aws.no_parameter_group("uq-params")
        code, out, err = run(capsys, aws, ["--name", "uq", "--subnet-ids", ",".join(aws.subnets()),
                                           "--auth-token-secret", secret])
        assert code == 2 and said in one_line(err) and aws.writes() == [], err
        assert "too-short" not in out + err


def test_a_difference_is_changed_where_elasticache_allows(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a group made by a first run, whose parameter group someone set back to volatile-lru
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    subnets = aws.subnets(3)
    argv = ["--name", "mq", "--subnet-ids", ",".join(subnets[:2])]
    aws.no_parameter_group("mq-params")
    aws.creates_parameter_group("mq-params", "redis7", {"maxmemory-policy": "noeviction", "cluster-enabled": "no"})
    assert run(capsys, aws, argv)[0] == 0
    aws.ec.modify_replication_group(ReplicationGroupId="mq", AutomaticFailoverEnabled=False, ApplyImmediately=True)
    # When it runs again asking for a bigger node and a third subnet
    aws.as_created("mq", values={"maxmemory-policy": "volatile-lru", "cluster-enabled": "no"})
    aws.stub.add_response("modify_cache_subnet_group", {}, {"CacheSubnetGroupName": "mq-subnets",
                                                            "SubnetIds": sorted(subnets)})
    aws.sets_parameters("mq-params", {"maxmemory-policy": "noeviction"})
    code, out, err = run(capsys, aws, ["--name", "mq", "--subnet-ids", ",".join(subnets), "--node-type",
                                       "cache.r7g.2xlarge"])
    # Then each difference is said and changed, in place
    assert code == 0, err
    assert aws.writes() == ["ModifyCacheSubnetGroup", "ModifyCacheParameterGroup", "ModifyReplicationGroup"]
    assert "done: parameter group mq-params: set maxmemory-policy volatile-lru → noeviction" in out
    assert "automatic failover disabled → enabled" in out and "cache.r7g.large → cache.r7g.2xlarge" in out
    g = group(aws, "mq")
    assert g["CacheNodeType"] == "cache.r7g.2xlarge" and g["AutomaticFailover"] == "enabled"
    assert aws.params_of("ModifyReplicationGroup")["ApplyImmediately"] is True


def test_a_difference_elasticache_cannot_change_is_reported_and_nothing_changes(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a group someone made by hand: no encryption at rest, no token, one shard, cluster mode off
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    subnets = aws.subnets()
    aws.ec.create_cache_subnet_group(CacheSubnetGroupName="hq-subnets", CacheSubnetGroupDescription="x",
                                     SubnetIds=subnets)
    aws.ec.create_replication_group(ReplicationGroupId="hq", ReplicationGroupDescription="by hand",
                                    CacheNodeType="cache.r7g.large", TransitEncryptionEnabled=True,
                                    ReplicasPerNodeGroup=1, MultiAZEnabled=False, AutomaticFailoverEnabled=True)
    aws.parameter_group("hq-params", "redis7", {"maxmemory-policy": "volatile-lru", "cluster-enabled": "no"})
    aws.member("hq-001", "default.redis7", "hq-subnets", [])
    # When the command asks for a 2-shard cluster
    code, out, err = run(capsys, aws, ["--name", "hq", "--subnet-ids", ",".join(subnets), "--shards", "2"])
    # Then it exits 1 in one line, lists every difference, and changes nothing
    assert code == 1 and "nothing was changed" in one_line(err) and aws.writes() == []
    differs = [line for line in out.splitlines() if line.startswith("differs: replication group hq:")]
    assert any("encryption at rest is off" in line for line in differs)
    assert any("no AUTH token" in line for line in differs)
    assert any("cluster mode is off, asked on" in line for line in differs)
    assert any("1 shard(s), asked 2" in line for line in differs)
    assert "would change: parameter group hq-params: set maxmemory-policy volatile-lru → noeviction" in out
    assert "Multi-AZ disabled → enabled" in out and "parameter group default.redis7 → hq-params" in out
    assert group(aws, "hq")["MultiAZ"] == "disabled"


@pytest.mark.parametrize("argv,said", [
    (["--shards", "0"], "--shards"),
    (["--replicas", "9"], "--replicas 9: 1 to 5"),
    (["--name", "Bad_Name"], "--name 'Bad_Name'"),
    (["--subnet-ids", "nope"], "--subnet-ids"),
    (["--family", "redis5"], "--family"),
    (["--family", "redis7", "--engine-version", "8.0"], "not of family redis7"),
    (["--parameter-group", "default-redis7"], "default groups"),
    (["--node-type", "huge"], "--node-type"),
    (["--wait-timeout", "-1"], "--wait-timeout"),
    (["--auth-token-secret-key", "token"], "needs --auth-token-secret"),
    ([], "no AUTH token: set REDIS_AUTH_TOKEN"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_exit_2_in_one_line_and_change_nothing(
        aws: Aws, capsys: pytest.CaptureFixture[str], argv: list[str], said: str) -> None:
    needs_aws = argv == []
    if needs_aws:
        aws.no_parameter_group("campaign-redis-params")
    code, out, err = run(capsys, aws, ["--subnet-ids", ",".join(aws.subnets()) if needs_aws else
                                       "subnet-0123456789abcdef0", *argv])
    assert code == 2 and said in one_line(err) and aws.writes() == [], (out, err)
    assert one_line(err).startswith("campaignctl provision-redis: ")


def test_aws_errors_are_one_line_naming_the_resource(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_AUTH_TOKEN", TOKEN)
    argv = ["--name", "eq", "--subnet-ids", ",".join(aws.subnets())]
    # AWS refuses a call half way: the resources before it stay, a second run would go on from there
    aws.no_parameter_group("eq-params")
    aws.stub.add_client_error("create_cache_parameter_group", "AccessDenied", "not allowed to", 403)
    code, _, err = run(capsys, aws, argv)
    assert code == 1 and one_line(err) == ("campaignctl provision-redis: parameter group eq-params: "
                                           "AccessDenied: not allowed to")
    # No region at all: a missing setting (the command's own clients from here on)
    monkeypatch.setattr(provision, "make_clients", REAL_MAKE_CLIENTS)
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    code, _, err = run(capsys, aws, argv)
    assert code == 2 and "region" in one_line(err)
    # An endpoint that does not model a call (moto has no parameter groups: it answers an HTML error page)
    monkeypatch.setenv("AWS_REGION", REGION)
    code, _, err = run(capsys, aws, argv)
    assert code == 1 and one_line(err).startswith("campaignctl provision-redis: parameter group eq-params: "
                                                  "Unable to parse response"), err
    # Nothing listening at the endpoint: one line naming the first resource it tried
    code, _, err = run(capsys, aws, [*argv, "--endpoint-url", f"http://127.0.0.1:{free_port()}"])
    assert code == 1 and one_line(err).startswith("campaignctl provision-redis: subnet group eq-subnets: "), err


def test_wait_gives_up_after_its_timeout_in_one_line() -> None:
    # Given a group that stays "creating" (the Stubber stands for ElastiCache)
    ec = boto3.client("elasticache", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(ec) as stub:
        stub.add_response("describe_replication_groups", {"ReplicationGroups": [
            {"ReplicationGroupId": "wq", "Status": "creating"}]}, {"ReplicationGroupId": "wq"})
        # When the command waits for it with a 1 s timeout, Then it says how it stands
        with pytest.raises(cli.Refused, match=r"replication group wq: not available after 1 s \(status creating\)"):
            provision.wait_available(ec, provision.RedisSpec(name="wq"), 1)


def test_a_group_still_being_created_is_not_judged_by_its_shape() -> None:
    # Given a group ElastiCache is still creating: no shard or node listed yet (the Stubber stands for ElastiCache)
    ec = boto3.client("elasticache", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    creating = {"ReplicationGroupId": "cr", "Status": "creating", "ClusterEnabled": False,
                "TransitEncryptionEnabled": True, "AtRestEncryptionEnabled": True, "AuthTokenEnabled": True,
                "AutomaticFailover": "enabling", "MultiAZ": "enabled", "CacheNodeType": "cache.r7g.large",
                "NodeGroups": [], "MemberClusters": []}
    for node_type, refused in (("cache.r7g.large", []), ("cache.r7g.xlarge", ["node type cache.r7g.large → "
                                                                              "cache.r7g.xlarge (to change once "
                                                                              "it is available)"])):
        with Stubber(ec) as stub:
            stub.add_response("describe_cache_subnet_groups", {"CacheSubnetGroups": [
                {"CacheSubnetGroupName": "cr-subnets", "Subnets": []}]})
            stub.add_response("describe_cache_parameter_groups", {"CacheParameterGroups": [
                {"CacheParameterGroupName": "cr-params", "CacheParameterGroupFamily": "redis7"}]})
            stub.add_response("describe_cache_parameters", {"Parameters": [
                {"ParameterName": "maxmemory-policy", "ParameterValue": "noeviction"},
                {"ParameterName": "cluster-enabled", "ParameterValue": "no"}]})
            stub.add_response("describe_replication_groups", {"ReplicationGroups": [creating]})
            # When it is planned
            plan = provision.make_plan(ec, provision.RedisSpec(name="cr", node_type=node_type))
        # Then its missing shards are no difference, a node type that differs waits, and it says why
        assert [s.change for s in plan.refused] == refused and len(plan.steps) == len(refused)
        assert plan.notes and "still being created" in plan.notes[0]
