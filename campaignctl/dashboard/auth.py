"""Who may write: the operator token, the session cookie and the CSRF token of the dashboard's forms.

Without DASHBOARD_TOKEN the dashboard is read-only for everyone. With it, an
operator signs in by typing the token once; the browser then holds a session
cookie (HttpOnly, SameSite=Strict) that carries a random session id signed
with a key derived from the token — never the token itself. Every write
form carries a CSRF token bound to that session id, and a write request
must present both; a request from another site has neither (SameSite keeps
the cookie home, and it cannot read the page to learn the CSRF token), so it
gets 403. Scripts may send ``Authorization: Bearer <token>`` instead: a
header no other site can make a browser send. Changing the token signs
everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Name of the session cookie.
SESSION_COOKIE = "ce_dashboard_session"
#: Name of the hidden form field that carries the CSRF token.
CSRF_FIELD = "csrf_token"
#: How long a sign-in lasts, in s.
SESSION_MAX_AGE = 12 * 3600


class OperatorAuth:
    """Checks for one DASHBOARD_TOKEN (None: read-only, nobody can write)."""

    def __init__(self, token: str | None) -> None:
        self._token = token or None
        self._key = hashlib.sha256(b"campaign-engine dashboard session\0" + token.encode()).digest() if token else b""

    @property
    def enabled(self) -> bool:
        """Whether writes are possible at all."""
        return self._token is not None

    def token_matches(self, candidate: str | None) -> bool:
        return self._token is not None and candidate is not None and hmac.compare_digest(
            candidate.encode(), self._token.encode())

    def new_session(self) -> str:
        """A fresh cookie value: ``<session id>.<signature>``."""
        sid = secrets.token_urlsafe(24)
        return f"{sid}.{self._sign('session', sid)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id of a validly signed cookie, else None."""
        if not self.enabled or not cookie or "." not in cookie:
            return None
        sid, _, signature = cookie.rpartition(".")
        return sid if hmac.compare_digest(signature, self._sign("session", sid)) else None

    def csrf_token(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def csrf_ok(self, sid: str, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate, self.csrf_token(sid))

    def bearer_ok(self, header: str | None) -> bool:
        """``Authorization: Bearer <token>``."""
        if not header or not header.lower().startswith("bearer "):
            return False
        return self.token_matches(header[7:].strip())

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()
