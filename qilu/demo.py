"""The demo province: Shandong's hospitals and doctors and ~300 synthetic patients with believable records."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from fhir_profiles.extensions import (
    CAPABILITY_SYSTEM,
    CODE_SYSTEM_BASE,
    division_code_extension,
    hospital_tier_extension,
    medical_alliance_extension,
)
from fhir_profiles.identifiers import (
    CHINA_STANDARD_TIME,
    NATIONAL_ID_SYSTEM,
    PRACTITIONER_NUMBER_SYSTEM,
    USCC_SYSTEM,
    make_national_id,
    make_uscc,
    mask_name,
    mask_national_id,
)
from fhir_profiles.valuesets import ICD10_SYSTEM
from qilu.settings import Settings

log = structlog.get_logger(__name__)

# A copy of the team's shared/data file, shipped with the package so a fresh clone runs the demo.
DIRECTORY_PATH = Path(__file__).resolve().parent / "data" / "shandong-directory.json"

SEED = 2026
PATIENT_COUNT = 300
# A fixed "today" for the records: the data must be the same whichever day the demo is seeded.
RECORDS_END = dt.date(2026, 10, 20)

# Code systems the demo uses. Specialties have no national code system Qilu adopted yet, so they are
# Qilu codes named after the directory's specialty keys (the same words the routing engine reads).
SPECIALTY_SYSTEM = CODE_SYSTEM_BASE + "specialty"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"
# Medicines carry an RxNorm ingredient code (what FHIR examples and most tools read) and the WHO ATC
# code (what Chinese formularies classify by); the text is the Chinese product name.
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
ORGANIZATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"
PRACTITIONER_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/practitioner-role"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DIAGNOSTIC_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

SPECIALTY_NAMES = {
    "cardiology": "心血管内科", "neurology": "神经内科", "oncology": "肿瘤科", "nephrology": "肾内科",
    "endocrinology": "内分泌科", "respiratory": "呼吸内科", "general-surgery": "普外科", "orthopedics": "骨科",
    "obstetrics": "产科", "pediatrics": "儿科", "neonatology": "新生儿科", "rehabilitation": "康复医学科",
    "emergency": "急诊科",
}
# Which capability each department of a tertiary hospital offers; county departments get the basic ones.
TERTIARY_CAPABILITIES = {
    "cardiology": ["pci", "chronic-care"], "neurology": ["stroke-thrombolysis", "thrombectomy"],
    "oncology": ["chemotherapy"], "nephrology": ["dialysis"], "endocrinology": ["chronic-care"],
    "neonatology": ["neonatal-icu"], "rehabilitation": ["rehab-stroke"],
}
COUNTY_SPECIALTIES = ["cardiology", "neurology", "endocrinology", "respiratory", "general-surgery", "obstetrics",
                      "pediatrics", "rehabilitation", "emergency"]
COUNTY_CAPABILITIES = {"cardiology": ["chronic-care"], "endocrinology": ["chronic-care"],
                       "rehabilitation": ["rehab-stroke"]}
# Specialists per tertiary hospital: cardiology and neurology everywhere (the referrals that are urgent),
# then one more department in turn.
EXTRA_SPECIALIST_ROTATION = ["endocrinology", "nephrology", "oncology", "respiratory", "neonatology"]

CONDITIONS = {
    "I10": ("原发性高血压", "Essential (primary) hypertension"),
    "E11.9": ("2型糖尿病，不伴有并发症", "Type 2 diabetes mellitus without complications"),
    "I63.9": ("脑梗死", "Cerebral infarction, unspecified"),
    "I21.0": ("急性前壁ST段抬高型心肌梗死", "Acute transmural myocardial infarction of anterior wall"),
    "J44.9": ("慢性阻塞性肺疾病", "Chronic obstructive pulmonary disease, unspecified"),
    "Z00.0": ("一般医学检查", "General medical examination"),
}
MEDICINES = {
    # key: (RxNorm ingredient, name, ATC, Chinese product text, dose mg, doses per day, dosage text)
    "amlodipine": ("17767", "amlodipine", "C08CA01", "苯磺酸氨氯地平片 5mg", 5, 1, "口服，每日1次，每次5mg"),
    "metformin": ("6809", "metformin", "A10BA02", "盐酸二甲双胍片 0.5g", 500, 2, "口服，每日2次，每次0.5g，随餐"),
    "aspirin": ("1191", "aspirin", "B01AC06", "阿司匹林肠溶片 100mg", 100, 1, "口服，每日1次，每次100mg"),
    "atorvastatin": ("83367", "atorvastatin", "C10AA05", "阿托伐他汀钙片 20mg", 20, 1, "口服，每晚1次，每次20mg"),
}

SURNAMES = ("王张李刘孙杨徐高赵陈马孔颜孟于董田吕周吴郑朱胡郭何林宋韩曹冯曾彭许袁邓程魏崔史贾石丁任姜范梁"
            "谢牛葛侯邵秦毛段薛尹")
MALE_GIVEN = "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宁建国志峰海东文成永庆德福玉山振兴立新俊"
FEMALE_GIVEN = "秀英芳娜敏静丽艳娟霞玲桂兰凤红梅琳雪婷颖洁燕萍慧春荣淑珍翠云"


# --- the directory -------------------------------------------------------------------------------


def load_directory(path: Path | None = None) -> dict[str, Any]:
    """The province directory JSON (cities, counties, tertiary hospitals, specialties, capabilities)."""
    return json.loads((path or DIRECTORY_PATH).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Hospital:
    id: str
    name: str
    name_en: str | None
    tertiary: bool
    division_code: str
    city_code: str
    city_name: str
    county_name: str | None
    tier: tuple[int, str]
    alliance: str | None


@dataclass(frozen=True)
class DemoPerson:
    """Someone the operator can act as in the demo; identity numbers here are synthetic."""

    role: str  # "county-doctor" | "specialist" | "patient"
    resource: str  # "Practitioner/..." or "Patient/..."
    name: str
    identifier_system: str
    identifier: str
    organization: str  # "Organization/..."
    organization_name: str

    def __repr__(self) -> str:
        # Reprs end up in logs and tracebacks; the name and the ID number must not.
        return (f"DemoPerson(role={self.role!r}, resource={self.resource!r}, name={mask_name(self.name)!r}, "
                f"identifier={mask_national_id(self.identifier)!r})")


@dataclass(frozen=True)
class DemoPeople:
    county_doctor: DemoPerson
    specialist: DemoPerson
    patient: DemoPerson


# The people the demo points the operator at (logins will be built on these).
DEMO_COUNTY_DOCTOR_ID = "prac-370124-county-1"  # 平阴县人民医院, a county of Jinan
DEMO_SPECIALIST_ID = "prac-370100-tertiary-1-cardiology"  # 山东大学齐鲁医院, the alliance lead
DEMO_PATIENT_ID = "pat-00001"  # 平阴县, uncontrolled hypertension with type 2 diabetes
DEMO_ADMIN_LOGIN = "admin"
DEMO_PASSWORD = "qilu-demo"  # a demo on loopback; printed to the operator's terminal, never logged


@dataclass
class DemoPlan:
    """Everything the demo writes, in groups that belong together; a group's first resource is its marker."""

    hospital_groups: list[list[dict[str, Any]]]
    patient_groups: list[list[dict[str, Any]]]
    people: DemoPeople

    @property
    def groups(self) -> list[list[dict[str, Any]]]:
        return self.hospital_groups + self.patient_groups


