"""Consult rooms over HTTP: holding one (about a referral, or stand-alone), who sees and ends it, the opinion."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from consult_world import ConsultPeople, hold_consult, sign_in
from ehr.service import RecordService
from ehr.store import RecordStore
from sample_records import PASSWORD

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "referral"))
from referral_world import ReferralWorld, build_referral_world, new_case, referral_body  # noqa: E402

NOW = datetime.now(UTC).isoformat()


@pytest.fixture(scope="module")
async def rw(app) -> ReferralWorld:
    world = await build_referral_world(app.state.db)
    app.state.referrals.directory.invalidate()  # the app caches the directory; these hospitals are new
    return world


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

        _problem(await county.http.post(f"/api/consults/{consult['id']}/opinion", json=opinion), 403)
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
