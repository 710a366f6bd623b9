"""zillow-com1 and zillow56 behind the simulated RapidAPI gateway: shapes, keys, the plan 429."""

from __future__ import annotations

import pytest
import requests

from tests.sandbox.conftest import ADDRESS, ZILLOW56_HOST, Keys, rapid

RATE_TEXT = "You have exceeded the rate limit per minute for your plan, BASIC, by the API provider"


def test_property_has_the_home_details_shape_and_gateway_headers(sb, keys: Keys) -> None:
    r = rapid(sb, "/property", keys.zk, address=ADDRESS)
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["zpid"], int)
    assert body["address"] == {"streetAddress": "12 Maple Street", "city": "Springfield", "state": "IL",
                               "zipcode": "62704", "neighborhood": None, "community": None, "subdivision": None}
    for field in ("bedrooms", "bathrooms", "livingArea", "yearBuilt", "homeType", "homeStatus", "price",
                  "zestimate", "rentZestimate", "priceHistory", "schools", "resoFacts", "dateSold"):
        assert field in body, field
    assert body["hdpUrl"].endswith(f"/{body['zpid']}_zpid/")
    assert r.headers["x-ratelimit-requests-limit"] and r.headers["x-ratelimit-requests-remaining"]
    assert float(r.headers["x-ratelimit-requests-reset"]) > 60  # the quota period, not a rate window
    assert "Retry-After" not in r.headers


def test_exact_address_search_answers_only_the_zpid(sb, keys: Keys) -> None:
    zpid = rapid(sb, "/property", keys.zk, address=ADDRESS).json()["zpid"]
    r = rapid(sb, "/propertyExtendedSearch", keys.zk, location=ADDRESS)
    assert r.json() == {"zpid": zpid}


@pytest.mark.parametrize("status_type, listing", [("ForSale", "FOR_SALE"), ("RecentlySold", "RECENTLY_SOLD")])
def test_search_rows_have_string_address_and_epoch_ms_date_sold(sb, keys: Keys, status_type: str,
                                                                 listing: str) -> None:
    body = rapid(sb, "/propertyExtendedSearch", keys.zk, location="62704", status_type=status_type).json()
    assert set(body) >= {"props", "resultsPerPage", "totalPages", "totalResultCount", "currentPage"}
    assert body["props"] and body["totalResultCount"] == len(body["props"])
    for row in body["props"]:
        assert isinstance(row["address"], str) and row["address"].endswith("IL 62704")
        assert isinstance(row["zpid"], str) and row["listingStatus"] == listing
        if listing == "RECENTLY_SOLD":
            assert isinstance(row["dateSold"], int) and row["dateSold"] > 10**12  # epoch milliseconds
        else:
            assert row["dateSold"] is None


def test_unknown_address_is_an_empty_object(sb, keys: Keys) -> None:
    nowhere = "1 Nowhere Road, Springfield, IL 62704"
    r = rapid(sb, "/property", keys.zk, address=nowhere)
    assert r.status_code == 200 and r.json() == {}
    r = rapid(sb, "/search_address", keys.z56, host=ZILLOW56_HOST, address=nowhere)
    assert r.status_code == 200 and r.json() == {}


def test_zillow56_search_property_and_exact_address(sb, keys: Keys) -> None:
    details = rapid(sb, "/search_address", keys.z56, host=ZILLOW56_HOST, address=ADDRESS).json()
    assert details["address"]["zipcode"] == "62704"
    by_zpid = rapid(sb, "/property", keys.z56b, host=ZILLOW56_HOST, zpid=str(details["zpid"])).json()
    assert by_zpid == details
    exact = rapid(sb, "/search", keys.z56c, host=ZILLOW56_HOST, location=ADDRESS).json()
    assert exact == details  # [D] an exact address returns the details object, not a list
    body = rapid(sb, "/search", keys.z56d, host=ZILLOW56_HOST, location="62704", status="recentlySold").json()
    row = body["results"][0]
    assert set(body) >= {"results", "resultsPerPage", "totalPages", "totalResultCount"}
    assert {"streetAddress", "city", "state", "zipcode", "homeStatus"} <= set(row) and "address" not in row
    assert row["homeStatus"] == "RECENTLY_SOLD" and isinstance(row["zpid"], int)


def test_plan_429_has_the_real_body_and_window_headers(sb, keys: Keys) -> None:
    answers = [rapid(sb, "/property", keys.zk, address=ADDRESS) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]  # bucket of 2 at 10/min
    r = answers[2]
    assert r.json() == {"message": RATE_TEXT}
    assert r.headers["x-ratelimit-limit"] == "10" and r.headers["x-ratelimit-remaining"] == "0"
    print("x-ratelimit-reset", r.headers["x-ratelimit-reset"])
    assert 3 < float(r.headers["x-ratelimit-reset"]) <= 6  # one token at 10/min
    assert "Retry-After" not in r.headers and "x-ratelimit-requests-remaining" in r.headers
    stats = sb.stats()
    assert stats["calls"] == {"zillow": 3} and stats["throttled"] == {"zillow": 1}
    assert [c["status"] for c in sb.calls()] == [200, 200, 429]
    # another key has its own bucket; the other API too
    assert rapid(sb, "/property", keys.other, address=ADDRESS).status_code == 200
    assert rapid(sb, "/search_address", keys.zk, host=ZILLOW56_HOST, address=ADDRESS).status_code == 200


@pytest.mark.parametrize("prefix, status, message", [
    ("invalid", 401, "Invalid API key. Go to https://docs.rapidapi.com/docs/keys for more info."),
    ("unsubscribed", 403, "You are not subscribed to this API."),
])
def test_key_problems(sb, keys: Keys, prefix: str, status: int, message: str) -> None:
    for host in ("zillow-com1.p.rapidapi.com", ZILLOW56_HOST):
        r = rapid(sb, "/property", f"{prefix}-{keys.tag}", host=host, address=ADDRESS, zpid="123")
        assert (r.status_code, r.json()) == (status, {"message": message})


def test_missing_key_unknown_host_and_unknown_path(sb, keys: Keys) -> None:
    r = requests.get(sb.url + "/property", params={"address": ADDRESS},
                     headers={"X-RapidAPI-Host": "zillow-com1.p.rapidapi.com"}, timeout=10)
    assert r.status_code == 401
    r = rapid(sb, "/property", keys.zk, host="no-such-api.p.rapidapi.com", address=ADDRESS)
    assert r.status_code == 404 and "message" in r.json()
    r = rapid(sb, "/nope", keys.zk, address=ADDRESS)
    assert r.status_code == 404 and r.json() == {"message": "Endpoint '/nope' does not exist"}


def test_overquota_key_gets_the_monthly_quota_429(sb, keys: Keys) -> None:
    r = rapid(sb, "/property", f"overquota-{keys.tag}", address=ADDRESS)
    assert r.status_code == 429 and "MONTHLY quota" in r.json()["message"]
