"""The portals in a real browser: a county doctor refers a patient up, a specialist takes it from a live inbox and
starts a video consult the doctor is invited to live, the specialist sends the patient back with a discharge
summary, and the patient sees it all on a phone — every main page screenshotted and checked with axe-core."""

from __future__ import annotations

import asyncio
import re

import httpx

from playwright.async_api import Browser, Page, expect

from portal_pages import ARTIFACTS, DESKTOP, PHONE, card_qr_png, log_in
from portal_world import PortalWorld
from qilu.accounts import add_user
from sample_records import PASSWORD, new_national_id

SUMMARY = "经皮冠状动脉介入治疗顺利，植入支架一枚。出院后继续双抗治疗，县医院随访。"
OPINION = "建议尽快行冠脉造影，必要时 PCI；血压控制目标 130/80。"

expect.set_options(timeout=20_000)


async def remote_video_plays(page: Page) -> None:
    """The other participant's video is decoded (it has a size) and playing (its clock moves)."""
    await page.wait_for_function("""() => { const v = document.querySelector('video.remote');
        return v && v.videoWidth > 0 && v.currentTime > 0; }""", timeout=45_000)
    first = await page.evaluate("document.querySelector('video.remote').currentTime")
    await asyncio.sleep(1.5)
    later = await page.evaluate("document.querySelector('video.remote').currentTime")
    assert later > first, (first, later)


async def snapshot_failure(**pages: Page) -> None:
    """What each browser showed when the test failed, beside the other screenshots."""
    for name, page in pages.items():
        try:
            await page.screenshot(path=str(ARTIFACTS / f"failure-{name}.png"), full_page=True)
        except Exception:  # noqa: BLE001 - a closed page has nothing to show
            pass


async def add_opinion_as(portal: str, login: str, consult_id: str, text: str) -> None:
    """An opinion written through the API, as another client of the same person would."""
    async with httpx.AsyncClient(base_url=portal, timeout=30) as http:
        token = (await http.post("/api/auth/token", data={"username": login, "password": PASSWORD})).json()
        written = await http.post(f"/api/consults/{consult_id}/opinion", json={"text": text},
                                  headers={"Authorization": f"Bearer {token['access_token']}"})
        assert written.status_code == 201, written.text


