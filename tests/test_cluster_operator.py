"""Every operator command that touches Redis gives the same answer on a Redis Cluster as on one redis-server.

Two worlds are built alike: one on the session's redis-server, one on its
Redis Cluster of 3 masters and 3 replicas (REDIS_CLUSTER=true), each with its
own SQLite database and the same key prefix. Each holds work in the slots of
several task types (so on several masters): ready, leased, delayed and
dead-lettered tasks (one of them rejected from another type's queue), a live
and a dead worker, a used and a paused rate-limit bucket with their counters,
a paused queue and a rate override.

Every command then runs through campaignctl's entry point (``cli.main``),
only the environment telling the two worlds apart (REDIS_CLUSTER, REDIS_URL,
DATABASE_URL): first the readers (status, queues, workers, limits, dlq
list/show, show, list, review), then the same sequence of changes (pause,
resume, limits --set/--clear, review -i, retry, retry --all, resolve, dlq
requeue/purge) and the readers once more. Outputs are compared with the values
that only say when a command ran masked: times, ages, random ids, tokens
refilling. The dashboard (a real ``campaignctl dashboard`` process per world)
serves the same pages; its fleet snapshot and the fleet gauges
(engine.metrics.FleetCollector, what recovery's /metrics serves) are compared
too. ``campaignctl check`` answers differently by design: it reports the
cluster (masters, slots, the eviction policy of every node).
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
import requests

from campaignctl import cli, fleet
from campaignctl import operations as ops
from campaignctl.context import AppContext
from campaignctl.limits import rate_limits
from engine.controls import Controls
from engine.metrics import FleetCollector
from engine.queue import TaskQueue
from engine.ratelimit import RateLimiter
from engine.task import Task
from migrations import runner
from tests.servers import RedisClusterServer, RedisServer, free_port, stop_groups
from tests.test_dispatch_modes import spread_prefix
from tests.test_operations import with_draft
from tests.workflow.helpers import TO_REVIEW, drive, new_campaigns
from workflow.states import TASK_TYPES

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")
ROOT = Path(__file__).resolve().parents[1]
#: Seconds a command may take before the test gives up on it.
COMMAND_TIMEOUT = 60
#: DASHBOARD_TOKEN of the dashboards the tests start (writes with it as a bearer token).
TOKEN = "cluster-test-token"
#: Names given to the campaigns of a world, in the order they are created.
ROLES = ("review_a", "review_b", "error_listings", "error_market", "waiting_analysis", "failed_email",
         "to_send", "leased_market", "held_by_dead", "ready_property", "unknown_send")


@contextlib.contextmanager
def _as_operator(env: Mapping[str, str], stdin: str) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """The process environment is exactly ``env`` and the standard streams are strings, while it lasts."""
    saved_env, saved_stdin = dict(os.environ), sys.stdin
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stdin = saved_stdin


@attrs.define
class World:
    """One Redis (a node or the cluster), its database, and what was put in them."""

    mode: str
    env: dict[str, str]
    ids: dict[str, int]

    def run(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """``campaignctl ARGV`` through its entry point, in this world's environment: (exit code, stdout, stderr)."""
        with _as_operator(self.env, stdin) as (out, err):
            try:
                code = cli.main(list(argv))
            except SystemExit as exc:
                code = int(exc.code or 0)
        assert "Traceback" not in err.getvalue(), f"[{self.mode}] campaignctl {' '.join(argv)}:\n{err.getvalue()}"
        return code, out.getvalue(), err.getvalue()

    def spawn(self, *argv: str) -> tuple[int, str, str]:
        """``campaignctl ARGV`` as a process of its own (the console script), with only this world's environment."""
        done = subprocess.run([CAMPAIGNCTL, *argv], env=self.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
        assert "Traceback" not in done.stderr, f"[{self.mode}] campaignctl {' '.join(argv)}:\n{done.stderr}"
        return done.returncode, done.stdout, done.stderr

    def json(self, *argv: str) -> Any:
        code, out, err = self.run(*argv, "--json")
        assert code == 0, f"[{self.mode}] campaignctl {' '.join(argv)} --json: exit {code}\n{err}"
        return json.loads(out)

    def context(self) -> AppContext:
        return AppContext(self.env)

    def dead_letter_id(self, **match: Any) -> str:
        """The id of the one dead letter whose fields include ``match`` (ids are random: each world has its own)."""
        found = [e for e in self.json("dlq", "list")["dead_letters"] if match.items() <= e.items()]
        assert len(found) == 1, (self.mode, match, found)
        return str(found[0]["id"])


def _env(redis_url: str, cluster: bool, db_url: str, prefix: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(ROOT),  # the code under test, also from a git worktree
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": "true" if cluster else "false",
        "KEY_PREFIX": prefix,
        "LOG_LEVEL": "WARNING",
    }


def build_world(mode: str, redis_url: str, db_url: str, prefix: str) -> World:
    """Campaigns in every position the commands show, and Redis holding work in several task types' slots."""
    env = _env(redis_url, mode == "cluster", db_url, prefix)
    runner.upgrade(db_url)
    ctx = AppContext(env)
    store = ctx.store
    ids = dict(zip(ROLES, new_campaigns(ctx.db, len(ROLES), seed=7), strict=True))
    with_draft(ctx, ids["review_a"], "first draft")
    with_draft(ctx, ids["review_b"], "second draft")
    drive(store, ids["error_listings"], ("start", "advance", "fail"))
    drive(store, ids["error_market"], ("start", "advance", "advance", "advance", "fail"))
    drive(store, ids["waiting_analysis"], ("start",) + ("advance",) * 4)
    drive(store, ids["failed_email"], ("start",) + ("advance",) * 5)
    drive(store, ids["to_send"], TO_REVIEW + ("approve",))
    drive(store, ids["leased_market"], ("start", "advance", "advance", "advance"))
    drive(store, ids["held_by_dead"], ("start", "advance", "advance"))
    drive(store, ids["ready_property"], ("start",))
    drive(store, ids["unknown_send"], TO_REVIEW + ("approve", "mark_send_unknown"))

    queue = TaskQueue(ctx.redis, ctx.settings, TASK_TYPES)
    queue.enqueue("property_data", ids["ready_property"])
    queue.enqueue("email_sending", ids["to_send"], delay=3600)
    for task_type, role in (("market_data", "leased_market"), ("recent_sales", "held_by_dead"),
                            ("email_creation", "failed_email")):
        queue.enqueue(task_type, ids[role])
    # Payloads a worker rejects at claim time: two malformed ones, and a valid task in another type's queue.
    r = ctx.redis
    r.lpush(queue.keys.queue("home_analysis"), json.dumps({"campaign_id": ids["waiting_analysis"],
                                                            "task_type": "home_analysis"}))
    r.lpush(queue.keys.queue("home_analysis"), "garbage")
    r.lpush(queue.keys.queue("active_listings"), Task.new("home_analysis", ids["waiting_analysis"]).to_json())
    assert queue.claim("w-alive", ["home_analysis", "active_listings"], 5).leases == []
    # A live worker holding market_data, whose email_creation task failed for good; a dead one holding recent_sales.
    held = queue.claim("w-alive", ["market_data", "email_creation"], 2).leases
    assert sorted(lease.task.task_type for lease in held) == ["email_creation", "market_data"]
    failed = next(lease for lease in held if lease.task.task_type == "email_creation")
    assert queue.dead_letter(failed, "permanent: bedrock answered 400", "ValidationException: bad prompt")
    drive(store, ids["failed_email"], ("fail",))
    (dead_held,) = queue.claim("w-dead", ["recent_sales"], 1).leases
    now = time.time()
    market = next(lease for lease in held if lease.task.task_type == "market_data")
    for worker_id, lease in (("w-alive", market), ("w-dead", dead_held)):
        r.hset(queue.keys.workers, worker_id, json.dumps({
            "id": worker_id, "host": "test", "pid": 1, "queues": list(TASK_TYPES), "concurrency": 4,
            "current_tasks": [lease.task.task_id], "heartbeat": now}))
    r.set(queue.keys.worker("w-alive"), "1", px=600_000)
    for task_type in TASK_TYPES:
        r.set(queue.keys.liveness(task_type, "w-alive"), "1", px=600_000)
    # Rate limits: zillow used, bedrock paused by a 429, both counted; runtime controls set.
    limiter = RateLimiter(r, ctx.settings, rate_limits(env))
    assert limiter.reserve("zillow", 60).granted  # a new bucket starts empty: the token is promised
    limiter.pause("bedrock", 3600)
    controls = Controls(r, ctx.settings.key_prefix)
    for _ in range(3):
        controls.count_call("zillow")
    controls.count_throttle("bedrock")
    controls.pause("recent_sales")
    assert ops.set_rate(ctx, "rentcast", "2/s").ok
    ctx.db.dispose()
    ctx.redis.close()
    return World(mode, env, ids)


@pytest.fixture
def worlds(tmp_path: Path, key_prefix: str, redis_server: RedisServer,
           redis_cluster: RedisClusterServer) -> tuple[World, World]:
    prefix = spread_prefix(key_prefix, redis_cluster)  # the task types' slots on every master
    node = build_world("node", redis_server.url, f"sqlite:///{tmp_path / 'node.db'}", prefix)
    cluster = build_world("cluster", redis_cluster.url, f"sqlite:///{tmp_path / 'cluster.db'}", prefix)
    assert node.ids == cluster.ids
    return node, cluster


# -- masking what only says when a command ran ---------------------------------------------------------

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:\+00:00| UTC)?")
_HEX = re.compile(r"\b[0-9a-f]{16,}\b")
_DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)? ?(?:ms|s)\b|\b\d+[mhd]\d+[smh]\b")
_TOKENS = re.compile(r"(?<![\w.])-?\d+\.\d{2,3}(?![\d/])")  # a bucket's tokens, refilling as time goes
_BOX = re.compile(r"[\u2500-\u257f]+")
_EPOCH = re.compile(r"\b1\d{9}(?:\.\d+)?\b")  # seconds since 1970, inside a raw payload
#: JSON fields whose value says when (times, ages, a bucket refilling), not what.
VOLATILE = {"at", "enqueued_at", "heartbeat", "updated_at", "waiting_since", "next_run_at", "created_at",
            "oldest_ready_age", "age", "paused_until", "paused_for", "tokens", "wait", "p50", "p95", "taken_at",
            "sent_at", "started_at", "finished_at"}


