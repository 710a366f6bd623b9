"""Deterministic fake data: the same address gives the same home, in every run and every process.

Everything is drawn from ``random.Random`` seeded with a SHA-256 of a
normalised key (the address, the zip code, the prompt), never from Python's
salted ``hash()``, so two sandboxes started at different times agree. The
zillow-com1, zillow56 and RentCast answers for one address are built from the
same ``Home`` so they agree with each other the way real providers roughly do.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import random
import re
import threading
from dataclasses import dataclass

#: Street names and suffixes for comparables and search rows.
STREETS = ("Maple", "Oak", "Cedar", "Pine", "Elm", "Willow", "Birch", "Lakeview", "Hillcrest", "Sunset",
           "Meadow", "Ridge", "Park", "Washington", "Lincoln", "Jackson", "Highland", "River", "Spring", "Forest")
SUFFIXES = ("St", "Ave", "Dr", "Ln", "Ct", "Rd", "Way", "Pl", "Cir", "Blvd")
#: (city, state, county) used when an address has no recognisable city or state.
CITIES = (("Springfield", "IL", "Sangamon County"), ("Columbus", "OH", "Franklin County"),
          ("Austin", "TX", "Travis County"), ("Raleigh", "NC", "Wake County"), ("Boise", "ID", "Ada County"),
          ("Madison", "WI", "Dane County"), ("Tucson", "AZ", "Pima County"), ("Salem", "OR", "Marion County"),
          ("Richmond", "VA", "Henrico County"), ("Albany", "NY", "Albany County"))
HOME_TYPES = (("SINGLE_FAMILY", "Single Family", "Houses"), ("SINGLE_FAMILY", "Single Family", "Houses"),
              ("SINGLE_FAMILY", "Single Family", "Houses"), ("CONDO", "Condo", "Condos"),
              ("TOWNHOUSE", "Townhouse", "Townhomes"), ("MULTI_FAMILY", "Multi-Family", "Multi-family"))
#: The fixed "today" of the sandbox's data, so dates do not drift between runs.
TODAY = dt.date(2026, 11, 1)
#: Milliseconds per day (Zillow dates are epoch ms).
MS_PER_DAY = 86_400_000

_ADDRESS = re.compile(r"^\s*(?P<street>[^,]+?)\s*,\s*(?P<city>[^,]+?)\s*,\s*(?P<state>[A-Za-z]{2})\.?\s*(?P<zip>\d{5})?(?:-\d{4})?\s*$")
_ZIP = re.compile(r"\b(\d{5})(?:-\d{4})?\s*$")


def seed_of(*parts: object) -> int:
    text = "|".join(" ".join(str(p).lower().split()) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def rng(*parts: object) -> random.Random:
    """A random source that depends only on ``parts`` (case and spacing ignored)."""
    return random.Random(seed_of(*parts))


def is_zip(text: str) -> bool:
    return bool(re.fullmatch(r"\s*\d{5}\s*", text or ""))


def looks_like_address(text: str) -> bool:
    """An exact street address ("12 Maple St, Springfield, IL 62704"), not a zip, city or area."""
    return bool(re.match(r"^\s*\d+[A-Za-z]?\s+\S+", text or "")) and "," in text


def unknown(address: str) -> bool:
    """Addresses the sandbox's Zillow does not know: the street contains "Nowhere"."""
    return "nowhere" in address.split(",")[0].lower()


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    state: str
    zipcode: str
    county: str

    @property
    def one_line(self) -> str:
        return f"{self.street}, {self.city}, {self.state} {self.zipcode}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.one_line.replace(",", "")).strip("-")


