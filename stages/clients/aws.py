"""boto3 plumbing shared by the Bedrock and SES clients.

botocore's own retries are off (``total_max_attempts: 1``; note that
``max_attempts: 1`` would still retry once, providers.md §0.1) so the engine's
retry policy is the only one, and above all so SES never resends after a lost
response. ``classify`` maps a botocore failure to our typed errors
(providers.md §5.3, §6.1) and says whether the request may have been accepted.
"""

from __future__ import annotations

from typing import Any

import attrs
import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from stages.errors import PermanentError, RateLimited, TransientError, redact
from stages.settings import ProviderSettings

#: Error codes that mean "slow down" (the request was refused, nothing happened).
THROTTLE_CODES = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling", "LimitExceededException",
                            "RequestLimitExceeded", "SlowDown"})
#: Error codes worth another try later.
TRANSIENT_CODES = frozenset({"ServiceUnavailableException", "ServiceUnavailable", "InternalServerException",
                             "InternalFailure", "InternalServerError", "ModelTimeoutException",
                             "ModelNotReadyException", "RequestTimeout", "RequestTimeoutException"})
#: Error codes an operator must fix on the AWS side (credentials, permissions, account state).
OUTAGE_CODES = frozenset({"AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
                          "InvalidSignatureException", "ExpiredTokenException", "SendingPausedException",
                          "AccountSuspendedException", "MailFromDomainNotVerifiedException"})
#: Texts that mean a daily quota, not the per-second rate.
QUOTA_TEXTS = ("daily message quota", "per day")


def client(service: str, settings: ProviderSettings, api: str) -> Any:
    """A boto3 client with one attempt per call and the provider's timeouts."""
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.timeouts[api],
        max_pool_connections=16,
    )
    kwargs: dict[str, Any] = {"region_name": settings.aws_region, "config": config}
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    if settings.aws_credentials:
        key_id, secret, token = settings.aws_credentials
        kwargs.update(aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token)
    return boto3.session.Session().client(service, **kwargs)


@attrs.frozen
class Failure:
    """A classified failure: the error to raise and whether the request may have taken effect."""

    error: Exception
    #: True when the provider may have acted on the request (read timeout, 5xx, dropped connection).
    maybe_accepted: bool


def classify(exc: Exception, api: str, settings: ProviderSettings) -> Failure:
    secrets = settings.secrets()
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = redact(str(err.get("Message") or ""), secrets)
        what = f"{code} (HTTP {status}): {text}" if text else f"{code} (HTTP {status})"
        if code in THROTTLE_CODES or (status == 429 and code != "ModelNotReadyException"):
            if any(t in text.lower() for t in QUOTA_TEXTS):
                wait = settings.ses_quota_wait
                return Failure(RateLimited(api, f"daily quota exhausted, retry in {wait:g}s: {what}",
                                           retry_after=wait), False)
            wait = settings.plan_interval(api)
            return Failure(RateLimited(api, f"throttled, retry in {wait:.3f}s: {what}", retry_after=wait), False)
        if code in TRANSIENT_CODES or status >= 500:
            return Failure(TransientError(api, what), status >= 500 or code == "ModelTimeoutException")
        return Failure(PermanentError(api, what, outage=code in OUTAGE_CODES), False)
    if isinstance(exc, ConnectTimeoutError | EndpointConnectionError):
        return Failure(TransientError(api, f"connection failed ({type(exc).__name__})"), False)
    if isinstance(exc, ReadTimeoutError):
        return Failure(TransientError(api, f"read timeout after {settings.timeouts[api]:g}s"), True)
    if isinstance(exc, ConnectionClosedError):
        return Failure(TransientError(api, "connection closed before the answer"), True)
    if isinstance(exc, NoCredentialsError):
        return Failure(PermanentError(api, "no AWS credentials configured", outage=True), False)
    if isinstance(exc, BotoCoreError):
        name = type(exc).__name__
        if "Pars" in name:
            return Failure(TransientError(api, f"malformed response from {api} ({name})"), True)
        return Failure(TransientError(api, f"{name}: {redact(str(exc), secrets)}"), True)
    raise exc
