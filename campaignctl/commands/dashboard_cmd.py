"""``campaignctl dashboard``: the web dashboard (overview, campaigns, review queue)."""

from __future__ import annotations

import argparse

from campaignctl.cli import positive_int


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from campaignctl.dashboard.server import DEFAULT_HOST, DEFAULT_PORT

    p = sub.add_parser("dashboard", help="serve the web dashboard (read-only unless DASHBOARD_TOKEN is set)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from campaignctl.context import AppContext
    from campaignctl.dashboard.server import make_server

    ctx = AppContext()
    server = make_server(ctx, args.host, args.port)
    mode = "operator writes need DASHBOARD_TOKEN" if ctx.env.get("DASHBOARD_TOKEN") else "read-only"
    print(f"dashboard on http://{args.host}:{args.port}/ ({mode})", flush=True)
    server.run()
    return 0
