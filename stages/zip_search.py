"""The body of the two Zillow zip-code search stages (active listings, recent sales).

Both stages search the home's zip code through the same Zillow fallback chain
and store the rows with the zip they searched; only the listing status
differs. One body keeps them from drifting apart (a field added to one stage
result and not the other, a fallback rule fixed in one place only).
"""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages.common import Deps, begin, complete, with_fallback, zip_of
from workflow.states import Stage


def run_search(task: Task, ctx: Any, deps: Deps, stage: Stage, status: str) -> None:
    """Search the campaign home's zip for ``status`` ("for_sale" or "recently_sold") and complete ``stage``."""
    snap = begin(task, deps)
    if snap is None:
        return
    zip_code = zip_of(deps, snap)
    result = with_fallback(ctx, deps, lambda client: client.search(ctx, zip_code, status))
    complete(task, ctx, deps, snap, stage, result | {"zip_code": zip_code})
