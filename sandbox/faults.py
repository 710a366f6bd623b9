"""Fault injection: which calls of which provider go wrong, and how.

Spec string (``--faults`` and ``POST /_sandbox/faults``)::

    zillow:429=0.2,5xx=0.1,timeout=0.05,malformed=0.05,latency=0.2;bedrock:5xx=0.3;*:latency=0.01

``;`` separates providers, ``*`` means every provider (a named provider's
own settings override ``*`` for the same fault). Probabilities (0..1) per
call: ``429``, ``5xx``, ``timeout``, ``malformed``, ``quota``; their sum must
be at most 1 (one draw picks at most one fault). Seconds: ``latency`` (added
to every call), ``retry_after`` (the Retry-After of injected 429s; default
one plan interval, at least 1 s) and ``hang`` (how long a timeout fault holds
the request before dropping the connection; default the server's setting).

Faults are drawn after the rate limiter: an injected fault still spent the
key's token, as a real provider that failed still counted the call.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.limits import PROVIDERS

#: Faults that replace the answer, drawn with the given probability.
KINDS: tuple[str, ...] = ("429", "5xx", "timeout", "malformed", "quota")
#: Settings given in seconds rather than as a probability.
SECONDS: tuple[str, ...] = ("latency", "retry_after", "hang")
#: Aliases accepted in specs.
ALIASES = {"500": "5xx", "503": "5xx", "throttle": "429", "garbage": "malformed", "slow": "latency"}


class FaultSpecError(ValueError):
    """A fault spec that cannot be understood; the message says which part and why."""


@dataclass(frozen=True)
class ProviderFaults:
    """The faults of one provider."""

    probabilities: Mapping[str, float] = field(default_factory=dict)
    latency: float = 0.0
    retry_after: float | None = None
    hang: float | None = None

    def empty(self) -> bool:
        return not any(self.probabilities.values()) and not self.latency

    def to_dict(self) -> dict[str, float]:
        out = {k: v for k, v in self.probabilities.items() if v}
        for name in SECONDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


def _number(provider: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise FaultSpecError(f"{provider}:{name}: {text!r} is not a number") from None
    if value < 0 or value != value:
        raise FaultSpecError(f"{provider}:{name}: must be 0 or more, got {text!r}")
    if name in KINDS and value > 1:
        raise FaultSpecError(f"{provider}:{name}: a probability is at most 1, got {text!r}")
    return value


def _build(provider: str, items: Mapping[str, Any]) -> ProviderFaults:
    probabilities: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for raw_name, raw_value in items.items():
        name = ALIASES.get(str(raw_name).strip().lower(), str(raw_name).strip().lower())
        if name not in KINDS and name not in SECONDS:
            raise FaultSpecError(f"{provider}: unknown fault {raw_name!r}; known: {', '.join(KINDS + SECONDS)}")
        value = _number(provider, name, str(raw_value).strip())
        (probabilities if name in KINDS else seconds)[name] = value
    if sum(probabilities.values()) > 1 + 1e-9:
        raise FaultSpecError(f"{provider}: fault probabilities add up to {sum(probabilities.values()):g}, above 1")
    return ProviderFaults(probabilities, seconds.get("latency", 0.0), seconds.get("retry_after"), seconds.get("hang"))


def _merge(base: ProviderFaults | None, own: ProviderFaults) -> ProviderFaults:
    if base is None:
        return own
    probabilities = {**base.probabilities, **own.probabilities}
    if sum(probabilities.values()) > 1 + 1e-9:
        raise FaultSpecError("with '*' merged in, fault probabilities add up to more than 1")
    return ProviderFaults(probabilities, own.latency or base.latency,
                          own.retry_after if own.retry_after is not None else base.retry_after,
                          own.hang if own.hang is not None else base.hang)


def parse(spec: str | Mapping[str, Any] | None) -> dict[str, ProviderFaults]:
    """A spec string (or ``{provider: {fault: value}}``) -> faults per provider; raises FaultSpecError."""
    if spec is None:
        return {}
    raw: dict[str, dict[str, Any]] = {}
    if isinstance(spec, Mapping):
        for provider, items in spec.items():
            if not isinstance(items, Mapping):
                raise FaultSpecError(f"{provider}: expected an object of fault -> value")
            raw[str(provider).strip()] = dict(items)
    elif isinstance(spec, str):
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            provider, sep, rest = part.partition(":")
            provider = provider.strip()
            if not sep or not provider:
                raise FaultSpecError(f"{part!r}: expected 'provider:fault=value,...'")
            items = raw.setdefault(provider, {})
            for item in filter(None, (i.strip() for i in rest.split(","))):
                name, eq, value = item.partition("=")
                if not eq or not name.strip():
                    raise FaultSpecError(f"{provider}: {item!r} is not 'fault=value'")
                items[name.strip()] = value.strip()
    else:
        raise FaultSpecError(f"a fault spec is a string or an object, got {type(spec).__name__}")
    for provider in raw:
        if provider != "*" and provider not in PROVIDERS:
            raise FaultSpecError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)} or '*'")
    star = _build("*", raw["*"]) if "*" in raw else None
    out: dict[str, ProviderFaults] = {}
    for provider in PROVIDERS:
        own = _build(provider, raw[provider]) if provider in raw else None
        merged = _merge(star, own) if own is not None else star
        if merged is not None and not merged.empty():
            out[provider] = merged
        elif merged is not None and (merged.retry_after or merged.hang):
            out[provider] = merged
    return out


def describe(faults: Mapping[str, ProviderFaults]) -> str:
    """The canonical spec string of parsed faults (what ``GET /_sandbox/faults`` reports)."""
    parts = []
    for provider, f in faults.items():
        items = f.to_dict()
        if items:
            parts.append(f"{provider}:" + ",".join(f"{k}={v:g}" for k, v in items.items()))
    return ";".join(parts)


class Injector:
    """The active faults and a seeded random source (reproducible runs for one seed and call order)."""

    def __init__(self, spec: str | Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self._faults = parse(spec)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def set(self, spec: str | Mapping[str, Any] | None) -> dict[str, ProviderFaults]:
        faults = parse(spec)  # raises before anything changes
        with self._lock:
            self._faults = faults
        return faults

    def current(self) -> dict[str, ProviderFaults]:
        with self._lock:
            return dict(self._faults)

    def draw(self, provider: str) -> tuple[str | None, ProviderFaults | None]:
        """(the fault for this call or None, the provider's settings or None)."""
        with self._lock:
            faults = self._faults.get(provider)
            if faults is None:
                return None, None
            u = self._random.random()
        edge = 0.0
        for kind in KINDS:
            edge += faults.probabilities.get(kind, 0.0)
            if u < edge:
                return kind, faults
        return None, faults
