"""POST /fhir batch and transaction Bundles, and Patient/$everything, through the live app."""

from __future__ import annotations

import uuid

from sample_records import (
    JSON_HEADERS, assert_outcome, condition, create, encounter, ids, link, observation, patient, search,
    server_now, tag, walk_pages,
)
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def post_entry(resource: dict, full_url: str | None = None, **request) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def put_entry(resource: dict, **request) -> dict:
    return {"resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}", **request}}


async def send(client, kind: str, entries: list[dict]):
    return await client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": entries},
                             headers=JSON_HEADERS)


async def history_since(client, resource_type: str, since: str) -> dict:
    return await search(client, f"{resource_type}/_history", {"_since": since})


# --- batch ----------------------------------------------------------------------------------------------


async def test_batch_entries_are_independent(doctor_client, world):
    existing = await create(doctor_client, patient(organization=world.home))
    doomed = await create(doctor_client, patient(organization=world.home))
    good = patient(organization=world.home)
    response = await send(doctor_client, "batch", [
        post_entry(good),
        post_entry(patient(organization=world.home, gender="xx", with_id_number=False)),
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
        put_entry({**existing, "active": True}, ifMatch='W/"9"'),
        {"request": {"method": "GET", "url": f"Patient?_id={existing['id']}"}},
        {"request": {"method": "GET", "url": f"Patient/{tag()}"}},
        {"request": {"method": "PATCH", "url": "Patient/x"}},
    ])
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "batch-response"
    entries = bundle["entry"]
    assert len(entries) == 8
    statuses = [e["response"]["status"] for e in entries]
    assert statuses[0].startswith("201") and statuses[2].startswith("200") and statuses[3].startswith("204")
    assert statuses[1].startswith("422") and statuses[4].startswith("412") and statuses[5].startswith("200")
    assert statuses[6].startswith("404") and statuses[7].startswith("400")

    created = entries[0]["resource"]
    assert entries[0]["response"]["location"] == f"Patient/{created['id']}/_history/1"
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert (await doctor_client.get(f"/fhir/Patient/{created['id']}")).status_code == 200
    failed = entries[1]["response"]["outcome"]
    assert failed["resourceType"] == "OperationOutcome"
    assert failed["issue"][0]["code"] == "code-invalid" and "Patient.gender" in failed["issue"][0]["expression"]
    assert entries[2]["resource"]["id"] == existing["id"]
    assert (await doctor_client.get(f"/fhir/Patient/{doomed['id']}")).status_code == 410
    assert entries[4]["response"]["outcome"]["issue"][0]["code"] == "conflict"
    assert (await doctor_client.get(f"/fhir/Patient/{existing['id']}")).json()["meta"]["versionId"] == "1"
    assert entries[5]["resource"]["type"] == "searchset" and entries[5]["resource"]["total"] == 1


async def test_batch_and_transaction_refuse_bad_bundles(doctor_client, world):
    assert_outcome(await doctor_client.post("/fhir", json=patient(organization=world.home), headers=JSON_HEADERS),
                   400, "invalid", expression="Bundle")
    assert_outcome(await send(doctor_client, "collection", []), 400, "value", expression="Bundle.type")
    response = await doctor_client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": {"a": 1}},
                                        headers=JSON_HEADERS)
    assert_outcome(response, 400, "structure", expression="Bundle.entry")
    response = await send(doctor_client, "transaction", [{"request": {"method": "POST", "url": "Nothing"},
                                                          "resource": {"resourceType": "Nothing"}}])
    assert_outcome(response, 400, "value", expression="Bundle.entry[0].request.url")
    response = await send(doctor_client, "transaction", [{"resource": patient(organization=world.home)}])
    assert_outcome(response, 400, "required", expression="Bundle.entry[0].request")


