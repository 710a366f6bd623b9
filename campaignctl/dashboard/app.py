"""The dashboard's routes: a thin Starlette layer over campaignctl.operations and the fleet snapshot.

Pages: ``/`` (overview, its body refreshed every few seconds from
``/overview/live`` by a few lines of static JavaScript), ``/campaigns/{id}``,
``/review``; ``/login`` and ``/logout`` for the operator; the writes are
``POST /campaigns/{id}/{approve|unsubscribe|retry|resolve}``, each calling
the operations function the CLI calls and redirecting back with its message.
Every write checks the operator (see auth.py) before anything else: 403
otherwise. ``/healthz`` answers for compose's healthcheck.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from campaignctl import fleet, operations
from campaignctl.context import AppContext
from campaignctl.dashboard import views
from campaignctl.dashboard.auth import CSRF_FIELD, SESSION_COOKIE, SESSION_MAX_AGE, OperatorAuth
from engine.metrics import FleetCollector

HERE = Path(__file__).parent
#: Seconds between two refreshes of the overview in the browser.
LIVE_REFRESH = 3.0
#: Headers on every answer: no framing (clickjacking), no inline script, no sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
#: Write actions: the URL's last part -> what the operations module calls it.
WRITE_ACTIONS = ("approve", "unsubscribe", "retry", "resolve")


class Dashboard:
    """The app's state: the context (database, Redis), the operator check, the cached fleet snapshot."""

    def __init__(self, ctx: AppContext, token: str | None) -> None:
        self.ctx = ctx
        self.auth = OperatorAuth(token)
        self.fleet = FleetCollector(self._read_fleet, fleet.FLEET_REFRESH)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes .html

    def _read_fleet(self) -> dict[str, Any]:
        snapshot = fleet.read_snapshot(self.ctx)
        snapshot["dead_letter_list"] = operations.dead_letters(self.ctx)[-views.DLQ_SHOWN:]
        return snapshot

    # -- who is asking ------------------------------------------------------------------

    def session(self, request: Request) -> str | None:
        return self.auth.session_id(request.cookies.get(SESSION_COOKIE))

    def can_write(self, request: Request) -> bool:
        return self.session(request) is not None or self.auth.bearer_ok(request.headers.get("authorization"))

    def page(self, request: Request, template: str, **context: Any) -> Response:
        sid = self.session(request)
        context.update(
            can_write=sid is not None, write_enabled=self.auth.enabled,
            csrf_field=CSRF_FIELD, csrf_token=self.auth.csrf_token(sid) if sid else "",
            message=request.query_params.get("msg", ""), path=request.url.path, live_refresh=LIVE_REFRESH,
        )
        return self.templates.TemplateResponse(request, template, context)

    # -- pages ------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        return self.page(request, "overview.html", **self._overview())

    def overview_live(self, request: Request) -> Response:
        return self.page(request, "_overview.html", **self._overview())

    def _overview(self) -> dict[str, Any]:
        snapshot = self.fleet.snapshot()
        if snapshot is None:
            return {"o": None}
        return {"o": views.overview(snapshot, snapshot["dead_letter_list"])}

    def campaign(self, request: Request) -> Response:
        campaign_id = request.path_params["campaign_id"]
        detail = operations.campaign_detail(self.ctx, campaign_id)
        if detail is None:
            response = self.page(request, "not_found.html", what=f"campaign {campaign_id}")
            response.status_code = 404
            return response
        return self.page(request, "campaign.html", c=views.campaign_page(detail, self.can_write(request)))

    def review(self, request: Request) -> Response:
        return self.page(request, "review.html", r=views.review_page(self.ctx, self.can_write(request)))

    # -- the operator -------------------------------------------------------------------------

    def login_form(self, request: Request) -> Response:
        return self.page(request, "login.html", next=_local(request.query_params.get("next")), failed=False)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        target = _local(str(form.get("next") or "/"))
        if not self.auth.token_matches(str(form.get("token") or "")):
            response = self.page(request, "login.html", next=target, failed=True)
            response.status_code = 403
            return response
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, self.auth.new_session(), max_age=SESSION_MAX_AGE, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def write(self, request: Request) -> Response:
        """One write action; 403 unless the operator's session and the form's CSRF token (or the bearer) match."""
        form = await request.form()
        sid = self.session(request)
        bearer = self.auth.bearer_ok(request.headers.get("authorization"))
        if not self.auth.enabled:
            return PlainTextResponse("read-only dashboard: DASHBOARD_TOKEN is not set\n", status_code=403)
        if not bearer and (sid is None or not self.auth.csrf_ok(sid, _str(form.get(CSRF_FIELD)))):
            return PlainTextResponse("forbidden: sign in with the operator token, from the dashboard's own form\n",
                                     status_code=403)
        action = request.path_params["action"]
        campaign_id = request.path_params["campaign_id"]
        result = await run_in_threadpool(self._act, action, campaign_id, form)
        back = _local(_str(form.get("back")) or f"/campaigns/{campaign_id}")
        separator = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{separator}msg={urllib.parse.quote(result.message)}", status_code=303)

    def _act(self, action: str, campaign_id: int, form: Any) -> operations.ActionResult:
        by = "dashboard"
        if action == "approve":
            version = _str(form.get("version"))
            return operations.approve(self.ctx, campaign_id, version=int(version) if version else None, by=by)
        if action == "unsubscribe":
            return operations.unsubscribe(self.ctx, campaign_id, by=by)
        if action == "retry":
            return operations.retry(self.ctx, campaign_id)
        return operations.resolve(self.ctx, campaign_id, sent=_str(form.get("sent")) == "1")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _local(target: str | None) -> str:
    """Only a path on this site (never ``//elsewhere`` or ``https://…``): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def build_app(ctx: AppContext, token: str | None) -> Starlette:
    """The ASGI app; ``token`` is DASHBOARD_TOKEN (None or empty: read-only)."""
    d = Dashboard(ctx, token)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def write_not_allowed(request: Request) -> Response:
        return PlainTextResponse("unknown action\n", status_code=404)

    routes = [
        Route("/", d.overview),
        Route("/overview/live", d.overview_live),
        Route("/campaigns/{campaign_id:int}", d.campaign),
        Route("/review", d.review),
        Route("/login", d.login_form, methods=["GET"]),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/campaigns/{campaign_id:int}/{action:str}", d.write, methods=["POST"]),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    async def headers_and_checks(request: Request, call_next: Any) -> Response:
        if request.method == "POST" and request.url.path.startswith("/campaigns/"):
            if request.url.path.rsplit("/", 1)[-1] not in WRITE_ACTIONS:
                return await write_not_allowed(request)
            if not _same_origin(request):
                return PlainTextResponse("forbidden: cross-site request\n", status_code=403)
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=headers_and_checks)])
    app.state.dashboard = d
    return app


def _same_origin(request: Request) -> bool:
    """A browser's Origin header, when sent, must name this very host (a second fence besides the CSRF token)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host")
