"""The machine's edges (SPEC §3) and the legacy column mapping, without a database."""

from __future__ import annotations

import pytest

from workflow import machine
from workflow.legacy import LEGACY_COLUMNS, legacy_columns, position_from_legacy
from workflow.machine import IllegalTransition, edges, fire, state_name
from workflow.states import PIPELINE, TASK_TYPES, Stage, Status, expected_position, task_type_for


def test_the_pipeline_runs_stage_by_stage_to_review() -> None:
    pos = fire(Status.DORMANT, Stage.IDLE, "start")
    seen = [pos]
    while pos[0] is Status.PROCESSING:
        pos = fire(*pos, "advance")
        seen.append(pos)
    assert seen == [(Status.PROCESSING, s) for s in PIPELINE] + [(Status.READY_FOR_REVIEW, Stage.IDLE)]


@pytest.mark.parametrize(
    ("source", "trigger", "dest"),
    [
        ("READY_FOR_REVIEW", "approve", "READY_TO_SEND"),
        ("READY_TO_SEND", "mark_sent", "SENT"),
        ("READY_TO_SEND", "mark_send_unknown", "SEND_OUTCOME_UNKNOWN"),
        ("SEND_OUTCOME_UNKNOWN", "resolve_sent", "SENT"),
        ("SEND_OUTCOME_UNKNOWN", "resolve_not_sent", "READY_TO_SEND"),
        ("READY_TO_SEND", "fail", "ERROR"),
        ("ERROR", "retry", "READY_TO_SEND"),
        ("SENT", "rearm", "DORMANT"),
        ("PROCESSING:market_data", "fail", "ERROR:market_data"),
        ("ERROR:market_data", "retry", "PROCESSING:market_data"),
    ],
)
def test_spec_edges(source: str, trigger: str, dest: str) -> None:
    assert fire(*machine.position(source), trigger) == machine.position(dest)
    assert (source, trigger, dest) in edges()


def test_every_state_but_unsubscribed_can_unsubscribe_and_nothing_leaves_it() -> None:
    for name in machine.STATES:
        if name == "UNSUBSCRIBED":
            continue
        assert fire(*machine.position(name), "unsubscribe") == (Status.UNSUBSCRIBED, Stage.IDLE)
    assert [e for e in edges() if e[0] == "UNSUBSCRIBED"] == []


@pytest.mark.parametrize("trigger", ["approve", "advance", "retry", "mark_sent", "rearm", "no_such_trigger"])
def test_illegal_triggers_raise_with_a_one_line_reason(trigger: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        fire(Status.DORMANT, Stage.IDLE, trigger)
    assert str(info.value) == f"cannot {trigger} a campaign that is DORMANT"


def test_no_auto_transitions() -> None:
    assert not any(t.startswith("to_") for _, t, _ in edges())


def test_check_history_flags_non_edges() -> None:
    assert machine.check_history([("DORMANT", "PROCESSING:property_data")]) == []
    assert machine.check_history([("DORMANT", "SENT")]) == [("DORMANT", "SENT")]


def test_mermaid_draws_every_edge() -> None:
    text = machine.mermaid()
    assert text.startswith("stateDiagram-v2\n")
    for source, trigger, dest in edges():
        assert f"{source.replace(':', '__')} --> {dest.replace(':', '__')}: {trigger}" in text
    assert "unsubscribe" not in machine.mermaid(include_unsubscribe=False)


def test_task_types_match_positions() -> None:
    for task_type in TASK_TYPES:
        assert task_type_for(*expected_position(task_type)) == task_type
    assert task_type_for(Status.READY_FOR_REVIEW, Stage.IDLE) is None


@pytest.mark.parametrize("name", machine.STATES)
def test_legacy_columns_round_trip_for_every_state(name: str) -> None:
    status, stage = machine.position(name)
    cols = legacy_columns(status, stage)
    assert set(cols) <= set(LEGACY_COLUMNS)
    assert position_from_legacy(cols) == (status, stage)


def test_unsubscribed_only_sets_the_flag() -> None:
    assert legacy_columns(Status.UNSUBSCRIBED, Stage.IDLE) == {"is_unsubscribed": True}


def test_state_names() -> None:
    assert state_name(Status.PROCESSING, Stage.MARKET_DATA) == "PROCESSING:market_data"
    assert state_name("SENT", "idle") == "SENT"


def test_the_diagram_in_docs_is_the_machine() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "workflow.md").read_text()
    block = doc.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block == machine.mermaid(include_unsubscribe=False)
