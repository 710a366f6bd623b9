"""The producer loop: asks the application for due work and enqueues it.

The source (the app passes one that calls ``store.start_due``) moves due
campaigns to PROCESSING with a compare-and-set, so several producers never
start a campaign twice. Redis is checked first, so no campaign is started
while it is unreachable; if a producer dies (or Redis goes) between the
database update and the enqueue, recovery's reconcile finds the campaign
stalled and enqueues it. A pass that fails (Redis or the database down) is retried with backoff by
engine.loop.ServiceLoop; the process never exits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from engine import metrics
from engine.errors import OutageTest
from engine.loop import ServiceLoop, StopFlag
from engine.queue import TaskQueue
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

#: ``source(limit) -> [(task_type, campaign_id[, run_id])]``: work that became due, already marked started.
ProducerSource = Callable[[int], list[tuple[Any, ...]]]


class Producer(ServiceLoop):
    """Every PRODUCER_INTERVAL, enqueue the first task of everything ``source`` says is due.

    ``is_outage`` tells the loop which of the source's exceptions mean "the
    database is down" (they are logged as one warning line instead of a
    traceback; every failed pass is retried either way).
    """

    name = "producer"

    def __init__(self, queue: TaskQueue, settings: EngineSettings, source: ProducerSource, *,
                 is_outage: OutageTest | None = None, stop: StopFlag | None = None,
                 backlog_types: Sequence[str] = (), max_backlog: int = 0) -> None:
        super().__init__(settings.producer_interval, backoff_max=settings.outage_backoff_max, is_outage=is_outage,
                         stop=stop)
        self.queue = queue
        self.settings = settings
        self.source = source
        #: Backpressure: no new work while these queues (ready + delayed) hold ``max_backlog`` or more (0: off).
        self.backlog_types = tuple(backlog_types)
        self.max_backlog = max_backlog
        self._held_back = False

    def run_once(self) -> int:
        """Start what is due, batch by batch, while the first queue has room; returns how many tasks were enqueued."""
        total = 0
        batch = max(1, self.settings.producer_batch)
        while not self.stopping:
            # Redis must answer BEFORE campaigns are marked started: while it is down, a pass would move a
            # batch to PROCESSING with no task each time (reconcile would mend it, but only after STALL_THRESHOLD).
            self.queue.redis.ping()
            limit = min(batch, self._room())
            if limit <= 0:
                break
            items = self.source(limit)
            metrics.campaigns_started(len(items))
            if items:
                total += sum(1 for t in self.queue.enqueue_many(items) if t is not None)
            if len(items) < limit:
                break
        return total

    def _room(self) -> int:
        """How many more tasks the first queue takes before the backlog limit (a large number without one).

        Starting campaigns the first provider cannot serve for hours only
        makes them wait in Redis (memory, and a longer drain after an
        incident) with nothing gained: they stay DORMANT, due, and are
        started as the queue drains, oldest due first.
        """
        if self.max_backlog <= 0 or not self.backlog_types:
            return 1 << 62
        room = self.max_backlog - self.queue.pending(self.backlog_types)
        if room <= 0 and not self._held_back:
            log.info("producer: %s holds %d or more tasks (PRODUCER_MAX_BACKLOG); starting no more until it drains",
                     ",".join(self.backlog_types), self.max_backlog)
        self._held_back = room <= 0
        return room

    def report(self, result: int) -> None:
        if result:
            log.info("producer: enqueued %d task(s)", result)
