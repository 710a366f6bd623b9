"""Bedrock Runtime converse and SES (v2 and v1) through the real boto3 clients pointed at the sandbox."""

from __future__ import annotations

import pytest
import requests
from botocore.exceptions import ClientError

from tests.sandbox.conftest import Keys, aws_client

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
EMAIL_PROMPT = ("Write this month's market update email to Ann Lee about their home at "
                "12 Maple Street, Springfield, IL 62704.\n\nFormat exactly:\nSubject: <one line>\n\n<body>")


def converse(client, prompt: str, max_tokens: int = 600) -> dict:
    return client.converse(modelId=MODEL, system=[{"text": "be brief"}],
                           messages=[{"role": "user", "content": [{"text": prompt}]}],
                           inferenceConfig={"maxTokens": max_tokens, "temperature": 0.2})


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Message"]


def test_converse_email_is_deterministic_and_path_is_encoded(sb, keys: Keys) -> None:
    client = aws_client("bedrock-runtime", sb, keys.AKIDA)
    first = converse(client, EMAIL_PROMPT)
    text = first["output"]["message"]["content"][0]["text"]
    print(text)
    assert text.startswith("Subject: ") and "\n\nHi Ann," in text
    assert first["stopReason"] == "end_turn" and first["usage"]["outputTokens"] > 0
    assert first["ResponseMetadata"]["RequestId"]
    again = aws_client("bedrock-runtime", sb, keys.AKIDB)
    assert converse(again, EMAIL_PROMPT)["output"] == first["output"]
    assert sb.calls()[0]["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"


def test_converse_analysis_and_max_tokens(sb, keys: Keys) -> None:
    client = aws_client("bedrock-runtime", sb, keys.AKID)
    out = converse(client, 'Analyse this home. Home: {"zestimate": 480000, "address": "5 Oak St, Austin, TX 78701"}')
    text = out["output"]["message"]["content"][0]["text"]
    assert "$480,000" in text and not text.startswith("Subject:")
    short = converse(client, EMAIL_PROMPT, max_tokens=10)
    assert short["stopReason"] == "max_tokens" and len(short["output"]["message"]["content"][0]["text"].split()) <= 8


def test_bedrock_errors_as_boto3_parses_them(sb, keys: Keys) -> None:
    client = aws_client("bedrock-runtime", sb, keys.AKID)
    converse(client, "hi")
    converse(client, "hi")
    with pytest.raises(ClientError) as info:
        converse(client, "hi")
    assert code_of(info) == ("ThrottlingException", 429, "Too many requests, please wait before trying again. "
                             "You have sent too many requests. Wait before trying again.")
    assert isinstance(info.value, client.exceptions.ThrottlingException)
    assert sb.stats()["throttled"] == {"bedrock": 1} and sb.stats()["calls"] == {"bedrock": 3}
    for key, expected in ((f"invalid-{keys.tag}", "UnrecognizedClientException"),
                          (f"unsubscribed-{keys.tag}", "AccessDeniedException")):
        with pytest.raises(ClientError) as info:
            converse(aws_client("bedrock-runtime", sb, key), "hi")
        assert code_of(info)[:2] == (expected, 403)
    sb.faults("bedrock:5xx=1")
    with pytest.raises(ClientError) as info:
        converse(aws_client("bedrock-runtime", sb, keys.AKID2), "hi")
    assert code_of(info)[:2] in {("InternalServerException", 500), ("ServiceUnavailableException", 503)}
    sb.faults("bedrock:quota=1")
    with pytest.raises(ClientError) as info:
        converse(aws_client("bedrock-runtime", sb, keys.AKID3), "hi")
    assert code_of(info) == ("ThrottlingException", 429, "Too many tokens per day, please wait before trying again.")


def test_bedrock_validation_error(sb, keys: Keys) -> None:
    r = requests.post(f"{sb.url}/model/{MODEL}/converse", json={"messages": []},
                      headers={"Authorization": f"AWS4-HMAC-SHA256 Credential={keys.AKID}/20261128/us-east-1/"
                                                "bedrock/aws4_request, SignedHeaders=host, Signature=x"}, timeout=10)
    assert r.status_code == 400 and r.headers["x-amzn-ErrorType"] == "ValidationException"


def send(client, to: str, cc: list[str] | None = None) -> dict:
    return client.send_email(FromEmailAddress="agent@example.com",
                             Destination={"ToAddresses": [to], "CcAddresses": cc or []},
                             Content={"Simple": {"Subject": {"Data": "Hello"}, "Body": {"Text": {"Data": "Body"}}}},
                             EmailTags=[{"Name": "run_key", "Value": "campaign-1-run-1"}])


def test_sesv2_send_records_every_recipient(sb, keys: Keys) -> None:
    client = aws_client("sesv2", sb, keys.AKID)
    first = send(client, "owner@example.org", cc=["agent-copy@example.com"])
    assert first["MessageId"]
    send(aws_client("sesv2", sb, keys.AKID2), "owner@example.org")
    assert sb.stats()["emails"] == {"owner@example.org": 2, "agent-copy@example.com": 1}
    messages = requests.get(f"{sb.url}/_sandbox/emails", timeout=10).json()["emails"]
    assert messages[0]["MessageId"] == first["MessageId"] and messages[0]["tags"] == {"run_key": "campaign-1-run-1"}
    with pytest.raises(ClientError) as info:
        send(client, "not-an-address")
    assert code_of(info)[:2] == ("BadRequestException", 400)


def test_sesv2_throttle_and_quota(sb, keys: Keys) -> None:
    client = aws_client("sesv2", sb, keys.AKID)
    with pytest.raises(ClientError) as info:
        for _ in range(20):
            send(client, "many@example.org")
    assert code_of(info) == ("TooManyRequestsException", 429, "Maximum sending rate exceeded.")
    accepted = sb.stats()["emails"]["many@example.org"]
    assert accepted == sb.stats()["calls"]["ses"] - 1  # the throttled message was dropped
    sb.faults("ses:quota=1")
    with pytest.raises(ClientError) as info:
        send(aws_client("sesv2", sb, keys.AKID2), "quota@example.org")
    assert code_of(info) == ("TooManyRequestsException", 429, "Daily message quota exceeded.")
    assert "quota@example.org" not in sb.stats()["emails"]


def test_ses_v1_send_and_xml_throttle(sb, keys: Keys) -> None:
    client = aws_client("ses", sb, keys.AKID)

    def send_v1() -> dict:
        return client.send_email(Source="agent@example.com", Destination={"ToAddresses": ["v1@example.org"]},
                                 Message={"Subject": {"Data": "Hello"}, "Body": {"Text": {"Data": "Body"}}})

    assert send_v1()["MessageId"]
    with pytest.raises(ClientError) as info:
        for _ in range(20):
            send_v1()
    assert code_of(info) == ("Throttling", 400, "Maximum sending rate exceeded.")
    assert sb.stats()["emails"]["v1@example.org"] >= 2


def test_aws_keys(sb, keys: Keys) -> None:
    with pytest.raises(ClientError) as info:
        send(aws_client("sesv2", sb, f"invalid-{keys.tag}"), "a@example.org")
    assert code_of(info)[:2] == ("UnrecognizedClientException", 403)
    r = requests.post(f"{sb.url}/v2/email/outbound-emails", json={}, timeout=10)  # unsigned
    assert r.status_code == 403 and r.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert sb.stats()["emails"] == {}
