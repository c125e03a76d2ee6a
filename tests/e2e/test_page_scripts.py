"""A page whose script is still on its way (a slow phone network): its forms wait for it instead of submitting
themselves to the server, which would reload the page, lose what was typed and put it in the address bar."""

from __future__ import annotations

import asyncio

from playwright.async_api import Browser, Route, expect

from portal_pages import PHONE, log_in
from portal_world import PortalWorld

expect.set_options(timeout=20_000)


async def test_a_form_used_before_its_script_has_run_waits_instead_of_reloading(browser: Browser, portal: str,
                                                                               portal_world: PortalWorld):
    world = portal_world
    context = await browser.new_context(**PHONE, locale="zh-CN")
    page = await context.new_page()
    script_may_come = asyncio.Event()

    async def hold_back(route: Route) -> None:
        await script_may_come.wait()
        await route.continue_()

    try:
        await log_in(page, portal, world.doctor.login, expect="/patients")
        await page.route("**/static/js/page-patients.js", hold_back)
        await page.goto(f"{portal}/patients", wait_until="commit")
        search = page.locator("#search-form button[type=submit]")
        await search.wait_for(state="attached")
        await expect(search).to_be_disabled()
        await page.fill("#q-name", world.patient_name)
        await page.press("#q-name", "Enter")  # too early: nothing is sent
        await asyncio.sleep(0.5)
        assert "?" not in page.url and world.patient_name not in page.url

        script_may_come.set()
        await expect(search).to_be_enabled()
        await expect(page.locator("#q-name")).to_have_value(world.patient_name)  # what was typed is still there
        await search.click()
        await expect(page.locator(f"a.patient-link[href='/patients/{world.patient_id}']")).to_be_visible()
    finally:
        await context.close()
