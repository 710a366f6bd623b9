"""The campaign's two state columns and what each value means.

A campaign's position is the pair (campaign_status, processing_stage). The stage
is meaningful while PROCESSING (the stage being worked on) and in ERROR (the
stage that failed, so a retry knows where to resume); everywhere else it is
``idle``.
"""

from __future__ import annotations

import enum


class Status(str, enum.Enum):
    DORMANT = "DORMANT"
    PROCESSING = "PROCESSING"
    READY_FOR_REVIEW = "READY_FOR_REVIEW"
    READY_TO_SEND = "READY_TO_SEND"
    #: The SES call may or may not have been accepted (a sender died between the
    #: call and recording its answer). A person resolves it; it is never resent blindly.
    SEND_OUTCOME_UNKNOWN = "SEND_OUTCOME_UNKNOWN"
    SENT = "SENT"
    ERROR = "ERROR"
    UNSUBSCRIBED = "UNSUBSCRIBED"


class Stage(str, enum.Enum):
    PROPERTY_DATA = "property_data"
    ACTIVE_LISTINGS = "active_listings"
    RECENT_SALES = "recent_sales"
    MARKET_DATA = "market_data"
    HOME_ANALYSIS = "home_analysis"
    EMAIL_CREATION = "email_creation"
    IDLE = "idle"


#: The processing stages in the order a run goes through them.
PIPELINE: tuple[Stage, ...] = (
    Stage.PROPERTY_DATA,
    Stage.ACTIVE_LISTINGS,
    Stage.RECENT_SALES,
    Stage.MARKET_DATA,
    Stage.HOME_ANALYSIS,
    Stage.EMAIL_CREATION,
)

#: The task type that sends the email; it runs while READY_TO_SEND.
EMAIL_SENDING = "email_sending"

#: Every task type, one Redis queue each.
TASK_TYPES: tuple[str, ...] = tuple(s.value for s in PIPELINE) + (EMAIL_SENDING,)

#: States in which nothing runs until a person or the clock acts.
RESTING: frozenset[Status] = frozenset(
    {
        Status.READY_FOR_REVIEW,
        Status.SENT,
        Status.ERROR,
        Status.UNSUBSCRIBED,
        Status.SEND_OUTCOME_UNKNOWN,
        Status.DORMANT,
    }
)


def next_stage(stage: Stage) -> Stage | None:
    """The stage after ``stage`` in the pipeline, or None after the last one."""
    index = PIPELINE.index(stage)
    return PIPELINE[index + 1] if index + 1 < len(PIPELINE) else None


def expected_position(task_type: str) -> tuple[Status, Stage]:
    """Where a campaign must be for a task of ``task_type`` to have work to do.

    A task that finds its campaign anywhere else is a duplicate or stale and is
    acknowledged without doing anything.
    """
    if task_type == EMAIL_SENDING:
        return Status.READY_TO_SEND, Stage.IDLE
    return Status.PROCESSING, Stage(task_type)


def task_type_for(status: Status, stage: Stage) -> str | None:
    """The task that must be live for a campaign in this position, if any."""
    if status is Status.PROCESSING:
        return stage.value
    if status is Status.READY_TO_SEND:
        return EMAIL_SENDING
    return None
