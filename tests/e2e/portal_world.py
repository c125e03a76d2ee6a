"""The e2e tests' province: a county hospital and two tertiary ones (the referral tests' world), and a patient of
the county hospital with a year of hypertension and diabetes follow-up to chart, refer and consult about."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "referral"))

from ehr.service import RecordService  # noqa: E402
from ehr.store import RecordStore  # noqa: E402
from qilu import demo  # noqa: E402
from qilu.accounts import add_user  # noqa: E402
from qilu.identity import User  # noqa: E402
from referral_world import BASE, ReferralWorld, build_referral_world, consent  # noqa: E402
from sample_records import PASSWORD  # noqa: E402

MONTHS = 12


@dataclass
class PortalWorld:
    referral: ReferralWorld
    admin: User
    patient_name: str
    national_id: str
    hypertension: str  # "Condition/.."
    blood_pressures: int

    @property
    def doctor(self) -> User:
        return self.referral.county_doctor

    @property
    def specialist(self) -> User:
        return self.referral.jinan_specialist

    @property
    def patient(self) -> User:
        return self.referral.patient

    @property
    def patient_id(self) -> str:
        return self.patient.fhir_user.removeprefix("Patient/")


def _ref(reference: str) -> dict[str, Any]:
    kind, _, ident = reference.partition("/")
    return {"resourceType": kind, "id": ident}


def follow_up_records(patient: str, organization: str, doctor: str, today: dt.date) -> list[dict[str, Any]]:
    """Monthly visits over a year: rising blood pressure, fasting glucose, HbA1c every three months, two
    medicines, an allergy; built with the demo's own builders so they are shaped like the demo's records."""
    pid = patient.removeprefix("Patient/")
    person, org, gp = _ref(patient), _ref(organization), _ref(doctor)
    hypertension = demo.condition(pid, person, "I10", today - dt.timedelta(days=900), gp)
    diabetes = demo.condition(pid, person, "E11.9", today - dt.timedelta(days=700), gp)
    out = [hypertension, diabetes]
    for n in range(1, MONTHS + 1):
        day = demo.add_months(today, n - MONTHS - 1)
        start = demo.at(day, 9, 0)
        enc = demo.encounter(f"{pid}-enc-{n:02d}", person, org, gp, start, ["I10", "E11.9"],
                             "慢病随访 chronic disease follow-up")
        out.append(enc)
        out.append(demo.blood_pressure(f"{pid}-bp-{n:02d}", person, enc, gp, demo.shift_minutes(start, 5),
                                       150 + 2 * n, 92 + n // 2))
        drawn = demo.shift_minutes(start, -60)
        out.append(demo.lab_observation(f"{pid}-glu-{n:02d}", person, enc, drawn,
                                        demo.loinc("15074-8", "Glucose [Moles/volume] in Blood", "空腹血糖"),
                                        round(8.0 + 0.2 * n, 1), "mmol/L", 3.9, 6.1))
        if n % 3 == 1:
            out.append(demo.lab_observation(f"{pid}-hba1c-{n:02d}", person, enc, drawn,
                                            demo.loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood",
                                                       "糖化血红蛋白"), 7.5 + 0.1 * n, "%", 4.0, 6.0))
    first = demo.at(demo.add_months(today, -MONTHS), 9, 0)
    out.append(demo.medication_request(pid, person, "amlodipine", first, gp, hypertension))
    out.append(demo.medication_request(pid, person, "metformin", first, gp, diabetes))
    out.append({"resourceType": "AllergyIntolerance", "id": f"{pid}-allergy-penicillin",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                         "allergyintolerance-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                             "allergyintolerance-verification",
                                                   "code": "confirmed"}]},
                "type": "allergy", "category": ["medication"], "criticality": "high",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "764146007",
                                     "display": "Penicillin"}], "text": "青霉素"},
                "patient": {"reference": patient}, "recordedDate": first,
                "reaction": [{"manifestation": [{"text": "皮疹"}]}]})
    out.append({**consent(pid), "id": f"{pid}-consent"})
    return out


async def build_portal_world(db) -> PortalWorld:
    world = await build_referral_world(db)
    records = RecordService(RecordStore(db), BASE)
    resources = follow_up_records(world.patient.fhir_user, world.county, world.county_doctor.practitioner,
                                  dt.date.today())
    for resource in resources:
        await records.create(resource["resourceType"], resource, resource_id=resource["id"])
    admin = await add_user(db, BASE, role="admin", login=f"adm{uuid.uuid4().hex[:8]}", password=PASSWORD,
                           name="系统管理员")
    pid = world.patient.fhir_user.removeprefix("Patient/")
    return PortalWorld(referral=world, admin=admin, patient_name="刘芳", national_id=world.patient.login,
                       hypertension=f"Condition/{pid}-cond-i10", blood_pressures=MONTHS)
