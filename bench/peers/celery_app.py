"""Celery on a Redis broker, results ignored (our engine stores none either).

BENCH_CELERY_ACKS_LATE=1 turns on acks_late with reject-on-worker-lost, the
configuration Celery documents for at-least-once delivery (recovery bench).
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

from bench.peers import probe

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ACKS_LATE = os.environ.get("BENCH_CELERY_ACKS_LATE") == "1"

app = Celery("bench", broker=URL)
app.conf.update(
    task_ignore_result=True,
    task_acks_late=ACKS_LATE,
    task_reject_on_worker_lost=ACKS_LATE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="limited", rate_limit="10/s")
def limited() -> None:
    """Logs its run time; the rate limit is Celery's own, advertised as '10/s'."""
    probe._client(URL).rpush("bench:celery:limited", json.dumps({"pid": os.getpid(), "t": time.time()}))


@app.task(name="hold")
def hold(tag: str) -> None:
    probe.hold(URL, "celery", tag)
