"""What the browser tests share: where screenshots go, logging in through the login page, the patient's card."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.async_api import Page

from portal_world import PortalWorld
from sample_records import PASSWORD

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 1}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}


async def log_in(page: Page, base: str, login: str, password: str = PASSWORD, *, expect: str | None = None) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#username", login)
    await page.fill("#password", password)
    await page.click("#login-form button[type=submit]")
    if expect:
        await page.wait_for_url(f"**{expect}")


async def card_qr_png(portal: str, world: PortalWorld) -> bytes:
    """The patient's e-health card (issued now, or the one they have) and a fresh picture of its QR code, fetched
    through the API as the patient's app does."""
    async with httpx.AsyncClient(base_url=portal, timeout=30) as http:
        token = (await http.post("/api/auth/token", data={"username": world.patient.login,
                                                           "password": PASSWORD})).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        response = await http.post("/api/cards", json={
            "patient": world.patient.fhir_user, "national_id": world.national_id, "name": world.patient_name})
        assert response.status_code in (201, 409), response.text
        card = (await http.get("/api/cards/mine")).json()
        qr = await http.get(f"/api/cards/{card['id']}/qr", headers={"Accept": "image/png"})
        assert qr.status_code == 200 and qr.headers["content-type"] == "image/png", qr.text
        return qr.content
