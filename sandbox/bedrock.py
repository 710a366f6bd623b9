"""Amazon Bedrock Runtime (providers.md §5): ``POST /model/{modelId}/converse`` and ``/invoke``.

The model id arrives URL-encoded (``anthropic.claude-…-v1%3A0``) [V]. The
answer is a plausible text generated deterministically from the prompt: for
an email prompt a "Subject: …" line, a blank line and a 80–150 word body; for
anything else three short analysis paragraphs that quote figures found in the
prompt. ``maxTokens`` is honoured (words × 4/3 as the token count [I]) with
``stopReason: "max_tokens"`` when cut. Errors: rest-json with
``x-amzn-ErrorType`` [D][V]; the limit 429 is ThrottlingException with the
real message [O]; an injected ``quota`` fault is the "Too many tokens per
day" variant [O].
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import unquote

from sandbox import aws
from sandbox import fakedata as fd
from sandbox.provider import CallContext
from sandbox.wire import Request, Response

THROTTLED = ("Too many requests, please wait before trying again. You have sent too many requests. "
             "Wait before trying again.")
DAILY = "Too many tokens per day, please wait before trying again."
DENIED = (403, "AccessDeniedException", "You don't have access to the model with the specified model ID.")
#: Injected server errors in rotation (codes and statuses [D]; messages [I]).
SERVER_ERRORS = ((500, "InternalServerException", "The server encountered an internal error. Try again later."),
                 (503, "ServiceUnavailableException", "Bedrock is unable to process your request."))
_PATH = re.compile(r"^/model/(?P<model>[^/]+)/(?P<op>converse|invoke)$")

EMAIL_OPENERS = (
    "I hope the season is treating you well. I put together a short update on how homes around {street} have been doing.",
    "Here is your monthly look at the market around {street}, kept short as always.",
    "I wanted to share a quick, no-pressure update on what is happening near {street}.",
)
EMAIL_MIDDLES = (
    "Homes close to you have kept their value well, and the estimate for your home now sits around {value}.",
    "Recent sales nearby suggest a value in the region of {value} for a home like yours.",
    "Based on the latest nearby sales and listings, a fair range for your home centres on {value}.",
)
EMAIL_MARKET = (
    "Buyers are still active in {city}, and well-presented homes are not sitting on the market for long.",
    "Inventory in {city} remains fairly tight, which continues to support prices for owners.",
    "The pace in {city} has steadied: listings take a little longer to sell, but prices are holding.",
)
EMAIL_ADVICE = (
    "If you ever want a more detailed valuation or simply have a question, just reply to this email.",
    "Small updates such as fresh paint or tidy landscaping tend to pay off if you ever decide to list.",
    "There is nothing you need to do; I will keep sending these updates so you always know where you stand.",
)
ANALYSIS_PARAGRAPHS = (
    ("Value. The home at {street} is most likely worth between {low} and {high} today. The automated estimate "
     "of {value} sits in the middle of that range and is consistent with the recent sales nearby, allowing for "
     "differences in size and condition."),
    ("Market. Around {city}, activity has been {pace}. Homes for sale nearby are priced close to recent sale "
     "prices, which points to a balanced market where well-presented homes still sell without long delays."),
    ("Suggestion. {advice}"),
)
ADVICE = ("Keep records of any improvements: they support a higher figure when it is time to sell or refinance.",
          "Review the property tax assessment against the estimate; an appeal can be worthwhile if it runs high.",
          "Small maintenance items done now, such as paint and landscaping, protect the value in a steady market.")


def _money(n: float) -> str:
    return f"${int(round(n, -3)):,}"


def _figures(prompt: str) -> dict[str, Any]:
    """Facts the text can quote, read from the prompt (JSON blocks of the stages' templates or free text)."""
    facts: dict[str, Any] = {}
    for name in ("zestimate", "price", "value", "estimate"):
        m = re.search(rf'"{name}"\s*:\s*(\d{{5,8}}(?:\.\d+)?)', prompt)
        if m:
            facts["value"] = float(m.group(1))
            break
    m = re.search(r"about their home at (.+?)\.\s*$", prompt, re.M)
    address = m.group(1) if m else None
    if not address:
        m = re.search(r'"address"\s*:\s*"([^"]+)"', prompt)
        address = m.group(1) if m else None
    if address:
        a = fd.parse_address(address)
        facts.update(street=a.street, city=a.city)
        facts.setdefault("value", float(fd.home(address).value))
    m = re.search(r"email to (.+?) about", prompt)
    if m:
        facts["first_name"] = m.group(1).strip().split()[0]
    m = re.search(r"\$\s?(\d[\d,]{4,})", prompt)
    if "value" not in facts and m:
        facts["value"] = float(m.group(1).replace(",", ""))
    return facts


def generate(system: str, prompt: str) -> str:
    """A deterministic, plausible answer to ``prompt`` (the same prompt always gives the same text)."""
    r = fd.rng("bedrock", system, prompt)
    f = _figures(prompt)
    street, city = f.get("street", "your street"), f.get("city", "your area")
    value = f.get("value", float(r.randrange(180, 900) * 1000))
    words = {"street": street, "city": city, "value": _money(value), "low": _money(value * 0.94),
             "high": _money(value * 1.06), "pace": r.choice(("steady", "brisk", "a little slower than last year")),
             "advice": r.choice(ADVICE)}
    if "subject:" in prompt.lower() or "email" in prompt.lower():
        month = fd.TODAY.strftime("%B")
        subject = r.choice((f"{street}: your {month} market update", f"How homes near {street} are doing",
                            f"Your home's value this {month}"))[:70]
        body = [f"Hi {f.get('first_name', 'there')},", "",
                " ".join(s.format(**words) for s in (r.choice(EMAIL_OPENERS), r.choice(EMAIL_MIDDLES),
                                                     r.choice(EMAIL_MARKET))),
                "", r.choice(EMAIL_ADVICE).format(**words), "", "Warm regards,", "Your local agent"]
        return f"Subject: {subject}\n\n" + "\n".join(body)
    return "\n\n".join(p.format(**words) for p in ANALYSIS_PARAGRAPHS)


def _tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 4 / 3))


