"""Owned send intents (issue 11, finding 4): two senders of one run, stepped by hand.

Each sender is the real email_sending handler on a real TaskContext, run in a
thread whose ``heartbeat()`` (called right before the SES call) stops until
the test lets it go: so the test decides exactly where each sender is when the
other acts. Real Redis, the sandbox's SES, SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
import uuid

import attrs
import pytest
import redis

from engine.context import TaskContext
from engine.errors import RateLimited
from engine.settings import EngineSettings
from engine.task import Task
from stages.common import Deps, Providers
from tests.servers import PostgresServer
from tests.stages.conftest import Harness, Sandbox
from tests.stages.test_stages import _to_ready_to_send, harness, seed  # noqa: F401 - the fixture
from workflow import sends
from workflow.db import make_engine
from workflow.models import Base
from workflow.states import EMAIL_SENDING, Status
from workflow.store import CampaignStore

#: How long a stepped sender may take to reach its stop, in s (generous for a busy CI box).
STEP_TIMEOUT = 20.0
#: A send intent lease short enough to lapse within a test, in s.
SHORT_LEASE = 0.05


class SteppedContext(TaskContext):
    """A TaskContext whose heartbeat (right before the SES call) waits for the test, then answers ``alive``."""

    def __init__(self, *args: object, alive: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.alive = alive
        self.at_call = threading.Event()
        self.go = threading.Event()

    def heartbeat(self) -> bool:
        self.at_call.set()
        assert self.go.wait(STEP_TIMEOUT)
        return self.alive


class Sender:
    """One email_sending task run in a thread, stopped right before its SES call."""

    def __init__(self, harness: Harness, cid: int, *, deps: Deps | None = None, alive: bool = True) -> None:
        self.harness = harness
        self.task = Task.new(EMAIL_SENDING, cid)
        self.ctx = SteppedContext(self.task, f"worker-{self.task.task_id[:6]}", queue=harness.queue,
                                  limiter=harness.limiter, max_token_sleep=harness.settings.max_token_sleep,
                                  alive=alive)
        self.deps = deps
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.harness.run_task(self.task, self.ctx, self.deps)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc

    def to_the_call(self) -> Sender:
        """Run until right before the SES call (its intent is recorded by then)."""
        self.thread.start()
        assert self.ctx.at_call.wait(STEP_TIMEOUT), "the sender never reached its SES call"
        return self

    def finish(self) -> None:
        self.ctx.go.set()
        self.thread.join(STEP_TIMEOUT)
        assert not self.thread.is_alive()


def short_lease(harness: Harness) -> Deps:
    return attrs.evolve(harness.deps, settings=attrs.evolve(harness.deps.settings, send_intent_lease=SHORT_LEASE))


def the_row(harness: Harness, cid: int) -> dict:
    with harness.store.engine.connect() as conn:
        row = sends.get(conn, cid, harness.store.get(cid).run_id)
    assert row is not None
    return row


def test_second_sender_defers_while_the_first_is_between_intent_and_call(harness: Harness,
                                                                          fast_sandbox: Sandbox) -> None:
    # finding 4: a second email_sending task must not mark a live intent SEND_OUTCOME_UNKNOWN
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    # Given a first sender stopped between its intent and its SES call
    first = Sender(harness, cid).to_the_call()
    # When a second email_sending task for the same run runs
    with pytest.raises(RateLimited) as info:
        harness.run(EMAIL_SENDING, cid)
    # Then it defers (no attempt spent) until the first's lease ends, and changes nothing
    assert info.value.api is None and 1.0 <= info.value.retry_after <= harness.deps.settings.send_intent_lease
    assert harness.store.get(cid).campaign_status is Status.READY_TO_SEND
    assert the_row(harness, cid)["task_id"] == first.task.task_id
    # And the first sends once
    first.finish()
    assert first.error is None
    assert harness.store.get(cid).campaign_status is Status.SENT
    assert fast_sandbox.stats()["emails"] == {harness.store.get(cid).email: 1}


class BlockingSes:
    """The real SES client, stopped inside its send until the test lets it go (the call is under way)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.in_call = threading.Event()
        self.go = threading.Event()

    def send(self, *args: object, **kwargs: object) -> str:
        self.in_call.set()
        assert self.go.wait(STEP_TIMEOUT)
        return self.real.send(*args, **kwargs)  # type: ignore[attr-defined]


def test_second_sender_defers_while_the_first_is_in_its_ses_call(harness: Harness, fast_sandbox: Sandbox) -> None:
    # finding 4: a second email_sending task must not mark a send still under way SEND_OUTCOME_UNKNOWN
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    # Given a first sender inside its SES call (its own clients, so only it blocks)
    providers = Providers(harness.provider_settings)
    ses = BlockingSes(providers.ses)
    providers._clients["ses"] = ses
    first_task = Task.new(EMAIL_SENDING, cid)
    first = threading.Thread(target=harness.run_task, args=(first_task, harness.ctx(first_task),
                                                           attrs.evolve(harness.deps, providers=providers)))
    first.start()
    assert ses.in_call.wait(STEP_TIMEOUT)
    # When a second email_sending task for the same run runs, it defers and changes nothing
    with pytest.raises(RateLimited):
        harness.run(EMAIL_SENDING, cid)
    assert harness.store.get(cid).campaign_status is Status.READY_TO_SEND
    # Then the first records its send
    ses.go.set()
    first.join(STEP_TIMEOUT)
    assert harness.store.get(cid).campaign_status is Status.SENT
    assert fast_sandbox.stats()["emails"] == {harness.store.get(cid).email: 1}


