"""Stage 4: market statistics for the zip code and a value estimate (RentCast /markets, /avm/value).

A 404 from RentCast means "no data for this zip/address": the stage stores
None for that part and carries on (the analysis says "not available") rather
than failing the whole run.
"""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages.clients.rentcast import NotFound
from stages.common import Deps, begin, complete, zip_of
from workflow.states import Stage

STAGE = Stage.MARKET_DATA


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    snap = begin(task, deps)
    if snap is None:
        return
    client = deps.providers.rentcast
    zip_code = zip_of(deps, snap)
    notes: list[str] = []
    market: dict[str, Any] | None = None
    value: dict[str, Any] | None = None
    try:
        market = client.markets(ctx, zip_code)
    except NotFound as exc:
        notes.append(str(exc))
    try:
        value = client.value(ctx, snap.address)
    except NotFound as exc:
        notes.append(str(exc))
    complete(task, ctx, deps, snap, STAGE, {"zip_code": zip_code, "market": market, "value": value, "notes": notes})
