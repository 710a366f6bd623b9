"""The SES client against moto's standalone server: a third party's model of SES v2 keeps our request honest."""

from __future__ import annotations

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from stages.clients.ses import SesClient
from stages.errors import PermanentError
from stages.settings import ProviderSettings
from tests.servers import free_port

SENDER = "agent@example.com"


@pytest.fixture(scope="module")
def moto_url():  # type: ignore[no-untyped-def]
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


class NoGate:
    """No shared limiter here: the SES client is exercised alone."""

    def acquire(self, api: str) -> None:
        pass

    def pause(self, api: str, seconds: float) -> None:
        pass


def _settings(url: str, **extra: str) -> ProviderSettings:
    env = {"SANDBOX_URL": url, "SES_FROM_ADDRESS": SENDER, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing-secret", **extra}
    return ProviderSettings.from_env(env)


def test_send_email_shape_accepted_by_moto(moto_url: str) -> None:
    admin = boto3.client("sesv2", endpoint_url=moto_url, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing-secret")
    admin.create_email_identity(EmailIdentity=SENDER)
    client = SesClient(_settings(moto_url))
    message_id = client.send(NoGate(), to="owner@example.org", subject="Your home", body="Hello there",
                             run_key="campaign-7-run-1")
    assert message_id
    data = requests.get(f"{moto_url}/moto-api/data.json", timeout=10).json()
    messages = data["ses"]["Message"]
    print(messages)
    assert any("owner@example.org" in str(m) and "Your home" in str(m) for m in messages)


def test_unverified_sender_is_permanent_and_names_no_secret(moto_url: str) -> None:
    client = SesClient(_settings(moto_url, SES_FROM_ADDRESS="nobody@unverified.example"))
    with pytest.raises(PermanentError) as info:
        client.send(NoGate(), to="owner@example.org", subject="s", body="b", run_key="campaign-8-run-1")
    print(info.value)
    assert str(info.value).startswith("ses: ")
    assert "testing-secret" not in str(info.value)
