"""What a handler raises to tell the worker how its task ended.

A handler that returns normally has finished its task (ack). Anything else is
one of these; an unexpected exception counts as ``Transient`` — unless it means
that a service the handler needs is down (an outage, see ``is_outage``): that
task is deferred like a rate-limited one, without spending an attempt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import redis

#: ``test(exc) -> bool``: the application's answer to "does this exception mean a service we
#: depend on is unreachable or not accepting work right now?" (e.g. the database's driver errors).
OutageTest = Callable[[BaseException], bool]

#: Redis errors that mean "Redis is not reachable or not writable now", not "this command is wrong".
#: ConnectionError covers refused/reset connections, BusyLoadingError (AOF loading) and
#: AuthenticationError; ReadOnlyError is a failover's demoted primary. ClusterError is a Redis Cluster
#: that refuses commands while a master is down and its replica not yet promoted (CLUSTERDOWN on every
#: node, MASTERDOWN), or redis-py giving up after too many redirections mid-failover ("TTL exhausted").
REDIS_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError, redis.exceptions.ClusterError)
#: How far along __cause__/__context__ ``is_outage`` looks (a handler may wrap the driver's error).
CHAIN_DEPTH = 5


class TaskFailure(Exception):
    """Base of the outcomes a handler can raise."""


class Transient(TaskFailure):
    """Worth trying again later: timeouts, 5xx, connection errors.

    Retried with exponential backoff and jitter until the task type's
    ``max_attempts``; then dead-lettered.
    """


class Permanent(TaskFailure):
    """Trying again cannot help: 4xx other than 429, invalid data. Dead-lettered at once."""


class RateLimited(TaskFailure):
    """The provider (or our bucket) says wait ``retry_after`` seconds.

    Not a failure: the task is deferred by that long without spending an attempt.
    ``api`` names the bucket to pause for every worker (None: nothing to pause).
    """

    def __init__(self, message: str, *, retry_after: float, api: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, float(retry_after))
        self.api = api

    def __repr__(self) -> str:
        return f"RateLimited(api={self.api!r}, retry_after={self.retry_after:.3f}s)"


class Discard(TaskFailure):
    """The task has nothing to do (its subject is gone): acknowledge it with a log line."""


class Unavailable(TaskFailure):
    """A service the handler needs is unreachable (the database is restarting).

    Not the task's fault: the worker defers it with the outage backoff and does
    not spend an attempt, so an outage never burns retry budgets or sends
    campaigns to the dead letters. Handlers rarely raise it themselves: the
    application declares which library exceptions mean this (``Registry(is_outage=...)``).
    """


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, nearest first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < CHAIN_DEPTH:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_outage(exc: BaseException, test: OutageTest | None = None) -> bool:
    """Whether ``exc`` (or what it wraps) is ``Unavailable``, a Redis outage, or an outage by ``test``."""
    for e in causes(exc):
        if isinstance(e, (Unavailable, *REDIS_OUTAGE_ERRORS)) or (test is not None and test(e)):
            return True
    return False


#: Longest exception text ``describe`` keeps, in characters.
DESCRIBE_MAX = 200


def describe(exc: BaseException) -> str:
    """One short line for a log: the type and the first line of the message, credentials masked.

    Only the first line: a driver's message goes on with the SQL statement and
    its parameters (campaign data) after it, which a log line must not carry.
    A wrapper's "(driver.Error) text" (SQLAlchemy's) names the driver's class instead of the wrapper's.
    """
    from engine.redact import redact

    text = str(exc).strip().split("\n", 1)[0].split("[SQL:", 1)[0].strip()
    wrapped = re.match(r"\(([A-Za-z_][\w.]*)\) (.*)", text)
    if wrapped:
        line = f"{wrapped[1]}: {wrapped[2]}"
    else:
        line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    line = redact(line)
    return line if len(line) <= DESCRIBE_MAX else line[: DESCRIBE_MAX - 1] + "…"