def mask_text(text: str) -> list[str]:
    """Lines of a table or message with times, durations, ids and token counts masked and spacing collapsed."""
    text = _TIME.sub("<time>", text)
    text = _HEX.sub("<id>", text)
    text = _DURATION.sub("<dur>", text)
    text = _TOKENS.sub("<n>", text)
    text = _BOX.sub(" ", text)
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def mask(value: Any, key: str | None = None) -> Any:
    """A JSON document with VOLATILE fields reduced to whether they are set, and random ids masked."""
    if isinstance(value, dict):
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if key in VOLATILE:
        return None if value is None else "<set>"
    if isinstance(value, str):
        return _EPOCH.sub("<time>", _HEX.sub("<id>", _TIME.sub("<time>", value)))
    return value


def same(node: Any, cluster: Any, what: str) -> None:
    assert node == cluster, f"{what} differs between one node and the cluster:\nnode:    {node}\ncluster: {cluster}"


# -- the commands ---------------------------------------------------------------------------------------


def readers(world: World) -> list[tuple[str, ...]]:
    """Every reading command, with the ids of this world."""
    ids = world.ids
    entries = world.json("dlq", "list")["dead_letters"]
    shown = [("dlq", "show", str(entries[-1]["id"])), ("dlq", "show", str(entries[-1]["id"]), "--json")] \
        if entries else []
    return [
        ("status",), ("status", "--json"),
        ("queues",), ("queues", "--json"),
        ("workers",), ("workers", "--json"),
        ("limits",), ("limits", "--json"),
        ("dlq", "list"), ("dlq", "list", "--json"),
        *shown, ("dlq", "show", "nope"),
        ("show", str(ids["failed_email"])), ("show", str(ids["failed_email"]), "--json"),
        ("show", str(ids["review_a"]), "--draft"), ("show", str(ids["review_a"]), "--draft", "--json"),
        ("list",), ("list", "--json"), ("list", "--status", "ERROR", "--json"),
        ("review",), ("review", "--json"),
    ]


