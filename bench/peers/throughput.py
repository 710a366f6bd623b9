"""No-op task throughput of the peer queues, one function per contender.

Every contender gets the same treatment on the same redis-server (database
flushed in between): enqueue ``n`` no-op tasks one by one from this process
with the library's ordinary enqueue call (timed: enqueue/s), then start two
worker processes and time the drain of the backlog while they work
(processed/s). The drain is timed from the moment the first 5 % of the
backlog is gone (workers started and warm) until 95 % is gone or ``cap``
seconds passed, by polling the library's own Redis keys — so worker start-up
and the tail are excluded for everyone alike, and no contender pays an extra
round trip per task for being counted.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from bench import common

#: Fraction of the backlog that must be gone before the drain clock starts (warm-up).
WARM_FRACTION = 0.05
#: Fraction of the backlog still left when the drain clock stops (the tail is not timed).
TAIL_FRACTION = 0.05
#: Poll period of the backlog counter, in s.
POLL = 0.005
#: Longest wait for the workers to start draining, in s.
START_TIMEOUT = 60.0


@dataclass
class Figures:
    name: str
    enqueued: int
    enqueue_per_s: float
    processed_per_s: float
    note: str = ""
    #: CPU time of the worker processes (and their children) per task drained, in µs.
    worker_cpu_us: float = float("nan")
    #: CPU time of redis-server per task drained, in µs.
    redis_cpu_us: float = float("nan")

    @classmethod
    def of(cls, name: str, n: int, enqueue_per_s: float, drain: Drain, note: str = "") -> Figures:
        return cls(name, n, enqueue_per_s, drain.rate, note, drain.worker_cpu_us, drain.redis_cpu_us)


@dataclass
class Drain:
    #: Tasks per second over the timed part of the drain.
    rate: float
    #: Tasks drained in the timed part.
    done: int
    worker_cpu_us: float = float("nan")
    redis_cpu_us: float = float("nan")

    def __iter__(self):  # type: ignore[no-untyped-def]
        # ``rate, done = measure_drain(...)`` keeps working.
        return iter((self.rate, self.done))


def _redis_cpu(client: redis.Redis | None) -> float:
    if client is None:
        return float("nan")
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_drain(
    count_left: Callable[[], int], n: int, cap: float, *, label: str,
    procs: Sequence[subprocess.Popen] = (), client: redis.Redis | None = None,
    redis_cpu: Callable[[], float] | None = None,
) -> Drain:
    """Time the drain of an ``n``-task backlog.

    With ``procs`` (the worker processes, each leading its process group) and
    ``client`` (any client of the server), also the CPU the workers and the
    server spent per task over the same timed part: unlike tasks/s, CPU per
    task hardly moves when other work shares the machine. ``redis_cpu``
    (CPU seconds of every server process, e.g. all nodes of a cluster) stands
    in for ``client``'s INFO cpu; it is called once at each end of the timed part.
    """
    server_cpu = redis_cpu or (lambda: _redis_cpu(client))
    groups = [p.pid for p in procs]
    warm_mark = n - max(1, int(n * WARM_FRACTION))
    tail_mark = int(n * TAIL_FRACTION)
    deadline = time.monotonic() + START_TIMEOUT
    left = count_left()
    while left > warm_mark:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: workers did not start draining within {START_TIMEOUT:.0f} s")
        time.sleep(POLL)
        left = count_left()
    cpu0, rcpu0 = common.group_cpu(groups), server_cpu()
    t0, left0 = time.perf_counter(), left
    stop = t0 + cap
    while left > tail_mark and time.perf_counter() < stop:
        time.sleep(POLL)
        left = count_left()
    elapsed = time.perf_counter() - t0
    cpu1, rcpu1 = common.group_cpu(groups), server_cpu()
    done = left0 - left
    per = lambda a, b: (b - a) / done * 1e6 if done > 0 else float("nan")  # noqa: E731
    return Drain(done / elapsed if elapsed > 0 else float("nan"), done,
                 per(cpu0, cpu1) if groups else float("nan"), per(rcpu0, rcpu1))


def _timed_enqueue(n: int, enqueue_one: Callable[[int], object]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        enqueue_one(i)
    return n / (time.perf_counter() - t0)


def _workers(cmds: list[list[str]], url: str, extra_env: dict[str, str] | None = None) -> list:
    env = {"BENCH_REDIS_URL": url, **(extra_env or {})}
    return [common.spawn(cmd, env=env) for cmd in cmds]


def _stop_all(procs: list) -> None:
    for p in procs:
        common.stop_process(p, grace=3)


# --- Celery ----------------------------------------------------------------------------------


def run_celery(url: str, n: int, cap: float) -> Figures:
    """Celery, Redis broker, one worker with the prefork pool of 2 (its default model)."""
    import os

    os.environ["BENCH_REDIS_URL"] = url
    from bench.peers import celery_app

    celery_app.app.conf.broker_url = url
    r = redis.Redis.from_url(url)
    enq = _timed_enqueue(n, lambda i: celery_app.noop.delay())
    cmd = [
        common.venv_script("celery"), "-A", "bench.peers.celery_app", "worker", "--pool", "prefork",
        "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "WARNING",
    ]
    procs = _workers([cmd], url)
    try:
        drain = measure_drain(lambda: _llen_plus(r, "celery", hash_key="unacked"), n, cap, label="celery",
                              procs=procs, client=r)
    finally:
        _stop_all(procs)
    return Figures.of("Celery (prefork 2)", n, enq, drain)


def _llen_plus(r: redis.Redis, list_key: str, *, hash_key: str | None = None) -> int:
    if hash_key is None:
        return int(r.llen(list_key))
    p = r.pipeline(transaction=False)
    p.llen(list_key)
    p.hlen(hash_key)
    a, b = p.execute()
    return int(a) + int(b)


# --- RQ --------------------------------------------------------------------------------------


def run_rq(url: str, n: int, cap: float, *, simple: bool) -> Figures:
    """RQ with two worker processes: the default forking Worker, or SimpleWorker (no fork per job)."""
    from rq import Queue

    from bench.peers import rq_tasks

    r = redis.Redis.from_url(url)
    q = Queue("default", connection=r)
    # result_ttl=0: no result kept, like every other contender here.
    enq = _timed_enqueue(n, lambda i: q.enqueue(rq_tasks.noop, result_ttl=0))
    cmd = [common.venv_script("rq"), "worker", "--url", url, "--burst", "--quiet", "default"]
    if simple:
        cmd[2:2] = ["--worker-class", "rq.worker.SimpleWorker"]
    procs = _workers([cmd, cmd], url)
    try:
        drain = measure_drain(lambda: _llen_plus(r, "rq:queue:default"), n, cap, label="rq", procs=procs, client=r)
    finally:
        _stop_all(procs)
    name = "RQ SimpleWorker ×2" if simple else "RQ Worker ×2 (fork per job)"
    return Figures.of(name, n, enq, drain)


# --- Dramatiq --------------------------------------------------------------------------------


def run_dramatiq(url: str, n: int, cap: float) -> Figures:
    """Dramatiq, Redis broker, 2 processes with its default 8 threads each."""
    import os

    os.environ["BENCH_REDIS_URL"] = url
    from bench.peers import dramatiq_app

    r = redis.Redis.from_url(url)
    enq = _timed_enqueue(n, lambda i: dramatiq_app.noop.send())
    cmd = [common.venv_script("dramatiq"), "bench.peers.dramatiq_app", "--processes", "2"]
    procs = _workers([cmd], url)
    try:
        # Messages live in this hash until acked, so its size is "not yet processed".
        drain = measure_drain(lambda: int(r.hlen("dramatiq:default.msgs")), n, cap, label="dramatiq",
                              procs=procs, client=r)
    finally:
        _stop_all(procs)
        dramatiq_app.broker.close()
    return Figures.of("Dramatiq (2 proc × 8 threads)", n, enq, drain)


# --- Huey ------------------------------------------------------------------------------------


def run_huey(url: str, n: int, cap: float) -> Figures:
    """Huey, Redis storage, consumer with 2 process workers."""
    import os

    os.environ["BENCH_REDIS_URL"] = url
    from bench.peers import huey_app

    r = redis.Redis.from_url(url)
    enq = _timed_enqueue(n, lambda i: huey_app.noop())
    cmd = [
        common.venv_script("huey_consumer"), "bench.peers.huey_app.huey", "-k", "process", "-w", "2",
        "--no-periodic", "--quiet",
    ]
    procs = _workers([cmd], url)
    try:
        drain = measure_drain(lambda: int(r.llen("huey.redis.bench")), n, cap, label="huey", procs=procs, client=r)
    finally:
        _stop_all(procs)
    return Figures.of("Huey (2 processes)", n, enq, drain)


# --- arq -------------------------------------------------------------------------------------


def run_arq(url: str, n: int, cap: float, *, tuned: bool = False) -> Figures:
    """arq (asyncio), two worker processes.

    With its defaults (10 jobs at once, queue polled every 0.5 s) arq is bound
    by its poll delay; ``tuned`` gives it 100 jobs and a 0.05 s poll so the
    comparison is not won on a default.
    """
    try:
        from arq.connections import RedisSettings, create_pool
    except ImportError:
        return Figures("arq", 0, float("nan"), float("nan"), "not installed: pip install --no-deps arq==0.28.0")

    async def enqueue_all() -> float:
        pool = await create_pool(RedisSettings.from_dsn(url))
        t0 = time.perf_counter()
        for _ in range(n):
            await pool.enqueue_job("noop")
        rate = n / (time.perf_counter() - t0)
        await pool.aclose()
        return rate

    enq = asyncio.run(enqueue_all())
    r = redis.Redis.from_url(url)
    cmd = [common.venv_script("arq"), "bench.peers.arq_app.WorkerSettings"]
    env = {"BENCH_ARQ_BURST": "1"}
    if tuned:
        env |= {"BENCH_ARQ_MAX_JOBS": "100", "BENCH_ARQ_POLL_DELAY": "0.05"}
    procs = _workers([cmd, cmd], url, env)
    try:
        # A job leaves arq's queue zset only when it has finished.
        drain = measure_drain(lambda: int(r.zcard("arq:queue")), n, cap, label="arq", procs=procs, client=r)
    finally:
        _stop_all(procs)
    name = "arq ×2 (100 jobs, 0.05 s poll)" if tuned else "arq ×2 (defaults)"
    return Figures.of(name, n, enq, drain)


#: name -> contender(url, n, cap); the order they run in.
PEERS: dict[str, Callable[[str, int, float], Figures]] = {
    "celery": run_celery,
    "rq": lambda url, n, cap: run_rq(url, n, cap, simple=False),
    "rq-simple": lambda url, n, cap: run_rq(url, n, cap, simple=True),
    "dramatiq": run_dramatiq,
    "huey": run_huey,
    "arq": run_arq,
    "arq-tuned": lambda url, n, cap: run_arq(url, n, cap, tuned=True),
}
