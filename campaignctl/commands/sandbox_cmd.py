"""``campaignctl sandbox``: serve the simulated providers on one port until SIGTERM/SIGINT.

Prints exactly one line, ``sandbox listening on http://HOST:PORT``, and
flushes it, so a parent process can start it with ``--port 0`` and parse the
port it got. Plan rates follow RATE_<API> like the engine's, scaled by
``--time-scale`` (give the engine the same factor as RATE_SCALE).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import time

#: How often the main thread checks for SIGTERM/SIGINT, in s.
POLL = 0.2
#: Port when neither --port nor SANDBOX_PORT is given.
DEFAULT_PORT = 8080


def _faults(text: str) -> str:
    from sandbox.faults import FaultSpecError, parse

    try:
        parse(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0 = any free port), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sandbox", help="serve the simulated providers (Zillow, RentCast, QEV, Bedrock, SES) on one port",
        description="Simulated providers with real paths, shapes, errors and per-key rate limits. "
                    "Control: GET /_sandbox/stats, /_sandbox/calls, /_sandbox/emails, /_sandbox/health; "
                    "POST /_sandbox/reset, /_sandbox/faults (GET shows them). See docs/sandbox.md.")
    p.add_argument("--port", type=_port, default=None,
                   help=f"port to listen on; 0 picks a free one (default SANDBOX_PORT, else {DEFAULT_PORT})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--time-scale", type=_positive, default=1.0,
                   help="multiply every plan rate by this (set the engine's RATE_SCALE to the same)")
    p.add_argument("--faults", type=_faults, default=None,
                   help='fault spec, e.g. "zillow:429=0.2,5xx=0.1,timeout=0.05,malformed=0.05,latency=0.2;'
                        'bedrock:5xx=0.3" ("*" = every provider)')
    p.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default 0)")
    p.add_argument("--hang-seconds", type=_positive, default=None,
                   help="how long a timeout fault holds a request before dropping it (default 30)")
    p.set_defaults(func=_sandbox)


def _sandbox(args: argparse.Namespace) -> int:
    from campaignctl.cli import UsageError
    from sandbox.limits import plan_rates
    from sandbox.server import DEFAULT_HANG, start_in_thread

    try:
        rates = plan_rates(os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.port is None:  # SANDBOX_PORT was validated by campaignctl.config_check before any command ran
        args.port = int(os.environ.get("SANDBOX_PORT") or DEFAULT_PORT)
    try:
        handle = start_in_thread(args.port, args.host, time_scale=args.time_scale, faults=args.faults,
                                 seed=args.seed, hang=args.hang_seconds or DEFAULT_HANG, rates=rates)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    # Everything built so far (modules, the providers) lives as long as the process: keep it out of the
    # collector's full passes. Without this a full collection walked ~100k objects; on a busy machine that
    # froze every thread for up to 0.5 s, and the calls that queued meanwhile were then rate-checked back to
    # back and answered 429 although the engine had paced them (docs/reliability.md, load test).
    gc.freeze()
    # A plain flag, not a threading.Event: setting an Event from a signal handler can deadlock when the
    # signal lands while the main thread holds the Event's lock inside wait().
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    print(f"sandbox listening on {handle.url}", flush=True)
    try:
        while not stopping:
            time.sleep(POLL)
    finally:
        handle.stop()
        logging.getLogger(__name__).info("sandbox on %s stopped", handle.url)
    sys.stdout.flush()
    return 0
