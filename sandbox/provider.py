"""What every simulated provider offers the server: its key, its errors, its answers.

The server runs the same pipeline for each call (auth -> rate limit -> fault
-> answer) and asks the provider for the provider-shaped pieces; a provider
module only knows its own paths, shapes and error bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sandbox.wire import Request, Response


@dataclass(frozen=True)
class CallContext:
    """What a provider may need to shape an answer, besides the request."""

    provider: str
    key: str
    #: Scaled plan rate of this provider, in calls/s.
    rate: float
    #: Whole tokens left in the key's bucket after this call.
    remaining: int
    #: Seconds until the key's next token (limit 429s) or the injected Retry-After.
    wait: float = 0.0
    #: Seconds until the key's bucket is full again.
    refill: float = 0.0


class Provider(Protocol):
    #: Bucket / stats name ("zillow", "rentcast", ...).
    name: str

    def key(self, req: Request) -> str:
        """The API key of the call ("" when missing)."""

    def auth_error(self, req: Request, key: str) -> Response | None:
        """The provider's answer to a missing, invalid or unsubscribed key; None when the key is fine."""

    def throttled(self, req: Request, ctx: CallContext) -> Response:
        """The provider's real 429 for a key over its rate."""

    def injected(self, req: Request, ctx: CallContext, fault: str) -> Response:
        """An injected '429' (with Retry-After), '5xx' or 'quota' answer, shaped like the provider's."""

    def handle(self, req: Request, ctx: CallContext) -> Response:
        """The normal answer."""

    def decorate(self, req: Request, ctx: CallContext | None, resp: Response) -> Response:
        """Headers the provider puts on every answer (RapidAPI quotas, QEV credits, AWS request ids)."""

    def reset(self) -> None:
        """Forget per-key state (quotas used, credits spent)."""


def retry_after_header(seconds: float) -> str:
    """HTTP Retry-After is whole seconds; never 0, or a client would retry at once."""
    import math

    return str(max(1, math.ceil(seconds)))


def seconds_header(seconds: float) -> str:
    """A seconds value for x-ratelimit-reset: whole seconds like the real gateway, decimals only below 1 s.

    [I] Sub-second values happen only under a time scale; a client that parses a float handles both.
    """
    import math

    if seconds >= 1:
        return str(math.ceil(seconds))
    return f"{max(seconds, 0.001):.3f}"
