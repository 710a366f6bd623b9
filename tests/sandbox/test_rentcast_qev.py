"""RentCast v1 and QuickEmailVerification: shapes, the error envelopes, 429s, magic addresses."""

from __future__ import annotations

import pytest
import requests

from sandbox.qev import MAGIC
from tests.sandbox.conftest import ADDRESS, Keys


def rc(sb, path: str, key: str, method: str = "GET", **params: str) -> requests.Response:
    return requests.request(method, f"{sb.url}/v1{path}", params=params, headers={"X-Api-Key": key}, timeout=10)


def qev(sb, key: str, email: str, sandbox: bool = False) -> requests.Response:
    path = "/v1/verify/sandbox" if sandbox else "/v1/verify"
    return requests.get(sb.url + path, params={"email": email, "apikey": key}, timeout=10)


def test_rentcast_markets_and_avm(sb, keys: Keys) -> None:
    market = rc(sb, "/markets", keys.rc, zipCode="62704").json()
    assert market["zipCode"] == "62704" and market["id"] == "62704"
    for block, noun in (("saleData", "Price"), ("rentalData", "Rent")):
        for stat in ("average", "median", "min", "max"):
            assert isinstance(market[block][f"{stat}{noun}"], int | float)
        assert {"newListings", "totalListings", "dataByPropertyType", "dataByBedrooms", "history"} <= set(
            market[block])
    value = rc(sb, "/avm/value", keys.rc2, address=ADDRESS).json()
    assert value["priceRangeLow"] < value["price"] < value["priceRangeHigh"]
    assert value["subjectProperty"]["formattedAddress"] == ADDRESS
    correlations = [c["correlation"] for c in value["comparables"]]
    assert len(correlations) == 15 and correlations == sorted(correlations, reverse=True)


def test_rentcast_arrays_and_total_count(sb, keys: Keys) -> None:
    r = rc(sb, "/properties", keys.rc, address=ADDRESS)
    assert isinstance(r.json(), list) and r.json()[0]["formattedAddress"] == ADDRESS
    r = rc(sb, "/listings/sale", keys.rc2, zipCode="62704", limit="3", includeTotalCount="true")
    rows = r.json()
    assert isinstance(rows, list) and len(rows) <= 3 and int(r.headers["X-Total-Count"]) >= len(rows)
    assert all(row["status"] == "Active" for row in rows)


def test_rentcast_error_envelope(sb, keys: Keys) -> None:
    r = rc(sb, "/markets", keys.rc, zipCode="not-a-zip")
    assert r.status_code == 400 and r.json()["error"] == "resource/bad-request" and r.json()["status"] == 400
    r = rc(sb, "/avm/value", keys.rc2, address="1 Nowhere Road, Springfield, IL 62704")
    assert r.status_code == 400 and "could not be parsed or geolocated" in r.json()["message"]
    assert rc(sb, "/markets", keys.rc3, method="POST", zipCode="62704").status_code == 405
    r = requests.get(f"{sb.url}/v1/markets", params={"zipCode": "62704"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "auth/api-key-invalid"
    assert rc(sb, "/markets", f"invalid-{keys.tag}", zipCode="62704").status_code == 401
    r = rc(sb, "/markets", f"unsubscribed-{keys.tag}", zipCode="62704")
    assert r.status_code == 403 and r.json()["error"] == "billing/subscription-inactive"


def test_rentcast_429(sb, keys: Keys) -> None:
    statuses = [rc(sb, "/markets", keys.rc, zipCode="62704") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    r = statuses[2]
    assert r.json() == {"status": 429, "error": "auth/rate-limit-exceeded",
                        "message": "The rate limit of 20 requests per second has been exceeded"}
    assert "Retry-After" not in r.headers and not any(h.lower().startswith("x-ratelimit") for h in r.headers)


def test_qev_default_verdict_has_string_booleans_and_credits(sb, keys: Keys) -> None:
    r = qev(sb, keys.q, "jane.doe@example.com")
    body = r.json()
    assert body["result"] == "valid" and body["safe_to_send"] == "true" and body["disposable"] == "false"
    for flag in ("disposable", "accept_all", "role", "free", "safe_to_send", "success"):
        assert body[flag] in ("true", "false"), flag
    first = int(r.headers["X-QEV-Remaining-Credits"])
    r = qev(sb, keys.q, "john@example.com", sandbox=True)
    assert int(r.headers["X-QEV-Remaining-Credits"]) == first  # the sandbox endpoint is free


@pytest.mark.parametrize("local", sorted(MAGIC))
def test_qev_magic_local_parts(sb, keys: Keys, local: str) -> None:
    result, reason, flags, safe = MAGIC[local]
    for sandbox in (True, False):
        body = qev(sb, f"{keys.q}-{sandbox}", f"{local}@example.com", sandbox=sandbox).json()
        assert (body["result"], body["reason"]) == (result, reason)
        assert body["safe_to_send"] == ("true" if safe else "false")
        for flag in flags:
            assert body[flag] == "true"


def test_qev_low_credit_and_keys(sb, keys: Keys) -> None:
    r = qev(sb, keys.q, "low-credit@example.com")
    assert (r.status_code, r.json()) == (402, {"success": "false", "message": "Low credit. Payment required"})
    assert qev(sb, f"invalid-{keys.tag}", "a@example.com").status_code == 401
    assert qev(sb, f"unsubscribed-{keys.tag}", "a@example.com").status_code == 403


def test_qev_429_json_then_html(sb, keys: Keys) -> None:
    answers = [qev(sb, keys.q, "a@example.com") for _ in range(4)]
    throttled = [r for r in answers if r.status_code == 429]
    assert len(throttled) == 2
    kinds = {r.headers["Content-Type"].split(";")[0] for r in throttled}
    assert kinds == {"application/json", "text/html"}
    print([r.text[:60] for r in throttled])
