"""Where the ElastiCache AUTH token comes from: the environment or AWS Secrets Manager.

The token is read only when a replication group is to be created (a group
that exists keeps its token; ElastiCache never gives it back, so there is
nothing to compare), and it is checked against ElastiCache's rules before
anything is created, so a bad token changes nothing. It is never printed:
errors name the source (``REDIS_AUTH_TOKEN``, ``secret prod/redis``), never
the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from campaignctl.cli import Refused, UsageError

#: The environment variable read when no secret is named.
TOKEN_ENV = "REDIS_AUTH_TOKEN"
#: ElastiCache's bounds on an AUTH token's length, in characters.
MIN_LENGTH, MAX_LENGTH = 16, 128
#: Printable ASCII characters ElastiCache refuses in an AUTH token.
FORBIDDEN = '@"/'


@dataclass(frozen=True)
class TokenSource:
    """One place to read the token from: a Secrets Manager secret (``secret_id``) or ``TOKEN_ENV``.

    A secret's string is the token itself, or a JSON object whose ``secret_key`` field is.
    """

    secret_id: str | None = None
    secret_key: str | None = None

    def describe(self) -> str:
        """Where the token comes from, for messages (never the token)."""
        if self.secret_id is None:
            return TOKEN_ENV
        return f"secret {self.secret_id}" + (f" (field {self.secret_key})" if self.secret_key else "")

    def read(self, env: Mapping[str, str], secrets_client: Any) -> str:
        """The token, checked; UsageError when it is missing or malformed, Refused when AWS says no."""
        token = self._from_env(env) if self.secret_id is None else self._from_secret(secrets_client)
        check(token, self.describe())
        return token

    def _from_env(self, env: Mapping[str, str]) -> str:
        token = env.get(TOKEN_ENV, "")
        if not token:
            raise UsageError(f"no AUTH token: set {TOKEN_ENV} or name a Secrets Manager secret "
                             f"with --auth-token-secret")
        return token

    def _from_secret(self, client: Any) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.describe()
        try:
            answer = client.get_secret_value(SecretId=self.secret_id)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "error"), error.get("Message", "")
            if code == "ResourceNotFoundException":
                raise UsageError(f"{where}: not found") from None
            raise Refused(f"{where}: {code}: {message}") from None
        except BotoCoreError as exc:
            raise Refused(f"{where}: {exc}") from None
        text = answer.get("SecretString")
        if not text:
            raise UsageError(f"{where}: has no string value (a binary secret is not an AUTH token)")
        if self.secret_key is None:
            if str(text).lstrip().startswith("{"):
                raise UsageError(f"{where}: holds a JSON object: name the token's field with "
                                 "--auth-token-secret-key")
            return str(text)
        try:
            doc = json.loads(text)
        except ValueError:
            raise UsageError(f"{where}: is not a JSON object, so it has no field {self.secret_key!r}") from None
        value = doc.get(self.secret_key) if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: has no string field {self.secret_key!r}")
        return value


def check(token: str, where: str) -> None:
    """ElastiCache's rules for an AUTH token, so a bad one fails here and not half way through."""
    if not MIN_LENGTH <= len(token) <= MAX_LENGTH:
        raise UsageError(f"the AUTH token from {where} must be {MIN_LENGTH} to {MAX_LENGTH} characters long, "
                         f"it has {len(token)}")
    if any(not 33 <= ord(c) <= 126 or c in FORBIDDEN for c in token):
        raise UsageError(f"the AUTH token from {where} may hold only printable ASCII characters "
                         f"other than space and {FORBIDDEN}")
