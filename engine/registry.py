"""Which handler runs which task type, with its retry policy; and the dead-letter hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable

from engine.retry import RetryPolicy

log = logging.getLogger(__name__)

#: ``handle(task, ctx)``; returning means done. See engine.errors for the other outcomes.
Handler = Callable[..., None]
#: ``hook(task or None, reason, error)``, called after a task (or a malformed payload) is dead-lettered.
DeadLetterHook = Callable[..., None]


class Registry:
    """Task type -> (handler, policy). The application fills it; the engine only looks things up."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, RetryPolicy]] = {}
        self._hooks: list[DeadLetterHook] = []

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

    def dead_lettered(self, task: object | None, reason: str, error: str | None) -> None:
        """Run every hook; a failing hook is logged, never raised (the dead letter is already stored)."""
        for hook in self._hooks:
            try:
                hook(task, reason, error)
            except Exception:  # noqa: BLE001 - a hook must not take the worker down
                log.exception("dead-letter hook %r failed for %r", hook, task)
