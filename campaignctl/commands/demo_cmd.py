"""``campaignctl demo``: run the whole system locally, with nothing installed by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

from campaignctl.cli import positive_int


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _faults(text: str) -> str:
    from campaignctl.commands.sandbox_cmd import _faults as check

    return check(text)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from campaignctl import demo

    p = sub.add_parser(
        "demo",
        help="run everything locally (embedded Redis, SQLite, simulated providers) and summarise",
        description=(
            "Starts an embedded Redis, a SQLite database, the simulated providers, one producer, "
            "W workers and one recovery process as subprocesses, seeds campaigns, shows live progress "
            "and prints a summary. Exits 0 only when every campaign came to rest."
        ),
    )
    p.add_argument("--campaigns", type=positive_int, default=demo.DEFAULT_CAMPAIGNS,
                   help=f"campaigns to seed (default {demo.DEFAULT_CAMPAIGNS})")
    p.add_argument("--workers", type=positive_int, default=demo.DEFAULT_WORKERS,
                   help=f"worker processes (default {demo.DEFAULT_WORKERS})")
    p.add_argument("--concurrency", type=positive_int, default=demo.DEFAULT_CONCURRENCY,
                   help=f"tasks per worker process (default {demo.DEFAULT_CONCURRENCY})")
    approve = p.add_mutually_exclusive_group()
    approve.add_argument("--auto-approve", dest="auto_approve", action="store_true", default=True,
                         help="approve drafts automatically and send them (default)")
    approve.add_argument("--no-auto-approve", dest="auto_approve", action="store_false",
                         help="stop at READY_FOR_REVIEW (approve with `campaignctl approve`)")
    p.add_argument("--time-scale", type=_positive_float, default=None,
                   help="run every rate limit this many times faster (default: picked so the run takes about a minute)")
    p.add_argument("--faults", type=_faults, default=None,
                   help='sandbox fault spec, e.g. "zillow:5xx=0.1;bedrock:429=0.05" (checked before anything starts)')
    p.add_argument("--dir", type=Path, default=demo.DEFAULT_DIR,
                   help=f"working folder: database, Redis data, logs (default {demo.DEFAULT_DIR})")
    p.add_argument("--keep", action="store_true", help="keep the working folder's data from the last run")
    p.add_argument("--timeout", type=_positive_float, default=None,
                   help="give up after this many seconds (default: 4× the expected time + 60, at least 120)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the web dashboard on a free 127.0.0.1 port during the run and print its address")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from campaignctl import demo
    from campaignctl.cli import UsageError

    opts = demo.DemoOptions(
        campaigns=args.campaigns,
        workers=args.workers,
        concurrency=args.concurrency,
        auto_approve=args.auto_approve,
        time_scale=args.time_scale,
        workdir=args.dir,
        keep=args.keep,
        timeout=args.timeout,
        faults=args.faults,
        json_summary=args.json,
        dashboard=args.dashboard,
    )
    try:
        return demo.run_demo(opts)
    except demo.DemoError as exc:
        raise UsageError(str(exc)) from None
