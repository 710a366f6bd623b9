"""``campaignctl``: the one console command.

argparse (standard library) parses; every subcommand lives in a module under
``campaignctl.commands`` with a ``register(subparsers)`` function that adds its
parser and sets ``func``. Exit codes: 0 success, 1 the request was refused (an
illegal transition, a failed check), 2 bad arguments or an unknown id.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

#: Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "campaignctl.commands.workflow_cmds",
    "campaignctl.commands.engine_cmds",
    "campaignctl.commands.send_cmds",
    "campaignctl.commands.sandbox_cmd",
    "campaignctl.commands.demo_cmd",
    "campaignctl.commands.dashboard_cmd",
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input the parser could not catch (an unknown id, a bad CSV path): exit 2."""


class Refused(Exception):
    """A well-formed request the system refuses (an illegal transition): exit 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaignctl",
        description="Durable, rate-limited email campaigns on Redis (campaign-engine).",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "WARNING"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"campaignctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"campaignctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (argparse turns the ValueError into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def campaign_id(text: str) -> int:
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a campaign id is a positive whole number, got {text!r}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
