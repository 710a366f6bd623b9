"""Typed provider errors: what a stage raises tells the engine how the task ended.

They subclass the engine's outcomes, so the worker needs no knowledge of
providers: ``RateLimited`` defers without spending an attempt (and names the
bucket to pause), ``TransientError`` retries with backoff, ``PermanentError``
dead-letters at once and the campaign goes to ERROR with the message. Every
message starts with the provider name and never contains a secret (the
clients scrub texts with ``redact`` before building one).
"""

from __future__ import annotations

from collections.abc import Iterable

from engine import errors as engine_errors
from engine.redact import redact as engine_redact

#: Longest provider text kept in an error message, in characters.
MAX_DETAIL = 300


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret masked (engine.redact) on one line, cut to MAX_DETAIL characters."""
    text = " ".join(engine_redact(text, secrets).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


class ProviderError(Exception):
    """Mixin: the provider's name, for logs, metrics and the fallback decision."""

    provider: str = ""


class RateLimited(engine_errors.RateLimited, ProviderError):
    """The provider answered 429 (or equivalent): wait ``retry_after`` seconds."""

    def __init__(self, provider: str, message: str, *, retry_after: float) -> None:
        super().__init__(f"{provider}: {message}", retry_after=retry_after, api=provider)
        self.provider = provider


class TransientError(engine_errors.Transient, ProviderError):
    """5xx, timeouts, connection errors, malformed responses: retry later."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider


class PermanentError(engine_errors.Permanent, ProviderError):
    """Retrying cannot help until data or an operator changes.

    ``outage`` marks the provider-side failures (quota exhausted, not
    subscribed, key rejected, gateway 404) as opposed to "this input is bad":
    the Zillow stages fall back to the second Zillow API on an outage.
    """

    def __init__(self, provider: str, message: str, *, outage: bool = False) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.outage = outage
