"""Stage 2: homes for sale in the home's zip code (Zillow search, status ForSale)."""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages.common import Deps, begin, complete, with_fallback, zip_of
from workflow.states import Stage

STAGE = Stage.ACTIVE_LISTINGS


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    snap = begin(task, deps)
    if snap is None:
        return
    zip_code = zip_of(deps, snap)
    listings = with_fallback(ctx, deps, lambda client: client.search(ctx, zip_code, "for_sale"))
    complete(task, ctx, deps, snap, STAGE, listings | {"zip_code": zip_code})
