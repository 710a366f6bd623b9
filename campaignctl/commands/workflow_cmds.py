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
from workflow.states import TASK_TYPES, Status

Handler = Callable[[argparse.Namespace], int]

#: Distinct error reasons listed by ``status`` (most frequent first).
STATUS_TOP_REASONS = 10
#: Campaign ids listed per reason / for SEND_OUTCOME_UNKNOWN by ``status``.
STATUS_LIST_IDS = 10
#: Longest error text ``status`` prints per reason, in characters.
STATUS_REASON_WIDTH = 120


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)",
                       description="Upgrade the database to the newest schema (default), or to/back to a revision.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--revision", default="head", help="upgrade to this revision (default head)")
    group.add_argument("--downgrade", metavar="REV", help="downgrade to this revision ('base' = empty database)")
    group.add_argument("--stamp", metavar="REV",
                       help="record REV as applied without running it (e.g. 0001 for a database of the old system)")
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

    p = sub.add_parser("status", help="campaigns per status and stage; errors and unknown sends")
    p.add_argument("--json", action="store_true", help='{"campaigns": {status: n}, "stages": {stage: n}}')
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", help="one campaign: its state and full history")
    p.add_argument("id", type=campaign_id, help="campaign id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("approve", help="approve a reviewed email (READY_FOR_REVIEW -> READY_TO_SEND) and queue it")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=campaign_id, help="campaign id")
    target.add_argument("--all", action="store_true", help="every campaign that is READY_FOR_REVIEW")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("retry", help="resume a campaign in ERROR at the step that failed, and queue it")
    p.add_argument("id", type=campaign_id, help="campaign id")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("unsubscribe", help="stop a campaign for good (nothing runs for it again)")
    p.add_argument("id", type=campaign_id, help="campaign id")
    p.set_defaults(func=cmd_unsubscribe)

    p = sub.add_parser("graph", help="the state machine as a Mermaid diagram (drawn from the machine itself)")
    p.add_argument("--no-unsubscribe", action="store_true",
                   help="leave out the unsubscribe edges (every state has one)")
    p.set_defaults(func=cmd_graph)


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

    Database errors become one-line refusals (a missing table almost always
    means the schema was never migrated), never a traceback.
    """
    from sqlalchemy.exc import DBAPIError, NoSuchModuleError

    ctx = AppContext()
    try:
        try:
            yield ctx
        except NoSuchModuleError as exc:
            raise UsageError(f"DATABASE_URL names an unknown database driver: {exc}") from None
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            hint = " (run `campaignctl migrate` first)" if "campaign" in first.lower() or "relation" in first.lower() else ""
            raise Refused(f"database error: {first}{hint}") from None
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


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


#: Output width when stdout is not a terminal (a pipe, a file, a log), in characters.
PIPE_WIDTH = 200


def _console():  # type: ignore[no-untyped-def]
    """A rich console; piped output is wide enough that history rows are not cut short."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


# -- migrate, seed -------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from migrations import runner

    ctx = AppContext()
    url = ctx.database_url
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


# -- status, show ---------------------------------------------------------------


@_with_context
def cmd_status(args: argparse.Namespace, ctx: AppContext) -> int:
    counts = ctx.store.counts()
    if args.json:
        print(json.dumps(counts))
        return 0
    from rich.table import Table

    reasons, unknown = _attention(ctx)
    console = _console()
    table = Table(title="Campaigns")
    table.add_column("status")
    table.add_column("campaigns", justify="right")
    for status, n in counts["campaigns"].items():
        style = "bold red" if n and status in (Status.ERROR.value, Status.SEND_OUTCOME_UNKNOWN.value) else None
        table.add_row(status, str(n), style=style)
    table.add_row("total", str(sum(counts["campaigns"].values())), style="bold")
    console.print(table)
    table = Table(title="PROCESSING by stage")
    table.add_column("stage")
    table.add_column("campaigns", justify="right")
    for stage, n in counts["stages"].items():
        table.add_row(stage, str(n))
    console.print(table)
    if unknown:
        n = counts["campaigns"][Status.SEND_OUTCOME_UNKNOWN.value]
        console.print(f"[bold red]{n} send(s) with unknown outcome[/] — never resent blindly; check SES and "
                      f"resolve them: ids {_ids(unknown, n)}")
    if reasons:
        table = Table(title="ERROR reasons")
        table.add_column("campaigns", justify="right")
        table.add_column("reason")
        table.add_column("ids")
        for reason, n, ids in reasons:
            table.add_row(str(n), reason, _ids(ids, n))
        console.print(table)
    return 0


def _ids(ids: Sequence[int], total: int) -> str:
    text = ", ".join(str(i) for i in ids)
    return text + (f", … ({total - len(ids)} more)" if total > len(ids) else "")


def _attention(ctx: AppContext) -> tuple[list[tuple[str, int, list[int]]], list[int]]:
    """ERROR campaigns grouped by reason, and the first SEND_OUTCOME_UNKNOWN ids."""
    from sqlalchemy import func, select

    from workflow.models import Campaign

    c = Campaign.__table__
    reason = func.coalesce(c.c.last_error, "(no reason recorded)")
    with ctx.db.connect() as conn:
        groups = conn.execute(
            select(reason, func.count())
            .where(c.c.campaign_status == Status.ERROR.value)
            .group_by(reason)
            .order_by(func.count().desc(), reason)
            .limit(STATUS_TOP_REASONS)
        ).all()
        out = []
        for text, n in groups:
            ids = conn.execute(
                select(c.c.id)
                .where(c.c.campaign_status == Status.ERROR.value, reason == text)
                .order_by(c.c.id)
                .limit(STATUS_LIST_IDS)
            ).scalars().all()
            short = text if len(text) <= STATUS_REASON_WIDTH else text[: STATUS_REASON_WIDTH - 1] + "…"
            out.append((short, int(n), list(ids)))
        unknown = conn.execute(
            select(c.c.id)
            .where(c.c.campaign_status == Status.SEND_OUTCOME_UNKNOWN.value)
            .order_by(c.c.id)
            .limit(STATUS_LIST_IDS)
        ).scalars().all()
    return out, list(unknown)


def _history_entry(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "from_status": row["from_status"],
        "to_status": row["to_status"],
        "from_stage": row["from_stage"],
        "to_stage": row["to_stage"],
        "trigger": row["trigger"],
        "at": _iso(row["at"]),
        "task_id": row["task_id"],
        "worker_id": row["worker_id"],
        "detail": row["detail"],
    }


@_with_context
def cmd_show(args: argparse.Namespace, ctx: AppContext) -> int:
    snap = ctx.store.get(args.id)
    if snap is None:
        raise UsageError(f"no campaign with id {args.id}")
    rows = ctx.store.history(args.id)
    history = [_history_entry(r) for r in rows]
    if args.json:
        print(json.dumps({
            "id": snap.id,
            "campaign_status": snap.campaign_status.value,
            "processing_stage": snap.processing_stage.value,
            "run_id": snap.run_id,
            "version": snap.version,
            "last_error": snap.last_error,
            "history": history,
        }))
        return 0
    from rich.table import Table

    console = _console()
    table = Table(title=f"Campaign {snap.id}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", snap.campaign_status.value)
    table.add_row("stage", snap.processing_stage.value)
    table.add_row("run / version", f"{snap.run_id} / {snap.version}")
    table.add_row("owner", f"{snap.owner_name} <{snap.email}>")
    table.add_row("address", snap.address)
    table.add_row("next run at", _iso(snap.next_run_at) or "-")
    table.add_row("updated at", _iso(snap.updated_at) or "-")
    if snap.last_error:
        table.add_row("last error", snap.last_error, style="red")
    send = _send_record(ctx, snap.id, snap.run_id)
    if send:
        table.add_row("email send", f"{send['state']}"
                      + (f", message id {send['message_id']}" if send["message_id"] else "")
                      + (f", sent {_iso(send['sent_at'])}" if send["sent_at"] else ""))
    console.print(table)
    if snap.campaign_status is Status.SEND_OUTCOME_UNKNOWN:
        console.print("[bold red]The send's outcome is unknown[/]: it will not be resent blindly. "
                      "Check SES for the message and resolve it (sent / not sent).")
    table = Table(title="History")
    for name in ("v", "at", "trigger", "from", "to", "task", "worker", "detail"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            str(row["version"]),
            _iso(row["at"]) or "",
            row["trigger"],
            _state(row["from_status"], row["from_stage"]),
            _state(row["to_status"], row["to_stage"]),
            row["task_id"] or "",
            row["worker_id"] or "",
            row["detail"] or "",
            style="red" if row["to_status"] in (Status.ERROR.value, Status.SEND_OUTCOME_UNKNOWN.value) else None,
        )
    console.print(table)
    return 0


def _state(status: str, stage: str) -> str:
    return status if stage == "idle" else f"{status}:{stage}"


def _send_record(ctx: AppContext, cid: int, run_id: int) -> dict[str, Any] | None:
    from sqlalchemy import select

    from workflow.models import EmailSend

    t = EmailSend.__table__
    with ctx.db.connect() as conn:
        row = conn.execute(select(t).where(t.c.campaign_id == cid, t.c.run_id == run_id)).first()
    return dict(row._mapping) if row is not None else None


# -- approve, retry, unsubscribe --------------------------------------------------


def _apply(ctx: AppContext, cid: int, trigger: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    """Apply one trigger for a person at the CLI; refusals are one line, exit 1."""
    from workflow.store import Result

    outcome = ctx.store.apply(cid, trigger, worker_id="campaignctl", detail=f"campaignctl {trigger}", **kwargs)
    if outcome.result is Result.NOT_FOUND:
        raise UsageError(f"no campaign with id {cid}")
    if not outcome.applied:
        raise Refused(outcome.message)
    return outcome


def _enqueue(ctx: AppContext, jobs: Sequence[tuple[int, str]], done: str) -> list[str]:
    """Enqueue (campaign, task type) pairs after the database moved; lines to print.

    ``done`` describes what the database already recorded, so a Redis failure
    message still tells the whole truth.
    """
    import redis

    from engine.redact import redact_url

    try:
        from engine.queue import TaskQueue
    except ImportError:
        raise Refused(f"{done}; this build has no task queue (engine.queue), so the task was not queued: "
                      "recovery will queue it") from None
    lines = []
    try:
        queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
        tasks = queue.enqueue_many([(task_type, cid) for cid, task_type in jobs])
        for (cid, task_type), task in zip(jobs, tasks, strict=True):
            if task is None:
                lines.append(f"campaign {cid}: a {task_type} task is already queued")
            else:
                lines.append(f"campaign {cid}: queued {task_type} task {task.task_id}")
    except redis.RedisError as exc:
        where = redact_url(ctx.settings.redis_url)
        raise Refused(
            f"{done}, but Redis at {where} is unreachable ({redact_url(str(exc)).splitlines()[0]}): "
            f"{len(jobs) - len(lines)} task(s) not queued; the database is the truth and recovery "
            "will queue them once Redis is back"
        ) from None
    return lines


@_with_context
def cmd_approve(args: argparse.Namespace, ctx: AppContext) -> int:
    from workflow.store import Expect, Result, bulk_campaign_ids
    from workflow.states import EMAIL_SENDING

    if not args.all:
        outcome = _apply(ctx, args.id, "approve")
        print(outcome.message)
        for line in _enqueue(ctx, [(args.id, EMAIL_SENDING)], outcome.message):
            print(line)
        return 0
    approved: list[int] = []
    skipped = 0
    for cid in bulk_campaign_ids(ctx.db, [Status.READY_FOR_REVIEW]):
        outcome = ctx.store.apply(cid, "approve", expect=Expect(status=Status.READY_FOR_REVIEW),
                                  worker_id="campaignctl", detail="campaignctl approve --all")
        if outcome.applied:
            approved.append(cid)
        elif outcome.result is not Result.NOT_FOUND:
            skipped += 1  # moved by someone else since the list was read
    print(f"approved {len(approved)} campaign{'s' if len(approved) != 1 else ''}"
          + (f" ({skipped} changed meanwhile, left alone)" if skipped else ""))
    if approved:
        lines = _enqueue(ctx, [(cid, EMAIL_SENDING) for cid in approved], f"approved {len(approved)} campaigns")
        queued = sum(1 for line in lines if "queued " in line)
        print(f"queued {queued} email_sending task{'s' if queued != 1 else ''}"
              + (f" ({len(lines) - queued} already queued)" if len(lines) > queued else ""))
    return 0


@_with_context
def cmd_retry(args: argparse.Namespace, ctx: AppContext) -> int:
    from workflow.states import task_type_for

    outcome = _apply(ctx, args.id, "retry")
    print(outcome.message)
    task_type = task_type_for(outcome.after.campaign_status, outcome.after.processing_stage)
    if task_type is not None:
        for line in _enqueue(ctx, [(args.id, task_type)], outcome.message):
            print(line)
    return 0


@_with_context
def cmd_unsubscribe(args: argparse.Namespace, ctx: AppContext) -> int:
    outcome = _apply(ctx, args.id, "unsubscribe")
    print(outcome.message)
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from workflow.machine import mermaid

    sys.stdout.write(mermaid(include_unsubscribe=not args.no_unsubscribe))
    return 0