#: (first zip3, last zip3, state, a city in it): where a zip code is, so search rows land in the right state.
ZIP3_STATES = (
    (10, 27, "MA", "Boston"), (28, 29, "RI", "Providence"), (30, 38, "NH", "Concord"), (39, 49, "ME", "Augusta"),
    (50, 59, "VT", "Montpelier"), (60, 69, "CT", "Hartford"), (70, 89, "NJ", "Trenton"), (100, 149, "NY", "Albany"),
    (150, 196, "PA", "Harrisburg"), (197, 199, "DE", "Dover"), (200, 205, "DC", "Washington"),
    (206, 219, "MD", "Annapolis"), (220, 246, "VA", "Richmond"), (247, 268, "WV", "Charleston"),
    (270, 289, "NC", "Raleigh"), (290, 299, "SC", "Columbia"), (300, 319, "GA", "Atlanta"),
    (320, 349, "FL", "Tallahassee"), (350, 369, "AL", "Montgomery"), (370, 385, "TN", "Nashville"),
    (386, 397, "MS", "Jackson"), (398, 399, "GA", "Atlanta"), (400, 427, "KY", "Frankfort"),
    (430, 459, "OH", "Columbus"), (460, 479, "IN", "Indianapolis"), (480, 499, "MI", "Lansing"),
    (500, 528, "IA", "Des Moines"), (530, 549, "WI", "Madison"), (550, 567, "MN", "Saint Paul"),
    (570, 577, "SD", "Pierre"), (580, 588, "ND", "Bismarck"), (590, 599, "MT", "Helena"),
    (600, 629, "IL", "Springfield"), (630, 658, "MO", "Jefferson City"), (660, 679, "KS", "Topeka"),
    (680, 693, "NE", "Lincoln"), (700, 714, "LA", "Baton Rouge"), (716, 729, "AR", "Little Rock"),
    (730, 749, "OK", "Oklahoma City"), (750, 799, "TX", "Austin"), (800, 816, "CO", "Denver"),
    (820, 831, "WY", "Cheyenne"), (832, 838, "ID", "Boise"), (840, 847, "UT", "Salt Lake City"),
    (850, 865, "AZ", "Phoenix"), (870, 884, "NM", "Santa Fe"), (889, 898, "NV", "Carson City"),
    (900, 961, "CA", "Sacramento"), (967, 968, "HI", "Honolulu"), (970, 979, "OR", "Salem"),
    (980, 994, "WA", "Olympia"), (995, 999, "AK", "Juneau"),
)


def zip_area(zipcode: str) -> tuple[str, str, str, float, float]:
    """(city, state, county, latitude, longitude) of a zip code, when the address does not say."""
    r = rng("zip-area", zipcode)
    lat, lon = round(r.uniform(30.5, 46.5), 6), round(r.uniform(-121.0, -76.0), 6)
    zip3 = int(zipcode[:3]) if zipcode[:3].isdigit() else -1
    for low, high, state, city in ZIP3_STATES:
        if low <= zip3 <= high:
            return city, state, f"{city} County", lat, lon
    city, state, county = r.choice(CITIES)
    return city, state, county, lat, lon


def parse_address(text: str) -> Address:
    """Split a one-line US address; missing parts are made up from the address's hash."""
    text = " ".join((text or "").split())
    match = _ADDRESS.match(text)
    if match:
        street, city, state = match.group("street"), match.group("city"), match.group("state").upper()
        zipcode = match.group("zip") or f"{seed_of('zip', text) % 90000 + 10000:05d}"
        return Address(street, city, state, zipcode, f"{city} County")
    zm = _ZIP.search(text)
    zipcode = zm.group(1) if zm else f"{seed_of('zip', text) % 90000 + 10000:05d}"
    city, state, county, _, _ = zip_area(zipcode)
    street = text.split(",")[0].strip() or "1 Main St"
    return Address(street, city, state, zipcode, county)


@dataclass(frozen=True)
class Home:
    """The facts every provider answers about one address."""

    zpid: int
    address: Address
    latitude: float
    longitude: float
    home_type: tuple[str, str, str]  # (Zillow homeType, RentCast propertyType, search home_type)
    bedrooms: int
    bathrooms: float
    living_area: int
    lot_size: int
    year_built: int
    value: int  # today's estimate, USD
    rent: int  # monthly, USD
    last_sold_price: int
    last_sold: dt.date
    tax_assessed: int
    hoa: int


