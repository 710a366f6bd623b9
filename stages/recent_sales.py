"""Stage 3: recent sales in the home's zip code (Zillow search, status RecentlySold)."""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages.common import Deps, begin, complete, with_fallback, zip_of
from workflow.states import Stage

STAGE = Stage.RECENT_SALES


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    snap = begin(task, deps)
    if snap is None:
        return
    zip_code = zip_of(deps, snap)
    sales = with_fallback(ctx, deps, lambda client: client.search(ctx, zip_code, "recently_sold"))
    complete(task, ctx, deps, snap, STAGE, sales | {"zip_code": zip_code})
