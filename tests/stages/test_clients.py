"""Every provider client against the sandbox over real HTTP: success shapes and the error mapping.

429 -> RateLimited (bucket paused for the wait), 5xx/timeout/malformed -> TransientError,
4xx -> PermanentError; no key ever appears in a message.
"""

from __future__ import annotations

import uuid

import pytest

from engine.errors import RateLimited as EngineRateLimited
from stages.clients.bedrock import BedrockClient
from stages.clients.email_verification import EmailVerificationClient
from stages.clients.rentcast import NotFound, RentCastClient
from stages.clients.ses import SendOutcomeUnknown, SesClient
from stages.clients.zillow import NoProperty, ZillowClient
from stages.clients.zillow56 import Zillow56Client
from stages.errors import PermanentError, RateLimited, TransientError
from tests.stages.conftest import NoGate, Sandbox, provider_settings

ADDRESS = "12 Maple Street, Springfield, IL 62704"
#: Key prefixes per provider. Every settings() call makes fresh keys, hence fresh sandbox buckets
#: (its limits are per key, 2 calls of burst at time scale 1), so only the 429 tests ever see a 429.
KEY_NAMES = {"ZILLOW_API_KEY": "zk-secret", "ZILLOW56_API_KEY": "z56-secret",
             "RENTCAST_API_KEY": "rc-secret", "QEV_API_KEY": "qev-secret"}
AWS_SECRET = "sandbox-aws-secret"
#: Every key handed out in this test, for the leak checks.
SECRETS: list[str] = []


@pytest.fixture(autouse=True)
def _forget_keys() -> None:
    SECRETS.clear()


def settings(sandbox: Sandbox, **extra: str):  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    keys = {name: f"{prefix}-{tag}" for name, prefix in KEY_NAMES.items()}
    env = {**keys, "AWS_ACCESS_KEY_ID": f"AKID{tag}", "AWS_SECRET_ACCESS_KEY": AWS_SECRET, **extra}
    SECRETS.extend(v for k, v in env.items() if k.endswith("_KEY") or k == "AWS_SECRET_ACCESS_KEY")
    return provider_settings(sandbox.url, **env)


def no_secret(exc: BaseException) -> str:
    text = f"{exc} {exc!r} {exc.args}"
    for secret in SECRETS:
        assert secret not in text, f"secret leaked in {text!r}"
    return text


def until_429(call, limit: int = 8):  # type: ignore[no-untyped-def]
    """Call until the sandbox answers 429 (its bucket holds 2 tokens); return the RateLimited."""
    for _ in range(limit):
        try:
            call()
        except EngineRateLimited as exc:
            return exc
    raise AssertionError(f"no 429 after {limit} calls")


# -- Zillow (zillow-com1) -------------------------------------------------------


def test_zillow_property_and_searches(sandbox: Sandbox) -> None:
    facts = ZillowClient(settings(sandbox)).property_by_address(NoGate(), ADDRESS)
    print(facts)
    assert facts["zpid"] and facts["source"] == "zillow" and facts["zipcode"]
    for status in ("for_sale", "recently_sold"):
        result = ZillowClient(settings(sandbox)).search(NoGate(), facts["zipcode"], status)
        print(result["total"], result["rows"][:1])
        assert isinstance(result["rows"], list) and result["rows"]
    assert sandbox.stats()["calls"].get("zillow") == 3


def test_zillow_unknown_address_is_permanent_not_outage(sandbox: Sandbox) -> None:
    with pytest.raises(NoProperty) as info:
        ZillowClient(settings(sandbox)).property_by_address(NoGate(), "1 Nowhere Road, Springfield, IL 62704")
    assert "property not found" in str(info.value) and not info.value.outage
    no_secret(info.value)


