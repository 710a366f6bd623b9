"""The producer loop: asks the application for due work and enqueues it.

The source (the app passes one that calls ``store.start_due``) moves due
campaigns to PROCESSING with a compare-and-set, so several producers never
start a campaign twice. If a producer dies between the database update and
the enqueue, recovery's reconcile finds the campaign stalled and enqueues it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from engine.queue import TaskQueue
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: ``source(limit) -> [(task_type, campaign_id)]``: work that became due, already marked started.
ProducerSource = Callable[[int], list[tuple[str, int]]]


class Producer:
    def __init__(self, queue: TaskQueue, settings: EngineSettings, source: ProducerSource) -> None:
        self.queue = queue
        self.settings = settings
        self.source = source
        self._stop = threading.Event()

    def stop(self) -> None:
        """Safe to call from a signal handler.

        A handler runs in the main thread, maybe while that thread is inside
        ``self._stop.wait()`` holding the event's lock: setting it right there
        would deadlock, so from the main thread the event is set by a thread.
        """
        if threading.current_thread() is threading.main_thread():
            threading.Thread(target=self._stop.set, name="stop", daemon=True).start()
        else:
            self._stop.set()

    def run_once(self) -> int:
        """Drain everything due now, batch by batch; returns how many tasks were enqueued."""
        total = 0
        batch = max(1, self.settings.producer_batch)
        while not self._stop.is_set():
            items = self.source(batch)
            if items:
                total += sum(1 for t in self.queue.enqueue_many(items) if t is not None)
            if len(items) < batch:
                break
        return total

    def run(self, *, once: bool = False) -> int:
        while True:
            try:
                n = self.run_once()
                if n:
                    log.info("producer: enqueued %d task(s)", n)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("producer pass failed, Redis unavailable: %s", exc)
                if once:
                    return 1
            if once or self._stop.wait(self.settings.producer_interval):
                return 0
