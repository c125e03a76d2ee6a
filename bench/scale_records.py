"""Synthetic records for the scale bench: one hospital's patients, about twenty resources each, as NDJSON.

Every patient has a valid ID number, a name from twenty surnames and 992 given names (so a full name is shared
by about one patient in 20,000, as common names are), two Encounters, twelve Observations (vital signs and labs,
LOINC), two Conditions, two MedicationRequests and a DiagnosticReport over the labs. Ids are the bench's own
(`sc{n}`, `sc{n}-o3`), so the bench knows what it asks for and a file imported twice updates instead of doubling.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, make_national_id

PER_PATIENT = 20
FAMILIES = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林", "何",
            "郭", "马", "罗"]
GIVEN = "文华建国秀英玉兰桂芝志强海燕丽娟明德淑珍立新春梅振东金凤"
VITALS = [("8480-6", "收缩压", "mm[Hg]", 100, 180), ("8462-4", "舒张压", "mm[Hg]", 60, 110),
          ("8867-4", "心率", "/min", 55, 110), ("29463-7", "体重", "kg", 45, 95)]
LABS = [("2339-0", "血糖", "mmol/L", 4, 14), ("2093-3", "总胆固醇", "mmol/L", 3, 8),
        ("4548-4", "糖化血红蛋白", "%", 4, 11), ("2160-0", "肌酐", "umol/L", 50, 150)]
CONDITIONS = [("I10", "原发性高血压"), ("E11.9", "2型糖尿病"), ("J44.9", "慢性阻塞性肺疾病"), ("I63.9", "脑梗死")]
MEDICINES = ["氨氯地平片 5mg", "二甲双胍片 0.5g", "阿托伐他汀钙片 20mg", "阿司匹林肠溶片 100mg"]
LOINC = "http://loinc.org"


def national_id(n: int) -> str:
    """The n-th patient's ID number: distinct for every n below 18 million (a birth day and an order code)."""
    day, sequence = divmod(n, 500)
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=day % 30000)
    region = ("370102", "370103", "370104", "370105", "370112", "370113")[day // 30000]
    return make_national_id(region, birth, sequence, "male" if n % 2 else "female",
                            today=dt.date(2026, 1, 1))


def _quantity(rng: random.Random, low: float, high: float, unit: str) -> dict[str, Any]:
    return {"value": round(rng.uniform(low, high), 1), "unit": unit, "system": "http://unitsofmeasure.org",
            "code": unit}


def patient_records(n: int, organization: str, practitioner: str) -> list[dict[str, Any]]:
    """The n-th patient's record, the Patient first (managed by `organization`)."""
    rng = random.Random(n)
    pid = f"sc{n}"
    number = national_id(n)
    subject = {"reference": f"Patient/{pid}"}
    doctor = {"reference": practitioner}
    family = FAMILIES[n % len(FAMILIES)]
    given = "".join(rng.sample(GIVEN, 2))
    records: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": pid, "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": number}],
        "name": [{"family": family, "given": [given], "text": family + given}],
        "gender": "male" if n % 2 else "female", "birthDate": f"{number[6:10]}-{number[10:12]}-{number[12:14]}",
        "managingOrganization": {"reference": organization}}]
    start = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(300))
    encounters = []
    for e in range(2):
        day = start + dt.timedelta(days=30 * e)
        eid = f"{pid}-e{e}"
        encounters.append((eid, day))
        records.append({"resourceType": "Encounter", "id": eid, "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "subject": subject, "participant": [{"individual": doctor}],
                        "period": {"start": f"{day}T08:30:00+08:00", "end": f"{day}T09:00:00+08:00"},
                        "serviceProvider": {"reference": organization}})
    labs = []
    for o in range(12):
        eid, day = encounters[o % 2]
        code, text, unit, low, high = (VITALS + LABS)[o % 8] if o < 8 else VITALS[o - 8]
        category = "laboratory" if (code, text, unit, low, high) in LABS else "vital-signs"
        oid = f"{pid}-o{o}"
        if category == "laboratory":
            labs.append(oid)
        records.append({
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": code}], "text": text}, "subject": subject,
            "encounter": {"reference": f"Encounter/{eid}"}, "effectiveDateTime": f"{day}T08:40:00+08:00",
            "performer": [doctor], "valueQuantity": _quantity(rng, low, high, unit)})
    for c, (code, text) in enumerate(rng.sample(CONDITIONS, 2)):
        records.append({
            "resourceType": "Condition", "id": f"{pid}-c{c}",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}], "text": text},
            "subject": subject, "recordedDate": f"{start}", "recorder": doctor})
    for m, medicine in enumerate(rng.sample(MEDICINES, 2)):
        records.append({"resourceType": "MedicationRequest", "id": f"{pid}-m{m}", "status": "active",
                        "intent": "order", "medicationCodeableConcept": {"text": medicine}, "subject": subject,
                        "authoredOn": f"{start}", "requester": doctor})
    records.append({"resourceType": "DiagnosticReport", "id": f"{pid}-r0", "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": "24323-8"}], "text": "生化检查"},
                    "subject": subject, "effectiveDateTime": f"{encounters[0][1]}T10:00:00+08:00",
                    "result": [{"reference": f"Observation/{oid}"} for oid in labs]})
    assert len(records) == PER_PATIENT
    return records


def write_ndjson(path: Path, first: int, end: int, organization: str, practitioner: str) -> int:
    """Patients first..end-1 as NDJSON (each patient's lines together); returns the number of lines."""
    lines = 0
    with path.open("w", encoding="utf-8") as out:
        for n in range(first, end):
            for resource in patient_records(n, organization, practitioner):
                out.write(json.dumps(resource, ensure_ascii=False) + "\n")
                lines += 1
    return lines


def family_of(n: int) -> str:
    return FAMILIES[n % len(FAMILIES)]
