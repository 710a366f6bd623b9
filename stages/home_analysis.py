"""Stage 5: a written analysis of the home in its market (Bedrock converse, prompt from stored data)."""

from __future__ import annotations

from typing import Any

from engine.task import Task
from stages import prompts
from stages.common import Deps, begin, complete, earlier
from workflow.states import Stage

STAGE = Stage.HOME_ANALYSIS


def handle(task: Task, ctx: Any, deps: Deps) -> None:
    snap = begin(task, deps)
    if snap is None:
        return
    facts = earlier(deps, snap, Stage.PROPERTY_DATA) or {"address": snap.address}
    prompt = prompts.analysis_prompt(
        property_facts=facts,
        listings=earlier(deps, snap, Stage.ACTIVE_LISTINGS),
        sales=earlier(deps, snap, Stage.RECENT_SALES),
        market=earlier(deps, snap, Stage.MARKET_DATA),
        zip_code=str(facts.get("zipcode") or snap.zip_code),
    )
    completion = deps.providers.bedrock.converse(ctx, system=prompts.ANALYSIS_SYSTEM, prompt=prompt)
    complete(task, ctx, deps, snap, STAGE, {
        "analysis": completion.text,
        "prompt_version": prompts.PROMPT_VERSION,
        "model_id": deps.settings.bedrock_model_id,
        "stop_reason": completion.stop_reason,
        "input_tokens": completion.input_tokens,
        "output_tokens": completion.output_tokens,
    })
