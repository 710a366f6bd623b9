"""New campaigns: fake ones for demos and tests, or real ones from a CSV file.

Fake campaigns are deterministic for a given seed (the same names and
addresses every time), with plausible US owners and addresses built from small
built-in lists rather than a faker dependency. Email addresses carry a number
that is unique in the database they go to (the caller passes the first one),
so every campaign has its own recipient — the sandbox counts emails per
recipient, and two campaigns sharing one would look like a double send.

CSV import keeps every good row and reports every bad one with its line
number; one bad row never loses the others.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from sqlalchemy import Engine, func, insert, select, text

from workflow.legacy import legacy_columns
from workflow.models import Campaign, utcnow
from workflow.states import Stage, Status

campaigns = Campaign.__table__

#: Columns a campaign CSV must have (any order; extra columns are ignored).
CSV_COLUMNS: tuple[str, ...] = ("name", "email", "street", "city", "state", "zip")
#: Rows inserted per statement.
INSERT_BATCH = 1000
#: Fake recipients live under a domain reserved for examples (RFC 2606).
FAKE_EMAIL_DOMAIN = "example.com"

US_STATES: frozenset[str] = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
    "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY".split()
)

_FIRST = (
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard "
    "Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Lisa Matthew Nancy Anthony Sandra Mark "
    "Ashley Steven Emily Andrew Donna Joshua Michelle Kevin Carol Brian Amanda George Melissa"
).split()
_LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
    "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores"
).split()
_STREETS = (
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Washington Ave", "Lake Rd",
    "Hillcrest Dr", "Park Ave", "Sunset Blvd", "Meadow Ln", "Ridge Rd", "Church St", "Highland Ave",
    "Willow Way", "River Rd", "Forest Dr", "Spring St", "Chestnut St",
)
#: (city, state, first three digits of its ZIP codes): real places, plausible ZIPs.
_PLACES = (
    ("Columbus", "OH", "432"), ("Austin", "TX", "787"), ("Denver", "CO", "802"), ("Raleigh", "NC", "276"),
    ("Boise", "ID", "837"), ("Madison", "WI", "537"), ("Tampa", "FL", "336"), ("Sacramento", "CA", "958"),
    ("Portland", "OR", "972"), ("Nashville", "TN", "372"), ("Richmond", "VA", "232"), ("Omaha", "NE", "681"),
    ("Albany", "NY", "122"), ("Tucson", "AZ", "857"), ("Spokane", "WA", "992"), ("Savannah", "GA", "314"),
    ("Des Moines", "IA", "503"), ("Burlington", "VT", "054"), ("Lexington", "KY", "405"),
    ("Mentor", "OH", "440"),
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ZIP = re.compile(r"^\d{5}(-\d{4})?$")


@attrs.frozen
class NewCampaign:
    """The owner and address of a campaign to create."""

    owner_name: str
    email: str
    street: str
    city: str
    state: str
    zip_code: str


@attrs.frozen
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@attrs.frozen
class CsvImport:
    rows: list[NewCampaign]
    errors: list[RowError]


class CsvFormatError(ValueError):
    """The file as a whole cannot be read (missing, empty, wrong header)."""


def fake_campaigns(count: int, *, seed: int = 0, first_number: int = 1) -> list[NewCampaign]:
    """``count`` plausible campaigns; the same ``seed`` gives the same people and homes.

    ``first_number`` numbers the email addresses (``mary.lee.17@example.com``)
    so that seeding twice into one database never repeats a recipient.
    """
    rng = random.Random(seed)
    out = []
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        city, state, zip3 = rng.choice(_PLACES)
        out.append(
            NewCampaign(
                owner_name=f"{first} {last}",
                email=f"{first.lower()}.{last.lower()}.{first_number + i}@{FAKE_EMAIL_DOMAIN}",
                street=f"{rng.randint(10, 9899)} {rng.choice(_STREETS)}",
                city=city,
                state=state,
                zip_code=f"{zip3}{rng.randint(1, 99):02d}",
            )
        )
    return out


def read_csv(path: str | Path) -> CsvImport:
    """Parse a campaign CSV (name,email,street,city,state,zip), keeping good rows.

    Line numbers are the file's physical lines (the header is line 1), so a
    quoted field spanning lines still points at the right place.
    Raises CsvFormatError when the file cannot be used at all.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvFormatError(f"cannot open {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            return _parse(handle)
        except UnicodeDecodeError:
            raise CsvFormatError(f"{path} is not UTF-8 text") from None
        except csv.Error as exc:
            raise CsvFormatError(f"{path}: {exc}") from None


def _parse(lines: Iterable[str]) -> CsvImport:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise CsvFormatError("the file is empty; expected a header: " + ",".join(CSV_COLUMNS))
    names = [h.strip().lower() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in names]
    if missing:
        raise CsvFormatError(f"the header lacks {', '.join(missing)}; expected: {','.join(CSV_COLUMNS)}")
    index = {c: names.index(c) for c in CSV_COLUMNS}
    rows: list[NewCampaign] = []
    errors: list[RowError] = []
    start = reader.line_num + 1
    for fields in reader:
        line, start = start, reader.line_num + 1
        if not any(f.strip() for f in fields):
            continue  # blank line
        if len(fields) < len(names):
            errors.append(RowError(line, f"expected {len(names)} fields, found {len(fields)}"))
            continue
        values = {c: fields[i].strip() for c, i in index.items()}
        reason = _invalid(values)
        if reason:
            errors.append(RowError(line, reason))
            continue
        rows.append(
            NewCampaign(
                owner_name=values["name"],
                email=values["email"],
                street=values["street"],
                city=values["city"],
                state=values["state"].upper(),
                zip_code=values["zip"],
            )
        )
    return CsvImport(rows, errors)


def _invalid(values: dict[str, str]) -> str | None:
    for column in CSV_COLUMNS:
        if not values[column]:
            return f"{column} is empty"
    limits = {"name": 200, "email": 320, "street": 200, "city": 100}
    for column, limit in limits.items():
        if len(values[column]) > limit:
            return f"{column} is longer than {limit} characters"
    if not _EMAIL.match(values["email"]):
        return f"email {values['email']!r} is not an email address"
    if values["state"].upper() not in US_STATES:
        return f"state {values['state']!r} is not a US state code"
    if not _ZIP.match(values["zip"]):
        return f"zip {values['zip']!r} is not a US ZIP code (12345 or 12345-6789)"
    return None


def next_email_number(engine: Engine) -> int:
    """One more than the highest campaign id: numbers fake recipients uniquely per database."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(campaigns.c.id), 0))).scalar_one()) + 1


#: An import of at least this many campaigns refreshes the table's planner statistics (PostgreSQL).
ANALYZE_AFTER = 10_000


def insert_campaigns(
    engine: Engine,
    new: Sequence[NewCampaign],
    *,
    due_in: float = 0.0,
    now: dt.datetime | None = None,
) -> list[int]:
    """Create DORMANT campaigns, due ``due_in`` seconds from now; returns their ids."""
    now = now or utcnow()
    due = now + dt.timedelta(seconds=due_in)
    ids: list[int] = []
    for chunk in _chunks(new, INSERT_BATCH):
        values = [_row(c, due, now) for c in chunk]
        with engine.begin() as conn:
            result = conn.execute(insert(campaigns).returning(campaigns.c.id, sort_by_parameter_order=True), values)
            ids.extend(result.scalars())
    if len(ids) >= ANALYZE_AFTER and engine.dialect.name == "postgresql":
        # Fresh statistics now, not when autovacuum gets to it: with none, PostgreSQL guesses a handful of due
        # rows and sorts every one of them for each producer batch instead of reading the index in order
        # (docs/benchmarks.md, scale: 76 µs -> 8 µs per campaign at 100k).
        with engine.begin() as conn:
            conn.execute(text(f"ANALYZE {campaigns.name}"))
    return ids


def _row(c: NewCampaign, due: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    return {
        "owner_name": c.owner_name,
        "email": c.email,
        "street": c.street,
        "city": c.city,
        "state": c.state,
        "zip_code": c.zip_code,
        "campaign_status": Status.DORMANT.value,
        "processing_stage": Stage.IDLE.value,
        "version": 0,
        "run_id": 0,
        "next_run_at": due,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
        **legacy_columns(Status.DORMANT, Stage.IDLE),
    }


def _chunks(items: Sequence[NewCampaign], size: int) -> Iterator[Sequence[NewCampaign]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
