"""A small directory of hospitals and the people of one referral test module, written to the record as the system."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ehr.service import RecordService
from ehr.store import RecordStore
from fhir_profiles.extensions import (
    CAPABILITY_SYSTEM,
    accepting_referrals_extension,
    division_code_extension,
    hospital_tier_extension,
    medical_alliance_extension,
    referral_capacity_extension,
)
from qilu.accounts import add_user
from qilu.identity import User
from referral.directory import SPECIALTY_SYSTEM
from referral.store import ReferralFeed
from sample_records import PASSWORD, condition, consent, new_national_id, observation, organization  # noqa: F401 - consent is re-exported

BASE = "http://testserver/fhir"
SPECIALTY = "cardiology"
PINGYIN, LIXIA, SHINAN = "370124", "370102", "370202"  # 平阴县 (济南), 历下区 (济南), 市南区 (青岛)


@dataclass
class ReferralWorld:
    """One county hospital, two tertiary hospitals (Jinan, same alliance; Qingdao, another), their people.

    `specialty` is this module's own specialty code (cardiology, suffixed), offered by its three hospitals:
    the session shares one database, so routing and escalation then only ever see this module's hospitals.
    """

    tag: str
    specialty: str
    county: str
    jinan: str
    qingdao: str
    county_doctor: User | None = None
    jinan_specialist: User | None = None
    qingdao_specialist: User | None = None
    patient: User | None = None
    emails: dict[str, str] | None = None

    capabilities = ("pci",)


def _org(name: str, level: int, grade: str, division: str, alliance: str, email: str,
         city: str, district: str) -> dict[str, Any]:
    return organization(name=name, active=True, extension=[
        hospital_tier_extension(level, grade), division_code_extension(division), medical_alliance_extension(alliance)],
        telecom=[{"system": "email", "value": email}, {"system": "phone", "value": "0531-6878 0000"}],
        address=[{k: v for k, v in {"state": "山东省", "city": city, "district": district}.items() if v}])


def _service(org: str, name: str, specialty: str, capabilities: list[str], capacity: int = 20) -> dict[str, Any]:
    return {"resourceType": "HealthcareService", "active": True, "providedBy": {"reference": org}, "name": name,
            "specialty": [{"coding": [{"system": SPECIALTY_SYSTEM, "code": specialty, "display": "心血管内科"}]}],
            "characteristic": [{"coding": [{"system": CAPABILITY_SYSTEM, "code": c}]} for c in capabilities],
            "extension": [referral_capacity_extension(capacity), accepting_referrals_extension(True)]}


async def build_referral_world(db, *, with_users: bool = True) -> ReferralWorld:
    records = RecordService(RecordStore(db), BASE)
    tag = uuid.uuid4().hex[:8]
    specialty = f"{SPECIALTY}-{tag}"
    emails = {"county": f"county-{tag}@example.org", "jinan": f"jinan-{tag}@example.org",
              "qingdao": f"qingdao-{tag}@example.org"}
    refs = {}
    for key, (name, level, grade, division, alliance, city, district) in {
        "county": (f"平阴县人民医院 {tag}", 2, "乙", PINGYIN, f"jinan-alliance-{tag}", "济南市", "平阴县"),
        "jinan": (f"山东省立医院 {tag}", 3, "甲", LIXIA, f"jinan-alliance-{tag}", "济南市", "历下区"),
        "qingdao": (f"青岛大学附属医院 {tag}", 3, "甲", SHINAN, f"qingdao-alliance-{tag}", "青岛市", "市南区"),
    }.items():
        written, _ = await records.create("Organization", _org(name, level, grade, division, alliance, emails[key],
                                                               city, district))
        refs[key] = f"Organization/{written.resource_id}"
    await records.create("HealthcareService", _service(refs["county"], "心内科 (county)", specialty, ["chronic-care"]))
    for key in ("jinan", "qingdao"):
        await records.create("HealthcareService", _service(refs[key], f"心内科 {key}", specialty, ["pci"]))
    world = ReferralWorld(tag=tag, specialty=specialty, county=refs["county"], jinan=refs["jinan"],
                          qingdao=refs["qingdao"], emails=emails)
    if with_users:
        async def person(role: str, login: str, name: str, org: str | None) -> User:
            return await add_user(db, BASE, role=role, login=login, password=PASSWORD, name=name, organization=org)

        world.county_doctor = await person("practitioner", f"CTY{tag}", "王县医", world.county)
        world.jinan_specialist = await person("practitioner", f"JNS{tag}", "李专家", world.jinan)
        world.qingdao_specialist = await person("practitioner", f"QDS{tag}", "赵专家", world.qingdao)
        world.patient = await person("patient", new_national_id(), "刘芳", world.county)
    return world


async def referral_world_for(app) -> ReferralWorld:
    """A world of its own for a test module, and the app told of its hospitals: the app holds the directory
    for half a minute, and these were only just written."""
    world = await build_referral_world(app.state.db)
    app.state.referrals.directory.invalidate()
    return world


async def add_hospital(db, name: str, division: str, alliance: str, specialty: str, *, level: int = 3,
                       city: str = "", district: str = "") -> str:
    """One more hospital with a department of `specialty` (PCI capable); returns its Organization reference."""
    records = RecordService(RecordStore(db), BASE)
    written, _ = await records.create("Organization", _org(name, level, "甲", division, alliance,
                                                           f"h-{uuid.uuid4().hex[:8]}@example.org", city, district))
    reference = f"Organization/{written.resource_id}"
    await records.create("HealthcareService", _service(reference, f"{name} department", specialty, ["pci"]))
    return reference


def discharge_summary(patient_id: str, author: str, text: str = "PCI of the LAD, stent placed") -> dict[str, Any]:
    return {"resourceType": "Composition", "status": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "date": "2024-05-03T10:00:00Z",
            "author": [{"reference": author}], "title": "出院小结 Discharge summary",
            "section": [{"title": "Hospital course", "text": {
                "status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}}]}


@dataclass
class Case:
    """A patient of the county hospital with what a referral needs: a reason, a record to share, a Consent."""

    patient: str  # "Patient/.."
    condition: str
    observation: str
    consent: str

    @property
    def patient_id(self) -> str:
        return self.patient.removeprefix("Patient/")


async def new_case(db, world: ReferralWorld, patient: str | None = None) -> Case:
    """A case written as the system; a new patient of the county hospital unless `patient` is given."""
    records = RecordService(RecordStore(db), BASE)
    if patient is None:
        written, _ = await records.create("Patient", {
            "resourceType": "Patient", "active": True, "name": [{"text": "孙强", "family": "孙", "given": ["强"]}],
            "gender": "male", "birthDate": "1960-04-02", "managingOrganization": {"reference": world.county}})
        patient = f"Patient/{written.resource_id}"
    pid = patient.removeprefix("Patient/")
    made = {}
    for key, resource in (("condition", condition(pid, code="I21.0")), ("observation", observation(pid)),
                          ("consent", consent(pid))):
        written, _ = await records.create(resource["resourceType"], resource)
        made[key] = f"{resource['resourceType']}/{written.resource_id}"
    return Case(patient=patient, **made)


def referral_body(world: ReferralWorld, case: Case, **overrides: Any) -> dict[str, Any]:
    body = {"patient": case.patient, "direction": "up", "specialty": world.specialty,
            "capabilities": list(world.capabilities),
            "priority": "routine", "reason": case.condition, "supporting": [case.observation],
            "consent": case.consent, "note": "STEMI, needs PCI"}
    body.update(overrides)
    return body


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem JSON of `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem = response.json()
    assert problem["status"] == status and problem["title"], problem
    return problem


async def read_feed_until(feed: ReferralFeed, after: str, enough: Callable[[list[dict[str, Any]]], bool],
                          timeout: float = 60.0) -> list[dict[str, Any]]:
    """The events appended to the live feed after position `after`, read until `enough(events)` holds."""
    heard: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not enough(heard):
        if time.monotonic() > deadline:
            raise AssertionError(f"the live feed did not bring what was awaited; heard {heard}")
        for after, event in await feed.read(after, 1000):
            heard.append(event)
    return heard
