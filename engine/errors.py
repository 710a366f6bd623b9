"""What a handler raises to tell the worker how its task ended.

A handler that returns normally has finished its task (ack). Anything else is
one of these; an unexpected exception counts as ``Transient``.
"""

from __future__ import annotations


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
