"""Typed reads of environment variables, with errors that name the variable.

The engine, the provider settings, the polling dispatcher, the CLI's limits
and the sandbox all read their knobs through these, so a bad value fails the
same way everywhere: a ValueError that names the variable and says what it
must be. An unset or empty variable means the default.

The errors show the offending value, which is safe because these helpers only
read numbers, switches and rates. Secrets (API keys, passwords) are plain
strings: they are read with ``env.get`` and never pass through here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

#: Words that turn a switch on / off (compared lower-case).
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
#: Seconds per unit of a rate such as "10/min".
RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
              "h": 3600.0, "hour": 3600.0}

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*$")


def env_float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    """``name`` as a number; negative values are refused, and 0 too when ``positive``."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got {raw!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be above 0, got {raw!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, positive: bool = False) -> int:
    """``name`` as a whole number ("10" and "10.0" both work; "2.5" is refused, not cut to 2)."""
    value = env_float(env, name, default, positive=positive)
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def env_bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """``name`` as a switch: 1/true/yes/on or 0/false/no/off; a typo is an error, not a silent 'off'."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, got {raw!r}")


def parse_rate(text: str, name: str | None = None) -> float:
    """Calls per second from a plan rate: ``"10/min"`` -> 0.1667, ``"1/s"`` -> 1.0, ``"5"`` -> 5.0.

    One syntax for every reader of RATE_<API> (the engine's limiter, the
    provider settings, the sandbox's buckets), so a rate means the same to the
    engine and to the sandbox that checks it. ``name`` is the variable the
    text came from; the error names it.
    """
    match = _RATE.match(text.lower())
    what = name or "a rate"
    if not match or (match.group(2) and match.group(2) not in RATE_UNITS):
        raise ValueError(f"{what} must look like '10/min', '1/s' or '5' (calls per second; units s, min, h), "
                         f"got {text!r}")
    value = float(match.group(1)) / RATE_UNITS[match.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"{what} must be above 0, got {text!r}")
    return value


def env_rate(env: Mapping[str, str], name: str, default: float) -> float:
    """``name`` as a rate (see ``parse_rate``), in calls per second; ``default`` is already in calls per second."""
    raw = env.get(name)
    return default if raw in (None, "") else parse_rate(raw, name)
