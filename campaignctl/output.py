"""How campaignctl prints: rich tables on a terminal, wide plain text in a pipe, JSON, and ``--watch``.

Kept apart from the commands so every command formats times, durations and
refusals the same way, and the watch loop exists once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

#: Output width when stdout is not a terminal (a pipe, a file, a log), in characters.
PIPE_WIDTH = 200
#: Default refresh of ``--watch``, in s.
DEFAULT_WATCH = 2.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def console():  # type: ignore[no-untyped-def]
    """A rich console; piped output is wide enough that rows are not cut short."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=PIPE_WIDTH)
    return out


def print_json(data: Any, *, indent: int | None = 2) -> None:
    print(json.dumps(data, indent=indent, default=str))


def when(value: float | dt.datetime | str | None) -> str:
    """A time for people: ``2026-11-30 19:40:02 UTC`` (epoch seconds, an aware datetime or ISO text)."""
    if value in (None, "", 0):
        return "-"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # not a time: shown as it is
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``3d4h`` (``-`` for None)."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if seconds < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def parse_duration(text: str) -> float:
    """argparse type: ``90``, ``90s``, ``30m``, ``1h``, ``2d`` -> seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 1h or 2d, got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def watch_seconds(text: str) -> float:
    """argparse type of ``--watch``: a refresh interval in seconds, at least 0.2."""
    value = parse_duration(text)
    if value < 0.2:
        raise argparse.ArgumentTypeError(f"refresh at most 5 times a second, got {text!r}")
    return value


def add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", type=watch_seconds, nargs="?", const=DEFAULT_WATCH, default=None, metavar="S",
                        help=f"redraw every S seconds (default {DEFAULT_WATCH:g}) until Ctrl-C")


def watch(render: Callable[[], Any], every: float) -> int:
    """Redraw ``render()`` (a rich renderable) every ``every`` seconds until Ctrl-C, in place on a terminal.

    Off a terminal each refresh is printed below the last one with its time,
    so ``--watch`` also works into a log file.
    """
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    out = console()

    def frame() -> Any:
        stamp = Text(f"{when(time.time())} — every {every:g}s, Ctrl-C to stop", style="dim")
        return Group(stamp, render())

    try:
        if out.is_terminal:
            with Live(frame(), console=out, auto_refresh=False, screen=False) as live:
                while True:
                    time.sleep(every)
                    live.update(frame(), refresh=True)
        while True:
            out.print(frame())
            sys.stdout.flush()
            time.sleep(every)
    except KeyboardInterrupt:
        return 0
