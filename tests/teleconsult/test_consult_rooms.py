"""Consult rooms over HTTP: holding one (about a referral, or stand-alone), who sees, lists and ends it, the opinion,
and the referral's live feed hearing of it."""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from consult_world import ConsultPeople, hold_consult, sign_in
from ehr.service import RecordService
from ehr.store import RecordStore
from referral.store import ReferralFeed
from sample_records import PASSWORD

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "referral"))
from referral_world import ReferralWorld, new_case, read_feed_until, referral_body, referral_world_for  # noqa: E402

NOW = datetime.now(UTC).isoformat()


@pytest.fixture(scope="module")
async def rw(app) -> ReferralWorld:
    return await referral_world_for(app)


async def _in_process(app, user) -> httpx.AsyncClient:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    response = await http.post("/api/auth/token", data={"username": user.login, "password": PASSWORD})
    assert response.status_code == 200, response.text
    http.headers["Authorization"] = "Bearer " + response.json()["access_token"]
    return http


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    return response.json()


async def test_a_consult_about_a_referral_gets_the_specialists_opinion(app, rw: ReferralWorld, consult_server):
    case = await new_case(app.state.db, rw)
    county_in_process = await _in_process(app, rw.county_doctor)
    created = await county_in_process.post("/api/referrals", json=referral_body(rw, case, target=rw.jinan))
    assert created.status_code == 201, created.text
    referral = created.json()
    county = await sign_in(consult_server, rw.county_doctor)
    specialist = await sign_in(consult_server, rw.jinan_specialist)
    stranger = await sign_in(consult_server, rw.qingdao_specialist)
    try:
        response = await county.http.post("/api/consults", json={
            "referral": referral["id"], "invite": [specialist.role], "scheduled": NOW, "reason": "PCI or not?"})
        assert response.status_code == 201, response.text
        consult = response.json()
        assert response.headers["location"] == f"/api/consults/{consult['id']}"
        assert consult["status"] == "scheduled" and consult["patient"] == case.patient
        assert consult["referral"] == referral["id"] and consult["invited"] == [specialist.role]
        encounter = (await county.http.get(f"/fhir/{consult['encounter']}")).json()
        assert encounter["status"] == "planned" and encounter["class"]["code"] == "VR"
        assert encounter["basedOn"] == [{"reference": f"ServiceRequest/{referral['id']}"}]
        assert {p["individual"]["reference"] for p in encounter["participant"]} == {county.role, specialist.role}

        assert (await specialist.http.get(f"/api/consults/{consult['id']}")).status_code == 200
        _problem(await stranger.http.get(f"/api/consults/{consult['id']}"), 404)

        opinion = {"text": "LAD stenosis 90 %.\nPCI advised within 24 h.", "title": "心内科会诊意见"}
        _problem(await specialist.http.post(f"/api/consults/{consult['id']}/opinion", json=opinion), 409)
        _problem(await specialist.http.post(f"/api/consults/{consult['id']}/end"), 403)
        ended = await county.http.post(f"/api/consults/{consult['id']}/end")
        assert ended.status_code == 200 and ended.json()["endReason"] == "ended by the host"
        _problem(await county.http.post(f"/api/consults/{consult['id']}/end"), 409)
        assert (await county.http.get(f"/fhir/{consult['encounter']}")).json()["status"] == "finished"

        _problem(await stranger.http.post(f"/api/consults/{consult['id']}/opinion", json=opinion), 404)
        written = await specialist.http.post(f"/api/consults/{consult['id']}/opinion", json=opinion)
        assert written.status_code == 201, written.text
        composition_ref = written.json()["composition"]
        records = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
        composition = (await records.read(*composition_ref.split("/")))["resource"]
        assert composition["section"][0]["title"] == "consult opinion"
        assert "PCI advised" in composition["section"][0]["text"]["div"]
        assert composition["encounter"]["reference"] == consult["encounter"]
        assert composition["subject"]["reference"] == case.patient
        assert composition["author"] == [{"reference": specialist.role}]

        history = (await county_in_process.get(f"/api/referrals/{referral['id']}")).json()["history"]
        assert history[-1]["action"] == "consult-opinion" and history[-1]["opinion"] == composition_ref
        assert history[-1]["by"] == specialist.role and history[-1]["to"] == history[-1]["from"] == "requested"
    finally:
        for client in (county_in_process, county.http, specialist.http, stranger.http):
            await client.aclose()