@dataclass
class DemoSummary:
    """What one seeding run wrote and found already there, and whom to try the demo as."""

    written: dict[str, int]
    present: dict[str, int]
    elapsed_s: float
    people: DemoPeople
    database: str = ""

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    @property
    def total_present(self) -> int:
        return sum(self.present.values())

    def describe(self) -> str:
        types = sorted(set(self.written) | set(self.present))
        counts = ", ".join(f"{t} {self.written.get(t, 0)}/{self.written.get(t, 0) + self.present.get(t, 0)}"
                           for t in types)
        state = "nothing new to write" if not self.total_written else f"wrote {self.total_written} resources"
        return "\n".join([
            f"demo data in database {self.database!r}: {state}, {self.total_present} already there "
            f"({self.elapsed_s:.1f} s)",
            f"  written/total per type: {counts}",
        ])

    def logins(self) -> list[str]:
        p = self.people
        return [
            f"county doctor: {p.county_doctor.name}, {p.county_doctor.organization_name}, practitioner number "
            f"{p.county_doctor.identifier} ({p.county_doctor.resource})",
            f"specialist:    {p.specialist.name}, {p.specialist.organization_name}, practitioner number "
            f"{p.specialist.identifier} ({p.specialist.resource})",
            f"patient:       {p.patient.name}, national ID {p.patient.identifier} ({p.patient.resource}, "
            f"managed by {p.patient.organization_name})",
            f"administrator: login {DEMO_ADMIN_LOGIN}",
            f"password of every demo login: {DEMO_PASSWORD}",
        ]


# --- small builders ------------------------------------------------------------------------------


def ref(resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def at(day: dt.date, hour: int, minute: int) -> str:
    """A FHIR dateTime in China Standard Time (+08:00), as hospitals record them."""
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=CHINA_STANDARD_TIME).isoformat()


def shift_minutes(text: str, minutes: int) -> str:
    return (dt.datetime.fromisoformat(text) + dt.timedelta(minutes=minutes)).isoformat()


def add_months(day: dt.date, months: int) -> dt.date:
    month_index = day.year * 12 + day.month - 1 + months
    year, month = divmod(month_index, 12)
    return dt.date(year, month + 1, min(day.day, 28))


def specialty_concept(key: str) -> dict[str, Any]:
    return {"coding": [{"system": SPECIALTY_SYSTEM, "code": key, "display": SPECIALTY_NAMES.get(key, key)}],
            "text": SPECIALTY_NAMES.get(key, key)}


def icd10(code: str) -> dict[str, Any]:
    chinese, english = CONDITIONS[code]
    return {"coding": [{"system": ICD10_SYSTEM, "code": code, "display": english}], "text": chinese}


