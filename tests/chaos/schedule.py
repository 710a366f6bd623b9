"""Fault schedules: what goes wrong, when, during one chaos example.

A schedule is plain data (so it can be printed, shrunk by hypothesis and
replayed from a string): the shape of the cluster (how many workers, which
one runs with a skewed clock, which one crashes right after the SES call;
one redis-server or a Redis Cluster), the batch of campaigns (how many, how
many with an address Zillow does not know or an email the verifier rejects)
and a list of timed faults.

Fault kinds are listed simplest first: hypothesis shrinks a ``sampled_from``
towards its first element, so a failing schedule shrinks towards worker kills
and away from exotic faults, and times shrink towards zero.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import attrs
from hypothesis import strategies as st

from workflow.states import TASK_TYPES

#: Every fault kind, simplest first (the order hypothesis shrinks towards).
KINDS: tuple[str, ...] = (
    "kill_worker",  # SIGKILL one worker; the supervisor starts a new one
    "kill_producer",
    "kill_recovery",
    "stop_worker",  # SIGSTOP for `duration` s, then SIGCONT: a zombie if longer than the liveness TTL
    "stop_producer",  # SIGSTOP/SIGCONT of the producer (frozen between starting a campaign and enqueueing it)
    "stop_recovery",  # SIGSTOP/SIGCONT of recovery (frozen between reading a lease and settling it)
    "unsubscribe",  # `campaignctl unsubscribe` of campaign number `target` mid-run
    "provider_faults",  # the sandbox injects `spec` for `duration` s
    "redis_restart",  # graceful restart, data kept (AOF)
    "redis_crash",  # SIGKILL + start from the AOF (fsync everysec: the last second may be lost)
    "redis_flushall",  # FLUSHALL on the live server
    "redis_wipe",  # SIGKILL + start empty (a fresh server)
    "pg_restart",  # PostgreSQL fast shutdown and start
    "redis_stop",  # SIGSTOP redis-server for `duration` s (longer than the liveness TTL), then SIGCONT
    "redis_failover",  # promote the replica (REPLICAOF NO ONE), kill the old primary, move the endpoint
    "master_kill",  # Redis Cluster: SIGKILL the master serving `spec`'s slot; the cluster promotes its replica
    "duplicate_send",  # LPUSH a second, valid email_sending task for a campaign whose send is in flight
)
#: Kinds that act on one worker (``target`` is the worker's index).
WORKER_KINDS = frozenset({"kill_worker", "stop_worker"})
#: Kinds that make Redis lose data (the rate limiter's state goes with it).
REDIS_LOSS_KINDS = frozenset({"redis_crash", "redis_flushall", "redis_wipe"})
#: Kinds that act on the one redis-server (and its proxy and replica): never in a cluster schedule.
SINGLE_REDIS_KINDS = frozenset(
    {"redis_restart", "redis_crash", "redis_flushall", "redis_wipe", "redis_stop", "redis_failover"})
#: Kinds that act on a Redis Cluster: only in a cluster schedule.
CLUSTER_KINDS = frozenset({"master_kill"})
#: What ``Schedule.redis`` may say: one redis-server (AOF on, behind a proxy) or a Redis Cluster of 3 masters
#: and 3 replicas (REDIS_CLUSTER=true).
REDIS_MODES: tuple[str, ...] = ("single", "cluster")
#: The slots a master_kill may aim at (``Fault.spec``): the worker registry's ``{P}`` or a task type's ``{P:T}``.
MASTER_KILL_TARGETS: tuple[str, ...] = ("registry", *TASK_TYPES)


def kinds_for(redis: str) -> tuple[str, ...]:
    """The fault kinds that make sense on ``redis`` ("single" or "cluster"), simplest first."""
    left_out = CLUSTER_KINDS if redis == "single" else SINGLE_REDIS_KINDS
    return tuple(k for k in KINDS if k not in left_out)

#: Providers the sandbox can inject faults into (the rate-limit bucket names).
PROVIDERS: tuple[str, ...] = ("zillow", "zillow56", "rentcast", "bedrock", "email_verification", "ses")
#: Injectable provider faults, simplest first.
PROVIDER_FAULTS: tuple[str, ...] = ("5xx", "429", "malformed", "timeout")

#: Faults happen within this many seconds of the producer starting (deciseconds in the strategy).
HORIZON_S = 10.0


@attrs.frozen
class Fault:
    """One timed fault. ``at`` is seconds after the producer started."""

    at: float
    kind: str
    #: Worker index for worker faults (queue workers first, then polling workers), recovery index for
    #: kill_recovery/stop_recovery, campaign number (0-based) for unsubscribe.
    target: int = 0
    #: Length of a stop or of a provider-fault window, in s; for a restart or failover how long Redis is
    #: unreachable; for a master_kill how long until the killed node starts again and rejoins as a replica
    #: (0: it stays down).
    duration: float = 0.0
    #: Sandbox fault spec for provider_faults, e.g. "bedrock:429=0.5"; for a master_kill the slot whose master
    #: dies: "registry" or a task type (MASTER_KILL_TARGETS).
    spec: str = ""

    def describe(self) -> str:
        out = f"t={self.at:.1f}s {self.kind}"
        if self.kind in WORKER_KINDS:
            out += f" worker#{self.target}"
        if self.kind == "unsubscribe":
            out += f" campaign#{self.target}"
        if self.kind in ("kill_recovery", "stop_recovery") and self.target:
            out += f" recovery#{self.target}"
        if self.kind == "master_kill":
            out += f" (master of {self.spec or 'registry'})"
            return out + (f", rejoins after {self.duration:.1f}s" if self.duration else ", stays down")
        if self.duration:
            out += f" for {self.duration:.1f}s"
        if self.spec:
            out += f" [{self.spec}]"
        return out


@attrs.frozen
class Schedule:
    """A cluster shape, a batch of campaigns and the faults applied to them."""

    campaigns: int = 8
    #: Campaigns whose street contains "Nowhere" (Zillow does not know them): they end in ERROR.
    unknown_addresses: int = 0
    #: Campaigns whose email the verifier rejects: they end in ERROR, never sent.
    bad_emails: int = 0
    workers: int = 2
    concurrency: int = 2
    #: Worker #0 runs with a clock-skewed environment (TZ and the skew knob), in s (0 = none).
    clock_skew: float = 0.0
    #: One extra worker runs with CE_TEST_CRASH_AFTER_SES_CALL: it dies between the SES call and its record.
    ses_crash_worker: bool = False
    faults: tuple[Fault, ...] = ()
    #: Recovery processes running side by side (SPEC §4a: any number of recovery loops is safe).
    recoveries: int = 1
    #: Extra workers with DISPATCH_MODE=polling on the same database as the queue workers (a rollout).
    polling_workers: int = 0
    #: "single": one redis-server behind a proxy; "cluster": a Redis Cluster of 3 masters + 3 replicas on
    #: loopback (node timeout 2 s), every process with REDIS_CLUSTER=true and one node's URL.
    redis: str = "single"

    def __attrs_post_init__(self) -> None:
        if self.redis not in REDIS_MODES:
            raise ValueError(f"redis={self.redis!r}: expected one of {REDIS_MODES}")
        wrong = {f.kind for f in self.faults} - set(kinds_for(self.redis))
        if wrong:
            raise ValueError(f"fault kind(s) {sorted(wrong)} make no sense with redis={self.redis!r}")

    # -- replay strings ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["faults"] = [attrs.asdict(f) for f in self.faults]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        data = dict(data)
        data["faults"] = tuple(Fault(**f) for f in data.get("faults", ()))
        return cls(**data)

    def replay_string(self) -> str:
        """A compact, shell-safe string that ``--chaos-replay`` accepts."""
        raw = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")

    @classmethod
    def from_replay(cls, text: str) -> Schedule:
        """Parse a replay string, or the schedule as plain JSON (easier to edit by hand)."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_dict(json.loads(text))
        padded = text + "=" * (-len(text) % 4)
        return cls.from_dict(json.loads(zlib.decompress(base64.urlsafe_b64decode(padded))))

    # -- printing --------------------------------------------------------------

    def describe(self) -> str:
        head = (
            f"{self.campaigns} campaigns ({self.unknown_addresses} unknown address, {self.bad_emails} bad email), "
            f"{self.workers} workers x{self.concurrency}"
        )
        if self.clock_skew:
            head += f", worker#0 clock skew {self.clock_skew:+.0f}s"
        if self.polling_workers:
            head += f", +{self.polling_workers} polling worker(s)"
        if self.ses_crash_worker:
            head += ", +1 worker that crashes after the SES call"
        if self.recoveries > 1:
            head += f", {self.recoveries} recovery processes"
        if self.redis == "cluster":
            head += ", on a Redis Cluster (3 masters + 3 replicas)"
        lines = [head] + [f"  {f.describe()}" for f in sorted(self.faults, key=lambda f: f.at)]
        if not self.faults:
            lines.append("  (no faults)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Schedule<{self.describe()}\n  replay: --chaos-replay={self.replay_string()}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis' pretty printer
        p.text(repr(self))

    def fault_kinds(self) -> set[str]:
        kinds = {f.kind for f in self.faults}
        if self.clock_skew:
            kinds.add("clock_skew")
        if self.ses_crash_worker:
            kinds.add("crash_after_ses_call")
        if self.recoveries > 1:
            kinds.add("two_recoveries")
        if self.polling_workers:
            kinds.add("polling_workers")
        if self.redis == "cluster":
            kinds.add("redis_cluster")
        return kinds


# -- strategies ----------------------------------------------------------------

_at = st.integers(min_value=0, max_value=int(HORIZON_S * 10)).map(lambda d: d / 10)


@st.composite
def provider_spec(draw: st.DrawFn) -> str:
    """One provider (or "*") with one or two injected faults, e.g. "bedrock:429=0.5,5xx=0.2"."""
    provider = draw(st.sampled_from(("*",) + PROVIDERS))
    kinds = draw(st.lists(st.sampled_from(PROVIDER_FAULTS), min_size=1, max_size=2, unique=True))
    # The sandbox draws at most one fault per call: the probabilities must add up to 1 at most.
    levels = (0.3, 0.6, 0.9) if len(kinds) == 1 else (0.2, 0.4)
    parts = [f"{k}={draw(st.sampled_from(levels))}" for k in kinds]
    return f"{provider}:{','.join(parts)}"


@st.composite
def fault(draw: st.DrawFn, *, workers: int, campaigns: int, redis: str = "single") -> Fault:
    kind = draw(st.sampled_from(kinds_for(redis)))
    at = draw(_at)
    if kind == "kill_worker":
        # One index past the queue workers: the polling worker, when the schedule has one.
        return Fault(at, kind, target=draw(st.integers(0, workers)))
    if kind == "stop_worker":
        # Short stops pause a worker; stops beyond the liveness TTL (2 s) plus a recovery pass make a zombie
        # whose leases are taken away and handed to another worker while it sleeps: at 3 s it wakes up while
        # the new holder is likely still running its task, at 8 s long after.
        duration = draw(st.sampled_from((4.0, 1.0, 3.0, 8.0)))
        return Fault(at, kind, target=draw(st.integers(0, workers - 1)), duration=duration)
    if kind == "stop_producer":
        return Fault(at, kind, duration=draw(st.sampled_from((4.0, 1.0))))
    if kind == "stop_recovery":
        return Fault(at, kind, duration=draw(st.sampled_from((4.0, 1.0))), target=draw(st.integers(0, 1)))
    if kind == "kill_recovery":
        return Fault(at, kind, target=draw(st.integers(0, 1)))
    if kind == "redis_stop":
        # Beyond the liveness TTL (2 s): every liveness key lapses while the workers' leases are valid.
        return Fault(at, kind, duration=draw(st.sampled_from((3.0, 5.0))))
    if kind == "redis_failover":
        # How long the endpoint points nowhere after the promotion (0: at once; 3: longer than the liveness TTL).
        return Fault(at, kind, duration=draw(st.sampled_from((0.0, 3.0))))
    if kind == "master_kill":
        # The registry's master (every heartbeat, every liveness key) or a queue's; the killed node comes back
        # as a replica after a while, or stays down (its shard runs on without a replica).
        return Fault(at, kind, spec=draw(st.sampled_from(MASTER_KILL_TARGETS)),
                     duration=draw(st.sampled_from((0.0, 3.0, 8.0))))
    if kind == "unsubscribe":
        return Fault(at, kind, target=draw(st.integers(0, campaigns - 1)))
    if kind == "provider_faults":
        return Fault(at, kind, duration=draw(st.sampled_from((2.0, 1.0, 5.0))), spec=draw(provider_spec()))
    if kind in ("redis_restart", "redis_crash", "redis_wipe", "pg_restart"):
        # How long the server stays down before it starts again, in s.
        return Fault(at, kind, duration=draw(st.sampled_from((0.0, 2.0))))
    return Fault(at, kind)


@st.composite
def schedules(draw: st.DrawFn, *, max_campaigns: int = 8, max_faults: int = 6,
              redis: tuple[str, ...] = ("single",)) -> Schedule:
    """A whole schedule; the defaults fit the CI budget (a small batch, a handful of faults, one redis-server).

    ``redis`` lists the Redis shapes to draw from ("single", "cluster"); each draws only its own Redis faults.
    """
    # One shape draws nothing, so a seed replays the same single-server schedules as before clusters existed.
    mode = redis[0] if len(redis) == 1 else draw(st.sampled_from(redis))
    campaigns = draw(st.integers(min_value=4, max_value=max_campaigns))
    workers = draw(st.integers(min_value=2, max_value=3))
    faults = draw(st.lists(fault(workers=workers, campaigns=campaigns, redis=mode), max_size=max_faults))
    return Schedule(
        redis=mode,
        recoveries=draw(st.sampled_from((1, 2))),
        polling_workers=draw(st.sampled_from((0, 1))),
        campaigns=campaigns,
        unknown_addresses=draw(st.integers(0, 1)),
        bad_emails=draw(st.integers(0, 1)),
        workers=workers,
        concurrency=draw(st.integers(min_value=2, max_value=4)),
        clock_skew=draw(st.sampled_from((0.0, 3600.0, -90.0))),
        ses_crash_worker=draw(st.booleans()),
        faults=tuple(faults),
    )
