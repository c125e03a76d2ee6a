"""The holes found from outside in the walls between hospitals, each tried as the attacker would, then closed:
a takeover of another hospital's patient through a Bundle, writes that name the patient around the record
(by identifier only, or only in `focus`), an administrator telling ids apart, and the one way a patient
really moves between hospitals ($transfer, audited)."""

from __future__ import annotations

import pytest

from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM
from logins import login
from sample_records import JSON_HEADERS, assert_outcome, create, ids, observation, patient, search

TRANSFER_RULE = "$transfer"


@pytest.fixture(scope="module")
async def other_doctor(app, world):
    http = await login(app, world.doctor_elsewhere)
    try:
        yield http
    finally:
        await http.aclose()


def national_id_of(resource: dict) -> str:
    return next(i["value"] for i in resource["identifier"] if i["system"] == NATIONAL_ID_SYSTEM)


async def managing(client, patient_id: str) -> str:
    response = await client.get(f"/fhir/Patient/{patient_id}")
    assert response.status_code == 200, response.text
    return response.json()["managingOrganization"]["reference"]


def takeover_entry(resource: dict, organization: str) -> dict:
    return {"resource": {**resource, "managingOrganization": {"reference": organization}},
            "request": {"method": "PUT", "url": f"Patient/{resource['id']}"}}


# --- takeover through a Bundle ----------------------------------------------------------------------


async def test_another_hospital_cannot_take_a_patient_over_through_a_transaction(doctor_client, other_doctor, world):
    victim = await create(doctor_client, patient(organization=world.home))
    response = await other_doctor.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        takeover_entry(victim, world.elsewhere)]}, headers=JSON_HEADERS)
    # Judged as the same PUT sent alone: a patient the caller may not read is, to them, unknown.
    assert_outcome(response, 404)
    assert await managing(doctor_client, victim["id"]) == world.home
    alone = await other_doctor.put(f"/fhir/Patient/{victim['id']}", json=takeover_entry(victim, world.elsewhere)[
        "resource"], headers=JSON_HEADERS)
    assert alone.status_code == response.status_code


async def test_another_hospital_cannot_take_a_patient_over_through_a_batch(doctor_client, other_doctor, world):
    victim = await create(doctor_client, patient(organization=world.home))
    response = await other_doctor.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        takeover_entry(victim, world.elsewhere)]}, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["status"].startswith("404")
    assert await managing(doctor_client, victim["id"]) == world.home


async def test_a_transaction_that_registers_a_patient_still_cannot_take_another_over(doctor_client, other_doctor,
                                                                                     world):
    # Registering a new patient at the caller's hospital in the same Bundle must not make others theirs.
    victim = await create(doctor_client, patient(organization=world.home))
    response = await other_doctor.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(organization=world.elsewhere), "request": {"method": "POST", "url": "Patient"}},
        takeover_entry(victim, world.elsewhere)]}, headers=JSON_HEADERS)
    assert_outcome(response, 404)
    assert await managing(doctor_client, victim["id"]) == world.home


@pytest.mark.parametrize("how", ["put", "transaction", "batch"])
async def test_the_managing_hospital_cannot_move_a_patient_by_an_ordinary_update(doctor_client, world, how):
    own = await create(doctor_client, patient(organization=world.home))
    moved = takeover_entry(own, world.elsewhere)
    if how == "put":
        response = await doctor_client.put(f"/fhir/Patient/{own['id']}", json=moved["resource"], headers=JSON_HEADERS)
        outcome = response
    else:
        response = await doctor_client.post("/fhir", json={"resourceType": "Bundle", "type": how, "entry": [moved]},
                                            headers=JSON_HEADERS)
        outcome = response
        if how == "batch":
            entry = response.json()["entry"][0]["response"]
            assert entry["status"].startswith("403"), entry
            assert TRANSFER_RULE in entry["outcome"]["issue"][0]["diagnostics"]
    if how != "batch":
        assert_outcome(outcome, 403, "forbidden")
        assert TRANSFER_RULE in outcome.json()["issue"][0]["diagnostics"]
    assert await managing(doctor_client, own["id"]) == world.home


async def test_a_failed_takeover_leaves_the_card_with_its_hospital(doctor_client, other_doctor, world):
    victim = await create(doctor_client, patient(organization=world.home))
    card = await doctor_client.post("/api/cards", json={
        "patient": victim["id"], "national_id": national_id_of(victim),
        "name": victim["name"][0]["family"] + "".join(victim["name"][0].get("given", []))})
    assert card.status_code == 201, card.text
    await other_doctor.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        takeover_entry(victim, world.elsewhere)]}, headers=JSON_HEADERS)
    suspend = await other_doctor.post(f"/api/cards/{card.json()['id']}/suspend")
    assert suspend.status_code == 404, suspend.text


# --- writing around the record ------------------------------------------------------------------------


async def test_a_reference_by_identifier_is_resolved_to_the_patient(doctor_client, world):
    own = await create(doctor_client, patient(organization=world.home))
    by_identifier = observation("x", subject={"type": "Patient", "identifier": {
        "system": NATIONAL_ID_SYSTEM, "value": national_id_of(own)}})
    stored = await create(doctor_client, by_identifier)
    assert stored["subject"]["reference"] == f"Patient/{own['id']}"
    found = await search(doctor_client, "Observation", {"patient": own["id"]})
    assert stored["id"] in ids(found)
    everything = (await doctor_client.get(f"/fhir/Patient/{own['id']}/$everything")).json()
    assert stored["id"] in ids(everything)