def loinc(code: str, display: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": text}


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def person_name(rng: random.Random, sex: str) -> tuple[str, str]:
    family = rng.choice(SURNAMES)
    pool = MALE_GIVEN if sex == "male" else FEMALE_GIVEN
    given = "".join(rng.choice(pool) for _ in range(rng.choice((1, 2, 2))))
    return family, given


def human_name(family: str, given: str) -> dict[str, Any]:
    # Chinese names are written family name first, without a space; `text` is the name as written.
    return {"use": "official", "text": family + given, "family": family, "given": [given]}


# --- hospitals, services, doctors ----------------------------------------------------------------


def build_hospitals(directory: dict[str, Any], rng: random.Random) -> list[Hospital]:
    cities = {city["code"]: city for city in directory["cities"]}
    hospitals: list[Hospital] = []
    lead_alliance: dict[str, str] = {}
    per_city: Counter[str] = Counter()
    for entry in directory["tertiary_hospitals"]:
        city = entry["city"]
        per_city[city] += 1
        n = per_city[city]
        alliance = f"alliance-{city}-{n}"
        # The first tertiary hospital of a city leads the alliance its counties join.
        lead_alliance.setdefault(city, alliance)
        hospitals.append(Hospital(
            id=f"org-{city}-tertiary-{n}", name=entry["name"], name_en=entry.get("name_en"), tertiary=True,
            division_code=city, city_code=city, city_name=cities[city]["name"], county_name=None,
            tier=(3, "甲"), alliance=alliance))
    for county in directory["counties"]:
        city = county["city"]
        # Illustrative tiers (the directory says so): most county people's hospitals are 二级甲等.
        grade = "甲" if rng.random() < 0.7 else "乙"
        hospitals.append(Hospital(
            id=f"org-{county['code']}-county", name=f"{county['name']}人民医院", name_en=None, tertiary=False,
            division_code=county["code"], city_code=city, city_name=cities[city]["name"],
            county_name=county["name"], tier=(2, grade), alliance=lead_alliance.get(city)))
    return hospitals


def organization_resource(hospital: Hospital, province: str) -> dict[str, Any]:
    extensions = [hospital_tier_extension(*hospital.tier), division_code_extension(hospital.division_code)]
    if hospital.alliance:
        extensions.append(medical_alliance_extension(hospital.alliance))
    address: dict[str, Any] = {"use": "work", "type": "physical", "state": province, "city": hospital.city_name,
                               "country": "CN",
                               "text": province + hospital.city_name + (hospital.county_name or "")}
    if hospital.county_name:
        address["district"] = hospital.county_name
    resource: dict[str, Any] = {
        "resourceType": "Organization", "id": hospital.id, "extension": extensions,
        "identifier": [{"use": "official", "system": USCC_SYSTEM,
                        "value": make_uscc(hospital.id, region_code=hospital.division_code)}],
        "active": True,
        "type": [{"coding": [{"system": ORGANIZATION_TYPE_SYSTEM, "code": "prov",
                              "display": "Healthcare Provider"}], "text": "医院"}],
        "name": hospital.name, "address": [address],
    }
    if hospital.name_en:
        resource["alias"] = [hospital.name_en]
    return resource


def healthcare_service(hospital: Hospital, specialty: str, capabilities: list[str],
                       capability_text: dict[str, str]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "HealthcareService", "id": f"hs-{hospital.id.removeprefix('org-')}-{specialty}",
        "active": True, "providedBy": ref({"resourceType": "Organization", "id": hospital.id}),
        "specialty": [specialty_concept(specialty)],
        "name": f"{hospital.name}{SPECIALTY_NAMES.get(specialty, specialty)}",
    }
    if capabilities:
        resource["characteristic"] = [
            {"coding": [{"system": CAPABILITY_SYSTEM, "code": code, "display": capability_text.get(code, code)}]}
            for code in capabilities]
    return resource


def practitioner_pair(hospital: Hospital, practitioner_id: str, number: str, specialty: str,
                      rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    sex = rng.choice(("male", "female"))
    family, given = person_name(rng, sex)
    practitioner = {
        "resourceType": "Practitioner", "id": practitioner_id, "active": True,
        "identifier": [{"use": "official", "system": PRACTITIONER_NUMBER_SYSTEM, "value": number}],
        "name": [human_name(family, given)], "gender": sex,
    }
    role = {
        "resourceType": "PractitionerRole", "id": "role-" + practitioner_id.removeprefix("prac-"), "active": True,
        "practitioner": ref(practitioner), "organization": ref({"resourceType": "Organization", "id": hospital.id}),
        "code": [{"coding": [{"system": PRACTITIONER_ROLE_SYSTEM, "code": "doctor", "display": "Doctor"}],
                  "text": "主治医师" if not hospital.tertiary else "主任医师"}],
        "specialty": [specialty_concept(specialty)],
        "healthcareService": [{"reference": f"HealthcareService/hs-{hospital.id.removeprefix('org-')}-{specialty}"}],
    }
    return practitioner, role


def practitioner_number(hospital: Hospital, sequence: int) -> str:
    # Shaped like the 15-digit 医师执业证书编码: a prefix, the hospital's division code, a sequence.
    return f"11{hospital.division_code}{sequence:07d}"


def build_hospital_groups(directory: dict[str, Any], hospitals: list[Hospital], rng: random.Random
                          ) -> tuple[list[list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """One group per hospital (Organization, HealthcareServices, Practitioners, PractitionerRoles);
    also the county doctors of each county hospital, for the patients' records."""
    province = directory["province"]["name"]
    offered = [s for s in directory["specialties"]]
    capability_text = directory["capabilities"]
    groups: list[list[dict[str, Any]]] = []
    county_doctors: dict[str, list[dict[str, Any]]] = {}
    sequence = 0
    tertiary_index = 0
    for hospital in hospitals:
        group = [organization_resource(hospital, province)]
        if hospital.tertiary:
            for specialty in offered:
                group.append(healthcare_service(hospital, specialty, TERTIARY_CAPABILITIES.get(specialty, []),
                                                capability_text))
            extra = EXTRA_SPECIALIST_ROTATION[tertiary_index % len(EXTRA_SPECIALIST_ROTATION)]
            tertiary_index += 1
            doctors = ["cardiology", "neurology", extra]
        else:
            specialties = list(COUNTY_SPECIALTIES)
            capabilities = {k: list(v) for k, v in COUNTY_CAPABILITIES.items()}
            if hospital.tier[1] == "甲":
                # Illustrative: the better county hospitals run a stroke centre and a dialysis unit.
                capabilities["neurology"] = ["stroke-thrombolysis"]
                specialties.append("nephrology")
                capabilities["nephrology"] = ["dialysis"]
            for specialty in specialties:
                group.append(healthcare_service(hospital, specialty, capabilities.get(specialty, []),
                                                capability_text))
            # County doctors do the chronic-disease follow-up: one on hypertension, one on diabetes.
            doctors = ["cardiology", "endocrinology"]
        roles = []
        for n, specialty in enumerate(doctors, start=1):
            sequence += 1
            suffix = f"{specialty}" if hospital.tertiary else f"{n}"
            practitioner, role = practitioner_pair(
                hospital, f"prac-{hospital.id.removeprefix('org-')}-{suffix}", practitioner_number(hospital, sequence),
                specialty, rng)
            group.append(practitioner)
            roles.append(role)
            if not hospital.tertiary:
                county_doctors.setdefault(hospital.id, []).append(practitioner)
        groups.append(group + roles)
    return groups, county_doctors


# --- patients and their records ------------------------------------------------------------------


@dataclass
class PatientProfile:
    """The clinical story of one synthetic patient, drawn before any resource is built."""

    hypertension: bool = False
    hypertension_controlled: bool = True
    diabetes: bool = False
    diabetes_controlled: bool = True
    stroke: bool = False
    stemi: bool = False
    copd: bool = False
    months: int = 0
    visit_day: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def draw_birth_date(rng: random.Random) -> dt.date:
    # County clinics see mostly older people: weight the years towards 1940-1970.
    year = rng.randint(1940, 1970) if rng.random() < 0.6 else rng.randint(1971, 2010)
    return dt.date(year, 1, 1) + dt.timedelta(days=rng.randrange(365))


def age_on(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def draw_profile(rng: random.Random, age: int, sex: str) -> PatientProfile:
    p = PatientProfile()
    # Rough Shandong prevalences by age: hypertension rises to ~60% past 70, diabetes to ~25%.
    p.hypertension = rng.random() < min(0.65, max(0.03, 0.012 * (age - 25)))
    p.diabetes = rng.random() < min(0.3, max(0.01, 0.006 * (age - 30))) + (0.08 if p.hypertension else 0)
    p.hypertension_controlled = rng.random() < 0.6
    p.diabetes_controlled = rng.random() < 0.55
    p.stroke = p.hypertension and age >= 50 and rng.random() < 0.1
    p.stemi = p.hypertension and age >= 45 and rng.random() < (0.07 if sex == "male" else 0.03)
    p.copd = age >= 50 and rng.random() < (0.12 if sex == "male" else 0.05)
    p.months = rng.randint(12, 18)
    p.visit_day = rng.randint(1, 28)
    return p


def condition(pid: str, patient: dict[str, Any], code: str, onset: dt.date, doctor: dict[str, Any],
              status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition", "id": f"{pid}-cond-{code.replace('.', '')}".lower(),
        "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL_SYSTEM, "code": status}]},
        "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION_SYSTEM, "code": "confirmed"}]},
        "category": [{"coding": [{"system": CONDITION_CATEGORY_SYSTEM, "code": "problem-list-item",
                                  "display": "Problem List Item"}]}],
        "code": icd10(code), "subject": ref(patient),
        "onsetDateTime": at(onset, 9, 0), "recordedDate": at(onset, 10, 0), "recorder": ref(doctor),
    }


def medication_request(pid: str, patient: dict[str, Any], key: str, authored: str, doctor: dict[str, Any],
                       reason: dict[str, Any]) -> dict[str, Any]:
    rxnorm, name, atc, text, dose, per_day, instruction = MEDICINES[key]
    return {
        "resourceType": "MedicationRequest", "id": f"{pid}-med-{key}", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm, "display": name},
                                                 {"system": ATC, "code": atc, "display": name}], "text": text},
        "subject": ref(patient), "authoredOn": authored, "requester": ref(doctor), "reasonReference": [ref(reason)],
        "dosageInstruction": [{"text": instruction, "route": {"text": "口服"},
                               "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                               "doseAndRate": [{"doseQuantity": quantity(dose, "mg")}]}],
    }


def encounter(eid: str, patient: dict[str, Any], org: dict[str, Any], doctor: dict[str, Any], start: str,
              reasons: list[str], kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter", "id": eid, "status": "finished",
        "class": {"system": ACT_CODE_SYSTEM, "code": "AMB", "display": "ambulatory"},
        "type": [{"text": kind}], "subject": ref(patient),
        "participant": [{"individual": ref(doctor)}],
        "period": {"start": start, "end": shift_minutes(start, 15)},
        "reasonCode": [icd10(code) for code in reasons], "serviceProvider": ref(org),
    }


def blood_pressure(oid: str, patient: dict[str, Any], enc: dict[str, Any], doctor: dict[str, Any], when: str,
                   systolic: int, diastolic: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "vital-signs",
                                  "display": "Vital Signs"}]}],
        "code": loinc("85354-9", "Blood pressure panel with all children optional", "血压"),
        "subject": ref(patient), "encounter": ref(enc), "effectiveDateTime": when, "performer": [ref(doctor)],
        "component": [
            {"code": loinc("8480-6", "Systolic blood pressure", "收缩压"),
             "valueQuantity": quantity(systolic, "mm[Hg]")},
            {"code": loinc("8462-4", "Diastolic blood pressure", "舒张压"),
             "valueQuantity": quantity(diastolic, "mm[Hg]")},
        ],
    }


