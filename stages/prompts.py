"""Every prompt text in one place, versioned.

PROMPT_VERSION is stored with each generated result, so a change of wording
can be told apart in stored drafts. Bump it whenever a text below changes.
The prompts get facts only (no keys, no internal ids beyond the address).
"""

from __future__ import annotations

import json
from typing import Any

#: Bump on any change to the texts below.
PROMPT_VERSION = "2026-11-28.1"

ANALYSIS_SYSTEM = (
    "You are a careful real-estate analyst. You write for a homeowner, in plain English, "
    "using only the figures given. Never invent numbers."
)

ANALYSIS_TEMPLATE = """Analyse this home's position in its local market.

Home:
{property}

Homes for sale nearby ({listings_total} in total, first rows):
{listings}

Recent sales nearby ({sales_total} in total, first rows):
{sales}

Market statistics for zip {zip_code}:
{market}

Automated value estimate:
{valuation}

Write 3 short paragraphs: what the home is likely worth now (a range, with why),
how the nearby market is moving, and one practical suggestion for the owner."""

EMAIL_SYSTEM = (
    "You write short, friendly, factual emails from a local real-estate agent to a homeowner. "
    "No pressure, no invented numbers, no links. Answer with a subject line and a body only."
)

EMAIL_TEMPLATE = """Write this month's market update email to {owner_name} about their home at {address}.

Use this analysis (do not repeat it word for word):
{analysis}

Format exactly:
Subject: <one line, at most 70 characters>

<body: 80 to 150 words, greeting by first name, sign off as "Your local agent">"""


def _block(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True, default=str) if data is not None else "(not available)"


def analysis_prompt(*, property_facts: dict[str, Any], listings: dict[str, Any] | None,
                    sales: dict[str, Any] | None, market: dict[str, Any] | None, zip_code: str) -> str:
    market = market or {}
    return ANALYSIS_TEMPLATE.format(
        property=_block(property_facts),
        listings_total=(listings or {}).get("total", 0),
        listings=_block((listings or {}).get("rows")),
        sales_total=(sales or {}).get("total", 0),
        sales=_block((sales or {}).get("rows")),
        zip_code=zip_code,
        market=_block(market.get("market")),
        valuation=_block(market.get("value")),
    )


def email_prompt(*, owner_name: str, address: str, analysis: str) -> str:
    return EMAIL_TEMPLATE.format(owner_name=owner_name, address=address, analysis=analysis)


def parse_email(text: str, *, fallback_subject: str) -> tuple[str, str]:
    """(subject, body) from the model's answer; a missing "Subject:" line gets ``fallback_subject``."""
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("subject:"):
            subject = line.split(":", 1)[1].strip().strip('"') or fallback_subject
            body = "\n".join(lines[i + 1:]).strip()
            return subject[:200], body or text.strip()
    return fallback_subject, text.strip()
