"""Stage 2: homes for sale in the home's zip code (Zillow search, status ForSale)."""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages.common import Deps
from stages.zip_search import run_search
from workflow.states import Stage

STAGE = Stage.ACTIVE_LISTINGS


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    run_search(task, ctx, deps, STAGE, "for_sale")
