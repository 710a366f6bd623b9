"""Zillow behind the RapidAPI gateway: zillow-com1 (primary) and zillow56 (fallback) — providers.md §1–§3.

Both are served on the same port; the gateway routes on ``X-RapidAPI-Host``
exactly as the real one does. Gateway facts ([D]/[O] in providers.md): key in
``X-RapidAPI-Key``; 401 "Invalid API key…", 403 "You are not subscribed to
this API."; the plan 429 "You have exceeded the rate limit per minute for your
plan, BASIC, by the API provider" with ``x-ratelimit-limit/remaining/reset``
and no Retry-After; ``x-ratelimit-requests-*`` (the monthly quota) on every
answer. Inferred [I]: the 404 bodies for an unknown host or path, the 5xx
bodies, sub-second ``x-ratelimit-reset`` under a time scale, and the
``{}`` answer for an address Zillow does not know.
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from sandbox import fakedata as fd
from sandbox.provider import CallContext, retry_after_header, seconds_header
from sandbox.wire import Request, Response

ZILLOW_HOST = "zillow-com1.p.rapidapi.com"
ZILLOW56_HOST = "zillow56.p.rapidapi.com"
#: Requests in the simulated BASIC plan's monthly quota (x-ratelimit-requests-limit).
MONTHLY_QUOTA = 500_000
#: Seconds until the simulated monthly quota resets (x-ratelimit-requests-reset); well above a rate window.
QUOTA_RESET = 1_814_400
#: Rows per search page (the value seen in a zillow56 sample, used for both APIs).
RESULTS_PER_PAGE = 41

INVALID_KEY = "Invalid API key. Go to https://docs.rapidapi.com/docs/keys for more info."
NOT_SUBSCRIBED = "You are not subscribed to this API."
RATE_LIMITED = "You have exceeded the rate limit per minute for your plan, BASIC, by the API provider"
QUOTA_TEXT = ("You have exceeded the MONTHLY quota for Requests on your current plan, BASIC. "
              "Upgrade your plan at https://rapidapi.com/{owner}/api/{api}")
#: [I] Gateway answers for a host no API is registered under, and for an unknown path.
NO_SUCH_API = "API doesn't exists"
NO_SUCH_ENDPOINT = "Endpoint '{path}' does not exist"
#: [I] Injected 5xx answers, in rotation: the gateway's "API unreachable" 502, a provider 500, a 503.
SERVER_ERRORS: tuple[tuple[int, dict[str, str]], ...] = (
    (502, {"messages": "The API is unreachable, please contact the API provider",
           "info": "Your Client (working) ---> Gateway (working) ---> API (not working)"}),
    (500, {"message": "Internal Server Error"}),
    (503, {"message": "Service Unavailable"}),
)


def gateway_not_found(host: str) -> Response:
    """[I] The gateway's answer for an X-RapidAPI-Host no API is registered under."""
    return Response.json(404, {"message": NO_SUCH_API}, {"server": "RapidAPI-1.2.8"})


