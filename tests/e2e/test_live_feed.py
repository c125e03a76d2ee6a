"""A specialist's inbox keeps up without a reload: when its server went away for a while (a restart, a deploy) it
shows the referrals sent meanwhile once it is back, taking its live feed up where it left it; and in a background
tab its title counts what arrived unseen."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Browser, expect

from live_server import free_port, running_server
from portal_pages import DESKTOP, log_in
from portal_world import PortalWorld  # puts the referral tests' helpers on the path
from referral.store import ReferralFeed
from referral_world import new_case, read_feed_until, referral_body  # noqa: E402
from sample_records import PASSWORD

expect.set_options(timeout=20_000)
# Stop quickly: the open live feed is cut after this long instead of the server waiting for it forever.
FEED_SERVER_ENV = {"QILU_SHUTDOWN_GRACE_S": "1"}


async def refer_a_patient(portal: str, world: PortalWorld, app) -> str:
    """A county doctor refers a new patient up through the portal's API; returns once the worker has put the
    referral's event on the live feed."""
    feed = ReferralFeed(app.state.redis)
    since = await feed.position()
    async with httpx.AsyncClient(base_url=portal, timeout=30) as http:
        token = (await http.post("/api/auth/token", data={"username": world.doctor.login,
                                                           "password": PASSWORD})).json()["access_token"]
        case = await new_case(app.state.db, world.referral)
        created = await http.post("/api/referrals", json=referral_body(world.referral, case),
                                  headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text
    referral_id = created.json()["id"]
    await read_feed_until(feed, since, lambda events: any(e["referral"] == referral_id for e in events))
    return referral_id


async def test_the_inbox_shows_a_referral_sent_while_its_server_was_away(browser: Browser, portal: str,
                                                                         portal_world: PortalWorld, settings, app):
    world = portal_world
    port = free_port()
    context = await browser.new_context(**DESKTOP, locale="zh-CN")
    page = await context.new_page()
    status = page.locator("#live-status")
    try:
        with running_server(settings, "feed", FEED_SERVER_ENV, port=port) as (base, _proc):
            await log_in(page, base, world.specialist.login, expect="/patients")
            await page.goto(f"{base}/referrals/inbox")
            await expect(status).to_have_text(re.compile("实时"))
            await page.evaluate("window.__sameInboxPage = true")
        await expect(status).not_to_have_text(re.compile("实时更新已连接"))  # the page knows it is not listening

        # Meanwhile a county doctor refers a patient through the portal's other server; its worker delivers.
        referral_id = await refer_a_patient(portal, world, app)

        with running_server(settings, "feed", FEED_SERVER_ENV, port=port):
            await expect(page.locator(f"tr[data-referral='{referral_id}']")).to_be_visible(timeout=40_000)
            await expect(page.locator("#news")).to_contain_text("收到新转诊")
            await expect(status).to_have_text(re.compile("实时"))
            assert await page.evaluate("window.__sameInboxPage === true")
    finally:
        await context.close()


SEEN = """(state) => {
  Object.defineProperty(document, 'visibilityState', { value: state, configurable: true });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


async def test_an_inbox_in_a_background_tab_counts_in_its_title_what_arrived_unseen(browser: Browser, portal: str,
                                                                                 portal_world: PortalWorld, app):
    world = portal_world
    context = await browser.new_context(**DESKTOP, locale="zh-CN")
    page = await context.new_page()
    try:
        await log_in(page, portal, world.specialist.login, expect="/patients")
        await page.goto(f"{portal}/referrals/inbox")
        await expect(page.locator("#live-status")).to_have_text(re.compile("实时"))
        title = await page.title()
        await page.evaluate(SEEN, "hidden")  # the specialist switched to another tab
        first, second = await refer_a_patient(portal, world, app), await refer_a_patient(portal, world, app)
        await expect(page.locator(f"tr[data-referral='{second}']")).to_be_attached()
        await expect(page.locator(f"tr[data-referral='{first}']")).to_be_attached()
        await expect(page).to_have_title(f"(2) {title}")
        await page.evaluate(SEEN, "visible")  # back on the tab: seen
        await expect(page).to_have_title(title)
    finally:
        await context.close()
