"""The payload's hand-built JSON is exactly json.dumps' compact form, for any task."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from engine.task import Task


@given(task_id=st.text(min_size=1, max_size=64), campaign_id=st.integers(1, 2**62),
       task_type=st.text(min_size=1, max_size=30), retry_count=st.integers(0, 100),
       enqueued_at=st.floats(0, 4e9, allow_nan=False), lease_losses=st.integers(0, 10),
       run_id=st.none() | st.integers(0, 2**31))
def test_to_json_is_json_dumps_compact(task_id: str, campaign_id: int, task_type: str, retry_count: int,
                                       enqueued_at: float, lease_losses: int, run_id: int | None) -> None:
    task = Task(task_id, campaign_id, task_type, retry_count, enqueued_at, lease_losses, run_id)
    fields: dict = {"task_id": task_id, "campaign_id": campaign_id, "task_type": task_type,
                    "retry_count": retry_count, "enqueued_at": float(enqueued_at)}
    if lease_losses:
        fields["lease_losses"] = lease_losses
    if run_id is not None:
        fields["run_id"] = run_id
    assert task.to_json() == json.dumps(fields, separators=(",", ":"))
    assert Task.from_json(task.to_json()) == task
