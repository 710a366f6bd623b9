"""The engine's rate limits: each provider's plan rate, times RATE_HEADROOM.

The plan rates and their overrides (RATE_<API> as "10/min" or "1/s",
BURST_<API>) belong to the stages, which know the providers
(``stages.settings.rate_limits``); RATE_SCALE (in the engine settings)
multiplies all of them for time-scaled runs. This module only adds the
margin the engine keeps under each plan.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.env import env_float
from engine.ratelimit import Limit
from stages.settings import rate_limits as plan_limits

#: Fraction of each provider's plan rate the engine grants. The provider counts
#: arrivals, not grants: a call delayed after its token (GC, a busy core) can
#: bunch up with the next one, so the engine stays a little under the plan.
#: bench.pipeline at x30: 0.98 -> 0.96 of the bound, zero 429s; 0.97 -> 0.94.
DEFAULT_RATE_HEADROOM = 0.98


def rate_limits(env: Mapping[str, str]) -> dict[str, Limit]:
    """Limits per API as the engine's buckets run them: the plan rate × RATE_HEADROOM."""
    headroom = env_float(env, "RATE_HEADROOM", DEFAULT_RATE_HEADROOM, positive=True)
    if headroom > 1:
        raise ValueError(f"RATE_HEADROOM must be in (0, 1], got {headroom}")
    return {api: Limit(rate=limit.rate * headroom, burst=limit.burst) for api, limit in plan_limits(env).items()}
