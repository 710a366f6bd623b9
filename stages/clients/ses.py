"""Amazon SES v2 ``send_email`` (providers.md §6) through boto3.

SES has no idempotency key, so this client never retries (botocore retries
are off) and tells the caller whether a failed send may have been accepted:
``SendNotAccepted`` (throttled, refused, no connection: safe to try again
later) versus ``SendOutcomeUnknown`` (read timeout, 5xx, dropped connection:
must not be resent blindly). The run key goes out as an EmailTag and as an
``X-Campaign-Run`` header so a send can be traced in SES events and in the
message itself.
"""

from __future__ import annotations

from typing import Any

from stages import settings as names
from stages.clients import aws
from stages.clients.http import Gate
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings

#: The EmailTag name carrying ``campaign-<id>-run-<run>``.
RUN_TAG = "run_key"


class SendOutcomeUnknown(TransientError):
    """SES may or may not have accepted the message."""


class SesClient:
    api = names.SES

    def __init__(self, settings: ProviderSettings, boto_client: Any | None = None) -> None:
        self.settings = settings
        self.client = boto_client or aws.client("sesv2", settings, self.api)

    def send(self, gate: Gate | None, *, to: str, subject: str, body: str, run_key: str) -> str:
        """Send one text email; returns the SES MessageId.

        ``gate`` None means the caller already holds a token (email_sending
        acquires it before recording its intent).
        """
        if not self.settings.ses_from_address:
            raise PermanentError(self.api, "no sender configured (set SES_FROM_ADDRESS)", outage=True)
        if gate is not None:
            gate.acquire(self.api)
        request: dict[str, Any] = {
            "FromEmailAddress": self.settings.ses_from_address,
            "Destination": {"ToAddresses": [to]},
            "Content": {"Simple": {
                "Subject": {"Data": subject, "Charset": "UTF-8"},
                "Body": {"Text": {"Data": body, "Charset": "UTF-8"}},
                "Headers": [{"Name": "X-Campaign-Run", "Value": run_key}],
            }},
            "EmailTags": [{"Name": RUN_TAG, "Value": run_key}],
        }
        if self.settings.ses_configuration_set:
            request["ConfigurationSetName"] = self.settings.ses_configuration_set
        try:
            response = self.client.send_email(**request)
        except Exception as exc:  # noqa: BLE001 - classify re-raises what it does not know
            failure = aws.classify(exc, self.api, self.settings)
            if failure.maybe_accepted:
                raise SendOutcomeUnknown(self.api, f"outcome unknown: {str(failure.error).split(': ', 1)[-1]}") from None
            raise failure.error from None
        message_id = response.get("MessageId") if isinstance(response, dict) else None
        if not message_id:
            raise SendOutcomeUnknown(self.api, f"malformed response from {self.api} (no MessageId)")
        return str(message_id)
