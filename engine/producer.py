"""The producer loop: asks the application for due work and enqueues it.

The source (the app passes one that calls ``store.start_due``) moves due
campaigns to PROCESSING with a compare-and-set, so several producers never
start a campaign twice. If a producer dies between the database update and
the enqueue, recovery's reconcile finds the campaign stalled and enqueues it.
A pass that fails (Redis or the database down) is retried with backoff by
engine.loop.ServiceLoop; the process never exits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from engine import metrics
from engine.errors import OutageTest
from engine.loop import ServiceLoop, StopFlag
from engine.queue import TaskQueue
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: ``source(limit) -> [(task_type, campaign_id)]``: work that became due, already marked started.
ProducerSource = Callable[[int], list[tuple[str, int]]]


class Producer(ServiceLoop):
    """Every PRODUCER_INTERVAL, enqueue the first task of everything ``source`` says is due.

    ``is_outage`` tells the loop which of the source's exceptions mean "the
    database is down" (they are logged as one warning line instead of a
    traceback; every failed pass is retried either way).
    """

    name = "producer"

    def __init__(self, queue: TaskQueue, settings: EngineSettings, source: ProducerSource, *,
                 is_outage: OutageTest | None = None, stop: StopFlag | None = None) -> None:
        super().__init__(settings.producer_interval, backoff_max=settings.outage_backoff_max, is_outage=is_outage,
                         stop=stop)
        self.queue = queue
        self.settings = settings
        self.source = source

    def run_once(self) -> int:
        """Drain everything due now, batch by batch; returns how many tasks were enqueued."""
        total = 0
        batch = max(1, self.settings.producer_batch)
        while not self.stopping:
            items = self.source(batch)
            metrics.campaigns_started(len(items))
            if items:
                total += sum(1 for t in self.queue.enqueue_many(items) if t is not None)
            if len(items) < batch:
                break
        return total

    def report(self, result: int) -> None:
        if result:
            log.info("producer: enqueued %d task(s)", result)
