"""The campaign store: every state change is one compare-and-set transaction.

``apply`` reads the campaign, lets the machine decide the new position, and
writes it with ``UPDATE … WHERE id=? AND version=? AND campaign_status=? AND
processing_stage=?`` together with its ``campaign_events`` row, the legacy
columns and whatever the caller adds in the same transaction (a stage result,
a send record). A trigger whose expectation no longer holds changes nothing and
says so: that is how duplicate and stale tasks become no-ops.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from sqlalchemy import Connection, Engine, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from workflow import machine
from workflow.legacy import legacy_columns
from workflow.models import Campaign, CampaignEvent, StageResult, utcnow
from workflow.states import Stage, Status, task_type_for

#: History batches at least this long are written with COPY on PostgreSQL.
COPY_AT_LEAST = 50

campaigns = Campaign.__table__
events = CampaignEvent.__table__
stage_results = StageResult.__table__


class Result(str, enum.Enum):
    APPLIED = "applied"
    #: The campaign is no longer where the caller expected (a duplicate, a stale task, a lost race).
    CONFLICT = "conflict"
    #: The trigger is not an edge of the machine from where the campaign is.
    ILLEGAL = "illegal"
    NOT_FOUND = "not_found"


@attrs.frozen
class Snapshot:
    """A campaign row as read at one moment."""

    id: int
    campaign_status: Status
    processing_stage: Stage
    version: int
    run_id: int
    owner_name: str
    email: str
    street: str
    city: str
    state: str
    zip_code: str
    next_run_at: dt.datetime | None
    last_error: str | None
    updated_at: dt.datetime | None

    @property
    def state_name(self) -> str:
        return machine.state_name(self.campaign_status, self.processing_stage)

    @property
    def address(self) -> str:
        return f"{self.street}, {self.city}, {self.state} {self.zip_code}"

    @classmethod
    def from_row(cls, row: Any) -> Snapshot:
        m = row._mapping
        return cls(
            id=m["id"],
            campaign_status=Status(m["campaign_status"]),
            processing_stage=Stage(m["processing_stage"]),
            version=m["version"],
            run_id=m["run_id"],
            owner_name=m["owner_name"],
            email=m["email"],
            street=m["street"],
            city=m["city"],
            state=m["state"],
            zip_code=m["zip_code"],
            next_run_at=m["next_run_at"],
            last_error=m["last_error"],
            updated_at=m["updated_at"],
        )


@attrs.frozen
class Outcome:
    result: Result
    message: str
    before: Snapshot | None = None
    after: Snapshot | None = None

    @property
    def applied(self) -> bool:
        return self.result is Result.APPLIED


@attrs.frozen
class Expect:
    """What the caller believes; any field left None is not checked."""

    status: Status | None = None
    stage: Stage | None = None
    version: int | None = None
    run_id: int | None = None

    def mismatch(self, snap: Snapshot) -> str | None:
        for name, want, have in (
            ("status", self.status, snap.campaign_status),
            ("stage", self.stage, snap.processing_stage),
            ("version", self.version, snap.version),
            ("run", self.run_id, snap.run_id),
        ):
            if want is not None and want != have:
                return f"expected {name} {getattr(want, 'value', want)}, found {getattr(have, 'value', have)}"
        return None


#: Called inside the transaction after the campaign row is updated.
Within = Callable[[Connection, Snapshot, Snapshot], None]

_COLUMNS = [
    campaigns.c.id,
    campaigns.c.campaign_status,
    campaigns.c.processing_stage,
    campaigns.c.version,
    campaigns.c.run_id,
    campaigns.c.owner_name,
    campaigns.c.email,
    campaigns.c.street,
    campaigns.c.city,
    campaigns.c.state,
    campaigns.c.zip_code,
    campaigns.c.next_run_at,
    campaigns.c.last_error,
    campaigns.c.updated_at,
]


class CampaignStore:
    """Reads campaigns and applies machine triggers to them atomically."""

    def __init__(self, engine: Engine, *, cycle: dt.timedelta = dt.timedelta(days=30)) -> None:
        self.engine = engine
        #: Time from a sent email to the campaign's next run.
        self.cycle = cycle

    # -- reads -------------------------------------------------------------

    def get(self, campaign_id: int, conn: Connection | None = None) -> Snapshot | None:
        query = select(*_COLUMNS).where(campaigns.c.id == campaign_id)
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(query).first()
        return Snapshot.from_row(row) if row is not None else None

    def history(self, campaign_id: int) -> list[dict[str, Any]]:
        query = select(events).where(events.c.campaign_id == campaign_id).order_by(events.c.version)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Campaigns per status (every status listed) and per processing stage."""
        with self.engine.connect() as conn:
            by_status = dict(
                conn.execute(
                    select(campaigns.c.campaign_status, func.count()).group_by(campaigns.c.campaign_status)
                ).all()
            )
            by_stage = dict(
                conn.execute(
                    select(campaigns.c.processing_stage, func.count())
                    .where(campaigns.c.campaign_status == Status.PROCESSING.value)
                    .group_by(campaigns.c.processing_stage)
                ).all()
            )
        return {
            "campaigns": {s.value: int(by_status.get(s.value, 0)) for s in Status},
            "stages": {s.value: int(by_stage.get(s.value, 0)) for s in Stage if s is not Stage.IDLE},
        }

    def stage_result(self, campaign_id: int, run_id: int, stage: str) -> dict[str, Any] | None:
        query = select(stage_results.c.data).where(
            stage_results.c.campaign_id == campaign_id,
            stage_results.c.run_id == run_id,
            stage_results.c.stage == stage,
        )
        with self.engine.connect() as conn:
            data = conn.execute(query).scalar()
        return json.loads(data) if data is not None else None

    def stalled(self, older_than: dt.timedelta, *, limit: int = 1000, after_id: int = 0) -> list[tuple[int, str]]:
        """Campaigns that need a live task and have not moved for ``older_than``: (id, task type), in id order."""
        return [(cid, t) for cid, t, _ in self.needing_task(utcnow() - older_than, limit=limit, after_id=after_id)]

    def needing_task(self, until: dt.datetime, *, changed_after: dt.datetime | None = None, limit: int | None = 1000,
                     after_id: int = 0) -> list[tuple[int, str, int]]:
        """Campaigns that need a live task, last changed at or before ``until`` (and after ``changed_after``).

        Returns (campaign id, task type, run id). With ``limit`` the rows come
        in id order from ``after_id`` on, so a caller can page through a large
        table (the full sweep). With ``limit=None`` (recovery's window of what
        changed) they come unordered and unpaged: nothing then pushes the
        planner from the (status, updated_at) index to a walk of the primary
        key in id order, which filters every row of a large table (210 ms at
        a million) to find the few that changed.
        """
        conditions = [
            campaigns.c.campaign_status.in_([Status.PROCESSING.value, Status.READY_TO_SEND.value]),
            campaigns.c.updated_at <= until,
        ]
        if changed_after is not None:
            conditions.append(campaigns.c.updated_at > changed_after)
        query = select(campaigns.c.id, campaigns.c.campaign_status, campaigns.c.processing_stage,
                       campaigns.c.run_id)
        if limit is not None:
            query = query.where(*conditions, campaigns.c.id > after_id).order_by(campaigns.c.id).limit(limit)
        else:
            query = query.where(*conditions)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for cid, status, stage, run_id in rows:
            task_type = task_type_for(Status(status), Stage(stage))
            if task_type is not None:
                out.append((cid, task_type, run_id))
        return out

    # -- writes ------------------------------------------------------------

    def apply(
        self,
        campaign_id: int,
        trigger: str,
        *,
        expect: Expect | None = None,
        task_id: str | None = None,
        worker_id: str | None = None,
        detail: str | None = None,
        error: str | None = None,
        within: Within | None = None,
        then: Sequence[tuple[str, str]] = (),
    ) -> Outcome:
        """Fire ``trigger`` on one campaign as a compare-and-set, with its history row.

        ``then`` lists follow-up ``(trigger, detail)`` pairs fired in the SAME
        transaction, each with its own history row (auto-approve is
        ``advance`` then ``approve``): a crash can never leave the campaign
        between them. A follow-up that is not an edge from where the first
        trigger left the campaign is a caller bug: it raises and nothing is
        written. The returned ``after`` is the position after the last one.
        """
        with self.engine.begin() as conn:
            before = self.get(campaign_id, conn)
            if before is None:
                return Outcome(Result.NOT_FOUND, f"campaign {campaign_id} does not exist")
            if expect is not None and (why := expect.mismatch(before)):
                return Outcome(Result.CONFLICT, f"campaign {campaign_id}: {why}; nothing changed", before)
            try:
                status, stage = machine.fire(before.campaign_status, before.processing_stage, trigger)
            except machine.IllegalTransition as exc:
                return Outcome(Result.ILLEGAL, f"campaign {campaign_id}: {exc}", before)
            after = self._write(conn, before, trigger, status, stage, task_id, worker_id, detail, error)
            if after is None:
                conn.rollback()
                return Outcome(Result.CONFLICT, f"campaign {campaign_id} changed under us; nothing changed", before)
            if within is not None:
                within(conn, before, after)
            last = after
            for follow, follow_detail in then:
                status, stage = machine.fire(last.campaign_status, last.processing_stage, follow)
                nxt = self._write(conn, last, follow, status, stage, task_id, worker_id, follow_detail, None)
                if nxt is None:  # cannot happen: the row is ours since the first UPDATE in this transaction
                    raise RuntimeError(f"campaign {campaign_id} changed inside its own transaction")
                last = nxt
        return Outcome(Result.APPLIED, f"campaign {campaign_id}: {before.state_name} -> {last.state_name}", before, last)

    def _write(
        self,
        conn: Connection,
        before: Snapshot,
        trigger: str,
        status: Status,
        stage: Stage,
        task_id: str | None,
        worker_id: str | None,
        detail: str | None,
        error: str | None,
    ) -> Snapshot | None:
        """The compare-and-set UPDATE and its history row; None when the row moved meanwhile."""
        now = utcnow()
        values: dict[str, Any] = {
            "campaign_status": status.value,
            "processing_stage": stage.value,
            "version": before.version + 1,
            "updated_at": now,
            **legacy_columns(status, stage),
        }
        if trigger == "start":
            values["run_id"] = before.run_id + 1
            values["last_error"] = None
        elif trigger == "fail":
            values["last_error"] = (error or detail or "failed")[:4000]
        elif trigger == "retry":
            values["last_error"] = None
        elif trigger in ("mark_sent", "resolve_sent"):
            values["next_run_at"] = now + self.cycle
        if _compare_and_set(conn, before, values) != 1:
            return None
        after = attrs.evolve(
            before,
            campaign_status=status,
            processing_stage=stage,
            version=before.version + 1,
            run_id=values.get("run_id", before.run_id),
            last_error=values.get("last_error", before.last_error),
            next_run_at=values.get("next_run_at", before.next_run_at),
            updated_at=now,
        )
        conn.execute(insert(events).values(**_event_row(before, after, trigger, task_id, worker_id, detail or error, now)))
        return after

    def start_due(self, *, limit: int, worker_id: str | None = None, now: dt.datetime | None = None) -> list[Snapshot]:
        """Move up to ``limit`` due campaigns to PROCESSING in one transaction; their snapshots (DORMANT ones, then
        SENT ones due again; each oldest due first).

        Set-based, so starting a campaign costs microseconds, not a round trip
        (``_start_batch``). A SENT campaign whose next run is due is rearmed
        (SENT -> DORMANT) and started in the same UPDATE, with both steps in
        the history. Several producers can run at once: on PostgreSQL the due
        rows are picked ``FOR UPDATE SKIP LOCKED`` (disjoint batches, no
        waiting), on SQLite BEGIN IMMEDIATE lets one writer in at a time.
        """
        return [row.snapshot for row in self._start_batch(limit, worker_id, now, snapshots=True)]

    def start_due_runs(self, *, limit: int, worker_id: str | None = None,
                       now: dt.datetime | None = None) -> list[tuple[int, int]]:
        """``start_due`` for the producer: (campaign id, new run id) of each started campaign, no snapshots."""
        return [(row.id, row.run_id) for row in self._start_batch(limit, worker_id, now, snapshots=False)]

    def _start_batch(self, limit: int, worker_id: str | None, now: dt.datetime | None, *,
                     snapshots: bool) -> list[_Started]:
        """Start a batch: the UPDATE (and its pick), then ONE INSERT of every history row.

        On PostgreSQL the pick and the start are one statement, ``WITH picked
        AS (SELECT … FOR UPDATE SKIP LOCKED) UPDATE … FROM picked RETURNING``,
        whose RETURNING also gives each row's status and version before the
        update (needed for the history). SQLite cannot return another table's
        columns from an UPDATE: there a SELECT picks, then the UPDATE starts.
        """
        now = now or utcnow()
        c = campaigns.c
        values = {
            "campaign_status": Status.PROCESSING.value,
            "processing_stage": Stage.PROPERTY_DATA.value,
            "version": c.version + case((c.campaign_status == Status.SENT.value, 2), else_=1),
            "run_id": c.run_id + 1,
            "last_error": None,
            "updated_at": now,
            **legacy_columns(Status.PROCESSING, Stage.PROPERTY_DATA),
        }
        out: list[_Started] = []
        with self.engine.begin() as conn:
            # One status at a time: with one value the (status, next_run_at) index yields the oldest due rows
            # in order and the LIMIT stops the scan; ``IN (DORMANT, SENT)`` made PostgreSQL sort every due row
            # on every batch (per-campaign cost growing with the table).
            for status in (Status.DORMANT.value, Status.SENT.value):
                if len(out) >= limit:
                    break
                # Ordered by due time alone, the (status, next_run_at) index's own order: a tie-break on id
                # made the database sort every campaign due at the same moment (a seeded million) per batch.
                due = (select(c.id, c.campaign_status, c.version)
                       .where(c.campaign_status == status, c.next_run_at <= now)
                       .order_by(c.next_run_at)
                       .limit(limit - len(out)))
                out += self._start_picked(conn, due, values, now, snapshots)
            if out:
                _insert_events(conn, _start_events(out, worker_id, now))
        return out

    @staticmethod
    def _start_picked(conn: Connection, due: Any, values: dict[str, Any], now: dt.datetime,
                      snapshots: bool) -> list[_Started]:
        """Start the rows ``due`` picks; each with its status and version before, oldest due first."""
        c = campaigns.c
        if conn.dialect.name == "postgresql":
            picked = due.with_for_update(skip_locked=True).cte("picked")
            returning = [c.id, c.run_id, c.next_run_at, picked.c.campaign_status.label("old_status"),
                         picked.c.version.label("old_version")]
            rows = conn.execute(update(campaigns).where(c.id == picked.c.id).values(**values)
                                .returning(*returning, *(_COLUMNS if snapshots else ()))).all()
            rows.sort(key=lambda r: (r.next_run_at, r.id))  # as picked
            return [_Started(r.id, r.run_id, r.old_status, r.old_version, Snapshot.from_row(r) if snapshots else None)
                    for r in rows]
        before = {row.id: row for row in conn.execute(due)}
        if not before:
            return []
        rows = conn.execute(update(campaigns)
                            .where(c.id.in_(list(before)),
                                   c.campaign_status.in_([Status.DORMANT.value, Status.SENT.value]),
                                   c.next_run_at <= now)
                            .values(**values).returning(*_COLUMNS)).all()
        order = {cid: i for i, cid in enumerate(before)}
        rows.sort(key=lambda r: order[r.id])
        return [_Started(r.id, r.run_id, before[r.id].campaign_status, before[r.id].version,
                         Snapshot.from_row(r) if snapshots else None) for r in rows]

    def save_stage_result(self, conn: Connection, campaign_id: int, run_id: int, stage: str, data: Any) -> None:
        """Upsert the result of (campaign, run, stage): a re-run overwrites, never adds a row."""
        upsert_stage_result(conn, campaign_id, run_id, stage, data)


