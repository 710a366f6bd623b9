"""Runs the dashboard with uvicorn: ``campaignctl dashboard`` and ``campaignctl demo --dashboard``."""

from __future__ import annotations

import threading

import uvicorn

from campaignctl.context import AppContext
from campaignctl.dashboard.app import build_app

#: Address the dashboard listens on unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: Port the dashboard listens on unless told otherwise.
DEFAULT_PORT = 8080


def make_server(ctx: AppContext, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> uvicorn.Server:
    """A uvicorn server for the dashboard of ``ctx`` (DASHBOARD_TOKEN from its environment)."""
    app = build_app(ctx, ctx.env.get("DASHBOARD_TOKEN") or None)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False)
    return uvicorn.Server(config)


def serve_in_thread(ctx: AppContext, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> uvicorn.Server:
    """Start the dashboard in a daemon thread (the demo); ``server.should_exit = True`` stops it."""
    server = make_server(ctx, host, port)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    return server
