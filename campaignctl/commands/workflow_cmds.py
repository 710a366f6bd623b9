"""Workflow commands: migrate, seed, status, show, approve, retry, unsubscribe, graph.

The database is the truth: a command that moves a campaign does it as one
compare-and-set (workflow.store) and only then enqueues the follow-up task in
Redis. If Redis cannot be reached after the database moved, the command says
so and exits 1; recovery re-enqueues every PROCESSING / READY_TO_SEND campaign
that has no live task, so nothing is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from campaignctl.cli import Refused, UsageError, campaign_id, positive_int
from campaignctl.context import AppContext
from campaignctl.output import add_watch, console, duration, parse_duration, print_json, watch, when
from workflow.states import Stage, Status

Handler = Callable[[argparse.Namespace], int]

#: Rows ``list`` prints unless told otherwise.
DEFAULT_LIST_LIMIT = 100
#: Drafts ``review`` shows per session unless told otherwise.
DEFAULT_REVIEW_LIMIT = 20


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)",
                       description="Upgrade the database to the newest schema (default), or to/back to a revision.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--revision", default="head", help="upgrade to this revision (default head)")
    group.add_argument("--downgrade", metavar="REV", help="downgrade to this revision ('base' = empty database)")
    group.add_argument("--stamp", metavar="REV",
                       help="record REV as applied without running it (e.g. 0001 for a database of the old system)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the database to accept connections first (up to STARTUP_TIMEOUT; compose's "
                        "migrate job does, since the database may still be starting)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("seed", help="create DORMANT campaigns (fake, or from a CSV file)",
                       description="Create DORMANT campaigns, due at once unless --due-in is given. "
                                   "With --csv, good rows are imported and bad ones reported by line "
                                   "(exit 1 when any row was rejected).")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--count", type=positive_int, help="this many fake campaigns (plausible US owners and homes)")
    group.add_argument("--csv", metavar="FILE", help="CSV file with columns name,email,street,city,state,zip")
    p.add_argument("--due-in", type=_seconds, default=0.0, metavar="S",
                   help="first run this many seconds from now (default 0: due at once)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the fake data (default 0)")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("status", help="campaigns per status and stage, time in stage; errors and unknown sends")
    p.add_argument("--json", action="store_true",
                   help='{"campaigns": {status: n}, "stages": {stage: n}, "error_reasons", "unknown_ids", '
                        '"time_in_stage"}')
    add_watch(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", help="one campaign: its state and full history (--draft: the email for review)")
    p.add_argument("id", type=campaign_id, help="campaign id")
    p.add_argument("--draft", action="store_true",
                   help="the draft of the current run: recipient, subject, body, verification, analysis")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="campaigns by status, stage and age (oldest change first)")
    p.add_argument("--status", type=_status, help=f"one of {', '.join(s.value for s in Status)}")
    p.add_argument("--stage", type=_stage, help=f"one of {', '.join(s.value for s in Stage)}")
    p.add_argument("--older-than", type=parse_duration, metavar="AGE",
                   help="unchanged for at least AGE (90s, 30m, 1h, 2d)")
    p.add_argument("--limit", type=positive_int, default=DEFAULT_LIST_LIMIT,
                   help=f"at most this many rows (default {DEFAULT_LIST_LIMIT})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("review", help="read the drafts waiting for review, oldest first; approve, skip, unsubscribe",
                       description="Shows each draft waiting for review (READY_FOR_REVIEW), oldest first: recipient, "
                                   "subject, body, verification result and analysis summary. On a terminal it asks "
                                   "for each: [a]pprove, [s]kip, [u]nsubscribe or [q]uit. An approval applies only "
                                   "if the campaign is still the version shown.")
    p.add_argument("--limit", type=positive_int, default=DEFAULT_REVIEW_LIMIT,
                   help=f"at most this many drafts (default {DEFAULT_REVIEW_LIMIT})")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="ask for each draft even when stdin/stdout are not a terminal (answers read from stdin)")
    p.add_argument("--json", action="store_true", help='{"waiting": n, "drafts": [...]} for scripts')
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("approve", help="approve a reviewed email (READY_FOR_REVIEW -> READY_TO_SEND) and queue it")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=campaign_id, help="campaign id")
    target.add_argument("--all", action="store_true", help="every campaign that is READY_FOR_REVIEW")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("retry", help="resume a campaign in ERROR at the step that failed, and queue it")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=campaign_id, help="campaign id")
    target.add_argument("--all", action="store_true", help="every campaign in ERROR")
    p.add_argument("--stage", type=_stage, help="with --all: only those that failed at this stage "
                                                "(idle = a failed send)")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("unsubscribe", help="stop a campaign for good (nothing runs for it again)")
    p.add_argument("id", type=campaign_id, help="campaign id")
    p.set_defaults(func=cmd_unsubscribe)

    p = sub.add_parser("graph", help="the state machine as a Mermaid diagram (drawn from the machine itself)")
    p.add_argument("--no-unsubscribe", action="store_true",
                   help="leave out the unsubscribe edges (every state has one)")
    p.set_defaults(func=cmd_graph)


def _status(text: str) -> str:
    try:
        return Status(text.upper()).value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown status {text!r}; one of {', '.join(s.value for s in Status)}") from None


def _stage(text: str) -> str:
    try:
        return Stage(text.lower()).value
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown stage {text!r}; one of {', '.join(s.value for s in Stage)}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds ≥ 0, got {text!r}")
    return value


# -- plumbing ----------------------------------------------------------------


@contextlib.contextmanager
def _context() -> Iterator[AppContext]:
    """An AppContext whose database and Redis handles are closed afterwards.

    Database and Redis errors are explained in one line by campaignctl.cli
    (config_check.explain), never a traceback.
    """
    ctx = AppContext()
    try:
        yield ctx
    finally:
        if "db" in ctx.__dict__:
            ctx.db.dispose()
        if "redis" in ctx.__dict__:
            ctx.redis.close()


def _with_context(func: Callable[[argparse.Namespace, AppContext], int]) -> Handler:
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        with _context() as ctx:
            return func(args, ctx)

    return run


# -- migrate, seed -------------------------------------------------------------


def _wait_for_database(ctx: AppContext) -> None:
    """Block until the database answers (outage backoff, STARTUP_TIMEOUT), as the services do at start-up."""
    from campaignctl import wiring
    from engine.loop import wait_until_up
    from engine.redact import redact_url

    try:
        wait_until_up(f"the database at {redact_url(ctx.database_url)}", lambda: wiring.ping_database(ctx),
                      backoff_max=ctx.settings.outage_backoff_max, timeout=ctx.settings.startup_timeout,
                      is_outage=wiring.database_outage)
    finally:
        ctx.db.dispose()


def cmd_migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from migrations import runner

    ctx = AppContext()
    url = ctx.database_url
    if args.wait:
        _wait_for_database(ctx)
    try:
        before = runner.current(url)
        if args.downgrade:
            runner.downgrade(url, args.downgrade)
        elif args.stamp:
            from alembic import command

            command.stamp(runner.alembic_config(url), args.stamp)
        else:
            runner.upgrade(url, args.revision)
        after = runner.current(url)
    except CommandError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"database at revision {after or 'base (empty)'} (was {before or 'base (empty)'})")
    return 0


@_with_context
def cmd_seed(args: argparse.Namespace, ctx: AppContext) -> int:
    from workflow import seed

    errors: list[seed.RowError] = []
    if args.csv:
        try:
            parsed = seed.read_csv(args.csv)
        except seed.CsvFormatError as exc:
            raise UsageError(str(exc)) from None
        new, errors = parsed.rows, parsed.errors
    else:
        new = seed.fake_campaigns(args.count, seed=args.seed, first_number=seed.next_email_number(ctx.db))
    ids = seed.insert_campaigns(ctx.db, new, due_in=args.due_in) if new else []
    for error in errors:
        print(f"campaignctl seed: {args.csv}: {error}", file=sys.stderr)
    due = "now" if args.due_in == 0 else f"in {args.due_in:g} s"
    span = f" (ids {ids[0]}–{ids[-1]})" if ids else ""
    print(f"created {len(ids)} DORMANT campaign{'s' if len(ids) != 1 else ''}{span}, due {due}")
    if errors:
        raise Refused(f"{len(errors)} row{'s' if len(errors) != 1 else ''} rejected (see above); "
                      f"{len(ids)} imported")
    return 0


# -- status, show, list -------------------------------------------------------------


def report(command: str, result: Any) -> int:
    """Print an operations.ActionResult the CLI way: done to stdout, refusals as one line on stderr."""
    if result.applied:
        print(result.message if result.code == 0 else result.message.split(", but ")[0])
        for line in result.queued:
            print(line)
    if result.code:
        print(f"campaignctl {command}: {result.message}", file=sys.stderr)
    return int(result.code)


def _status_view(summary: Any) -> Any:
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    counts = summary.campaigns
    table = Table(title="Campaigns")
    table.add_column("status")
    table.add_column("campaigns", justify="right")
    for status, n in counts.items():
        style = "bold red" if n and status in (Status.ERROR.value, Status.SEND_OUTCOME_UNKNOWN.value) else None
        table.add_row(status, str(n), style=style)
    table.add_row("total", str(sum(counts.values())), style="bold")
    parts.append(table)
    table = Table(title="PROCESSING by stage")
    for name, justify in (("stage", "left"), ("campaigns", "right"), ("n", "right"), ("p50 in stage", "right"),
                          ("p95 in stage", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for stage, n in summary.stages.items():
        t = summary.time_in_stage.get(stage, {})
        table.add_row(stage, str(n), str(t.get("n", 0)), duration(t.get("p50")), duration(t.get("p95")))
    parts.append(table)
    if summary.unknown_ids:
        n = counts[Status.SEND_OUTCOME_UNKNOWN.value]
        parts.append(f"[bold red]{n} send(s) with unknown outcome[/] — never resent blindly; check SES and "
                     f"resolve them: ids {_ids(summary.unknown_ids, n)}")
    if summary.error_reasons:
        table = Table(title="ERROR reasons")
        table.add_column("campaigns", justify="right")
        table.add_column("reason")
        table.add_column("ids")
        for r in summary.error_reasons:
            table.add_row(str(r["count"]), r["reason"], _ids(r["ids"], r["count"]))
        parts.append(table)
    return Group(*parts)


@_with_context
def cmd_status(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    if args.json:
        summary = ops.status_summary(ctx)
        print_json({"campaigns": summary.campaigns, "stages": summary.stages,
                    "error_reasons": summary.error_reasons, "unknown_ids": summary.unknown_ids,
                    "time_in_stage": summary.time_in_stage}, indent=None)
        return 0
    if args.watch:
        return watch(lambda: _status_view(ops.status_summary(ctx)), args.watch)
    console().print(_status_view(ops.status_summary(ctx)))
    return 0


def _ids(ids: Sequence[int], total: int) -> str:
    text = ", ".join(str(i) for i in ids)
    return text + (f", … ({total - len(ids)} more)" if total > len(ids) else "")


def _draft_view(d: Any, position: str | None = None) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("campaign", f"{d.campaign_id} (run {d.run_id}, version {d.version}) — {d.status}")
    head.add_row("to", f"{d.owner_name} <{d.to}>")
    head.add_row("home", d.address)
    head.add_row("waiting since", when(d.waiting_since))
    style = "green" if d.verification_passed else ("red" if d.verification_passed is False else "yellow")
    head.add_row("verification", Text(d.verification, style=style))
    head.add_row("subject", Text(d.subject or "(no draft for this run)", style="bold"))
    body = Text(d.body or "")
    analysis = Text(d.analysis or "(no analysis)", style="dim")
    title = f"Draft {position}" if position else "Draft"
    return Panel(Group(head, Text(""), body, Text(""), Text("Analysis: ", style="bold dim") + analysis), title=title)


@_with_context
def cmd_show(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    detail = ops.campaign_detail(ctx, args.id)
    if detail is None:
        raise UsageError(f"no campaign with id {args.id}")
    c = detail.campaign
    if args.json:
        doc = {key: c[key] for key in ("id", "campaign_status", "processing_stage", "run_id", "version", "last_error")}
        doc["history"] = [{key: h[key] for key in _HISTORY_KEYS} for h in detail.history]
        if args.draft:
            doc["draft"] = detail.draft.to_dict() if detail.draft else None
            doc["stage_results"] = detail.stage_results
        print(json.dumps(doc))
        return 0
    out = console()
    if args.draft:
        if detail.draft is None:
            raise Refused(f"campaign {args.id} has no draft in its current run {c['run_id']} "
                          f"(it is {_state(c['campaign_status'], c['processing_stage'])})")
        out.print(_draft_view(detail.draft))
        return 0
    from rich.table import Table

    table = Table(title=f"Campaign {c['id']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", c["campaign_status"])
    table.add_row("stage", c["processing_stage"])
    table.add_row("run / version", f"{c['run_id']} / {c['version']}")
    table.add_row("owner", f"{c['owner_name']} <{c['email']}>")
    table.add_row("address", c["address"])
    table.add_row("next run at", when(c["next_run_at"]))
    table.add_row("updated at", when(c["updated_at"]))
    if c["last_error"]:
        table.add_row("last error", c["last_error"], style="red")
    send = detail.send
    if send:
        table.add_row("email send", f"{send['state']}"
                      + (f", message id {send['message_id']}" if send["message_id"] else "")
                      + (f", sent {when(send['sent_at'])}" if send["sent_at"] else ""))
    if detail.draft is not None:
        table.add_row("draft", f"{detail.draft.subject!r} (campaignctl show {c['id']} --draft)")
    out.print(table)
    if c["campaign_status"] == Status.SEND_OUTCOME_UNKNOWN.value:
        out.print("[bold red]The send's outcome is unknown[/]: it will not be resent blindly. "
                  "Check SES for the message and resolve it (sent / not sent).")
    table = Table(title="History")
    for name in ("v", "at", "trigger", "from", "to", "task", "worker", "detail"):
        table.add_column(name)
    for row in detail.history:
        table.add_row(
            str(row["version"]), when(row["at"]), row["trigger"],
            _state(row["from_status"], row["from_stage"]), _state(row["to_status"], row["to_stage"]),
            row["task_id"] or "", row["worker_id"] or "", row["detail"] or "",
            style="red" if row["to_status"] in (Status.ERROR.value, Status.SEND_OUTCOME_UNKNOWN.value) else None,
        )
    out.print(table)
    return 0


#: The keys of one history entry in ``show --json`` (SPEC §6), in order.
_HISTORY_KEYS = ("from_status", "to_status", "from_stage", "to_stage", "trigger", "at", "task_id", "worker_id",
                 "detail")


def _state(status: str, stage: str) -> str:
    return status if stage == "idle" else f"{status}:{stage}"


@_with_context
def cmd_list(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    rows = ops.list_campaigns(ctx, status=args.status, stage=args.stage, older_than=args.older_than,
                              limit=args.limit)
    if args.json:
        print_json({"campaigns": [r.to_dict() for r in rows], "count": len(rows)}, indent=None)
        return 0
    if not rows:
        print("no campaigns match")
        return 0
    from rich.table import Table

    table = Table(title=f"Campaigns (oldest change first, at most {args.limit})")
    for name in ("id", "status", "stage", "unchanged for", "owner", "email", "last error"):
        table.add_column(name)
    for r in rows:
        table.add_row(str(r.id), r.status, r.stage if r.stage != "idle" else "", duration(r.age), r.owner_name,
                      r.email, (r.last_error or "")[:60])
    console().print(table)
    return 0


# -- approve, retry, unsubscribe, review -------------------------------------------------


def _apply(ctx: AppContext, cid: int, trigger: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    """Apply one trigger for a person at the CLI; refusals are one line, exit 1."""
    from workflow.store import Result

    outcome = ctx.store.apply(cid, trigger, worker_id="campaignctl", detail=f"campaignctl {trigger}", **kwargs)
    if outcome.result is Result.NOT_FOUND:
        raise UsageError(f"no campaign with id {cid}")
    if not outcome.applied:
        raise Refused(outcome.message)
    return outcome


def _bulk_report(command: str, result: Any, noun: str, task: str) -> int:
    n = len(result.done)
    print(f"{noun} {n} campaign{'s' if n != 1 else ''}"
          + (f" ({len(result.skipped)} changed meanwhile, left alone)" if result.skipped else ""))
    if result.done and not result.error:
        q = result.queued
        print(f"queued {q} {task} task{'s' if q != 1 else ''}"
              + (f" ({result.already_queued} already queued)" if result.already_queued else ""))
    if result.error:
        print(f"campaignctl {command}: {noun} {n} campaigns, but {result.error}", file=sys.stderr)
    return int(result.code)


@_with_context
def cmd_approve(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    if args.all:
        return _bulk_report("approve", ops.approve_all(ctx), "approved", "email_sending")
    return report("approve", ops.approve(ctx, args.id))


@_with_context
def cmd_retry(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    if args.stage and not args.all:
        raise UsageError("--stage goes with --all")
    if args.all:
        return _bulk_report("retry", ops.retry_all(ctx, stage=args.stage), "retried", "stage")
    return report("retry", ops.retry(ctx, args.id))


@_with_context
def cmd_unsubscribe(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    return report("unsubscribe", ops.unsubscribe(ctx, args.id))


#: What a reviewer can answer at the prompt, and what it does.
REVIEW_CHOICES = {"a": "approve", "s": "skip", "u": "unsubscribe", "q": "quit"}


@_with_context
def cmd_review(args: argparse.Namespace, ctx: AppContext) -> int:
    """Drafts oldest first; interactive on a terminal (approve, skip, unsubscribe, quit), a listing otherwise."""
    from campaignctl import operations as ops

    if args.json:
        drafts = ops.review_queue(ctx, args.limit)
        print_json({"waiting": ops.review_count(ctx), "drafts": [d.to_dict() for d in drafts]}, indent=None)
        return 0
    out = console()
    interactive = args.interactive or (sys.stdin.isatty() and out.is_terminal)
    total = ops.review_count(ctx)
    if not total:
        print("no drafts waiting for review")
        return 0
    if not interactive:
        drafts = ops.review_queue(ctx, args.limit)
        for i, d in enumerate(drafts, 1):
            out.print(_draft_view(d, f"{i} of {total}"))
        print(f"{total} waiting; approve with `campaignctl approve ID` or review interactively on a terminal")
        return 0
    skipped: list[int] = []
    counts = {"approve": 0, "skip": 0, "unsubscribe": 0}
    seen = 0
    code = 0
    while seen < args.limit:
        batch = ops.review_queue(ctx, 1, after=skipped)
        if not batch:
            break
        d = batch[0]
        seen += 1
        out.print(_draft_view(d, f"{seen} (of {ops.review_count(ctx)} waiting)"))
        answer = _ask("[a]pprove, [s]kip, [u]nsubscribe, [q]uit? ")
        if answer == "quit":
            break
        counts[answer] += 1
        if answer == "skip":
            skipped.append(d.campaign_id)
            continue
        if answer == "approve":
            result = ops.approve(ctx, d.campaign_id, version=d.version)
        else:
            result = ops.unsubscribe(ctx, d.campaign_id)
        code = max(code, report("review", result))
    print(f"reviewed {seen}: approved {counts['approve']}, skipped {counts['skip']}, "
          f"unsubscribed {counts['unsubscribe']}; {ops.review_count(ctx)} still waiting")
    return code


def _ask(prompt: str) -> str:
    """One answer from REVIEW_CHOICES; end of input means quit."""
    while True:
        print(prompt, end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            print()
            return "quit"
        choice = REVIEW_CHOICES.get(line.strip().lower()[:1])
        if choice:
            return choice
        print("answer a, s, u or q")


def cmd_graph(args: argparse.Namespace) -> int:
    from workflow.machine import mermaid

    sys.stdout.write(mermaid(include_unsubscribe=not args.no_unsubscribe))
    return 0
