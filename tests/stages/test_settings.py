"""Provider settings: defaults, sandbox routing, rates, and no key in any repr or error text."""

from __future__ import annotations

import pytest

from engine.env import parse_rate
from stages.errors import PermanentError, RateLimited, TransientError, redact
from stages.settings import ProviderSettings, rate_limits

KEYS = {"ZILLOW_API_KEY": "zk-123456", "RENTCAST_API_KEY": "rc-654321", "QEV_API_KEY": "qev-999",
        "AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "aws-secret-777"}


def test_real_endpoints_by_default() -> None:
    s = ProviderSettings.from_env(KEYS)
    assert s.zillow_base_url == "https://zillow-com1.p.rapidapi.com"
    assert s.zillow56_base_url == "https://zillow56.p.rapidapi.com"
    assert s.rentcast_base_url == "https://api.rentcast.io/v1"
    assert s.qev_base_url == "https://api.quickemailverification.com/v1"
    assert s.aws_endpoint_url is None and s.aws_region == "us-east-1"
    assert s.zillow56_key == ""  # no RAPIDAPI_KEY fallback given
    assert s.timeout("bedrock") == (5.0, 60.0)


def test_sandbox_url_routes_everything_and_fills_placeholders() -> None:
    s = ProviderSettings.from_env({"SANDBOX_URL": "http://127.0.0.1:9000/"})
    assert s.zillow_base_url == s.zillow56_base_url == "http://127.0.0.1:9000"
    assert s.zillow_host == "zillow-com1.p.rapidapi.com"  # the sandbox routes on the real host header
    assert s.rentcast_base_url == s.qev_base_url == "http://127.0.0.1:9000/v1"
    assert s.aws_endpoint_url == "http://127.0.0.1:9000"
    assert s.zillow_key and s.qev_key and s.aws_credentials and s.ses_from_address


def test_rapidapi_key_serves_both_zillow_apis() -> None:
    s = ProviderSettings.from_env({"RAPIDAPI_KEY": "rapid-1", "ZILLOW56_API_KEY": "z56-2"})
    assert (s.zillow_key, s.zillow56_key) == ("rapid-1", "z56-2")


def test_rates_and_limits() -> None:
    assert parse_rate("10/min") == pytest.approx(1 / 6)
    assert parse_rate("1/s") == 1.0 and parse_rate("5") == 5.0
    with pytest.raises(ValueError):
        parse_rate("10/fortnight")
    with pytest.raises(ValueError, match="RATE_ZILLOW"):
        ProviderSettings.from_env({"RATE_ZILLOW": "10/fortnight"})
    limits = rate_limits({"RATE_BEDROCK": "16/min", "BURST_SES": "10"})
    assert limits["bedrock"].rate == pytest.approx(16 / 60) and limits["ses"].burst == 10
    assert set(limits) == {"zillow", "zillow56", "rentcast", "bedrock", "email_verification", "ses"}
    s = ProviderSettings.from_env({"RATE_SCALE": "60"})
    assert s.plan_interval("zillow") == pytest.approx(0.1)


def test_repr_names_no_key() -> None:
    s = ProviderSettings.from_env(KEYS)
    text = repr(s) + str(s)
    for name, value in KEYS.items():
        if name != "AWS_ACCESS_KEY_ID":
            assert value not in text
    assert "zillow_key=set" in text and "zillow56_key=unset" in text
    assert {"zk-123456", "rc-654321", "qev-999", "aws-secret-777"} <= set(s.secrets())


def test_errors_carry_provider_and_redact() -> None:
    assert redact("key zk-123456 in url?apikey=zk-123456", ["zk-123456"]) == "key *** in url?apikey=***"
    assert len(redact("x" * 1000, [])) <= 300
    e = RateLimited("zillow", "slow down", retry_after=3)
    assert e.api == "zillow" and e.retry_after == 3 and str(e).startswith("zillow: ")
    assert str(TransientError("rentcast", "HTTP 503")) == "rentcast: HTTP 503"
    assert PermanentError("zillow", "quota", outage=True).outage