class RapidApi:
    """The gateway part shared by both Zillow APIs: keys, quotas, 429s, headers."""

    name = ""
    host = ""
    owner = ""
    api = ""

    def __init__(self, per_minute: int = 10) -> None:
        #: Calls per minute of the simulated plan (x-ratelimit-limit), from the unscaled plan rate.
        self.plan_per_minute = per_minute
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()
        self._errors = itertools.cycle(SERVER_ERRORS)

    # -- gateway -------------------------------------------------------------------

    def key(self, req: Request) -> str:
        return req.header("x-rapidapi-key").strip()

    def auth_error(self, req: Request, key: str) -> Response | None:
        if not key or key.startswith("invalid"):
            return Response.json(401, {"message": INVALID_KEY})
        if key.startswith("unsubscribed"):
            return Response.json(403, {"message": NOT_SUBSCRIBED})
        if key.startswith("overquota"):
            return self._quota()
        return None

    def _quota(self) -> Response:
        return Response.json(429, {"message": QUOTA_TEXT.format(owner=self.owner, api=self.api)})

    def throttled(self, req: Request, ctx: CallContext) -> Response:
        return Response.json(429, {"message": RATE_LIMITED}, self._window(ctx, remaining=0, reset=ctx.wait))

    def injected(self, req: Request, ctx: CallContext, fault: str) -> Response:
        if fault == "429":
            headers = self._window(ctx, remaining=0, reset=ctx.wait)
            headers["Retry-After"] = retry_after_header(ctx.wait)
            return Response.json(429, {"message": RATE_LIMITED}, headers)
        if fault == "quota":
            return self._quota()
        status, body = next(self._errors)
        return Response.json(status, body)

    def _window(self, ctx: CallContext, *, remaining: int, reset: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.plan_per_minute),
            "x-ratelimit-remaining": str(max(0, remaining)),
            "x-ratelimit-reset": seconds_header(reset),
        }

    def decorate(self, req: Request, ctx: CallContext | None, resp: Response) -> Response:
        key = self.key(req)
        with self._lock:
            used = self._used[key] = self._used.get(key, 0) + (1 if resp.status < 400 else 0)
        resp.headers.setdefault("x-ratelimit-requests-limit", str(MONTHLY_QUOTA))
        resp.headers.setdefault("x-ratelimit-requests-remaining", str(max(0, MONTHLY_QUOTA - used)))
        resp.headers.setdefault("x-ratelimit-requests-reset", str(QUOTA_RESET))
        if ctx is not None and resp.status != 429:
            resp.headers.update(self._window(ctx, remaining=ctx.remaining, reset=ctx.refill))
        resp.headers.setdefault("server", "RapidAPI-1.2.8")
        resp.headers.setdefault("x-rapidapi-region", "AWS - us-east-1")
        resp.headers.setdefault("x-rapidapi-version", "1.2.8")
        return resp

    def reset(self) -> None:
        with self._lock:
            self._used.clear()

    # -- routing ---------------------------------------------------------------------

    routes: dict[str, str] = {}

    def handle(self, req: Request, ctx: CallContext) -> Response:
        method = self.routes.get(req.raw_path.rstrip("/") or "/")
        if method is None:
            return Response.json(404, {"message": NO_SUCH_ENDPOINT.format(path=req.raw_path)})
        if req.method != "GET":
            return Response.json(405, {"message": f"Method {req.method} not allowed for {req.raw_path}"})
        return getattr(self, method)(req)


# -- shapes shared by both APIs ----------------------------------------------------------


