"""The Lua loader: shared fragments are expanded into the scripts that include them."""

from __future__ import annotations

import pytest
import redis

from engine.scripts import INCLUDE_DIR, INCLUDE_LINE, compose, sources


def test_every_script_compiles_on_the_server_with_its_includes_expanded(redis_client: redis.Redis) -> None:
    # Given the scripts as the engine registers them
    scripts = sources()
    # Then no include line is left and the fragments are not scripts of their own
    assert not [name for name, src in scripts.items() if INCLUDE_LINE.search(src)]
    assert not set(scripts) & {path.stem for path in INCLUDE_DIR.glob("*.lua")}
    # And the real server compiles each one (SCRIPT LOAD parses without running)
    for src in scripts.values():
        assert redis_client.script_load(src)


def test_the_settling_scripts_share_one_fenced_take() -> None:
    scripts = sources()
    for name in ("ack", "retry", "requeue", "dead_letter"):
        assert "local function take_leased(" in scripts[name]


def test_one_server_clock_fragment() -> None:
    scripts = sources()
    for name, src in scripts.items():
        if "redis.call('TIME')" in src:
            assert "local function now_us(" in src, name


def test_a_missing_include_fails_loudly() -> None:
    with pytest.raises(FileNotFoundError):
        compose('--- @include "no_such_fragment"\nreturn 1\n')
