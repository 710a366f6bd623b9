"""``campaignctl provision-redis``: create or check the ElastiCache Redis the engine runs on (campaignctl.provision).

A command of the CLI rather than a script so it gets the CLI's one-line
errors and exit codes (2 bad arguments or a missing setting, 1 AWS refused
or a difference it will not change) and ships in the image beside the engine
that needs its output.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import NoReturn

from campaignctl.cli import positive_int

NAME = "provision-redis"
#: Default bound of --wait, in s: a multi-shard group can take half an hour to create.
DEFAULT_WAIT_TIMEOUT = 3600.0


def _ids(prefix: str) -> object:
    pattern = re.compile(rf"{prefix}-[0-9a-f]{{8,17}}")

    def parse(text: str) -> tuple[str, ...]:
        ids = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
        bad = [i for i in ids if not pattern.fullmatch(i)]
        if not ids or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated {prefix}-… ids, got {text!r}")
        return ids

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from campaignctl import provision

    p = sub.add_parser(
        NAME, help="create or check the ElastiCache Redis (subnet group, parameter group, replication group)",
        description="Creates, or checks and brings in line, a cache subnet group, a parameter group with "
                    "maxmemory-policy noeviction, and a replication group with TLS in transit, encryption at "
                    "rest, an AUTH token, Multi-AZ and automatic failover; then prints the REDIS_URL and "
                    "REDIS_CLUSTER to use. A second run changes nothing. A difference ElastiCache cannot change "
                    "in place is reported and nothing is changed (exit 1). See docs/deployment.md.")
    p.add_argument("--name", default=provision.DEFAULT_NAME,
                   help=f"replication group id (default {provision.DEFAULT_NAME})")
    p.add_argument("--node-type", default=provision.DEFAULT_NODE_TYPE,
                   help=f"node type (default {provision.DEFAULT_NODE_TYPE})")
    p.add_argument("--family", choices=sorted(provision.FAMILIES), default=provision.DEFAULT_FAMILY,
                   help=f"parameter group family, which also picks the engine (default {provision.DEFAULT_FAMILY})")
    p.add_argument("--engine-version", default=None,
                   help="engine version within the family (default: "
                        + ", ".join(f"{f} {v}" for f, (_, v) in sorted(provision.FAMILIES.items())) + ")")
    p.add_argument("--shards", type=positive_int, default=1,
                   help="shards (node groups); more than 1 means cluster mode (default 1)")
    p.add_argument("--replicas", type=positive_int, default=1,
                   help=f"replicas per shard, 1 to {provision.MAX_REPLICAS} (default 1)")
    p.add_argument("--cluster", action="store_true",
                   help="cluster mode even with one shard (the engine then runs with REDIS_CLUSTER=true)")
    p.add_argument("--subnet-ids", type=_ids("subnet"), default=(),
                   help="comma-separated subnets of the subnet group (needed to create it; checked if given)")
    p.add_argument("--security-group-ids", type=_ids("sg"), default=(),
                   help="comma-separated VPC security groups of the replication group (default: the VPC's default)")
    p.add_argument("--subnet-group", default="", help="subnet group name (default NAME-subnets)")
    p.add_argument("--parameter-group", default="", help="parameter group name (default NAME-params)")
    p.add_argument("--port", type=positive_int, default=provision.DEFAULT_PORT,
                   help=f"port (default {provision.DEFAULT_PORT})")
    p.add_argument("--auth-token-secret", default=None, metavar="SECRET_ID",
                   help="read the AUTH token from this Secrets Manager secret (name or ARN); "
                        "default: the REDIS_AUTH_TOKEN environment variable")
    p.add_argument("--auth-token-secret-key", default=None, metavar="KEY",
                   help="the secret is a JSON object and the token is this field of it")
    p.add_argument("--region", default=None, help="AWS region (default AWS_REGION / AWS_DEFAULT_REGION)")
    p.add_argument("--endpoint-url", default=None,
                   help="AWS endpoint (default AWS_ENDPOINT_URL, else AWS's own); for tests and emulators")
    p.add_argument("--dry-run", action="store_true", help="print the plan, one line per change, and change nothing")
    p.add_argument("--wait", action="store_true", help="wait until the replication group is available")
    p.add_argument("--wait-timeout", type=_seconds, default=DEFAULT_WAIT_TIMEOUT,
                   help=f"give up waiting after this many seconds, exit 1 (default {DEFAULT_WAIT_TIMEOUT:g})")
    p.set_defaults(func=_provision)
    p.error = _one_line_error(p)  # type: ignore[method-assign]


def _one_line_error(parser: argparse.ArgumentParser):  # type: ignore[no-untyped-def]
    """argparse's error without the multi-line usage: one line naming the bad argument, exit 2."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"campaignctl {NAME}: {message} (see campaignctl {NAME} --help)\n")

    return error


def _quiet_botocore() -> None:
    """botocore logs request and response bodies at DEBUG: the AUTH token and the secret would be in them."""
    for name in ("botocore", "boto3", "urllib3"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))


def _provision(args: argparse.Namespace) -> int:
    from campaignctl import provision
    from campaignctl.auth_token import TokenSource
    from campaignctl.cli import UsageError

    if args.auth_token_secret_key and not args.auth_token_secret:
        raise UsageError("--auth-token-secret-key needs --auth-token-secret")
    spec = provision.RedisSpec(
        name=args.name, node_type=args.node_type, family=args.family, engine_version=args.engine_version,
        shards=args.shards, replicas=args.replicas, cluster=args.cluster, subnet_ids=args.subnet_ids,
        security_group_ids=args.security_group_ids, subnet_group=args.subnet_group,
        parameter_group=args.parameter_group, port=args.port)
    spec.check()
    _quiet_botocore()
    ec, secrets = provision.make_clients(args.region, args.endpoint_url)
    source = TokenSource(args.auth_token_secret, args.auth_token_secret_key)
    return provision.run(spec, ec, secrets, source, os.environ, dry_run=args.dry_run, wait=args.wait,
                         wait_timeout=args.wait_timeout, say=lambda line: print(line, flush=True, file=sys.stdout))
