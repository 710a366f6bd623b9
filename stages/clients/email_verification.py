"""QuickEmailVerification (providers.md §4): ``GET /v1/verify?email=&apikey=``.

The key travels in the query string, so no URL ever reaches an error text
(HttpClient reports transport failures by type only). Booleans are the strings
"true"/"false". A 429 may be an HTML page: the wait is one plan interval.
402 (out of credits), 401 and 403 (key, account) are outages an operator must
fix.
"""

from __future__ import annotations

from typing import Any

import attrs
import requests

from stages import settings as names
from stages.clients.http import Gate, HttpClient, make_session
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings


@attrs.frozen
class Verdict:
    email: str
    result: str
    reason: str
    disposable: bool
    safe_to_send: bool
    accept_all: bool
    role: bool
    did_you_mean: str

    @property
    def passed(self) -> bool:
        """Deliverable and not a throwaway address: the only case we send to."""
        return self.result == "valid" and not self.disposable

    def describe(self) -> str:
        flags = [name for name in ("disposable", "role", "accept_all") if getattr(self, name)]
        extra = f", {', '.join(flags)}" if flags else ""
        hint = f", did you mean {self.did_you_mean}" if self.did_you_mean else ""
        return f"{self.result} ({self.reason}{extra}{hint})"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"passed": self.passed}


def _flag(value: Any) -> bool:
    return str(value).strip().lower() == "true"


class EmailVerificationClient:
    api = names.EMAIL_VERIFICATION

    def __init__(self, settings: ProviderSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.http = HttpClient(self.api, session or make_session(), settings.timeout(self.api), settings.secrets())
        self.url = settings.qev_base_url + ("/verify/sandbox" if settings.qev_sandbox_mode else "/verify")
        self.key = settings.qev_key

    def verify(self, gate: Gate, email: str) -> Verdict:
        if not self.key:
            raise PermanentError(self.api, "no API key configured (set QEV_API_KEY)", outage=True)
        gate.acquire(self.api)
        response = self.http.get(self.url, params={"email": email, "apikey": self.key})
        self.http.check(
            response, gate,
            retry_after=lambda r: self.settings.plan_interval(self.api),
            outage=lambda r, m: r.status_code in (401, 402, 403),
        )
        body = self.http.json(response)
        if not isinstance(body, dict) or "result" not in body:
            if isinstance(body, dict) and str(body.get("success")).lower() == "false":
                raise PermanentError(self.api, f"verification refused: {self.http.clean(str(body.get('message')))}")
            raise TransientError(self.api, f"malformed response from {self.api} (no 'result' field)")
        return Verdict(
            email=str(body.get("email") or email),
            result=str(body.get("result")),
            reason=str(body.get("reason") or ""),
            disposable=_flag(body.get("disposable")),
            safe_to_send=_flag(body.get("safe_to_send")),
            accept_all=_flag(body.get("accept_all")),
            role=_flag(body.get("role")),
            did_you_mean=str(body.get("did_you_mean") or ""),
        )
