"""Sandbox test fixtures: one in-thread sandbox per session, reset and fault-free for every test.

Limits are per API key, so tests take fresh keys (``keys``) rather than
waiting for buckets to refill.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from sandbox.server import SandboxHandle, start_in_thread

ZILLOW_HOST = "zillow-com1.p.rapidapi.com"
ZILLOW56_HOST = "zillow56.p.rapidapi.com"
ADDRESS = "12 Maple Street, Springfield, IL 62704"


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxHandle]:
    handle = start_in_thread(0, time_scale=1.0, hang=5.0)
    yield handle
    handle.stop()


@pytest.fixture
def sb(sandbox_server: SandboxHandle) -> SandboxHandle:
    sandbox_server.faults("")
    sandbox_server.reset()
    return sandbox_server


class Keys:
    """Fresh keys for one test (the sandbox's buckets are per key)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:10]

    def __getattr__(self, name: str) -> str:
        return f"{name}-{self.tag}"


@pytest.fixture
def keys() -> Keys:
    return Keys()


def rapid(sb: SandboxHandle, path: str, key: str, host: str = ZILLOW_HOST, **params: Any) -> requests.Response:
    return requests.get(sb.url + path, params=params, headers={"X-RapidAPI-Key": key, "X-RapidAPI-Host": host},
                        timeout=10)


def aws_client(service: str, sb: SandboxHandle, key_id: str, read_timeout: float = 10.0) -> Any:
    """The real boto3 client, one attempt per call (as the stages configure it)."""
    return boto3.session.Session().client(
        service, endpoint_url=sb.url, region_name="us-east-1", aws_access_key_id=key_id,
        aws_secret_access_key="sandbox-secret",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout,
                      connect_timeout=5))
