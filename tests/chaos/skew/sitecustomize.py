"""Loaded by a chaos worker started with this folder on PYTHONPATH: its wall clock is off.

faketime is not available, so the skew is applied where Python reads the wall
clock for the engine: ``time.time``/``time.time_ns`` return the real time plus
CHAOS_CLOCK_SKEW seconds. The engine must not care: leases, liveness and rate
limits are decided by Redis ``TIME`` inside Lua, and the process's own clock
only stamps informational fields (enqueued_at, the worker registry entry).
Database timestamps come from ``datetime.now`` and are deliberately left
alone (see docs/reliability.md).
"""

import os
import time

_skew = float(os.environ.get("CHAOS_CLOCK_SKEW", "0") or 0)
if _skew:
    _real_time, _real_time_ns = time.time, time.time_ns
    time.time = lambda: _real_time() + _skew  # type: ignore[assignment]
    time.time_ns = lambda: _real_time_ns() + int(_skew * 1e9)  # type: ignore[assignment]
