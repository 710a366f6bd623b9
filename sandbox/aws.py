"""What Bedrock and SES share: the caller's access key id, rest-json error bodies, request ids, and
the provider hooks (auth, throttling, injected faults) that answer the same way in both services.

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

from sandbox.provider import CallContext, retry_after_header
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


class AwsService:
    """The provider hooks of an AWS service: SigV4 key, denied keys, 429s, injected faults, request ids.

    Both AWS services refuse keys, throttle and fail the same way; only their
    codes and messages differ, so a subclass sets them: ``denied`` (the 403 of
    an unsubscribed key), ``throttle_code`` with ``throttle_message`` (the
    plan-rate 429) and ``daily_message`` (the injected ``quota`` 429), and
    ``server_errors`` (the injected 5xx, in rotation). ``error`` renders every
    one of them; a service with another wire format (SES v1's XML) overrides it.
    """

    name = ""
    denied: tuple[int, str, str]
    throttle_code: str
    throttle_message: str
    daily_message: str
    server_errors: tuple[tuple[int, str, str], ...]

    def __init__(self) -> None:
        self._errors = itertools.cycle(self.server_errors)

    def error(self, req: Request, status: int, code: str, message: str,
              headers: dict[str, str] | None = None) -> Response:
        return json_error(status, code, message, headers)

    def key(self, req: Request) -> str:
        return access_key(req)

    def auth_error(self, req: Request, key: str) -> Response | None:
        problem = auth_error(key, self.denied)
        return self.error(req, *problem) if problem else None

    def throttled(self, req: Request, ctx: CallContext) -> Response:
        return self.error(req, 429, self.throttle_code, self.throttle_message)

    def injected(self, req: Request, ctx: CallContext, fault: str) -> Response:
        if fault == "429":
            return self.error(req, 429, self.throttle_code, self.throttle_message,
                              {"Retry-After": retry_after_header(ctx.wait)})
        if fault == "quota":
            return self.error(req, 429, self.throttle_code, self.daily_message)
        return self.error(req, *next(self._errors))

    def decorate(self, req: Request, ctx: CallContext | None, resp: Response) -> Response:
        resp.headers.setdefault("x-amzn-RequestId", request_id())
        return resp

    def reset(self) -> None:
        pass
