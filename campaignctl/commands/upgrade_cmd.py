"""``campaignctl upgrade-redis``: move a single Redis node from the single-tag key layout to the per-type one.

The work is engine.upgrade's; this wires it to the settings (KEY_PREFIX,
REDIS_URL, REDIS_CLUSTER), the application's task types and the CLI's exit
codes: 0 done (or nothing to do), 1 refused (live workers) or Redis
unavailable, 2 a bad argument or a Redis Cluster (REDIS_CLUSTER=true). Run it once with the old
fleet stopped, before the new version starts (docs/deployment.md, "Upgrading
from the single-tag key layout").
"""

from __future__ import annotations

import argparse
from typing import Any

NAME = "upgrade-redis"
#: How long the command waits for one Redis answer, in s: one script merges a whole ready list into a
#: non-empty new one (a million entries take about a second). A call retried after a timeout is harmless
#: (a move finds its old key gone), but the count of what it moved would be lost.
SOCKET_TIMEOUT = 120.0
#: What the ``to`` column says for a dropped key.
DROPPED = "(dropped)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        NAME, help="move Redis from the single-tag key layout to the per-type one (once, with the fleet stopped)",
        description="Moves every key of the old single-tag layout ({P}:queue:<type>, in-flight, delayed, claiming, "
                    "dedup, dead letters, and the controls P:controls:* / P:stats:*) to the per-type layout "
                    "({P:<type>}:…) and drops the old lease bookkeeping; nothing queued, in flight or dead-lettered "
                    "is lost. Each key moves atomically: the command can be interrupted and run again, and a second "
                    "run finds nothing to do. Refuses while workers are alive (stop workers, producer and recovery "
                    "first) and with REDIS_CLUSTER=true. See docs/deployment.md.")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (keys and entries per old key) and change nothing")
    p.add_argument("--force", action="store_true",
                   help="run even while workers are alive (a task such a worker holds runs again)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    import attrs

    from campaignctl.cli import Refused, UsageError
    from campaignctl.context import AppContext
    from campaignctl.output import print_json
    from engine.connection import connect
    from engine.upgrade import ClusterRefused, UpgradeRefused, upgrade_layout
    from workflow.states import TASK_TYPES

    settings = AppContext().settings
    # Connected first, as every command: REDIS_CLUSTER that does not match the server, or a cluster out of reach,
    # is explained the same way (campaignctl.config_check); a real cluster is then refused, exit 2.
    client = connect(attrs.evolve(settings, redis_socket_timeout=max(settings.redis_socket_timeout, SOCKET_TIMEOUT)))
    try:
        report = upgrade_layout(client, settings.key_prefix, TASK_TYPES, dry_run=args.dry_run, force=args.force)
    except ClusterRefused as exc:
        raise UsageError(str(exc)) from None
    except UpgradeRefused as exc:
        raise Refused(str(exc)) from None
    finally:
        client.close()
    if args.json:
        print_json(report.to_dict())
    else:
        _print(report)
    return 0


def _print(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from campaignctl.output import console

    out = console()
    tag = "{" + report.prefix + "}"
    if report.nothing_to_do:
        out.print(escape(f"nothing to upgrade: no key of the single-tag layout under {tag} (KEY_PREFIX="
                         f"{report.prefix}); the per-type layout is in place"), highlight=False)
    else:
        title = (f"Upgrade plan for {tag} (dry run: nothing changed)" if report.dry_run
                 else f"Upgraded {tag} to the per-type layout")
        table = Table(title=escape(title))
        for name, justify in (("step", "left"), ("from", "left"), ("to", "left"), ("keys", "right"),
                              ("entries" if report.dry_run else "moved", "right"), ("note", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for step in report.steps:
            count = step.entries if step.done is None else step.done
            table.add_row(step.kind, escape(step.source), escape(step.target or DROPPED), str(step.keys), str(count),
                          escape(step.note))
        out.print(table)
        if report.dry_run:
            moving = sum(s.entries for s in report.steps if s.kind != "drop")
            dropping = sum(s.keys for s in report.steps if s.kind == "drop")
            out.print(f"{moving} entries to move, {dropping} keys of lease bookkeeping to drop; "
                      "run without --dry-run to do it", highlight=False)
        else:
            out.print(f"moved {report.moved} entries, dropped {report.dropped} keys of lease bookkeeping; "
                      "start the new version now", highlight=False)
        if report.live_workers:
            shown = ", ".join(report.live_workers[:3]) + (", …" if len(report.live_workers) > 3 else "")
            verdict = ("a run refuses until they are stopped (or --force)" if report.dry_run
                       else "ran anyway (--force): a task one of them holds runs again")
            out.print(escape(f"{len(report.live_workers)} live worker(s) ({shown}): {verdict}"), highlight=False)
    for step in report.left:
        out.print(escape(f"left as it is: {step.source} ({step.entries} entries): {step.note}"), highlight=False)
