"""The dashboard in a real headless Chromium (the system's /usr/bin/chromium, driven by Playwright).

One seeded run with real services (sandbox, producer, recovery, a queue
worker; no AUTO_APPROVE, so the campaigns stop at READY_FOR_REVIEW) and the
real ``campaignctl dashboard`` process. The browser must see the right
counts on the overview, a campaign's history and draft, no write button and
a 403 for a forged POST without the operator token, and, signed in with the
token, an approval that moves the campaign and that a worker then sends.
A screenshot of each page is written to the test's output folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect, sync_playwright
from sqlalchemy import select

from tests.servers import free_port
from tests.test_dispatch_modes import CAMPAIGNS, Services, services  # noqa: F401 - the fixture
from workflow.db import make_engine
from workflow.models import Campaign
from workflow.states import Status
from workflow.store import CampaignStore

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: The system's Chromium (Debian package ``chromium``); Playwright's own browser download is not used.
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: Flags for a root user in a container without a GPU or a network to phone home to.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
TOKEN = "operator-token-for-the-test"
#: Give up on the seeded campaigns reaching review, or the approved one being sent, after this long, in s.
RUN_TIMEOUT = 120.0
#: Longest the open overview may take to show a change: browser refresh (3 s) + snapshot cache (3 s) + slack, in ms.
LIVE_TIMEOUT_MS = 15_000
#: A phone's viewport, for one screenshot that shows the layout holds up.
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package chromium (scripts/test.sh does, as root)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def wait_for(what: str, check, svc: Services, timeout: float = RUN_TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: timed out\n{svc.logs()}"
        svc.check_alive()
        time.sleep(0.3)


def start_dashboard(svc: Services, name: str, **env: str) -> str:
    port = free_port()
    svc.start(name, "dashboard", "--port", str(port), **env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for("dashboard up", up, svc, 30)
    return url


def test_dashboard_in_a_real_browser(services: Services, pg_url: str, browser: Browser, tmp_path: Path) -> None:
    # Given a seeded run that stopped at review, and the dashboard with an operator token
    services.env["AUTO_APPROVE"] = "0"
    services.start("producer", "producer")
    services.start("recovery", "recovery")
    services.start("worker", "worker", "--concurrency", "4")
    store = CampaignStore(make_engine(pg_url))
    wait_for("campaigns at review", lambda: store.counts()["campaigns"]["READY_FOR_REVIEW"] == CAMPAIGNS, services)
    url = start_dashboard(services, "dashboard", DASHBOARD_TOKEN=TOKEN)
    page = browser.new_page()

    # Then the overview shows the database's counts
    page.goto(f"{url}/")
    counts = store.counts()
    for status, n in counts["campaigns"].items():
        expect(page.locator(f"#count-status-{status}")).to_have_text(str(n))
    for stage, n in counts["stages"].items():
        expect(page.locator(f"#count-stage-{stage}")).to_have_text(str(n))
    expect(page.locator("#workers tbody tr")).to_have_count(1)
    expect(page.locator("#workers")).to_contain_text("alive")
    expect(page.locator("#queues tbody tr")).to_have_count(7)
    expect(page.locator("#limits")).to_contain_text("zillow")
    expect(page.locator("#dead-letter-count")).to_have_text("(0)")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    # And a campaign page shows its history and its draft
    campaign_id = 1
    history = store.history(campaign_id)
    page.goto(f"{url}/campaigns/{campaign_id}")
    expect(page.locator("#campaign-status")).to_have_text(Status.READY_FOR_REVIEW.value)
    expect(page.locator("#history tbody tr")).to_have_count(len(history))
    expect(page.locator("#draft-subject")).not_to_be_empty()
    expect(page.locator("#draft-body")).not_to_be_empty()
    expect(page.locator("#result-property_data")).to_be_visible()
    page.screenshot(path=str(tmp_path / "campaign.png"), full_page=True)

    # When nobody signed in: no write button anywhere, and a forged POST is refused
    page.goto(f"{url}/review")
    expect(page.locator("article.draft")).to_have_count(CAMPAIGNS)
    expect(page.locator("button[data-action]")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "review-read-only.png"), full_page=True)
    assert requests.post(f"{url}/campaigns/{campaign_id}/approve", timeout=5).status_code == 403
    assert requests.post(f"{url}/campaigns/{campaign_id}/approve", data={"csrf_token": "guess"},
                         timeout=5).status_code == 403
    forged = page.request.post(f"{url}/campaigns/{campaign_id}/approve", form={"csrf_token": "x"})
    assert forged.status == 403
    assert store.get(campaign_id).campaign_status is Status.READY_FOR_REVIEW

    # When the operator signs in with the token and approves the oldest draft in the browser (an overview stays open)
    live = browser.new_page()
    live.goto(f"{url}/")
    expect(live.locator("#count-status-SENT")).to_have_text("0")
    page.goto(f"{url}/login?next=/review")
    page.screenshot(path=str(tmp_path / "login.png"), full_page=True)
    page.fill("#token", TOKEN)
    page.click("form.login button")
    expect(page.locator("#operator")).to_be_visible()
    oldest = page.locator("article.draft").first
    approved = int(oldest.get_attribute("data-campaign") or 0)
    assert approved == oldest_waiting(store)
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
    oldest.locator("button[data-action=Approve]").click()

    # Then the campaign moved, and a worker sends it
    expect(page.locator("#message")).to_contain_text("READY_TO_SEND")
    wait_for("approved campaign sent", lambda: store.get(approved).campaign_status is Status.SENT, services)
    page.goto(f"{url}/campaigns/{approved}")
    expect(page.locator("#campaign-status")).to_have_text(Status.SENT.value)
    expect(page.locator("#history")).to_contain_text("approved by dashboard")
    expect(page.locator("#send")).to_be_visible()
    # ... and the open overview followed by itself, without a reload
    expect(live.locator("#count-status-SENT")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    expect(live.locator(f"#count-status-{Status.READY_FOR_REVIEW.value}")).to_have_text(str(CAMPAIGNS - 1))
    page.screenshot(path=str(tmp_path / "campaign-sent.png"), full_page=True)
    # ... while even a signed-in browser cannot post without the form's CSRF token
    waiting = oldest_waiting(store)
    cookie_only = page.request.post(f"{url}/campaigns/{waiting}/unsubscribe", form={"back": "/"})
    assert cookie_only.status == 403
    assert store.get(waiting).campaign_status is Status.READY_FOR_REVIEW

    # And the overview on a phone
    phone = browser.new_page(viewport=PHONE)
    phone.goto(f"{url}/")
    expect(phone.locator("#count-status-SENT")).to_have_text("1")
    phone.screenshot(path=str(tmp_path / "overview-phone.png"), full_page=True)

    # And no page carries the token
    for path in ("/", "/review", f"/campaigns/{approved}", "/login"):
        assert TOKEN not in requests.get(f"{url}{path}", timeout=5).text
    print(f"screenshots in {tmp_path}")
    store.engine.dispose()


def test_without_a_token_the_dashboard_is_read_only(services: Services, browser: Browser, tmp_path: Path) -> None:
    # Given a dashboard started without DASHBOARD_TOKEN
    url = start_dashboard(services, "dashboard")
    page = browser.new_page()
    # Then there is nothing to sign in with, no write button, and every write is refused
    page.goto(f"{url}/campaigns/1")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("button[data-action]")).to_have_count(0)
    page.goto(f"{url}/login")
    expect(page.locator("#token")).to_have_count(0)
    for action in ("approve", "unsubscribe", "retry", "resolve"):
        answer = page.request.post(f"{url}/campaigns/1/{action}", form={"csrf_token": "x"})
        assert answer.status == 403, action
        answer = requests.post(f"{url}/campaigns/1/{action}", headers={"Authorization": f"Bearer {TOKEN}"},
                               timeout=5)
        assert answer.status_code == 403, action
    page.screenshot(path=str(tmp_path / "campaign-read-only.png"), full_page=True)


def oldest_waiting(store: CampaignStore) -> int:
    """The campaign that has waited longest for review (the review page's first)."""
    table = Campaign.__table__
    with store.engine.connect() as conn:
        return conn.execute(select(table.c.id).where(table.c.campaign_status == Status.READY_FOR_REVIEW.value)
                            .order_by(table.c.updated_at, table.c.id).limit(1)).scalar_one()
