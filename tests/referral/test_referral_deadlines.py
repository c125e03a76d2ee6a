"""Deadlines to accept: escalation to the next hospital on a short clock, failure after N, sweeps that escalate once."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from referral_world import (
    BASE,
    ReferralWorld,
    assert_problem,
    new_case,
    referral_body,
)

from logins import login
from ehr.service import RecordService
from ehr.store import RecordStore
from qilu.auth import Caller
from referral.directory import DirectoryCache, load_directory
from referral.models import ActionBody, ReferralBody, task
from referral.service import ReferralRules, ReferralService, now_utc
from referral.store import ReferralStore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = now_utc()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def service_on(app, clock: Clock, **rules: Any) -> ReferralService:
    """A referral service of its own over the session's database, on the test's clock."""
    db = app.state.db
    records = RecordService(RecordStore(db), BASE)
    return ReferralService(ReferralStore(db), records,
                           DirectoryCache(lambda: load_directory(RecordService(RecordStore(db), BASE))),
                           ReferralRules(**rules), clock=clock)


async def open_urgent(app, rw: ReferralWorld, service: ReferralService) -> dict[str, Any]:
    # Urgent (4 h): far from the 3 s the worker's stat clock runs on, so only the test's clock makes it late.
    case = await new_case(app.state.db, rw)
    doc, created = await service.create(Caller.of(rw.county_doctor),
                                        ReferralBody(**referral_body(rw, case, priority="urgent")), None)
    assert created and doc["target"] == rw.jinan
    return doc


def escalations_in(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for h in doc["history"] if h["action"] == "escalate"]


async def test_an_overdue_referral_goes_to_the_next_hospital_then_fails_after_n(app, rw):
    clock = Clock()
    service = service_on(app, clock, max_escalations=1)
    doc = await open_urgent(app, rw, service)
    assert doc["deadline"] == clock.now + timedelta(hours=4)

    clock.advance(hours=4, seconds=-1)
    await service.escalate_overdue()
    assert (await service.store.get(doc["_id"]))["version"] == 1  # not late yet

    clock.advance(seconds=2)
    await service.escalate_overdue()
    moved = await service.store.get(doc["_id"])
    assert moved["status"] == "requested" and moved["target"] == rw.qingdao and moved["escalations"] == 1
    assert moved["tried"] == [rw.jinan] and moved["deadline"] == clock.now + timedelta(hours=4)
    assert moved["share"] == {"org": rw.qingdao, "from": None, "until": None}
    told = moved["outbox"][-1]
    assert told["type"] == "escalated" and told["to"] == sorted([rw.county, rw.jinan, rw.qingdao])
    assert told["previousTarget"] == rw.jinan
    assert "deadline passed" in escalations_in(moved)[0]["why"]

    # The old target has lost it; the new one has it in its inbox.
    jinan, qingdao = await login(app, rw.jinan_specialist), await login(app, rw.qingdao_specialist)
    try:
        assert_problem(await jinan.post(f"/api/referrals/{doc['_id']}/receive"), 403)
        inbox = (await qingdao.get("/api/referrals", params={"box": "inbox", "limit": 200})).json()["entries"]
        assert doc["_id"] in [e["id"] for e in inbox]
        jinan_inbox = (await jinan.get("/api/referrals", params={"box": "inbox", "limit": 200})).json()["entries"]
        assert doc["_id"] not in [e["id"] for e in jinan_inbox]
    finally:
        await jinan.aclose()
        await qingdao.aclose()

    # N = 1 escalation spent: the next deadline fails the Task and alerts the origin.
    clock.advance(hours=4, seconds=1)
    await service.escalate_overdue()
    failed = await service.store.get(doc["_id"])
    assert failed["status"] == "failed" and failed["escalations"] == 1
    assert failed["tried"] == sorted([rw.jinan, rw.qingdao])
    alert = failed["outbox"][-1]
    assert alert["type"] == "failed" and rw.county in alert["to"]
    version = failed["version"]
    clock.advance(days=3)
    await service.escalate_overdue()
    assert (await service.store.get(doc["_id"]))["version"] == version  # a failed referral stays failed


async def test_with_no_hospital_left_it_fails_before_n(app, rw):
    clock = Clock()
    service = service_on(app, clock, max_escalations=5)
    doc = await open_urgent(app, rw, service)
    for _ in range(2):
        clock.advance(hours=4, minutes=1)
        await service.escalate_overdue()
    failed = await service.store.get(doc["_id"])
    assert failed["status"] == "failed" and failed["escalations"] == 1
    assert "no other hospital" in escalations_in(failed)[-1]["why"]
    assert task(failed)["status"] == "failed" and task(failed)["statusReason"]["text"]


async def test_duplicate_and_concurrent_sweeps_escalate_once(app, rw):
    clock = Clock()
    service, other_worker = service_on(app, clock), service_on(app, clock)
    doc = await open_urgent(app, rw, service)
    clock.advance(hours=4, minutes=1)
    await asyncio.gather(service.escalate_overdue(), service.escalate_overdue(), other_worker.escalate_overdue(),
                         other_worker.escalate_overdue())
    await service.escalate_overdue()  # and once more after them
    after = await service.store.get(doc["_id"])
    assert after["escalations"] == 1 and after["target"] == rw.qingdao and after["version"] == 2
    assert len(escalations_in(after)) == 1
    assert [e["type"] for e in after["outbox"]] == ["requested", "escalated"]


async def test_a_referral_accepted_in_time_is_not_escalated(app, rw):
    clock = Clock()
    service = service_on(app, clock)
    doc = await open_urgent(app, rw, service)
    specialist = Caller.of(rw.jinan_specialist)
    await service.act(specialist, doc["_id"], "receive", ActionBody())
    await service.act(specialist, doc["_id"], "accept", ActionBody())
    clock.advance(days=3)
    await service.escalate_overdue()
    kept = await service.store.get(doc["_id"])
    assert kept["status"] == "accepted" and kept["target"] == rw.jinan and not escalations_in(kept)


async def test_the_worker_escalates_a_late_stat_referral_and_tells_both_sides(app, rw, celery_worker):
    """Through the real worker and its beat: stat waits 3 s (tests/conftest.py), sweeps run every second."""
    county = await login(app, rw.county_doctor)
    try:
        case = await new_case(app.state.db, rw)
        response = await county.post("/api/referrals", json=referral_body(rw, case, priority="stat"))
        assert response.status_code == 201, response.text
        rid = response.json()["id"]
        assert response.json()["target"] == rw.jinan
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            doc = await app.state.db["referrals"].find_one({"_id": rid})
            if doc["status"] == "failed" and not doc["outbox_pending"]:
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"not failed and delivered in time: {doc['status']}, {doc['history']}")
        assert [(h["action"], h["to"]) for h in doc["history"]] == [
            ("create", "requested"), ("escalate", "requested"), ("escalate", "failed")]
        events = {e["type"]: e for e in doc["outbox"]}
        assert events["escalated"]["to"] == sorted([rw.county, rw.jinan, rw.qingdao])
        assert rw.county in events["failed"]["to"]
        assert all(e["sent"] for e in doc["outbox"])
        seen = (await county.get(f"/api/referrals/{rid}")).json()
        assert seen["status"] == "failed" and seen["task"]["status"] == "failed"
        assert seen["triedTargets"] == sorted([rw.jinan, rw.qingdao])
    finally:
        await county.aclose()
