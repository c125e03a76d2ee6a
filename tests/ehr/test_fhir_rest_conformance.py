"""What the FHIR API promises and refuses: metadata, StructureDefinitions, the province's rules, bad input."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from ehr.models import RESOURCE_TYPES
from ehr.search import SEARCH_PARAMETERS
from sample_records import FHIR_JSON, JSON_HEADERS, assert_outcome, create, national_id, patient, search, tag
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM
from fhir_profiles.structure_definitions import load_structure_definitions


# --- metadata and StructureDefinitions ------------------------------------------------------------------


async def test_metadata_is_a_valid_truthful_capability_statement(doctor_client):
    response = await doctor_client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.3.0" and statement["kind"] == "instance"
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"batch", "transaction"}
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(RESOURCE_TYPES) <= set(by_type)
    for resource_type in RESOURCE_TYPES:
        entry = by_type[resource_type]
        assert {p["name"] for p in entry["searchParam"]} == set(SEARCH_PARAMETERS[resource_type]), resource_type
        assert {"read", "vread", "search-type", "history-instance", "history-type"} <= \
            {i["code"] for i in entry["interaction"]}
        assert entry["versioning"] == "versioned-update"
    audit = {i["code"] for i in by_type["AuditEvent"]["interaction"]}
    assert not audit & {"create", "update", "delete"}
    assert by_type["AuditEvent"]["updateCreate"] is False
    assert {"create", "update", "delete"} <= {i["code"] for i in by_type["Patient"]["interaction"]}
    assert "Observation:patient" in by_type["Patient"]["searchRevInclude"]
    assert "Observation:patient" in by_type["Observation"]["searchInclude"]
    assert any(op["name"] == "everything" for op in by_type["Patient"]["operation"])


async def test_metadata_lists_the_structure_definitions(doctor_client):
    statement = (await doctor_client.get("/fhir/metadata")).json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for definition in load_structure_definitions().values():
        if definition["kind"] == "resource":
            assert definition["url"] in by_type[definition["type"]]["supportedProfile"], definition["id"]
    # /fhir/StructureDefinition/{id} is served, so metadata says so.
    assert {i["code"] for i in by_type["StructureDefinition"]["interaction"]} == {"read"}


async def test_structure_definitions_are_served(doctor_client):
    definitions = load_structure_definitions()
    assert definitions
    for sid, definition in definitions.items():
        response = await doctor_client.get(f"/fhir/StructureDefinition/{sid}")
        assert response.status_code == 200, sid
        assert response.headers["content-type"].startswith(FHIR_JSON)
        served = response.json()
        assert served["resourceType"] == "StructureDefinition" and served["id"] == sid
        assert served == definition
    listing = await search(doctor_client, "StructureDefinition")
    assert listing["total"] == len(definitions)
    assert sorted(e["resource"]["id"] for e in listing["entry"]) == sorted(definitions)
    assert_outcome(await doctor_client.get(f"/fhir/StructureDefinition/{tag()}"), 404, "not-found",
                   diagnostics="StructureDefinition/")


# --- the province's rules -------------------------------------------------------------------------------


def _with_check_digit_broken(number: str) -> str:
    last = "0123456789X"
    return number[:17] + last[(last.index(number[17]) + 1) % len(last)]


async def test_national_id_with_wrong_check_digit_is_422(doctor_client, world):
    body = patient(organization=world.home)
    body["identifier"][0]["value"] = _with_check_digit_broken(body["identifier"][0]["value"])
    outcome = assert_outcome(await doctor_client.post("/fhir/Patient", json=body, headers=JSON_HEADERS), 422, "value",
                             expression="Patient.identifier[0].value", diagnostics="check character")
    assert body["identifier"][0]["value"] not in str(outcome)  # the number is masked


async def test_national_id_disagreeing_with_sex_and_birth_date_names_both(doctor_client, world):
    born = dt.date(1985, 4, 12)
    body = patient(organization=world.home, birth_date=born, gender="male")
    body["identifier"][0]["value"] = national_id(dt.date(1986, 4, 12), "female")
    outcome = assert_outcome(await doctor_client.post("/fhir/Patient", json=body, headers=JSON_HEADERS), 422,
                             "business-rule")
    expressions = [set(i["expression"]) for i in outcome["issue"]]
    assert {"Patient.identifier[0].value", "Patient.birthDate"} in expressions, outcome
    assert {"Patient.identifier[0].value", "Patient.gender"} in expressions, outcome


async def test_second_patient_with_same_national_id_is_409_until_the_first_is_deleted(doctor_client, world):
    first = await create(doctor_client, patient(organization=world.home))
    twin = {**patient(organization=world.home, birth_date=dt.date.fromisoformat(first["birthDate"]),
                      gender=first["gender"]),
            "identifier": first["identifier"]}
    clash = await doctor_client.post("/fhir/Patient", json=twin, headers=JSON_HEADERS)
    assert_outcome(clash, 409, "duplicate", expression="Patient.identifier")
    assert first["identifier"][0]["value"] not in clash.text

    # Taking the number over by update is refused the same way.
    other = await create(doctor_client, patient(organization=world.home,
                                                birth_date=dt.date.fromisoformat(first["birthDate"]),
                                                gender=first["gender"]))
    taken = await doctor_client.put(f"/fhir/Patient/{other['id']}", json={**other, "identifier": first["identifier"]},
                                    headers=JSON_HEADERS)
    assert_outcome(taken, 409, "duplicate")
    assert (await doctor_client.get(f"/fhir/Patient/{other['id']}")).json()["meta"]["versionId"] == "1"

    assert (await doctor_client.delete(f"/fhir/Patient/{first['id']}")).status_code == 204
    again = await doctor_client.post("/fhir/Patient", json=twin, headers=JSON_HEADERS)
    assert again.status_code == 201, again.text


async def test_changing_own_national_id_frees_the_old_one(doctor_client, world):
    born = dt.date(1979, 9, 9)
    person = await create(doctor_client, patient(organization=world.home, birth_date=born, gender="male"))
    old = person["identifier"]
    new = [{"system": NATIONAL_ID_SYSTEM, "value": national_id(born, "male")}]
    response = await doctor_client.put(f"/fhir/Patient/{person['id']}", json={**person, "identifier": new},
                                       headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    await create(doctor_client, {**patient(organization=world.home, birth_date=born, gender="male"), "identifier": old})


async def test_bad_value_set_code_is_422_naming_the_element(doctor_client, world):
    body = patient(organization=world.home, with_id_number=False, gender="xx")
    assert_outcome(await doctor_client.post("/fhir/Patient", json=body, headers=JSON_HEADERS), 422, "code-invalid",
                   expression="Patient.gender", diagnostics="'xx'")
    task = {"resourceType": "Task", "status": "pondering", "intent": "order"}
    assert_outcome(await doctor_client.post("/fhir/Task", json=task, headers=JSON_HEADERS), 422, "code-invalid",
                   expression="Task.status")


# --- bad input: a clear OperationOutcome, never a 500 -------------------------------------------------


async def test_invalid_json_and_empty_bodies(doctor_client):
    for raw in (b"{not json", b'{"resourceType": "Patient",}', b"\xff\xfe{}", b"[" * 2000 + b"]" * 2000):
        response = await doctor_client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS)
        assert_outcome(response, 400, "structure", diagnostics="not valid JSON")
    assert_outcome(await doctor_client.post("/fhir/Patient", content=b"  ", headers=JSON_HEADERS), 400, "required")
    assert_outcome(await doctor_client.put("/fhir/Patient/x", content=b"{", headers=JSON_HEADERS), 400, "structure")
    assert_outcome(await doctor_client.post("/fhir", content=b"nope", headers=JSON_HEADERS), 400, "structure")


async def test_wrong_resource_type_and_id_mismatch(doctor_client, world):
    response = await doctor_client.post("/fhir/Patient", json={"resourceType": "Observation"}, headers=JSON_HEADERS)
    assert_outcome(response, 400, "invalid", expression="Patient.resourceType", diagnostics="Observation")
    assert_outcome(await doctor_client.post("/fhir/Patient", json={"gender": "male"}, headers=JSON_HEADERS), 400,
                   "required", expression="resourceType")
    made = await create(doctor_client, patient(organization=world.home))
    response = await doctor_client.put(f"/fhir/Patient/{made['id']}", json={**made, "id": "someone-else"},
                                       headers=JSON_HEADERS)
    assert_outcome(response, 400, "invalid", expression="Patient.id", diagnostics="someone-else")
    no_id = {k: v for k, v in made.items() if k != "id"}
    assert_outcome(await doctor_client.put(f"/fhir/Patient/{made['id']}", json=no_id, headers=JSON_HEADERS), 400,
                   "invalid", expression="Patient.id")
    assert (await doctor_client.get(f"/fhir/Patient/{made['id']}")).json() == made


@pytest.mark.parametrize("body, code, expression, diagnostics", [
    ({"resourceType": "Patient", "shoeSize": 42}, "structure", "Patient.shoeSize", "Unknown element 'shoeSize'"),
    ({"resourceType": "Patient", "birthDate": 19800101}, "value", "Patient.birthDate", None),
    ({"resourceType": "Patient", "birthDate": "1980-02-30"}, "value", "Patient.birthDate", None),
    ({"resourceType": "Patient", "active": "perhaps"}, "value", "Patient.active", None),
    ({"resourceType": "Patient", "name": [{"given": "Wang"}]}, "value", "Patient.name[0].given", None),
    ({"resourceType": "Patient", "name": [{"family": ["Wang"]}]}, "value", "Patient.name[0].family", None),
    ({"resourceType": "Patient", "telecom": {"system": "phone", "value": "1"}}, "value", "Patient.telecom", None),
    ({"resourceType": "Patient", "managingOrganization": "Organization/1"}, "value",
     "Patient.managingOrganization", None),
])
async def test_model_violations_are_400_with_expression(doctor_client, body, code, expression, diagnostics):
    response = await doctor_client.post("/fhir/Patient", json=body, headers=JSON_HEADERS)
    outcome = assert_outcome(response, 400, diagnostics=diagnostics)
    issues = [i for i in outcome["issue"] if any(e.startswith(expression) for e in i.get("expression", []))]
    assert issues, outcome
    assert issues[0]["code"] == code, outcome


async def test_array_instead_of_resource(doctor_client):
    for raw in (b'[{"resourceType": "Patient"}]', b'"Patient"', b"42", b"null"):
        response = await doctor_client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS)
        assert_outcome(response, 400, "structure", diagnostics="JSON object")


async def test_wrong_content_type_is_415(doctor_client, world):
    response = await doctor_client.post("/fhir/Patient", content=b"resourceType=Patient",
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_outcome(response, 415, "not-supported", diagnostics=FHIR_JSON)
    response = await doctor_client.put("/fhir/Patient/x", content=b"<Patient/>",
                                       headers={"Content-Type": "application/xml"})
    assert_outcome(response, 415, "not-supported")
    ok = await doctor_client.post("/fhir/Patient", json=patient(organization=world.home),
                                  headers={"Content-Type": "application/json"})
    assert ok.status_code == 201
    ok = await doctor_client.post("/fhir/Patient", json=patient(organization=world.home),
                                  headers={"Content-Type": "application/fhir+json; charset=utf-8"})
    assert ok.status_code == 201


async def test_bad_if_match_is_400(doctor_client, world):
    made = await create(doctor_client, patient(organization=world.home))
    for value in ("abc", 'W/"x"', "", 'W/""'):
        response = await doctor_client.put(f"/fhir/Patient/{made['id']}", json=made,
                                           headers={**JSON_HEADERS, "If-Match": value})
        assert_outcome(response, 400, "invalid", diagnostics="If-Match")
    assert (await doctor_client.get(f"/fhir/Patient/{made['id']}")).json()["meta"]["versionId"] == "1"


async def test_unknown_resource_type_is_404(doctor_client):
    for method, path in (("GET", "/fhir/Spaceship"), ("GET", "/fhir/Spaceship/1"), ("POST", "/fhir/Spaceship"),
                         ("PUT", "/fhir/Spaceship/1"), ("DELETE", "/fhir/Spaceship/1"),
                         ("GET", "/fhir/Spaceship/1/_history"), ("GET", "/fhir/Spaceship/_history"),
                         ("GET", "/fhir/Spaceship/1/_history/1")):
        body = {"resourceType": "Spaceship", "id": "1"} if method in ("POST", "PUT") else None
        response = await doctor_client.request(method, path, json=body, headers=JSON_HEADERS)
        assert_outcome(response, 404, "not-supported", diagnostics="Spaceship")


async def test_unknown_paths_and_methods_are_outcomes(doctor_client):
    assert_outcome(await doctor_client.get("/fhir/Patient/1/2/3/4"), 404, "not-found")
    assert_outcome(await doctor_client.patch("/fhir/Patient/1", json={}), 405, "not-supported")


async def test_audit_event_is_read_only(doctor_client, admin_client):
    event = {"resourceType": "AuditEvent", "id": "a1", "type": {"code": "rest"}, "recorded": "2024-01-01T00:00:00Z",
             "agent": [{"requestor": True}], "source": {"observer": {"display": "x"}}}
    for method, path in (("POST", "/fhir/AuditEvent"), ("PUT", "/fhir/AuditEvent/a1"),
                         ("DELETE", "/fhir/AuditEvent/a1")):
        response = await doctor_client.request(method, path, json=event if method != "DELETE" else None,
                                               headers=JSON_HEADERS)
        assert_outcome(response, 405, "not-supported", diagnostics="AuditEvent")
    transaction = await doctor_client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}]}, headers=JSON_HEADERS)
    assert_outcome(transaction, 405, "not-supported")
    # Read-only, yet readable: by an administrator (a doctor may not read the audit trail).
    assert (await search(admin_client, "AuditEvent", {"_count": "1"}))["type"] == "searchset"


async def test_concurrent_creates_with_one_national_id_make_one_patient(doctor_client, world):
    body = patient(organization=world.home)
    responses = await asyncio.gather(*(doctor_client.post("/fhir/Patient", json=body, headers=JSON_HEADERS)
                                       for _ in range(3)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409], [r.text for r in responses]
    number = body["identifier"][0]["value"]
    assert (await search(doctor_client, "Patient", {"identifier": f"{NATIONAL_ID_SYSTEM}|{number}"}))["total"] == 1


async def test_double_submitted_change_of_national_id_keeps_it_unique(doctor_client, world):
    born = dt.date(1988, 8, 8)
    person = await create(doctor_client, patient(organization=world.home, birth_date=born, gender="female"))
    new = [{"system": NATIONAL_ID_SYSTEM, "value": national_id(born, "female")}]
    changed = {**person, "identifier": new}
    responses = await asyncio.gather(*(doctor_client.put(f"/fhir/Patient/{person['id']}", json=changed,
                                                         headers=JSON_HEADERS) for _ in range(2)))
    # The second may land on top of the first or be told to retry; either way the number stays unique.
    assert sorted(r.status_code for r in responses) in ([200, 200], [200, 409]), [r.text for r in responses]
    impostor = {**patient(organization=world.home, birth_date=born, gender="female"), "identifier": new}
    assert_outcome(await doctor_client.post("/fhir/Patient", json=impostor, headers=JSON_HEADERS), 409, "duplicate")
    # and the number it gave up is free
    await create(doctor_client, {**patient(organization=world.home, birth_date=born, gender="female"),
                                 "identifier": person["identifier"]})
