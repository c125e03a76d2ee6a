"""Every route about one patient, asked by each relation to that patient, answered as the policy's RULES say.

The patient is managed by the county hospital and referred up to Jinan, which accepted (the patient's Consent is
active), so Jinan's specialist is a shared hospital; Qingdao's is unrelated. Then the Consent is revoked and Jinan
is asked again: it must be answered as unrelated. Expected answers come from `ehr.access.RULES`, never from this
file: allow is anything but 401, 403, 404 and 5xx; hide is 404; refuse is a 403 naming the rule. Whoever may not
read the record must see none of it: its Observation's secret text and the patient's ID number are the canaries.

Every row of `ehr.access.ROUTES` with a "patient:" or "type" gate needs a request here, so a new route about a
patient fails this file until it is tried by every relation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ehr.access import (ADMIN, MANAGING, OTHER_PATIENT, ROLE_RULES, ROUTES, RULES, SELF, SHARED, UNRELATED, Decision,
                        type_action)
from ehr.service import RecordService
from ehr.store import RecordStore
from logins import login
from qilu.accounts import add_user
from referral_world import BASE, ReferralWorld, new_case, referral_body
from sample_records import PASSWORD, new_national_id, observation


@dataclass
class Patient:
    """The patient asked about and what of theirs the requests name."""

    id: str
    national_id: str
    observation: str  # an Observation id of theirs
    secret: str  # text in that Observation
    card: str
    organization: str  # their managing hospital
    referral: dict[str, Any]  # a referral up of theirs, to a hospital that has not seen them
    invite: str  # a PractitionerRole to invite to a consult about them


# (method, route path) -> (RULES row, how to ask it). A request names the patient or their records; writes are
# built so that an allowed one changes nothing lasting (a transfer to the hospital they are already with, a card
# reactivated that is active).
def _requests(p: Patient) -> dict[tuple[str, str], tuple[str, list[dict[str, Any]]]]:
    obs = f"/fhir/Observation/{p.observation}"
    return {
        ("GET", "/fhir/{resource_type}/{resource_id}"): ("read", [
            {"method": "GET", "url": f"/fhir/Patient/{p.id}"}, {"method": "GET", "url": obs}]),
        ("GET", "/fhir/{resource_type}/{resource_id}/_history"): ("read", [
            {"method": "GET", "url": f"{obs}/_history"}]),
        ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version_id}"): ("read", [
            {"method": "GET", "url": f"{obs}/_history/1"}]),
        ("GET", "/fhir/Patient/{patient_id}/$everything"): ("read", [
            {"method": "GET", "url": f"/fhir/Patient/{p.id}/$everything"}]),
        ("GET", "/fhir/{resource_type}"): ("search", [
            {"method": "GET", "url": f"/fhir/Observation?subject=Patient/{p.id}"}]),
        ("POST", "/fhir/{resource_type}/_search"): ("search", [
            {"method": "POST", "url": "/fhir/Observation/_search", "data": {"subject": f"Patient/{p.id}"}}]),
        ("GET", "/fhir/{resource_type}/_history"): ("search", [
            {"method": "GET", "url": "/fhir/Observation/_history?_count=100"}]),
        ("POST", "/fhir/{resource_type}"): ("create", [
            {"method": "POST", "url": "/fhir/Observation", "json": observation(p.id)}]),
        ("PUT", "/fhir/{resource_type}/{resource_id}"): ("write", [
            {"method": "PUT", "url": obs, "json": {**observation(p.id), "id": p.observation,
                                                   "code": {"text": p.secret}}}]),
        ("DELETE", "/fhir/{resource_type}/{resource_id}"): ("write", [
            {"method": "DELETE", "url": "fresh"}]),  # a fresh Observation of the patient, made per caller
        ("POST", "/fhir"): ("write", [{"method": "POST", "url": "/fhir", "json": {
            "resourceType": "Bundle", "type": "transaction", "entry": [{
                "resource": {**observation(p.id), "id": p.observation, "code": {"text": p.secret}},
                "request": {"method": "PUT", "url": f"Observation/{p.observation}"}}]}}]),
        ("POST", "/fhir/Patient/{patient_id}/$transfer"): ("transfer", [
            {"method": "POST", "url": f"/fhir/Patient/{p.id}/$transfer", "json": {
                "resourceType": "Parameters",
                "parameter": [{"name": "organization", "valueReference": {"reference": p.organization}}]}}]),
        ("GET", "/fhir/Patient/$export"): ("search", [
            {"method": "GET", "url": "/fhir/Patient/$export?_type=Observation",
             "headers": {"Prefer": "respond-async", "Accept": "application/fhir+json"}}]),
        ("POST", "/api/cards"): ("card-issue", [
            {"method": "POST", "url": "/api/cards", "json": {"patient": f"Patient/{p.id}",
                                                             "national_id": p.national_id, "name": "刘芳"}}]),
        ("GET", "/api/cards/{card_id}"): ("card", [{"method": "GET", "url": f"/api/cards/{p.card}"}]),
        ("GET", "/api/cards/{card_id}/qr"): ("card-qr", [{"method": "GET", "url": f"/api/cards/{p.card}/qr"}]),
        ("POST", "/api/cards/{card_id}/{action}"): ("card", [
            {"method": "POST", "url": f"/api/cards/{p.card}/reactivate"}]),
        ("POST", "/api/referrals"): ("refer-up", [{"method": "POST", "url": "/api/referrals", "json": p.referral}]),
        ("POST", "/api/consults"): ("consult", [{"method": "POST", "url": "/api/consults", "json": {
            "patient": f"Patient/{p.id}", "invite": [p.invite], "scheduled": "2031-05-04T09:00:00+08:00"}}]),
    }


# Searches are not refused per patient but filtered: what the caller may not read is simply not in the Bundle.
SEARCH_ROW = "read"


ROLE_OF = {SELF: "patient", OTHER_PATIENT: "patient", MANAGING: "practitioner", SHARED: "practitioner",
           UNRELATED: "practitioner", ADMIN: "admin"}


def _outcome(key: tuple[str, str], action: str, relation: str) -> Decision:
    """The route's gates in order, as ROUTES names them: the first that does not allow decides."""
    row = SEARCH_ROW if action == "search" else action
    for gate in ROUTES[key]:
        kind, _, name = gate.partition(":")
        if kind == "type":  # Patient and Observation are clinical types alike
            decision = ROLE_RULES[type_action("Observation", writing=row in ("create", "write"))][ROLE_OF[relation]]
            decision = decision if not decision.allowed else RULES[row][relation]
        elif kind == "role":
            decision = ROLE_RULES[name][ROLE_OF[relation]]
        elif kind == "patient" and name == row:
            decision = RULES[row][relation]
        else:
            continue
        if not decision.allowed:
            return decision
    return RULES[row][relation]