async def test_holding_seeing_and_ending_are_refused_to_the_wrong_people(people: ConsultPeople, world):
    consults = "/api/consults"
    base = {"patient": people.patient.role, "invite": [people.specialist.role], "scheduled": NOW}
    _problem(await people.patient.http.post(consults, json=base), 403)
    _problem(await people.admin.http.post(consults, json=base), 403)
    _problem(await people.host.http.post(consults, json={**base, "patient": None, "referral": "nope"}), 404)
    _problem(await people.host.http.post(consults, json={**base, "patient": world.patient_elsewhere.fhir_user}), 404)
    unknown = _problem(await people.host.http.post(consults, json={**base, "invite": ["PractitionerRole/none"]}), 422)
    assert "invite[0]" in unknown["detail"]
    _problem(await people.host.http.post(consults, json={**base, "invite": [people.host.role]}), 422)
    for bad in ({**base, "invite": []}, {**base, "scheduled": "2024-05-03T09:00:00"}, {**base, "extra": 1},
                {**base, "invite": ["Practitioner/x"]}, {**base, "patient": None}):
        response = await people.host.http.post(consults, json=bad)
        assert response.status_code == 422, (bad, response.text)

    consult = await hold_consult(people)
    url = f"{consults}/{consult['id']}"
    assert consult["recording"]["status"] == "none" and consult["invitePatient"] is False
    for person, status in ((people.host, 200), (people.specialist, 200), (people.patient, 200),
                           (people.outsider, 404), (people.second_specialist, 404), (people.admin, 404)):
        assert (await person.http.get(url)).status_code == status, person.user.login
    _problem(await people.specialist.http.get(f"{url}/diagnostics"), 404)
    assert (await people.admin.http.get(f"{url}/diagnostics")).status_code == 200
    _problem(await people.host.http.get(f"{url}/recording"), 404)
    _problem(await people.patient.http.post(f"{url}/end"), 403)
    _problem(await people.outsider.http.post(f"{url}/end"), 404)
    assert (await people.host.http.post(f"{url}/end")).json()["status"] == "ended"


@asynccontextmanager
async def referral_feed(app):
    """Listen on the live feed from now; yields `next_event(referral, kind)`, which delivers the outbox (or finds a
    worker did) and returns that event."""
    feed = ReferralFeed(app.state.redis)
    start = await feed.position()

    async def next_event(referral_id: str, kind: str, *, timeout: float = 15) -> dict:
        await app.state.referrals.deliver_outbox(feed.append, None)

        def this_one(events: list[dict]) -> list[dict]:
            return [e for e in events if e["referral"] == referral_id and e["type"] == kind]

        return this_one(await read_feed_until(feed, start, lambda events: bool(this_one(events)), timeout))[0]

    yield next_event


