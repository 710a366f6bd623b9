"""What a handler's ending means: the one decision shared by the queue worker and the polling dispatcher.

A handler returns (done), or raises one of engine.errors' outcomes, or
something unexpected. ``decide`` turns that into an ``Outcome`` — ack, defer
(no attempt spent), retry (an attempt spent, after a backoff), dead (with the
reason), or outage (a service is down: the caller defers with its shared
outage backoff, no attempt spent). Each dispatcher then carries it out with
its own means (Redis scripts, or database columns), so the two can never
disagree on what a failure means.
"""

from __future__ import annotations

import enum
import traceback

import attrs

from engine.errors import Discard, OutageTest, Permanent, RateLimited, is_outage
from engine.redact import redact
from engine.retry import RetryPolicy
from engine.task import Task

#: Shortest deferral of a rate-limited task (a 0 s Retry-After would spin), in s.
MIN_DEFER = 0.05


class Action(str, enum.Enum):
    ACK = "ack"
    DEFER = "defer"
    RETRY = "retry"
    DEAD = "dead"
    OUTAGE = "outage"


@attrs.frozen
class Outcome:
    action: Action
    #: Seconds until the next attempt (DEFER, RETRY); OUTAGE leaves it to the caller's backoff.
    delay: float = 0.0
    #: Why, for the dead letter (DEAD) or the log line.
    reason: str = ""
    #: The exception's one-line trace (DEAD), credentials masked.
    error: str | None = None
    #: The bucket to pause for ``delay`` seconds for every worker (a provider's 429).
    pause_api: str | None = None


def decide(task: Task, exc: BaseException | None, policy: RetryPolicy, outage_test: OutageTest | None = None) -> Outcome:
    """The outcome of ``task`` whose handler raised ``exc`` (None: it returned)."""
    if exc is None:
        return Outcome(Action.ACK)
    if isinstance(exc, Discard):
        return Outcome(Action.ACK, reason=f"discarded: {exc}")
    if isinstance(exc, RateLimited):
        return Outcome(Action.DEFER, delay=max(MIN_DEFER, exc.retry_after), reason=str(exc), pause_api=exc.api)
    if isinstance(exc, Permanent):
        return Outcome(Action.DEAD, reason=redact(f"permanent failure: {exc}"), error=trace(exc))
    if is_outage(exc, outage_test):
        return Outcome(Action.OUTAGE, reason=redact(str(exc)))
    attempts = task.retry_count + 1
    if policy.exhausted(task.retry_count):
        return Outcome(Action.DEAD, reason=redact(f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}"),
                       error=trace(exc))
    return Outcome(Action.RETRY, delay=policy.backoff(task.retry_count),
                   reason=redact(f"attempt {attempts}/{policy.max_attempts} failed: {type(exc).__name__}: {exc}"))


def trace(exc: BaseException) -> str:
    """The exception's last line (type and message), credentials masked."""
    return redact("".join(traceback.format_exception_only(type(exc), exc)).strip())
