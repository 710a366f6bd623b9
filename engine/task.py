"""The task payload: what travels through Redis, validated on both ends."""

from __future__ import annotations

import json
import time
import secrets
from collections.abc import Collection

import attrs
from json.encoder import encode_basestring_ascii as _json_str

#: Fields every payload must carry, and their JSON types.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task_id": str,
    "campaign_id": int,
    "task_type": str,
    "retry_count": int,
    "enqueued_at": (int, float),
}
#: Optional fields, added by the engine itself.
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    #: Times this task's lease lapsed or its worker died while holding it.
    "lease_losses": int,
    #: The application's run this task belongs to (a campaign's run_id); a stale task sees another run.
    "run_id": int,
}
#: Random bytes of a new task id (hex-encoded: twice as many characters).
TASK_ID_BYTES = 8
#: Longest payload accepted, in bytes; anything larger is garbage, not a task.
MAX_PAYLOAD_BYTES = 4096
_FIELDS = frozenset(REQUIRED_FIELDS) | frozenset(OPTIONAL_FIELDS)


class MalformedTask(ValueError):
    """A payload that is not a valid task; ``reason`` says why, for the dead-letter entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Task:
    task_id: str
    campaign_id: int
    task_type: str
    retry_count: int = 0
    enqueued_at: float = attrs.field(factory=time.time)
    lease_losses: int = 0
    #: None for payloads made before run ids existed (still accepted): nothing to compare then.
    run_id: int | None = None

    @classmethod
    def new(cls, task_type: str, campaign_id: int, run_id: int | None = None) -> Task:
        """A fresh task: a 64-bit random id (16 hex characters) and the time to the millisecond.

        Both are as short as they can usefully be: a queued task's payload and
        its dedup key are most of what Redis holds per task (docs/benchmarks.md,
        scale), and 64 random bits make a collision among even a billion live
        tasks a one-in-ten-billion event.
        """
        return cls(task_id=secrets.token_hex(TASK_ID_BYTES), campaign_id=campaign_id, task_type=task_type,
                   enqueued_at=round(time.time(), 3), run_id=run_id)

    def check(self) -> None:
        """Raise MalformedTask if a field is out of range (what ``from_json`` checks, without the JSON)."""
        if not (isinstance(self.task_id, str) and 0 < len(self.task_id) <= 64):
            raise MalformedTask("task_id must be 1 to 64 characters")
        if type(self.campaign_id) is not int or self.campaign_id <= 0:
            raise MalformedTask(f"campaign_id must be a positive int, got {self.campaign_id!r}")
        if type(self.retry_count) is not int or self.retry_count < 0 or self.lease_losses < 0:
            raise MalformedTask("retry_count and lease_losses must be whole numbers ≥ 0")
        if self.run_id is not None and (type(self.run_id) is not int or self.run_id < 0):
            raise MalformedTask(f"run_id must be a whole number ≥ 0, got {self.run_id!r}")

    def to_json(self) -> str:
        """The payload, compact: exactly what ``json.dumps(fields, separators=(",", ":"))`` writes, built directly.

        Every task the producer starts is serialised once on the way to Redis;
        an f-string with the JSON string encoder for the two strings costs a
        quarter of json.dumps on a dict (tests/engine/test_task.py checks they agree).
        """
        text = (f'{{"task_id":{_json_str(self.task_id)},"campaign_id":{self.campaign_id},'
                f'"task_type":{_json_str(self.task_type)},"retry_count":{self.retry_count},'
                f'"enqueued_at":{float.__repr__(float(self.enqueued_at))}')
        if self.lease_losses:
            text += f',"lease_losses":{self.lease_losses}'
        if self.run_id is not None:
            text += f',"run_id":{self.run_id}'
        return text + "}"

    @classmethod
    def from_json(cls, raw: str | bytes, task_types: Collection[str] | None = None) -> Task:
        """Parse and validate a payload; raise MalformedTask with the reason otherwise."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedTask("payload is not UTF-8") from None
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise MalformedTask(f"payload is {len(raw)} bytes, more than {MAX_PAYLOAD_BYTES}")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise MalformedTask(f"payload is not JSON: {exc}") from None
        # Fast path for the common, valid payload (exact types: json never makes subclasses, and
        # ``type(x) is int`` already refuses booleans); anything else gets the checks below, for the reason.
        if type(data) is dict and data.keys() <= _FIELDS:
            task_id, campaign_id, task_type = data.get("task_id"), data.get("campaign_id"), data.get("task_type")
            retry_count, enqueued_at = data.get("retry_count"), data.get("enqueued_at")
            lease_losses, run_id = data.get("lease_losses", 0), data.get("run_id")
            if (type(task_id) is str and 0 < len(task_id) <= 64 and type(campaign_id) is int and campaign_id > 0
                    and type(task_type) is str and type(retry_count) is int and retry_count >= 0
                    and type(enqueued_at) in (int, float) and type(lease_losses) is int and lease_losses >= 0
                    and (run_id is None or (type(run_id) is int and run_id >= 0))
                    and (task_types is None or task_type in task_types)):
                return cls(task_id, campaign_id, task_type, retry_count, float(enqueued_at), lease_losses, run_id)
        if not isinstance(data, dict):
            raise MalformedTask(f"payload is a JSON {type(data).__name__}, not an object")
        for name, kind in REQUIRED_FIELDS.items():
            if name not in data:
                raise MalformedTask(f"payload has no {name!r}")
            _check_type(name, data[name], kind)
        for name, kind in OPTIONAL_FIELDS.items():
            if name in data:
                _check_type(name, data[name], kind)
        unknown = set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
        if unknown:
            raise MalformedTask(f"payload has unknown fields {sorted(unknown)}")
        if not data["task_id"] or len(data["task_id"]) > 64:
            raise MalformedTask("task_id must be 1 to 64 characters")
        if data["campaign_id"] <= 0:
            raise MalformedTask(f"campaign_id must be positive, got {data['campaign_id']}")
        if data["retry_count"] < 0:
            raise MalformedTask(f"retry_count must not be negative, got {data['retry_count']}")
        if data.get("lease_losses", 0) < 0:
            raise MalformedTask(f"lease_losses must not be negative, got {data['lease_losses']}")
        if data.get("run_id", 0) < 0:
            raise MalformedTask(f"run_id must not be negative, got {data['run_id']}")
        if task_types is not None and data["task_type"] not in task_types:
            raise MalformedTask(f"unknown task type {data['task_type']!r}")
        return cls(
            task_id=data["task_id"],
            campaign_id=data["campaign_id"],
            task_type=data["task_type"],
            retry_count=data["retry_count"],
            enqueued_at=float(data["enqueued_at"]),
            lease_losses=data.get("lease_losses", 0),
            run_id=data.get("run_id"),
        )


def _check_type(name: str, value: object, kind: type | tuple[type, ...]) -> None:
    # bool is an int in Python; a payload with "campaign_id": true is still garbage.
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise MalformedTask(f"{name} must be {expected}, got {type(value).__name__}")
