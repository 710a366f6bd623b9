"""RentCast API v1 (providers.md §7): market statistics by zip and a value estimate.

Errors share one envelope ``{"status", "error": "<area>/<code>", "message"}``.
A 429 (``auth/rate-limit-exceeded``) carries no Retry-After, so the wait is one
interval of the plan rate. 401/403 (key, billing) are outages; 404 means "no
data for this input" and is raised as ``NotFound`` so a stage can decide to
carry on without it.
"""

from __future__ import annotations

from typing import Any

import requests

from stages import settings as names
from stages.clients.http import Gate, HttpClient, make_session
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings

#: Comparables kept from /avm/value (the prompt needs a few).
MAX_COMPARABLES = 5


class NotFound(PermanentError):
    """RentCast has no data for this input (HTTP 404)."""


class RentCastClient:
    api = names.RENTCAST

    def __init__(self, settings: ProviderSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.http = HttpClient(self.api, session or make_session(), settings.timeout(self.api), settings.secrets())
        self.base = settings.rentcast_base_url
        self.key = settings.rentcast_key

    def _get(self, gate: Gate, path: str, params: dict[str, str]) -> dict[str, Any]:
        if not self.key:
            raise PermanentError(self.api, "no API key configured (set RENTCAST_API_KEY)", outage=True)
        gate.acquire(self.api)
        response = self.http.get(f"{self.base}{path}", params=params,
                                 headers={"X-Api-Key": self.key, "Accept": "application/json"})
        if response.status_code == 404:
            raise NotFound(self.api, f"HTTP 404 no data for {path}: {self.http.message(response)}")
        self.http.check(response, gate, retry_after=lambda r: self.settings.plan_interval(self.api))
        body = self.http.json(response)
        if not isinstance(body, dict):
            raise TransientError(self.api, f"malformed response from {self.api} ({path} body is not an object)")
        return body

    def markets(self, gate: Gate, zip_code: str) -> dict[str, Any]:
        body = self._get(gate, "/markets", {"zipCode": zip_code})
        sale = body.get("saleData") or {}
        rental = body.get("rentalData") or {}
        pick = ("averagePrice", "medianPrice", "averagePricePerSquareFoot", "averageDaysOnMarket",
                "medianDaysOnMarket", "newListings", "totalListings")
        return {
            "zip_code": body.get("zipCode", zip_code),
            "sale": {k: sale.get(k) for k in pick if isinstance(sale, dict)},
            "rental": {k: rental.get(k) for k in ("averageRent", "medianRent", "totalListings")
                       if isinstance(rental, dict)},
        }

    def value(self, gate: Gate, address: str) -> dict[str, Any]:
        body = self._get(gate, "/avm/value", {"address": address})
        if "price" not in body:
            raise TransientError(self.api, f"malformed response from {self.api} (/avm/value without price)")
        comps = body.get("comparables") if isinstance(body.get("comparables"), list) else []
        return {
            "price": body.get("price"),
            "low": body.get("priceRangeLow"),
            "high": body.get("priceRangeHigh"),
            "comparables": [
                {k: c.get(k) for k in ("formattedAddress", "price", "bedrooms", "bathrooms", "squareFootage",
                                       "distance", "correlation")}
                for c in comps[:MAX_COMPARABLES] if isinstance(c, dict)
            ],
        }
