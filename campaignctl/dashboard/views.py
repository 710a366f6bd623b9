"""What each page shows, as plain data: every decision and every format is made here, none in a template.

The data comes from campaignctl.operations (the functions behind the CLI's
``show``, ``review``, ``queues``, ``limits``, ``dlq``) and from the fleet
snapshot (campaignctl/fleet.py, cached); this module only arranges it for a
page. Which write buttons a campaign gets is decided here too
(``campaign_actions``), and none at all for a read-only visitor. Everything
that could carry a credential (stage results, errors, dead-letter reasons) is
passed through engine.redact first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from campaignctl import operations, output
from campaignctl.context import AppContext
from engine.redact import redact
from workflow.states import Status

#: Dead letters listed on the overview (the newest ones; the count is always complete).
DLQ_SHOWN = 20
#: Drafts listed on the review page at once, oldest first.
REVIEW_SHOWN = 50
#: Campaigns needing an operator (ERROR, SEND_OUTCOME_UNKNOWN) listed on the review page, per status.
ATTENTION_SHOWN = 50


@attrs.frozen
class Action:
    """One write button: the path it posts to, its label, and hidden fields besides the CSRF token."""

    path: str
    label: str
    fields: tuple[tuple[str, str], ...] = ()
    #: "primary" for the expected next step, "danger" for the ones that stop a campaign.
    style: str = ""


def campaign_actions(campaign_id: int, status: str, version: int | None, can_write: bool) -> list[Action]:
    """The write buttons a campaign in ``status`` offers (none to a read-only visitor)."""
    if not can_write:
        return []
    base = f"/campaigns/{campaign_id}"
    actions = []
    if status == Status.READY_FOR_REVIEW.value:
        actions.append(Action(f"{base}/approve", "Approve", (("version", str(version)),) if version else (),
                              "primary"))
    if status == Status.ERROR.value:
        actions.append(Action(f"{base}/retry", "Retry", (), "primary"))
    if status == Status.SEND_OUTCOME_UNKNOWN.value:
        actions.append(Action(f"{base}/resolve", "Resolve: it was sent", (("sent", "1"),)))
        actions.append(Action(f"{base}/resolve", "Resolve: not sent", (("sent", "0"),)))
    if status != Status.UNSUBSCRIBED.value:
        actions.append(Action(f"{base}/unsubscribe", "Unsubscribe", (), "danger"))
    return actions


#: Times and ages as the CLI prints them (one formatter for both).
age_text = output.duration
when_text = output.when


def overview(snapshot: Mapping[str, Any], dead_letters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The overview page: campaigns, queues, workers, limits, dead letters."""
    workers = [{
        "id": w["id"], "state": "alive" if w["alive"] else "DEAD", "row_class": "ok" if w["alive"] else "bad",
        "queues": ", ".join(w.get("queues", [])), "concurrency": w.get("concurrency", "-"),
        "holds": ", ".join(w.get("current_tasks", [])) or "nothing",
        "heartbeat": when_text(w.get("heartbeat")),
    } for w in snapshot["workers"]["list"]]
    limits = [{
        "api": api, "rate": s.get("granted") or f"{s['rate']:.4g}/s", "plan": s.get("plan", "-"),
        "burst": s["burst"], "tokens": f"{s['tokens']:.2f}",
        "paused": f"paused {s['paused_for']:.1f} s" if s["paused_until"] else "open",
        "paused_class": "bad" if s["paused_until"] else "", "throttled": s.get("throttled", 0), "calls": s.get("calls", 0),
    } for api, s in snapshot["limits"].items()]
    queues = [{
        "name": name, "ready": q["ready"], "in_flight": q["in_flight"], "delayed": q["delayed"],
        "oldest": age_text(q.get("oldest_ready_age")), "paused": "paused" if q.get("paused") else "",
    } for name, q in snapshot["queues"].items()]
    newest = list(dead_letters)[-DLQ_SHOWN:][::-1]
    return {
        "taken_at": when_text(snapshot["taken_at"]),
        "statuses": [{"name": k, "label": k.replace("_", " "), "count": v} for k, v in snapshot["campaigns"].items()],
        "total": sum(snapshot["campaigns"].values()),
        "stages": [{"name": k, "label": k.replace("_", " "), "count": v} for k, v in snapshot["stages"].items()],
        "queues": queues,
        "workers": workers,
        "workers_alive": snapshot["workers"]["alive"],
        "workers_dead": snapshot["workers"]["dead"],
        "limits": limits,
        "dead_letter_count": snapshot["dead_letters"],
        "dead_letters": [{
            "id": e.get("id", "-"), "task_type": e.get("task_type") or "-", "campaign_id": e.get("campaign_id"),
            "at": when_text(e.get("at")), "reason": redact(str(e.get("reason", "")))[:200],
        } for e in newest],
    }


