"""Every setting checked before a command does anything, and every failure explained in one line.

A bad setting found half way through a command is the worst kind: the
database has moved and then Redis's URL turns out malformed. So ``main``
calls ``validate(env)`` first, for every command: each reader of the
environment (engine, limits, providers, polling, logging, database and Redis
URLs, the sandbox's port) is run once and its ValueError becomes a
``ConfigError`` naming the setting.

``explain(exc, env)`` turns what can still go wrong at run time — Redis down
or refusing our password, the database unreachable or unmigrated — into one
line and an exit code. Neither ever prints a secret: URLs are redacted.

Exit codes (README, docs/operations.md): 0 done; 1 refused, or a service
(Redis, the database) unavailable; 2 bad arguments, an unknown id, or a bad
setting (including a wrong or missing Redis password).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from engine.redact import redact, redact_url

EXIT_REFUSED, EXIT_CONFIG = 1, 2
#: LOG_LEVEL values, any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: LOG_FORMAT values.
LOG_FORMATS = ("text", "json")
#: Database backends this build has drivers for.
DATABASE_BACKENDS = ("sqlite", "postgresql")


#: What Redis (and redis-py) say when a password is wrong or missing.
AUTH_WORDS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password", "Authentication required",
              "AuthenticationError", "auth:", "already authenticated", "to authenticate")


class ConfigError(Exception):
    """A setting is wrong; the message names it. Exit 2."""


def log_level(env: Mapping[str, str], given: str | None = None) -> int:
    """The logging level from ``--log-level`` or LOG_LEVEL (any case); WARNING when neither is set."""
    raw = given if given is not None else env.get("LOG_LEVEL")
    name = (raw or "WARNING").strip().upper()
    if name not in LOG_LEVELS:
        source = "--log-level" if given is not None else "LOG_LEVEL"
        raise ConfigError(f"{source} must be one of {', '.join(LOG_LEVELS)} (any case), got {raw!r}")
    return int(getattr(logging, name))


def log_format(env: Mapping[str, str]) -> str:
    value = (env.get("LOG_FORMAT") or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {env.get('LOG_FORMAT')!r}")
    return value


def _database(env: Mapping[str, str]) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from workflow.db import database_url

    url = database_url(dict(env))
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"DATABASE_URL is not a database URL: {redact_url(url)!r} "
                          "(e.g. sqlite:///campaigns.db or postgresql://user@host/db)") from None
    if backend not in DATABASE_BACKENDS:
        raise ConfigError(f"DATABASE_URL names {backend!r}; supported: {', '.join(DATABASE_BACKENDS)} "
                          f"(got {redact_url(url)!r})")


def _redis(env: Mapping[str, str]) -> None:
    import redis

    from engine.settings import redis_url_from_env

    url = redis_url_from_env(env)
    name = "REDIS_URL" if env.get("REDIS_URL") else "REDIS_HOST/REDIS_PORT/REDIS_DB"
    try:
        redis.Redis.from_url(url)
    except ValueError as exc:
        raise ConfigError(f"{name} is not a Redis URL ({redact_url(url)!r}): {exc}") from None


def _port(env: Mapping[str, str], name: str) -> None:
    raw = env.get(name)
    if raw in (None, ""):
        return
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number (0-65535), got {raw!r}") from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number (0-65535), got {raw!r}")


def validate(env: Mapping[str, str]) -> None:
    """Raise ConfigError naming the first bad setting; every reader of the environment is tried once."""
    from campaignctl.limits import rate_limits
    from campaignctl.polling import parse_dispatch_mode
    from engine.env import env_float, env_int
    from engine.settings import EngineSettings

    log_level(env)
    log_format(env)
    _port(env, "SANDBOX_PORT")
    try:
        EngineSettings.from_env(env)
        rate_limits(env)
        parse_dispatch_mode(env.get("DISPATCH_MODE"))
        env_float(env, "POLL_INTERVAL", 1.0, positive=True)
        env_int(env, "POLL_BATCH", 1, positive=True)
        try:
            from stages.settings import ProviderSettings
        except ModuleNotFoundError:
            ProviderSettings = None  # noqa: N806 - a build without the stages
        if ProviderSettings is not None:
            ProviderSettings.from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _database(env)
    _redis(env)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def _redis_where(env: Mapping[str, str]) -> str:
    from engine.settings import redis_url_from_env

    return f"Redis at {redact_url(redis_url_from_env(env))}"


def is_redis_auth_error(exc: BaseException) -> bool:
    """Redis refused our credentials (wrong password) or wants some (none given)."""
    import redis

    if isinstance(exc, redis.AuthenticationError):
        return True
    # engine.connection re-raises a failed first contact as a plain ConnectionError: judge by the server's words.
    text = str(exc)
    return isinstance(exc, redis.RedisError) and any(word in text for word in AUTH_WORDS)


def explain(exc: BaseException, env: Mapping[str, str]) -> tuple[int, str] | None:
    """(exit code, one line) for a configuration or availability failure; None for anything else (a bug)."""
    import redis
    from sqlalchemy import exc as sa_exc

    from engine.connection import RedisModeMismatch
    from workflow.db import database_url

    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if is_redis_auth_error(exc):
        given = "a password" if env.get("REDIS_PASSWORD") or "@" in (env.get("REDIS_URL") or "") else "no password"
        return EXIT_CONFIG, (f"{_redis_where(env)} refused the connection with {given}: "
                             "set REDIS_PASSWORD to the server's password")
    if isinstance(exc, RedisModeMismatch):
        return EXIT_CONFIG, f"{_redis_where(env)}: {_first_line(exc)}"
    if isinstance(exc, redis.exceptions.RedisClusterException) and "not enabled" in str(exc):
        return EXIT_CONFIG, f"{_redis_where(env)} is not a cluster ({_first_line(exc)}): unset REDIS_CLUSTER"
    if isinstance(exc, redis.exceptions.RedisClusterException):  # not a RedisError: the cluster is out of reach
        return EXIT_REFUSED, f"{_redis_where(env)} (a cluster) is unavailable: {_first_line(exc)}"
    if isinstance(exc, redis.exceptions.MovedError):
        return EXIT_CONFIG, f"{_redis_where(env)} answered MOVED (it is a cluster): set REDIS_CLUSTER=true"
    if isinstance(exc, redis.RedisError):
        return EXIT_REFUSED, f"{_redis_where(env)} is unavailable: {_first_line(exc)}"
    db = f"the database at {redact_url(database_url(dict(env)))}"
    if isinstance(exc, sa_exc.NoSuchModuleError):
        return EXIT_CONFIG, f"DATABASE_URL names an unknown database driver: {_first_line(exc)}"
    if isinstance(exc, sa_exc.ArgumentError):
        return EXIT_CONFIG, f"DATABASE_URL is not usable: {_first_line(exc)}"
    if isinstance(exc, sa_exc.DBAPIError):
        first = _first_line(exc)
        lowered = first.lower()
        if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
            return EXIT_REFUSED, f"{db} has no campaign tables ({first}): run `campaignctl migrate` first"
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return EXIT_REFUSED, f"{db} is unavailable: {first}"
        return EXIT_REFUSED, f"database error at {db}: {first}"
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return EXIT_REFUSED, f"database error at {db}: {_first_line(exc)}"
    return None
