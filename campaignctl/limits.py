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
        out = {api: (v if isinstance(v, Limit) else Limit(*v)) for api, v in limits.items()}
        return _with_headroom(out, env)
    out = {}
    for api, default in DEFAULT_RATES.items():
        name = api.upper()
        rate = parse_rate(env.get(f"RATE_{name}") or default)
        try:
            burst = int(env.get(f"BURST_{name}") or DEFAULT_BURST)
        except ValueError:
            raise ValueError(f"BURST_{name} must be a whole number, got {env.get(f'BURST_{name}')!r}") from None
        out[api] = Limit(rate=rate, burst=max(1, burst))
    return _with_headroom(out, env)


#: Fraction of each provider's plan rate the engine grants. The provider counts
#: arrivals, not grants: a call delayed after its token (GC, a busy core) can
#: bunch up with the next one, so the engine stays a little under the plan.
DEFAULT_RATE_HEADROOM = 0.9


def _with_headroom(limits: dict[str, Limit], env: Mapping[str, str]) -> dict[str, Limit]:
    try:
        headroom = float(env.get("RATE_HEADROOM") or DEFAULT_RATE_HEADROOM)
    except ValueError:
        raise ValueError(f"RATE_HEADROOM must be a number, got {env.get('RATE_HEADROOM')!r}") from None
    if not 0 < headroom <= 1:
        raise ValueError(f"RATE_HEADROOM must be in (0, 1], got {headroom}")
    return {api: Limit(rate=limit.rate * headroom, burst=limit.burst) for api, limit in limits.items()}
