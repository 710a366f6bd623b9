"""Small builders shared by the workflow and CLI tests."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine

from workflow.seed import fake_campaigns, insert_campaigns
from workflow.states import PIPELINE
from workflow.store import CampaignStore, Expect

#: Triggers that take a fresh campaign from DORMANT to READY_FOR_REVIEW.
TO_REVIEW: tuple[str, ...] = ("start",) + ("advance",) * len(PIPELINE)


def new_campaigns(engine: Engine, count: int = 1, *, due_in: float = 0.0, seed: int = 0) -> list[int]:
    """Insert ``count`` DORMANT campaigns and return their ids."""
    return insert_campaigns(engine, fake_campaigns(count, seed=seed), due_in=due_in)


def drive(store: CampaignStore, cid: int, triggers: Iterable[str]) -> None:
    """Apply triggers one by one, each expected to be legal and applied."""
    for trigger in triggers:
        snap = store.get(cid)
        assert snap is not None
        out = store.apply(cid, trigger, expect=Expect(snap.campaign_status, snap.processing_stage, snap.version))
        assert out.applied, out.message
