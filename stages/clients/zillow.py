"""Zillow via RapidAPI, primary API: ``zillow-com1`` (providers.md §1, §2).

Calls: ``GET /property?address=`` (the home's facts) and
``GET /propertyExtendedSearch?location=<zip>&status_type=ForSale|RecentlySold``.
The gateway's error rules (429 waits, quota and key outages, which make the
stages fall back to zillow56) live in ``stages.clients.rapidapi``. The
normalizers here serve both Zillow APIs: they answer the same object shapes.
"""

from __future__ import annotations

from typing import Any

import requests

from stages import settings as names
from stages.clients.http import Gate
from stages.clients.rapidapi import RapidApiClient
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings

#: Search rows kept per stage result (the prompt needs a handful, not 40).
MAX_ROWS = 10
#: Search statuses of the stages and their zillow-com1 spelling.
STATUS_TYPES = {"for_sale": "ForSale", "recently_sold": "RecentlySold"}


class NoProperty(PermanentError):
    """The address is unknown to the API (a 200 without a zpid): bad data, not an outage."""


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


class ZillowClient(RapidApiClient):
    """zillow-com1 on RapidAPI."""

    api = names.ZILLOW
    key_env = "ZILLOW_API_KEY or RAPIDAPI_KEY"

    def __init__(self, settings: ProviderSettings, session: requests.Session | None = None) -> None:
        super().__init__(settings, session, base=settings.zillow_base_url, host=settings.zillow_host,
                         key=settings.zillow_key)

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