def test_a_slow_sender_cannot_reset_the_intent_that_took_over_its_own(harness: Harness,
                                                                        fast_sandbox: Sandbox) -> None:
    # finding 4 (the _reset case): a slow first sender must not reset a second sender's intent
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    # Given a first sender whose intent lapsed before its call (and whose task lease is gone)
    slow = Sender(harness, cid, deps=short_lease(harness), alive=False).to_the_call()
    time.sleep(SHORT_LEASE * 2)
    # And a second sender that took the lapsed intent over and stands before its call
    second = Sender(harness, cid).to_the_call()
    assert the_row(harness, cid)["task_id"] == second.task.task_id
    # When the slow one goes on: its lease is lost, so it releases "its" intent
    slow.finish()
    assert slow.error is None
    # Then the second sender's intent is untouched, and a later attempt defers instead of sending
    row = the_row(harness, cid)
    assert (row["state"], row["task_id"]) == ("intent", second.task.task_id)
    with pytest.raises(RateLimited):
        harness.run(EMAIL_SENDING, cid)
    second.finish()
    assert second.error is None
    assert harness.store.get(cid).campaign_status is Status.SENT
    assert fast_sandbox.stats()["emails"] == {harness.store.get(cid).email: 1}
    assert fast_sandbox.stats()["calls"].get("ses") == 1


def test_a_sender_whose_intent_was_taken_over_does_not_call_ses(harness: Harness, fast_sandbox: Sandbox) -> None:
    # finding 4: the intent is checked (compare-and-set on its owner) right before the SES call
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    # Given a first sender whose intent lapsed before its call, though its task lease still holds
    slow = Sender(harness, cid, deps=short_lease(harness), alive=True).to_the_call()
    time.sleep(SHORT_LEASE * 2)
    second = Sender(harness, cid).to_the_call()
    # When the slow one goes on, it finds the intent is not its own any more and does not call SES
    slow.finish()
    assert slow.error is None
    assert fast_sandbox.stats()["calls"].get("ses", 0) == 0
    # Then the second sends, once
    second.finish()
    assert second.error is None
    assert harness.store.get(cid).campaign_status is Status.SENT
    assert fast_sandbox.stats()["emails"] == {harness.store.get(cid).email: 1}


def test_a_lost_task_lease_before_the_call_sends_nothing_and_frees_the_run(harness: Harness,
                                                                            fast_sandbox: Sandbox) -> None:
    # finding 4: the task lease is renewed right before the SES call; lost -> release, no call
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    lost = Sender(harness, cid, alive=False).to_the_call()
    lost.finish()
    assert lost.error is None and fast_sandbox.stats()["calls"].get("ses", 0) == 0
    assert the_row(harness, cid)["state"] == "not_sent"
    harness.run(EMAIL_SENDING, cid)  # the task's next holder
    assert harness.store.get(cid).campaign_status is Status.SENT


def test_a_lapsed_intent_whose_call_started_is_unknown(harness: Harness, fast_sandbox: Sandbox) -> None:
    # finding 4: SEND_OUTCOME_UNKNOWN only when a sender died between the SES call and its record
    cid = seed(harness.store)
    _to_ready_to_send(harness, cid)
    snap = harness.store.get(cid)
    dead = sends.Owner("dead-task", "dead-attempt")
    with harness.store.engine.begin() as conn:
        assert sends.claim(conn, cid, snap.run_id, snap.email, dead, lease=SHORT_LEASE).verdict is sends.Verdict.CLAIMED
        assert sends.start_call(conn, cid, snap.run_id, dead, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE * 2)
    harness.run(EMAIL_SENDING, cid)
    assert harness.store.get(cid).campaign_status is Status.SEND_OUTCOME_UNKNOWN
    assert the_row(harness, cid)["state"] == "unknown"
    assert fast_sandbox.stats()["calls"].get("ses", 0) == 0


@pytest.mark.postgres
def test_record_sent_survives_a_database_restart(pg_server: PostgresServer, pg_url: str, redis_client: redis.Redis,
                                                 engine_settings: EngineSettings, fast_sandbox: Sandbox,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # finding 4: a database blip right after SES accepted must not turn a known send into an unknown one
    engine = make_engine(pg_url)
    Base.metadata.create_all(engine)
    key = uuid.uuid4().hex[:8]
    h = Harness(CampaignStore(engine), redis_client, engine_settings, fast_sandbox, ZILLOW_API_KEY=f"z-{key}",
                ZILLOW56_API_KEY=f"z56-{key}", RENTCAST_API_KEY=f"rc-{key}", QEV_API_KEY=f"qev-{key}")
    cid = seed(h.store)
    _to_ready_to_send(h, cid)
    back = threading.Timer(1.0, pg_server.start)

    def database_goes_down() -> None:  # right after SES answered, where the crash hook sits
        pg_server.stop("fast")  # a clean stop: the tests run PostgreSQL with synchronous_commit off
        back.start()

    monkeypatch.setattr("stages.email_sending._crash_hook", database_goes_down)
    try:
        # When PostgreSQL is down for a moment between the SES call and its record
        h.run(EMAIL_SENDING, cid)
    finally:
        if back.ident is not None:
            back.join(30)
    # Then the send is recorded as sent, once
    assert h.store.get(cid).campaign_status is Status.SENT
    assert the_row(h, cid)["state"] == "sent" and the_row(h, cid)["message_id"]
    assert fast_sandbox.stats()["emails"] == {h.store.get(cid).email: 1}
    engine.dispose()
