"""Fault injection of every kind, the fault spec, the control endpoints, time scale, determinism, load."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from sandbox import faults as faultlib
from sandbox.server import start_in_thread
from tests.sandbox.conftest import ADDRESS, Keys, aws_client, rapid

ROOT = Path(__file__).resolve().parents[2]


def test_injected_429_has_retry_after_and_counts_as_injected(sb, keys: Keys) -> None:
    sb.faults("zillow:429=1,retry_after=7")
    r = rapid(sb, "/property", keys.zk, address=ADDRESS)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert r.json()["message"].startswith("You have exceeded the rate limit")
    stats = sb.stats()
    assert stats["injected"] == {"zillow": {"429": 1}} and stats["throttled"] == {}
    sb.faults("rentcast:429=1")  # default Retry-After: one plan interval (1 s at 1/s)
    r = requests.get(f"{sb.url}/v1/markets", params={"zipCode": "62704"}, headers={"X-Api-Key": keys.rc}, timeout=10)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"


def test_injected_5xx_is_provider_shaped(sb, keys: Keys) -> None:
    sb.faults("*:5xx=1")
    r = rapid(sb, "/property", keys.zk, address=ADDRESS)
    assert r.status_code >= 500 and r.json()
    r = requests.get(f"{sb.url}/v1/markets", params={"zipCode": "62704"}, headers={"X-Api-Key": keys.rc}, timeout=10)
    assert r.status_code >= 500 and set(r.json()) == {"status", "error", "message"}
    with pytest.raises(ClientError) as info:
        aws_client("sesv2", sb, keys.AKID).send_email(
            FromEmailAddress="a@example.com", Destination={"ToAddresses": ["x@example.org"]},
            Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}})
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    assert sb.stats()["emails"] == {}  # a 5xx is refused before sending
    assert sb.stats()["calls"]["ses"] == 1  # botocore did not retry (one attempt configured)


def test_timeout_drops_the_call_after_the_hang_and_ses_still_accepts(sb, keys: Keys) -> None:
    sb.faults("zillow:timeout=1,hang=2;ses:timeout=1,hang=2")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.get(sb.url + "/property", params={"address": ADDRESS},
                     headers={"X-RapidAPI-Key": keys.zk, "X-RapidAPI-Host": "zillow-com1.p.rapidapi.com"},
                     timeout=(2, 0.3))
    print(f"client gave up after {time.monotonic() - started:.2f}s")
    client = aws_client("sesv2", sb, keys.AKID, read_timeout=0.3)
    with pytest.raises(Exception) as info:
        client.send_email(FromEmailAddress="a@example.com", Destination={"ToAddresses": ["lost@example.org"]},
                          Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}})
    print(type(info.value).__name__)
    stats = sb.stats()
    assert stats["emails"] == {"lost@example.org": 1}  # accepted, the answer lost: the dangerous case
    assert stats["injected"] == {"zillow": {"timeout": 1}, "ses": {"timeout": 1}}
    assert [c["status"] for c in sb.calls()] == [0, 0]


def test_malformed_is_a_truncated_200(sb, keys: Keys) -> None:
    sb.faults("zillow:malformed=1")
    r = rapid(sb, "/property", keys.zk, address=ADDRESS)
    assert r.status_code == 200 and r.text.startswith('{"zpid"')
    with pytest.raises(ValueError):
        r.json()


def test_latency_is_added(sb, keys: Keys) -> None:
    sb.faults("email_verification:latency=0.3")
    started = time.monotonic()
    r = requests.get(f"{sb.url}/v1/verify", params={"email": "a@example.com", "apikey": keys.q}, timeout=10)
    print(f"answered in {time.monotonic() - started:.3f}s with latency=0.3")
    assert r.status_code == 200 and sb.stats()["injected"] == {}


def test_fault_endpoint_accepts_both_body_shapes_and_rejects_bad_specs(sb) -> None:
    url = f"{sb.url}/_sandbox/faults"
    assert requests.post(url, json={"faults": "bedrock:5xx=0.3"}, timeout=10).json() == {"faults": "bedrock:5xx=0.3"}
    assert requests.post(url, json={"spec": "ses:429=0.5"}, timeout=10).json() == {"faults": "ses:429=0.5"}
    assert requests.post(url, json={"rentcast": {"5xx": 0.1}}, timeout=10).json() == {"faults": "rentcast:5xx=0.1"}
    r = requests.post(url, json={"faults": "zillow:429=0.8,5xx=0.5"}, timeout=10)
    assert r.status_code == 400 and "above 1" in r.json()["error"]
    assert requests.get(url, timeout=10).json() == {"faults": "rentcast:5xx=0.1"}  # unchanged by the bad one
    assert requests.post(url, json={"faults": ""}, timeout=10).json() == {"faults": ""}


def test_fault_spec_parsing() -> None:
    parsed = faultlib.parse("*:latency=0.01,5xx=0.1;zillow:429=0.2,timeout=0.05,malformed=0.05")
    assert set(parsed) == set(faultlib.PROVIDERS)
    assert dict(parsed["zillow"].probabilities) == {"5xx": 0.1, "429": 0.2, "timeout": 0.05, "malformed": 0.05}
    assert parsed["ses"].latency == 0.01
    assert faultlib.parse("") == {} and faultlib.parse(None) == {}
    for bad in ("zillow", "nosuch:5xx=0.1", "zillow:5xx=2", "zillow:5xx=x", "zillow:odd=0.1", "zillow:5xx",
                "zillow:429=0.6,5xx=0.6", "*:429=0.6;zillow:5xx=0.6", "zillow:latency=-1"):
        with pytest.raises(faultlib.FaultSpecError):
            faultlib.parse(bad)


def test_fault_draws_follow_the_probabilities() -> None:
    injector = faultlib.Injector("zillow:429=0.25,5xx=0.25", seed=1)
    draws = [injector.draw("zillow")[0] for _ in range(4000)]
    counts = {k: draws.count(k) for k in ("429", "5xx", None)}
    print(counts)
    assert 800 < counts["429"] < 1200 and 800 < counts["5xx"] < 1200
    assert injector.draw("ses") == (None, None)


def test_stats_calls_reset_and_health(sb, keys: Keys) -> None:
    rapid(sb, "/property", keys.zk, address=ADDRESS)
    stats = requests.get(f"{sb.url}/_sandbox/stats", timeout=10).json()
    assert stats == {"calls": {"zillow": 1}, "throttled": {}, "injected": {}, "emails": {}}
    calls = requests.get(f"{sb.url}/_sandbox/calls", timeout=10).json()["calls"]
    assert len(calls) == 1 and {"provider", "t", "status"} <= set(calls[0]) and calls[0]["provider"] == "zillow"
    assert keys.zk not in json.dumps(calls) + json.dumps(stats)  # no key in any payload
    assert requests.post(f"{sb.url}/_sandbox/reset", timeout=10).json() == {"ok": True}
    assert requests.get(f"{sb.url}/_sandbox/stats", timeout=10).json()["calls"] == {}
    health = requests.get(f"{sb.url}/_sandbox/health", timeout=10).json()
    assert health["status"] == "ok" and health["time_scale"] == 1.0


def test_time_scale_multiplies_the_rates() -> None:
    keys = Keys()
    with start_in_thread(0, time_scale=60.0) as fast:  # zillow 10/min -> 10/s
        answers = [rapid(fast, "/property", keys.zk, address=ADDRESS) for _ in range(3)]
        statuses = [r.status_code for r in answers]
        print(statuses, [r.headers.get("x-ratelimit-reset") for r in answers])
        if statuses[2] == 429:
            assert float(answers[2].headers["x-ratelimit-reset"]) <= 0.1  # one token at 10/s
        time.sleep(0.25)  # 2.5 tokens' worth at the scaled rate
        assert rapid(fast, "/property", keys.zk, address=ADDRESS).status_code == 200
        assert fast.app.limits.rate("zillow") == pytest.approx(10.0)
        assert fast.app.limits.rate("ses") == pytest.approx(600.0)


def test_same_address_same_data_in_another_process(sb, keys: Keys) -> None:
    here = rapid(sb, "/property", keys.zk, address=ADDRESS).json()
    code = ("import json,sys; from sandbox.rapidapi_zillow import property_object; "
            f"sys.stdout.write(json.dumps(property_object({ADDRESS!r})))")
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"})
    assert json.loads(there.stdout) == here
    other = rapid(sb, "/property", keys.zk, address="14 Maple Street, Springfield, IL 62704").json()
    assert other["zpid"] != here["zpid"]


def test_many_requests_in_parallel(sb) -> None:
    """~200 req/s on loopback without errors (distinct keys, so no 429s); prints the rate achieved."""
    errors: list[str] = []
    n_threads, per_thread = 8, 50

    def worker(i: int) -> None:
        session = requests.Session()
        for j in range(per_thread):
            r = session.get(f"{sb.url}/v1/verify", params={"email": f"u{j}@example.com", "apikey": f"load-{i}-{j}"},
                            timeout=10)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:80]}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    print(f"{n_threads * per_thread} requests in {elapsed:.2f}s = {n_threads * per_thread / elapsed:.0f} req/s")
    assert errors == [] and sb.stats()["calls"]["email_verification"] == n_threads * per_thread


def test_malformed_through_boto3_loses_the_message_id_but_ses_accepted(sb, keys: Keys) -> None:
    sb.faults("ses:malformed=1")
    answer = aws_client("sesv2", sb, keys.AKID).send_email(
        FromEmailAddress="a@example.com", Destination={"ToAddresses": ["garbled@example.org"]},
        Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}})
    assert "MessageId" not in answer  # botocore hands back what it could parse: nothing
    assert sb.stats()["emails"] == {"garbled@example.org": 1}
