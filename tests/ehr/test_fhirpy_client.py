"""The FHIR API as a client written elsewhere sees it: `fhirpy` against a real `qilu serve` process.

Only the test data comes from our helpers (a valid national ID number); every request is fhirpy's own.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid

import httpx
import pytest
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, make_national_id
from live_server import running_server
from sample_records import PASSWORD

OBSERVATIONS = 7  # more than one page at _count=3



@pytest.fixture(scope="module")
def fhir_base(engines, settings) -> str:
    """A real `qilu serve` on a free loopback port, on the tests' database; stopped after this module."""
    with running_server(settings, "fhirpy") as (base, _proc):
        yield f"{base}/fhir"


@pytest.fixture(scope="module")
def authorization(fhir_base, world) -> str:
    """A county doctor's bearer token, obtained the OAuth2 way from the server itself."""
    token_url = fhir_base.removesuffix("/fhir") + "/api/auth/token"
    response = httpx.post(token_url, data={"username": world.doctor.login, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return "Bearer " + response.json()["access_token"]


@pytest.fixture
def fhir(fhir_base, authorization) -> AsyncFHIRClient:
    return AsyncFHIRClient(fhir_base, authorization=authorization)


def _patient_resource(family: str, organization: str) -> dict:
    # Random birth date and order code, so reruns and other tests on the same database do not collide (409).
    birth = dt.date(1950, 1, 1) + dt.timedelta(days=random.randrange(0, 20000))
    number = make_national_id("370102", birth, random.randrange(0, 500), "female")
    return {"identifier": [{"system": NATIONAL_ID_SYSTEM, "value": number}],
            "name": [{"family": family, "given": ["秀英"], "text": f"{family}秀英"}],
            "gender": "female", "birthDate": birth.isoformat(),
            # The doctor may only register patients of their own hospital.
            "managingOrganization": {"reference": organization}}


async def test_crud_and_search_through_fhirpy(fhir: AsyncFHIRClient, world):
    family = f"Fhirpy{uuid.uuid4().hex[:8]}"
    fields = _patient_resource(family, world.home)
    number = fields["identifier"][0]["value"]

    # create: fhirpy POSTs and takes the server's id and meta from the representation returned
    patient = fhir.resource("Patient", **fields)
    await patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"

    # read
    read = await fhir.resources("Patient").search(_id=patient.id).get()
    assert read["identifier"][0]["value"] == number
    fetched = await fhir.reference("Patient", patient.id).to_resource()
    assert fetched["birthDate"] == fields["birthDate"]

    # update (PUT)
    patient["telecom"] = [{"system": "phone", "value": "13800000000"}]
    await patient.save()
    assert patient["meta"]["versionId"] == "2"
    again = await fhir.reference("Patient", patient.id).to_resource()
    assert again["telecom"][0]["value"] == "13800000000"
    assert again["meta"]["versionId"] == "2"

    # search by identifier (token system|code) and by name (string prefix)
    by_number = await fhir.resources("Patient").search(identifier=f"{NATIONAL_ID_SYSTEM}|{number}").fetch_all()
    assert [p.id for p in by_number] == [patient.id]
    by_name = await fhir.resources("Patient").search(name=family[:-2]).fetch_all()
    assert [p.id for p in by_name] == [patient.id]
    assert await fhir.resources("Patient").search(family=family).count() == 1

    # Observations of the patient, with _include of the patient, paged through the next links
    subject = patient.to_reference()
    for i in range(OBSERVATIONS):
        await fhir.resource("Observation", status="final", subject=subject,
                            code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
                            effectiveDateTime=f"2024-03-{i + 1:02d}T08:00:00+08:00",
                            valueQuantity={"value": 70 + i, "unit": "/min", "system": "http://unitsofmeasure.org",
                                           "code": "/min"}).save()
    observations = fhir.resources("Observation").search(patient=patient.id)
    page = await observations.include("Observation", "patient").limit(3).fetch_raw()
    assert page["total"] == OBSERVATIONS
    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in page["entry"]]
    assert modes == [("Observation", "match")] * 3 + [("Patient", "include")]
    assert page["entry"][-1]["resource"]["id"] == patient.id
    assert any(link["relation"] == "next" for link in page["link"])
    # fetch_all follows Bundle.link next to the end (three pages of 3, 3, 1) and keeps only Observations
    every = await observations.include("Observation", "patient").limit(3).sort("date").fetch_all()
    assert [o["valueQuantity"]["value"] for o in every] == [70 + i for i in range(OBSERVATIONS)]
    assert len({o.id for o in every}) == OBSERVATIONS

    # delete, then it is gone: fhirpy maps the 410 Gone of a read to ResourceNotFound
    await patient.delete()
    with pytest.raises(ResourceNotFound) as gone:
        await fhir.reference("Patient", patient.id).to_resource()
    assert '"deleted"' in str(gone.value)  # the OperationOutcome body with issue.code "deleted"
    assert await fhir.resources("Patient").search(identifier=f"{NATIONAL_ID_SYSTEM}|{number}").fetch_all() == []
    with pytest.raises(ResourceNotFound):
        await fhir.resources("Patient").search(_id=patient.id).get()


async def test_bad_input_reaches_fhirpy_as_operation_outcome(fhir: AsyncFHIRClient):
    patient = fhir.resource("Patient", gender="robot")
    with pytest.raises(OperationOutcome) as refused:
        await patient.save()
    issue = refused.value.resource["issue"][0]
    assert issue["severity"] == "error"
    assert any("gender" in e for e in issue.get("expression", []))


async def test_version_conflict_seen_through_fhirpy(fhir_base: str, fhir: AsyncFHIRClient, authorization: str,
                                                    world):
    """fhirpy has no If-Match of its own; a client made with extra_headers sends it, and a 412 comes back
    as fhirpy's MultipleResourcesFound (its one exception for every 412, named for conditional operations)."""
    patient = fhir.resource("Patient", **_patient_resource(f"Fhirpy{uuid.uuid4().hex[:8]}", world.home))
    await patient.save()
    on_v1 = AsyncFHIRClient(fhir_base, authorization=authorization, extra_headers={"If-Match": 'W/"1"'})

    first = on_v1.resource("Patient", **dict(patient))
    first["active"] = True
    await first.save()  # version 1 is current: accepted, now version 2
    assert first["meta"]["versionId"] == "2"

    stale = on_v1.resource("Patient", **dict(patient))
    stale["active"] = False
    with pytest.raises(MultipleResourcesFound) as conflict:
        await stale.save()  # still says version 1: 412 Precondition Failed
    assert '"conflict"' in str(conflict.value)
    current = await fhir.reference("Patient", patient.id).to_resource()
    assert current["active"] is True and current["meta"]["versionId"] == "2"
