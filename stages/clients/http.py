"""The shared HTTP plumbing of the requests-based clients.

One place decides how a transport failure or an HTTP status becomes a typed
error, so the clients only add what is special about their provider (how a
429 says how long to wait, which 4xx is an outage). Texts that reach an error
are scrubbed of secrets: a requests exception's text contains the URL, and
QEV's key travels in the query string.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import requests

from stages.errors import PermanentError, RateLimited, TransientError, redact

#: Connections kept per host by the shared session (workers run a few threads).
POOL_SIZE = 16


class Gate(Protocol):
    """What a client needs from the task context: the shared limiter."""

    def acquire(self, api: str) -> None: ...

    def pause(self, api: str, seconds: float) -> None: ...


def make_session() -> requests.Session:
    """A session without requests' own retries (the engine is the only one that retries)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HttpClient:
    """GET with a timeout, typed transport errors and JSON decoding for one provider."""

    def __init__(
        self,
        provider: str,
        session: requests.Session,
        timeout: tuple[float, float],
        secrets: Iterable[str] = (),
    ) -> None:
        self.provider = provider
        self.session = session
        self.timeout = timeout
        self.secrets = [s for s in secrets if s]

    def clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def get(self, url: str, *, params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None) -> requests.Response:
        """One GET; transport failures become TransientError (no secret, no URL in the text)."""
        try:
            return self.session.get(url, params=params, headers=headers, timeout=self.timeout)
        except requests.Timeout as exc:
            kind = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            raise TransientError(self.provider, f"{kind} timeout after {self._limit(kind):g}s") from None
        except requests.ConnectionError as exc:
            raise TransientError(self.provider, f"connection error ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise TransientError(self.provider, f"request failed ({type(exc).__name__})") from None

    def _limit(self, kind: str) -> float:
        return self.timeout[0] if kind == "connect" else self.timeout[1]

    def json(self, response: requests.Response) -> Any:
        """The decoded body; anything else is a TransientError 'malformed response from <provider>'."""
        try:
            return response.json()
        except (ValueError, json.JSONDecodeError):
            raise TransientError(
                self.provider,
                f"malformed response from {self.provider} (HTTP {response.status_code}, "
                f"{len(response.content)} bytes, not JSON)",
            ) from None

    def message(self, response: requests.Response) -> str:
        """The provider's error text (``message``/``error`` of a JSON body, else the start of the body)."""
        text = ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            parts = [str(body[k]) for k in ("error", "message") if body.get(k)]
            text = ": ".join(parts)
        if not text:
            raw = response.text.strip()
            text = "(HTML page)" if raw.lower().startswith(("<!doctype", "<html")) else raw[:200]
        return self.clean(text or "(empty body)")

    def check(
        self,
        response: requests.Response,
        gate: Gate,
        *,
        retry_after: Callable[[requests.Response], float],
        outage: Callable[[requests.Response, str], bool] = lambda r, m: r.status_code in (401, 403),
        quota: Callable[[requests.Response, str], bool] = lambda r, m: False,
    ) -> None:
        """Raise the typed error for a non-2xx response.

        429 -> pause the shared bucket for ``retry_after`` and RateLimited
        (unless ``quota`` says it is an exhausted plan: PermanentError outage);
        5xx -> TransientError; other 4xx -> PermanentError (``outage`` marks the
        ones an operator must fix on the provider side).
        """
        status = response.status_code
        if status < 400:
            return
        text = self.message(response)
        if status == 429:
            if quota(response, text):
                raise PermanentError(self.provider, f"HTTP 429 quota exhausted: {text}", outage=True)
            wait = max(0.0, retry_after(response))
            gate.pause(self.provider, wait)
            raise RateLimited(self.provider, f"HTTP 429 rate limited, retry in {wait:.3f}s: {text}", retry_after=wait)
        if status >= 500 or status in (408,):
            raise TransientError(self.provider, f"HTTP {status}: {text}")
        raise PermanentError(self.provider, f"HTTP {status}: {text}", outage=outage(response, text))


def header_seconds(response: requests.Response, *names: str, now: float | None = None) -> float | None:
    """The first of ``names`` that holds a number of seconds (an epoch timestamp is turned into a delay)."""
    import time

    for name in names:
        raw = response.headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if value > 1e9:  # "seconds or a timestamp" (RapidAPI docs)
            value -= now if now is not None else time.time()
        return max(0.0, value)
    return None