def _cut(text: str, max_tokens: int | None) -> tuple[str, str]:
    """(text, stopReason): cut to ``max_tokens`` when the text is longer."""
    if not max_tokens or _tokens(text) <= max_tokens:
        return text, "end_turn"
    keep = max(1, int(max_tokens * 3 / 4))
    out, count = [], 0
    for token in re.split(r"(\s+)", text):
        if token.strip():
            count += 1
            if count > keep:
                break
        out.append(token)
    return "".join(out).rstrip(), "max_tokens"


class Bedrock(aws.AwsService):
    name = "bedrock"
    denied = DENIED
    throttle_code = "ThrottlingException"
    throttle_message = THROTTLED
    daily_message = DAILY
    server_errors = SERVER_ERRORS

    def handle(self, req: Request, ctx: CallContext) -> Response:
        match = _PATH.match(req.raw_path)
        if not match:
            return aws.json_error(404, "UnknownOperationException", f"Unknown operation {req.method} {req.raw_path}")
        if req.method != "POST":
            return aws.json_error(405, "UnknownOperationException", f"Method {req.method} not allowed")
        model = unquote(match.group("model"))
        body = req.json()
        if not isinstance(body, dict):
            return aws.json_error(400, "ValidationException", "Malformed input request, please reformat your input")
        if match.group("op") == "invoke":
            return self._invoke(model, body)
        return self._converse(model, body)

    def _converse(self, model: str, body: dict[str, Any]) -> Response:
        started = time.monotonic()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return aws.json_error(400, "ValidationException",
                                  "1 validation error detected: Value at 'messages' failed to satisfy constraint: "
                                  "Member must have length greater than or equal to 1")
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return aws.json_error(400, "ValidationException",
                                  "A conversation must end with a user message. Try again with a conversation "
                                  "that ends with a user message.")
        system = " ".join(str(s.get("text", "")) for s in body.get("system") or [] if isinstance(s, dict))
        prompt = "\n".join(str(c.get("text", "")) for m in messages if isinstance(m, dict)
                           for c in m.get("content") or [] if isinstance(c, dict))
        config = body.get("inferenceConfig") or {}
        max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return aws.json_error(400, "ValidationException", "maxTokens must be a positive whole number")
        text, stop = _cut(generate(system, prompt), max_tokens)
        usage_in, usage_out = _tokens(system + " " + prompt), _tokens(text)
        return Response.json(200, {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": stop,
            "usage": {"inputTokens": usage_in, "outputTokens": usage_out, "totalTokens": usage_in + usage_out},
            "metrics": {"latencyMs": int((time.monotonic() - started) * 1000) + 1},
        })

    def _invoke(self, model: str, body: dict[str, Any]) -> Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or "max_tokens" not in body:
            return aws.json_error(400, "ValidationException", "Malformed input request: messages and max_tokens are "
                                                              "required, please reformat your input and try again.")
        system = body.get("system") if isinstance(body.get("system"), str) else ""
        prompt = "\n".join(
            (c if isinstance(c, str) else str(c.get("text", ""))) for m in messages if isinstance(m, dict)
            for c in (m.get("content") if isinstance(m.get("content"), list) else [m.get("content") or ""]))
        text, stop = _cut(generate(system, prompt), body.get("max_tokens"))
        usage_in, usage_out = _tokens(system + " " + prompt), _tokens(text)
        payload = {"id": f"msg_bdrk_{fd.seed_of(prompt):016x}", "type": "message", "role": "assistant",
                   "model": model.split(".", 1)[-1], "content": [{"type": "text", "text": text}],
                   "stop_reason": stop, "stop_sequence": None,
                   "usage": {"input_tokens": usage_in, "output_tokens": usage_out}}
        return Response(200, json.dumps(payload).encode(), {
            "Content-Type": "application/json", "x-amzn-bedrock-input-token-count": str(usage_in),
            "x-amzn-bedrock-output-token-count": str(usage_out), "x-amzn-bedrock-invocation-latency": "1"})