def lab_observation(oid: str, patient: dict[str, Any], enc: dict[str, Any], when: str, code: dict[str, Any],
                    value: float, unit: str, low: float | None, high: float) -> dict[str, Any]:
    reference_range: dict[str, Any] = {"high": quantity(high, unit)}
    if low is not None:
        reference_range["low"] = quantity(low, unit)
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": code, "subject": ref(patient), "encounter": ref(enc), "effectiveDateTime": when,
        "valueQuantity": quantity(value, unit), "referenceRange": [reference_range],
    }


def build_patient_group(index: int, county: dict[str, Any], city_name: str, province: str, org: dict[str, Any],
                        doctors: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """One patient and their record; every random draw comes from `rng`, in a fixed order."""
    pid = f"pat-{index:05d}"
    sex = rng.choice(("male", "female"))
    birth = draw_birth_date(rng)
    family, given = person_name(rng, sex)
    age = age_on(birth, RECORDS_END)
    profile = draw_profile(rng, age, sex)
    if index == 1:
        # The demo patient: the story a county doctor would refer upwards.
        profile.hypertension, profile.hypertension_controlled = True, False
        profile.diabetes, profile.diabetes_controlled = True, False
        profile.months = 18
    gp = doctors[(index - 1) % len(doctors)]  # alternate the two county doctors as family doctor
    patient = {
        "resourceType": "Patient", "id": pid,
        "extension": [division_code_extension(county["code"])],
        # The sequence is the patient number, so no two demo patients share an ID number.
        "identifier": [{"use": "official", "system": NATIONAL_ID_SYSTEM,
                        "value": make_national_id(county["code"], birth, index % 500, sex)}],
        "active": True, "name": [human_name(family, given)],
        "telecom": [{"system": "phone", "value": f"13800{index:06d}", "use": "mobile"}],
        "gender": sex, "birthDate": birth.isoformat(),
        "address": [{"use": "home", "type": "physical",
                     "extension": [division_code_extension(county["code"])],
                     "text": f"{province}{city_name}{county['name']}", "state": province, "city": city_name,
                     "district": county["name"], "country": "CN"}],
        "generalPractitioner": [ref(gp)], "managingOrganization": ref(org),
    }
    out: list[dict[str, Any]] = [patient]
    bp_doctor, dm_doctor = doctors[0], doctors[-1]
    last_visit = dt.date(RECORDS_END.year, RECORDS_END.month, profile.visit_day)
    if last_visit > RECORDS_END:
        last_visit = add_months(last_visit, -1)
    first_visit = add_months(last_visit, -profile.months)
    conditions: dict[str, dict[str, Any]] = {}

    def onset_years_before(day: dt.date, most: int) -> dt.date:
        years = rng.randint(1, max(1, min(most, age - 30)))
        return day - dt.timedelta(days=365 * years + rng.randrange(300))

    if profile.hypertension:
        conditions["I10"] = condition(pid, patient, "I10", onset_years_before(first_visit, 15), bp_doctor)
    if profile.diabetes:
        conditions["E11.9"] = condition(pid, patient, "E11.9", onset_years_before(first_visit, 10), dm_doctor)
    if profile.stroke:
        onset = RECORDS_END - dt.timedelta(days=rng.randint(60, 1500))
        # A stroke in the last year is still being treated; older ones are history.
        conditions["I63.9"] = condition(pid, patient, "I63.9", onset, bp_doctor,
                                        "active" if (RECORDS_END - onset).days < 365 else "resolved")
    if profile.stemi:
        onset = RECORDS_END - dt.timedelta(days=rng.randint(90, 2000))
        conditions["I21.0"] = condition(pid, patient, "I21.0", onset, bp_doctor, "resolved")
    if profile.copd:
        conditions["J44.9"] = condition(pid, patient, "J44.9", onset_years_before(first_visit, 12), bp_doctor)
    out += conditions.values()

    chronic = profile.hypertension or profile.diabetes
    visits: list[tuple[dt.date, str]] = []
    if chronic:
        # Monthly follow-up (慢病随访), a month skipped now and then but never below 12 visits.
        skips_left = profile.months - 11
        for month in range(profile.months + 1):
            if month and skips_left > 0 and rng.random() < 0.08:
                skips_left -= 1
                continue
            day = add_months(first_visit, month)
            if day > RECORDS_END:
                break
            visits.append((day, at(day, rng.randint(8, 11), rng.choice((0, 10, 20, 30, 40, 50)))))
    else:
        # Everyone else came once in the last year for a check-up.
        day = RECORDS_END - dt.timedelta(days=rng.randint(10, 330))
        visits.append((day, at(day, rng.randint(8, 11), rng.choice((0, 15, 30, 45)))))

    reasons = [code for code in ("I10", "E11.9") if code in conditions] or ["Z00.0"]
    kind = "慢病随访 chronic disease follow-up" if chronic else "健康体检 check-up"
    # Blood pressure: the untreated baseline, then (controlled) a fall over ~3 months to target,
    # or (uncontrolled) a drift upwards with wide swings.
    base_sys = rng.randint(150, 172) if profile.hypertension else rng.randint(108, 132)
    base_dia = rng.randint(92, 104) if profile.hypertension else rng.randint(66, 84)
    glucose_base = rng.uniform(8.5, 11.5) if profile.diabetes else rng.uniform(4.6, 5.8)
    recent_glucose: list[float] = []
    for n, (day, start) in enumerate(visits, start=1):
        enc_doctor = dm_doctor if profile.diabetes and not profile.hypertension else bp_doctor
        enc = encounter(f"{pid}-enc-{n:02d}", patient, org, enc_doctor, start, reasons, kind)
        out.append(enc)
        measured = shift_minutes(start, 5)
        if profile.hypertension:
            if profile.hypertension_controlled:
                settle = min(1.0, (n - 1) / 3)
                systolic = base_sys - settle * (base_sys - rng.randint(122, 134)) + rng.gauss(0, 5)
                diastolic = base_dia - settle * (base_dia - rng.randint(74, 84)) + rng.gauss(0, 3.5)
            else:
                systolic = base_sys + 0.4 * n + rng.gauss(0, 7)
                diastolic = base_dia + 0.2 * n + rng.gauss(0, 4)
        else:
            systolic, diastolic = base_sys + rng.gauss(0, 5), base_dia + rng.gauss(0, 4)
        systolic = int(round(max(95, min(210, systolic))))
        diastolic = int(round(max(55, min(125, min(diastolic, systolic - 25)))))
        if profile.hypertension or not chronic:
            out.append(blood_pressure(f"{pid}-bp-{n:02d}", patient, enc, enc_doctor, measured, systolic, diastolic))
        if profile.diabetes:
            drawn = shift_minutes(start, -60)  # fasting blood is drawn before the consultation
            if profile.diabetes_controlled:
                settle = min(1.0, (n - 1) / 4)
                glucose = glucose_base - settle * (glucose_base - rng.uniform(5.6, 7.0)) + rng.gauss(0, 0.4)
            else:
                glucose = glucose_base + 0.05 * n + rng.gauss(0, 1.0)
            glucose = round(max(4.0, min(18.0, glucose)), 1)
            results = [lab_observation(f"{pid}-glu-{n:02d}", patient, enc, drawn,
                                       loinc("15074-8", "Glucose [Moles/volume] in Blood", "空腹血糖"),
                                       glucose, "mmol/L", 3.9, 6.1)]
            recent_glucose.append(glucose)
            if n % 3 == 1:
                # HbA1c every three months, from the mean glucose of the last visits (ADAG: eAG = 1.59*A1c
                # - 2.59, in mmol/L), fasting values raised by ~1.5 because the day's average is higher.
                mean = sum(recent_glucose[-3:]) / len(recent_glucose[-3:])
                a1c = round(max(5.0, min(13.0, (mean + 1.5 + 2.59) / 1.59 + rng.gauss(0, 0.2))), 1)
                results.append(lab_observation(
                    f"{pid}-hba1c-{n:02d}", patient, enc, drawn,
                    loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "糖化血红蛋白"),
                    a1c, "%", 4.0, 6.0))
            out += results
            out.append({
                "resourceType": "DiagnosticReport", "id": f"{pid}-lab-{n:02d}", "status": "final",
                "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "LAB",
                                          "display": "Laboratory"}]}],
                "code": {"text": "糖尿病随访化验 diabetes follow-up labs"},
                "subject": ref(patient), "encounter": ref(enc), "effectiveDateTime": drawn,
                "issued": shift_minutes(drawn, 150), "performer": [ref(org)],
                "result": [ref(r) for r in results],
            })

    first_start = visits[0][1]
    if profile.hypertension:
        out.append(medication_request(pid, patient, "amlodipine", first_start, bp_doctor, conditions["I10"]))
    if profile.diabetes:
        out.append(medication_request(pid, patient, "metformin", first_start, dm_doctor, conditions["E11.9"]))
    vascular = conditions.get("I63.9") or conditions.get("I21.0")
    if vascular is not None:
        # Secondary prevention after a stroke or a myocardial infarction.
        out.append(medication_request(pid, patient, "aspirin", first_start, bp_doctor, vascular))
        out.append(medication_request(pid, patient, "atorvastatin", first_start, bp_doctor, vascular))

    # Influenza vaccine in the 2025-26 season (free for over-60s in many Shandong cities), PPSV23 for some elders.
    if rng.random() < (0.7 if age >= 60 else 0.2):
        day = dt.date(2025, 10, 8) + dt.timedelta(days=rng.randint(0, 60))
        out.append(immunization(f"{pid}-imm-flu-2025", patient, org, day, "141", "Influenza, seasonal, injectable",
                                "流感疫苗", rng))
    if age >= 65 and rng.random() < 0.3:
        day = dt.date(2024, 3, 1) + dt.timedelta(days=rng.randint(0, 500))
        out.append(immunization(f"{pid}-imm-ppsv23", patient, org, day, "33", "pneumococcal polysaccharide PPV23",
                                "23价肺炎球菌多糖疫苗", rng))
    return out


