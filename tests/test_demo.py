"""``campaignctl demo`` end to end, as a user runs it, plus its embedded Redis launcher.

The demo is run as a subprocess with a marker variable in its environment;
every process it starts (the embedded Valkey, the sandbox, producer, workers,
recovery) inherits it, so after the demo exits a scan of /proc for the marker
finds any orphan.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from campaignctl.demo import bottleneck, default_time_scale, plan_rates
from campaignctl.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from engine.env import parse_rate
from workflow.states import RESTING, Status

BIN = Path(sys.executable).parent
#: Campaigns in the CI run of the demo.
CAMPAIGNS = 10
#: Time scale of the CI run: zillow's 3 calls × 10 campaigns at 10/min × 30 take about 6 s.
TIME_SCALE = 30


def _processes_with(marker: str) -> list[str]:
    """Live (non-zombie) processes whose environment carries ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                stat = (proc / "stat").read_text()
                if stat.split(")", 1)[1].split()[0] != "Z":
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{proc.name}: {cmdline}")
        except OSError:
            continue
    return found


def _demo_env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "SANDBOX_URL")}
    env["CE_DEMO_TEST_MARKER"] = marker
    return env


def test_demo_runs_ten_campaigns_to_rest_and_leaves_no_process(tmp_path: Path) -> None:
    # Given a fresh folder and a marker every child process inherits
    marker = uuid.uuid4().hex
    workdir = tmp_path / "demo"
    # When the demo runs 10 campaigns
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "campaignctl"), "demo", "--campaigns", str(CAMPAIGNS), "--workers", "2",
         "--time-scale", str(TIME_SCALE), "--dir", str(workdir), "--timeout", "150"],
        env=_demo_env(marker), capture_output=True, text=True, timeout=240,
    )
    print(f"demo of {CAMPAIGNS} campaigns took {time.monotonic() - started:.1f}s")
    print(result.stdout[-3000:])
    # Then it exits 0 with every campaign resting and the summary printed
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "summary" in result.stdout and "achieved / bound" in result.stdout
    # Not a terminal: progress came as plain lines, no Python reprs
    progress = [line for line in result.stdout.splitlines() if " at rest (" in line]
    assert progress and not any("{'" in line or "'}" in line for line in progress), result.stdout[:2000]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"] is True
    assert sum(summary["campaigns"].values()) == CAMPAIGNS
    resting = {s.value for s in RESTING if s is not Status.DORMANT}
    assert sum(n for s, n in summary["campaigns"].items() if s in resting) == CAMPAIGNS, summary
    assert summary["campaigns"]["SENT"] + summary["campaigns"]["ERROR"] == CAMPAIGNS, summary
    assert summary["duplicate_recipients"] == 0
    assert summary["emails_sent"] == summary["campaigns"]["SENT"]
    assert Path(summary["logs"]).is_dir() and (Path(summary["logs"]) / "worker-1.log").exists()
    print(f"ratio achieved/bound {summary['ratio']}, 429s {summary['throttled']}")
    # And nothing it started is still running
    assert _processes_with(marker) == []


