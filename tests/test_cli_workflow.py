"""The workflow commands of ``campaignctl``, on SQLite and PostgreSQL, with a real Redis.

Most tests call ``cli.main([...])`` in-process; a few run the installed
``campaignctl`` as a subprocess to check what a user sees (exit codes, no
traceback, a working ``migrate`` from any directory).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from campaignctl import cli
from engine.queue import TaskQueue
from engine.settings import EngineSettings
from migrations import runner
from tests.servers import free_port
from tests.workflow.helpers import TO_REVIEW, drive, new_campaigns
from workflow.db import make_engine
from workflow.machine import mermaid
from workflow.states import TASK_TYPES, Stage, Status
from workflow.store import CampaignStore

CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")


class Env:
    def __init__(self, engine: Engine, settings: EngineSettings, client: redis.Redis) -> None:
        self.engine = engine
        self.store = CampaignStore(engine)
        self.queue = TaskQueue(client, settings, TASK_TYPES)

    def ready(self, task_type: str) -> int:
        return self.queue.stats()["queues"][task_type]["ready"]

    def position(self, cid: int) -> tuple[Status, Stage]:
        snap = self.store.get(cid)
        return snap.campaign_status, snap.processing_stage


@pytest.fixture
def env(db_url: str, redis_url: str, redis_client: redis.Redis, key_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    runner.upgrade(db_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    engine = make_engine(db_url)
    yield Env(engine, EngineSettings.from_env({"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}), redis_client)
    engine.dispose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """cli.main in-process; argparse's SystemExit becomes an exit code."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- status, show ----------------------------------------------------------------


