"""Hypothesis drives the real store from two connections pools at once.

A model (position, version, run, legacy columns) follows every applied
change. The rules fire random triggers (legal or not, with or without an
expectation), replay triggers that were already applied, send stale or future
versions, race the same trigger from both pools in two threads, and run the
producer's start_due. After every step the database must match the model,
the history must hold only edges of the machine with gapless versions, and the
legacy columns must be what ``legacy_columns`` says.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import Engine

from tests.workflow.helpers import new_campaigns
from workflow import machine
from workflow.db import make_engine
from workflow.legacy import LEGACY_COLUMNS, legacy_columns
from workflow.models import Base, Campaign, utcnow
from workflow.states import Stage, Status
from workflow.store import CampaignStore, Expect, Outcome, Result

#: Hypothesis budget per database; about 10 s each on two cores.
EXAMPLES = 50
STEPS = 40

campaigns = Campaign.__table__
triggers = st.sampled_from(machine.TRIGGERS + ("no_such_trigger",))
#: Biased towards triggers that make progress, so runs reach the later states.
progress = st.sampled_from(["start", "advance", "advance", "advance", "approve", "mark_sent", "rearm", "fail",
                            "retry", "mark_send_unknown", "resolve_sent", "resolve_not_sent"])
sides = st.integers(0, 1)


def build(engine_a: Engine, engine_b: Engine) -> type[RuleBasedStateMachine]:
    class CampaignRules(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.stores = (CampaignStore(engine_a), CampaignStore(engine_b))
            [self.cid] = new_campaigns(engine_a)
            self.status, self.stage = Status.DORMANT, Stage.IDLE
            self.version, self.run_id = 0, 0
            self.legacy = dict(legacy_columns(Status.DORMANT, Stage.IDLE))
            #: Every applied change as (trigger, the expectation it was applied under).
            self.applied: list[tuple[str, Expect]] = []

        # -- model ---------------------------------------------------------------

        def here(self) -> Expect:
            return Expect(self.status, self.stage, self.version, self.run_id)

        def legal(self, trigger: str) -> tuple[Status, Stage] | None:
            try:
                return machine.fire(self.status, self.stage, trigger)
            except machine.IllegalTransition:
                return None

        def move(self, trigger: str, dest: tuple[Status, Stage]) -> None:
            self.applied.append((trigger, self.here()))
            self.status, self.stage = dest
            self.version += 1
            if trigger == "start":
                self.run_id += 1
            self.legacy.update(legacy_columns(*dest))

        def check_unchanged(self, out: Outcome) -> None:
            assert not out.applied, out.message
            snap = self.stores[0].get(self.cid)
            assert (snap.campaign_status, snap.processing_stage, snap.version) == (
                self.status, self.stage, self.version)

        # -- rules ---------------------------------------------------------------

        @rule(trigger=st.one_of(triggers, progress), side=sides, guarded=st.booleans())
        def fire(self, trigger: str, side: int, guarded: bool) -> None:
            expect = self.here() if guarded else None
            out = self.stores[side].apply(self.cid, trigger, expect=expect, detail=f"hypothesis {trigger}",
                                          task_id=f"t{self.version}", worker_id=f"w{side}")
            dest = self.legal(trigger)
            if dest is None:
                assert out.result is Result.ILLEGAL, out.message
                self.check_unchanged(out)
            else:
                assert out.result is Result.APPLIED, out.message
                self.move(trigger, dest)

        @precondition(lambda self: self.status is not Status.UNSUBSCRIBED)
        @rule(data=st.data(), side=sides)
        def step_forward(self, data: st.DataObject, side: int) -> None:
            """A legal move, mostly forward, so runs reach review, sending and the next cycle."""
            allowed = [t for t in machine.allowed_triggers(self.status, self.stage) if t != "unsubscribe"]
            weighted = allowed + [t for t in allowed if t in ("advance", "approve", "mark_sent", "rearm", "retry")] * 3
            trigger = data.draw(st.sampled_from(weighted))
            out = self.stores[side].apply(self.cid, trigger, expect=self.here(), worker_id=f"w{side}")
            assert out.result is Result.APPLIED, out.message
            self.move(trigger, (out.after.campaign_status, out.after.processing_stage))

        @precondition(lambda self: self.status is not Status.UNSUBSCRIBED)
        @rule(data=st.data(), side=sides)
        def step_forward_again(self, data: st.DataObject, side: int) -> None:
            self.step_forward(data, side)

        @precondition(lambda self: self.applied)
        @rule(data=st.data(), side=sides)
        def duplicate(self, data: st.DataObject, side: int) -> None:
            """A task delivered again after its change was applied: a conflict, nothing changes."""
            trigger, expect = data.draw(st.sampled_from(self.applied))
            out = self.stores[side].apply(self.cid, trigger, expect=expect)
            assert out.result is Result.CONFLICT, out.message
            self.check_unchanged(out)

        @rule(trigger=progress, side=sides, offset=st.integers(-5, 5).filter(bool))
        def stale_version(self, trigger: str, side: int, offset: int) -> None:
            out = self.stores[side].apply(self.cid, trigger, expect=Expect(version=self.version + offset))
            assert out.result is Result.CONFLICT, out.message
            self.check_unchanged(out)

        @rule(trigger=progress, guarded=st.booleans())
        def race(self, trigger: str, guarded: bool) -> None:
            """Both pools fire the same trigger at once: exactly one change is applied.

            Unguarded, a loser that reads the winner's result could legally
            advance once more (that is what an unguarded trigger means), which
            would make the run depend on thread timing; advance is always raced
            with its expectation, as workers send it.
            """
            expect = self.here() if guarded or trigger == "advance" else None
            barrier = threading.Barrier(2)
            results: list[Outcome | BaseException] = [None, None]  # type: ignore[list-item]

            def go(i: int) -> None:
                try:
                    barrier.wait(timeout=10)
                    results[i] = self.stores[i].apply(self.cid, trigger, expect=expect, worker_id=f"race{i}")
                except BaseException as exc:  # surfaced below, on the main thread
                    results[i] = exc

            threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            dest = self.legal(trigger)
            if dest is None:
                assert [r.result for r in results] == [Result.ILLEGAL, Result.ILLEGAL]
                return
            [winner] = [r for r in results if r.applied]
            [loser] = [r for r in results if not r.applied]
            assert loser.result in ((Result.CONFLICT,) if expect else (Result.CONFLICT, Result.ILLEGAL)), loser.message
            assert winner.before.version == self.version
            self.move(trigger, dest)

        @rule(side=sides)
        def start_due(self, side: int) -> None:
            started = self.stores[side].start_due(limit=5, worker_id=f"producer{side}",
                                                  now=utcnow() + dt.timedelta(days=400))
            if self.status is Status.DORMANT:
                assert [s.id for s in started] == [self.cid]
                self.move("start", (Status.PROCESSING, Stage.PROPERTY_DATA))
            elif self.status is Status.SENT:
                assert [s.id for s in started] == [self.cid]
                self.move("rearm", (Status.DORMANT, Stage.IDLE))
                self.move("start", (Status.PROCESSING, Stage.PROPERTY_DATA))
            else:
                assert started == []

        # -- invariants ------------------------------------------------------------

        @invariant()
        def database_matches_model(self) -> None:
            with engine_b.connect() as conn:
                row = conn.execute(sa.select(campaigns).where(campaigns.c.id == self.cid)).one()._mapping
            assert (row["campaign_status"], row["processing_stage"], row["version"], row["run_id"]) == (
                self.status.value, self.stage.value, self.version, self.run_id)
            assert {c: (bool(row[c]) if c == "is_unsubscribed" else row[c]) for c in LEGACY_COLUMNS} == self.legacy
            if self.status is not Status.UNSUBSCRIBED:
                assert self.legacy == legacy_columns(self.status, self.stage)

        @invariant()
        def history_is_gapless_and_only_machine_edges(self) -> None:
            history = self.stores[1].history(self.cid)
            assert [h["version"] for h in history] == list(range(1, self.version + 1))
            allowed = machine.edges()
            position = "DORMANT"
            for h in history:
                source = machine.state_name(h["from_status"], h["from_stage"])
                dest = machine.state_name(h["to_status"], h["to_stage"])
                assert (source, h["trigger"], dest) in allowed
                assert source == position, "history rows must chain"
                position = dest
            assert position == machine.state_name(self.status, self.stage)

        def teardown(self) -> None:
            event(f"ended {machine.state_name(self.status, self.stage)}")
            event(f"run {min(self.run_id, 2)}")
            with engine_a.begin() as conn:
                conn.execute(sa.delete(campaigns).where(campaigns.c.id == self.cid))

    return CampaignRules


@pytest.fixture
def two_pools(db_url: str) -> Iterator[tuple[Engine, Engine]]:
    a, b = make_engine(db_url), make_engine(db_url)
    Base.metadata.create_all(a)
    yield a, b
    a.dispose()
    b.dispose()


def test_random_triggers_duplicates_stale_versions_and_races(two_pools: tuple[Engine, Engine]) -> None:
    run_state_machine_as_test(
        build(*two_pools),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
