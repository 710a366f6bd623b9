"""What the sandbox saw: calls, limit 429s, injected faults, accepted emails, and a call log.

Tests and the chaos suite read this through ``GET /_sandbox/stats`` and
``GET /_sandbox/calls``: calls per provider, 429s the rate limit answered
(``throttled``; injected 429s are counted under ``injected`` instead, so a
non-zero ``throttled`` always means a client went over its plan), emails
accepted per recipient (the at-most-once check), and per call the provider,
the server monotonic time of its rate-limit decision and the status answered
(for window checks). API keys never appear here.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any

#: Most call-log entries kept; older ones are dropped first (about 100 bytes each).
MAX_CALL_LOG = 500_000
#: Most accepted messages kept in full (per-recipient counts are always complete).
MAX_MESSAGES = 100_000


class Stats:
    """Counters and logs behind one lock; every reader gets a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._calls: Counter[str] = Counter()
            self._throttled: Counter[str] = Counter()
            self._injected: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self._emails: Counter[str] = Counter()
            self._log: list[dict[str, Any]] = []
            self._messages: list[dict[str, Any]] = []

    def call(self, provider: str, t: float, status: int, path: str, *, throttled: bool = False,
             fault: str | None = None) -> None:
        entry: dict[str, Any] = {"provider": provider, "t": round(t, 6), "status": status, "path": path}
        if fault:
            entry["fault"] = fault
        with self._lock:
            self._calls[provider] += 1
            if throttled:
                self._throttled[provider] += 1
            if fault:
                self._injected[provider][fault] += 1
            self._log.append(entry)
            if len(self._log) > MAX_CALL_LOG:
                del self._log[: len(self._log) - MAX_CALL_LOG]

    def email(self, message: dict[str, Any], recipients: list[str]) -> None:
        with self._lock:
            for r in recipients:
                self._emails[r] += 1
            if len(self._messages) < MAX_MESSAGES:
                self._messages.append(message)

    def snapshot(self) -> dict[str, Any]:
        """The CONTRACTS.md shape: {"calls", "throttled", "injected", "emails"}."""
        with self._lock:
            return {
                "calls": dict(self._calls),
                "throttled": dict(self._throttled),
                "injected": {p: dict(c) for p, c in self._injected.items()},
                "emails": dict(self._emails),
            }

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log)

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)