def test_status_json_lists_every_status_and_stage(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = new_campaigns(env.engine, 3)
    drive(env.store, ids[0], ["start", "advance"])
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == ["campaigns", "stages", "error_reasons", "unknown_ids", "time_in_stage"]
    assert doc["time_in_stage"]["property_data"]["n"] == 1
    assert {k: doc[k] for k in ("campaigns", "stages")} == {
        "campaigns": {"DORMANT": 2, "PROCESSING": 1, "READY_FOR_REVIEW": 0, "READY_TO_SEND": 0,
                      "SEND_OUTCOME_UNKNOWN": 0, "SENT": 0, "ERROR": 0, "UNSUBSCRIBED": 0},
        "stages": {"property_data": 0, "active_listings": 1, "recent_sales": 0, "market_data": 0,
                   "home_analysis": 0, "email_creation": 0},
    }


def test_status_shows_error_reasons_and_unknown_sends(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = new_campaigns(env.engine, 4)
    for cid in ids[:2]:
        drive(env.store, cid, ["start"])
        env.store.apply(cid, "fail", error="zillow: address unknown")
    drive(env.store, ids[2], TO_REVIEW + ("approve", "mark_send_unknown"))
    code, out, _ = run(capsys, "status", "--json")
    doc = json.loads(out)
    assert doc["error_reasons"] == [{"reason": "zillow: address unknown", "count": 2, "ids": ids[:2]}]
    assert doc["unknown_ids"] == [ids[2]]
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert "p95 in stage" in out
    assert "SEND_OUTCOME_UNKNOWN" in out and "unknown outcome" in out and str(ids[2]) in out
    assert "ERROR reasons" in out and "zillow: address unknown" in out and f"{ids[0]}, {ids[1]}" in out


def test_show_json_shape(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, ["start"])
    env.store.apply(cid, "fail", error="rentcast: 401", task_id="task-1", worker_id="w-1")
    code, out, _ = run(capsys, "show", str(cid), "--json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == ["id", "campaign_status", "processing_stage", "run_id", "version", "last_error", "history"]
    assert (doc["id"], doc["campaign_status"], doc["processing_stage"], doc["run_id"], doc["version"],
            doc["last_error"]) == (cid, "ERROR", "property_data", 1, 2, "rentcast: 401")
    first, second = doc["history"]
    assert list(second) == ["from_status", "to_status", "from_stage", "to_stage", "trigger", "at", "task_id",
                            "worker_id", "detail"]
    assert (first["from_status"], first["to_status"], first["trigger"]) == ("DORMANT", "PROCESSING", "start")
    assert (second["to_status"], second["task_id"], second["worker_id"], second["detail"]) == (
        "ERROR", "task-1", "w-1", "rentcast: 401")
    assert dt.datetime.fromisoformat(second["at"]).utcoffset() == dt.timedelta(0)


def test_show_human_output(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, TO_REVIEW + ("approve", "mark_send_unknown"))
    code, out, _ = run(capsys, "show", str(cid))
    assert code == 0
    assert f"Campaign {cid}" in out and "History" in out and "mark_send_unknown" in out
    assert "outcome is unknown" in out


@pytest.mark.parametrize("argv", [["show", "abc"], ["show", "0"], ["show", "-3"], ["show"], ["show", "1", "--bogus"],
                                  ["status", "--bogus"], ["approve"], ["approve", "1", "--all"], ["retry", "x"],
                                  ["unsubscribe", "1.5"], ["nosuchcommand"]])
def test_bad_arguments_exit_2(env: Env, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and err and "Traceback" not in err


@pytest.mark.parametrize("command", ["show", "approve", "retry", "unsubscribe"])
def test_unknown_id_exits_2(env: Env, capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, _, err = run(capsys, command, "4242")
    assert code == 2 and err.strip() == f"campaignctl {command}: no campaign with id 4242"


# -- approve, retry, unsubscribe -----------------------------------------------------


def test_approve_moves_the_campaign_and_queues_the_send(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, TO_REVIEW)
    code, out, _ = run(capsys, "approve", str(cid))
    assert code == 0 and "READY_FOR_REVIEW -> READY_TO_SEND" in out and "queued email_sending" in out
    assert env.position(cid) == (Status.READY_TO_SEND, Stage.IDLE)
    assert env.ready("email_sending") == 1
    assert env.store.history(cid)[-1]["worker_id"] == "campaignctl"
    # approving again is refused in one line and queues nothing more
    code, _, err = run(capsys, "approve", str(cid))
    assert code == 1 and err.strip() == f"campaignctl approve: campaign {cid}: cannot approve a campaign that is READY_TO_SEND"
    assert env.ready("email_sending") == 1


def test_approve_an_unreviewed_campaign_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    code, _, err = run(capsys, "approve", str(cid))
    assert code == 1 and err.count("\n") == 1 and "cannot approve a campaign that is DORMANT" in err
    assert env.position(cid) == (Status.DORMANT, Stage.IDLE) and env.ready("email_sending") == 0


def test_approve_all(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = new_campaigns(env.engine, 4)
    for cid in ids[:3]:
        drive(env.store, cid, TO_REVIEW)
    code, out, _ = run(capsys, "approve", "--all")
    assert code == 0 and "approved 3 campaigns" in out and "queued 3 email_sending tasks" in out
    assert [env.position(c)[0] for c in ids] == [Status.READY_TO_SEND] * 3 + [Status.DORMANT]
    assert env.ready("email_sending") == 3
    code, out, _ = run(capsys, "approve", "--all")
    assert code == 0 and "approved 0 campaigns" in out


def test_approve_with_redis_down_says_so_and_keeps_the_database_change(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, TO_REVIEW)
    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    code, out, err = run(capsys, "approve", str(cid))
    assert code == 1
    assert "unreachable" in err and "recovery will queue" in err and "Traceback" not in err
    assert "s3cret" not in out + err
    assert env.position(cid) == (Status.READY_TO_SEND, Stage.IDLE)


def test_retry_resumes_the_failed_stage_and_queues_it(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, ["start", "advance", "advance", "advance", "fail"])
    code, out, _ = run(capsys, "retry", str(cid))
    assert code == 0 and "queued market_data" in out
    assert env.position(cid) == (Status.PROCESSING, Stage.MARKET_DATA)
    assert env.ready("market_data") == 1
    code, _, err = run(capsys, "retry", str(cid))
    assert code == 1 and "cannot retry a campaign that is PROCESSING:market_data" in err


def test_retry_a_failed_send_queues_the_send(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, TO_REVIEW + ("approve", "fail"))
    code, out, _ = run(capsys, "retry", str(cid))
    assert code == 0 and env.position(cid) == (Status.READY_TO_SEND, Stage.IDLE)
    assert env.ready("email_sending") == 1


def test_unsubscribe(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [cid] = new_campaigns(env.engine)
    drive(env.store, cid, ["start"])
    code, out, _ = run(capsys, "unsubscribe", str(cid))
    assert code == 0 and "-> UNSUBSCRIBED" in out
    code, _, err = run(capsys, "unsubscribe", str(cid))
    assert code == 1 and "cannot unsubscribe a campaign that is UNSUBSCRIBED" in err


# -- seed, migrate, graph -------------------------------------------------------------


def test_seed_count_and_due_in(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "seed", "--count", "5", "--due-in", "3600")
    assert code == 0 and "created 5 DORMANT campaigns" in out
    assert env.store.counts()["campaigns"]["DORMANT"] == 5
    assert env.store.start_due(limit=10) == []
    code, _, _ = run(capsys, "seed", "--count", "3")
    assert code == 0 and len(env.store.start_due(limit=10)) == 3
    snaps = [env.store.get(i) for i in range(1, 9)]
    assert len({s.email for s in snaps}) == 8


@pytest.mark.parametrize("argv", [["seed"], ["seed", "--count", "0"], ["seed", "--count", "x"],
                                  ["seed", "--count", "2", "--due-in", "-1"], ["seed", "--count", "2", "--csv", "f"],
                                  ["seed", "--csv", "/no/such/file.csv"]])
def test_seed_bad_arguments_exit_2(env: Env, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err and "Traceback" not in err


def test_seed_csv_keeps_good_rows_and_reports_bad_lines(env: Env, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    path = tmp_path / "owners.csv"
    path.write_text("name,email,street,city,state,zip\n"
                    "Ann,ann@example.com,1 Oak Ave,Austin,TX,78701\n"
                    "Bob,bob@example.com,2 Oak Ave,Austin,ZZ,78701\n"
                    "Cy,cy@example.com,3 Oak Ave,Austin,TX,78701\n")
    code, out, err = run(capsys, "seed", "--csv", str(path), "--due-in", "10")
    assert code == 1
    assert "created 2 DORMANT campaigns" in out
    assert f"{path}: line 3: state 'ZZ' is not a US state code" in err and "1 row rejected" in err
    assert env.store.counts()["campaigns"]["DORMANT"] == 2


def test_seed_csv_with_a_bad_header_exits_2(env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "owners.csv"
    path.write_text("who,where\nAnn,Austin\n")
    code, _, err = run(capsys, "seed", "--csv", str(path))
    assert code == 2 and "the header lacks name, email, street, city, state, zip" in err


def test_graph_prints_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "graph")
    assert code == 0 and out == mermaid()
    code, out, _ = run(capsys, "graph", "--no-unsubscribe")
    assert code == 0 and out == mermaid(include_unsubscribe=False)


def test_migrate_down_and_up(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "migrate", "--downgrade", "0001")
    assert code == 0 and out.strip() == "database at revision 0001 (was 0002)"
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and out.strip() == "database at revision 0002 (was 0001)"
    code, _, err = run(capsys, "migrate", "--revision", "nope")
    assert code == 2 and "nope" in err


def test_commands_on_an_unmigrated_database_say_what_to_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    code, _, err = run(capsys, "status")
    assert code == 1 and "campaignctl migrate" in err and "Traceback" not in err


# -- as a user runs it ------------------------------------------------------------------


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "KEY_PREFIX")}
    env.update(extra)
    return env


def test_campaignctl_migrate_seed_status_from_any_directory(tmp_path: Path) -> None:
    env = _subprocess_env()
    for argv in (["migrate"], ["seed", "--count", "4"]):
        done = subprocess.run([CAMPAIGNCTL, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "campaign-engine.db").exists()
    done = subprocess.run([CAMPAIGNCTL, "status", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert json.loads(done.stdout)["campaigns"]["DORMANT"] == 4


def test_campaignctl_graph_and_bad_arguments(tmp_path: Path, sqlite_url: str) -> None:
    runner.upgrade(sqlite_url)
    env = _subprocess_env(DATABASE_URL=sqlite_url)
    done = subprocess.run([CAMPAIGNCTL, "graph"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == mermaid()
    for argv, message in ((["show", "abc"], "a campaign id is a positive whole number"),
                          (["approve", "99"], "no campaign with id 99"),
                          (["status", "--colour"], "unrecognized arguments")):
        done = subprocess.run([CAMPAIGNCTL, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr


def test_an_old_system_database_is_stamped_then_upgraded(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    # Given the old system's database: the legacy table, rows in it, and no Alembic bookkeeping
    runner.upgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE alembic_version")
            conn.exec_driver_sql(
                "INSERT INTO campaigns (owner_name, email, street, city, state, zip_code, property_data_status, "
                "listings_status, created_at, updated_at) VALUES ('A', 'a@example.com', '1 Main St', 'Austin', "
                "'TX', '78701', 'completed', 'failed', '2023-01-01 00:00:00', '2023-01-01 00:00:00')")
        monkeypatch.setenv("DATABASE_URL", db_url)
        # When it is stamped at 0001 and migrated
        assert run(capsys, "migrate", "--stamp", "0001")[0] == 0
        code, out, _ = run(capsys, "migrate")
        assert code == 0 and "0002 (was 0001)" in out
        # Then the campaign is where its legacy columns put it
        code, out, _ = run(capsys, "show", "1", "--json")
        doc = json.loads(out)
        assert (doc["campaign_status"], doc["processing_stage"], doc["version"]) == ("ERROR", "active_listings", 0)
    finally:
        engine.dispose()
