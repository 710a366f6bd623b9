"""Loads every ``engine/lua/*.lua`` file once, keyed by file stem.

Lua scripts cannot import each other, so a body two scripts share lives once in
``engine/lua/includes/<name>.lua`` and each script pulls it in with a line
``--- @include "<name>"`` (BullMQ's convention), expanded here at load time.
The includes are fragments, not scripts: they are not registered.

redis-py's ``register_script`` sends EVALSHA and falls back to EVAL (loading
the script) when the server does not know it — after a restart or FLUSHALL
of the script cache nothing breaks.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import redis
from redis.commands.core import Script

#: Folder of the Lua scripts, one atomic operation per file.
LUA_DIR = Path(__file__).with_name("lua")
#: Folder of the shared Lua fragments that scripts include.
INCLUDE_DIR = LUA_DIR / "includes"
#: An include line: the whole line, naming a file stem in INCLUDE_DIR.
INCLUDE_LINE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)


def compose(source: str) -> str:
    """``source`` with each include line replaced by the fragment it names (a missing one raises)."""
    return INCLUDE_LINE.sub(lambda m: (INCLUDE_DIR / f"{m.group(1)}.lua").read_text().rstrip("\n"), source)


@functools.cache
def sources() -> dict[str, str]:
    """Script source by name (file stem), includes expanded, read once per process."""
    return {path.stem: compose(path.read_text()) for path in sorted(LUA_DIR.glob("*.lua"))}


class Scripts:
    """The registered scripts of one client: ``scripts.ack(keys=[...], args=[...])``."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts: dict[str, Script] = {name: client.register_script(src) for name, src in sources().items()}

    def __getattr__(self, name: str) -> Script:
        try:
            return self.__dict__["_scripts"][name]
        except KeyError:
            raise AttributeError(f"no Lua script named {name!r} in {LUA_DIR}") from None
