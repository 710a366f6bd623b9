"""RentCast API v1 (providers.md §7): /markets, /avm/value, /avm/rent/long-term, /properties, /listings/sale.

[D] Key in ``X-Api-Key``; every error is ``{"status", "error": "<area>/<code>",
"message"}``; the 429 is ``auth/rate-limit-exceeded`` with no rate-limit
headers and no Retry-After; non-GET gets 405. [I] The 404 and 5xx bodies (the
same envelope assumed), the message for a wrong (rather than missing) key, and
the Retry-After on injected 429s (a sandbox addition).
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from sandbox import fakedata as fd
from sandbox.provider import CallContext, retry_after_header
from sandbox.wire import Request, Response

NO_KEY = "No API key provided in request. An API key must be provided in the 'X-Api-Key' header"
BAD_KEY = "Invalid API key provided in request. Check the 'X-Api-Key' header"  # [I]
INACTIVE = ("The provided API key is not associated with an active API subscription. "
            "View subscription status on your API dashboard: https://app.rentcast.io/app/api")
#: [D] The real text, which names RentCast's own 20/s (the sandbox enforces the plan rate of CONTRACTS.md).
RATE_LIMITED = "The rate limit of 20 requests per second has been exceeded"
#: Injected server errors in rotation. [I] bodies.
SERVER_ERRORS = ((500, "server/internal-error", "An internal server error occurred. Please try again later"),
                 (504, "server/timeout", "The request timed out. Please try again later"))


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, {"status": status, "error": code, "message": message}, headers)


def _address_fields(h: fd.Home) -> dict[str, Any]:
    a = h.address
    return {"id": _id(a), "formattedAddress": a.one_line,
            "addressLine1": a.street, "addressLine2": None, "city": a.city, "state": a.state,
            "zipCode": a.zipcode, "county": a.county.replace(" County", ""), "latitude": h.latitude,
            "longitude": h.longitude, "propertyType": h.home_type[1], "bedrooms": h.bedrooms,
            "bathrooms": h.bathrooms, "squareFootage": h.living_area, "lotSize": h.lot_size,
            "yearBuilt": h.year_built}


def _id(a: fd.Address) -> str:
    return a.one_line.replace(", ", ",-").replace(" ", "-")


class RentCast:
    name = "rentcast"

    def __init__(self) -> None:
        self._errors = itertools.cycle(SERVER_ERRORS)

    def key(self, req: Request) -> str:
        return req.header("x-api-key").strip()

    def auth_error(self, req: Request, key: str) -> Response | None:
        if not key:
            return error(401, "auth/api-key-invalid", NO_KEY)
        if key.startswith("invalid"):
            return error(401, "auth/api-key-invalid", BAD_KEY)
        if key.startswith("unsubscribed"):
            return error(403, "billing/subscription-inactive", INACTIVE)
        return None

    def throttled(self, req: Request, ctx: CallContext) -> Response:
        return error(429, "auth/rate-limit-exceeded", RATE_LIMITED)

    def injected(self, req: Request, ctx: CallContext, fault: str) -> Response:
        if fault in ("429", "quota"):
            return error(429, "auth/rate-limit-exceeded", RATE_LIMITED, {"Retry-After": retry_after_header(ctx.wait)})
        status, code, message = next(self._errors)
        return error(status, code, message)

    def decorate(self, req: Request, ctx: CallContext | None, resp: Response) -> Response:
        return resp

    def reset(self) -> None:
        pass

    # -- endpoints -----------------------------------------------------------------------

    def handle(self, req: Request, ctx: CallContext) -> Response:
        path = req.raw_path.rstrip("/")
        routes = {"/v1/markets": self.markets, "/v1/avm/value": self.value, "/v1/avm/rent/long-term": self.rent,
                  "/v1/properties": self.properties, "/v1/listings/sale": self.listings}
        handler = routes.get(path)
        if handler is None and path.startswith("/v1/properties/"):
            handler = self.property_by_id
        if handler is None:
            return error(404, "resource/not-found", f"No resource found at path '{req.raw_path}'")  # [I]
        if req.method != "GET":
            return error(405, "resource/method-not-allowed", f"Method {req.method} is not allowed")  # [I] body
        return handler(req)

    def markets(self, req: Request) -> Response:
        zipcode = (req.query.get("zipCode") or "").strip()
        if not fd.is_zip(zipcode):
            return error(400, "resource/bad-request",
                         f"The provided zip code '{zipcode}' is invalid. It must be a 5-digit US zip code")
        data_type = (req.query.get("dataType") or "All").lower()
        r = fd.rng("market", zipcode)
        level = fd.market_level(zipcode)
        out: dict[str, Any] = {"id": zipcode, "zipCode": zipcode}
        if data_type in ("all", "sale"):
            out["saleData"] = _stats(r, "Price", level, 0.35)
        if data_type in ("all", "rental"):
            out["rentalData"] = _stats(r, "Rent", int(level * 0.0068), 0.3)
        return Response.json(200, out)

    def _subject(self, req: Request) -> fd.Home | Response:
        address = (req.query.get("address") or "").strip()
        if not address and req.query.get("latitude") and req.query.get("longitude"):
            address = f"{req.query['latitude']} {req.query['longitude']}"
        if not address or not any(ch.isdigit() for ch in address) or fd.unknown(address):
            return error(400, "resource/bad-request",
                         f"The provided address '{address}' could not be parsed or geolocated")
        return fd.home(address)

    def _avm(self, req: Request, field: str) -> Response:
        h = self._subject(req)
        if isinstance(h, Response):
            return h
        try:
            count = max(5, min(25, int(req.query.get("compCount") or 15)))
        except ValueError:
            return error(400, "resource/bad-request", "compCount must be a number between 5 and 25")
        r = fd.rng("avm", field, h.address.one_line)
        center = h.value if field == "price" else h.rent
        subject = {**_address_fields(h), "id": _id(h.address),
                   "lastSaleDate": fd.iso(h.last_sold), "lastSalePrice": h.last_sold_price}
        comps = []
        for n in fd.neighbours(h.address.zipcode, f"comps-{field}-{h.zpid}", count):
            listed = fd.TODAY - dt.timedelta(days=r.randrange(5, 200))
            comps.append({**_address_fields(n), "status": r.choice(("Active", "Inactive")),
                          "price": n.value if field == "price" else n.rent, "listingType": "Standard",
                          "listedDate": fd.iso(listed), "removedDate": None,
                          "lastSeenDate": fd.iso(fd.TODAY - dt.timedelta(days=r.randrange(0, 5))),
                          "daysOnMarket": (fd.TODAY - listed).days, "distance": round(r.uniform(0.05, 2.5), 3),
                          "daysOld": r.randrange(1, 90), "correlation": round(r.uniform(0.85, 0.999), 4)})
        comps.sort(key=lambda c: -c["correlation"])
        spread = r.uniform(0.12, 0.22)
        low, high = int(center * (1 - spread)), int(center * (1 + spread))
        step = 1000 if field == "price" else 5
        names = ("price", "priceRangeLow", "priceRangeHigh") if field == "price" else ("rent", "rentRangeLow",
                                                                                        "rentRangeHigh")
        values = (center // step * step, low // step * step, high // step * step)
        return Response.json(200, {**dict(zip(names, values)), "subjectProperty": subject, "comparables": comps})

    def value(self, req: Request) -> Response:
        return self._avm(req, "price")

    def rent(self, req: Request) -> Response:
        return self._avm(req, "rent")

    def _record(self, h: fd.Home) -> dict[str, Any]:
        r = fd.rng("record", h.address.one_line)
        year = fd.TODAY.year - 1
        return {**_address_fields(h), "stateFips": f"{r.randrange(1, 56):02d}",
                "countyFips": f"{r.randrange(1, 200):03d}", "assessorID": f"{r.randrange(10000, 99999)}-"
                f"{r.randrange(100, 999)}-{r.randrange(1000, 9999)}", "subdivision": None, "zoning": "R1",
                "lastSaleDate": fd.iso(h.last_sold), "lastSalePrice": h.last_sold_price,
                "hoa": {"fee": h.hoa} if h.hoa else None,
                "features": {"garage": r.random() < 0.7, "pool": r.random() < 0.15, "floorCount": r.choice((1, 2)),
                             "unitCount": 1},
                "taxAssessments": {str(year): {"year": year, "value": h.tax_assessed,
                                               "land": int(h.tax_assessed * 0.27),
                                               "improvements": h.tax_assessed - int(h.tax_assessed * 0.27)}},
                "propertyTaxes": {str(year): {"year": year, "total": int(h.tax_assessed * 0.018)}},
                "history": {h.last_sold.isoformat(): {"event": "Sale", "date": fd.iso(h.last_sold),
                                                      "price": h.last_sold_price}},
                "ownerOccupied": r.random() < 0.75}

    def _homes_for(self, req: Request, kind: str) -> list[fd.Home] | Response:
        address = (req.query.get("address") or "").strip()
        if address:
            h = self._subject(req)
            return h if isinstance(h, Response) else [h]
        zipcode = (req.query.get("zipCode") or "").strip()
        if not zipcode and req.query.get("city") and req.query.get("state"):
            zipcode = fd.parse_address(f"1 Main St, {req.query['city']}, {req.query['state']}").zipcode
        if not zipcode and req.query.get("latitude") and req.query.get("longitude"):
            zipcode = f"{fd.seed_of(req.query['latitude'], req.query['longitude']) % 90000 + 10000:05d}"
        if not fd.is_zip(zipcode):
            return error(400, "resource/bad-request",
                         "Provide an address, a city and state, a zip code, or latitude and longitude")
        return fd.neighbours(zipcode, kind)

    def _slice(self, req: Request, items: list[Any]) -> Response:
        try:
            limit = max(1, min(500, int(req.query.get("limit") or 50)))
            offset = max(0, int(req.query.get("offset") or 0))
        except ValueError:
            return error(400, "resource/bad-request", "limit and offset must be whole numbers")
        headers = {"X-Total-Count": str(len(items))} if (req.query.get("includeTotalCount") or "").lower() == "true" \
            else {}
        return Response.json(200, items[offset:offset + limit], headers)

    def properties(self, req: Request) -> Response:
        homes = self._homes_for(req, "records")
        if isinstance(homes, Response):
            return homes
        return self._slice(req, [self._record(h) for h in homes])

    def property_by_id(self, req: Request) -> Response:
        ident = req.raw_path.rstrip("/").rsplit("/", 1)[-1]
        from urllib.parse import unquote

        text = unquote(ident).replace(",-", ", ").replace("-", " ")
        if not any(ch.isdigit() for ch in text):
            return error(404, "resource/not-found", f"No property found with id '{unquote(ident)}'")  # [I]
        return Response.json(200, self._record(fd.home(text)))

    def listings(self, req: Request) -> Response:
        homes = self._homes_for(req, "ForSale")
        if isinstance(homes, Response):
            return homes
        wanted = (req.query.get("status") or "Active").capitalize()
        out = []
        for h in homes:
            r = fd.rng("sale-listing", h.address.one_line)
            listed = fd.TODAY - dt.timedelta(days=r.randrange(1, 150))
            status = "Active" if r.random() < 0.8 else "Inactive"
            if status != wanted:
                continue
            price = int(h.value * r.uniform(0.97, 1.12)) // 1000 * 1000
            seen = dt.datetime.combine(fd.TODAY, dt.time(13, 11, 47)).isoformat(timespec="milliseconds") + "Z"
            out.append({**_address_fields(h), "status": status, "price": price,
                        "listingType": "Standard", "listedDate": fd.iso(listed),
                        "removedDate": None if status == "Active" else fd.iso(fd.TODAY),
                        "createdDate": fd.iso(listed), "lastSeenDate": seen,
                        "daysOnMarket": (fd.TODAY - listed).days, "mlsName": "SandboxMLS",
                        "mlsNumber": str(r.randrange(1_000_000, 9_999_999)),
                        "hoa": {"fee": h.hoa} if h.hoa else None,
                        "history": {listed.isoformat(): {"event": "Sale Listing", "price": price,
                                                         "listingType": "Standard", "listedDate": fd.iso(listed),
                                                         "removedDate": None,
                                                         "daysOnMarket": (fd.TODAY - listed).days}}})
        out.sort(key=lambda x: x["listedDate"], reverse=True)
        return self._slice(req, out)


def _stats(r: Any, noun: str, center: int, spread: float) -> dict[str, Any]:
    """One saleData/rentalData block: average|median|min|max × noun|…PerSquareFoot|SquareFootage|DaysOnMarket."""
    avg = int(center * r.uniform(0.95, 1.08))
    sqft = r.randrange(1300, 2300)
    per_sqft = round(avg / sqft, 2)
    days = round(r.uniform(20, 80), 2)
    block: dict[str, Any] = {
        "lastUpdatedDate": fd.iso(fd.TODAY - dt.timedelta(days=1)),
        f"average{noun}": avg, f"median{noun}": int(avg * 0.95), f"min{noun}": int(avg * (1 - spread * 2)),
        f"max{noun}": int(avg * (1 + spread * 5)),
        f"average{noun}PerSquareFoot": per_sqft, f"median{noun}PerSquareFoot": round(per_sqft * 0.96, 2),
        f"min{noun}PerSquareFoot": round(per_sqft * 0.4, 2), f"max{noun}PerSquareFoot": round(per_sqft * 2.5, 2),
        "averageSquareFootage": sqft, "medianSquareFootage": int(sqft * 0.95), "minSquareFootage": 480,
        "maxSquareFootage": sqft * 3,
        "averageDaysOnMarket": days, "medianDaysOnMarket": int(days * 0.8), "minDaysOnMarket": 1,
        "maxDaysOnMarket": int(days * 6),
        "newListings": r.randrange(5, 60), "totalListings": r.randrange(40, 400),
    }
    block["dataByPropertyType"] = [{"propertyType": t, f"average{noun}": int(avg * f),
                                    "totalListings": int(block["totalListings"] * s)}
                                   for t, f, s in (("Single Family", 1.05, 0.65), ("Condo", 0.7, 0.2),
                                                   ("Townhouse", 0.85, 0.15))]
    block["dataByBedrooms"] = [{"bedrooms": b, f"average{noun}": int(avg * (0.7 + 0.15 * b)),
                                "totalListings": int(block["totalListings"] * s)}
                               for b, s in ((2, 0.25), (3, 0.5), (4, 0.25))]
    history = {}
    for months_back in range(1, 4):
        day = (fd.TODAY.replace(day=1) - dt.timedelta(days=30 * months_back)).replace(day=1)
        history[day.strftime("%Y-%m")] = {"date": fd.iso(day), f"average{noun}": int(avg * (1 - 0.004 * months_back)),
                                          "totalListings": int(block["totalListings"] * (1 - 0.03 * months_back))}
    block["history"] = history
    return block
