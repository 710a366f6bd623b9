"""The old system's status columns, kept in sync so its readers keep working.

The old system stored one status column per service plus an unsubscribe flag.
``legacy_columns`` maps a (status, stage) position onto them; ``position_from_legacy``
is the backfill the migration uses, the inverse for every position the new
machine can produce and a best reading of the mixed rows the old threads left.
"""

from __future__ import annotations

from collections.abc import Mapping

from workflow.states import PIPELINE, Stage, Status

#: Legacy column per processing stage, in pipeline order.
STAGE_COLUMNS: dict[Stage, str] = {
    Stage.PROPERTY_DATA: "property_data_status",
    Stage.ACTIVE_LISTINGS: "listings_status",
    Stage.RECENT_SALES: "sales_status",
    Stage.MARKET_DATA: "market_data_status",
    Stage.HOME_ANALYSIS: "analysis_status",
    Stage.EMAIL_CREATION: "email_status",
}
#: Every legacy column, in the order the old schema declared them.
LEGACY_COLUMNS: tuple[str, ...] = tuple(STAGE_COLUMNS.values()) + ("is_unsubscribed",)

PENDING, PROCESSING, COMPLETED, FAILED = "pending", "processing", "completed", "failed"
#: email_status values beyond the generic four: the old email service's own steps.
DRAFTED, APPROVED, SENT, SEND_UNKNOWN, SEND_FAILED = "drafted", "approved", "sent", "send_unknown", "send_failed"


def legacy_columns(status: Status | str, stage: Stage | str) -> dict[str, object]:
    """The legacy column values for a position (UNSUBSCRIBED only sets the flag)."""
    status, stage = Status(status), Stage(stage)
    if status is Status.UNSUBSCRIBED:
        return {"is_unsubscribed": True}
    cols: dict[str, object] = {c: PENDING for c in STAGE_COLUMNS.values()}
    cols["is_unsubscribed"] = False
    if status is Status.DORMANT:
        return cols
    if status in (Status.PROCESSING, Status.ERROR) and stage is not Stage.IDLE:
        here = PIPELINE.index(stage)
        for i, s in enumerate(PIPELINE):
            if i < here:
                cols[STAGE_COLUMNS[s]] = COMPLETED
        cols[STAGE_COLUMNS[stage]] = PROCESSING if status is Status.PROCESSING else FAILED
        return cols
    for s in PIPELINE:
        cols[STAGE_COLUMNS[s]] = COMPLETED
    cols["email_status"] = {
        Status.READY_FOR_REVIEW: DRAFTED,
        Status.READY_TO_SEND: APPROVED,
        Status.SEND_OUTCOME_UNKNOWN: SEND_UNKNOWN,
        Status.SENT: SENT,
        Status.ERROR: SEND_FAILED,  # ERROR with stage idle: the send failed
    }[status]
    return cols


def position_from_legacy(row: Mapping[str, object]) -> tuple[Status, Stage]:
    """Read a position from legacy columns (the migration's backfill rule).

    Rules, first match wins: the unsubscribe flag; the email service's own
    outcomes (sent, send_unknown, approved, drafted, send_failed); the first failed stage;
    all stages untouched means DORMANT; otherwise PROCESSING at the first stage
    that is not completed.
    """
    if row.get("is_unsubscribed") in (True, 1, "1", "true", "t"):
        return Status.UNSUBSCRIBED, Stage.IDLE
    values = {s: (str(row.get(c) or "").strip().lower() or PENDING) for s, c in STAGE_COLUMNS.items()}
    email = values[Stage.EMAIL_CREATION]
    if email == SENT:
        return Status.SENT, Stage.IDLE
    if email == SEND_UNKNOWN:
        return Status.SEND_OUTCOME_UNKNOWN, Stage.IDLE
    if email == APPROVED:
        return Status.READY_TO_SEND, Stage.IDLE
    if email == DRAFTED:
        return Status.READY_FOR_REVIEW, Stage.IDLE
    if email == SEND_FAILED:
        return Status.ERROR, Stage.IDLE
    for stage in PIPELINE:
        if values[stage] == FAILED:
            return Status.ERROR, stage
    if all(v == PENDING for v in values.values()):
        return Status.DORMANT, Stage.IDLE
    for stage in PIPELINE:
        if values[stage] != COMPLETED:
            return Status.PROCESSING, stage
    return Status.READY_FOR_REVIEW, Stage.IDLE