async def test_referral_consult_and_discharge_journey(browser: Browser, portal: str, portal_world: PortalWorld,
                                                      check_page):
    world = portal_world
    doctor_context = await browser.new_context(**DESKTOP, locale="zh-CN")
    specialist_context = await browser.new_context(**DESKTOP, locale="zh-CN")
    doctor = await doctor_context.new_page()
    specialist = await specialist_context.new_page()
    try:
        # --- the county doctor finds the patient and reads the blood pressure chart ---------------------------
        await log_in(doctor, portal, world.doctor.login, expect="/patients")
        await check_page(doctor, "doctor-patient-search")
        await doctor.fill("#q-name", world.patient_name)
        await doctor.press("#q-name", "Enter")
        await doctor.click(f"a.patient-link[href='/patients/{world.patient_id}']")
        await expect(doctor.locator("#patient-name")).to_have_text(world.patient_name)
        bp = doctor.locator("#chart-bp svg.chart")
        await expect(bp).to_be_visible()
        # Systolic and diastolic: one point each per reading.
        await expect(doctor.locator("#chart-bp circle.point")).to_have_count(2 * world.blood_pressures)
        await expect(doctor.locator("#chart-glucose circle.point")).to_have_count(world.blood_pressures)
        await expect(doctor.locator("#chart-hba1c circle.point")).to_have_count(4)
        assert "mmHg" in (await doctor.locator("#chart-bp .chart-summary").inner_text())
        await expect(doctor.locator("#allergies")).to_contain_text("青霉素")
        await expect(doctor.locator("#timeline li")).to_have_count(world.blood_pressures)
        await check_page(doctor, "doctor-patient-chart")

        # --- the specialist waits on the inbox (this page is never reloaded) ---------------------------------
        await log_in(specialist, portal, world.specialist.login, expect="/patients")
        await specialist.goto(f"{portal}/referrals/inbox")
        await expect(specialist.locator("#live-status")).to_have_text(re.compile("实时"))
        await specialist.evaluate("window.__sameInboxPage = true")

        # --- the doctor refers the patient up, choosing from the ranked hospitals ----------------------------
        await doctor.click("#new-referral")
        await expect(doctor.locator(f"#reason option[value='{world.hypertension}']")).to_have_count(1)
        await doctor.select_option("#reason", world.hypertension)
        await expect(doctor.locator(f"#specialty option[value='{world.referral.specialty}']")).to_have_count(1)
        await doctor.select_option("#specialty", world.referral.specialty)
        await doctor.check("input[name=capability][value=pci]")
        await doctor.check("input[name=priority][value=urgent]")
        await doctor.click("#find")
        candidates = doctor.locator("#candidate-list > li")
        await expect(candidates).to_have_count(2)
        await expect(candidates.first).to_have_attribute("data-hospital", world.referral.jinan)
        await expect(candidates.first.locator(".reasons li")).to_have_count(4)  # alliance, nearness, capacity, speed
        reasons = candidates.first.locator(".reasons")
        await expect(reasons).to_contain_text("同一医联体")  # in the reader's words, from the reasons' codes
        await expect(reasons).to_contain_text("与转出医院同市（济南市）")
        await expect(reasons).not_to_contain_text("same city")
        excluded = doctor.locator("#candidates details")  # why the others are not offered, in the same words
        await expect(excluded).to_contain_text("即转出医院本身")
        await expect(excluded).not_to_contain_text("referring hospital")
        await expect(candidates.first.locator("input[type=radio]")).to_be_checked()
        await check_page(doctor, "doctor-referral-candidates")
        await doctor.click("#next2")
        await expect(doctor.locator("input[name=consent]")).to_be_checked()
        await expect(doctor.locator("input[name=supporting]:checked")).to_have_count(3)
        await doctor.fill("#note", "血压控制不佳，胸痛一周，请心内科会诊")
        await check_page(doctor, "doctor-referral-consent")
        await doctor.click("#submit-referral")
        await doctor.wait_for_url(re.compile(r"/referrals/[0-9a-f]{32}$"))
        referral_id = doctor.url.rsplit("/", 1)[1]
        await expect(doctor.locator("#referral-status")).to_have_attribute("data-status", "requested")
        await expect(doctor.locator("#deadline")).to_contain_text("剩余")

        # --- it appears in the specialist's inbox without a reload -------------------------------------------
        row = specialist.locator(f"tr[data-referral='{referral_id}']")
        await expect(row).to_be_visible()
        assert await specialist.evaluate("window.__sameInboxPage === true")
        await expect(specialist.locator("#news")).to_contain_text("收到新转诊")
        await expect(row).to_contain_text("原发性高血压")  # the reason as the doctor's record words it
        await check_page(specialist, "specialist-inbox")
        await row.locator("a.referral-link").click()
        await expect(specialist.locator("#patient")).to_contain_text("接受转诊后")
        await specialist.click("#accept-button")
        await expect(specialist.locator("#referral-status")).to_have_attribute("data-status", "accepted")
        await expect(specialist.locator("#routing-reasons")).to_contain_text("今日尚余")
        await expect(specialist.locator("#referral-specialty")).to_contain_text("心血管内科")  # not its code
        # Accepted: the records the patient consented to share are readable now.
        await expect(specialist.locator("#referral-patient")).to_have_text(world.patient_name)
        await expect(specialist.locator("#shared-list li")).to_have_count(3)
        await check_page(specialist, "specialist-referral")

        # --- the doctor's page hears of it live; the specialist starts a consult inviting the doctor ---------------
        await expect(doctor.locator("#referral-status")).to_have_attribute("data-status", "accepted")
        await check_page(doctor, "doctor-referral")
        await doctor.evaluate("window.__sameReferralPage = true")
        await specialist.click("#start-consult")
        await specialist.wait_for_url(re.compile(r"/consults/[0-9a-f]{32}$"))
        consult_id = specialist.url.rsplit("/", 1)[1]
        await specialist.click("#join-button")
        await expect(specialist.locator("#room")).to_be_visible()

        # The invitation reaches the doctor's open referral page through the live feed, without a reload.
        join = doctor.locator(f"#consult-list a#join-{consult_id}")
        await expect(join).to_be_visible()
        assert await doctor.evaluate("window.__sameReferralPage === true")
        await expect(join).to_have_text("加入会诊")
        await expect(doctor.locator("#history-list li[data-action='consult-start']")).to_have_count(1)
        # The specialist is in the room: the doctor's page hears that too, and says the consult is under way.
        await expect(doctor.locator("#history-list li[data-action='consult-live']")).to_have_count(1)
        await expect(doctor.locator(f"#consult-list li[data-consult='{consult_id}']")).to_have_attribute(
            "data-status", "live")
        await check_page(doctor, "doctor-referral-consult-invitation")
        await join.click()
        await doctor.click("#join-button")
        await expect(doctor.locator("#room")).to_be_visible()
        await expect(specialist.locator("#people li")).to_have_count(2)
        # The page never held the access token: the socket went up with the session cookie.
        token = next(c["value"] for c in await doctor_context.cookies() if c["name"] == "qilu_token")
        assert token not in await doctor.content()

        # --- both see the other's video playing -------------------------------------------------------------
        await asyncio.gather(remote_video_plays(doctor), remote_video_plays(specialist))
        for control in ("#mute", "#camera"):
            await doctor.click(control)
            await expect(doctor.locator(control)).to_have_attribute("aria-pressed", "true")
            await doctor.click(control)
            await expect(doctor.locator(control)).to_have_attribute("aria-pressed", "false")

        # --- chat both ways, and a shared record ---------------------------------------------------------------
        await doctor.fill("#chat-text", "您好，患者血压近一年持续升高")
        await doctor.press("#chat-text", "Enter")
        await expect(specialist.locator("#chat-log")).to_contain_text("患者血压近一年持续升高")
        await specialist.fill("#chat-text", "收到，我看一下共享的记录")
        await specialist.click("#chat-form button[type=submit]")
        await expect(doctor.locator("#chat-log")).to_contain_text("我看一下共享的记录")
        await expect(doctor.locator("#share-ref option").first).not_to_have_text("正在加载…")
        await doctor.click("#share-form button[type=submit]")
        await expect(specialist.locator("#chat-log li.share")).to_have_count(1)
        await check_page(doctor, "doctor-consult-room")
        await check_page(specialist, "specialist-consult-room")

        # --- the specialist, who holds the consult, writes the opinion, then discharges the patient -------------
        await expect(specialist.locator("#end")).to_be_visible()
        await specialist.fill("#opinion-text", OPINION)
        await specialist.click("#opinion-submit")
        await expect(specialist.locator("#opinion-result")).to_have_class(re.compile("ok"))
        await specialist.click("#leave")
        await doctor.click("#leave")
        await specialist.goto(f"{portal}/referrals/{referral_id}")
        await specialist.click("#schedule-button")
        await expect(specialist.locator("#arrive-button")).to_be_visible()
        await specialist.click("#arrive-button")
        await expect(specialist.locator("#referral-status")).to_have_attribute("data-status", "in-progress")
        await specialist.fill("#summary-text", SUMMARY)
        # Meanwhile the doctor adds an opinion from their side: the specialist's page hears of it live and
        # keeps what is being typed.
        await add_opinion_as(portal, world.doctor.login, consult_id, "县医院补充：患者已停用阿司匹林")
        await expect(specialist.locator("#history-list li[data-action='consult-opinion']")).to_have_count(2)
        await expect(specialist.locator("#summary-text")).to_have_value(SUMMARY)
        await specialist.click("#complete-button")
        await expect(specialist.locator("#referral-status")).to_have_attribute("data-status", "completed")

        # --- the doctor sees the outcome: the discharge summary and the consult opinion ------------------------
        await doctor.goto(f"{portal}/referrals/{referral_id}")
        await expect(doctor.locator("#referral-status")).to_have_attribute("data-status", "completed")
        await expect(doctor.locator("#outcome")).to_contain_text(SUMMARY)
        await expect(doctor.locator("#outcome")).to_contain_text(OPINION)
        # The system's own words are the reader's: no "consult opinion" heading, no English reasons in the history.
        await expect(doctor.locator("#outcome")).not_to_contain_text("consult opinion")
        history = doctor.locator("#history-list")
        await expect(history.locator("li[data-action='consult-opinion']").first).to_contain_text("意见已写入病历")
        await expect(history).not_to_contain_text("Composition/")
        await expect(history.locator("li[data-action='consult-end']")).not_to_contain_text("everyone left")
        await check_page(doctor, "doctor-referral-outcome")
        await doctor.goto(f"{portal}/referrals/outbox")
        await doctor.select_option("#filter", "")
        await expect(doctor.locator(f"tr[data-referral='{referral_id}']")).to_have_attribute("data-status",
                                                                                            "completed")
        await check_page(doctor, "doctor-outbox")
    except BaseException:
        await snapshot_failure(doctor=doctor, specialist=specialist)
        raise
    finally:
        await doctor_context.close()
        await specialist_context.close()

    # --- the patient, on a phone: the referral, the card's QR, and who looked at the records ---------------------
    await card_qr_png(portal, world)  # the patient has a card to show
    phone = await browser.new_context(**PHONE, locale="zh-CN")
    patient = await phone.new_page()
    try:
        await log_in(patient, portal, world.national_id, expect="/me")
        await expect(patient.locator("#chart-bp circle.point")).to_have_count(2 * world.blood_pressures)
        # In the reader's language, never a code: the follow-ups ("慢病随访 chronic disease follow-up" in the record),
        # the specialist hospital's stay (an encounter with only its class, IMP), the allergy's risk.
        timeline = patient.locator("#timeline")
        await expect(timeline).to_contain_text("慢病随访")
        await expect(timeline).to_contain_text("住院")
        for code in ("chronic disease", "IMP"):
            await expect(timeline).not_to_contain_text(code)
        await expect(patient.locator("#allergies")).to_contain_text("高风险")
        await check_page(patient, "patient-record")
        await patient.goto(f"{portal}/me/referrals")
        mine = patient.locator(f"li[data-referral='{referral_id}']")
        await expect(mine).to_contain_text("已完成")
        await expect(mine).to_contain_text(SUMMARY)
        # Where the hospital is and a number to tap on the phone.
        await expect(mine.locator(".contact")).to_contain_text("山东省济南市历下区")
        await expect(mine.locator(".contact a.phone")).to_have_attribute("href", "tel:053168780000")
        await expect(mine).not_to_contain_text("Discharge summary")  # the title in the reader's language only
        await check_page(patient, "patient-referrals")
        await patient.goto(f"{portal}/me/card")
        qr = patient.locator("#card-qr")
        await expect(qr).to_be_visible()
        assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")
        await expect(patient.locator("#qr-note")).to_contain_text("秒后自动刷新")
        await check_page(patient, "patient-card")
        # The code renews itself before it expires: on a page whose clock runs fast, a new one replaces it.
        fast = await phone.new_page()
        await fast.clock.install()
        await fast.goto(f"{portal}/me/card")
        first = await fast.locator("#card-qr").get_attribute("data-expires")
        shown = await fast.locator("#card-qr").get_attribute("src")
        await fast.clock.fast_forward("00:52")
        await expect(fast.locator("#card-qr")).not_to_have_attribute("src", shown)
        assert int(await fast.locator("#card-qr").get_attribute("data-expires")) >= int(first)
        await fast.close()
        await patient.goto(f"{portal}/me/access")
        log = patient.locator("#access-log")
        await expect(log.locator(".access-who", has_text=world.doctor.display_name).first).to_be_visible()
        await expect(log.locator(".access-who", has_text=world.specialist.display_name).first).to_be_visible()
        # In words, never a code; and one person's accesses in one sitting are one line, not dozens.
        for what in await log.locator(".access-what").all_inner_texts():
            assert what and not re.search(r"[a-z]+-[a-z]+", what), what
        recorded = await patient.evaluate("fetch('/api/me/access-log?count=100').then((r) => r.json())")
        assert 0 < await log.locator("li.access-entry").count() < min(recorded["total"], 100) / 2
        await check_page(patient, "patient-access-log")
    except BaseException:
        await snapshot_failure(patient=patient)
        raise
    finally:
        await phone.close()


