"""QuickEmailVerification (providers.md §4): ``GET /v1/verify`` and ``/v1/verify/sandbox``.

[D] Key in the ``apikey`` query parameter; booleans are the strings
"true"/"false"; ``X-QEV-Remaining-Credits`` on every answer; the sandbox
endpoint's magic local parts (the table below, from the official test suite),
which CONTRACTS.md applies to ``/v1/verify`` too; 402
``{"success":"false","message":"Low credit. Payment required"}``. [O] a 429
may come back as an HTML page (every other limit 429 here does, with
Content-Type text/html). [I] the 401/403/429/5xx JSON bodies
(``{success, message}`` assumed).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from sandbox.provider import CallContext, retry_after_header
from sandbox.wire import Request, Response

#: Credits a fresh key starts with (X-QEV-Remaining-Credits); /verify spends one, /verify/sandbox none.
START_CREDITS = 100_000
LOW_CREDIT = {"success": "false", "message": "Low credit. Payment required"}
RATE_TEXT = "Too many requests. Rate limit exceeded."
HTML_429 = ("<!DOCTYPE html><html><head><title>429 Too Many Requests</title></head><body>"
            "<h1>Too Many Requests</h1><p>Rate limit exceeded. Please slow down.</p></body></html>")

#: Magic local part -> (result, reason, flags set to "true", safe_to_send).
MAGIC: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    "valid": ("valid", "accepted_email", ("disposable", "accept_all"), False),
    "safe-to-send": ("valid", "accepted_email", (), True),
    "free": ("valid", "accepted_email", ("free",), True),
    "role": ("valid", "accepted_email", ("role",), False),
    "accept-all": ("valid", "accepted_email", ("accept_all",), False),
    "disposable": ("valid", "accepted_email", ("disposable",), False),
    "rejected-email": ("invalid", "rejected_email", (), False),
    "invalid-domain": ("invalid", "invalid_domain", (), False),
    "invalid-email": ("invalid", "invalid_email", (), False),
    "no-mx-record": ("invalid", "no_mx_record", (), False),
    "exceeded-storage": ("invalid", "exceeded_storage", (), False),
    "did-you-mean": ("invalid", "rejected_email", (), False),
    "timeout": ("unknown", "timeout", (), False),
    "unexpected-error": ("unknown", "unexpected_error", (), False),
    "no-connect": ("unknown", "no_connect", (), False),
    "unavailable-smtp": ("unknown", "unavailable_smtp", (), False),
    "temporarily-blocked": ("unknown", "temporarily_blocked", (), False),
}
#: Domains answered free "true" outside the magic table.
FREE_DOMAINS = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "aol.com", "icloud.com"})


def _flag(value: bool) -> str:
    return "true" if value else "false"


def verdict(email: str, sandbox: bool) -> dict[str, Any]:
    """The 200 body for ``email``: magic local parts first, then a malformed-address check, then valid."""
    user, _, domain = email.rpartition("@")
    magic = MAGIC.get(user.lower())
    mx = f"mx1.{domain.lower()}" if domain else ""
    body: dict[str, Any] = {"result": "valid", "reason": "accepted_email", "disposable": "false",
                            "accept_all": "false", "role": "false", "free": _flag(domain.lower() in FREE_DOMAINS),
                            "email": email, "user": user, "domain": domain, "mx_record": mx,
                            "mx_domain": domain.lower(), "safe_to_send": "true", "did_you_mean": "",
                            "success": "true", "message": None}
    if magic:
        result, reason, flags, safe = magic
        body.update(result=result, reason=reason, safe_to_send=_flag(safe), free="false")
        for flag in flags:
            body[flag] = "true"
        if user.lower() == "did-you-mean":
            body["did_you_mean"] = email
        if sandbox:
            body["mx_record"] = None
    elif not user or "." not in domain or " " in email:
        body.update(result="invalid", reason="invalid_email", safe_to_send="false", mx_record="", mx_domain="")
    return body


class Qev:
    name = "email_verification"

    def __init__(self) -> None:
        self._spent: dict[str, int] = {}
        self._throttles = itertools.count()
        self._lock = threading.Lock()
        self._errors = itertools.cycle(((500, "Internal server error"), (503, "Service temporarily unavailable")))

    def key(self, req: Request) -> str:
        return (req.query.get("apikey") or "").strip()

    def auth_error(self, req: Request, key: str) -> Response | None:
        if not key or key.startswith("invalid"):
            return Response.json(401, {"success": "false", "message": "Invalid API key"})  # [I] body
        if key.startswith("unsubscribed"):
            return Response.json(403, {"success": "false", "message": "Account disabled"})  # [I] body
        if key.startswith("overquota"):
            return Response.json(402, LOW_CREDIT)
        return None

    def throttled(self, req: Request, ctx: CallContext) -> Response:
        if next(self._throttles) % 2:
            return Response.text(429, HTML_429, "text/html; charset=utf-8")
        return Response.json(429, {"success": "false", "message": RATE_TEXT})

    def injected(self, req: Request, ctx: CallContext, fault: str) -> Response:
        if fault == "quota":
            return Response.json(402, LOW_CREDIT)
        if fault == "429":
            resp = self.throttled(req, ctx)
            resp.headers["Retry-After"] = retry_after_header(ctx.wait)
            return resp
        status, text = next(self._errors)
        return Response.json(status, {"success": "false", "message": text})

    def credits(self, key: str) -> int:
        with self._lock:
            return max(0, START_CREDITS - self._spent.get(key, 0))

    def decorate(self, req: Request, ctx: CallContext | None, resp: Response) -> Response:
        resp.headers.setdefault("X-QEV-Remaining-Credits", str(self.credits(self.key(req))))
        return resp

    def reset(self) -> None:
        with self._lock:
            self._spent.clear()

    def handle(self, req: Request, ctx: CallContext) -> Response:
        path = req.raw_path.rstrip("/")
        if path not in ("/v1/verify", "/v1/verify/sandbox"):
            return Response.text(404, "Not Found")  # [O] a plain-text 404
        if req.method != "GET":
            return Response.json(405, {"success": "false", "message": "Method not allowed"})  # [I]
        email = (req.query.get("email") or "").strip()
        if not email:
            return Response.json(400, {"success": "false", "message": "Email address is required"})  # [I]
        sandbox = path.endswith("/sandbox")
        if email.lower().partition("@")[0] == "low-credit":
            return Response.json(402, LOW_CREDIT)
        if not sandbox:
            with self._lock:
                if self._spent.get(ctx.key, 0) >= START_CREDITS:
                    return Response.json(402, LOW_CREDIT)
                self._spent[ctx.key] = self._spent.get(ctx.key, 0) + 1
        return Response.json(200, verdict(email, sandbox))


