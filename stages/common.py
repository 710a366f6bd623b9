"""What every stage does around its provider calls.

A stage task (1) reads its campaign and returns at once when the campaign is
not where the task type expects it (a duplicate or stale task: acknowledged,
no provider called), (2) calls its provider(s), (3) in ONE transaction upserts
its result keyed by (campaign, run, stage) and applies ``advance`` as a
compare-and-set on the version it read, (4) after the commit enqueues the next
stage. If the campaign moved meanwhile (a twin task won), the CAS fails and
nothing is written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from engine.errors import Discard
from engine.errors import RateLimited as EngineRateLimited
from engine.task import Task
from stages.clients.bedrock import BedrockClient
from stages.clients.email_verification import EmailVerificationClient
from stages.clients.http import make_session
from stages.clients.rentcast import RentCastClient
from stages.clients.ses import SesClient
from stages.clients.zillow import ZillowClient
from stages.clients.zillow56 import Zillow56Client
from stages.errors import PermanentError
from stages.settings import ProviderSettings
from workflow.states import PIPELINE, Stage, Status, expected_position, task_type_for
from workflow.store import CampaignStore, Expect, Outcome, Snapshot, upsert_stage_result

log = logging.getLogger("stages")


class Providers:
    """The provider clients of one process, built on first use (boto3 clients take a while).

    Built under a lock so worker threads share one client each. Stages touch a
    client before taking a rate-limit token, so the slow first build never sits
    between the token and the request (which would bunch requests up).
    """

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.session = make_session()
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        client = self._clients.get(name)
        if client is None:
            with self._lock:
                client = self._clients.get(name)
                if client is None:
                    client = self._clients[name] = build()
        return client

    @property
    def zillow(self) -> ZillowClient:
        return self._get("zillow", lambda: ZillowClient(self.settings, self.session))

    @property
    def zillow56(self) -> Zillow56Client:
        return self._get("zillow56", lambda: Zillow56Client(self.settings, self.session))

    @property
    def rentcast(self) -> RentCastClient:
        return self._get("rentcast", lambda: RentCastClient(self.settings, self.session))

    @property
    def email_verification(self) -> EmailVerificationClient:
        return self._get("email_verification", lambda: EmailVerificationClient(self.settings, self.session))

    @property
    def bedrock(self) -> BedrockClient:
        return self._get("bedrock", lambda: BedrockClient(self.settings))

    @property
    def ses(self) -> SesClient:
        return self._get("ses", lambda: SesClient(self.settings))


@attrs.define
class Deps:
    """What the stage handlers share: the store, the settings, the clients."""

    store: CampaignStore
    settings: ProviderSettings
    providers: Providers
    #: Waits for a token up to this long are slept by ctx.acquire; longer ones mean "paused", in s.
    max_token_sleep: float = 10.0


def begin(task: Task, deps: Deps) -> Snapshot | None:
    """The campaign if the task has work to do; None for a duplicate/stale task; Discard if it is gone."""
    snap = deps.store.get(task.campaign_id)
    if snap is None:
        raise Discard(f"campaign {task.campaign_id} does not exist")
    if is_stale(task, snap):
        return None
    status, stage = expected_position(task.task_type)
    if snap.campaign_status is not status or snap.processing_stage is not stage:
        log.info("%s task %s for campaign %s: campaign is %s, nothing to do (duplicate or stale)",
                 task.task_type, task.task_id, snap.id, snap.state_name)
        return None
    return snap


def is_stale(task: Task, snap: Snapshot) -> bool:
    """Whether the task belongs to another run of its campaign (logged): its work is not this run's.

    A task left over from an earlier run (a redelivery, a stale reconcile) may
    find the campaign at the same stage of a newer run; without this check it
    would do that run's work under the old task's identity. Tasks without a
    run id (made before run ids existed, or by hand) are never stale.
    """
    if task.run_id is None or task.run_id == snap.run_id:
        return False
    log.info("%s task %s for campaign %s belongs to run %s, the campaign is at run %s: nothing to do (stale)",
             task.task_type, task.task_id, snap.id, task.run_id, snap.run_id)
    return True


def earlier(deps: Deps, snap: Snapshot, stage: Stage) -> dict[str, Any] | None:
    """What an earlier stage stored for this run (None if nothing, e.g. a campaign migrated mid-run)."""
    return deps.store.stage_result(snap.id, snap.run_id, stage.value)


def complete(
    task: Task,
    ctx: Any,
    deps: Deps,
    snap: Snapshot,
    stage: Stage,
    data: dict[str, Any],
    *,
    then: Sequence[tuple[str, str]] = (),
) -> Outcome:
    """Store the result and advance (plus any ``then`` triggers) in one transaction; then enqueue what is next.

    What is next is read off the final position (``task_type_for``), so an
    auto-approved draft queues its send and a draft left for review queues
    nothing.
    """
    cid, run = snap.id, snap.run_id

    def store_result(conn: Any, before: Snapshot, after: Snapshot) -> None:
        upsert_stage_result(conn, cid, run, stage.value, data)

    outcome = deps.store.apply(
        cid,
        "advance",
        expect=Expect(status=Status.PROCESSING, stage=stage, version=snap.version, run_id=run),
        task_id=task.task_id,
        worker_id=getattr(ctx, "worker_id", None),
        detail=f"{stage.value} done",
        within=store_result,
        then=then,
    )
    if not outcome.applied or outcome.after is None:
        log.info("%s for campaign %s not recorded: %s", stage.value, cid, outcome.message)
        return outcome
    nxt = task_type_for(outcome.after.campaign_status, outcome.after.processing_stage)
    if nxt is not None:
        ctx.enqueue(nxt, cid, run_id=outcome.after.run_id)
    return outcome


def with_fallback(ctx: Any, deps: Deps, call: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Run ``call(client)`` on zillow-com1, or on zillow56 when zillow-com1 is out or paused.

    Falls back when zillow-com1 fails as an outage (quota, subscription, key,
    gateway 404), when its bucket would make us wait longer than a worker
    sleeps (ctx.acquire defers), or when it answers 429 with a longer wait.
    "Property not found" is bad data, not an outage: no fallback.
    """
    providers = deps.providers
    try:
        return call(providers.zillow)
    except EngineRateLimited as exc:
        if exc.api is not None and exc.retry_after <= deps.max_token_sleep:
            raise
        primary: Exception = exc
    except PermanentError as exc:
        if not exc.outage:
            raise
        primary = exc
    log.info("zillow-com1 unavailable (%s); using zillow56", primary)
    try:
        return call(providers.zillow56)
    except EngineRateLimited as exc:
        wait = min(exc.retry_after, getattr(primary, "retry_after", exc.retry_after))
        raise EngineRateLimited(f"zillow and zillow56 both rate limited: {exc}", retry_after=wait, api=exc.api) from None
    except PermanentError as exc:
        if isinstance(primary, PermanentError):
            raise PermanentError(exc.provider, f"{str(exc).split(': ', 1)[-1]} (after {primary})",
                                 outage=exc.outage) from None
        raise


def zip_of(deps: Deps, snap: Snapshot) -> str:
    facts = earlier(deps, snap, Stage.PROPERTY_DATA) or {}
    return str(facts.get("zipcode") or snap.zip_code)


__all__ = ["Deps", "Providers", "begin", "complete", "earlier", "is_stale", "with_fallback", "zip_of", "PIPELINE"]
