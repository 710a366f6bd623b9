"""Stage 1: the home's facts from Zillow (zillow-com1 /property, zillow56 /search_address as fallback)."""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages.common import Deps, begin, complete, with_fallback
from workflow.states import Stage

STAGE = Stage.PROPERTY_DATA


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    snap = begin(task, deps)
    if snap is None:
        return
    facts = with_fallback(ctx, deps, lambda client: client.property_by_address(ctx, snap.address))
    complete(task, ctx, deps, snap, STAGE, facts)