async def test_bundle_entries_with_wrong_types_in_request_are_400_not_500(doctor_client, world):
    target = await create(doctor_client, patient(organization=world.home))
    for request in ({"method": "PUT", "url": f"Patient/{target['id']}", "ifMatch": 1},
                    {"method": "POST", "url": "Patient", "ifNoneExist": ["identifier=x"]},
                    {"method": 5, "url": "Patient"},
                    {"method": "GET", "url": {"path": "Patient"}}):
        entry = {"resource": {**target} if request["method"] == "PUT" else patient(organization=world.home),
                 "request": request}
        batch = await send(doctor_client, "batch", [entry])
        assert batch.status_code == 200, batch.text
        assert batch.json()["entry"][0]["response"]["status"].startswith("400"), batch.text
        transaction = await send(doctor_client, "transaction", [entry])
        assert_outcome(transaction, 400)
    odd_full_url = await send(doctor_client, "transaction",
                              [{"fullUrl": ["x"], **post_entry(patient(organization=world.home))}])
    assert_outcome(odd_full_url, 400, expression="Bundle.entry[0].fullUrl")


# --- transaction ---------------------------------------------------------------------------------------


async def test_transaction_resolves_urn_uuid_references(doctor_client, world):
    patient_url, encounter_url = urn(), urn()
    person = patient(organization=world.home)
    response = await send(doctor_client, "transaction", [
        post_entry(observation("x", subject={"reference": patient_url}, encounter={"reference": encounter_url})),
        post_entry(person, patient_url),
        post_entry(encounter("x", subject={"reference": patient_url}), encounter_url),
    ])
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created"] * 3
    obs, made, enc = (e["resource"] for e in bundle["entry"])
    assert made["resourceType"] == "Patient" and made["identifier"] == person["identifier"]
    assert obs["subject"]["reference"] == f"Patient/{made['id']}"
    assert obs["encounter"]["reference"] == f"Encounter/{enc['id']}"
    assert enc["subject"]["reference"] == f"Patient/{made['id']}"
    stored = (await doctor_client.get(f"/fhir/Observation/{obs['id']}")).json()
    assert stored["subject"]["reference"] == f"Patient/{made['id']}"
    assert ids(await search(doctor_client, "Observation", {"patient": made["id"]})) == [obs["id"]]