def test_demo_stops_everything_on_sigint(tmp_path: Path) -> None:
    # Given a demo that would run for a long time
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        [str(BIN / "campaignctl"), "demo", "--campaigns", "50", "--workers", "1", "--time-scale", "1",
         "--dir", str(tmp_path / "demo")],
        env=_demo_env(marker), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # a group of its own, like a terminal's foreground job
    )
    # When Ctrl-C reaches it once its services run
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "demo" / "logs" / "recovery.log").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, _ = proc.communicate(timeout=60)
    # Then it exits 130 and leaves no process behind
    assert proc.returncode == 130, out
    assert _processes_with(marker) == [], out


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run([str(BIN / "campaignctl"), "demo", "--dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "not made by the demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_default_time_scale_and_bound_follow_the_slowest_provider() -> None:
    rates = plan_rates({})
    assert parse_rate("10/min") == pytest.approx(10 / 60) and parse_rate("1/s") == 1.0
    name, per_second = bottleneck(rates, 6.0)
    # zillow: 10/min × 6 = 1 call/s, 3 calls per campaign
    assert name == "zillow" and per_second == pytest.approx(1 / 3)
    scale = default_time_scale(20, rates)
    print(f"default time scale for 20 campaigns: ×{scale}")
    assert 20 / bottleneck(rates, scale)[1] <= 60


def test_embedded_redis_persists_locks_its_folder_and_stops(tmp_path: Path) -> None:
    # Given an embedded server on a folder
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = server.client()
        assert server.url.startswith("unix://")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.set("k", "v")
        pid = int(client.info("server")["process_id"])
        # When a second launcher wants the same folder, then it is refused
        with pytest.raises(EmbeddedRedisError, match="in use"):
            EmbeddedRedis(tmp_path / "redis").start()
        client.close()
    finally:
        server.stop()
    # Then the server is gone, and a restart on the folder finds the data again (AOF)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with EmbeddedRedis(tmp_path / "redis") as again:
        assert again.client().get("k") == "v"


def test_embedded_redis_stops_a_server_left_by_a_killed_owner(tmp_path: Path) -> None:
    # Given an owner process SIGKILLed while its server runs
    script = (
        "import os, sys; from campaignctl.embedded_redis import EmbeddedRedis; "
        "s = EmbeddedRedis(sys.argv[1]).start(); c = s.client(); c.set('k', 'v'); "
        "print(c.info('server')['process_id'], flush=True); os.kill(os.getpid(), 9)"
    )
    owner = subprocess.run([sys.executable, "-c", script, str(tmp_path / "redis")], capture_output=True, text=True,
                           timeout=30)
    leftover = int(owner.stdout.strip())
    try:
        os.kill(leftover, 0)  # it outlived its owner
        # When a new launcher starts on the folder
        with EmbeddedRedis(tmp_path / "redis") as server:
            # Then the leftover was stopped first and the data is there
            assert int(server.client().info("server")["process_id"]) != leftover
            assert server.client().get("k") == "v"
        assert not Path(f"/proc/{leftover}").exists() or "Z" in Path(f"/proc/{leftover}/stat").read_text().split(")")[1][:3]
    finally:
        try:
            os.kill(leftover, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_demo_serves_the_dashboard_during_the_run(tmp_path: Path) -> None:
    # Given a small demo with --dashboard
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        [str(BIN / "campaignctl"), "demo", "--campaigns", "3", "--workers", "1", "--time-scale", str(TIME_SCALE),
         "--dir", str(tmp_path / "demo"), "--timeout", "150", "--dashboard"],
        env={**_demo_env(marker), "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # When it prints the dashboard's address
        assert proc.stdout is not None
        address = None
        for line in proc.stdout:
            match = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/)", line)
            if match:
                address = match.group(1)
                break
        assert address, "the demo printed no dashboard address"
        # Then the dashboard answers while the demo runs, and the demo still ends as usual
        page = requests.get(address, timeout=10)
        assert page.status_code == 200 and "Campaigns" in page.text
        assert requests.get(f"{address}review", timeout=10).status_code == 200
        rest = proc.communicate(timeout=240)[0]
        assert proc.returncode == 0, rest[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _processes_with(marker) == []


def test_progress_panel_and_plain_line() -> None:
    from rich.console import Console

    from campaignctl.demo import DemoOptions, Observation, plan_rates, progress_line, render_progress

    obs = Observation(elapsed=15.5, campaigns={"PROCESSING": 18, "SENT": 2}, stages={"property_data": 18},
                      calls={"zillow": 18}, throttled={"zillow": 1}, emails={}, queues=None)
    opts = DemoOptions(campaigns=20, workers=2, concurrency=4, auto_approve=True, time_scale=30,
                       workdir=Path("/tmp/unused"), keep=False, timeout=None, faults=None, json_summary=False)
    rates = plan_rates({})
    line = progress_line(obs, opts, 30, rates)
    assert line.startswith("[  15.5s] 2/20 at rest (10%), ETA ") and "PROCESSING 18, SENT 2" in line
    assert "zillow 18/" in line and "1 x 429" in line and "{" not in line
    console = Console(width=140, record=True)
    console.print(render_progress(obs, opts, 30, rates))
    text = console.export_text()
    assert "campaigns at rest" in text and "2/20" in text and "ETA" in text
    assert "zillow" in text and "5/s" in text and "18/" in text
