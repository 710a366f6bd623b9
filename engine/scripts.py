"""Loads every ``engine/lua/*.lua`` file once, keyed by file stem.

redis-py's ``register_script`` sends EVALSHA and falls back to EVAL (loading
the script) when the server does not know it — after a restart or FLUSHALL
of the script cache nothing breaks.
"""

from __future__ import annotations

import functools
from pathlib import Path

import redis
from redis.commands.core import Script

#: Folder of the Lua scripts, one atomic operation per file.
LUA_DIR = Path(__file__).with_name("lua")


@functools.cache
def sources() -> dict[str, str]:
    """Script source by name (file stem), read once per process."""
    return {path.stem: path.read_text() for path in sorted(LUA_DIR.glob("*.lua"))}


class Scripts:
    """The registered scripts of one client: ``scripts.ack(keys=[...], args=[...])``."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts: dict[str, Script] = {name: client.register_script(src) for name, src in sources().items()}

    def __getattr__(self, name: str) -> Script:
        try:
            return self.__dict__["_scripts"][name]
        except KeyError:
            raise AttributeError(f"no Lua script named {name!r} in {LUA_DIR}") from None
