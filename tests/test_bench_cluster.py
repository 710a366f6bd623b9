"""Smoke tests of the benchmarks' cluster mode: ``bench.throughput --cluster`` and ``bench.pipeline --cluster``
run end to end at a tiny size, on the servers they start themselves (a redis-server, a 3-master Redis
Cluster with 3 replicas, PostgreSQL for the pipeline). A missing server binary fails them (the benchmark
exits non-zero), never skips them. Timings are not asserted: only that every part ran and the figures and
the headline were printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = re.compile(r"^headline: (?P<what>.+) ratio=(?P<ratio>[0-9.]+)$", re.MULTILINE)


def run_bench(*args: str, timeout: float) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def headline(out: str) -> tuple[str, float]:
    found = HEADLINE.findall(out)
    assert found, f"no headline line in:\n{out[-2000:]}"
    assert out.rstrip().splitlines()[-1].startswith("headline: "), "the headline is the last line"
    what, ratio = found[-1]
    return what, float(ratio)


@pytest.mark.redis
@pytest.mark.slow
def test_throughput_cluster_mode_runs_on_one_node_and_on_a_cluster() -> None:
    out = run_bench("bench.throughput", "--cluster", "--tasks", "600", "--rounds", "1", "--cap", "10",
                    timeout=300)
    what, ratio = headline(out)
    assert what == "engine no-op tasks/s on a 3-master cluster ÷ on one node"
    assert ratio > 0
    # Three types, one per master; 3 masters and 3 replicas; every contender drained.
    assert "over 3 task type(s)" in out and "3 masters + 3 replicas" in out
    for name in ("bare BLMOVE + LREM ×2", "3 types, on one node", "3 types, on 3-master cluster"):
        assert re.search(rf"round 1: .*{re.escape(name)}: enqueue [0-9,]+/s, processed [0-9,]+/s", out), name
    # Memory per queued task, on the node and summed over the cluster's masters: numbers, not n/a.
    row = re.search(r"^\| the same less replication and AOF buffers \(B\)\s*\| ([0-9,.]+)\s*\| ([0-9,.]+)\s*\|$",
                    out, re.MULTILINE)
    assert row, out[-2000:]
    assert all(float(x.replace(",", "")) > 0 for x in row.groups())


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_pipeline_cluster_mode_runs_on_one_node_and_on_a_cluster() -> None:
    out = run_bench("bench.pipeline", "--cluster", "--campaigns", "6", "--workers", "2", timeout=400)
    what, ratio = headline(out)
    assert what.startswith("pipeline efficiency on a 3-master cluster (")
    assert ratio > 0
    for where in ("one node", "3-master cluster"):
        final = re.search(rf"^final on {where} \(round 1\): (\{{.*\}})$", out, re.MULTILINE)
        assert final, f"no final counts on {where}"
        assert "'SENT': 6," in final.group(1), final.group(1)
        assert re.search(rf"^\| {where}\s*\| 1\s*\| 6\s*\|", out, re.MULTILINE), f"no summary row for {where}"
