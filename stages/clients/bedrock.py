"""Amazon Bedrock Runtime ``converse`` (providers.md §5) through boto3.

The model id comes from settings (BEDROCK_MODEL_ID); ``endpoint_url`` is the
sandbox when SANDBOX_URL is set. Errors are mapped by ``aws.classify``.
"""

from __future__ import annotations

from typing import Any

import attrs

from stages import settings as names
from stages.clients import aws
from stages.clients.http import Gate
from stages.errors import PermanentError, TransientError
from stages.settings import ProviderSettings


@attrs.frozen
class Completion:
    text: str
    stop_reason: str
    input_tokens: int
    output_tokens: int


class BedrockClient:
    api = names.BEDROCK

    def __init__(self, settings: ProviderSettings, boto_client: Any | None = None) -> None:
        self.settings = settings
        self.client = boto_client or aws.client("bedrock-runtime", settings, self.api)

    def converse(self, gate: Gate, *, system: str, prompt: str, temperature: float = 0.4,
                 max_tokens: int | None = None) -> Completion:
        gate.acquire(self.api)
        try:
            response = self.client.converse(
                modelId=self.settings.bedrock_model_id,
                system=[{"text": system}],
                messages=[{"role": "user", "content": [{"text": prompt}]}],
                inferenceConfig={"maxTokens": max_tokens or self.settings.bedrock_max_tokens,
                                 "temperature": temperature},
            )
        except Exception as exc:  # noqa: BLE001 - classify re-raises what it does not know
            failure = aws.classify(exc, self.api, self.settings)
            if hasattr(failure.error, "retry_after"):
                gate.pause(self.api, failure.error.retry_after)  # type: ignore[attr-defined]
            raise failure.error from None
        try:
            content = response["output"]["message"]["content"]
            text = "".join(part.get("text", "") for part in content if isinstance(part, dict)).strip()
        except (KeyError, TypeError):
            raise TransientError(self.api, f"malformed response from {self.api} (no output message)") from None
        stop = str(response.get("stopReason", ""))
        if not text:
            if stop in ("guardrail_intervened", "content_filtered"):
                raise PermanentError(self.api, f"no text generated (stopReason {stop})")
            raise TransientError(self.api, f"malformed response from {self.api} (empty text, stopReason {stop!r})")
        usage = response.get("usage") or {}
        return Completion(text=text, stop_reason=stop, input_tokens=int(usage.get("inputTokens") or 0),
                          output_tokens=int(usage.get("outputTokens") or 0))