def campaign_page(detail: operations.CampaignDetail, can_write: bool) -> dict[str, Any]:
    """One campaign: state, history (oldest first), stage results, the draft, the send, its buttons."""
    c = detail.campaign
    return {
        "id": c["id"],
        "state": [("Status", c["campaign_status"]), ("Stage", c["processing_stage"]), ("Version", c["version"]),
                  ("Run", c["run_id"]), ("Owner", c["owner_name"]), ("Email", c["email"]),
                  ("Address", c["address"]), ("Next run", when_text(c["next_run_at"])),
                  ("Updated", when_text(c["updated_at"])), ("Last error", redact(c["last_error"] or "-"))],
        "status": c["campaign_status"],
        "history": [{
            "version": h["version"], "at": when_text(h["at"]), "trigger": h["trigger"],
            "from": _position(h["from_status"], h["from_stage"]), "to": _position(h["to_status"], h["to_stage"]),
            "by": h["worker_id"] or "-", "detail": redact(h["detail"] or ""),
        } for h in detail.history],
        "stage_results": [{"stage": stage, "json": redact(json.dumps(data, indent=2, sort_keys=True, default=str))}
                          for stage, data in detail.stage_results.items()],
        "draft": draft_view(detail.draft, can_write) if detail.draft else None,
        "send": [(k.replace("_", " "), v if v is not None else "-") for k, v in (detail.send or {}).items()],
        "actions": campaign_actions(c["id"], c["campaign_status"], c["version"], can_write),
    }


def draft_view(draft: operations.Draft, can_write: bool) -> dict[str, Any]:
    return {
        "campaign_id": draft.campaign_id, "owner_name": draft.owner_name, "to": draft.to, "address": draft.address,
        "subject": draft.subject or "(no subject)", "body": draft.body or "(no body)",
        "verification": draft.verification,
        "verification_class": {True: "ok", False: "bad"}.get(draft.verification_passed, ""),
        "analysis": draft.analysis or "", "waiting": when_text(draft.waiting_since),
        "actions": campaign_actions(draft.campaign_id, draft.status, draft.version, can_write),
    }


def review_page(ctx: AppContext, can_write: bool) -> dict[str, Any]:
    """Drafts waiting for review, oldest first; then the campaigns that need an operator's decision."""
    attention = []
    for status in (Status.SEND_OUTCOME_UNKNOWN, Status.ERROR):
        for row in operations.list_campaigns(ctx, status=status, limit=ATTENTION_SHOWN):
            attention.append({"id": row.id, "status": row.status, "stage": row.stage, "owner_name": row.owner_name,
                              "age": age_text(row.age), "error": redact(row.last_error or "-"),
                              "actions": campaign_actions(row.id, row.status, None, can_write)})
    return {
        "waiting": operations.review_count(ctx),
        "drafts": [draft_view(d, can_write) for d in operations.review_queue(ctx, limit=REVIEW_SHOWN)],
        "attention": attention,
    }


def _position(status: str, stage: str) -> str:
    return f"{status} · {stage}" if stage and stage != "idle" else status
