"""The guarantees a chaos run must keep, checked against the evidence gathered at rest.

Each check returns human-readable violations filed under the number of the
invariant it breaks (docs/reliability.md lists them):

1. every campaign is resting; ERROR carries a reason; SEND_OUTCOME_UNKNOWN only
   where a sender could really have died between the SES call and its record;
2. no recipient received more than one email per campaign run, and the
   database agrees with what the sandbox delivered;
3. every history row is an edge of the machine, versions are gapless, the
   legacy columns agree with the position;
4. no provider saw more calls than its limit allows in any window, and the
   sandbox answered no 429 beyond the injected ones;
5. nothing is left ready, leased, in flight or delayed; every dead letter has a reason;
6. a campaign unsubscribed mid-run never sent (unless its send intent was
   already recorded when the unsubscribe committed: that SES call was under way);
7. SEND_OUTCOME_UNKNOWN only where the sender that recorded the intent died or
   froze between the SES call and its record (the crash-after-SES hook, a
   SIGKILL or SIGSTOP by the schedule) or SES answered an injected 5xx/timeout/garbage;
   never because a second sender found a live sender's intent, nor because
   PostgreSQL restarted;
8. no attempt (``retry_count``, a polling worker's attempt) was spent by an
   infrastructure fault: only tasks of a stage whose provider had injected
   faults may have retries;
9. recovery never took the lease of a live holder: no queue worker that was
   never stopped or killed logged "lease lost" (unless Redis had just lost its
   data: a flush, a wipe, a crash, or on a Redis Cluster a master kill, whose
   last writes may not have reached the replica that took over), and recovery
   declared no running, never-stopped worker dead and took its tasks.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any

import attrs

from tests.chaos.harness import LOSS_EXCUSE_S, Evidence
from workflow.legacy import legacy_columns
from workflow.machine import check_history, state_name

#: Statuses a campaign may end an example in.
RESTING = frozenset({"SENT", "READY_FOR_REVIEW", "ERROR", "SEND_OUTCOME_UNKNOWN", "UNSUBSCRIBED"})
#: Plan rates per provider bucket, in calls per second before the time scale (CONTRACTS.md).
PLAN_RATES: dict[str, float] = {
    "zillow": 10 / 60,
    "zillow56": 10 / 60,
    "rentcast": 1.0,
    "bedrock": 8 / 60,
    "email_verification": 1.0,
    "ses": 10.0,
}
#: Calls a provider may see beyond rate x window: the sandbox bucket's capacity (2).
WINDOW_SLACK = 2
#: SES faults after which the outcome of a send is honestly unknown (the call may have been accepted).
AMBIGUOUS_SES_FAULTS = frozenset({"5xx", "timeout", "malformed"})

NAMES = {
    1: "every campaign is resting",
    2: "at most one email per recipient and run",
    3: "history follows the machine, gapless, legacy columns agree",
    4: "providers never saw more than their limit",
    5: "nothing left leased, in flight or delayed; dead letters have reasons",
    6: "campaigns unsubscribed mid-run never sent",
    7: "SEND_OUTCOME_UNKNOWN only where a sender died or froze between the SES call and its record",
    8: "no attempt spent by an infrastructure fault",
    9: "recovery never took the lease of a live holder",
}
#: Providers each stage calls (the rate-limit bucket names); zillow56 is the Zillow stages' fallback.
STAGE_PROVIDERS: dict[str, frozenset[str]] = {
    "property_data": frozenset({"zillow", "zillow56"}),
    "active_listings": frozenset({"zillow", "zillow56"}),
    "recent_sales": frozenset({"zillow", "zillow56"}),
    "market_data": frozenset({"rentcast"}),
    "home_analysis": frozenset({"bedrock"}),
    "email_creation": frozenset({"bedrock", "email_verification"}),
    "email_sending": frozenset({"ses"}),
}
#: Injected provider faults that do not fail a call (seconds, not failures): they excuse no retry.
HARMLESS_FAULTS = frozenset({"latency", "retry_after"})


class InvariantBroken(AssertionError):
    """Raised for a failed example; one subclass per invariant so hypothesis tells different bugs apart.

    hypothesis keys a failure by exception type and raise site: with one
    class per invariant, a schedule that breaks invariant 2 is never shrunk
    into one that breaks invariant 4, and both are reported.
    """


BROKEN: dict[int, type[InvariantBroken]] = {
    n: type(f"Invariant{n}Broken", (InvariantBroken,), {"__doc__": f"Invariant {n} broke: {name}."})
    for n, name in {
        1: "every campaign is resting",
        2: "at most one email per recipient and run",
        3: "history follows the machine",
        4: "providers never saw more than their limit",
        5: "nothing left behind",
        6: "unsubscribed means unsubscribed",
        7: "unknown sends are explained",
        8: "no attempt spent by infrastructure",
        9: "no live lease taken",
    }.items()
}


@attrs.define
class Report:
    violations: dict[int, list[str]] = attrs.Factory(lambda: defaultdict(list))
    notes: list[str] = attrs.Factory(list)

    def add(self, invariant: int, message: str) -> None:
        self.violations[invariant].append(message)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    @property
    def exception_type(self) -> type[InvariantBroken]:
        """The class for the lowest-numbered broken invariant."""
        broken = sorted(n for n, found in self.violations.items() if found)
        return BROKEN[broken[0]] if broken else InvariantBroken

    def render(self, limit: int = 12) -> str:
        lines = []
        for n in sorted(self.violations):
            found = self.violations[n]
            if not found:
                continue
            lines.append(f"INVARIANT {n} BROKEN ({NAMES[n]}): {len(found)} violation(s)")
            lines.extend(f"    - {m}" for m in found[:limit])
            if len(found) > limit:
                lines.append(f"    ... and {len(found) - limit} more")
        if self.notes:
            lines.append("notes:")
            lines.extend(f"    * {m}" for m in self.notes)
        return "\n".join(lines) or "all invariants hold"


def plan_rates() -> dict[str, float]:
    """Calls per second per provider before the time scale: the limiter's own table (RATE_<API> overrides).

    Falls back to the CONTRACTS.md defaults if the application's table cannot be imported.
    """
    try:
        from campaignctl.limits import rate_limits
    except ImportError:
        return dict(PLAN_RATES)
    return {api: limit.rate for api, limit in rate_limits(dict(os.environ)).items()}


def parse_rate(raw: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*", raw)
    if not m:
        raise ValueError(f"bad rate {raw!r}")
    per = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}[m.group(2)]
    return float(m.group(1)) / per


def pid_of(worker_id: str | None) -> int | None:
    """The pid inside a worker id (engine.identity: ``host:pid:random``); None if there is none."""
    if not worker_id:
        return None
    parts = worker_id.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    for part in re.split(r"[^0-9A-Za-z]+", worker_id):
        if part.isdigit() and 1 < int(part) < 4_194_305:
            return int(part)
    return None


def check(ev: Evidence, *, at_rest: bool = True) -> Report:
    report = Report()
    if not at_rest:
        report.add(1, "the run did not come to rest before the deadline")
    _resting(ev, report)
    _emails(ev, report)
    _history(ev, report)
    _rates(ev, report)
    _leftovers(ev, report)
    _unsubscribed(ev, report)
    _unknown_sends(ev, report)
    _attempts(ev, report)
    _live_leases(ev, report)
    _process_notes(ev, report)
    _failover_notes(ev, report)
    return report


def _by_campaign(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row["campaign_id"]].append(row)
    return out


def _resting(ev: Evidence, report: Report) -> None:
    sends = _by_campaign(ev.sends)
    interrupted = ev.killed_pids | ev.stopped_pids | ev.crash_hook_pids
    ses_ambiguous = bool(ev.provider_faults.get("ses", set()) & AMBIGUOUS_SES_FAULTS)
    for c in ev.campaigns:
        cid, status = c["id"], c["campaign_status"]
        if status not in RESTING:
            report.add(1, f"campaign {cid} ended {state_name(status, c['processing_stage'])}, not a resting state")
        if status == "ERROR" and not (c.get("last_error") or "").strip():
            report.add(1, f"campaign {cid} is ERROR without a reason")
        if status == "SEND_OUTCOME_UNKNOWN":
            rows = [s for s in sends.get(cid, []) if s["run_id"] == c["run_id"]]
            pids = {pid_of(s.get("worker_id")) for s in rows}
            why = []
            if pids & interrupted:
                why.append("its sender was killed or stopped")
            if ses_ambiguous:
                why.append("SES answered injected 5xx/timeouts/garbage")
            if "postgres" in ev.servers_restarted:
                why.append("PostgreSQL restarted")
            if not rows:
                report.add(1, f"campaign {cid} is SEND_OUTCOME_UNKNOWN but has no send record for run {c['run_id']}")
            elif not why:
                report.add(
                    1,
                    f"campaign {cid} is SEND_OUTCOME_UNKNOWN but no sender was interrupted "
                    f"(send record by {rows[0].get('worker_id')!r}, interrupted pids {sorted(interrupted)})",
                )
            else:
                report.notes.append(f"campaign {cid} SEND_OUTCOME_UNKNOWN: {', '.join(why)}")
        kind = ev.kinds.get(cid, "normal")
        if kind != "normal" and status == "SENT":
            report.add(1, f"campaign {cid} ({kind.replace('_', ' ')}) was SENT; it must end in ERROR")
    counts: dict[str, int] = defaultdict(int)
    for c in ev.campaigns:
        counts[c["campaign_status"]] += 1
    report.notes.append("final statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    errors = [(c["id"], (c.get("last_error") or "")[:120]) for c in ev.campaigns
              if c["campaign_status"] == "ERROR" and ev.kinds.get(c["id"]) == "normal"]
    if errors:
        report.notes.append(f"normal campaigns in ERROR: {errors}")


def _emails(ev: Evidence, report: Report) -> None:
    delivered: dict[str, int] = {k: int(v) for k, v in (ev.sandbox_stats.get("emails") or {}).items()}
    by_email = {c["email"].lower(): c for c in ev.campaigns}
    runs = {c["id"]: c["run_id"] for c in ev.campaigns}
    for recipient, n in sorted(delivered.items()):
        c = by_email.get(recipient.lower())
        allowed = runs.get(c["id"], 1) if c else 1
        if n > allowed:
            who = f"campaign {c['id']}" if c else "no campaign"
            report.add(2, f"{recipient} ({who}) received {n} emails in {allowed} run(s)")
        if c is None:
            report.add(2, f"{recipient} received {n} email(s) but no campaign has that address")
    sends = _by_campaign(ev.sends)
    for c in ev.campaigns:
        n = delivered.get(c["email"], delivered.get(c["email"].lower(), 0))
        mine = [s for s in sends.get(c["id"], []) if s["run_id"] == c["run_id"]]
        status = c["campaign_status"]
        if status == "SENT":
            if n != 1:
                report.add(2, f"campaign {c['id']} is SENT but the sandbox delivered {n} email(s) to {c['email']}")
            if not mine or mine[0]["state"] != "sent" or not mine[0].get("message_id"):
                report.add(2, f"campaign {c['id']} is SENT but its send record is {mine[0] if mine else None}")
        elif status == "ERROR" and n:
            report.add(2, f"campaign {c['id']} is ERROR (send failed?) but the sandbox delivered {n} email(s)")
        elif status in ("READY_FOR_REVIEW",) and n:
            report.add(2, f"campaign {c['id']} is {status} but the sandbox delivered {n} email(s)")
        if len(mine) > 1:
            report.add(2, f"campaign {c['id']} has {len(mine)} send records for run {c['run_id']}")


def _history(ev: Evidence, report: Report) -> None:
    events = _by_campaign(ev.events)
    for c in ev.campaigns:
        rows = sorted(events.get(c["id"], []), key=lambda e: e["version"])
        versions = [e["version"] for e in rows]
        if versions != list(range(1, c["version"] + 1)):
            report.add(3, f"campaign {c['id']} at version {c['version']} has history versions {versions}")
        pairs = [
            (state_name(e["from_status"], e["from_stage"]), state_name(e["to_status"], e["to_stage"])) for e in rows
        ]
        for bad in check_history(pairs):
            report.add(3, f"campaign {c['id']}: {bad[0]} -> {bad[1]} is not an edge of the machine")
        for prev, nxt in zip(pairs, pairs[1:]):
            if prev[1] != nxt[0]:
                report.add(3, f"campaign {c['id']}: history jumps from {prev[1]} to {nxt[0]}")
        if pairs and pairs[-1][1] != state_name(c["campaign_status"], c["processing_stage"]):
            report.add(3, f"campaign {c['id']}: history ends at {pairs[-1][1]}, row says "
                          f"{state_name(c['campaign_status'], c['processing_stage'])}")
        for col, want in legacy_columns(c["campaign_status"], c["processing_stage"]).items():
            have = c.get(col)
            if col == "is_unsubscribed":
                have = bool(have)
            if have != want:
                report.add(3, f"campaign {c['id']} ({c['campaign_status']}): legacy {col}={have!r}, expected {want!r}")


def worst_window(times: list[float], rate: float) -> tuple[float, int, float]:
    """The window with the most calls beyond ``rate``: (excess over rate x width, calls, width in s).

    For calls at sorted times t_i the excess of the window [t_i, t_j] is
    (j - i + 1) - rate * (t_j - t_i); with f(k) = k - rate * t_k that is
    f(j) - f(i) + 1, so one pass with a running minimum finds the worst.
    """
    best = (0.0, 0, 0.0)
    min_f, min_i = float("inf"), 0
    for j, t in enumerate(times):
        f = j - rate * t
        if f < min_f:
            min_f, min_i = f, j
        excess = f - min_f + 1
        if excess > best[0]:
            best = (excess, j - min_i + 1, t - times[min_i])
    return best


def throttle_context(calls: list[dict[str, Any]], provider: str, rate: float | None, time_scale: float,
                     limit: int = 4, t0: float = 0.0) -> str:
    """What led to each limit 429: the arrival times of the calls just before it, relative to it.

    Tells a client that over-granted (calls evenly spaced, too close) from
    arrival jitter (calls granted apart but arriving bunched: several within a
    fraction of the provider's interval, after a longer gap).
    """
    mine = sorted((float(c["t"]), int(c.get("status", 0)), c.get("fault")) for c in calls
                  if c.get("provider") == provider)
    out = []
    for i, (t, status, fault) in enumerate(mine):
        if status != 429 or fault:
            continue
        before = [f"{(tb - t) * 1000:+.1f}" for tb, _, _ in mine[max(0, i - 5):i]]
        after = [f"{(ta - t) * 1000:+.1f}" for ta, _, _ in mine[i + 1:i + 3]]
        when = f" ({t - t0:+.2f}s on the schedule's clock)" if t0 else ""
        out.append(f"429 at t={t:.3f}s{when}: calls at {' '.join(before)} | {' '.join(after)} ms")
        if len(out) >= limit:
            break
    if not out:
        return ""
    interval = f"; provider interval {1000 / (rate * time_scale):.1f} ms" if rate else ""
    return f"{interval}; " + "; ".join(out)


def _rates(ev: Evidence, report: Report) -> None:
    rates = ev.rates or plan_rates()
    throttled = ev.sandbox_stats.get("throttled") or {}
    for provider, n in sorted(throttled.items()):
        if n:
            report.add(4, f"the sandbox throttled {n} call(s) to {provider} (429 beyond the injected ones)"
                          + throttle_context(ev.sandbox_calls, provider, rates.get(provider), ev.time_scale,
                                             t0=ev.t0))
    by_provider: dict[str, list[float]] = defaultdict(list)
    for call in ev.sandbox_calls:
        if int(call.get("status", 0)) != 429:
            by_provider[call["provider"]].append(float(call["t"]))
    for provider, times in sorted(by_provider.items()):
        rate = rates.get(provider)
        if rate is None:
            continue
        times.sort()
        excess, n, width = worst_window(times, rate * ev.time_scale)
        if excess > WINDOW_SLACK + 1e-6:
            report.add(
                4,
                f"{provider}: {n} calls answered in {width:.3f}s, limit {rate * ev.time_scale:.2f}/s "
                f"allows {rate * ev.time_scale * width + WINDOW_SLACK:.2f}",
            )
    total = {p: len(t) for p, t in by_provider.items()}
    report.notes.append(f"provider calls (non-429): {dict(sorted(total.items()))}; injected: "
                        f"{ev.sandbox_stats.get('injected') or {}}")


def _leftovers(ev: Evidence, report: Report) -> None:
    q = ev.queues
    if not isinstance(q, dict) or "queues" not in q:
        report.add(5, f"`campaignctl queues --json` gave no queue table: {q}")
    else:
        for name, row in sorted(q["queues"].items()):
            left = {k: row.get(k, 0) for k in ("ready", "in_flight", "delayed") if row.get(k, 0)}
            if left:
                report.add(5, f"queue {name} still has {left}")
    for k in ("ready", "in_flight", "delayed", "claiming"):
        if ev.redis_counts.get(k):
            report.add(5, f"Redis still holds {ev.redis_counts[k]} {k.replace('_', ' ')} task(s)")
    # Lease bookkeeping with no task in flight: every settle (ack, retry, release, dead letter) removes a
    # task's lease entry, lock and held-set member together with its in-flight entry, and only the lock's
    # holder may renew, so once nothing is in flight none of these can be left. A stray one is a settle
    # or renewal by a worker that no longer held the lease (SPEC §4: fencing).
    if ev.redis_counts.get("leases"):
        report.add(5, f"{ev.redis_counts['leases']} lease entr(y/ies) left with nothing in flight: "
                      f"{ev.lease_entries[:5]} (a renewal or settle by a worker that lost the lease?)")
    if ev.lock_keys:
        report.add(5, f"{len(ev.lock_keys)} task_lock key(s) left: {ev.lock_keys[:5]}")
    # A worker's held-task record outlives its lease in one case by design: the holder could not reach Redis
    # to settle the task (an outage), the lease lapsed unrenewed after the visibility timeout, and recovery of
    # a lapsed lease cannot name the holder (the lock expired with it; tests/engine/test_queue.py). So held
    # records are judged only in examples where Redis never went away.
    for worker, members in sorted(ev.held_entries.items()):
        if "redis" in ev.servers_restarted:
            report.notes.append(f"worker {worker} still recorded as holding {members[:3]} after a Redis outage "
                                "(a lease that lapsed unsettled; not judged)")
        else:
            report.add(5, f"worker {worker} is still recorded as holding {members[:5]} with nothing in flight "
                          "(its lease was settled by another worker?)")
    dl = ev.dead_letters
    entries = dl.get("dead_letters", dl.get("entries", dl.get("items"))) if isinstance(dl, dict) else dl
    if entries is None:
        report.add(5, f"`campaignctl dlq list --json` gave no list: {dl}")
        return
    for entry in entries:
        reason = entry.get("reason") if isinstance(entry, dict) else None
        if not (isinstance(reason, str) and reason.strip()):
            report.add(5, f"dead letter without a reason: {str(entry)[:300]}")
    if entries:
        reasons = sorted({str(e.get("reason"))[:80] for e in entries if isinstance(e, dict)})
        report.notes.append(f"{len(entries)} dead letter(s): {reasons[:6]}")


def _unsubscribed(ev: Evidence, report: Report) -> None:
    events = _by_campaign(ev.events)
    sends = _by_campaign(ev.sends)
    delivered = {k.lower(): int(v) for k, v in (ev.sandbox_stats.get("emails") or {}).items()}
    by_id = {c["id"]: c for c in ev.campaigns}
    for cid in sorted(ev.unsubscribed):
        c = by_id[cid]
        if c["campaign_status"] != "UNSUBSCRIBED":
            report.add(6, f"campaign {cid} was unsubscribed but ended {c['campaign_status']}")
            continue
        rows = sorted(events.get(cid, []), key=lambda e: e["version"])
        unsub = next((e for e in rows if e["to_status"] == "UNSUBSCRIBED"), None)
        if unsub is None:
            report.add(6, f"campaign {cid} is UNSUBSCRIBED with no unsubscribe in its history")
            continue
        if unsub is not rows[-1]:
            report.add(6, f"campaign {cid} moved after its unsubscribe: {[(e['trigger'], e['to_status']) for e in rows]}")
        n = delivered.get(c["email"].lower(), 0)
        if n:
            intents = [s for s in sends.get(cid, []) if s["created_at"] <= unsub["at"]]
            if intents:
                report.notes.append(
                    f"campaign {cid} got its email: the send intent ({intents[0]['created_at']}) was recorded "
                    f"before the unsubscribe committed ({unsub['at']}) from {unsub['from_status']}"
                )
            else:
                report.add(6, f"campaign {cid} was unsubscribed at {unsub['at']} (from {unsub['from_status']}) "
                              f"and was still sent {n} email(s)")


def _process_notes(ev: Evidence, report: Report) -> None:
    own = [e for e in ev.exits if e.get("ended_by") is None and e["name"] != "sescrash"]
    if own:
        report.notes.append(
            "processes that exited on their own (restarted by the supervisor): "
            + ", ".join(f"{e['name']} pid {e['pid']} rc={e['returncode']} ({e['log']})" for e in own[:8])
        )


def _failover_notes(ev: Evidence, report: Report) -> None:
    """What each master kill did: which node died, which replica took over and when, whether it came back."""
    for m in ev.master_kills:
        what = f"master_kill {m['target']} (slot {m['slot']}): master {m['port']} killed"
        if m.get("promoted_at"):
            what += f", replica {m['new_master']} promoted {m['promoted_at'] - m['killed_at']:.1f}s later"
        else:
            what += ", no replica promoted"
        if m.get("rejoined_at"):
            what += f", the old node back as a synced replica {m['rejoined_at'] - m['killed_at']:.1f}s after the kill"
        report.notes.append(what)


def _procs_by_pid(ev: Evidence) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for p in ev.procs}


def _interrupted(ev: Evidence) -> set[int]:
    """Pids the schedule SIGKILLed or SIGSTOPped."""
    return set(ev.killed_pids) | set(ev.stopped_pids)


def _owner_ids(row: dict[str, Any]) -> list[str]:
    """Worker ids a send record names (its worker, and its owner where the record has one)."""
    out = []
    for col in ("worker_id", "owner", "owner_worker", "owner_id"):
        value = row.get(col)
        if isinstance(value, str) and value:
            out.append(value)
    return out


def _unknown_sends(ev: Evidence, report: Report) -> None:
    """Invariant 7: an unknown outcome needs a sender that died or froze between the SES call and its record.

    The sender is the process whose worker id the run's send record names
    (ids are host:pid:random, pids map to the harness' process table). It
    explains the unknown outcome if it ran with the crash-after-SES hook and
    died by it (SIGKILL, rc -9), or the schedule SIGKILLed or SIGSTOPped it.
    Otherwise only an injected ambiguous SES answer (5xx, timeout, garbage
    the sandbox actually injected) does. A live, never-interrupted sender
    means a second sender marked the run unknown while the first was still
    sending, or a database blip turned a known send into an unknown one.
    """
    by_pid = _procs_by_pid(ev)
    sends = _by_campaign(ev.sends)
    interrupted = _interrupted(ev)
    injected_ses = {k: n for k, n in ((ev.sandbox_stats.get("injected") or {}).get("ses") or {}).items()
                    if k in AMBIGUOUS_SES_FAULTS and n}
    events = _by_campaign(ev.events)
    for c in ev.campaigns:
        if c["campaign_status"] != "SEND_OUTCOME_UNKNOWN":
            continue
        cid = c["id"]
        rows = [s for s in sends.get(cid, []) if s["run_id"] == c["run_id"]]
        owners = [w for row in rows for w in _owner_ids(row)]
        why = []
        for owner in owners:
            pid = pid_of(owner)
            proc = by_pid.get(pid) if pid is not None else None
            if proc and proc.get("crash_hook") and proc.get("returncode") == -9:
                why.append(f"its sender {owner} ran with the crash-after-SES hook and died by it")
            elif pid in ev.killed_pids:
                why.append(f"its sender {owner} was SIGKILLed by the schedule")
            elif pid in ev.stopped_pids:
                why.append(f"its sender {owner} was SIGSTOPped by the schedule")
        if not why and injected_ses:
            why.append(f"SES answered injected {injected_ses}")
        if why:
            report.notes.append(f"campaign {cid} SEND_OUTCOME_UNKNOWN explained: {'; '.join(why)}")
            continue
        marked = [e for e in events.get(cid, []) if e.get("to_status") == "SEND_OUTCOME_UNKNOWN"]
        by = marked[-1] if marked else {}
        described = []
        for owner in owners:
            pid = pid_of(owner)
            proc = by_pid.get(pid) if pid is not None else None
            described.append(f"{owner} ({proc['name'] if proc else 'not a process of this example'}, "
                             f"{'interrupted' if pid in interrupted else 'never stopped or killed'})")
        report.add(
            7,
            f"campaign {cid} is SEND_OUTCOME_UNKNOWN but its sender did not die between the SES call and its "
            f"record: send record owner(s) {described or 'none'}; marked unknown by {by.get('worker_id')!r} "
            f"(task {str(by.get('task_id'))[:8]}): {str(by.get('detail'))[:160]}",
        )
    by_id = {c["id"]: c for c in ev.campaigns}
    delivered = {k.lower(): int(v) for k, v in (ev.sandbox_stats.get("emails") or {}).items()}
    for d in ev.duplicates:
        c = by_id.get(d["campaign_id"])
        if c is not None:
            report.notes.append(f"duplicate email_sending task {str(d['task_id'])[:8]} for campaign {c['id']} "
                                f"({d.get('original')}): campaign ended {c['campaign_status']}, "
                                f"{delivered.get(c['email'].lower(), 0)} email(s) delivered")


def _faulted_providers(ev: Evidence) -> set[str]:
    return {p for p, kinds in ev.provider_faults.items() if set(kinds) - HARMLESS_FAULTS}


def _attempts(ev: Evidence, report: Report) -> None:
    """Invariant 8: a retry is spent only by a provider's failure, never by Redis, the database or a dead worker.

    Evidence: every task payload sampled in Redis during the run (ready, in
    flight, delayed) and in the dead letters at the end, and polling
    workers' "attempt N failed" lines. A task with retry_count > 0 must
    belong to a stage one of whose providers had injected failures.
    """
    faulted = _faulted_providers(ev)
    bad = []
    for t in ev.task_samples:
        n = t.get("retry_count") or 0
        if not n:
            continue
        providers = STAGE_PROVIDERS.get(t.get("task_type") or "", frozenset())
        if providers & faulted:
            continue
        bad.append(f"{t.get('task_type')} task {str(t.get('task_id'))[:8]} of campaign {t.get('campaign_id')} "
                   f"had retry_count={n} (lease_losses={t.get('lease_losses', 0)}, seen {t.get('where')})")
    for a in ev.poll_attempts:
        providers = STAGE_PROVIDERS.get(a.get("task_type") or "", frozenset())
        if providers & faulted:
            continue
        bad.append(f"polling worker {a['name']} (pid {a['pid']}) spent attempt {a.get('attempt')} of "
                   f"{a.get('task_type')} for campaign {a.get('campaign_id')}: {a['line'][-160:]}")
    why = f"providers with injected failures: {sorted(faulted) or 'none'}"
    for msg in bad:
        report.add(8, f"{msg}; {why}")
    spent = sum(1 for t in ev.task_samples if t.get("retry_count"))
    losses = sum(1 for t in ev.task_samples if t.get("lease_losses"))
    report.notes.append(f"task counters: {len(ev.task_samples)} task(s) sampled in {ev.samples_taken} sample(s), "
                        f"{spent} with retries, {losses} with lease losses; {why}")


def _excused_by_loss(ev: Evidence, at: float | None) -> str | None:
    """The Redis data loss a "lease lost" at ``at`` follows closely, if any: the lease went with the data."""
    if at is None:
        return None
    for start, end, kind in ev.redis_losses:
        if start - 0.5 <= at <= _noticed_by(ev, end) + LOSS_EXCUSE_S:
            return kind
    return None


def _noticed_by(ev: Evidence, end: float) -> float:
    """When workers could next talk to Redis after a loss that ended at ``end``: a SIGSTOP right after delays it.

    A worker learns its lock went with the data on its next renew; a Redis
    paused meanwhile answers that renew only when it resumes.
    """
    for start, resumed in sorted(ev.redis_pauses):
        if start <= end + LOSS_EXCUSE_S and resumed > end:
            end = resumed
    return end


def _live_leases(ev: Evidence, report: Report) -> None:
    """Invariant 9: recovery takes a lease only from a holder that is dead, frozen or past its deadline.

    A queue worker the schedule never stopped or killed renews every lease
    it holds: if it logs "lease lost", someone took a live lease (two
    recovery loops racing, liveness recovery after a Redis blip, a replayed
    script). Excused: the line follows a Redis data loss (flush, wipe, crash
    from the AOF) within a few seconds, or another line of the same task
    was. On a Redis Cluster a master kill counts as such a loss from the kill
    until its replica is promoted: replication is asynchronous, so a lease,
    renewal or settle the master acknowledged but had not yet sent to its
    replica is gone after the failover, exactly as after a crash (the
    harness records it in ``redis_losses``). Nothing else about a failover is
    excused: the shard's outage itself (~4 s, longer than the liveness TTL
    when the registry's master dies) must cost no live worker its lease. Recovery's own "worker W is dead: N task(s) recovered" with N > 0
    for a process that was running and never stopped is the same fault seen
    from the other side.
    """
    by_pid = _procs_by_pid(ev)
    interrupted = _interrupted(ev)
    excused_tasks: set[tuple[int, str]] = set()
    for line in ev.lease_lost:
        if _excused_by_loss(ev, line.get("at")):
            excused_tasks.add((line["pid"], line.get("task") or ""))
    excused = 0
    for line in ev.lease_lost:
        if line["pid"] in interrupted:
            continue
        if (line["pid"], line.get("task") or "") in excused_tasks:
            excused += 1
            continue
        report.add(9, f"{line['name']} (pid {line['pid']}, never stopped or killed) lost a lease: {line['line'][-200:]}")
    for d in ev.dead_declared:
        if int(d.get("recovered") or 0) == 0:
            continue
        pid = pid_of(d.get("worker"))
        proc = by_pid.get(pid) if pid is not None else None
        if proc is None or pid in interrupted:
            continue
        at = d.get("at")
        ended = proc.get("ended")
        alive = at is not None and proc["started"] <= at and (ended is None or ended > at + 0.5)
        if alive:
            report.add(9, f"{d['name']} declared {d['worker']} ({proc['name']}, running and never stopped) dead and "
                          f"took {d['recovered']} task(s): {d['line'][-160:]}")
    if excused:
        report.notes.append(f"{excused} 'lease lost' line(s) right after a Redis data loss (not judged)")