def property_object(address: str) -> dict[str, Any]:
    """The Zillow home-details object (providers.md §2.3), trimmed to the keys clients read."""
    h = fd.home(address)
    fd.remember(h.zpid, address)
    a = h.address
    r = fd.rng("details", a.one_line)
    sold_ms = fd.epoch_ms(h.last_sold)
    recently = (fd.TODAY - h.last_sold).days <= 180
    status = "RECENTLY_SOLD" if recently else "OTHER"
    schools = [{"name": f"{a.city} {level} School", "rating": r.randrange(3, 10), "level": level,
                "grades": grades, "distance": round(r.uniform(0.2, 3.5), 1), "type": "Public",
                "link": f"https://www.greatschools.org/school?id={r.randrange(1000, 99999):05d}&state={a.state}"}
               for level, grades in (("Elementary", "K-5"), ("Middle", "6-8"), ("High", "9-12"))]
    nearby = [{"zpid": n.zpid, "price": n.value, "homeStatus": "OTHER",
               "address": {"streetAddress": n.address.street}} for n in fd.neighbours(a.zipcode, f"near-{h.zpid}", 3)]
    tax_history = [{"time": fd.epoch_ms(fd.TODAY.replace(month=2, day=20, year=fd.TODAY.year - i)),
                    "taxPaid": round(h.tax_assessed * 0.018 / (1.03 ** i), 2),
                    "value": int(h.tax_assessed / (1.03 ** i)), "taxIncreaseRate": 0.03 if i else 0,
                    "valueIncreaseRate": 0.03 if i else 0} for i in range(3)]
    return {
        "zpid": h.zpid,
        "address": {"streetAddress": a.street, "city": a.city, "state": a.state, "zipcode": a.zipcode,
                    "neighborhood": None, "community": None, "subdivision": None},
        "streetAddress": a.street, "city": a.city, "state": a.state, "zipcode": a.zipcode,
        "county": a.county, "latitude": h.latitude, "longitude": h.longitude,
        "bedrooms": h.bedrooms, "bathrooms": h.bathrooms, "livingArea": h.living_area,
        "livingAreaValue": h.living_area, "livingAreaUnits": "Square Feet",
        "lotAreaValue": h.lot_size, "lotAreaUnits": "Square Feet", "lotSize": h.lot_size,
        "yearBuilt": h.year_built, "homeType": h.home_type[0], "homeStatus": status,
        "keystoneHomeStatus": "RecentlySold" if recently else "Other",
        "price": h.last_sold_price, "lastSoldPrice": h.last_sold_price,
        "dateSold": sold_ms, "dateSoldString": h.last_sold.isoformat(),
        "zestimate": h.value, "rentZestimate": h.rent, "zestimateLowPercent": "5", "zestimateHighPercent": "5",
        "taxAssessedValue": h.tax_assessed, "taxAssessedYear": fd.TODAY.year - 1, "propertyTaxRate": 1.8,
        "monthlyHoaFee": h.hoa or None, "daysOnZillow": -1 if not recently else (fd.TODAY - h.last_sold).days,
        "currency": "USD", "country": "USA",
        "hdpUrl": f"/homedetails/{a.slug}/{h.zpid}_zpid/",
        "description": (f"{a.street}, {a.city}, {a.state} {a.zipcode} is a {h.home_type[1].lower()} home "
                        f"that contains {h.living_area:,} sq ft and was built in {h.year_built}. It contains "
                        f"{h.bedrooms} bedrooms and {h.bathrooms:g} bathrooms."),
        "priceHistory": [{"date": h.last_sold.isoformat(), "time": sold_ms, "event": "Sold",
                          "price": h.last_sold_price,
                          "pricePerSquareFoot": round(h.last_sold_price / h.living_area),
                          "priceChangeRate": 0, "source": "Public Record"}],
        "taxHistory": tax_history,
        "resoFacts": {"bedrooms": h.bedrooms, "bathrooms": h.bathrooms, "bathroomsFull": int(h.bathrooms),
                      "homeType": h.home_type[1], "hoaFee": f"${h.hoa} monthly" if h.hoa else None,
                      "heating": ["Forced Air", "Natural Gas"], "cooling": ["Central"],
                      "daysOnZillow": -1, "atAGlanceFacts": [{"factLabel": "Year Built",
                                                              "factValue": str(h.year_built)}]},
        "schools": schools,
        "listingSubType": {"isFSBA": False, "isForAuction": False, "isPending": False},
        "nearbyHomes": nearby,
    }


#: zillow-com1 status_type -> (neighbour set, listingStatus).
COM1_STATUS = {"forsale": ("ForSale", "FOR_SALE"), "recentlysold": ("RecentlySold", "RECENTLY_SOLD"),
               "forrent": ("ForRent", "FOR_RENT")}


def _search_homes(location: str, kind: str) -> list[fd.Home]:
    zipcode = location.strip() if fd.is_zip(location) else fd.parse_address(location).zipcode
    return fd.neighbours(zipcode, kind)


def _listing(h: fd.Home, status: str) -> dict[str, Any]:
    """Per-row listing facts: (price, dateSold in epoch ms or None, daysOnZillow)."""
    r = fd.rng("listing", h.address.one_line, status)
    if status == "RECENTLY_SOLD":
        sold = fd.TODAY - fd.dt.timedelta(days=r.randrange(3, 180))
        price = int(h.value * r.uniform(0.94, 1.04)) // 500 * 500
        return {"price": price, "dateSold": fd.epoch_ms(sold), "daysOnZillow": -1}
    if status == "FOR_RENT":
        return {"price": h.rent, "dateSold": None, "daysOnZillow": r.randrange(1, 60)}
    return {"price": int(h.value * r.uniform(0.97, 1.12)) // 1000 * 1000, "dateSold": None,
            "daysOnZillow": r.randrange(1, 150)}


