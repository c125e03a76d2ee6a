"""Builders and assertions shared by the FHIR REST tests: unique, valid resources and OperationOutcome checks."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, USCC_SYSTEM, make_national_id, make_uscc

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}
OBS_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"

PASSWORD = "correct horse 42"
_rng = random.Random(uuid.uuid4().int)
_issued_ids: set[str] = set()


def tag() -> str:
    """A short unique word, to keep each test's data apart in the session-wide database."""
    return "t" + uuid.uuid4().hex[:12]


def chinese_given(length: int = 3) -> str:
    """A unique-enough run of CJK characters for a given name."""
    return "".join(chr(0x4E00 + _rng.randrange(0x5000)) for _ in range(length))


def national_id(birth_date: dt.date, sex: str, region: str = "370102") -> str:
    """A valid resident ID number not handed out before in this session."""
    while True:
        number = make_national_id(region, birth_date, _rng.randrange(500), sex)
        if number not in _issued_ids:
            _issued_ids.add(number)
            return number


def new_national_id() -> str:
    """A fresh valid ID number of a random resident."""
    return national_id(random_birth_date(), _rng.choice(("male", "female")))


def random_birth_date() -> dt.date:
    return dt.date(1940, 1, 1) + dt.timedelta(days=_rng.randrange(365 * 60))


def patient(*, organization: str | None = None, family: str | None = None, given: list[str] | None = None,
            gender: str = "female", birth_date: dt.date | None = None, with_id_number: bool = True,
            **extra: Any) -> dict[str, Any]:
    """A valid Patient; `organization` ("Organization/..") becomes its managingOrganization, which decides
    which practitioners may write it."""
    birth_date = birth_date or random_birth_date()
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": family or tag(), "given": given or [tag()]}],
        "gender": gender,
        "birthDate": birth_date.isoformat(),
    }
    if with_id_number:
        resource["identifier"] = [{"system": NATIONAL_ID_SYSTEM, "value": national_id(birth_date, gender)}]
    if organization is not None:
        resource["managingOrganization"] = {"reference": organization}
    resource.update(extra)
    return resource


def organization(*, name: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Organization", "name": name or f"医院 {tag()}",
                                "identifier": [{"system": USCC_SYSTEM, "value": make_uscc(uuid.uuid4().hex)}]}
    resource.update(extra)
    return resource


def observation(patient_id: str, *, code: str = "8480-6", status: str = "final",
                effective: str = "2024-03-01T08:00:00Z", category: str = "vital-signs", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation", "status": status,
        "category": [{"coding": [{"system": OBS_CATEGORY_SYSTEM, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": effective,
        "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    }
    resource.update(extra)
    return resource


def condition(patient_id: str, *, code: str = "I10", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "recordedDate": "2024-02-01",
    }
    resource.update(extra)
    return resource


def encounter(patient_id: str, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2024-03-01T08:00:00Z", "end": "2024-03-01T09:00:00Z"},
    }
    resource.update(extra)
    return resource


def consent(patient_id: str, *, status: str = "active", actors: list[str] | None = None) -> dict[str, Any]:
    """An R4 privacy Consent of the patient permitting the sharing of their records (no actor: any target)."""
    provision: dict[str, Any] = {"type": "permit"}
    if actors:
        recipient = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]}
        provision["actor"] = [{"role": recipient, "reference": {"reference": a}} for a in actors]
    return {"resourceType": "Consent", "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
            "patient": {"reference": f"Patient/{patient_id}"}, "dateTime": "2024-05-01T08:00:00Z",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": provision}


async def share_record(records: Any, patient_id: str, organization: str) -> str:
    """Share a patient's records with `organization` as an accepted referral does: the patient's Consent and a
    grant in the record, from now on. Returns the Consent's reference."""
    written, _ = await records.create("Consent", consent(patient_id))
    source = f"referral/test-{uuid.uuid4().hex[:8]}"
    await records.share(source, f"Patient/{patient_id}", organization, f"Consent/{written.resource_id}",
                        dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), None)
    return f"Consent/{written.resource_id}"


async def create(client: httpx.AsyncClient, resource: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await client.post(f"/fhir/{resource['resourceType']}", json=resource,
                                 headers={**JSON_HEADERS, **headers})
    assert response.status_code == 201, response.text
    return response.json()


async def search(client: httpx.AsyncClient, path: str, params: Any = None, **headers: str) -> dict[str, Any]:
    response = await client.get(f"/fhir/{path}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    return bundle


def ids(bundle: dict[str, Any], mode: str | None = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])
            if mode is None or e.get("search", {}).get("mode") == mode]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    """A Bundle link as path+query, ready for the test client; None when absent."""
    for item in bundle.get("link", []):
        if item["relation"] == relation:
            parts = urlsplit(item["url"])
            return parts.path + ("?" + parts.query if parts.query else "")
    return None


async def walk_pages(client: httpx.AsyncClient, first: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page from `first` on, following `next` links."""
    pages = [first]
    while (nxt := link(pages[-1], "next")) is not None:
        assert len(pages) < 200, "next links do not end"
        response = await client.get(nxt)
        assert response.status_code == 200, response.text
        pages.append(response.json())
    return pages


def server_now() -> str:
    """The current instant in FHIR form (the server runs in this process, on this clock)."""
    moment = datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def assert_outcome(response: httpx.Response, status: int, code: str | None = None, *,
                   expression: str | None = None, diagnostics: str | None = None) -> dict[str, Any]:
    """The response is `status` with an OperationOutcome whose first error issue has `code` (and the rest)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(FHIR_JSON), response.headers["content-type"]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    assert outcome["issue"], outcome
    for issue in outcome["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information"), issue
        assert issue["code"], issue
        assert isinstance(issue.get("diagnostics"), str) and issue["diagnostics"], issue
    issue = outcome["issue"][0]
    assert issue["severity"] in ("error", "fatal"), issue
    if code is not None:
        assert issue["code"] == code, outcome
    if expression is not None:
        assert any(expression in i.get("expression", []) for i in outcome["issue"]), outcome
    if diagnostics is not None:
        assert any(diagnostics.lower() in i["diagnostics"].lower() for i in outcome["issue"]), outcome
    return outcome
