"""Default rate limits per external API, and their environment overrides.

Rates are plan limits ("10/min", "1/s"); RATE_<API> overrides one (e.g.
``RATE_ZILLOW=20/min``), BURST_<API> its bucket size. RATE_SCALE (in the
engine settings) multiplies all of them for time-scaled runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.env import env_float, env_int, env_rate, parse_rate
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
        rate = env_rate(env, f"RATE_{name}", parse_rate(default))
        burst = env_int(env, f"BURST_{name}", DEFAULT_BURST)
        out[api] = Limit(rate=rate, burst=max(1, burst))
    return _with_headroom(out, env)


#: Fraction of each provider's plan rate the engine grants. The provider counts
#: arrivals, not grants: a call delayed after its token (GC, a busy core) can
#: bunch up with the next one, so the engine stays a little under the plan.
DEFAULT_RATE_HEADROOM = 0.9


def _with_headroom(limits: dict[str, Limit], env: Mapping[str, str]) -> dict[str, Limit]:
    headroom = env_float(env, "RATE_HEADROOM", DEFAULT_RATE_HEADROOM, positive=True)
    if headroom > 1:
        raise ValueError(f"RATE_HEADROOM must be in (0, 1], got {headroom}")
    return {api: Limit(rate=limit.rate * headroom, burst=limit.burst) for api, limit in limits.items()}