def read_all(world: World) -> dict[tuple[str, ...], tuple[int, Any]]:
    """Every reader's (exit code, masked output); the argv is given with the dead letter's id masked."""
    commands = readers(world)

    def one(argv: tuple[str, ...]) -> tuple[int, Any]:
        code, out, err = world.run(*argv)
        return code, mask(json.loads(out)) if "--json" in argv and code == 0 else mask_text(out + err)

    return {tuple(_HEX.sub("<id>", a) for a in argv): one(argv) for argv in commands}


def compare_readers(node: World, cluster: World) -> dict[tuple[str, ...], tuple[int, Any]]:
    on_node, on_cluster = read_all(node), read_all(cluster)
    assert list(on_node) == list(on_cluster)
    for argv in on_node:
        same(on_node[argv], on_cluster[argv], f"campaignctl {' '.join(argv)}")
    return on_cluster


def changes(world: World) -> list[tuple[str, tuple[int, list[str]]]]:
    """The operator's changes, in order, each with its (exit code, masked output)."""
    ids = world.ids
    out: list[tuple[str, tuple[int, list[str]]]] = []

    def step(*argv: str, stdin: str = "") -> None:
        code, stdout, stderr = world.run(*argv, stdin=stdin)
        out.append((" ".join(_HEX.sub("<id>", a) for a in argv), (code, mask_text(stdout + stderr))))

    step("pause", "market_data")
    step("pause", "market_data")
    step("resume", "recent_sales")
    step("limits", "--set", "zillow", "20/min")
    step("limits", "--clear", "rentcast")
    step("review", "-i", stdin="a\nu\n")  # approve the first draft (queues its send), unsubscribe the second
    step("retry", str(ids["error_listings"]))
    step("retry", "--all", "--stage", "market_data")
    step("resolve", str(ids["unknown_send"]), "--not-sent")
    step("approve", str(ids["error_market"]))  # not a draft: refused, exit 1
    step("unsubscribe", str(ids["held_by_dead"]))
    step("approve", "--all")
    step("retry", "--all")
    step("dlq", "requeue", world.dead_letter_id(campaign_id=ids["failed_email"], task_type="email_creation"))
    # The task found in active_listings' queue, though it names home_analysis: its list is not its type's slot.
    step("dlq", "requeue", world.dead_letter_id(task_type="home_analysis", campaign_id=ids["waiting_analysis"],
                                                reason="malformed payload: task_type 'home_analysis' found in "
                                                       "the 'active_listings' queue"))
    step("dlq", "requeue", "--all")
    step("dlq", "purge")
    step("dlq", "purge")
    return out


