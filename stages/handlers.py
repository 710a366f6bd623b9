"""The task handlers of the application: one per task type, with its retry policy.

``build_handlers(app)`` binds each stage to the process's store, provider
settings and clients; ``register_all(registry, app)`` puts them in an
engine.registry.Registry with their RetryPolicy. ``app`` is anything with a
``store`` (CampaignStore) and an ``env`` mapping, e.g. campaignctl's AppContext.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from engine.retry import RetryPolicy
from engine.task import Task
from stages import (
    active_listings,
    email_creation,
    email_sending,
    home_analysis,
    market_data,
    property_data,
    recent_sales,
)
from stages.common import Deps, Providers
from stages.settings import ProviderSettings
from workflow.states import EMAIL_SENDING, TASK_TYPES

Handler = Callable[[Task, Any], None]

_MODULES = {
    "property_data": property_data,
    "active_listings": active_listings,
    "recent_sales": recent_sales,
    "market_data": market_data,
    "home_analysis": home_analysis,
    "email_creation": email_creation,
    EMAIL_SENDING: email_sending,
}

#: Retries per task type. Data stages tolerate a long provider outage (5 attempts up to 5 min apart);
#: sending retries only failures SES certainly did not accept, so the same policy is safe there.
RETRY_POLICIES: dict[str, RetryPolicy] = {
    "property_data": RetryPolicy(max_attempts=5, base=2.0, cap=300.0),
    "active_listings": RetryPolicy(max_attempts=5, base=2.0, cap=300.0),
    "recent_sales": RetryPolicy(max_attempts=5, base=2.0, cap=300.0),
    "market_data": RetryPolicy(max_attempts=5, base=2.0, cap=300.0),
    "home_analysis": RetryPolicy(max_attempts=5, base=5.0, cap=300.0),
    "email_creation": RetryPolicy(max_attempts=5, base=5.0, cap=300.0),
    EMAIL_SENDING: RetryPolicy(max_attempts=5, base=2.0, cap=120.0),
}
assert set(_MODULES) == set(TASK_TYPES) == set(RETRY_POLICIES)


def make_deps(app: Any, *, settings: ProviderSettings | None = None, providers: Providers | None = None) -> Deps:
    env: Mapping[str, str] = getattr(app, "env", None) or os.environ
    settings = settings or ProviderSettings.from_env(env)
    engine_settings = getattr(app, "settings", None)
    max_sleep = getattr(engine_settings, "max_token_sleep", None)
    if max_sleep is None:
        from engine.settings import EngineSettings

        max_sleep = EngineSettings.from_env(env).max_token_sleep
    return Deps(store=app.store, settings=settings, providers=providers or Providers(settings),
                max_token_sleep=float(max_sleep))


def build_handlers(app: Any, *, deps: Deps | None = None) -> dict[str, tuple[Handler, RetryPolicy]]:
    """task type -> (handle(task, ctx), RetryPolicy), the form campaignctl.wiring.build_registry takes."""
    deps = deps or make_deps(app)
    out: dict[str, tuple[Handler, RetryPolicy]] = {}
    for task_type, module in _MODULES.items():
        handler = functools.partial(module.handle, deps=deps)
        functools.update_wrapper(handler, module.handle)
        out[task_type] = (handler, RETRY_POLICIES[task_type])
    return out


def register_all(registry: Any, app: Any, *, deps: Deps | None = None) -> None:
    """Register every handler with its RetryPolicy in an engine.registry.Registry."""
    for task_type, (handler, policy) in build_handlers(app, deps=deps).items():
        registry.register(task_type, handler, policy)