async def test_a_reference_by_identifier_to_nobody_or_to_another_hospitals_patient_is_refused(
        doctor_client, other_doctor, world):
    theirs = await create(other_doctor, patient(organization=world.elsewhere))
    answers = []
    for value in (national_id_of(theirs), "110101199003077777"):
        response = await doctor_client.post("/fhir/Observation", json=observation("x", subject={
            "type": "Patient", "identifier": {"system": NATIONAL_ID_SYSTEM, "value": value}}), headers=JSON_HEADERS)
        assert_outcome(response, 422)
        assert "Observation.subject" in response.json()["issue"][0]["expression"]
        answers.append(response.json()["issue"][0]["diagnostics"])
    # The same words either way: the answer does not tell whether that ID number is a patient elsewhere.
    assert answers[0] == answers[1]
    assert national_id_of(theirs) not in answers[0]
    assert (await search(other_doctor, "Observation", {"patient": theirs["id"]})).get("total") == 0


async def test_a_clinical_resource_that_names_the_patient_only_in_focus_is_refused(doctor_client, world):
    own = await create(doctor_client, patient(organization=world.home))
    resource = observation(own["id"], focus=[{"reference": f"Patient/{own['id']}"}])
    del resource["subject"]
    response = await doctor_client.post("/fhir/Observation", json=resource, headers=JSON_HEADERS)
    assert_outcome(response, 422)
    assert "names no patient" in response.json()["issue"][0]["diagnostics"]


async def test_a_resource_is_filed_under_every_patient_the_compartment_definition_names(doctor_client, world):
    # R4's Patient compartment lists Observation.performer beside subject: both patients' records hold it.
    one = await create(doctor_client, patient(organization=world.home))
    other = await create(doctor_client, patient(organization=world.home))
    stored = await create(doctor_client, observation(one["id"], performer=[{"reference": f"Patient/{other['id']}"}]))
    for person in (one, other):
        assert stored["id"] in ids(await search(doctor_client, "Observation", {"patient": person["id"]})) or \
            stored["id"] in ids((await doctor_client.get(f"/fhir/Patient/{person['id']}/$everything")).json())


# --- the administrator's refusals say nothing of existence -----------------------------------------


async def test_an_administrator_gets_the_same_refusal_for_existing_and_missing_clinical_ids(admin_client,
                                                                                            doctor_client, world):
    own = await create(doctor_client, patient(organization=world.home))
    obs = await create(doctor_client, observation(own["id"]))
    for kind, real in (("Patient", own["id"]), ("Observation", obs["id"])):
        answers = []
        for resource_id in (real, "no-such-" + real[:8]):
            for path in (f"/fhir/{kind}/{resource_id}", f"/fhir/{kind}/{resource_id}/_history",
                         f"/fhir/{kind}/{resource_id}/_history/1"):
                response = await admin_client.get(path)
                answers.append((response.status_code, response.json()["issue"][0]["diagnostics"]))
        assert {status for status, _ in answers} == {403}, answers
        assert len({text for _, text in answers}) == 1, answers


# --- the one way a patient moves -------------------------------------------------------------------


async def test_a_patient_moves_only_by_transfer_done_by_the_managing_hospital(doctor_client, other_doctor, world,
                                                                              admin_client):
    own = await create(doctor_client, patient(organization=world.home))
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "organization", "valueReference": {"reference": world.elsewhere}}]}
    # The receiving hospital cannot pull the patient over; the managing one can hand them over.
    pulled = await other_doctor.post(f"/fhir/Patient/{own['id']}/$transfer", json=body, headers=JSON_HEADERS)
    assert_outcome(pulled, 404)
    moved = await doctor_client.post(f"/fhir/Patient/{own['id']}/$transfer", json=body, headers=JSON_HEADERS)
    assert moved.status_code == 200, moved.text
    assert moved.json()["managingOrganization"]["reference"] == world.elsewhere
    assert await managing(other_doctor, own["id"]) == world.elsewhere
    assert (await doctor_client.get(f"/fhir/Patient/{own['id']}")).status_code == 404
    # Shown in the patient's trail as its own act, naming both hospitals.
    trail = await search(admin_client, "AuditEvent", {"patient": own["id"], "_count": "50"})
    acts = [e["resource"] for e in trail.get("entry", [])
            if (e["resource"].get("subtype") or [{}])[0].get("code") == "transfer"]
    # The refused pull is in the trail too, as a failure, beside the one act that moved the patient.
    assert sorted(a["outcome"] for a in acts) == ["0", "4"], acts
    done = next(a for a in acts if a["outcome"] == "0")
    assert world.elsewhere in str(done) and world.home in str(done)


async def test_transfer_refuses_bad_requests(doctor_client, world):
    own = await create(doctor_client, patient(organization=world.home))
    for body in ({"resourceType": "Parameters"}, {"resourceType": "Parameters", "parameter": [
            {"name": "organization", "valueReference": {"reference": "Organization/no-such-hospital"}}]},
            {"resourceType": "Parameters", "parameter": [
                {"name": "organization", "valueReference": {"reference": world.home}}]}, [1, 2]):
        response = await doctor_client.post(f"/fhir/Patient/{own['id']}/$transfer", json=body, headers=JSON_HEADERS)
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    assert await managing(doctor_client, own["id"]) == world.home