def _compare_and_set(conn: Connection, before: Snapshot, values: dict[str, Any]) -> int:
    """UPDATE the campaign only if it is still exactly where ``before`` saw it; the rows changed (0 or 1)."""
    return conn.execute(
        update(campaigns)
        .where(
            campaigns.c.id == before.id,
            campaigns.c.version == before.version,
            campaigns.c.campaign_status == before.campaign_status.value,
            campaigns.c.processing_stage == before.processing_stage.value,
        )
        .values(**values)
    ).rowcount


def upsert_stage_result(conn: Connection, campaign_id: int, run_id: int, stage: str, data: Any, *,
                        keep_existing: bool = False) -> None:
    """Store the result of (campaign, run, stage); a re-run overwrites it, never adds a row.

    ``keep_existing``: only when there is none yet. For what a handler caches
    before its compare-and-set (email_creation's verification verdict): a
    duplicate or stale run must not overwrite the result the winning run
    recorded (a draft a sender then would not find).
    """
    now = utcnow()
    payload = json.dumps(data, sort_keys=True, default=str)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(stage_results).values(
        campaign_id=campaign_id, run_id=run_id, stage=stage, data=payload, created_at=now, updated_at=now
    )
    if keep_existing:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["campaign_id", "run_id", "stage"]))
        return
    stmt = stmt.on_conflict_do_update(
        index_elements=["campaign_id", "run_id", "stage"],
        set_={"data": payload, "updated_at": now},
    )
    conn.execute(stmt)


