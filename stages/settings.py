"""Provider settings from the environment: keys, endpoints, timeouts, plan rates.

Everything a provider client needs is read here once, so the clients never
touch ``os.environ`` and an operator finds every knob in one place
(docs/providers.md). ``SANDBOX_URL`` points every client at the simulated
providers (``campaignctl sandbox``); then missing keys and AWS credentials get
harmless placeholders, because the sandbox accepts any non-empty key.

Keys are secrets: they are excluded from ``repr`` and listed by ``secrets()``
so error texts can be scrubbed of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from engine.env import env_bool, env_float, env_int, env_rate

#: Bucket names shared with the engine's limiter and the sandbox's stats.
ZILLOW = "zillow"
ZILLOW56 = "zillow56"
RENTCAST = "rentcast"
BEDROCK = "bedrock"
EMAIL_VERIFICATION = "email_verification"
SES = "ses"
APIS: tuple[str, ...] = (ZILLOW, ZILLOW56, RENTCAST, BEDROCK, EMAIL_VERIFICATION, SES)

#: Plan rates (calls per second) before RATE_SCALE; RATE_<API>="10/min" overrides.
DEFAULT_RATES: dict[str, float] = {
    ZILLOW: 10 / 60,
    ZILLOW56: 10 / 60,
    RENTCAST: 1.0,
    BEDROCK: 8 / 60,
    EMAIL_VERIFICATION: 1.0,
    SES: 10.0,
}
#: Engine bucket capacity per API, in calls (BURST_<API>).
DEFAULT_BURST = 1

#: RapidAPI hosts (also sent as X-RapidAPI-Host to the sandbox, which routes on it).
DEFAULT_ZILLOW_HOST = "zillow-com1.p.rapidapi.com"
DEFAULT_ZILLOW56_HOST = "zillow56.p.rapidapi.com"
DEFAULT_RENTCAST_URL = "https://api.rentcast.io/v1"
DEFAULT_QEV_URL = "https://api.quickemailverification.com/v1"
DEFAULT_AWS_REGION = "us-east-1"
DEFAULT_BEDROCK_MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"

#: TCP connect timeout of every provider call, in s.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Read timeouts per provider, in s (<API>_TIMEOUT). Bedrock generates text, so it gets longer.
DEFAULT_TIMEOUTS: dict[str, float] = {
    ZILLOW: 20.0,
    ZILLOW56: 20.0,
    RENTCAST: 15.0,
    BEDROCK: 60.0,
    EMAIL_VERIFICATION: 15.0,
    SES: 15.0,
}
#: How long the SES bucket is paused after "Daily message quota exceeded", in s (SES_QUOTA_WAIT).
DEFAULT_SES_QUOTA_WAIT = 3600.0
#: How long a sender holds its send intent before another sender may take it over or call it unknown, in s
#: (SEND_INTENT_LEASE). Renewed right before the SES call; longer than the SES timeout plus the record.
DEFAULT_SEND_INTENT_LEASE = 60.0
#: Bedrock output limit per call, in tokens.
DEFAULT_BEDROCK_MAX_TOKENS = 800
#: Placeholder key used against the sandbox when no key is configured.
SANDBOX_KEY = "sandbox-key"
#: Sender used against the sandbox when SES_FROM_ADDRESS is not set.
SANDBOX_FROM = "campaigns@example.com"

def _key(env: Mapping[str, str], *names: str, sandbox: bool) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    return SANDBOX_KEY if sandbox else ""


@attrs.frozen(repr=False)
class ProviderSettings:
    """What the provider clients and stages need; build with ``from_env``."""

    sandbox_url: str | None
    zillow_key: str
    zillow56_key: str
    rentcast_key: str
    qev_key: str
    zillow_host: str
    zillow56_host: str
    zillow_base_url: str
    zillow56_base_url: str
    rentcast_base_url: str
    qev_base_url: str
    #: Use QEV's /verify/sandbox endpoint (free, canned answers).
    qev_sandbox_mode: bool
    aws_region: str
    #: None = the real AWS endpoint for the region.
    aws_endpoint_url: str | None
    #: (key id, secret, session token) when given in the environment (or placeholders for the sandbox);
    #: None = boto3's own chain (instance role, AWS_PROFILE).
    aws_credentials: tuple[str, str, str | None] | None
    bedrock_model_id: str
    bedrock_max_tokens: int
    ses_from_address: str
    ses_configuration_set: str | None
    connect_timeout: float
    timeouts: dict[str, float]
    rates: dict[str, float]
    bursts: dict[str, int]
    rate_scale: float
    ses_quota_wait: float
    send_intent_lease: float
    auto_approve: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProviderSettings:
        env = dict(os.environ if env is None else env)
        sandbox = (env.get("SANDBOX_URL") or "").rstrip("/") or None
        zillow_host = env.get("ZILLOW_RAPIDAPI_HOST") or DEFAULT_ZILLOW_HOST
        zillow56_host = env.get("ZILLOW56_RAPIDAPI_HOST") or DEFAULT_ZILLOW56_HOST
        rates = {}
        bursts = {}
        for api in APIS:
            rates[api] = env_rate(env, f"RATE_{api.upper()}", DEFAULT_RATES[api])
            bursts[api] = env_int(env, f"BURST_{api.upper()}", DEFAULT_BURST, positive=True)
        timeouts = {api: env_float(env, f"{api.upper()}_TIMEOUT", DEFAULT_TIMEOUTS[api], positive=True) for api in APIS}
        creds: tuple[str, str, str | None] | None = None
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            creds = (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN") or None)
        elif sandbox:
            creds = ("sandbox", "sandbox", None)
        return cls(
            sandbox_url=sandbox,
            zillow_key=_key(env, "ZILLOW_API_KEY", "RAPIDAPI_KEY", sandbox=bool(sandbox)),
            zillow56_key=_key(env, "ZILLOW56_API_KEY", "RAPIDAPI_KEY", sandbox=bool(sandbox)),
            rentcast_key=_key(env, "RENTCAST_API_KEY", sandbox=bool(sandbox)),
            qev_key=_key(env, "QEV_API_KEY", sandbox=bool(sandbox)),
            zillow_host=zillow_host,
            zillow56_host=zillow56_host,
            zillow_base_url=sandbox or (env.get("ZILLOW_BASE_URL") or f"https://{zillow_host}").rstrip("/"),
            zillow56_base_url=sandbox or (env.get("ZILLOW56_BASE_URL") or f"https://{zillow56_host}").rstrip("/"),
            rentcast_base_url=f"{sandbox}/v1" if sandbox else (env.get("RENTCAST_BASE_URL") or DEFAULT_RENTCAST_URL).rstrip("/"),
            qev_base_url=f"{sandbox}/v1" if sandbox else (env.get("QEV_BASE_URL") or DEFAULT_QEV_URL).rstrip("/"),
            qev_sandbox_mode=env_bool(env, "QEV_SANDBOX_MODE"),
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_AWS_REGION,
            aws_endpoint_url=sandbox,
            aws_credentials=creds,
            bedrock_model_id=env.get("BEDROCK_MODEL_ID") or DEFAULT_BEDROCK_MODEL_ID,
            bedrock_max_tokens=env_int(env, "BEDROCK_MAX_TOKENS", DEFAULT_BEDROCK_MAX_TOKENS, positive=True),
            ses_from_address=env.get("SES_FROM_ADDRESS") or (SANDBOX_FROM if sandbox else ""),
            ses_configuration_set=env.get("SES_CONFIGURATION_SET") or None,
            connect_timeout=env_float(env, "PROVIDER_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT, positive=True),
            timeouts=timeouts,
            rates=rates,
            bursts=bursts,
            rate_scale=env_float(env, "RATE_SCALE", 1.0, positive=True),
            ses_quota_wait=env_float(env, "SES_QUOTA_WAIT", DEFAULT_SES_QUOTA_WAIT, positive=True),
            send_intent_lease=env_float(env, "SEND_INTENT_LEASE", DEFAULT_SEND_INTENT_LEASE, positive=True),
            auto_approve=env_bool(env, "AUTO_APPROVE"),
        )

    def secrets(self) -> list[str]:
        """Every configured secret, for scrubbing texts that might echo one."""
        values = [self.zillow_key, self.zillow56_key, self.rentcast_key, self.qev_key]
        if self.aws_credentials:
            values += [v for v in self.aws_credentials[1:] if v]
        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(name):
                values.append(os.environ[name])
        return [v for v in values if v and v not in (SANDBOX_KEY, "sandbox")]

    def timeout(self, api: str) -> tuple[float, float]:
        """(connect, read) for requests."""
        return (self.connect_timeout, self.timeouts[api])

    def plan_interval(self, api: str) -> float:
        """Seconds between two calls at the scaled plan rate: the wait when a 429 names none."""
        return 1.0 / (self.rates[api] * self.rate_scale)

    def limits(self) -> dict[str, Any]:
        """engine.ratelimit.Limit per API (the engine applies RATE_SCALE itself)."""
        from engine.ratelimit import Limit

        return {api: Limit(rate=self.rates[api], burst=self.bursts[api]) for api in APIS}

    def __repr__(self) -> str:
        def state(key: str) -> str:
            return "set" if key else "unset"

        return (
            f"ProviderSettings(sandbox_url={self.sandbox_url!r}, zillow_key={state(self.zillow_key)}, "
            f"zillow56_key={state(self.zillow56_key)}, rentcast_key={state(self.rentcast_key)}, "
            f"qev_key={state(self.qev_key)}, aws_region={self.aws_region!r}, "
            f"bedrock_model_id={self.bedrock_model_id!r}, ses_from_address={self.ses_from_address!r}, "
            f"rates={ {k: round(v, 4) for k, v in self.rates.items()} }, rate_scale={self.rate_scale}, "
            f"auto_approve={self.auto_approve})"
        )

    __str__ = __repr__


def rate_limits(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """engine.ratelimit.Limit per API from RATE_<API>/BURST_<API> (read by campaignctl.limits)."""
    return ProviderSettings.from_env(env).limits()