def immunization(iid: str, patient: dict[str, Any], org: dict[str, Any], day: dt.date, cvx: str, display: str,
                 text: str, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Immunization", "id": iid, "status": "completed",
        "vaccineCode": {"coding": [{"system": CVX, "code": cvx, "display": display}], "text": text},
        "patient": ref(patient), "occurrenceDateTime": at(day, rng.randint(8, 16), rng.choice((0, 20, 40))),
        "primarySource": True, "lotNumber": f"{day.year}{rng.randint(10000, 99999)}",
        "performer": [{"actor": ref(org)}],
    }


# --- the whole plan ------------------------------------------------------------------------------


def build_plan(directory: dict[str, Any]) -> DemoPlan:
    """Every demo resource, deterministically: the same directory gives the same resources."""
    rng = random.Random(SEED)
    hospitals = build_hospitals(directory, rng)
    hospital_groups, county_doctors = build_hospital_groups(directory, hospitals, rng)
    province = directory["province"]["name"]
    cities = {city["code"]: city["name"] for city in directory["cities"]}
    counties = directory["counties"]
    orgs = {group[0]["id"]: group[0] for group in hospital_groups}
    patient_groups = []
    for index in range(1, PATIENT_COUNT + 1):
        county = counties[(index - 1) % len(counties)]
        org_id = f"org-{county['code']}-county"
        patient_groups.append(build_patient_group(index, county, cities[county["city"]], province, orgs[org_id],
                                                  county_doctors[org_id], rng))
    return DemoPlan(hospital_groups, patient_groups, _people(hospital_groups, patient_groups, orgs))


