"""What a log line is about: worker, task, campaign, stage, provider — in context variables.

The worker sets the task's fields around each handler call (``task_scope``)
and the limiter the provider (``provider_scope``); formatters read
``current()``. Context variables are per thread, so each handler thread
reports its own task without any plumbing through the handlers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_worker_id: str | None = None
_task: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ce_task", default=None)
_provider: contextvars.ContextVar[str | None] = contextvars.ContextVar("ce_provider", default=None)


def set_worker(worker_id: str) -> None:
    """This process's worker id, on every line it logs."""
    global _worker_id
    _worker_id = worker_id


@contextlib.contextmanager
def task_scope(task_id: str, campaign_id: int, stage: str) -> Iterator[None]:
    token = _task.set({"task_id": task_id, "campaign_id": campaign_id, "stage": stage})
    provider = _provider.set(None)
    try:
        yield
    finally:
        _provider.reset(provider)
        _task.reset(token)


def set_provider(api: str | None) -> None:
    """The provider the current task is calling (until the task ends)."""
    _provider.set(api)


def current() -> dict[str, Any]:
    out: dict[str, Any] = {}
    if _worker_id:
        out["worker_id"] = _worker_id
    task = _task.get()
    if task:
        out.update(task)
    provider = _provider.get()
    if provider and task:
        out["provider"] = provider
    return out