@attrs.frozen
class _Started:
    """One campaign a batch started: its new run, and its status and version before (for the history)."""

    id: int
    run_id: int
    old_status: str
    old_version: int
    snapshot: Snapshot | None


def _start_events(started: Sequence[_Started], worker_id: str | None, at: dt.datetime) -> list[dict[str, Any]]:
    """The history rows of a batch: a rearm (SENT -> DORMANT) where there was one, then the start."""
    rows = []
    for s in started:
        version = s.old_version
        if s.old_status == Status.SENT.value:
            version += 1
            rows.append(_start_event(s.id, s.run_id - 1, "rearm", Status.SENT.value, Status.DORMANT.value,
                                     Stage.IDLE.value, version, worker_id, at))
        rows.append(_start_event(s.id, s.run_id, "start", Status.DORMANT.value, Status.PROCESSING.value,
                                 Stage.PROPERTY_DATA.value, version + 1, worker_id, at))
    return rows


#: The history columns, in the order ``_insert_events`` copies them.
_EVENT_COLUMNS = ("campaign_id", "run_id", "version", "trigger", "from_status", "to_status", "from_stage", "to_stage",
                  "task_id", "worker_id", "at", "detail")


def _insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append history rows: PostgreSQL's COPY (several times cheaper per row than INSERT … VALUES), else INSERT."""
    if conn.dialect.name != "postgresql" or len(rows) < COPY_AT_LEAST:
        conn.execute(insert(events), rows)
        return
    memo: dict[Any, str] = {}  # a batch repeats most values (statuses, stages, the worker, the time)

    def field(value: Any) -> str:
        text = memo.get(value)
        if text is None:
            text = memo[value] = _copy_field(value)
        return text

    buf = io.StringIO("".join("\t".join([field(row[name]) for name in _EVENT_COLUMNS]) + "\n" for row in rows))
    with conn.connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
        cur.copy_expert(f"COPY {events.name} ({', '.join(_EVENT_COLUMNS)}) FROM STDIN", buf)


