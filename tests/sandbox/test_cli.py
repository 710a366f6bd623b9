"""``campaignctl sandbox`` as a process: prints its URL with --port 0, stops on SIGTERM, rejects bad specs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
#: Seconds the child may take to start or stop (a bound, not a timing assert).
BOUND = 20


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "campaignctl", "sandbox", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_port_0_prints_the_url_serves_and_stops_on_sigterm_even_while_hanging() -> None:
    proc = start("--port", "0", "--time-scale", "10", "--faults", "zillow:timeout=1")
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        url = match.group(1)
        health = requests.get(f"{url}/_sandbox/health", timeout=5).json()
        assert health["time_scale"] == 10.0 and health["faults"] == "zillow:timeout=1"

        def hung_call() -> None:
            try:
                requests.get(f"{url}/property", params={"address": "1 Main St, Albany, NY 12207"},
                             headers={"X-RapidAPI-Key": "k", "X-RapidAPI-Host": "zillow-com1.p.rapidapi.com"},
                             timeout=BOUND)
            except requests.RequestException:
                pass

        caller = threading.Thread(target=hung_call, daemon=True)
        caller.start()
        deadline = time.monotonic() + 5
        while not requests.get(f"{url}/_sandbox/calls", timeout=5).json()["calls"] and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0
        print(f"stopped {time.monotonic() - started:.2f}s after SIGTERM with a call hanging")
        caller.join(BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_arguments_exit_2() -> None:
    for args in (["--faults", "zillow:5xx=2"], ["--faults", "nosuch:5xx=0.1"], ["--time-scale", "0"],
                 ["--port", "70000"]):
        proc = start("--port", "0", *args) if "--port" not in args else start(*args)
        _, err = proc.communicate(timeout=BOUND)
        assert proc.returncode == 2, (args, err)
        assert "campaignctl sandbox" in err
