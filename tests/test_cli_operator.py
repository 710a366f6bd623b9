"""The operator's commands as a person types them: review, show --draft, list, retry --all, --watch, controls."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from campaignctl import cli
from campaignctl.context import AppContext
from engine.queue import TaskQueue
from migrations import runner
from tests.test_operations import with_draft
from tests.workflow.helpers import drive, new_campaigns
from workflow.states import TASK_TYPES, Status

CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")


@pytest.fixture
def ctx(sqlite_url: str, redis_url: str, redis_client: redis.Redis, key_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[AppContext]:
    runner.upgrade(sqlite_url)
    for name in [n for n in os.environ if n.startswith(("RATE_", "LOG_"))]:
        monkeypatch.delenv(name)
    env = {"DATABASE_URL": sqlite_url, "REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    context = AppContext(env)
    yield context
    context.db.dispose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_review_walks_the_drafts_oldest_first(ctx: AppContext, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Given three drafts waiting
    a, b, c = new_campaigns(ctx.db, 3)
    for cid, subject in ((a, "first"), (b, "second"), (c, "third")):
        with_draft(ctx, cid, subject)
    # When the reviewer approves the first, skips the second and unsubscribes the third
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\nwhat\ns\nu\n"))
    code, out, err = run(capsys, "review", "-i")
    # Then each draft was shown in order with its content, and each answer applied
    assert code == 0, err
    assert out.index("first") < out.index("second") < out.index("third")
    assert "Dear owner" in out and "valid (accepted_email)" in out and "answer a, s, u or q" in out
    assert "reviewed 3: approved 1, skipped 1, unsubscribed 1; 1 still waiting" in out
    assert ctx.store.get(a).campaign_status is Status.READY_TO_SEND
    assert ctx.store.get(b).campaign_status is Status.READY_FOR_REVIEW
    assert ctx.store.get(c).campaign_status is Status.UNSUBSCRIBED
    assert TaskQueue(ctx.redis, ctx.settings, TASK_TYPES).stats()["queues"]["email_sending"]["ready"] == 1


def test_review_json_and_listing(ctx: AppContext, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = new_campaigns(ctx.db, 2)
    with_draft(ctx, a, "hello")
    code, out, _ = run(capsys, "review", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["waiting"] == 1 and doc["drafts"][0]["subject"] == "hello"
    assert doc["drafts"][0]["campaign_id"] == a and doc["drafts"][0]["to"]
    code, out, _ = run(capsys, "review")  # not a terminal: a listing, nothing asked
    assert code == 0 and "hello" in out and "1 waiting" in out


def test_show_draft(ctx: AppContext, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = new_campaigns(ctx.db, 2)
    with_draft(ctx, a, "a subject")
    code, out, _ = run(capsys, "show", str(a), "--draft")
    assert code == 0 and "a subject" in out and "Dear owner" in out and "Analysis" in out
    code, out, _ = run(capsys, "show", str(a), "--draft", "--json")
    assert json.loads(out)["draft"]["subject"] == "a subject"
    code, _, err = run(capsys, "show", str(b), "--draft")
    assert code == 1 and "has no draft" in err


def test_list_filters_and_json(ctx: AppContext, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = new_campaigns(ctx.db, 2)
    drive(ctx.store, a, ("start", "fail"))
    code, out, _ = run(capsys, "list", "--status", "error", "--json")
    doc = json.loads(out)
    assert code == 0 and [r["id"] for r in doc["campaigns"]] == [a]
    assert doc["campaigns"][0]["updated_at"].endswith("+00:00")
    code, out, _ = run(capsys, "list", "--stage", "property_data", "--older-than", "1h")
    assert code == 0 and "no campaigns match" in out
    code, _, err = run(capsys, "list", "--older-than", "soon")
    assert code == 2 and "duration" in err


def test_retry_all_with_stage(ctx: AppContext, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = new_campaigns(ctx.db, 2)
    drive(ctx.store, a, ("start", "fail"))
    drive(ctx.store, b, ("start", "advance", "fail"))
    code, out, _ = run(capsys, "retry", "--all", "--stage", "active_listings")
    assert code == 0 and "retried 1 campaign" in out and "queued 1 stage task" in out
    assert ctx.store.get(b).campaign_status is Status.PROCESSING
    assert ctx.store.get(a).campaign_status is Status.ERROR
    code, _, err = run(capsys, "retry", "1", "--stage", "market_data")
    assert code == 2 and "--stage goes with --all" in err


def test_pause_resume_and_rate_override_from_the_cli(ctx: AppContext, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "pause", "market_data")[1].strip() == "queue market_data paused"
    doc = json.loads(run(capsys, "queues", "--json")[1])
    assert doc["queues"]["market_data"]["paused"] is True
    assert run(capsys, "resume", "market_data")[1].strip() == "queue market_data resumed"
    code, out, _ = run(capsys, "limits", "--set", "bedrock", "16/min")
    assert code == 0 and "16/min" in out
    code, out, _ = run(capsys, "limits")
    assert code == 0 and "16/min" in out and "429s" in out
    assert "15.68/min" in out  # granted, in the plan's unit (16/min at the default 0.98 headroom)
    assert json.loads(run(capsys, "limits", "--json")[1])["limits"]["bedrock"]["override"] == "16/min"
    assert "back to the configured 8/min" in run(capsys, "limits", "--clear", "bedrock")[1]
    code, _, err = run(capsys, "limits", "--set", "nosuch", "1/s")
    assert code == 2 and "unknown API" in err


def test_watch_redraws_until_interrupted(ctx: AppContext) -> None:
    env = dict(os.environ, DATABASE_URL=ctx.env["DATABASE_URL"], REDIS_URL=ctx.env["REDIS_URL"],
               KEY_PREFIX=ctx.env["KEY_PREFIX"])
    for argv in (["queues", "--watch", "0.3"], ["status", "--watch", "0.3"]):
        proc = subprocess.Popen([CAMPAIGNCTL, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert out.count("Ctrl-C to stop") >= 2, out  # redrawn at least twice
