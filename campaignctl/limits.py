"""Default rate limits per external API, and their environment overrides.

Rates are plan limits ("10/min", "1/s"); RATE_<API> overrides one (e.g.
``RATE_ZILLOW=20/min``), BURST_<API> its bucket size. RATE_SCALE (in the
engine settings) multiplies all of them for time-scaled runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from engine.ratelimit import Limit

#: Plan rate per API (bucket name = the sandbox's provider name).
DEFAULT_RATES: dict[str, str] = {
    "zillow": "10/min",
    "zillow56": "10/min",
    "rentcast": "1/s",
    "bedrock": "8/min",
    "email_verification": "1/s",
    "ses": "10/s",
}
#: Bucket size in calls when BURST_<API> is not set.
DEFAULT_BURST = 1

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*$")


def parse_rate(text: str) -> float:
    """``"10/min"`` -> 0.1667, ``"1/s"`` -> 1.0, ``"5"`` -> 5.0: calls per second."""
    match = _RATE.match(text.lower())
    if not match or (match.group(2) and match.group(2) not in _UNITS):
        raise ValueError(f"a rate looks like '10/min', '1/s' or '5' (per second), got {text!r}")
    value = float(match.group(1)) / _UNITS[match.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"a rate must be above 0, got {text!r}")
    return value


def rate_limits(env: Mapping[str, str]) -> dict[str, Limit]:
    """Limits per API: ``stages.settings.rate_limits(env)`` when the stages provide one, else the defaults."""
    try:
        from stages import settings as stage_settings  # type: ignore[attr-defined]
    except ImportError:
        stage_settings = None
    provided = getattr(stage_settings, "rate_limits", None)
    if callable(provided):
        limits = provided(env)
        return {api: (v if isinstance(v, Limit) else Limit(*v)) for api, v in limits.items()}
    out = {}
    for api, default in DEFAULT_RATES.items():
        name = api.upper()
        rate = parse_rate(env.get(f"RATE_{name}") or default)
        try:
            burst = int(env.get(f"BURST_{name}") or DEFAULT_BURST)
        except ValueError:
            raise ValueError(f"BURST_{name} must be a whole number, got {env.get(f'BURST_{name}')!r}") from None
        out[api] = Limit(rate=rate, burst=max(1, burst))
    return out
