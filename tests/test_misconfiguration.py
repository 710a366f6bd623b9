"""Every subcommand, against every misconfiguration: one line naming the cause, no traceback, the documented code.

Exit codes (campaignctl.cli): 2 for a bad setting (and a wrong or missing
Redis password), 1 for Redis or the database unavailable. Most cases run
``cli.main`` in-process (an uncaught exception fails the test, so "no
traceback" is checked too); a few run the installed ``campaignctl`` to see
exactly what a user sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaignctl import cli
from migrations import runner
from tests.servers import free_port, stop_process

CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")

#: (argv, needs Redis, needs the database). Services run one pass and do not wait for an outage to end.
COMMANDS: list[tuple[list[str], bool, bool]] = [
    (["status"], False, True),
    (["status", "--json"], False, True),
    (["show", "1"], False, True),
    (["show", "1", "--draft", "--json"], False, True),
    (["list", "--status", "ERROR"], False, True),
    (["review", "--json"], False, True),
    (["approve", "1"], False, True),
    (["approve", "--all"], False, True),
    (["retry", "1"], False, True),
    (["retry", "--all"], False, True),
    (["unsubscribe", "1"], False, True),
    (["resolve", "1", "--sent"], False, True),
    (["seed", "--count", "1"], False, True),
    (["migrate"], False, True),
    (["graph"], False, False),
    (["check"], True, True),
    (["queues"], True, False),
    (["queues", "--json"], True, False),
    (["workers"], True, False),
    (["limits"], True, False),
    (["limits", "--set", "zillow", "20/min"], True, False),
    (["pause", "market_data"], True, False),
    (["resume", "market_data"], True, False),
    (["dlq", "list"], True, False),
    (["dlq", "show", "x"], True, False),
    (["dlq", "requeue", "x"], True, False),
    (["dlq", "purge"], True, False),
    (["producer", "--once"], True, True),
    (["recovery", "--once"], True, True),
    (["worker", "--burst", "--no-wait"], True, True),
    (["upgrade-redis", "--dry-run"], True, False),
]
#: Commands that only start when every setting is good (they bring their own Redis / serve forever / call AWS).
SETTINGS_ONLY: list[list[str]] = [["demo", "--campaigns", "1"], ["sandbox", "--port", "0"],
                                  ["provision-redis", "--dry-run"]]

#: (variable, bad value, text the one line must contain).
BAD_SETTINGS = [
    ("LOG_LEVEL", "foo", "LOG_LEVEL"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT"),
    ("VISIBILITY_TIMEOUT", "abc", "VISIBILITY_TIMEOUT"),
    ("MAX_LEASE_LOSSES", "2.5", "MAX_LEASE_LOSSES"),
    ("RATE_SCALE", "-1", "RATE_SCALE"),
    ("LIVENESS_TTL", "nan", "LIVENESS_TTL"),
    ("STALL_THRESHOLD", "x", "STALL_THRESHOLD"),
    ("RATE_ZILLOW", "fast", "RATE_ZILLOW"),
    ("BURST_RENTCAST", "0", "BURST_RENTCAST"),
    ("RATE_HEADROOM", "2", "RATE_HEADROOM"),
    ("AUTO_APPROVE", "maybe", "AUTO_APPROVE"),
    ("POLL_INTERVAL", "x", "POLL_INTERVAL"),
    ("DISPATCH_MODE", "carrier-pigeon", "DISPATCH_MODE"),
    ("TASK_TIME_LIMIT", "soon", "TASK_TIME_LIMIT"),
    ("SANDBOX_PORT", "abc", "SANDBOX_PORT"),
    ("REDIS_URL", "garbage", "REDIS_URL"),
    ("REDIS_URL", "redis://127.0.0.1:abc/0", "REDIS_URL"),
    ("DATABASE_URL", "garbage", "DATABASE_URL"),
    ("DATABASE_URL", "mysql://user@127.0.0.1/campaigns", "DATABASE_URL"),
]


@pytest.fixture
def good_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, redis_url: str, key_prefix: str) -> str:
    for name in [n for n in __import__("os").environ if n.startswith(("RATE_", "BURST_", "LOG_", "REDIS_"))]:
        monkeypatch.delenv(name)
    runner.upgrade(sqlite_url)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    monkeypatch.setenv("STARTUP_TIMEOUT", "1")
    return sqlite_url


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name,value,named", BAD_SETTINGS, ids=[f"{n}={v}" for n, v, _ in BAD_SETTINGS])
def test_a_bad_setting_fails_every_command_in_one_line_with_exit_2(
        good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, value: str, named: str) -> None:
    monkeypatch.setenv(name, value)
    for argv in [c[0] for c in COMMANDS] + SETTINGS_ONLY:
        code, out, err = run(capsys, argv)
        assert code == 2, (argv, code, out, err)
        line = one_line(err)
        assert line.startswith("campaignctl ") and named in line, (argv, line)


def test_lowercase_log_level_works_and_garbage_after_the_subcommand_is_refused(
        good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "info")
    assert run(capsys, ["graph"])[0] == 0
    assert run(capsys, ["status", "--log-level", "debug"])[0] == 0
    code, _, err = run(capsys, ["status", "--log-level", "loud"])
    assert code == 2 and "--log-level" in err


def _check_outage(capsys: pytest.CaptureFixture[str], *, redis: bool, db: bool, code: int, named: str) -> None:
    for argv, needs_redis, needs_db in COMMANDS:
        got, out, err = run(capsys, argv)
        if got:
            line = one_line(err)
            assert line.startswith("campaignctl "), (argv, line)
        if (redis and needs_redis) or (db and needs_db):
            assert got == code and named in err, (argv, got, out, err)


def test_redis_down(good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    _check_outage(capsys, redis=True, db=False, code=1, named="Redis at redis://:***@127.0.0.1")


def test_database_unreachable(good_env: str, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://campaigns:pw@127.0.0.1:{free_port()}/campaigns")
    _check_outage(capsys, redis=False, db=True, code=1, named="the database at postgresql+psycopg2://campaigns:***@")


def test_postgres_database_that_does_not_exist(good_env: str, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, pg_server) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", pg_server.url_for("no_such_database"))
    _check_outage(capsys, redis=False, db=True, code=1, named="no_such_database")


def test_sqlite_file_in_a_missing_folder(good_env: str, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/no/such/folder/x.db")
    _check_outage(capsys, redis=False, db=True, code=1, named="the database at sqlite:///")


def test_database_not_migrated(good_env: str, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    code, _, err = run(capsys, ["status"])
    assert code == 1 and "campaignctl migrate" in one_line(err)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", "right", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port, password="right")
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            __import__("time").sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    stop_process(proc)


@pytest.mark.parametrize("password", ["wrong", None])
def test_wrong_or_missing_redis_password_says_set_redis_password(
        good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        redis_with_password: str, password: str | None) -> None:
    monkeypatch.setenv("REDIS_URL", redis_with_password)
    if password:
        monkeypatch.setenv("REDIS_PASSWORD", password)
    _check_outage(capsys, redis=True, db=False, code=2, named="set REDIS_PASSWORD")
    assert "wrong" not in capsys.readouterr().err


def test_huge_ids_are_bad_arguments(good_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["show", str(2**63)], ["approve", str(2**64)], ["retry", "99999999999999999999999"]):
        code, _, err = run(capsys, argv)
        assert code == 2 and "at most" in err
    code, _, err = run(capsys, ["show", str(2**63 - 1)])
    assert code == 2 and one_line(err).endswith(f"no campaign with id {2**63 - 1}")


def test_dlq_requeue_of_an_unknown_id_is_one_message(good_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, ["dlq", "requeue", "nosuch"])
    assert code == 2 and out == "" and one_line(err) == "campaignctl dlq requeue: no dead letter with id 'nosuch'"


# -- as a user sees it (subprocesses) ----------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATE_", "REDIS_", "LOG_", "DATABASE_"))}
    env.update(extra)
    return env


def test_help_works_with_a_bad_sandbox_port_and_commands_say_why(tmp_path: Path) -> None:
    env = _env(SANDBOX_PORT="abc", DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    for argv in (["--help"], ["sandbox", "--help"], ["worker", "--help"]):
        proc = subprocess.run([CAMPAIGNCTL, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", (argv, proc.stderr)
        if argv[0] == "worker":  # the default queue order is said
            assert "last stage first:" in proc.stdout and "email_sending,email_creation,home_analysis" in " ".join(
                proc.stdout.split()).replace(", ", ",")
        if argv[0] == "sandbox":
            assert "/_sandbox/emails" in proc.stdout
    proc = subprocess.run([CAMPAIGNCTL, "graph"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "SANDBOX_PORT" in proc.stderr


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    env = _env(DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    runner.upgrade(env["DATABASE_URL"])
    # Far more output than a pipe buffers (64 KiB), so the writer really meets the closed pipe.
    assert subprocess.run([CAMPAIGNCTL, "seed", "--count", "1500"], env=env, capture_output=True,
                          timeout=120).returncode == 0
    proc = subprocess.run(f"'{CAMPAIGNCTL}' list --limit 1500 | head -3", shell=True, env=env,
                          capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 3 and proc.stderr == "", proc.stderr
    proc = subprocess.run(f"'{CAMPAIGNCTL}' list --limit 1500 --json | head -c 100", shell=True, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr == "", proc.stderr
    proc = subprocess.run(f"'{CAMPAIGNCTL}' graph | head -1", shell=True, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.startswith("stateDiagram") and proc.stderr == ""
    proc = subprocess.run(f"'{CAMPAIGNCTL}' worker --help | head -1", shell=True, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stderr == ""


def test_log_level_after_the_subcommand_and_lowercase(tmp_path: Path) -> None:
    env = _env(DATABASE_URL=f"sqlite:///{tmp_path}/x.db", LOG_LEVEL="info")
    proc = subprocess.run([CAMPAIGNCTL, "migrate", "--log-level", "warning"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_demo_with_a_bad_fault_spec_exits_2_before_starting_anything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run([CAMPAIGNCTL, "demo", "--faults", "garbage", "--dir", str(workdir)],
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--faults" in proc.stderr
    assert not workdir.exists()  # no Redis started, nothing migrated or seeded


def test_migrate_wait_waits_for_the_database(tmp_path: Path) -> None:
    # Given a database that cannot be opened yet (its folder appears a moment later)
    folder = tmp_path / "later"
    env = _env(DATABASE_URL=f"sqlite:///{folder}/c.db", STARTUP_TIMEOUT="30")
    proc = subprocess.Popen([CAMPAIGNCTL, "migrate", "--wait"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    __import__("time").sleep(1.5)
    assert proc.poll() is None  # still waiting, not failed
    folder.mkdir()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "database at revision" in out, err
    # And without --wait, or once STARTUP_TIMEOUT passes, it is one line and exit 1
    env = _env(DATABASE_URL=f"sqlite:///{tmp_path}/never/c.db", STARTUP_TIMEOUT="1")
    for argv in (["migrate"], ["migrate", "--wait"]):
        done = subprocess.run([CAMPAIGNCTL, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("campaignctl migrate: ")]


def test_redis_cluster_unset_against_a_cluster_says_set_it(
        good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REDIS_URL", redis_cluster.url)
    _check_outage(capsys, redis=True, db=False, code=2, named="set REDIS_CLUSTER=true")


def test_redis_cluster_set_against_a_single_node_says_unset_it(
        good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    _check_outage(capsys, redis=True, db=False, code=2, named="unset REDIS_CLUSTER")


def test_redis_cluster_down(good_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    _check_outage(capsys, redis=True, db=False, code=1, named="is unavailable")
    assert "s3cret" not in capsys.readouterr().err
