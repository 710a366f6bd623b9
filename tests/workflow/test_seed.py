"""Fake campaigns and CSV import."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from workflow import seed
from workflow.legacy import legacy_columns
from workflow.models import utcnow
from workflow.states import Stage, Status
from workflow.store import CampaignStore


def test_fake_campaigns_are_deterministic_plausible_and_have_unique_recipients() -> None:
    a = seed.fake_campaigns(200, seed=7)
    assert a == seed.fake_campaigns(200, seed=7)
    assert a != seed.fake_campaigns(200, seed=8)
    assert len({c.email for c in a}) == 200
    for c in a:
        values = {"name": c.owner_name, "email": c.email, "street": c.street, "city": c.city, "state": c.state,
                  "zip": c.zip_code}
        assert seed._invalid(values) is None, c
        assert "nowhere" not in c.street.lower()
    more = seed.fake_campaigns(5, seed=7, first_number=201)
    assert not {c.email for c in more} & {c.email for c in a}


CSV = (
    "name,email,street,city,state,zip\n"  # 1
    "Ann Lee,ann@example.com,12 Oak Ave,Austin,TX,78701\n"  # 2
    "Bob,not-an-email,1 Main St,Austin,TX,78701\n"  # 3
    "\n"  # 4 blank: skipped
    '"Cy ""C"" Do","cy@example.com","5 Elm St\nApt 2",Denver,co,80202-1234\n'  # 5-6: quoted newline
    "Di,di@example.com,,Boise,ID,83702\n"  # 7
    "Ed,ed@example.com,9 Pine St,Paris,XX,75001\n"  # 8
    "Flo,flo@example.com,9 Pine St,Omaha,NE,6810\n"  # 9
    "Gus,gus@example.com\n"  # 10
    "Hal,hal@example.com,3 Lake Rd,Tampa,FL,33601\n"  # 11
)


def test_csv_keeps_good_rows_and_reports_bad_ones_by_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(CSV)
    result = seed.read_csv(path)
    assert [r.owner_name for r in result.rows] == ["Ann Lee", 'Cy "C" Do', "Hal"]
    assert result.rows[1].state == "CO" and result.rows[1].street == "5 Elm St\nApt 2"
    assert [(e.line, e.reason.split(" ")[0]) for e in result.errors] == [
        (3, "email"), (7, "street"), (8, "state"), (9, "zip"), (10, "expected")]
    assert str(result.errors[0]) == "line 3: email 'not-an-email' is not an email address"


def test_csv_header_in_any_order_with_bom_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("\ufeffZIP,State,City,Street,Email,Name,notes\n78701,tx,Austin,1 Main St,a@example.com,A,hi\n",
                    encoding="utf-8")
    [row] = seed.read_csv(path).rows
    assert (row.owner_name, row.state, row.zip_code) == ("A", "TX", "78701")


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty"), ("name,email,street\nA,a@example.com,1 Main St\n", "lacks city, state, zip")],
)
def test_unusable_csv_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(content)
    with pytest.raises(seed.CsvFormatError, match=message):
        seed.read_csv(path)
    with pytest.raises(seed.CsvFormatError, match="cannot open"):
        seed.read_csv(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(seed.CsvFormatError, match="UTF-8"):
        seed.read_csv(tmp_path / "bin.csv")


def test_insert_campaigns_creates_dormant_due_campaigns(store: CampaignStore) -> None:
    now = utcnow()
    ids = seed.insert_campaigns(store.engine, seed.fake_campaigns(1500), due_in=60, now=now)
    assert len(ids) == 1500 and ids == sorted(ids)
    snap = store.get(ids[-1])
    assert (snap.campaign_status, snap.processing_stage, snap.version, snap.run_id) == (
        Status.DORMANT, Stage.IDLE, 0, 0)
    assert snap.next_run_at == now + dt.timedelta(seconds=60)
    assert seed.next_email_number(store.engine) == ids[-1] + 1
    assert store.start_due(limit=10) == []
    assert len(store.start_due(limit=10, now=now + dt.timedelta(seconds=61))) == 10
    assert legacy_columns(Status.DORMANT, Stage.IDLE)["is_unsubscribed"] is False
