"""Creating a user of any role together with the FHIR resource they stand for (for `qilu user add` and the demo)."""

from __future__ import annotations

from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase

from ehr.models import RecordError
from ehr.service import RecordService
from ehr.store import RecordStore
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, PRACTITIONER_NUMBER_SYSTEM, parse_national_id
from qilu.identity import Role, User, UserDirectory


class AccountError(ValueError):
    pass


async def _find_one(records: RecordService, resource_type: str, params: list[tuple[str, str]]) -> dict | None:
    bundle = await records.search(resource_type, params)
    matches = [e["resource"] for e in bundle.get("entry") or [] if e.get("search", {}).get("mode") == "match"]
    return matches[0] if matches else None


async def _ensure_patient(records: RecordService, national_id: str, name: str, organization: str | None) -> str:
    try:
        parsed = parse_national_id(national_id)
    except ValueError as exc:
        raise AccountError(f"the login of a patient is a valid national ID number: {exc}") from None
    existing = await _find_one(records, "Patient", [("identifier", f"{NATIONAL_ID_SYSTEM}|{parsed.value}")])
    if existing:
        return f"Patient/{existing['id']}"
    patient: dict[str, Any] = {
        "resourceType": "Patient", "active": True,
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": parsed.value}],
        "name": [{"use": "official", "text": name, "family": name[:1], "given": [name[1:]] if len(name) > 1 else []}],
        "gender": parsed.sex, "birthDate": parsed.birth_date.isoformat(),
    }
    if organization:
        patient["managingOrganization"] = {"reference": organization}
    written, _ = await records.create("Patient", patient)
    return f"Patient/{written.resource_id}"


async def _ensure_practitioner_role(records: RecordService, number: str, name: str, organization: str,
                                    specialty: str | None) -> tuple[str, str]:
    org_id = organization.removeprefix("Organization/")
    try:
        await records.read("Organization", org_id)
    except RecordError:
        raise AccountError(f"Organization/{org_id} is not in the directory") from None
    practitioner = await _find_one(records, "Practitioner", [("identifier", f"{PRACTITIONER_NUMBER_SYSTEM}|{number}")])
    if practitioner is None:
        written, _ = await records.create("Practitioner", {
            "resourceType": "Practitioner", "active": True,
            "identifier": [{"system": PRACTITIONER_NUMBER_SYSTEM, "value": number}],
            "name": [{"text": name, "family": name[:1], "given": [name[1:]] if len(name) > 1 else []}]})
        practitioner = written.resource
    practitioner_ref = f"Practitioner/{practitioner['id']}"
    role = await _find_one(records, "PractitionerRole", [("practitioner", practitioner_ref),
                                                         ("organization", f"Organization/{org_id}")])
    if role is None:
        resource: dict[str, Any] = {
            "resourceType": "PractitionerRole", "active": True,
            "practitioner": {"reference": practitioner_ref, "display": name},
            "organization": {"reference": f"Organization/{org_id}"},
            "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role",
                                  "code": "doctor", "display": "Doctor"}]}]}
        if specialty:
            resource["specialty"] = [{"text": specialty}]
        written, _ = await records.create("PractitionerRole", resource)
        role = written.resource
    return f"PractitionerRole/{role['id']}", practitioner_ref


async def add_user(db: AsyncIOMotorDatabase, base_url: str, *, role: Role, login: str, password: str, name: str,
                   organization: str | None = None, specialty: str | None = None) -> User:
    """Create the user, and the Patient or Practitioner + PractitionerRole behind it when missing."""
    records = RecordService(RecordStore(db), base_url)
    users = UserDirectory(db)
    if await users.by_login(login):
        raise AccountError("a user with this login exists already")
    organization = f"Organization/{organization.removeprefix('Organization/')}" if organization else None
    if role == "patient":
        fhir_user = await _ensure_patient(records, login, name, organization)
        return await users.add(login=login, password=password, role=role, display_name=name, fhir_user=fhir_user)
    if role == "practitioner":
        if not organization:
            raise AccountError("a practitioner works at an organization: give --organization")
        fhir_user, practitioner = await _ensure_practitioner_role(records, login, name, organization, specialty)
        return await users.add(login=login, password=password, role=role, display_name=name, fhir_user=fhir_user,
                               organization=organization, practitioner=practitioner)
    return await users.add(login=login, password=password, role=role, display_name=name)