def test_zillow_429_is_rate_limited_with_the_wait_and_pauses(sandbox: Sandbox) -> None:
    gate = NoGate()
    client = ZillowClient(settings(sandbox))
    exc = until_429(lambda: client.property_by_address(gate, ADDRESS))
    assert isinstance(exc, RateLimited) and exc.api == "zillow"
    print("retry_after", exc.retry_after)
    assert 0 < exc.retry_after <= 60  # 10/min plan: one window at most
    assert gate.paused["zillow"] == exc.retry_after
    assert sandbox.stats()["throttled"].get("zillow", 0) >= 1
    no_secret(exc)


@pytest.mark.parametrize("key, status", [("invalid-key-1", "401"), ("unsubscribed-key-1", "403")])
def test_zillow_key_problems_are_outages(sandbox: Sandbox, key: str, status: str) -> None:
    with pytest.raises(PermanentError) as info:
        ZillowClient(settings(sandbox, ZILLOW_API_KEY=key)).property_by_address(NoGate(), ADDRESS)
    assert info.value.outage and status in str(info.value)
    assert key not in str(info.value)


def test_zillow_5xx_timeout_malformed_are_transient(sandbox: Sandbox) -> None:
    def client() -> ZillowClient:
        return ZillowClient(settings(sandbox, ZILLOW_TIMEOUT="0.5"))

    sandbox.faults("zillow:5xx=1")
    with pytest.raises(TransientError) as info:
        client().property_by_address(NoGate(), ADDRESS)
    assert "HTTP 5" in str(info.value)
    no_secret(info.value)
    sandbox.faults("zillow:malformed=1")
    with pytest.raises(TransientError) as info:
        client().property_by_address(NoGate(), ADDRESS)
    assert "malformed response from zillow" in str(info.value)
    no_secret(info.value)
    sandbox.faults("zillow:timeout=1")
    with pytest.raises(TransientError) as info:
        client().property_by_address(NoGate(), ADDRESS)
    assert "timeout" in str(info.value)
    no_secret(info.value)


def test_zillow_gateway_404_is_an_outage(sandbox: Sandbox) -> None:
    client = ZillowClient(settings(sandbox, ZILLOW_RAPIDAPI_HOST="no-such-api.p.rapidapi.com"))
    with pytest.raises(PermanentError) as info:
        client.property_by_address(NoGate(), ADDRESS)
    print(info.value)
    assert info.value.outage


# -- zillow56 ----------------------------------------------------------------------


def test_zillow56_property_search_and_unknown(sandbox: Sandbox) -> None:
    facts = Zillow56Client(settings(sandbox)).property_by_address(NoGate(), ADDRESS)
    assert facts["zpid"] and facts["source"] == "zillow56"
    result = Zillow56Client(settings(sandbox)).search(NoGate(), facts["zipcode"], "recently_sold")
    print(result["total"], result["rows"][:1])
    assert isinstance(result["rows"], list) and result["rows"]
    with pytest.raises(NoProperty):
        Zillow56Client(settings(sandbox)).property_by_address(NoGate(), "1 Nowhere Road, Springfield, IL 62704")
    sandbox.faults("zillow56:5xx=1")
    with pytest.raises(TransientError):
        Zillow56Client(settings(sandbox)).property_by_address(NoGate(), ADDRESS)


# -- RentCast -------------------------------------------------------------------------


def test_rentcast_markets_and_value(sandbox: Sandbox) -> None:
    client = RentCastClient(settings(sandbox))
    market = client.markets(NoGate(), "62704")
    value = client.value(NoGate(), ADDRESS)
    print(market, value)
    assert market["zip_code"] == "62704" and value["price"]