async def test_administrator_pages_keyboard_and_language(browser: Browser, portal: str, portal_world: PortalWorld,
                                                         check_page, app):
    world = portal_world
    # A resident who got the password wrong five times and calls the help desk.
    resident_id = new_national_id()
    await add_user(app.state.db, "http://testserver/fhir", role="patient", login=resident_id, password=PASSWORD,
                   name="吴桂兰", organization=world.referral.county)
    async with httpx.AsyncClient(base_url=portal, timeout=30) as http:
        for _ in range(5):
            await http.post("/api/auth/token", data={"username": resident_id, "password": "my birthday?"})
        assert (await http.post("/api/auth/token", data={"username": resident_id, "password": PASSWORD})
                ).status_code == 429
    context = await browser.new_context(**DESKTOP, locale="zh-CN")
    page = await context.new_page()
    try:
        # A wrong password is said in words, then the login works with the keyboard alone.
        await log_in(page, portal, world.admin.login, "not the password")
        await expect(page.locator("#login-error")).to_have_text("登录名或密码不正确。")
        await check_page(page, "login")
        await page.fill("#password", "")
        await page.focus("#username")
        await page.keyboard.press("Control+a")
        await page.keyboard.type(world.admin.login)
        await page.keyboard.press("Tab")
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Enter")
        await page.wait_for_url("**/admin")
        await expect(page.locator("#flows svg.chart, #flows .state")).to_be_visible()
        await check_page(page, "admin-dashboard")

        # Directory: the Jinan hospital's department takes fewer referrals a day.
        await page.click("a[href='/admin/directory']")
        await page.fill("#find-name", "山东省立医院")
        await page.press("#find-name", "Enter")
        org_id = world.referral.jinan.removeprefix("Organization/")
        await page.click(f"li[data-org='{org_id}'] button")
        capacity = page.locator("#services-table input[type=number]").first
        await expect(capacity).to_have_value("20")
        await capacity.fill("12")
        await page.locator("#services-table button").first.click()
        await expect(page.locator("#directory-message")).to_have_text("已保存。")
        await check_page(page, "admin-directory")

        await page.click("a[href='/admin/users']")
        await expect(page.locator("#users-table")).to_be_visible()
        await page.fill("#users-org", f"山东省立医院 {world.referral.tag}")
        await page.press("#users-org", "Enter")
        await expect(page.locator("#users-table tbody tr")).to_have_count(1)
        await expect(page.locator("#users-table")).to_contain_text(world.specialist.display_name)
        # A new doctor's account at that hospital, made on the page, then disabled there.
        login = f"NEW{world.referral.tag}"
        await page.fill("#new-login", login)
        await page.fill("#new-name", "周新医")
        await page.fill("#new-password", "Qilu-2024-strong")
        await page.fill("#new-org-name", f"山东省立医院 {world.referral.tag}")
        await expect(page.locator("#new-org")).to_have_value(world.referral.jinan)
        await page.click("#new-user-submit")
        await expect(page.locator("#new-user-result")).to_contain_text("已创建账号：周新医")
        await expect(page.locator("#users-table tbody tr")).to_have_count(2)
        new_row = page.locator("#users-table tbody tr", has_text=login)
        await new_row.locator("button[data-action=disable]").click()
        await expect(new_row).to_have_attribute("data-active", "false")
        await expect(page.locator("#users-message")).to_have_text("已停用：周新医")
        # The help desk finds the resident by the ID number they show, sees it masked, and lifts the lock-out.
        await page.fill("#resident-id", resident_id)
        await page.press("#resident-id", "Enter")
        await expect(page.locator("#resident")).to_contain_text("吴**")
        await expect(page.locator("#resident")).not_to_contain_text("吴桂兰")
        await expect(page.locator("#resident-status")).to_contain_text("已锁定")
        await page.locator("#resident button[data-action=unlock]").click()
        await expect(page.locator("#users-message")).to_have_text("已解锁：吴**")
        await expect(page.locator("#resident-status")).to_have_text("正常")
        await expect(page.locator("#resident button[data-action=unlock]")).to_have_count(0)
        async with httpx.AsyncClient(base_url=portal, timeout=30) as http:
            assert (await http.post("/api/auth/token", data={"username": resident_id, "password": PASSWORD})
                    ).status_code == 200
        await check_page(page, "admin-users")

        # English at the switch, kept by cookie from page to page.
        await page.click("a[hreflang=en]")
        await expect(page.locator("h1")).to_have_text("Users")
        await page.click("a[href='/admin']")
        await expect(page.locator("h1")).to_have_text("Referral dashboard")
        await check_page(page, "admin-dashboard-en")
        # A page for another role says so in words.
        await page.goto(f"{portal}/patients")
        await expect(page.locator(".alert.error")).to_contain_text("doctor")
    finally:
        await context.close()