# -- the tests ----------------------------------------------------------------------------------------


def test_readers_answer_the_same_on_a_cluster(worlds: tuple[World, World]) -> None:
    node, cluster = worlds
    # When every reading command runs on both
    answers = compare_readers(node, cluster)
    # Then they agree (compare_readers), and what they agree on is the world that was built
    queues = answers[("queues", "--json")][1]["queues"]
    assert {t: (q["ready"], q["in_flight"], q["delayed"], q["paused"]) for t, q in queues.items()} == {
        "property_data": (1, 0, 0, False), "active_listings": (0, 0, 0, False), "recent_sales": (0, 1, 0, True),
        "market_data": (0, 1, 0, False), "home_analysis": (0, 0, 0, False), "email_creation": (0, 0, 0, False),
        "email_sending": (0, 0, 1, False)}
    assert answers[("queues", "--json")][1]["dead_letters"] == 4
    workers = answers[("workers", "--json")][1]["workers"]
    assert [(w["id"], w["alive"]) for w in workers] == [("w-alive", True), ("w-dead", False)]
    limits = answers[("limits", "--json")][1]["limits"]
    assert (limits["zillow"]["calls"], limits["bedrock"]["throttled"], limits["rentcast"]["override"]) == (3, 1, "2/s")
    assert limits["bedrock"]["paused_until"] == "<set>" and limits["zillow"]["paused_until"] is None
    assert answers[("dlq", "show", "nope")][0] == 2


