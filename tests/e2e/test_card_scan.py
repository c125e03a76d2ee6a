"""A county doctor finds a patient from a picture of their e-health card's QR code, uploaded on the patient search
page: read by the browser's BarcodeDetector where there is one, else by the bundled decoder (Chromium on Linux)."""

from __future__ import annotations

import re

import cv2
import numpy as np
from playwright.async_api import Browser, expect

from portal_pages import DESKTOP, card_qr_png, log_in
from portal_world import PortalWorld

expect.set_options(timeout=20_000)


async def test_doctor_finds_the_patient_from_an_uploaded_card_qr_picture(browser: Browser, portal: str,
                                                                        portal_world: PortalWorld, check_page,
                                                                        tmp_path):
    world = portal_world
    blank = tmp_path / "no-code.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 255, dtype=np.uint8))
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("not an image")
    context = await browser.new_context(**DESKTOP, locale="zh-CN")
    page = await context.new_page()
    try:
        await log_in(page, portal, world.doctor.login, expect="/patients")
        # Pictures without a code are told in words, and leave the code field empty.
        for picture in (blank, not_a_picture):
            await page.set_input_files("#card-image", str(picture))
            await expect(page.locator("#card-result")).to_have_text(re.compile("图片中没有找到二维码"))
            await expect(page.locator("#card-code")).to_have_value("")

        # The QR the API serves for the card (it lives 60 s and is verified once), as a photo would bring it.
        picture = tmp_path / "card-qr.png"
        picture.write_bytes(await card_qr_png(portal, world))
        await page.set_input_files("#card-image", str(picture))
        code = page.locator("#card-code")
        await expect(code).to_have_value(re.compile(r"^[\w-]+\.[\w-]+\.[\w-]+$"))  # the card's compact JWS
        has_reader = await page.evaluate("'BarcodeDetector' in window")
        await expect(code).to_have_attribute("data-read-by", "BarcodeDetector" if has_reader else "jsQR")
        await page.click("#card-form button[type=submit]")
        await expect(page.locator("#card-result")).to_contain_text(world.patient_name)
        await expect(page.locator(f"a.patient-link[href='/patients/{world.patient_id}']")).to_be_visible()
        await check_page(page, "doctor-card-scan")
    finally:
        await context.close()
