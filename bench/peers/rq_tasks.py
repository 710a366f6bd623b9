"""RQ job functions (RQ imports them by dotted path in the worker)."""

from __future__ import annotations


def noop() -> None:
    return None
