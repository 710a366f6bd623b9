"""The sandbox's view of one HTTP exchange: a parsed request and the response to write.

Providers are plain functions from ``Request`` to ``Response``; only
``server.py`` touches sockets. That keeps every provider testable without a
server and keeps the HTTP plumbing (keep-alive, Content-Length) in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request: method, raw (still percent-encoded) path, query, headers, body."""

    method: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""

    @classmethod
    def parse(cls, method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
        parts = urlsplit(target)
        # First value wins, as most frameworks behind real APIs do.
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        return cls(method.upper(), parts.path or "/", query, {k.lower(): v for k, v in headers.items()}, body)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The JSON body, or None when it is empty or not JSON (the provider answers 400 then)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def form(self) -> dict[str, str]:
        """A form-encoded body (SES v1's query protocol)."""
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True).items()}


@dataclass
class Response:
    """What to write back. ``drop`` closes the connection without an answer (a timeout fault)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None,
             content_type: str = "application/json") -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, {"Content-Type": content_type, **(headers or {})})

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8",
             headers: dict[str, str] | None = None) -> Response:
        return cls(status, text.encode(), {"Content-Type": content_type, **(headers or {})})
