"""Zillow via RapidAPI, primary API: ``zillow-com1`` (providers.md §1, §2).

Calls: ``GET /property?address=`` (the home's facts) and
``GET /propertyExtendedSearch?location=<zip>&status_type=ForSale|RecentlySold``.
RapidAPI sends no Retry-After: the wait after a 429 comes from
``x-ratelimit-reset`` (the plan's rate window), else from the plan rate. A
monthly/daily quota 429, a 401/403 (key, subscription) and a gateway 404 are
outages an operator must fix: PermanentError(outage=True), which makes the
stages fall back to zillow56.
"""

from __future__ import annotations

from typing import Any

import requests

from stages import settings as names
from stages.clients.http import Gate, HttpClient, header_seconds, make_session
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings

#: Search rows kept per stage result (the prompt needs a handful, not 40).
MAX_ROWS = 10
#: The plan-rate window reset (x-ratelimit-requests-reset) is only used as a wait when below this, in s;
#: above it, it is the quota period (days), not a rate window.
MAX_REQUESTS_RESET_AS_WAIT = 60.0
#: Search statuses of the stages and their zillow-com1 spelling.
STATUS_TYPES = {"for_sale": "ForSale", "recently_sold": "RecentlySold"}


class NoProperty(PermanentError):
    """The address is unknown to the API (a 200 without a zpid): bad data, not an outage."""


def is_quota(response: requests.Response, text: str) -> bool:
    return "quota" in text.lower()


def is_outage(response: requests.Response, text: str) -> bool:
    return response.status_code in (401, 403, 404)


def rapidapi_retry_after(settings: ProviderSettings, api: str):  # type: ignore[no-untyped-def]
    def retry_after(response: requests.Response) -> float:
        wait = header_seconds(response, "x-ratelimit-reset")
        if wait is None:
            wait = header_seconds(response, "x-ratelimit-requests-reset")
            if wait is not None and wait > MAX_REQUESTS_RESET_AS_WAIT:
                wait = None
        return wait if wait is not None and wait > 0 else settings.plan_interval(api)

    return retry_after


def _num(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        text = str(value).replace(",", "").replace("$", "").split()[0]
        number = float(text)
    except (ValueError, IndexError):
        return None
    return int(number) if number.is_integer() else number


def normalize_property(body: dict[str, Any], source: str) -> dict[str, Any]:
    """The fields the stages use, from the Zillow home-details object (same shape in both APIs)."""
    addr = body.get("address") if isinstance(body.get("address"), dict) else {}
    street = addr.get("streetAddress") or body.get("streetAddress")
    city = addr.get("city") or body.get("city")
    state = addr.get("state") or body.get("state")
    zipcode = addr.get("zipcode") or body.get("zipcode")
    return {
        "source": source,
        "zpid": str(body.get("zpid")),
        "address": ", ".join(str(p) for p in (street, city, f"{state or ''} {zipcode or ''}".strip()) if p),
        "street": street,
        "city": city,
        "state": state,
        "zipcode": str(zipcode) if zipcode is not None else None,
        "bedrooms": _num(body.get("bedrooms")),
        "bathrooms": _num(body.get("bathrooms")),
        "living_area": _num(body.get("livingArea") or body.get("livingAreaValue")),
        "lot_size": _num(body.get("lotAreaValue") or body.get("lotSize")),
        "year_built": _num(body.get("yearBuilt")),
        "home_type": body.get("homeType"),
        "home_status": body.get("homeStatus"),
        "price": _num(body.get("price")),
        "zestimate": _num(body.get("zestimate")),
        "rent_zestimate": _num(body.get("rentZestimate")),
        "last_sold_price": _num(body.get("lastSoldPrice")),
        "date_sold": body.get("dateSoldString"),
        "tax_assessed_value": _num(body.get("taxAssessedValue")),
        "latitude": _num(body.get("latitude")),
        "longitude": _num(body.get("longitude")),
    }


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """A search row of either API (zillow-com1: one address string; zillow56: split fields)."""
    address = row.get("address")
    if not isinstance(address, str):
        parts = [row.get("streetAddress"), row.get("city"), f"{row.get('state') or ''} {row.get('zipcode') or ''}".strip()]
        address = ", ".join(str(p) for p in parts if p)
    return {
        "zpid": str(row.get("zpid")),
        "address": address,
        "price": _num(row.get("price")),
        "bedrooms": _num(row.get("bedrooms")),
        "bathrooms": _num(row.get("bathrooms")),
        "living_area": _num(row.get("livingArea")),
        "status": row.get("listingStatus") or row.get("homeStatus"),
        "date_sold": row.get("dateSold"),
        "days_on_zillow": _num(row.get("daysOnZillow")),
        "zestimate": _num(row.get("zestimate")),
    }


def search_result(body: Any, rows_key: str, provider: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise TransientError(provider, f"malformed response from {provider} (search body is not an object)")
    rows = body.get(rows_key)
    if rows is None and "zpid" in body:
        rows = []  # an exact-address match answers {zpid} only (providers.md §2.4)
    if not isinstance(rows, list):
        raise TransientError(provider, f"malformed response from {provider} (no '{rows_key}' list)")
    clean = [normalize_row(r) for r in rows if isinstance(r, dict)]
    total = body.get("totalResultCount")
    return {"source": provider, "total": total if isinstance(total, int) else len(clean), "rows": clean[:MAX_ROWS]}


class ZillowClient:
    """zillow-com1 on RapidAPI."""

    api = names.ZILLOW

    def __init__(self, settings: ProviderSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.http = HttpClient(self.api, session or make_session(), settings.timeout(self.api), settings.secrets())
        self.base = settings.zillow_base_url
        self.host = settings.zillow_host
        self.key = settings.zillow_key

    def _get(self, gate: Gate, path: str, params: dict[str, str]) -> Any:
        if not self.key:
            raise PermanentError(self.api, "no API key configured (set ZILLOW_API_KEY or RAPIDAPI_KEY)", outage=True)
        gate.acquire(self.api)
        response = self.http.get(
            f"{self.base}{path}", params=params, headers={"X-RapidAPI-Key": self.key, "X-RapidAPI-Host": self.host}
        )
        self.http.check(response, gate, retry_after=rapidapi_retry_after(self.settings, self.api),
                        outage=is_outage, quota=is_quota)
        return self.http.json(response)

    def property_by_address(self, gate: Gate, address: str) -> dict[str, Any]:
        body = self._get(gate, "/property", {"address": address})
        if not isinstance(body, dict):
            raise TransientError(self.api, f"malformed response from {self.api} (property body is not an object)")
        if not body.get("zpid"):
            raise NoProperty(self.api, f"property not found for address {address!r}")
        return normalize_property(body, self.api)

    def search(self, gate: Gate, zip_code: str, status: str) -> dict[str, Any]:
        """``status`` is "for_sale" or "recently_sold"."""
        body = self._get(gate, "/propertyExtendedSearch", {"location": zip_code, "status_type": STATUS_TYPES[status]})
        return search_result(body, "props", self.api)
