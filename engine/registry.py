"""Which handler runs which task type, with its retry policy; the dead-letter hooks; what an outage is."""

from __future__ import annotations

import logging
from collections.abc import Callable

from engine import errors
from engine.retry import RetryPolicy

log = logging.getLogger(__name__)

#: ``handle(task, ctx)``; returning means done. See engine.errors for the other outcomes.
Handler = Callable[..., None]
#: ``hook(task or None, reason, error)``, called after a task (or a malformed payload) is dead-lettered.
DeadLetterHook = Callable[..., None]


class Registry:
    """Task type -> (handler, policy). The application fills it; the engine only looks things up.

    ``is_outage`` is the application's test for "a service the handlers need is
    down" (the engine knows Redis's errors, not the database driver's): a
    handler failing that way is deferred without spending an attempt, and a
    dead-letter hook failing that way is logged without a traceback.
    """

    def __init__(self, *, is_outage: errors.OutageTest | None = None) -> None:
        self._handlers: dict[str, tuple[Handler, RetryPolicy]] = {}
        self._hooks: list[DeadLetterHook] = []
        self._outage_test = is_outage

    def register(self, task_type: str, handler: Handler, policy: RetryPolicy | None = None) -> None:
        if ":" in task_type or not task_type:
            raise ValueError(f"a task type is a non-empty name without ':', got {task_type!r}")
        self._handlers[task_type] = (handler, policy or RetryPolicy())

    def on_dead_letter(self, hook: DeadLetterHook) -> DeadLetterHook:
        """Add a hook (usable as a decorator)."""
        self._hooks.append(hook)
        return hook

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def handler(self, task_type: str) -> Handler | None:
        entry = self._handlers.get(task_type)
        return entry[0] if entry else None

    def policy(self, task_type: str) -> RetryPolicy:
        entry = self._handlers.get(task_type)
        return entry[1] if entry else RetryPolicy()

    def is_outage(self, exc: BaseException) -> bool:
        """Whether ``exc`` means a service is down (Redis, ``Unavailable``, or the application's test)."""
        return errors.is_outage(exc, self._outage_test)

    def dead_lettered(self, task: object | None, reason: str, error: str | None) -> None:
        """Run every hook; a failing hook is logged, never raised (the dead letter is already stored).

        A hook that cannot reach the database leaves the campaign where it was
        (PROCESSING): the task is in the dead letters and its dedup key is gone,
        so recovery's reconcile enqueues the campaign's stage again once it has
        not moved for STALL_THRESHOLD, and a new dead letter then runs the hook
        again. Nothing stays PROCESSING for good.
        """
        for hook in self._hooks:
            try:
                hook(task, reason, error)
            except Exception as exc:  # noqa: BLE001 - a hook must not take the worker down
                if self.is_outage(exc):
                    log.warning("dead-letter hook %s could not run for %r (a service is down: %s); recovery "
                                "will enqueue the campaign again after STALL_THRESHOLD", getattr(hook, "__name__", hook),
                                task, errors.describe(exc))
                else:
                    log.exception("dead-letter hook %r failed for %r", hook, task)
