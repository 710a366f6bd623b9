"""Engine settings from the environment; every default is here with its unit."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from engine.env import env_bool, env_float, env_int

#: Key prefix used when KEY_PREFIX is not set. Queue keys carry it as a hash tag.
DEFAULT_KEY_PREFIX = "ce"
#: A leased task not acknowledged or renewed within this goes back to its queue, in s.
DEFAULT_VISIBILITY_TIMEOUT = 300.0
#: How often a worker renews its liveness key and the leases of its running tasks, in s.
DEFAULT_HEARTBEAT_INTERVAL = 2.0
#: A worker whose liveness key is older than this is dead; its tasks are recovered, in s.
DEFAULT_LIVENESS_TTL = 10.0
#: A task that lost its lease this many times is dead-lettered (crash loop, poison pill).
DEFAULT_MAX_LEASE_LOSSES = 5
#: Pause between two passes of the recovery loop (dead workers, lapsed leases, due retries), in s.
#: A pass is a handful of round trips; 0.5 s keeps a crashed worker's tasks waiting under a second.
DEFAULT_RECOVERY_INTERVAL = 0.5
#: A PROCESSING/READY_TO_SEND campaign unchanged this long with no live task is re-enqueued, in s.
DEFAULT_STALL_THRESHOLD = 60.0
#: Pause between two passes of the producer loop, in s.
DEFAULT_PRODUCER_INTERVAL = 5.0
#: Campaigns the producer starts per transaction.
DEFAULT_PRODUCER_BATCH = 500
#: The producer keeps the first stage's queue at most this many seconds of its provider's rate deep
#: (unless PRODUCER_MAX_BACKLOG says otherwise), in s.
DEFAULT_PRODUCER_HORIZON = 600.0
#: Waits for a rate-limit token up to this long are slept in the worker; longer ones defer the task, in s.
DEFAULT_MAX_TOKEN_SLEEP = 10.0
#: Multiplies every rate limit (use the sandbox's --time-scale factor).
DEFAULT_RATE_SCALE = 1.0
#: On SIGTERM, running handlers get this long to finish before their tasks are released, in s.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: A Redis call without an answer after this long fails (and is retried), in s.
DEFAULT_REDIS_SOCKET_TIMEOUT = 5.0
#: Connecting to Redis gives up after this long, in s.
DEFAULT_REDIS_CONNECT_TIMEOUT = 5.0
#: Times redis-py retries a call that failed on a connection error or timeout (with backoff).
DEFAULT_REDIS_RETRIES = 3
#: An idle pooled connection is checked with PING before use if unused this long, in s.
DEFAULT_REDIS_HEALTH_CHECK_INTERVAL = 30.0
#: Longest pause between two retries of one Redis call, in s.
REDIS_RETRY_BACKOFF_CAP = 1.0
#: Longest a worker blocks on one empty queue before looking at the others again, in s.
DEFAULT_CLAIM_BLOCK = 0.5
#: A handler running longer than this loses its task (released as a lease loss; the handler's late
#: result is fenced out), unless its RetryPolicy.time_limit says otherwise; 0 = no limit, in s.
DEFAULT_TASK_TIME_LIMIT = 600.0
#: Longest wait between two tries while Redis or the database is down (service loops, start-up,
#: tasks deferred by an outage); the waits grow with the outage's length up to this, in s.
DEFAULT_OUTAGE_BACKOFF_MAX = 30.0
#: How long producer, recovery and worker wait at start-up for Redis and the database before
#: exiting 1; 0 = wait as long as it takes, in s.
DEFAULT_STARTUP_TIMEOUT = 0.0


def redis_url_from_env(env: Mapping[str, str]) -> str:
    """REDIS_URL wins; otherwise REDIS_HOST/REDIS_PORT/REDIS_DB (REDIS_PASSWORD is passed apart)."""
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    host = env.get("REDIS_HOST", "127.0.0.1")
    port = env.get("REDIS_PORT", "6379")
    db = env.get("REDIS_DB", "0")
    scheme = "rediss" if env.get("REDIS_TLS", "").lower() in ("1", "true", "yes") else "redis"
    return f"{scheme}://{host}:{port}/{db}"


@attrs.frozen(repr=False)
class EngineSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Never printed: see __repr__.
    redis_password: str | None = None
    #: REDIS_URL names any node of a Redis Cluster (ElastiCache's configuration endpoint): RedisCluster is used.
    redis_cluster: bool = False
    key_prefix: str = DEFAULT_KEY_PREFIX
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    liveness_ttl: float = DEFAULT_LIVENESS_TTL
    max_lease_losses: int = DEFAULT_MAX_LEASE_LOSSES
    recovery_interval: float = DEFAULT_RECOVERY_INTERVAL
    stall_threshold: float = DEFAULT_STALL_THRESHOLD
    producer_interval: float = DEFAULT_PRODUCER_INTERVAL
    producer_batch: int = DEFAULT_PRODUCER_BATCH
    #: Most tasks (ready + delayed) in the first stage's queue before the producer starts no more;
    #: None = derived by the application (its provider's rate × PRODUCER_HORIZON); 0 = no limit.
    producer_max_backlog: int | None = None
    producer_horizon: float = DEFAULT_PRODUCER_HORIZON
    max_token_sleep: float = DEFAULT_MAX_TOKEN_SLEEP
    rate_scale: float = DEFAULT_RATE_SCALE
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    redis_socket_timeout: float = DEFAULT_REDIS_SOCKET_TIMEOUT
    redis_connect_timeout: float = DEFAULT_REDIS_CONNECT_TIMEOUT
    redis_retries: int = DEFAULT_REDIS_RETRIES
    redis_health_check_interval: float = DEFAULT_REDIS_HEALTH_CHECK_INTERVAL
    claim_block: float = DEFAULT_CLAIM_BLOCK
    task_time_limit: float = DEFAULT_TASK_TIME_LIMIT
    outage_backoff_max: float = DEFAULT_OUTAGE_BACKOFF_MAX
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT

    @property
    def replay_window(self) -> float:
        """How long a settled lease's tombstone and an operation's answer are kept, in s.

        Long enough for every retry redis-py may make of one call (each waits up
        to the socket timeout plus a backoff), so a replayed call always finds
        the trace of the first and answers as it did.
        """
        return (self.redis_retries + 1) * (self.redis_socket_timeout + REDIS_RETRY_BACKOFF_CAP) + 1.0

    @property
    def stall_guard(self) -> float:
        """Longest Redis round trip, in s, after which recovery suspects a stall that kept workers from beating.

        A live worker's liveness key expires only if Redis stops answering for
        longer than LIVENESS_TTL - HEARTBEAT_INTERVAL. Recovery calls Redis at
        least every RECOVERY_INTERVAL, so such a stall makes one of its calls
        take longer than the rest of that margin; half of it is the guard.
        """
        return max(0.05, (self.liveness_ttl - self.heartbeat_interval - self.recovery_interval) / 2)

    def __repr__(self) -> str:
        from engine.redact import redact_url

        fields = attrs.asdict(self)
        fields["redis_url"] = redact_url(self.redis_url)
        fields["redis_password"] = "***" if self.redis_password else None
        return "EngineSettings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        return cls(
            redis_url=redis_url_from_env(env),
            redis_password=env.get("REDIS_PASSWORD") or None,
            redis_cluster=env_bool(env, "REDIS_CLUSTER", False),
            key_prefix=env.get("KEY_PREFIX", DEFAULT_KEY_PREFIX) or DEFAULT_KEY_PREFIX,
            visibility_timeout=env_float(env, "VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT),
            heartbeat_interval=env_float(env, "HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL),
            liveness_ttl=env_float(env, "LIVENESS_TTL", DEFAULT_LIVENESS_TTL),
            max_lease_losses=env_int(env, "MAX_LEASE_LOSSES", DEFAULT_MAX_LEASE_LOSSES),
            recovery_interval=env_float(env, "RECOVERY_INTERVAL", DEFAULT_RECOVERY_INTERVAL),
            stall_threshold=env_float(env, "STALL_THRESHOLD", DEFAULT_STALL_THRESHOLD),
            producer_interval=env_float(env, "PRODUCER_INTERVAL", DEFAULT_PRODUCER_INTERVAL),
            producer_batch=env_int(env, "PRODUCER_BATCH", DEFAULT_PRODUCER_BATCH),
            producer_max_backlog=(env_int(env, "PRODUCER_MAX_BACKLOG", 0) if env.get("PRODUCER_MAX_BACKLOG")
                                  else None),
            producer_horizon=env_float(env, "PRODUCER_HORIZON", DEFAULT_PRODUCER_HORIZON, positive=True),
            max_token_sleep=env_float(env, "MAX_TOKEN_SLEEP", DEFAULT_MAX_TOKEN_SLEEP),
            rate_scale=env_float(env, "RATE_SCALE", DEFAULT_RATE_SCALE) or DEFAULT_RATE_SCALE,
            shutdown_grace=env_float(env, "SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE),
            redis_socket_timeout=env_float(env, "REDIS_SOCKET_TIMEOUT", DEFAULT_REDIS_SOCKET_TIMEOUT, positive=True),
            redis_connect_timeout=env_float(env, "REDIS_CONNECT_TIMEOUT", DEFAULT_REDIS_CONNECT_TIMEOUT,
                                            positive=True),
            redis_retries=env_int(env, "REDIS_RETRIES", DEFAULT_REDIS_RETRIES),
            redis_health_check_interval=env_float(env, "REDIS_HEALTH_CHECK_INTERVAL",
                                                  DEFAULT_REDIS_HEALTH_CHECK_INTERVAL),
            claim_block=env_float(env, "CLAIM_BLOCK", DEFAULT_CLAIM_BLOCK) or DEFAULT_CLAIM_BLOCK,
            task_time_limit=env_float(env, "TASK_TIME_LIMIT", DEFAULT_TASK_TIME_LIMIT),
            outage_backoff_max=env_float(env, "OUTAGE_BACKOFF_MAX", DEFAULT_OUTAGE_BACKOFF_MAX)
            or DEFAULT_OUTAGE_BACKOFF_MAX,
            startup_timeout=env_float(env, "STARTUP_TIMEOUT", DEFAULT_STARTUP_TIMEOUT),
        )