def _people(hospital_groups: list[list[dict[str, Any]]], patient_groups: list[list[dict[str, Any]]],
            orgs: dict[str, dict[str, Any]]) -> DemoPeople:
    practitioners = {r["id"]: r for group in hospital_groups for r in group if r["resourceType"] == "Practitioner"}
    roles = {r["practitioner"]["reference"]: r for group in hospital_groups for r in group
             if r["resourceType"] == "PractitionerRole"}

    def doctor(role_name: str, practitioner_id: str) -> DemoPerson:
        practitioner = practitioners[practitioner_id]
        org_id = roles[f"Practitioner/{practitioner_id}"]["organization"]["reference"].split("/", 1)[1]
        return DemoPerson(role_name, f"Practitioner/{practitioner_id}", practitioner["name"][0]["text"],
                          PRACTITIONER_NUMBER_SYSTEM, practitioner["identifier"][0]["value"],
                          f"Organization/{org_id}", orgs[org_id]["name"])

    patient = next(g[0] for g in patient_groups if g[0]["id"] == DEMO_PATIENT_ID)
    org_ref = patient["managingOrganization"]["reference"]
    return DemoPeople(
        county_doctor=doctor("county-doctor", DEMO_COUNTY_DOCTOR_ID),
        specialist=doctor("specialist", DEMO_SPECIALIST_ID),
        patient=DemoPerson("patient", f"Patient/{patient['id']}", patient["name"][0]["text"], NATIONAL_ID_SYSTEM,
                           patient["identifier"][0]["value"], org_ref, orgs[org_ref.split("/", 1)[1]]["name"]),
    )


