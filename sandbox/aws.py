"""What Bedrock and SES share: the caller's access key id, rest-json and XML error bodies, request ids.

SigV4 is not verified (CONTRACTS.md); the access key id is read from the
``Credential=`` part of the Authorization header only to key the rate limit.
[D][V] rest-json errors: the status, ``x-amzn-ErrorType: <Code>`` (botocore
keeps the part before ':') and ``{"message": …}``; boto3 then raises
ClientError with ``e.response["Error"]["Code"] == <Code>``.
"""

from __future__ import annotations

import itertools
import re
import uuid

from sandbox.wire import Request, Response

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
#: [I] AWS's answers for a missing signature and an unknown access key id (rest-json services).
MISSING_AUTH = (403, "MissingAuthenticationTokenException", "Missing Authentication Token")
BAD_KEY = (403, "UnrecognizedClientException", "The security token included in the request is invalid.")

_counter = itertools.count(1)


def access_key(req: Request) -> str:
    match = _CREDENTIAL.search(req.header("authorization"))
    return match.group(1) if match else ""


def request_id() -> str:
    return str(uuid.uuid4())


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, {"message": message},
                         {"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id(), **(headers or {})})


def auth_error(key: str, denied: tuple[int, str, str]) -> tuple[int, str, str] | None:
    """(status, code, message) for a missing/invalid/unsubscribed key, else None."""
    if not key:
        return MISSING_AUTH
    if key.startswith("invalid"):
        return BAD_KEY
    if key.startswith("unsubscribed"):
        return denied
    return None
