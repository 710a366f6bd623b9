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
        #: Where a hook that failed on an outage is kept for recovery to run again (the queue binds it).
        self._outbox: DeadLetterHook | None = None

    def register(self, task_type: str, handler: Handler, policy: RetryPolicy | None = None) -> None:
        if ":" in task_type or not task_type:
            raise ValueError(f"a task type is a non-empty name without ':', got {task_type!r}")
        self._handlers[task_type] = (handler, policy or RetryPolicy())

    def on_dead_letter(self, hook: DeadLetterHook) -> DeadLetterHook:
        """Add a hook (usable as a decorator)."""
        self._hooks.append(hook)
        return hook

    def bind_outbox(self, keep: DeadLetterHook) -> None:
        """``keep(task, reason, error)`` stores a hook call that failed on an outage (TaskQueue.defer_hook)."""
        self._outbox = keep

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

    def dead_lettered(self, task: object | None, reason: str, error: str | None) -> bool:
        """Run every hook; a failing hook is logged, never raised (the dead letter is already stored).

        A hook that cannot reach the database (an outage) would leave the
        campaign where it was, with its task in the dead letters and nothing
        live: the call is kept in the outbox (``bind_outbox``: a Redis list)
        and recovery runs it again on each pass until it goes through. Hooks
        are idempotent (compare-and-set). Returns whether every hook ran.
        """
        ok = True
        for hook in self._hooks:
            try:
                hook(task, reason, error)
            except Exception as exc:  # noqa: BLE001 - a hook must not take the worker down
                ok = False
                if self.is_outage(exc):
                    kept = self._keep(task, reason, error)
                    log.warning("dead-letter hook %s could not run for %r (a service is down: %s); %s",
                                getattr(hook, "__name__", hook), task, errors.describe(exc),
                                "recovery will run it again" if kept else "it is lost: no outbox is bound")
                else:
                    log.exception("dead-letter hook %r failed for %r", hook, task)
        return ok

    def _keep(self, task: object | None, reason: str, error: str | None) -> bool:
        if self._outbox is None:
            return False
        try:
            self._outbox(task, reason, error)
        except Exception as exc:  # noqa: BLE001 - Redis may be down too
            log.warning("could not keep the dead-letter hook for %r (%s)", task, errors.describe(exc))
            return False
        return True
