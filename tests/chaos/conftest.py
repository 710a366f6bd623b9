"""Chaos-suite options and the suite's own PostgreSQL server.

``--chaos-replay=<string>`` (or CHAOS_REPLAY) runs exactly one schedule: the
string a failing run printed, or the schedule as JSON. CHAOS_EXAMPLES raises
the number of generated schedules (CI keeps the default small), CHAOS_SEED
fixes hypothesis' seed, CHAOS_TIME_SCALE sets the providers' time scale.

The suite starts its own PostgreSQL (not the session one other tests use)
because its schedules restart it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chaos.schedule import Schedule
from tests.servers import PostgresServer, ServerUnavailable


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos")
    group.addoption(
        "--chaos-replay",
        action="store",
        default=os.environ.get("CHAOS_REPLAY", ""),
        help="run only this fault schedule (the replay string a failing chaos run printed, or JSON)",
    )


@pytest.fixture
def chaos_replay(request: pytest.FixtureRequest) -> Schedule | None:
    raw = request.config.getoption("--chaos-replay", default="")
    return Schedule.from_replay(raw) if raw else None


@pytest.fixture(scope="session")
def chaos_pg() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer().start()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.cleanup()
