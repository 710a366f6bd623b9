"""Chaos-suite options and the suite's own PostgreSQL server.

``--chaos-replay=<string>`` (or CHAOS_REPLAY) runs exactly one schedule: the
string a failing run printed, the schedule as JSON, or the name of a fixed
schedule of test_chaos.py (EVERYTHING, ZOMBIES, BLIPS, ROLLOUT, CLUSTER_FAILOVER). CHAOS_EXAMPLES raises
the number of generated schedules (CI keeps the default small), CHAOS_SEED
fixes hypothesis' seed, CHAOS_TIME_SCALE sets the providers' time scale, CHAOS_REDIS
the Redis shapes generated schedules are drawn on (single, cluster or both).

The suite starts its own PostgreSQL (not the session one other tests use)
because its schedules restart it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chaos.schedule import Schedule
from tests.servers import PostgresServer, serve_or_fail

#: Fixed schedules of test_chaos.py that --chaos-replay accepts by name.
FIXED_SCHEDULES = ("EVERYTHING", "ZOMBIES", "BLIPS", "ROLLOUT", "CLUSTER_FAILOVER")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos")
    group.addoption(
        "--chaos-replay",
        action="store",
        default=os.environ.get("CHAOS_REPLAY", ""),
        help="run only this fault schedule (the replay string a failing chaos run printed, or JSON)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The 1,000-campaign load test runs only with CHAOS_LOAD=1 (~3-4 min on 2 cores, too much for CI on top of the rest).

    It is deselected, not skipped: a run without CHAOS_LOAD never claims it passed.
    """
    if os.environ.get("CHAOS_LOAD", "") in ("1", "true", "yes"):
        return
    keep = [i for i in items if "test_load.py" not in i.nodeid]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if "test_load.py" in i.nodeid])
        items[:] = keep


@pytest.fixture
def chaos_replay(request: pytest.FixtureRequest) -> Schedule | None:
    raw = request.config.getoption("--chaos-replay", default="").strip()
    if raw in FIXED_SCHEDULES:
        from tests.chaos import test_chaos

        return getattr(test_chaos, raw)
    return Schedule.from_replay(raw) if raw else None


@pytest.fixture(scope="session")
def chaos_pg() -> Iterator[PostgresServer]:
    yield from serve_or_fail(PostgresServer)
