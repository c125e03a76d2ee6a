"""The audit trail on the live app: a scripted day, the patient's access log, R4 validity, one event per search,
append-only AuditEvents, and no access without its trace."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from logins import login
from ehr.service import RecordService
from ehr.store import RecordStore
from qilu.accounts import add_user
from qilu.audit import AuditTrailWriter, audit_event
from sample_records import JSON_HEADERS, PASSWORD, chinese_given, new_national_id, observation, organization, \
    share_record, tag

PURPOSE_DISPLAY = {"TREAT": "治疗 Treatment", "ETREAT": "急诊治疗 Emergency treatment",
                   "HOPERAT": "医疗机构运营 Healthcare operations"}


@asynccontextmanager
async def logged_in(app, user):
    http = await login(app, user)  # already used, so it cannot be entered with `async with`
    try:
        yield http
    finally:
        await http.aclose()


@dataclass
class Day:
    patient: Any  # User
    patient_id: str
    observations: list[str]
    shared_doctor: Any  # User
    shared_org_name: str
    home_org_name: str
    elsewhere_org_name: str
    log: dict  # the access log at the end of the day
    log_with_own: dict


@pytest.fixture(scope="module")
async def day(app, world) -> Day:
    """A patient of the home hospital, shared with a tertiary hospital, and one day of accesses to them."""
    system = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    shared_org_name = f"山东省立医院 {tag()}"
    written, _ = await system.create("Organization", organization(name=shared_org_name))
    shared_org = f"Organization/{written.resource_id}"
    home_org_name = (await system.read("Organization", world.home.removeprefix("Organization/")))["resource"]["name"]
    elsewhere_org_name = (await system.read("Organization",
                                            world.elsewhere.removeprefix("Organization/")))["resource"]["name"]
    patient = await add_user(app.state.db, "http://testserver/fhir", role="patient", login=new_national_id(),
                             password=PASSWORD, name="赵" + chinese_given(2), organization=world.home)
    shared_doctor = await add_user(app.state.db, "http://testserver/fhir", role="practitioner",
                                   login=f"SPC{uuid.uuid4().hex[:8]}", password=PASSWORD, name="钱专家",
                                   organization=shared_org)
    patient_id = patient.fhir_user.removeprefix("Patient/")
    observations = []
    for code in ("8480-6", "8462-4"):
        done, _ = await system.create("Observation", observation(patient_id, code=code))
        observations.append(done.resource_id)

    await share_record(system, patient_id, shared_org)
    async with (logged_in(app, world.doctor) as doctor, logged_in(app, shared_doctor) as specialist,
                logged_in(app, world.doctor_elsewhere) as stranger, logged_in(app, patient) as own):
        # 08:00 the county doctor opens the record (no purpose given: treatment).
        assert (await doctor.get(f"/fhir/Patient/{patient_id}")).status_code == 200
        # 08:05 and looks through the observations, in an emergency.
        found = await doctor.get("/fhir/Observation", params={"patient": patient_id},
                                 headers={"X-Purpose-Of-Use": "ETREAT"})
        assert found.status_code == 200 and found.json()["total"] == 2
        # 10:00 the specialist of the hospital the patient is shared with reads the record.
        assert (await specialist.get(f"/fhir/Patient/{patient_id}",
                                     headers={"X-Purpose-Of-Use": "treat"})).status_code == 200
        # 12:00 the patient reads their own record.
        assert (await own.get(f"/fhir/Patient/{patient_id}")).status_code == 200
        # 15:00 a doctor of another hospital tries, and is refused.
        assert (await stranger.get(f"/fhir/Patient/{patient_id}",
                                   headers={"X-Purpose-Of-Use": "HOPERAT"})).status_code == 404
        log = await own.get("/api/me/access-log")
        assert log.status_code == 200, log.text
        log_with_own = await own.get("/api/me/access-log", params={"include_own": "true"})
        assert log_with_own.status_code == 200, log_with_own.text
    return Day(patient, patient_id, observations, shared_doctor, shared_org_name, home_org_name,
               elsewhere_org_name, log.json(), log_with_own.json())


def _brief(entry: dict) -> tuple:
    return entry["whoReference"], entry["organization"], entry["action"], entry["purpose"], entry["outcome"]


async def test_the_access_log_lists_exactly_the_accesses_by_others_newest_first(day, world):
    expected = [
        (world.doctor_elsewhere.fhir_user, day.elsewhere_org_name, "read", PURPOSE_DISPLAY["HOPERAT"], "refused"),
        (day.shared_doctor.fhir_user, day.shared_org_name, "read", PURPOSE_DISPLAY["TREAT"], "success"),
        (world.doctor.fhir_user, day.home_org_name, "search-type", PURPOSE_DISPLAY["ETREAT"], "success"),
        (world.doctor.fhir_user, day.home_org_name, "read", PURPOSE_DISPLAY["TREAT"], "success"),
    ]
    entries = day.log["entries"]
    assert day.log["total"] == 4, entries
    assert [_brief(e) for e in entries] == expected
    assert entries[0]["organizationReference"] == world.elsewhere
    assert entries[1]["who"] == "钱专家" and entries[3]["who"] == "张医生"
    assert [e["when"] for e in entries] == sorted((e["when"] for e in entries), reverse=True)


async def test_include_own_adds_the_patients_own_reads(day):
    entries = day.log_with_own["entries"]
    assert day.log_with_own["total"] == 5
    own = [e for e in entries if e["whoReference"] == day.patient.fhir_user]
    assert len(own) == 1 and own[0]["action"] == "read" and own[0]["purpose"] == "患者本人请求 Patient request"
    assert entries.index(own[0]) == 1  # between the refused attempt (15:00) and the specialist (10:00)
    assert [e for e in entries if e is not own[0]] == day.log["entries"]


async def test_the_access_log_pages(app, day):
    async with logged_in(app, day.patient) as own:
        pages = []
        for offset in (0, 2, 4):
            response = await own.get("/api/me/access-log", params={"count": 2, "offset": offset})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["total"] == 4 and body["count"] == 2 and body["offset"] == offset
            pages.append(body["entries"])
    assert [len(p) for p in pages] == [2, 2, 0]
    assert pages[0] + pages[1] == day.log["entries"]


async def test_the_access_log_is_the_patients_alone(app, world, doctor_client, admin_client, client):
    for http in (doctor_client, admin_client):
        response = await http.get("/api/me/access-log")
        assert response.status_code == 403 and response.headers["content-type"] == "application/problem+json"
    anonymous = await client.get("/api/me/access-log")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")


async def test_a_search_writes_one_audit_event_naming_every_patient_it_returned(app, world, doctor_client):
    system = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    family = tag()
    people = []
    for _ in range(3):
        user = await add_user(app.state.db, "http://testserver/fhir", role="patient", login=new_national_id(),
                              password=PASSWORD, name="孔" + chinese_given(2), organization=world.home)
        patient_id = user.fhir_user.removeprefix("Patient/")
        current = (await system.read("Patient", patient_id))["resource"]
        await system.update("Patient", patient_id, {**current, "name": [{"family": family, "given": ["明"]}]})
        people.append(user)
    events = app.state.db["AuditEvent"]
    before = await events.count_documents({})
    response = await doctor_client.get("/fhir/Patient", params={"family": family})
    assert response.status_code == 200 and response.json()["total"] == 3
    assert await events.count_documents({}) == before + 1
    [event] = await events.find({}).sort([("updated", -1)]).limit(1).to_list(1)
    named = {e["what"]["reference"] for e in event["resource"]["entity"] if "what" in e}
    assert named == {u.fhir_user for u in people}
    assert event["resource"]["subtype"][0]["code"] == "search-type"
    # Each of them sees the search in their access log, and nothing about the two others.
    for user in people:
        async with logged_in(app, user) as own:
            entries = (await own.get("/api/me/access-log")).json()["entries"]
        searches = [e for e in entries if e["action"] == "search-type"]
        assert len(searches) == 1, entries
        others = {u.fhir_user for u in people} - {user.fhir_user}
        text = str(entries)
        assert not any(other in text or other.removeprefix("Patient/") in text for other in others), entries


async def test_every_stored_audit_event_is_valid_r4(app, day, world, doctor_client):
    # A few more kinds of access first, so that every shape of event is among those checked.
    patient_id = day.patient_id
    created = await doctor_client.post("/fhir/Observation", json=observation(patient_id), headers=JSON_HEADERS)
    assert created.status_code == 201
    body = {**created.json(), "status": "amended"}
    assert (await doctor_client.put(f"/fhir/Observation/{body['id']}", json=body,
                                    headers=JSON_HEADERS)).status_code == 200
    assert (await doctor_client.get(f"/fhir/Patient/{patient_id}/$everything")).status_code == 200
    assert (await doctor_client.get(f"/fhir/Observation/{body['id']}/_history")).status_code == 200
    assert (await doctor_client.delete(f"/fhir/Observation/{body['id']}")).status_code == 204
    assert (await doctor_client.get("/fhir/Observation/_history", params={"_count": 1})).status_code == 200
    stored = await app.state.db["AuditEvent"].find({}).to_list(None)
    assert len(stored) >= 10
    subtypes = set()
    for document in stored:
        event = document["resource"]
        AuditEvent.model_validate(event)  # raises on anything R4 does not allow
        assert document["_id"] == event["id"] and document["vid"] == 1 and not document["deleted"]
        subtypes.add(event["subtype"][0]["code"])
    assert {"read", "search-type", "create", "update", "delete", "everything", "history-instance",
            "history-type"} <= subtypes, subtypes


@pytest.mark.parametrize("role", ["admin", "doctor", "patient"])
async def test_no_route_changes_or_removes_an_audit_event(app, day, world, role):
    user = {"admin": world.admin, "doctor": world.doctor, "patient": day.patient}[role]
    [document] = await app.state.db["AuditEvent"].find(
        {"compartment": f"Patient/{day.patient_id}"}).sort([("updated", 1)]).limit(1).to_list(1)
    event_id = document["_id"]
    changed = {**document["resource"], "outcome": "8", "outcomeDesc": "rewritten"}
    async with logged_in(app, user) as http:
        attempts = {
            "PUT": await http.put(f"/fhir/AuditEvent/{event_id}", json=changed, headers=JSON_HEADERS),
            "DELETE": await http.delete(f"/fhir/AuditEvent/{event_id}"),
            "POST": await http.post("/fhir/AuditEvent", json={**changed, "id": None}, headers=JSON_HEADERS),
            "PATCH": await http.patch(f"/fhir/AuditEvent/{event_id}", json=[], headers=JSON_HEADERS),
        }
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": f"AuditEvent/{event_id}"}}]}
        in_bundle = await http.post("/fhir", json=bundle, headers=JSON_HEADERS)
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "PUT", "url": f"AuditEvent/{event_id}"}, "resource": changed},
            {"request": {"method": "DELETE", "url": f"AuditEvent/{event_id}"}}]}
        in_batch = await http.post("/fhir", json=batch, headers=JSON_HEADERS)
    for method, response in attempts.items():
        assert response.status_code in (403, 405), (method, response.status_code, response.text)
    assert in_bundle.status_code in (400, 403, 405), in_bundle.text
    assert in_batch.status_code == 200, in_batch.text
    assert all(e["response"]["status"].split()[0] in ("403", "405") for e in in_batch.json()["entry"]), in_batch.text
    assert await app.state.db["AuditEvent"].find_one({"_id": event_id}) == document


async def test_a_failed_audit_write_fails_the_request(app, world, day):
    """No access without its trace: when the AuditEvent cannot be stored, the record is not handed out.

    The failure is the engine's own: for the length of the test the trail is set aside and replaced by a
    collection with a unique index that every new AuditEvent breaks (all of them are version 1).
    """
    db = app.state.db
    async with logged_in(app, world.doctor) as doctor:
        token = doctor.headers["Authorization"]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 headers={"Authorization": token}) as http:
        held = f"AuditEvent_held_{uuid.uuid4().hex[:8]}"
        await db["AuditEvent"].rename(held)
        try:
            await db["AuditEvent"].create_index("vid", name="every_event_collides", unique=True)
            await db["AuditEvent"].insert_one({"_id": "blocker", "vid": 1})
            refused = await http.get(f"/fhir/Patient/{day.patient_id}")
            searched = await http.get("/fhir/Observation", params={"patient": day.patient_id})
        finally:
            await db.drop_collection("AuditEvent")
            await db[held].rename("AuditEvent")
        for response in (refused, searched):
            assert response.status_code == 500, response.text
            assert response.json()["resourceType"] == "OperationOutcome"
            assert day.patient.display_name not in response.text and day.patient.login not in response.text
            assert not any(obs in response.text for obs in day.observations)
        # With the trail back, the same read works and is traced.
        before = await db["AuditEvent"].count_documents({})
        assert (await http.get(f"/fhir/Patient/{day.patient_id}")).status_code == 200
        assert await db["AuditEvent"].count_documents({}) == before + 1


async def test_events_arriving_during_a_write_are_stored_together_and_each_caller_learns_its_own_fate(app):
    """The group commit: 30 events at once cost far fewer inserts than 30, every one is stored, and an event
    the engine refuses (an id already on the trail) fails its own caller only."""
    records = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    inserts: list[int] = []

    async def counted(events):
        inserts.append(len(events))
        return await records.append_audit_events(events)

    writer = AuditTrailWriter(counted)
    stamp = uuid.uuid4().hex[:8]
    events = [audit_event(caller=None, interaction="read", outcome="0", purpose="TREAT", source_address=None,
                          entities=[f"Patient/{stamp}-{i}"], patients=[]) for i in range(30)]
    await writer(events[0])  # already on the trail when the batch below repeats its id
    repeated = {**events[1], "id": events[0]["id"]}
    results = await asyncio.gather(*(writer(event) for event in [*events[2:], repeated]), return_exceptions=True)

    assert isinstance(results[-1], Exception)
    assert all(result is None for result in results[:-1])
    assert sum(inserts) == 30 and len(inserts) < 10
    stored = await app.state.db["AuditEvent"].count_documents({"_id": {"$in": [e["id"] for e in events]}})
    assert stored == 29  # events[1] itself was never offered; its repeat was refused