@lru_cache(maxsize=4)
def _plan_for(path: Path) -> DemoPlan:
    return build_plan(load_directory(path))


def demo_people(directory_path: Path | None = None) -> DemoPeople:
    """The demo's county doctor, specialist and patient, computed without touching the database."""
    return _plan_for((directory_path or DIRECTORY_PATH).resolve()).people


# --- writing -------------------------------------------------------------------------------------


class DemoSeedError(RuntimeError):
    """The demo data was refused by the record; a bug in this module, never the operator's doing."""


async def _stored_ids(store: Any, resources: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(type, id) of those resources that are stored, deleted ones included (a deleted one stays deleted)."""
    wanted: dict[str, list[str]] = {}
    for resource in resources:
        wanted.setdefault(resource["resourceType"], []).append(resource["id"])
    found: set[tuple[str, str]] = set()
    for resource_type, ids in wanted.items():
        # One $in query per type rather than a store.get per resource: one round trip instead of thousands.
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            documents = await store.find(resource_type, {"_id": {"$in": chunk}}, sort=[("_id", 1)],
                                         limit=len(chunk))
            found.update((resource_type, document["_id"]) for document in documents)
    return found


async def _create_all(service: Any, resources: list[dict[str, Any]], written: Counter[str],
                      present: Counter[str]) -> None:
    """Create each resource with its own id through the record's bulk path, a batch at a time."""
    from ehr.bulk import BATCH, BulkItem, BulkWriter

    writer = BulkWriter(service)
    for start in range(0, len(resources), BATCH):
        chunk = resources[start:start + BATCH]
        items = [BulkItem(f"{r['resourceType']}/{r['id']}", r, create_only=True) for r in chunk]
        for resource, result in zip(chunk, await writer.write(items), strict=True):
            error = result.error
            if error is not None and error.status == 409 and error.issues[0].code == "conflict":
                present[resource["resourceType"]] += 1  # another seeding run wrote it a moment ago
            elif error is not None:
                raise DemoSeedError(f"the record refused demo resource {result.where}: {error.status} {error}")
            else:
                written[resource["resourceType"]] += 1


async def _seed_groups(service: Any, groups: list[list[dict[str, Any]]], written: Counter[str],
                       present: Counter[str]) -> None:
    """Write the groups (a hospital with its services and doctors; a patient with their record).

    The first resource of a group (its Organization or Patient) is its marker and is written last,
    so a stored marker means the whole group was written: a re-run checks 345 markers instead of
    8,000 resources. Groups without a marker (new, or cut short) get every member checked.
    """
    markers = [group[0] for group in groups]
    stored_markers = await _stored_ids(service.store, markers)
    unfinished = []
    for group in groups:
        if (group[0]["resourceType"], group[0]["id"]) in stored_markers:
            for resource in group:
                present[resource["resourceType"]] += 1
        else:
            unfinished.append(group)
    members = [resource for group in unfinished for resource in group[1:]]
    stored = await _stored_ids(service.store, members)
    for resource in members:
        if (resource["resourceType"], resource["id"]) in stored:
            present[resource["resourceType"]] += 1
    await _create_all(service, [r for r in members if (r["resourceType"], r["id"]) not in stored], written, present)
    await _create_all(service, [group[0] for group in unfinished], written, present)


async def seed_demo_async(settings: Settings, directory_path: Path | None = None) -> DemoSummary:
    """Seed the demo into settings.mongodb_db through the record service; writes only what is missing."""
    from ehr.service import RecordService
    from ehr.store import ensure_indexes
    from qilu.db import connect_mongodb, database

    started = time.perf_counter()
    plan = _plan_for((directory_path or DIRECTORY_PATH).resolve())
    client = connect_mongodb(settings)
    try:
        db = database(client, settings)
        await ensure_indexes(db)
        service = RecordService.as_system(db, settings.fhir_base_url)
        written: Counter[str] = Counter()
        present: Counter[str] = Counter()
        # Hospitals before patients, so that what a patient's record references is there first.
        await _seed_groups(service, plan.hospital_groups, written, present)
        await _seed_groups(service, plan.patient_groups, written, present)
        await _ensure_demo_logins(db, settings, plan.people, written, present)
    finally:
        client.close()
    summary = DemoSummary(dict(written), dict(present), time.perf_counter() - started, plan.people,
                          settings.mongodb_db)
    # Counts only: the demo people's names and numbers go to the operator's terminal, never the log.
    log.info("demo seeded", written=summary.total_written, present=summary.total_present,
             elapsed_s=round(summary.elapsed_s, 2))
    return summary


async def _ensure_demo_logins(db: Any, settings: Settings, people: DemoPeople, written: Counter[str],
                              present: Counter[str]) -> None:
    """Logins for the demo people, and the demo patient's consent to share records for a referral."""
    from ehr.service import RecordService
    from qilu.accounts import add_user
    from qilu.identity import UserDirectory
    from qilu.identity import ensure_indexes as ensure_user_indexes

    await ensure_user_indexes(db)
    users = UserDirectory(db)
    logins = [("practitioner", people.county_doctor), ("practitioner", people.specialist),
              ("patient", people.patient)]
    for role, person in logins:
        if await users.by_login(person.identifier):
            present["user"] += 1
            continue
        await add_user(db, settings.fhir_base_url, role=role, login=person.identifier, password=DEMO_PASSWORD,
                       name=person.name, organization=person.organization if role == "practitioner" else None)
        written["user"] += 1
    if await users.by_login(DEMO_ADMIN_LOGIN):
        present["user"] += 1
    else:
        await add_user(db, settings.fhir_base_url, role="admin", login=DEMO_ADMIN_LOGIN, password=DEMO_PASSWORD,
                       name="系统管理员")
        written["user"] += 1
    records = RecordService.as_system(db, settings.fhir_base_url)
    consent_id = f"consent-{DEMO_PATIENT_ID}"
    if await records.store.get("Consent", consent_id):
        present["Consent"] += 1
        return
    # No actor named: the patient agrees to sharing with whichever hospital a referral goes to.
    await records.update("Consent", consent_id, {
        "resourceType": "Consent", "id": consent_id, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": people.patient.resource},
        "dateTime": "2026-01-05T09:00:00+08:00",
        "policyRule": {"text": "转诊时共享病历 share records with the hospital a referral goes to"},
        "provision": {"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                     "code": "TREAT"}]}})
    written["Consent"] += 1


def seed_demo(settings: Settings, directory_path: Path | None = None) -> DemoSummary:
    """Seed the demo data (idempotent) and return what was written; runs its own event loop."""
    return asyncio.run(seed_demo_async(settings, directory_path))