def test_changes_do_the_same_on_a_cluster(worlds: tuple[World, World]) -> None:
    node, cluster = worlds
    # When the operator makes the same changes on both
    on_node, on_cluster = changes(node), changes(cluster)
    # Then every command answered the same, exit code and all
    for (argv, a), (_, b) in zip(on_node, on_cluster, strict=True):
        same(a, b, f"campaignctl {argv}")
    codes = {argv: answer[0] for argv, answer in on_cluster}
    assert codes["dlq requeue --all"] == 1, on_cluster  # the garbage entry cannot be rebuilt: refused
    assert codes[f"approve {cluster.ids['error_market']}"] == 1, on_cluster
    assert [argv for argv, code in codes.items() if code not in (0, 1)] == []
    # And every reader agrees afterwards
    answers = compare_readers(node, cluster)
    queues = answers[("queues", "--json")][1]["queues"]
    assert {t: q["ready"] for t, q in queues.items()} == {
        "property_data": 1, "active_listings": 1, "recent_sales": 0, "market_data": 1, "home_analysis": 1,
        "email_creation": 1, "email_sending": 2}
    assert answers[("queues", "--json")][1]["dead_letters"] == 0
    assert queues["market_data"]["paused"] and not queues["recent_sales"]["paused"]
    limits = answers[("limits", "--json")][1]["limits"]
    assert (limits["zillow"]["override"], limits["rentcast"]["override"]) == ("20/min", None)


def test_the_fleet_snapshot_and_gauges_are_the_same_on_a_cluster(worlds: tuple[World, World]) -> None:
    """What the dashboard's overview and recovery's fleet gauges read (campaignctl.fleet, engine.metrics)."""
    def read(world: World) -> tuple[Any, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
        ctx = world.context()
        try:
            snapshot = fleet.read_snapshot(ctx)
            collector = FleetCollector(lambda: fleet.read_snapshot(ctx), 0.0)
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in collector.collect() for s in family.samples
                       if not s.name.endswith(("_age_seconds", "_ratelimit_tokens"))}
            assert collector.reads == 1  # the read did not fail (a failed read would leave no gauges)
        finally:
            ctx.db.dispose()
            ctx.redis.close()
        return mask(snapshot), samples

    node, cluster = (read(w) for w in worlds)
    same(node[0], cluster[0], "fleet.read_snapshot")
    same(node[1], cluster[1], "the fleet gauges")
    assert cluster[1][("campaign_engine_queue_tasks", (("state", "in_flight"), ("type", "market_data")))] == 1
    assert cluster[1][("campaign_engine_workers", (("state", "dead"),))] == 1
    assert cluster[1][("campaign_engine_ratelimit_bucket_paused", (("api", "bedrock"),))] == 1


@pytest.fixture
def dashboards(worlds: tuple[World, World], tmp_path: Path) -> Iterator[tuple[tuple[World, str], ...]]:
    """``campaignctl dashboard`` serving each world: (world, base URL)."""
    started = []
    try:
        for world in worlds:
            port = free_port()
            log = open(tmp_path / f"dashboard-{world.mode}.log", "wb")  # noqa: SIM115 - the child owns it
            proc = subprocess.Popen([CAMPAIGNCTL, "dashboard", "--port", str(port)],
                                    env={**world.env, "DASHBOARD_TOKEN": TOKEN}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            started.append((world, f"http://127.0.0.1:{port}", proc))
        for world, url, proc in started:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{url}/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / f"dashboard-{world.mode}.log").read_text()
                time.sleep(0.1)
        yield tuple((world, url) for world, url, _ in started)
    finally:
        stop_groups((proc for _, _, proc in started), 10)


def _page_text(url: str) -> list[str]:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, (url, answer.status_code, answer.text[:500])
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", answer.text, flags=re.S)
    return mask_text(html.unescape(re.sub(r"<[^>]+>", "\n", text)))


