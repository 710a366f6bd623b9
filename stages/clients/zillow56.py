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
from stages.clients.http import Gate
from stages.clients.rapidapi import RapidApiClient
from stages.clients.zillow import NoProperty, normalize_property, search_result
from stages.errors import TransientError
from stages.settings import ProviderSettings

#: Search statuses of the stages and their zillow56 spelling.
STATUSES = {"for_sale": "forSale", "recently_sold": "recentlySold"}


class Zillow56Client(RapidApiClient):
    """zillow56 on RapidAPI (the fallback)."""

    api = names.ZILLOW56
    key_env = "ZILLOW56_API_KEY or RAPIDAPI_KEY"

    def __init__(self, settings: ProviderSettings, session: requests.Session | None = None) -> None:
        super().__init__(settings, session, base=settings.zillow56_base_url, host=settings.zillow56_host,
                         key=settings.zillow56_key)

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
