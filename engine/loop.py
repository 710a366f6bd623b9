"""The loop of the long-running services (producer, recovery), outage logging, and the start-up wait.

A service must outlive the outages of what it depends on. Redis restarts,
the database fails over: an operator of Celery or Temporal expects the
process to say so once, back off, and carry on by itself when the service
is back — not to exit and need a supervisor, and not to write a traceback
every second. ``ServiceLoop`` does that for a pass that runs every
``interval``; ``Outage`` holds the backoff and the log lines and is also used
by the worker; ``wait_until_up`` is the same thing for start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from engine import metrics
from engine.errors import OutageTest, describe, is_outage
from engine.retry import OutageBackoff

log = logging.getLogger(__name__)

#: While something stays down, a reminder is logged this often, in s.
OUTAGE_REMINDER = 300.0
#: First wait of the start-up wait and of tasks deferred by an outage, in s.
FIRST_RETRY = 0.5


class StopFlag:
    """A ``threading.Event`` whose ``set()`` is safe to call from a signal handler.

    A handler runs in the main thread, maybe while that thread is inside
    ``wait()`` holding the event's lock: setting it right there would
    deadlock, so from the main thread the event is set by a thread.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        if threading.current_thread() is threading.main_thread():
            threading.Thread(target=self._event.set, name="stop", daemon=True).start()
        else:
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` s; True as soon as the flag is set."""
        return self._event.wait(timeout)


class Outage:
    """Something that may keep failing for a while: its backoff and the log lines an operator wants.

    One warning when a failure streak starts (or its error changes kind), a
    reminder every OUTAGE_REMINDER while it lasts, the rest at DEBUG, and one
    warning when it works again (WARNING too, so that whoever saw "unavailable"
    at the default log level also sees the end). A failure that ``is_outage``
    does not recognise is logged with its traceback instead — once per streak
    and kind. Thread-safe: a worker's handler threads share one.
    """

    def __init__(
        self,
        what: str,
        *,
        base: float,
        cap: float,
        is_outage: OutageTest | None = None,
        consequence: str | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.what = what
        self.backoff = OutageBackoff(base=base, cap=max(cap, base))
        self._test = is_outage
        self.consequence = consequence or f"trying again with backoff (at most {self.backoff.cap:g}s apart); no restart needed"
        self.log = logger
        self._lock = threading.Lock()
        self._kind: type[BaseException] | None = None
        self._warned_at = 0.0

    def is_outage(self, exc: BaseException) -> bool:
        return is_outage(exc, self._test)

    def failed(self, exc: BaseException, *, consequence: str | None = None) -> float:
        """Count a failure and log it as it deserves; returns the seconds to wait before the next try."""
        now = time.monotonic()
        with self._lock:
            delay = self.backoff.failure()
            new = self.backoff.failures == 1 or type(exc) is not self._kind
            remind = not new and now - self._warned_at >= OUTAGE_REMINDER
            self._kind = type(exc)
            if new or remind:
                self._warned_at = now
            failures, since = self.backoff.failures, self.backoff.since or now
        outage = self.is_outage(exc)
        if failures == 1:
            metrics.outage_started()
        if new and outage:
            self.log.warning("%s: unavailable (%s); %s", self.what, describe(exc), consequence or self.consequence)
        elif new:
            self.log.error("%s failed unexpectedly (%s); %s", self.what, describe(exc),
                           consequence or self.consequence, exc_info=exc)
        elif remind:
            self.log.warning("%s: still failing after %.0fs (%d tries): %s", self.what, now - since, failures,
                             describe(exc))
        else:
            self.log.debug("%s: failing (%s); next try in %.2fs", self.what, describe(exc), delay)
        return delay

    def ok(self) -> None:
        """It worked: end the streak, logging how long it lasted."""
        if self.backoff.since is None:  # the common case, without the lock
            return
        with self._lock:
            streak = self.backoff.success()
            self._kind = None
        if streak is not None:
            self.log.warning("%s: working again after %.1fs (%d failed tries)", self.what, streak[0], streak[1])


class ServiceLoop:
    """A pass every ``interval`` until stopped; a failing pass never ends the process.

    Subclasses implement ``run_once()`` (one pass, raising when it cannot
    finish) and may override ``report(result)`` to log what a pass did.

    Every ``Exception`` of a pass is retried, not only the ones known to mean
    an outage. A pass fails on a bug or on bad data as well as on an outage,
    and exiting mends neither: under a supervisor the process would start
    again and hit the same thing, and without one the service would be gone
    until someone noticed. So every failure waits with the same backoff
    (``interval`` growing to ``backoff_max``); ``is_outage`` only decides how
    it is logged: an outage (Redis's errors; the application's test for its
    database's) in one warning line, anything else with its traceback, once
    per streak. ``run(once=True)`` still exits 1 on a failed pass, for cron
    jobs and scripts.
    """

    #: How log lines name this loop.
    name = "service"

    def __init__(self, interval: float, *, backoff_max: float, is_outage: OutageTest | None = None,
                 stop: StopFlag | None = None) -> None:
        self.interval = interval
        #: Pass one to share it with what the process does before the loop (e.g. wait_until_up).
        self._stop = stop or StopFlag()
        base = max(interval, 0.01)
        # A failing loop never tries more often than a healthy one.
        self.outage = Outage(self.name, base=base, cap=max(backoff_max, base), is_outage=is_outage,
                             logger=logging.getLogger(type(self).__module__))

    def stop(self) -> None:
        """Finish the current pass and return from ``run``. Safe to call from a signal handler."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_once(self) -> Any:
        raise NotImplementedError

    def report(self, result: Any) -> None:
        """Log what a successful pass did (nothing by default)."""

    def run(self, *, once: bool = False) -> int:
        """Pass after pass until stopped (0); with ``once`` one pass: 0 done, 1 failed."""
        while True:
            metrics.loop_alive()
            try:
                result = self.run_once()
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                if once:
                    self.outage.failed(exc, consequence="giving up (one pass only)")
                    return 1
                if self._stop.wait(self.outage.failed(exc)):
                    return 0
                continue
            self.outage.ok()
            self.report(result)
            if once or self._stop.wait(self.interval):
                return 0


def wait_until_up(
    what: str,
    check: Callable[[], object],
    *,
    backoff_max: float,
    timeout: float = 0.0,
    is_outage: OutageTest | None = None,
    stop: StopFlag | None = None,
) -> bool:
    """Call ``check()`` until it stops failing with an outage; True once it passed, False if stopped meanwhile.

    Waits with the outage backoff (FIRST_RETRY growing to ``backoff_max``),
    logging once. An error that is not an outage (a malformed URL, a missing
    driver) is raised at once: at start-up nothing has worked yet, so it is
    almost surely configuration, which waiting cannot mend. With ``timeout``
    > 0 the last outage error is raised after that many seconds.
    """
    outage = Outage(what, base=FIRST_RETRY, cap=backoff_max, is_outage=is_outage, consequence=(
        f"waiting for it (tries at most {max(backoff_max, FIRST_RETRY):g}s apart, "
        + (f"for up to {timeout:g}s)" if timeout > 0 else "no time limit)")))
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while True:
        metrics.loop_alive()  # waiting for a dependency is the loop's job at start-up: /healthz stays green
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - sorted just below
            if not outage.is_outage(exc):
                raise
            delay = outage.failed(exc)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                delay = min(delay, left)
            if stop is not None and stop.wait(delay):
                return False
            if stop is None:
                time.sleep(delay)
            continue
        outage.ok()
        return True