_ZPIDS: dict[int, str] = {}
_ZPIDS_LOCK = threading.Lock()


def zpid_of(address: str) -> int:
    return 10_000_000 + seed_of("zpid", address) % 89_999_999


def remember(zpid: int, address: str) -> None:
    """Remember which address a zpid was issued for (so /property?zpid= finds the same home)."""
    with _ZPIDS_LOCK:
        if len(_ZPIDS) < 1_000_000:
            _ZPIDS[zpid] = address


def address_of_zpid(zpid: int) -> str:
    """The address a zpid was issued for, else a made-up address that is stable for that zpid."""
    with _ZPIDS_LOCK:
        known = _ZPIDS.get(zpid)
    if known:
        return known
    r = rng("zpid-address", zpid)
    zipcode = f"{r.randrange(10000, 99999):05d}"
    city, state, _, _, _ = zip_area(zipcode)
    return f"{r.randrange(1, 9999)} {r.choice(STREETS)} {r.choice(SUFFIXES)}, {city}, {state} {zipcode}"


def market_level(zipcode: str) -> int:
    """The typical home value of a zip code, in USD."""
    return int(rng("level", zipcode).uniform(140_000, 850_000)) // 1000 * 1000


#: Homes and neighbour lists are pure functions of their inputs: cached (about 1 KB each).
@functools.lru_cache(maxsize=65_536)
def home(address_text: str) -> Home:
    address = parse_address(address_text)
    r = rng("home", address.one_line)
    _, _, _, lat, lon = zip_area(address.zipcode)
    home_type = r.choice(HOME_TYPES)
    beds = r.choice((2, 3, 3, 3, 4, 4, 5))
    baths = r.choice((1.0, 1.5, 2.0, 2.0, 2.5, 3.0))
    area = int(r.gauss(450 + beds * 420, 250))
    area = max(650, min(area, 5200)) // 10 * 10
    level = market_level(address.zipcode)
    value = int(level * (area / 1800) ** 0.8 * r.uniform(0.85, 1.15)) // 100 * 100
    sold_days = r.randrange(200, 365 * 12)
    last_sold = TODAY - dt.timedelta(days=sold_days)
    sold_price = int(value / (1.045 ** (sold_days / 365)) * r.uniform(0.93, 1.03)) // 1000 * 1000
    return Home(
        zpid=zpid_of(address.one_line),
        address=address,
        latitude=round(lat + r.uniform(-0.03, 0.03), 6),
        longitude=round(lon + r.uniform(-0.03, 0.03), 6),
        home_type=home_type,
        bedrooms=beds,
        bathrooms=baths,
        living_area=area,
        lot_size=int(r.uniform(1500, 15000)) if home_type[0] != "CONDO" else int(r.uniform(800, 2500)),
        year_built=r.randrange(1925, 2022),
        value=value,
        rent=int(value * r.uniform(0.0055, 0.0085)) // 5 * 5,
        last_sold_price=sold_price,
        last_sold=last_sold,
        tax_assessed=int(value * r.uniform(0.6, 0.95)) // 10 * 10,
        hoa=r.choice((0, 0, 0, 0, 45, 120, 251)) if home_type[0] != "CONDO" else r.choice((180, 251, 320)),
    )


def epoch_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def iso(day: dt.date) -> str:
    """RentCast's date format."""
    return f"{day.isoformat()}T00:00:00.000Z"


@functools.lru_cache(maxsize=8_192)
def neighbours(zipcode: str, kind: str, count: int | None = None) -> tuple[Home, ...]:
    """Homes in a zip code for a search (``kind`` keeps for-sale and sold sets apart)."""
    r = rng("neighbours", zipcode, kind)
    city, state, _, _, _ = zip_area(zipcode)
    n = count if count is not None else r.randrange(6, 30)
    homes = []
    for _ in range(n):
        street = f"{r.randrange(10, 9990)} {r.choice(STREETS)} {r.choice(SUFFIXES)}"
        homes.append(home(f"{street}, {city}, {state} {zipcode}"))
    return tuple(homes)
