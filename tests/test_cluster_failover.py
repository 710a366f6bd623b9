"""Services started while a Redis Cluster fails over wait for it, as they wait for a Redis that is not up yet.

A supervisor restarts a worker that died (or a deployment adds one) at any
moment, also while a master is down and its replica not yet promoted. On a
cluster PING answers from any live node, so the start-up wait passed; the
start-up check for the old single-tag layout then read the registry's slot
(every old key shares the tag ``{P}``), hit the dead master and the service
exited 1 ("Redis at ... is unavailable: Error 111 connecting to ..."): a
restarted worker crash-looped until the promotion (the chaos suite's
CLUSTER_FAILOVER, its worker SIGKILLed while the registry's master was down).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.keys import Keys
from tests.servers import RedisClusterServer, serve_or_fail

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")
#: How long the test gives the cluster to promote the replica, in s (node timeout 2 s; ~4 s on loopback).
PROMOTION_WAIT_S = 30.0


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of this test's own: it kills a master (the session's cluster stays whole)."""
    yield from serve_or_fail(RedisClusterServer)


def test_a_service_started_while_the_registrys_master_is_down_waits_for_the_failover(
        own_cluster: RedisClusterServer, tmp_path: Path) -> None:
    # Given a migrated database and a cluster whose registry slot's master is dead (its replica not yet promoted)
    prefix = "startup"
    registry_key = Keys(prefix).workers
    victim = own_cluster.master_of(registry_key)
    entry = next(p for p in own_cluster.ports if p != victim)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "KEY_PREFIX", "LOG_"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=f"redis://127.0.0.1:{entry}/0", REDIS_CLUSTER="true",
               KEY_PREFIX=prefix, DATABASE_URL=f"sqlite:///{tmp_path / 'campaigns.db'}", RECOVERY_INTERVAL="0.5",
               OUTAGE_BACKOFF_MAX="1", PYTHONUNBUFFERED="1")
    done = subprocess.run([CAMPAIGNCTL, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    own_cluster.kill(victim)
    # When recovery starts meanwhile
    log = tmp_path / "recovery.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([CAMPAIGNCTL, "recovery"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PROMOTION_WAIT_S
        while own_cluster.master_of(registry_key) == victim:
            assert proc.poll() is None, f"recovery exited {proc.returncode} during the failover:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.05)
        # Then it waited the failover out and runs on once the replica serves the slot
        time.sleep(3.0)
        assert proc.poll() is None, f"recovery exited {proc.returncode}:\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log.read_text()
