"""Zillow via RapidAPI, fallback API: ``zillow56`` (providers.md §3.1).

Used when zillow-com1 is out (quota, subscription, gateway 404) or its bucket
is paused for longer than a worker would sleep. Calls:
``GET /search_address?address=`` (the home-details object, same shape as
zillow-com1 ``/property``) and ``GET /search?location=<zip>&status=forSale|recentlySold``
(rows with split address fields). Same gateway, so the same error rules.
"""

from __future__ import annotations

from typing import Any

import requests

from stages import settings as names
from stages.clients.http import Gate, HttpClient, make_session
from stages.clients.zillow import NoProperty, is_outage, is_quota, normalize_property, rapidapi_retry_after, search_result
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings

#: Search statuses of the stages and their zillow56 spelling.
STATUSES = {"for_sale": "forSale", "recently_sold": "recentlySold"}


class Zillow56Client:
    api = names.ZILLOW56

    def __init__(self, settings: ProviderSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.http = HttpClient(self.api, session or make_session(), settings.timeout(self.api), settings.secrets())
        self.base = settings.zillow56_base_url
        self.host = settings.zillow56_host
        self.key = settings.zillow56_key

    def _get(self, gate: Gate, path: str, params: dict[str, str]) -> Any:
        if not self.key:
            raise PermanentError(self.api, "no API key configured (set ZILLOW56_API_KEY or RAPIDAPI_KEY)", outage=True)
        gate.acquire(self.api)
        response = self.http.get(
            f"{self.base}{path}", params=params, headers={"X-RapidAPI-Key": self.key, "X-RapidAPI-Host": self.host}
        )
        self.http.check(response, gate, retry_after=rapidapi_retry_after(self.settings, self.api),
                        outage=is_outage, quota=is_quota)
        return self.http.json(response)

    def property_by_address(self, gate: Gate, address: str) -> dict[str, Any]:
        body = self._get(gate, "/search_address", {"address": address})
        if not isinstance(body, dict):
            raise TransientError(self.api, f"malformed response from {self.api} (property body is not an object)")
        if not body.get("zpid") and isinstance(body.get("results"), list) and body["results"]:
            body = body["results"][0]  # an ambiguous match lists candidates; take the best one
        if not isinstance(body, dict) or not body.get("zpid"):
            raise NoProperty(self.api, f"property not found for address {address!r}")
        return normalize_property(body, self.api)

    def search(self, gate: Gate, zip_code: str, status: str) -> dict[str, Any]:
        body = self._get(gate, "/search", {"location": zip_code, "status": STATUSES[status], "output": "json"})
        return search_result(body, "results", self.api)
