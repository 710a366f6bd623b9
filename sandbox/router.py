"""Which simulated provider a request is for, from what a real client sends.

RapidAPI calls are routed on ``X-RapidAPI-Host`` as the real gateway does (an
unknown host gets the gateway's 404); everything else on its real path:
``/v1/verify…`` QEV, other ``/v1/…`` RentCast, ``/model/…`` Bedrock,
``/v2/email/…`` SES v2 and ``POST /`` SES v1. A RapidAPI path without the
host header is routed by path as a convenience (``/property`` goes to
zillow-com1).
"""

from __future__ import annotations

from collections.abc import Mapping

from sandbox.provider import Provider
from sandbox.rapidapi_zillow import ZILLOW56_HOST, ZILLOW_HOST, gateway_not_found
from sandbox.wire import Request, Response

#: RapidAPI host -> provider name.
HOSTS = {ZILLOW_HOST: "zillow", ZILLOW56_HOST: "zillow56"}
#: Paths routed without an X-RapidAPI-Host header.
BARE_PATHS = {"/property": "zillow", "/propertyExtendedSearch": "zillow", "/similarSales": "zillow",
              "/zestimate": "zillow", "/search": "zillow56", "/search_address": "zillow56"}


def provider_name(req: Request) -> str | Response | None:
    """The provider's name, a gateway error response, or None (no provider serves this path)."""
    host = req.header("x-rapidapi-host").strip().lower()
    if host:
        return HOSTS.get(host) or gateway_not_found(host)
    path = req.raw_path
    if path.startswith("/v1/verify"):
        return "email_verification"
    if path.startswith("/v1/"):
        return "rentcast"
    if path.startswith("/model/"):
        return "bedrock"
    if path.startswith("/v2/email"):
        return "ses"
    if path in ("/", "") and req.method == "POST":
        return "ses"
    return BARE_PATHS.get(path.rstrip("/"))


def route(req: Request, providers: Mapping[str, Provider]) -> Provider | Response:
    found = provider_name(req)
    if isinstance(found, Response):
        return found
    if found is None:
        return Response.json(404, {"message": f"no simulated provider serves {req.method} {req.raw_path}"})
    return providers[found]