@dataclass
class Matrix:
    world: ReferralWorld
    patient: Patient
    clients: dict[str, httpx.AsyncClient]
    relations: dict[str, str]  # caller -> relation to the patient
    app: Any


@pytest.fixture(scope="module")
async def matrix(app, rw: ReferralWorld):
    db = app.state.db
    case = await new_case(db, rw, patient=rw.patient.fhir_user)
    pid = case.patient_id
    secret = "canary-" + uuid.uuid4().hex
    records = RecordService(RecordStore(db), BASE)
    written, _ = await records.create("Observation", {**observation(pid), "code": {"text": secret}})
    other_patient = await add_user(db, BASE, role="patient", login=new_national_id(), password=PASSWORD,
                                   name="赵敏", organization=rw.county)
    admin = await add_user(db, BASE, role="admin", login=f"ADM{rw.tag}", password=PASSWORD, name="管理员",
                           organization=None)
    people = {"self": rw.patient, "other-patient": other_patient, "managing": rw.county_doctor,
              "shared": rw.jinan_specialist, "unrelated": rw.qingdao_specialist, "admin": admin}
    clients = {who: await login(app, user) for who, user in people.items()}
    issued = await clients["self"].post("/api/cards", json={"patient": f"Patient/{pid}",
                                                            "national_id": rw.patient.login, "name": "刘芳"})
    assert issued.status_code == 201, issued.text
    # referred up to Jinan, which receives and accepts: Jinan is now a shared hospital
    sent = await clients["managing"].post("/api/referrals", json=referral_body(rw, case, target=rw.jinan))
    assert sent.status_code in (200, 201), sent.text
    for step in ("receive", "accept"):
        moved = await clients["shared"].post(f"/api/referrals/{sent.json()['id']}/{step}", json={})
        assert moved.status_code == 200, moved.text
    patient = Patient(id=pid, national_id=rw.patient.login, observation=written.resource_id, secret=secret,
                      card=issued.json()["id"], organization=rw.county,
                      referral=referral_body(rw, case, target=rw.qingdao), invite=rw.jinan_specialist.fhir_user)
    relations = {"self": SELF, "other-patient": OTHER_PATIENT, "managing": MANAGING, "shared": SHARED,
                 "unrelated": UNRELATED, "admin": ADMIN}
    yield Matrix(rw, patient, clients, relations, app)
    for http in clients.values():
        await http.aclose()


