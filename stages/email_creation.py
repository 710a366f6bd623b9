"""Stage 6: verify the address (QEV), then write the email (Bedrock); then READY_FOR_REVIEW.

An address that is invalid, unknown or disposable ends the run: PermanentError
with the verdict, so the campaign goes to ERROR with the reason and nothing is
ever sent to it. A passing verdict is kept (upserted under this stage) before
Bedrock is called, so a Bedrock retry does not spend a second verification
credit. With AUTO_APPROVE the draft is approved in the same transaction that
stores it (no crash can strand it in READY_FOR_REVIEW) and the send queued.
"""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages import prompts
from stages.clients.email_verification import Verdict
from stages.common import Deps, begin, complete, earlier
from stages.errors import PermanentError
from workflow.states import Stage
from workflow.store import upsert_stage_result

STAGE = Stage.EMAIL_CREATION


def _verdict(task: Task, ctx: Any, deps: Deps, snap: Any) -> dict[str, Any]:
    cached = earlier(deps, snap, STAGE) or {}
    verdict = cached.get("verdict")
    if isinstance(verdict, dict) and verdict.get("email") == snap.email and verdict.get("passed"):
        return verdict
    result: Verdict = deps.providers.email_verification.verify(ctx, snap.email)
    if not result.passed:
        raise PermanentError("email_verification", f"address {snap.email} not deliverable: {result.describe()}")
    data = result.to_dict()
    with deps.store.engine.begin() as conn:
        # A cache for a retry of this stage, written before the compare-and-set: never over a stored result
        # (a duplicate run that overwrote the recorded draft left the sender without one: chaos, invariant 2).
        upsert_stage_result(conn, snap.id, snap.run_id, STAGE.value, {"verdict": data}, keep_existing=True)
    return data


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    snap = begin(task, deps)
    if snap is None:
        return
    verdict = _verdict(task, ctx, deps, snap)
    analysis = (earlier(deps, snap, Stage.HOME_ANALYSIS) or {}).get("analysis") or "(no analysis available)"
    completion = deps.providers.bedrock.converse(
        ctx, system=prompts.EMAIL_SYSTEM,
        prompt=prompts.email_prompt(owner_name=snap.owner_name, address=snap.address, analysis=analysis),
    )
    subject, body = prompts.parse_email(completion.text, fallback_subject=f"Your home at {snap.street}: market update")
    complete(task, ctx, deps, snap, STAGE, {
        "subject": subject,
        "body": body,
        "to": snap.email,
        "verdict": verdict,
        "prompt_version": prompts.PROMPT_VERSION,
        "model_id": deps.settings.bedrock_model_id,
    }, then=[("approve", "AUTO_APPROVE")] if deps.settings.auto_approve else ())