async def test_the_specialist_holds_a_consult_inviting_the_referring_doctor(app, rw: ReferralWorld):
    """Either side may hold the consult: the specialist invites the doctor who referred; both sides hear of it on
    the live feed, the referral's history says so, and host and invited (never the patient) write the opinion."""
    case = await new_case(app.state.db, rw, patient=rw.patient.fhir_user)
    county = await _in_process(app, rw.county_doctor)
    specialist = await _in_process(app, rw.jinan_specialist)
    patient = await _in_process(app, rw.patient)
    try:
        referral = (await county.post("/api/referrals", json=referral_body(rw, case, target=rw.jinan))).json()
        for action in ("receive", "accept"):
            assert (await specialist.post(f"/api/referrals/{referral['id']}/{action}", json={})).status_code == 200
        async with referral_feed(app) as next_event:
            response = await specialist.post("/api/consults", json={
                "referral": referral["id"], "invite": [referral["requester"]], "scheduled": NOW})
            assert response.status_code == 201, response.text
            consult = response.json()
            assert consult["host"] == rw.jinan_specialist.fhir_user
            assert consult["invited"] == [rw.county_doctor.fhir_user]
            event = await next_event(referral["id"], "consult-started")
        assert set(event["to"]) == {rw.county, rw.jinan} and event["patient"] == case.patient
        history = (await county.get(f"/api/referrals/{referral['id']}")).json()["history"]
        assert history[-1]["action"] == "consult-start" and history[-1]["consult"] == consult["id"]
        assert history[-1]["by"] == rw.jinan_specialist.fhir_user and history[-1]["to"] == "accepted"

        opinion = {"text": "Coronary angiography within 24 h."}
        _problem(await specialist.post(f"/api/consults/{consult['id']}/opinion", json=opinion), 409)  # not held yet
        _problem(await county.post(f"/api/consults/{consult['id']}/end"), 403)  # only the host ends it
        async with referral_feed(app) as next_event:
            assert (await specialist.post(f"/api/consults/{consult['id']}/end")).status_code == 200
            ended = await next_event(referral["id"], "consult-ended")
        assert set(ended["to"]) == {rw.county, rw.jinan}
        history = (await county.get(f"/api/referrals/{referral['id']}")).json()["history"]
        assert history[-1]["action"] == "consult-end" and history[-1]["consult"] == consult["id"]
        _problem(await patient.post(f"/api/consults/{consult['id']}/opinion", json=opinion), 403)
        records = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
        for writer, author in ((specialist, rw.jinan_specialist), (county, rw.county_doctor)):
            written = await writer.post(f"/api/consults/{consult['id']}/opinion", json=opinion)
            assert written.status_code == 201, written.text
            composition = (await records.read(*written.json()["composition"].split("/")))["resource"]
            assert composition["author"] == [{"reference": author.fhir_user}]
        history = (await county.get(f"/api/referrals/{referral['id']}")).json()["history"]
        assert [h["by"] for h in history if h["action"] == "consult-opinion"] == [
            rw.jinan_specialist.fhir_user, rw.county_doctor.fhir_user]
    finally:
        for client in (county, specialist, patient):
            await client.aclose()


async def test_listing_consults_shows_each_caller_only_the_consults_they_are_in(app, rw: ReferralWorld, world):
    case = await new_case(app.state.db, rw, patient=rw.patient.fhir_user)
    county = await _in_process(app, rw.county_doctor)
    specialist = await _in_process(app, rw.jinan_specialist)
    stranger = await _in_process(app, rw.qingdao_specialist)
    patient = await _in_process(app, rw.patient)
    admin = await _in_process(app, world.admin)
    try:
        referral = (await county.post("/api/referrals", json=referral_body(rw, case, target=rw.jinan))).json()
        held = []
        for _ in range(2):
            created = await county.post("/api/consults", json={"referral": referral["id"],
                                                               "invite": [rw.jinan_specialist.fhir_user],
                                                               "scheduled": NOW})
            assert created.status_code == 201, created.text
            held.append(created.json()["id"])
        url = f"/api/consults?referral={referral['id']}"
        for person in (county, specialist, patient):
            listed = await person.get(url)
            assert listed.status_code == 200, listed.text
            assert listed.json()["total"] == 2
            assert [c["id"] for c in listed.json()["entries"]] == held[::-1]  # newest first
        # A practitioner of the referral's hospitals who is not in the consult sees none of it.
        assert (await stranger.get(url)).json() == {"total": 0, "offset": 0, "entries": []}
        _problem(await admin.get(url), 403)

        first_page = (await county.get(f"{url}&limit=1")).json()
        second_page = (await county.get(f"{url}&limit=1&offset=1")).json()
        assert first_page["total"] == second_page["total"] == 2
        assert [first_page["entries"][0]["id"], second_page["entries"][0]["id"]] == held[::-1]
        assert (await county.post(f"/api/consults/{held[0]}/end")).status_code == 200
        assert [c["id"] for c in (await specialist.get(f"{url}&status=open")).json()["entries"]] == [held[1]]
        assert [c["id"] for c in (await specialist.get(f"{url}&status=ended")).json()["entries"]] == [held[0]]
        # Without a referral: every consult the caller is in, this one among them.
        mine = (await specialist.get("/api/consults?limit=200")).json()
        assert set(held) <= {c["id"] for c in mine["entries"]}
        assert all(rw.jinan_specialist.fhir_user in (c["host"], *c["invited"]) for c in mine["entries"])

        for bad in ("?referral=not%20an%20id", "?status=maybe", "?limit=0", "?limit=201", "?offset=-1",
                    f"?referral={'x' * 65}"):
            problem = _problem(await county.get(f"/api/consults{bad}"), 422)
            assert problem["detail"], problem
    finally:
        for client in (county, specialist, stranger, patient, admin):
            await client.aclose()