def test_every_route_about_a_patient_is_in_the_matrix():
    about_a_patient = {key for key, gates in ROUTES.items()
                       if any(g == "type" or g.startswith("patient:") for g in gates) and key[0] != "WEBSOCKET"}
    asked = set(_requests(Patient("x", "x", "x", "x", "x", "x", {}, "x")))
    assert about_a_patient - asked == set(), f"routes about a patient not tried by every relation: " \
                                             f"{sorted(about_a_patient - asked)}"
    for key, (action, _) in _requests(Patient("x", "x", "x", "x", "x", "x", {}, "x")).items():
        assert key in ROUTES, key
        assert action == "search" or action in RULES, (key, action)


async def _send(m: Matrix, http: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    request = dict(request)
    if request["url"] == "fresh":
        records = RecordService(RecordStore(m.app.state.db), BASE)
        written, _ = await records.create("Observation", observation(m.patient.id))
        request["url"] = f"/fhir/Observation/{written.resource_id}"
    return await http.request(**request)


def _judge(m: Matrix, who: str, key, action: str, response: httpx.Response) -> list[tuple]:
    """What is wrong with the answer to `who`, by the policy's row for their relation."""
    expected = _outcome(key, action, m.relations[who])
    status, text = response.status_code, response.text
    wrong: list[tuple] = []
    if status >= 500 or status == 401:
        wrong.append((who, key, status, text[:160]))
    elif action == "search" and expected.outcome != "refuse":
        if status not in (200, 202):
            wrong.append((who, key, status, "a search is answered, filtered", text[:160]))
    elif expected.outcome == "allow" and status in (403, 404):
        wrong.append((who, key, status, "allowed by the policy", text[:160]))
    elif expected.outcome == "hide" and status != 404:
        wrong.append((who, key, status, "hidden (404) by the policy", text[:160]))
    elif expected.outcome == "refuse" and not (status == 403 and expected.rule.lower() in text.lower()):
        wrong.append((who, key, status, f"refused naming {expected.rule!r}", text[:160]))
    may_read = RULES["read"][m.relations[who]].allowed
    if not may_read:
        for canary in (m.patient.secret, m.patient.national_id):
            if canary in text:
                wrong.append((who, key, status, f"leaks {canary[:6]}…"))
    if action == "search" and may_read and "Observation?" in str(response.request.url) and status == 200:
        if m.patient.observation not in text:
            wrong.append((who, key, status, "a search left out a record the caller may read"))
    return wrong


async def _ask_all(m: Matrix, callers: list[str]) -> tuple[int, list[tuple]]:
    asked, wrong = 0, []
    for key, (action, requests) in sorted(_requests(m.patient).items()):
        for who in callers:
            for request in requests:
                response = await _send(m, m.clients[who], request)
                asked += 1
                wrong += _judge(m, who, key, action, response)
    return asked, wrong


async def test_each_relation_is_answered_as_the_rules_say(matrix: Matrix):
    asked, wrong = await _ask_all(matrix, list(matrix.clients))
    print(f"\nrelation matrix: {len(_requests(matrix.patient))} routes x {len(matrix.clients)} relations, "
          f"{asked} requests, {len(wrong)} wrong")
    assert not wrong, "\n".join(map(repr, wrong))


async def test_a_revoked_consent_makes_the_shared_hospital_unrelated(matrix: Matrix):
    records = RecordService(RecordStore(matrix.app.state.db), BASE)
    consents = await records.search("Consent", [("patient", f"Patient/{matrix.patient.id}")])
    ids = [e["resource"]["id"] for e in consents["entry"]]
    assert ids
    try:
        for consent_id in ids:
            current = (await records.read("Consent", consent_id))["resource"]
            await records.update("Consent", consent_id, {**current, "status": "inactive"})
        matrix.relations["shared"] = UNRELATED
        asked, wrong = await _ask_all(matrix, ["shared"])
        print(f"\nrelation matrix, consent revoked: {asked} requests, {len(wrong)} wrong")
        assert not wrong, "\n".join(map(repr, wrong))
    finally:
        matrix.relations["shared"] = SHARED