def _copy_field(value: Any) -> str:
    """One field of COPY's text format: NULL as \\N, tabs, newlines and backslashes escaped."""
    if value is None:
        return "\\N"
    text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _start_event(cid: int, run_id: int, trigger: str, from_status: str, to_status: str, to_stage: str,
                 version: int, worker_id: str | None, at: dt.datetime) -> dict[str, Any]:
    return {
        "campaign_id": cid, "run_id": run_id, "version": version, "trigger": trigger, "from_status": from_status,
        "to_status": to_status, "from_stage": Stage.IDLE.value, "to_stage": to_stage, "task_id": None,
        "worker_id": worker_id, "at": at, "detail": "due",
    }


def _event_row(
    before: Snapshot,
    after: Snapshot,
    trigger: str,
    task_id: str | None,
    worker_id: str | None,
    detail: str | None,
    at: dt.datetime,
) -> dict[str, Any]:
    return {
        "campaign_id": before.id,
        "run_id": after.run_id,
        "version": after.version,
        "trigger": trigger,
        "from_status": before.campaign_status.value,
        "to_status": after.campaign_status.value,
        "from_stage": before.processing_stage.value,
        "to_stage": after.processing_stage.value,
        "task_id": task_id,
        "worker_id": worker_id,
        "at": at,
        "detail": (detail or None) and detail[:4000],
    }


def bulk_campaign_ids(engine: Engine, statuses: Sequence[Status] | None = None) -> list[int]:
    query = select(campaigns.c.id).order_by(campaigns.c.id)
    if statuses:
        query = query.where(campaigns.c.campaign_status.in_([s.value for s in statuses]))
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


