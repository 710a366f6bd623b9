"""The campaign state machine, defined once with ``transitions``.

A machine state is one (campaign_status, processing_stage) position, named
``STATUS`` when the stage is idle and ``STATUS:stage`` otherwise, so every
history row can be checked against the machine's edges exactly. The machine is
built once per process; callers attach a throw-away model for one trigger
(see NOTES.md: building a machine per object costs memory and time).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from transitions import Machine, MachineError

from workflow.states import PIPELINE, Stage, Status, next_stage

__all__ = ["MachineError", "IllegalTransition", "state_name", "position", "fire", "edges", "TRIGGERS", "mermaid"]


class IllegalTransition(Exception):
    """The trigger is not an edge of the machine from the campaign's position."""


def state_name(status: Status | str, stage: Stage | str) -> str:
    status, stage = Status(status), Stage(stage)
    return status.value if stage is Stage.IDLE else f"{status.value}:{stage.value}"


def position(name: str) -> tuple[Status, Stage]:
    status, _, stage = name.partition(":")
    return Status(status), Stage(stage or Stage.IDLE.value)


def _states() -> list[str]:
    names = [state_name(Status.DORMANT, Stage.IDLE)]
    names += [state_name(Status.PROCESSING, s) for s in PIPELINE]
    names += [
        state_name(status, Stage.IDLE)
        for status in (
            Status.READY_FOR_REVIEW,
            Status.READY_TO_SEND,
            Status.SEND_OUTCOME_UNKNOWN,
            Status.SENT,
            Status.ERROR,
            Status.UNSUBSCRIBED,
        )
    ]
    names += [state_name(Status.ERROR, s) for s in PIPELINE]
    return names


def _transitions() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def add(trigger: str, source: str, dest: str) -> None:
        out.append({"trigger": trigger, "source": source, "dest": dest})

    add("start", "DORMANT", state_name(Status.PROCESSING, Stage.PROPERTY_DATA))
    for stage in PIPELINE:
        here = state_name(Status.PROCESSING, stage)
        after = next_stage(stage)
        add("advance", here, state_name(Status.PROCESSING, after) if after else "READY_FOR_REVIEW")
        add("fail", here, state_name(Status.ERROR, stage))
        add("retry", state_name(Status.ERROR, stage), here)
    add("approve", "READY_FOR_REVIEW", "READY_TO_SEND")
    add("mark_sent", "READY_TO_SEND", "SENT")
    add("mark_send_unknown", "READY_TO_SEND", "SEND_OUTCOME_UNKNOWN")
    add("resolve_sent", "SEND_OUTCOME_UNKNOWN", "SENT")
    add("resolve_not_sent", "SEND_OUTCOME_UNKNOWN", "READY_TO_SEND")
    add("fail", "READY_TO_SEND", "ERROR")
    add("retry", "ERROR", "READY_TO_SEND")
    add("rearm", "SENT", "DORMANT")
    for name in _states():
        if name != "UNSUBSCRIBED":
            add("unsubscribe", name, "UNSUBSCRIBED")
    return out


STATES: tuple[str, ...] = tuple(_states())
TRANSITIONS: tuple[dict[str, object], ...] = tuple(_transitions())
#: Every trigger name, in the order first defined.
TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(str(t["trigger"]) for t in TRANSITIONS))


class _Cursor:
    """A throw-away model: the machine moves ``state`` and nothing else."""

    def __init__(self, state: str) -> None:
        self.state = state


_machine = Machine(
    model=None,
    states=list(STATES),
    transitions=[dict(t) for t in TRANSITIONS],
    initial=None,
    auto_transitions=False,
    ignore_invalid_triggers=False,
    send_event=False,
)
#: add_model/remove_model mutate the shared machine; workers run handlers in threads.
_lock = threading.Lock()


def fire(status: Status | str, stage: Stage | str, trigger: str) -> tuple[Status, Stage]:
    """Apply ``trigger`` to a position and return the new position.

    Raises IllegalTransition when the trigger is unknown or is not an edge from
    this position; the machine itself decides, nothing here duplicates its table.
    """
    cursor = _Cursor(state_name(status, stage))
    with _lock:
        _machine.add_model(cursor, initial=cursor.state)
        try:
            getattr(cursor, trigger)()
        except (MachineError, AttributeError) as exc:
            raise IllegalTransition(
                f"cannot {trigger} a campaign that is {state_name(status, stage)}"
            ) from exc
        finally:
            _machine.remove_model(cursor)
    return position(cursor.state)


def edges() -> frozenset[tuple[str, str, str]]:
    """Every (source, trigger, dest) the machine allows."""
    return frozenset(
        (source, trigger, transition.dest)
        for trigger, event in _machine.events.items()
        for source, transitions in event.transitions.items()
        for transition in transitions
    )


def allowed_triggers(status: Status | str, stage: Stage | str) -> list[str]:
    here = state_name(status, stage)
    return sorted({t for s, t, _ in edges() if s == here})


def mermaid(include_unsubscribe: bool = True) -> str:
    """The machine as a Mermaid state diagram, generated from the machine's own edges."""
    lines = ["stateDiagram-v2", "    [*] --> DORMANT"]
    ids = {name: name.replace(":", "__") for name in STATES}
    for name in STATES:
        if ":" in name:
            lines.append(f'    state "{name}" as {ids[name]}')
    for source, trigger, dest in sorted(edges(), key=_edge_order):
        if trigger == "unsubscribe" and not include_unsubscribe:
            continue
        lines.append(f"    {ids[source]} --> {ids[dest]}: {trigger}")
    lines.append("    UNSUBSCRIBED --> [*]")
    return "\n".join(lines) + "\n"


def _edge_order(edge: tuple[str, str, str]) -> tuple[int, int, str]:
    source, trigger, dest = edge
    return (STATES.index(source), TRIGGERS.index(trigger), dest)


def check_history(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the (from_state, to_state) pairs that are not edges of the machine."""
    allowed = {(s, d) for s, _, d in edges()}
    return [row for row in rows if row not in allowed]
