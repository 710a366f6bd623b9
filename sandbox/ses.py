"""Amazon SES (providers.md §6): v2 ``POST /v2/email/outbound-emails`` (rest-json) and v1 ``POST /`` (query/XML).

Every accepted message is recorded per recipient (To, Cc and Bcc) in the
stats, which is how the tests check "at most one email per campaign run".
[D][V] v2 answers ``{"MessageId"}``; its limit 429 is
``TooManyRequestsException`` ``{"message":"Maximum sending rate exceeded."}``
[O]; v1 answers XML and throttles with **400** ``<Code>Throttling</Code>`` [O].
[I] the v2 code for the daily quota (TooManyRequestsException with "Daily
message quota exceeded."), the 5xx codes and the access-denied answers.

Which faults leave the message accepted (the dangerous cases for a sender):
``timeout`` and ``malformed`` (SES acted, the answer was lost or mangled);
``429``, ``quota`` and ``5xx`` are refused before anything is sent.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any
from xml.sax.saxutils import escape

from sandbox import aws
from sandbox.provider import CallContext
from sandbox.stats import Stats
from sandbox.wire import Request, Response

RATE = "Maximum sending rate exceeded."
DAILY = "Daily message quota exceeded."
DENIED = (403, "AccessDeniedException", "User is not authorized to perform ses:SendEmail.")  # [I]
SERVER_ERRORS = ((500, "InternalFailure", "An internal error occurred."),
                 (503, "ServiceUnavailable", "The service is unavailable. Try again later."))
XMLNS = "http://ses.amazonaws.com/doc/2010-12-01/"
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _bare(address: str) -> str:
    """``"Ann <ann@example.com>"`` -> ``ann@example.com``."""
    m = re.search(r"<([^>]+)>", address)
    return (m.group(1) if m else address).strip()


def message_id() -> str:
    """The shape of a real SES id: 16 hex (ms timestamp), a UUID, the region's suffix."""
    return f"{int(time.time() * 1000):016x}-{uuid.uuid4()}-000000"


def _xml_error(status: int, code: str, message: str, kind: str = "Sender") -> Response:
    body = (f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>{kind}</Type><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{aws.request_id()}</RequestId></ErrorResponse>")
    return Response.text(status, body, "text/xml")


class Ses(aws.AwsService):
    name = "ses"
    denied = DENIED
    throttle_code = "TooManyRequestsException"
    throttle_message = RATE
    daily_message = DAILY
    server_errors = SERVER_ERRORS

    def __init__(self, stats: Stats) -> None:
        super().__init__()
        self.stats = stats
        self._lock = threading.Lock()

    @staticmethod
    def _v1(req: Request) -> bool:
        return not req.raw_path.startswith("/v2/")

    def error(self, req: Request, status: int, code: str, message: str,
              headers: dict[str, str] | None = None) -> Response:
        """rest-json for v2; v1 (query API) answers XML with its own codes (a 429 there is a 400 Throttling)."""
        if self._v1(req):
            v1 = {"TooManyRequestsException": (400, "Throttling"), "UnrecognizedClientException":
                  (403, "InvalidClientTokenId"), "AccessDeniedException": (403, "AccessDenied"),
                  "BadRequestException": (400, "InvalidParameterValue")}
            status, code = v1.get(code, (status, code))
            resp = _xml_error(status, code, message, "Receiver" if status >= 500 else "Sender")
            resp.headers.update(headers or {})
            return resp
        return aws.json_error(status, code, message, headers)

    def handle(self, req: Request, ctx: CallContext) -> Response:
        if self._v1(req):
            return self._v1_send(req)
        if req.raw_path.rstrip("/") == "/v2/email/account" and req.method == "GET":
            return Response.json(200, {"SendQuota": {"Max24HourSend": -1.0, "MaxSendRate": ctx.rate,
                                                     "SentLast24Hours": float(sum(self.stats.snapshot()["emails"]
                                                                                  .values()))},
                                       "SendingEnabled": True, "ProductionAccessEnabled": True})
        if req.raw_path.rstrip("/") != "/v2/email/outbound-emails":
            return aws.json_error(404, "NotFoundException", f"Unknown operation {req.method} {req.raw_path}")
        if req.method != "POST":
            return aws.json_error(405, "BadRequestException", f"Method {req.method} not allowed")
        body = req.json()
        if not isinstance(body, dict):
            return aws.json_error(400, "BadRequestException", "The request body is not valid JSON.")
        dest = body.get("Destination") or {}
        recipients = [_bare(str(a)) for field in ("ToAddresses", "CcAddresses", "BccAddresses")
                      for a in (dest.get(field) or [])] if isinstance(dest, dict) else []
        content = body.get("Content") or {}
        sender = str(body.get("FromEmailAddress") or "")
        if not content:
            return aws.json_error(400, "BadRequestException", "Content is required.")
        if not sender and "Raw" not in content:
            return aws.json_error(400, "BadRequestException", "FromEmailAddress is required.")
        if not recipients and "Raw" not in content:
            return aws.json_error(400, "BadRequestException", "Missing final '@domain'")
        bad = [r for r in recipients if not _ADDRESS.match(r)]
        if bad or (sender and not _ADDRESS.match(_bare(sender))):
            return aws.json_error(400, "BadRequestException", "Illegal address")
        simple = content.get("Simple") if isinstance(content, dict) else None
        subject = ((simple or {}).get("Subject") or {}).get("Data") if isinstance(simple, dict) else None
        tags = {t.get("Name"): t.get("Value") for t in body.get("EmailTags") or [] if isinstance(t, dict)}
        return Response.json(200, {"MessageId": self._accept("v2", sender, recipients, subject, tags)})

    def _accept(self, api: str, sender: str, recipients: list[str], subject: Any, tags: dict[str, Any]) -> str:
        mid = message_id()
        self.stats.email({"MessageId": mid, "api": api, "from": sender, "to": recipients, "subject": subject,
                          "tags": tags, "t": round(time.monotonic(), 6)}, recipients)
        return mid

    def _v1_send(self, req: Request) -> Response:
        if req.method != "POST" or req.raw_path not in ("/", ""):
            return _xml_error(404, "UnknownOperation", f"Unknown operation {req.method} {req.raw_path}")
        form = req.form()
        action = form.get("Action", "")
        if action != "SendEmail":
            return _xml_error(400, "InvalidAction", f"The action {action or '(none)'} is not valid for this endpoint.")
        recipients = [_bare(v) for k, v in sorted(form.items())
                      if re.fullmatch(r"Destination\.(To|Cc|Bcc)Addresses\.member\.\d+", k)]
        sender = form.get("Source", "")
        if not sender:
            return _xml_error(400, "MissingParameter", "The request must contain the parameter Source.")
        if not recipients:
            return _xml_error(400, "InvalidParameterValue", "Missing final '@domain'")
        if any(not _ADDRESS.match(r) for r in recipients):
            return _xml_error(400, "InvalidParameterValue", "Illegal address")
        tags = {}
        for k, v in form.items():
            m = re.fullmatch(r"Tags\.member\.(\d+)\.Name", k)
            if m:
                tags[v] = form.get(f"Tags.member.{m.group(1)}.Value")
        mid = self._accept("v1", sender, recipients, form.get("Message.Subject.Data"), tags)
        body = (f'<SendEmailResponse xmlns="{XMLNS}"><SendEmailResult><MessageId>{mid}</MessageId>'
                f"</SendEmailResult><ResponseMetadata><RequestId>{aws.request_id()}</RequestId>"
                f"</ResponseMetadata></SendEmailResponse>")
        return Response.text(200, body, "text/xml")
