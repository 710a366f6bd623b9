"""What ``campaignctl demo`` shows while it runs: a live rich panel on a terminal, one plain line otherwise.

The panel answers "how far, how fast, is anything throttled": a progress bar
of campaigns at rest out of the total with elapsed time and ETA, the counts
per status and per stage, and per provider its calls against what its limit
allowed so far (a bar) with its 429s. Off a terminal (CI, a pipe) the same
facts fit one line per interval, without Python reprs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from campaignctl.operations import format_rate
from campaignctl.output import duration
from workflow.states import Status

if TYPE_CHECKING:
    from campaignctl.demo import DemoOptions, Observation, ProviderPlan

#: Width of the provider bars, in characters.
BAR_WIDTH = 24


def eta(obs: Observation, resting: int, expected: float | None) -> float | None:
    """Seconds left: from the pace so far once campaigns rest, else from the expected duration."""
    left = obs.total - resting
    if left <= 0:
        return 0.0
    if resting > 0 and obs.elapsed > 0:
        return left / (resting / obs.elapsed)
    if expected is not None:
        return max(0.0, expected - obs.elapsed)
    return None


def allowed(plan_rate: float, scale: float, elapsed: float) -> float:
    """Calls a provider's limit allowed since the start (one burst token plus rate × time)."""
    return 1 + plan_rate * scale * elapsed


def _moving(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items() if n) or "none"


def plain_line(obs: Observation, *, resting: int, scale: float, rates: Mapping[str, float],
               plans: tuple[ProviderPlan, ...], expected: float | None) -> str:
    """``[  15.5s] 2/20 at rest (10%), ETA 1m10s | PROCESSING 18, SENT 2 | zillow 18 calls (0 429s) …``"""
    share = resting / obs.total * 100 if obs.total else 0.0
    providers = ", ".join(
        f"{p.name} {obs.calls.get(p.name, 0)}/{allowed(rates[p.name], scale, obs.elapsed):.0f}"
        + (f" ({obs.throttled[p.name]} x 429)" if obs.throttled.get(p.name) else "")
        for p in plans if obs.calls.get(p.name) or obs.throttled.get(p.name)
    ) or "no calls yet"
    return (f"[{obs.elapsed:6.1f}s] {resting}/{obs.total} at rest ({share:.0f}%), ETA {duration(eta(obs, resting, expected))}"
            f" | {_moving(obs.campaigns)} | calls/allowed: {providers}")


def panel(obs: Observation, opts: DemoOptions, *, resting: int, scale: float, rates: Mapping[str, float],
          plans: tuple[ProviderPlan, ...], expected: float | None) -> Any:
    """The live panel (a rich renderable)."""
    from rich.columns import Columns
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = max(obs.total, 1)
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        Text("campaigns at rest", style="bold"),
        ProgressBar(total=total, completed=resting, width=40),
        Text(f"{resting}/{obs.total}  {resting / total * 100:3.0f}%"),
        Text(f"elapsed {duration(obs.elapsed)}  ETA {duration(eta(obs, resting, expected))}", style="cyan"),
    )

    statuses = Table(title="by status", title_justify="left", box=None)
    statuses.add_column("status")
    statuses.add_column("n", justify="right")
    for status in Status:
        n = obs.campaigns.get(status.value, 0)
        if n:
            statuses.add_row(status.value, str(n),
                             style="red" if status in (Status.ERROR, Status.SEND_OUTCOME_UNKNOWN) else None)

    stages = Table(title="PROCESSING by stage", title_justify="left", box=None)
    stages.add_column("stage")
    stages.add_column("n", justify="right")
    stages.add_column("queued", justify="right")
    queues = (obs.queues or {}).get("queues", {})
    for stage, n in obs.stages.items():
        q = queues.get(stage, {})
        stages.add_row(stage, str(n), f"{q.get('ready', 0)}+{q.get('in_flight', 0)}" if q else "-")

    providers = Table(title="providers: calls against the limit so far", title_justify="left", box=None)
    providers.add_column("provider")
    providers.add_column("limit", justify="right")
    providers.add_column("used")
    providers.add_column("calls", justify="right")
    providers.add_column("429s", justify="right")
    for p in plans:
        calls = obs.calls.get(p.name, 0)
        cap = allowed(rates[p.name], scale, obs.elapsed)
        throttled = obs.throttled.get(p.name, 0)
        providers.add_row(
            p.name, format_rate(rates[p.name] * scale),
            ProgressBar(total=cap, completed=min(calls, cap), width=BAR_WIDTH),
            f"{calls}/{cap:.0f}", Text(str(throttled), style="bold red" if throttled else "dim"),
        )
    title = (f"campaign-engine demo — {opts.campaigns} campaigns, {opts.workers} workers × {opts.concurrency}, "
             f"time scale ×{scale:g}")
    return Panel(Group(progress, Text(""), Columns([statuses, stages]), Text(""), providers), title=title)