def _page(req: Request, total: int) -> tuple[int, int, int]:
    """(page, first index, total pages) of a search; page is clamped to what exists."""
    pages = max(1, -(-total // RESULTS_PER_PAGE))
    try:
        page = max(1, min(int(req.query.get("page") or 1), pages))
    except ValueError:
        page = 1
    return page, (page - 1) * RESULTS_PER_PAGE, pages


def _listed_page(req: Request, homes: list[fd.Home],
                 status: str) -> tuple[int, int, list[tuple[fd.Home, dict[str, Any]]]]:
    """(page, total pages, [(home, its listing facts)]) of a search result, in either API's paging.

    The homes shown are remembered by zpid, so a later lookup by zpid (in
    either API) answers the same home as the search row did.
    """
    page, first, pages = _page(req, len(homes))
    shown = []
    for h in homes[first:first + RESULTS_PER_PAGE]:
        fd.remember(h.zpid, h.address.one_line)
        shown.append((h, _listing(h, status)))
    return page, pages, shown


def _zpid_param(req: Request) -> int | None:
    raw = req.query.get("zpid") or ""
    if not raw:
        match = re.search(r"(\d+)_zpid", req.query.get("property_url") or "")
        raw = match.group(1) if match else ""
    return int(raw) if raw.isdigit() else None


# -- zillow-com1 -----------------------------------------------------------------------------


class ZillowCom1(RapidApi):
    """zillow-com1 ("Zillow.com" by apimaker): /property and /propertyExtendedSearch (+ [I] extras)."""

    name = "zillow"
    host = ZILLOW_HOST
    owner = "apimaker"
    api = "zillow-com1"
    routes = {"/property": "property", "/propertyExtendedSearch": "extended_search",
              "/similarSales": "similar_sales", "/zestimate": "zestimate"}

    def property(self, req: Request) -> Response:
        address = req.query.get("address", "").strip()
        zpid = _zpid_param(req)
        if not address and zpid is None:
            return Response.json(400, {"message": "One of zpid, property_url or address is required."})  # [I]
        if address and fd.unknown(address):
            return Response.json(200, {})
        return Response.json(200, property_object(address or fd.address_of_zpid(zpid or 0)))

    def extended_search(self, req: Request) -> Response:
        location = req.query.get("location", "").strip()
        if not location and not (req.query.get("polygon") or req.query.get("coordinates")):
            return Response.json(400, {"message": "location, polygon or coordinates is required."})  # [I]
        if len(location) > 100:
            return Response.json(400, {"message": "location must be at most 100 characters."})  # [I]
        if location and fd.looks_like_address(location):
            if fd.unknown(location):
                return Response.json(200, {"props": [], "resultsPerPage": RESULTS_PER_PAGE, "totalPages": 0,
                                           "totalResultCount": 0, "currentPage": 1})  # [I]
            h = fd.home(location)
            fd.remember(h.zpid, location)
            return Response.json(200, {"zpid": h.zpid})
        kind, status = COM1_STATUS.get((req.query.get("status_type") or "ForSale").lower(), COM1_STATUS["forsale"])
        homes = _search_homes(location or req.query.get("coordinates") or req.query.get("polygon", ""), kind)
        page, pages, shown = _listed_page(req, homes, status)
        rows = []
        for h, facts in shown:
            rows.append({
                "zpid": str(h.zpid), "address": h.address.one_line, "price": facts["price"],
                "bedrooms": h.bedrooms, "bathrooms": h.bathrooms, "livingArea": h.living_area,
                "lotAreaValue": h.lot_size, "lotAreaUnit": "sqft", "propertyType": h.home_type[0],
                "listingStatus": status, "dateSold": facts["dateSold"], "daysOnZillow": facts["daysOnZillow"],
                "latitude": h.latitude, "longitude": h.longitude,
                "imgSrc": f"https://photos.zillowstatic.com/fp/{h.zpid:x}-p_e.jpg",
                "detailUrl": f"/homedetails/{h.address.slug}/{h.zpid}_zpid/", "listingSubType": {},
                "contingentListingType": None, "country": "USA", "currency": "USD", "hasImage": True,
                "zestimate": h.value, "rentZestimate": h.rent,
            })
        return Response.json(200, {"props": rows, "resultsPerPage": RESULTS_PER_PAGE, "totalPages": pages,
                                   "totalResultCount": len(homes), "currentPage": page})

    def similar_sales(self, req: Request) -> Response:
        """[I] No capture exists: a JSON array of /property-like objects, RECENTLY_SOLD, epoch-ms dateSold."""
        zpid = _zpid_param(req)
        if zpid is None:
            return Response.json(400, {"message": "zpid or property_url is required."})
        subject = fd.home(fd.address_of_zpid(zpid))
        out = []
        for h in fd.neighbours(subject.address.zipcode, f"similar-{zpid}", 6):
            facts = _listing(h, "RECENTLY_SOLD")
            out.append({"zpid": h.zpid, "address": {"streetAddress": h.address.street, "city": h.address.city,
                                                      "state": h.address.state, "zipcode": h.address.zipcode},
                        "price": facts["price"], "bedrooms": h.bedrooms, "bathrooms": h.bathrooms,
                        "livingArea": h.living_area, "homeStatus": "RECENTLY_SOLD", "dateSold": facts["dateSold"]})
        return Response.json(200, out)

    def zestimate(self, req: Request) -> Response:
        """[I] A top-level ``zestimate`` number, as clients read it."""
        address = req.query.get("address", "").strip()
        zpid = _zpid_param(req)
        if not address and zpid is None:
            return Response.json(400, {"message": "One of zpid, property_url or address is required."})
        h = fd.home(address or fd.address_of_zpid(zpid or 0))
        return Response.json(200, {"zpid": h.zpid, "zestimate": h.value})


# -- zillow56 ----------------------------------------------------------------------------------

#: zillow56 status -> (neighbour set, homeStatus).
Z56_STATUS = {"forsale": ("ForSale", "FOR_SALE"), "recentlysold": ("RecentlySold", "RECENTLY_SOLD"),
              "forrent": ("ForRent", "FOR_RENT")}


class Zillow56(RapidApi):
    """zillow56: /search, /search_address, /property."""

    name = "zillow56"
    host = ZILLOW56_HOST
    owner = "s.mahmoud97"
    api = "zillow56"
    routes = {"/search": "search", "/search_address": "search_address", "/property": "property"}

    def search(self, req: Request) -> Response:
        location = req.query.get("location", "").strip()
        if not location:
            return Response.json(400, {"message": "location is required."})  # [I]
        if fd.looks_like_address(location):
            # [D] An exact address returns the property-details object instead of a list.
            return Response.json(200, {} if fd.unknown(location) else property_object(location))
        kind, status = Z56_STATUS.get((req.query.get("status") or "forSale").lower(), Z56_STATUS["forsale"])
        homes = _search_homes(location, kind)
        page, pages, shown = _listed_page(req, homes, status)
        rows = []
        for h, facts in shown:
            rows.append({
                "zpid": h.zpid, "streetAddress": h.address.street, "city": h.address.city,
                "state": h.address.state, "zipcode": h.address.zipcode, "unit": None,
                "price": facts["price"], "priceForHDP": facts["price"], "bedrooms": h.bedrooms,
                "bathrooms": h.bathrooms, "livingArea": h.living_area, "lotAreaValue": h.lot_size,
                "lotAreaUnit": "sqft", "homeType": h.home_type[0], "homeStatus": status,
                "dateSold": facts["dateSold"], "daysOnZillow": facts["daysOnZillow"], "zestimate": h.value,
                "rentZestimate": h.rent, "taxAssessedValue": h.tax_assessed, "latitude": h.latitude,
                "longitude": h.longitude, "imgSrc": f"https://photos.zillowstatic.com/fp/{h.zpid:x}-p_e.jpg",
                "currency": "USD", "country": "USA", "priceChange": None, "priceReduction": "",
                "shouldHighlight": False,
            })
        return Response.json(200, {"results": rows, "resultsPerPage": RESULTS_PER_PAGE, "totalPages": pages,
                                   "totalResultCount": len(homes)})

    def search_address(self, req: Request) -> Response:
        address = req.query.get("address", "").strip()
        if not address:
            return Response.json(400, {"message": "address is required."})  # [I]
        if fd.unknown(address):
            return Response.json(200, {})
        return Response.json(200, property_object(address))

    def property(self, req: Request) -> Response:
        zpid = _zpid_param(req)
        if zpid is None:
            return Response.json(400, {"message": "zpid is required."})  # [I]
        return Response.json(200, property_object(fd.address_of_zpid(zpid)))
