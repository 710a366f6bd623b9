"""Stage test fixtures: the simulated providers as a real HTTP server, a task context on real Redis.

The sandbox runs as ``campaignctl sandbox`` (its public interface) in a child
process, so these tests depend only on the contract: real paths, and the
control endpoints /_sandbox/stats, /_sandbox/calls, /_sandbox/reset,
/_sandbox/faults.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from campaignctl.limits import rate_limits
from engine.context import TaskContext
from engine.queue import TaskQueue
from engine.ratelimit import RateLimiter
from engine.settings import EngineSettings
from engine.task import Task
from stages.common import Deps, Providers
from stages.settings import ProviderSettings
from tests.servers import free_port, stop_process
from workflow.states import TASK_TYPES

ROOT = Path(__file__).resolve().parents[2]
#: Seconds to wait for a child server to answer.
START_TIMEOUT = 20.0


class Sandbox:
    """A ``campaignctl sandbox`` child process and its control endpoints."""

    def __init__(self, time_scale: float = 1.0, faults: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.time_scale = time_scale
        args = [sys.executable, "-m", "campaignctl", "sandbox", "--port", str(self.port),
                "--time-scale", f"{time_scale:g}"]
        if faults:
            args += ["--faults", faults]
        self.log = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/_sandbox/stats", timeout=1).raise_for_status()
                return
            except requests.RequestException:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the sandbox did not start on {self.url}")

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_sandbox/stats", timeout=10).json()

    def calls(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.url}/_sandbox/calls", timeout=10).json()["calls"]

    def reset(self) -> None:
        requests.post(f"{self.url}/_sandbox/reset", timeout=10).raise_for_status()

    def faults(self, spec: str) -> None:
        requests.post(f"{self.url}/_sandbox/faults", json={"faults": spec}, timeout=10).raise_for_status()

    def fresh(self) -> Sandbox:
        """No faults, no counts, full buckets: what each test starts from on a shared session sandbox."""
        self.faults("")
        self.reset()
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def serve(time_scale: float) -> Iterator[Sandbox]:
    """For a fixture (``yield from``): a sandbox child at ``time_scale``, stopped afterwards."""
    server = Sandbox(time_scale=time_scale)
    try:
        yield server
    finally:
        server.stop()


#: Time scale of the sandbox the stage tests use (the engine's RATE_SCALE matches it).
FAST_SCALE = 100.0


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Sandbox]:
    """A sandbox at time scale 1 for the client tests (429s are easy to provoke); reset by ``sandbox``."""
    yield from serve(1.0)


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    return sandbox_server.fresh()


@pytest.fixture(scope="session")
def fast_sandbox_server() -> Iterator[Sandbox]:
    """A sandbox at FAST_SCALE for the stage tests, which run whole pipelines."""
    yield from serve(FAST_SCALE)


@pytest.fixture
def fast_sandbox(fast_sandbox_server: Sandbox) -> Sandbox:
    return fast_sandbox_server.fresh()


class NoGate:
    """For client tests that exercise one provider alone: no shared limiter."""

    def __init__(self) -> None:
        self.paused: dict[str, float] = {}

    def acquire(self, api: str) -> None:
        pass

    def pause(self, api: str, seconds: float) -> None:
        self.paused[api] = seconds


def provider_settings(url: str, **extra: str) -> ProviderSettings:
    return ProviderSettings.from_env({"SANDBOX_URL": url, **extra})


@pytest.fixture
def engine_settings(redis_url: str, key_prefix: str) -> EngineSettings:
    return EngineSettings.from_env({"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix, "MAX_TOKEN_SLEEP": "2",
                                    "RATE_SCALE": f"{FAST_SCALE:g}"})


class Harness:
    """A real queue, limiter and store, and the stage dependencies, for calling handlers directly."""

    def __init__(self, store: Any, client: redis.Redis, settings: EngineSettings, sandbox: Sandbox,
                 **env: str) -> None:
        self.store = store
        self.redis = client
        self.settings = settings
        self.queue = TaskQueue(client, settings, TASK_TYPES)
        self.limiter = RateLimiter(client, settings, rate_limits({}))
        self.limiter.prime()  # a fleet starting from nothing, as its first worker would
        self.provider_settings = provider_settings(sandbox.url, RATE_SCALE=f"{settings.rate_scale:g}", **env)
        self.deps = Deps(store=store, settings=self.provider_settings,
                         providers=Providers(self.provider_settings), max_token_sleep=settings.max_token_sleep)

    def run(self, task_type: str, campaign_id: int) -> Task:
        """Run one task of ``task_type`` for the campaign through its handler, as a worker would call it."""
        return self.run_task(Task.new(task_type, campaign_id))

    def run_task(self, task: Task, ctx: Any = None, deps: Deps | None = None) -> Task:
        """Run ``task`` through its handler (with ``ctx`` and ``deps`` when given)."""
        from stages.handlers import build_handlers

        handler, _policy = build_handlers(None, deps=deps or self.deps)[task.task_type]
        handler(task, ctx or self.ctx(task))
        return task

    def ctx(self, task: Task) -> TaskContext:
        return TaskContext(task, "test-worker", queue=self.queue, limiter=self.limiter,
                           max_token_sleep=self.settings.max_token_sleep)
