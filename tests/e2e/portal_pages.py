"""What the browser tests share: where screenshots go, and logging in through the login page."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page

from sample_records import PASSWORD

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


async def log_in(page: Page, base: str, login: str, password: str = PASSWORD, *, expect: str | None = None) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#username", login)
    await page.fill("#password", password)
    await page.click("#login-form button[type=submit]")
    if expect:
        await page.wait_for_url(f"**{expect}")