def test_rentcast_errors(sandbox: Sandbox) -> None:
    gate = NoGate()
    client = RentCastClient(settings(sandbox))
    with pytest.raises(PermanentError) as info:
        client.markets(NoGate(), "not-a-zip")
    assert not isinstance(info.value, NotFound) or "404" in str(info.value)
    print(info.value)
    no_secret(info.value)
    with pytest.raises(PermanentError) as info:
        RentCastClient(settings(sandbox, RENTCAST_API_KEY="invalid-rc")).markets(NoGate(), "62704")
    assert info.value.outage
    sandbox.faults("rentcast:malformed=1")
    with pytest.raises(TransientError) as info:
        client.value(NoGate(), ADDRESS)
    assert "malformed response from rentcast" in str(info.value)
    no_secret(info.value)
    sandbox.faults("")
    exc = until_429(lambda: client.markets(gate, "62704"), limit=10)
    assert exc.api == "rentcast" and exc.retry_after == pytest.approx(1.0)


# -- QuickEmailVerification ---------------------------------------------------------------


def test_qev_verdicts(sandbox: Sandbox) -> None:
    def verify(email: str):  # type: ignore[no-untyped-def]
        return EmailVerificationClient(settings(sandbox)).verify(NoGate(), email)

    assert verify("jane.doe@example.com").passed
    bad = verify("invalid-email@example.com")
    assert not bad.passed and bad.result == "invalid"
    assert not verify("disposable@example.com").passed
    unknown = verify("timeout@example.com")
    assert not unknown.passed and unknown.result == "unknown"


def test_qev_errors(sandbox: Sandbox) -> None:
    client = EmailVerificationClient(settings(sandbox))
    with pytest.raises(PermanentError) as info:
        client.verify(NoGate(), "low-credit@example.com")
    assert info.value.outage and "402" in str(info.value)
    no_secret(info.value)
    sandbox.faults("email_verification:5xx=1")
    with pytest.raises(TransientError) as info:
        client.verify(NoGate(), "jane.doe@example.com")
    no_secret(info.value)  # the key travels in the query string: it must not come back in the error
    sandbox.faults("")
    exc = until_429(lambda: client.verify(NoGate(), "jane.doe@example.com"), limit=10)
    assert exc.api == "email_verification" and exc.retry_after == pytest.approx(1.0)
    no_secret(exc)


# -- Bedrock ------------------------------------------------------------------------------


def test_bedrock_converse_and_errors(sandbox: Sandbox) -> None:
    client = BedrockClient(settings(sandbox))
    completion = client.converse(NoGate(), system="be brief", prompt="Say hi")
    assert completion.text
    sandbox.faults("bedrock:5xx=1")
    with pytest.raises(TransientError) as info:
        client.converse(NoGate(), system="s", prompt="p")
    no_secret(info.value)
    assert sandbox.stats()["calls"].get("bedrock") == 2  # botocore did not retry the 5xx
    sandbox.faults("")
    gate = NoGate()
    exc = until_429(lambda: client.converse(gate, system="s", prompt="p"))
    assert exc.api == "bedrock" and exc.retry_after > 0 and gate.paused["bedrock"] == exc.retry_after
    stats = sandbox.stats()
    print(stats)
    assert stats["throttled"].get("bedrock", 0) == 1  # one 429 answered, not retried by botocore


# -- SES -----------------------------------------------------------------------------------


def test_ses_send_throttle_and_unknown(sandbox: Sandbox) -> None:
    client = SesClient(settings(sandbox))
    message_id = client.send(NoGate(), to="owner@example.org", subject="s", body="b", run_key="campaign-1-run-1")
    assert message_id
    assert sandbox.stats()["emails"] == {"owner@example.org": 1}
    sandbox.faults("ses:5xx=1")
    with pytest.raises(SendOutcomeUnknown) as info:
        client.send(NoGate(), to="owner@example.org", subject="s", body="b", run_key="campaign-3-run-1")
    no_secret(info.value)
    assert sandbox.stats()["calls"].get("ses") == 2  # the 5xx was never retried by botocore
    sandbox.faults("")
    exc = until_429(lambda: client.send(NoGate(), to="many@example.org", subject="s", body="b",
                                        run_key="campaign-2-run-1"), limit=40)
    assert exc.api == "ses" and isinstance(exc, RateLimited)
