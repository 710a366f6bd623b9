"""The RapidAPI gateway that both Zillow APIs sit behind (providers.md §1, §2, §3.1).

zillow-com1 and zillow56 are reached through the same gateway, so they
authenticate, rate-limit and fail the same way; only the host, the key and the
paths differ. This base class holds the gateway's rules in one place, so a fix
to how a 429 or a quota answer is read reaches both APIs at once.

RapidAPI sends no Retry-After: the wait after a 429 comes from
``x-ratelimit-reset`` (the plan's rate window), else from the plan rate. A
monthly/daily quota 429, a 401/403 (key, subscription) and a gateway 404 are
outages an operator must fix: PermanentError(outage=True), which makes the
stages fall back from zillow-com1 to zillow56.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from stages.clients.http import Gate, HttpClient, header_seconds, make_session
from stages.errors import PermanentError
from stages.settings import ProviderSettings

#: The plan-rate window reset (x-ratelimit-requests-reset) is only used as a wait when below this, in s;
#: above it, it is the quota period (days), not a rate window.
MAX_REQUESTS_RESET_AS_WAIT = 60.0


def is_quota(response: requests.Response, text: str) -> bool:
    """A 429 for an exhausted plan quota (not the rate window): waiting will not help."""
    return "quota" in text.lower()


def is_outage(response: requests.Response, text: str) -> bool:
    """Key, subscription or gateway-route problems: the API is out until an operator acts."""
    return response.status_code in (401, 403, 404)


def rapidapi_retry_after(settings: ProviderSettings, api: str) -> Callable[[requests.Response], float]:
    """How long a 429 of ``api`` says to wait: the rate window's reset, else one plan interval."""

    def retry_after(response: requests.Response) -> float:
        wait = header_seconds(response, "x-ratelimit-reset")
        if wait is None:
            wait = header_seconds(response, "x-ratelimit-requests-reset")
            if wait is not None and wait > MAX_REQUESTS_RESET_AS_WAIT:
                wait = None
        return wait if wait is not None and wait > 0 else settings.plan_interval(api)

    return retry_after


class RapidApiClient:
    """GET one RapidAPI-hosted API with the gateway's headers and error rules.

    Subclasses set ``api`` (the bucket and provider name) and ``key_env`` (the
    variables that configure the key, named in the error when it is missing).
    """

    api: str
    key_env: str

    def __init__(
        self,
        settings: ProviderSettings,
        session: requests.Session | None,
        *,
        base: str,
        host: str,
        key: str,
    ) -> None:
        self.settings = settings
        self.http = HttpClient(self.api, session or make_session(), settings.timeout(self.api), settings.secrets())
        self.base = base
        self.host = host
        self.key = key

    def _get(self, gate: Gate, path: str, params: dict[str, str]) -> Any:
        """One rate-limited GET of ``path``; the decoded JSON body, or the typed error for the response."""
        if not self.key:
            raise PermanentError(self.api, f"no API key configured (set {self.key_env})", outage=True)
        gate.acquire(self.api)
        response = self.http.get(
            f"{self.base}{path}", params=params, headers={"X-RapidAPI-Key": self.key, "X-RapidAPI-Host": self.host}
        )
        self.http.check(response, gate, retry_after=rapidapi_retry_after(self.settings, self.api),
                        outage=is_outage, quota=is_quota)
        return self.http.json(response)