def test_the_dashboard_shows_the_same_on_a_cluster(dashboards: tuple[tuple[World, str], ...]) -> None:
    (node, node_url), (cluster, cluster_url) = dashboards
    ids = node.ids
    for path in ("/", "/overview/live", "/review", f"/campaigns/{ids['failed_email']}",
                 f"/campaigns/{ids['review_a']}"):
        on_node, on_cluster = _page_text(node_url + path), _page_text(cluster_url + path)
        same(on_node, on_cluster, f"dashboard {path}")
    live = _page_text(cluster_url + "/overview/live")
    assert any("market_data" in line for line in live) and any("w-dead" in line for line in live), live
    # And its writes do the same: retry a campaign in ERROR, approve a draft (each queues a task)
    for action, role in (("retry", "error_listings"), ("approve", "review_a")):
        answers = [requests.post(f"{url}/campaigns/{ids[role]}/{action}", headers={"Authorization": f"Bearer {TOKEN}"},
                                 allow_redirects=False, timeout=10) for url in (node_url, cluster_url)]
        assert [a.status_code for a in answers] == [303, 303], [a.text for a in answers]
        same(*(_HEX.sub("<id>", a.headers["location"]) for a in answers), f"dashboard POST {action}")
        assert " -> " in urllib.parse.unquote(answers[1].headers["location"]), answers[1].headers["location"]
    same(*(mask(w.json("queues")) for w in (node, cluster)), "queues --json after the dashboard's writes")
    queues = cluster.json("queues")["queues"]
    assert (queues["active_listings"]["ready"], queues["email_sending"]["ready"]) == (1, 1)


# -- campaignctl check ----------------------------------------------------------------------------------


def test_check_reports_the_cluster(worlds: tuple[World, World]) -> None:
    node, cluster = worlds
    code, out, err = cluster.spawn("check")
    assert code == 0, err
    assert "Redis Cluster" in out and "3 masters" in out and "all 16384 slots served" in out, out
    assert "maxmemory-policy noeviction on all 6 nodes" in out, out
    code, out, err = node.spawn("check")
    assert code == 0 and "single node" in out and "maxmemory-policy noeviction" in out, out + err
    assert cluster.spawn("check", "--quiet")[1:] == ("", "")


def test_check_names_a_node_that_would_evict(worlds: tuple[World, World], redis_cluster: RedisClusterServer) -> None:
    _, cluster = worlds
    port = redis_cluster.ports[-1]
    node = redis.Redis(port=port, decode_responses=True)
    node.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, out, err = cluster.spawn("check", "--quiet")
    finally:
        node.config_set("maxmemory-policy", "noeviction")
        node.close()
    assert code == 0, err  # a warning: Redis answers, and the engine runs (warning at start-up too)
    assert out == "" and f"127.0.0.1:{port}" in err and "allkeys-lru" in err and "noeviction" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_check_fails_naming_the_slots_no_master_serves(tmp_path: Path) -> None:
    # Given a cluster of its own (3 masters, no replicas: nothing fails over) that loses a master
    cluster = RedisClusterServer(masters=3, replicas=0).start()
    try:
        lost = cluster.master_of("{x}")
        cluster.kill(lost)
        url = next(f"redis://127.0.0.1:{p}/0" for p in cluster.ports if p != lost)
        world = World("cluster", _env(url, True, f"sqlite:///{tmp_path / 'c.db'}", "t"), {})
        runner.upgrade(world.env["DATABASE_URL"])
        # When the operator runs check
        code, out, err = world.spawn("check")
    finally:
        cluster.cleanup()
    # Then it fails in one line naming the slots and the master that does not answer
    assert code == 1 and out == "", out + err
    (line,) = err.strip().splitlines()
    assert re.match(rf"campaignctl check: Redis Cluster at {re.escape(url)}: 546[12] of 16384 slots have no master "
                    "that answers", line), line
    assert f"of 127.0.0.1:{lost}:" in line and "Connection refused" in line, line


def test_check_fails_when_redis_url_names_a_replica(redis_server: RedisServer, tmp_path: Path) -> None:
    # Given REDIS_URL naming a replica of the session's redis-server (it refuses every write)
    replica = RedisServer(appendonly=False).start()
    try:
        redis.Redis(port=replica.port).replicaof("127.0.0.1", redis_server.port)
        world = World("node", _env(replica.url, False, f"sqlite:///{tmp_path / 'n.db'}", "t"), {})
        runner.upgrade(world.env["DATABASE_URL"])
        code, out, err = world.spawn("check")
    finally:
        replica.cleanup()
    # Then check fails in one line saying so
    assert (code, out) == (1, ""), err
    assert err == f"campaignctl check: Redis at {replica.url}: REDIS_URL names a replica, which refuses writes: " \
                  "point it at the primary\n"
