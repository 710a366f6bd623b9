"""``campaignctl``: the one console command.

argparse (standard library) parses; every subcommand lives in a module under
``campaignctl.commands`` with a ``register(subparsers)`` function that adds its
parser and sets ``func``. Exit codes: 0 success; 1 the request was refused (an
illegal transition, a failed check) or Redis / the database is unavailable; 2
bad arguments, an unknown id, or a bad setting (campaignctl.config_check).

Whatever goes wrong, the user gets one line naming the cause, never a
traceback: every setting is validated before the command runs (so nothing
changes when one is wrong), and the failures of Redis and the database are
explained by ``config_check.explain``. Only a bug still prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
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
    "campaignctl.commands.provision_cmd",
    "campaignctl.commands.upgrade_cmd",
    "campaignctl.commands.dashboard_cmd",
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
#: Values of --log-level and LOG_LEVEL (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The largest id a campaign can have (a signed 64-bit integer, as both databases store it).
MAX_ID = 2**63 - 1


class UsageError(Exception):
    """Bad input the parser could not catch (an unknown id, a bad CSV path): exit 2."""


class Refused(Exception):
    """A well-formed request the system refuses (an illegal transition): exit 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaignctl",
        description="Durable, rate-limited email campaigns on Redis (campaign-engine).",
    )
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                        help="log verbosity (default LOG_LEVEL, else WARNING); also accepted after the subcommand")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    _accept_everywhere(sub)
    return parser


def _accept_everywhere(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Let ``--log-level`` follow the subcommand too (``campaignctl worker --log-level info``)."""
    for parser in set(sub.choices.values()):
        parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_everywhere(action)


def _name(args: argparse.Namespace) -> str:
    """The command as typed, for messages: ``dlq requeue``, ``status``."""
    return " ".join(str(part) for part in (args.command, getattr(args, "dlq_command", None)) if part)


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr)
    except (BrokenPipeError, OSError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `campaignctl list | head -3`: the reader left. Say nothing more, not even at interpreter exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    from campaignctl import config_check, logs

    parser = build_parser()
    args = parser.parse_args(argv)
    env = os.environ
    try:
        level = config_check.log_level(env, args.log_level)
        logs.setup(level, config_check.log_format(env))
        config_check.validate(env)
    except config_check.ConfigError as exc:
        _say(f"campaignctl {_name(args)}: {exc}")
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        _say(f"campaignctl {_name(args)}: {exc}")
        return EXIT_USAGE
    except Refused as exc:
        _say(f"campaignctl {_name(args)}: {exc}")
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - explained in one line when it is a setting or an outage
        known = config_check.explain(exc, env)
        if known is None:
            raise
        code, line = known
        _say(f"campaignctl {_name(args)}: {line}")
        return code


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
        value = positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a campaign id is a positive whole number, got {text!r}") from None
    if value > MAX_ID:
        raise argparse.ArgumentTypeError(f"a campaign id is at most {MAX_ID}, got {text!r}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