async def test_transaction_with_conditional_create_points_at_existing(doctor_client, world):
    existing = await create(doctor_client, patient(organization=world.home))
    number = existing["identifier"][0]["value"]
    patient_url = urn()
    response = await send(doctor_client, "transaction", [
        post_entry(patient(organization=world.home), patient_url,
                   ifNoneExist=f"identifier={NATIONAL_ID_SYSTEM}|{number}"),
        post_entry(observation("x", subject={"reference": patient_url})),
    ])
    assert response.status_code == 200, response.text
    first, second = response.json()["entry"]
    assert first["response"]["status"] == "200 OK" and first["resource"]["id"] == existing["id"]
    assert second["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"


async def test_transaction_with_invalid_third_entry_writes_nothing(doctor_client, world):
    person = patient(organization=world.home)
    number = person["identifier"][0]["value"]
    since = server_now()
    patient_url = urn()
    response = await send(doctor_client, "transaction", [
        post_entry(person, patient_url),
        post_entry(observation("x", subject={"reference": patient_url})),
        post_entry(observation("x", subject={"reference": patient_url}, status="guessed")),
    ])
    assert_outcome(response, 422, "code-invalid", expression="Bundle.entry[2].resource.status")
    assert (await search(doctor_client, "Patient", {"identifier": f"{NATIONAL_ID_SYSTEM}|{number}"}))["total"] == 0
    assert (await history_since(doctor_client, "Patient", since))["total"] == 0
    assert (await history_since(doctor_client, "Observation", since))["total"] == 0
    await create(doctor_client, person)  # the number is free


async def test_transaction_rolls_back_when_a_put_fails_if_match(doctor_client, world):
    kept = await create(doctor_client, patient(organization=world.home))
    to_delete = await create(doctor_client, patient(organization=world.home))
    person = patient(organization=world.home)
    number = person["identifier"][0]["value"]
    patient_url = urn()
    since = server_now()
    response = await send(doctor_client, "transaction", [
        post_entry(person, patient_url),
        post_entry(observation("x", subject={"reference": patient_url})),
        put_entry({**kept, "active": True}, ifMatch='W/"1"'),
        {"request": {"method": "DELETE", "url": f"Patient/{to_delete['id']}"}},
        put_entry({**to_delete, "active": True}, ifMatch='W/"7"'),
    ])
    outcome = assert_outcome(response, 412, "conflict", expression="Bundle.entry[4]")
    assert outcome["issue"][0]["diagnostics"].startswith("Bundle.entry[4]")

    # No trace: nothing created, the update and the delete undone, no history written.
    assert (await search(doctor_client, "Patient", {"identifier": f"{NATIONAL_ID_SYSTEM}|{number}"}))["total"] == 0
    for resource_type in ("Patient", "Observation"):
        assert (await history_since(doctor_client, resource_type, since))["total"] == 0
    for original in (kept, to_delete):
        current = await doctor_client.get(f"/fhir/Patient/{original['id']}")
        assert current.status_code == 200 and current.json() == original
        assert (await search(doctor_client, f"Patient/{original['id']}/_history"))["total"] == 1
    # The number of the new patient is free; the restored patient still holds its own.
    await create(doctor_client, person)
    clash = await doctor_client.post("/fhir/Patient", json={**patient(organization=world.home),
                                                            "identifier": to_delete["identifier"],
                                                            "birthDate": to_delete["birthDate"],
                                                            "gender": to_delete["gender"]}, headers=JSON_HEADERS)
    assert_outcome(clash, 409, "duplicate")


async def test_transaction_rolls_back_on_duplicate_national_id_inside_it(doctor_client, world):
    person = patient(organization=world.home)
    number = person["identifier"][0]["value"]
    since = server_now()
    response = await send(doctor_client, "transaction", [post_entry(person), post_entry(dict(person))])
    assert_outcome(response, 409, "duplicate", expression="Patient.identifier")
    assert (await search(doctor_client, "Patient", {"identifier": number}))["total"] == 0
    assert (await history_since(doctor_client, "Patient", since))["total"] == 0
    await create(doctor_client, person)


async def test_transaction_rolls_back_when_deleting_unknown(doctor_client, world):
    person = patient(organization=world.home)
    since = server_now()
    response = await send(doctor_client, "transaction", [
        post_entry(person), {"request": {"method": "DELETE", "url": f"Patient/{tag()}"}}])
    assert_outcome(response, 404, "not-found", expression="Bundle.entry[1]")
    assert (await history_since(doctor_client, "Patient", since))["total"] == 0
    await create(doctor_client, person)


# --- Patient/$everything ----------------------------------------------------------------------------------


async def test_everything_is_the_compartment_paged(doctor_client, world):
    owner = await create(doctor_client, patient(organization=world.home))
    pid = owner["id"]
    enc = await create(doctor_client, encounter(pid))
    mine = {("Patient", pid), ("Encounter", enc["id"])}
    for _ in range(3):
        mine.add(("Observation", (await create(doctor_client, observation(pid)))["id"]))
    for code in ("I10", "E11"):
        mine.add(("Condition", (await create(doctor_client, condition(pid, code=code)))["id"]))
    other = await create(doctor_client, patient(organization=world.home))
    await create(doctor_client, observation(other["id"]))
    await create(doctor_client, condition(other["id"]))
    gone = await create(doctor_client, observation(pid))
    await doctor_client.delete(f"/fhir/Observation/{gone['id']}")

    whole = await search(doctor_client, f"Patient/{pid}/$everything")
    assert whole["type"] == "searchset" and whole["total"] == len(mine) == 7
    assert whole["entry"][0]["resource"]["id"] == pid
    assert {(e["resource"]["resourceType"], e["resource"]["id"]) for e in whole["entry"]} == mine

    first = await search(doctor_client, f"Patient/{pid}/$everything", {"_count": "3"})
    pages = await walk_pages(doctor_client, first)
    assert [len(p["entry"]) for p in pages] == [3, 3, 1]
    walked = [(e["resource"]["resourceType"], e["resource"]["id"]) for p in pages for e in p["entry"]]
    assert len(walked) == len(set(walked)) and set(walked) == mine
    assert link(pages[1], "previous") is not None
    assert (await doctor_client.get(link(pages[1], "previous"))).json()["entry"] == first["entry"]


async def test_everything_refusals(doctor_client, world):
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{tag()}/$everything"), 404, "not-found")
    gone = await create(doctor_client, patient(organization=world.home))
    await doctor_client.delete(f"/fhir/Patient/{gone['id']}")
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{gone['id']}/$everything"), 410, "deleted")
    owner = await create(doctor_client, patient(organization=world.home))
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{owner['id']}/$everything", params={"_count": "x"}),
                   400, "value")
