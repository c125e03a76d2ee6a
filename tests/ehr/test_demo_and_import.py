"""The demo seed (idempotent, valid synthetic people, believable series) and the importer (NDJSON and Bundles)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from ehr.importer import import_paths
from ehr.service import RecordService
from ehr.store import RecordStore
from fhir_profiles.extensions import read_division_code
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, PRACTITIONER_NUMBER_SYSTEM, parse_national_id
from qilu.db import connect_mongodb, database
from qilu.demo import (
    DEMO_COUNTY_DOCTOR_ID,
    DEMO_PATIENT_ID,
    DEMO_SPECIALIST_ID,
    DemoSummary,
    demo_people,
    seed_demo,
)

ROOT = Path(__file__).resolve().parents[2]
ALL = 100_000  # more than the demo holds of any type


@pytest.fixture(scope="module")
def demo_settings(settings):
    # A database of its own, so the seed neither meets nor disturbs other data; the suffix keeps two
    # test runs on the same engine (another checkout, CI) apart.
    demo = settings.model_copy(update={"mongodb_db": f"qilu_demo_test_{uuid.uuid4().hex[:8]}"})
    with MongoClient(demo.effective_mongodb_url) as client:
        client.drop_database(demo.mongodb_db)
    yield demo
    with MongoClient(demo.effective_mongodb_url) as client:
        client.drop_database(demo.mongodb_db)


@pytest.fixture(scope="module")
async def seeded(demo_settings):
    """Seed twice through the real entry point (each run in its own thread and event loop), then read
    back every stored document once: reading is slow on FerretDB, so the tests share one read."""
    first = await asyncio.to_thread(seed_demo, demo_settings)
    second = await asyncio.to_thread(seed_demo, demo_settings)
    client = connect_mongodb(demo_settings)
    try:
        store = RecordStore(database(client, demo_settings))
        stored = {resource_type: await store.find(resource_type, {}, sort=[("_id", 1)], limit=ALL)
                  for resource_type in first.written}
        _, history_total = await store.history({}, skip=0, limit=0)
        yield Seeded(first, second, stored, history_total)
    finally:
        client.close()


@dataclass
class Seeded:
    first: DemoSummary
    second: DemoSummary
    documents: dict[str, list[dict]]  # every stored document per resource type
    history_total: int

    def resources(self, resource_type: str) -> list[dict]:
        return [doc["resource"] for doc in self.documents.get(resource_type, []) if not doc["deleted"]]

    def get(self, resource_type: str, resource_id: str) -> dict:
        [resource] = [r for r in self.resources(resource_type) if r["id"] == resource_id]
        return resource


# --- the demo seed ------------------------------------------------------------------------------


def test_seeding_twice_writes_nothing_the_second_time(seeded):
    first, second = seeded.first, seeded.second
    assert first.total_present == 0
    assert first.total_written > 5000
    assert first.written["Patient"] == 300
    assert second.total_written == 0
    assert second.present == first.written
    # The demo logins (users, not FHIR resources) are made once too.
    assert first.written["user"] == 4 and second.present["user"] == 4
    # No new versions either: every stored resource is at version 1, with one history entry each.
    fhir_written = {t: n for t, n in first.written.items() if t != "user"}
    for resource_type, count in fhir_written.items():
        documents = seeded.documents[resource_type]
        assert len(documents) == count
        assert {doc["vid"] for doc in documents} == {1}
        assert {doc["resource"]["meta"]["versionId"] for doc in documents} == {"1"}
    assert seeded.history_total == sum(fhir_written.values())


def test_every_seeded_patient_has_a_valid_national_id_that_agrees_with_them(seeded):
    patients = seeded.resources("Patient")
    assert len(patients) == 300
    numbers = set()
    for patient in patients:
        [identifier] = [i for i in patient["identifier"] if i["system"] == NATIONAL_ID_SYSTEM]
        national_id = parse_national_id(identifier["value"])
        numbers.add(national_id.value)
        assert national_id.birth_date.isoformat() == patient["birthDate"]
        assert national_id.sex == patient["gender"]
        assert dt.date(1940, 1, 1) <= national_id.birth_date <= dt.date(2010, 12, 31)
        # Registered where they live, and managed by that county's hospital.
        county = read_division_code(patient)
        assert national_id.region_code == county
        assert patient["managingOrganization"]["reference"] == f"Organization/org-{county}-county"
        assert patient["address"][0]["district"] in patient["address"][0]["text"]
        [name] = patient["name"]
        assert name["text"] == name["family"] + "".join(name["given"])
        assert patient["telecom"][0]["value"].startswith("13800")
    assert len(numbers) == 300


def test_each_hypertensive_patient_has_a_monthly_blood_pressure_series(seeded):
    hypertensive = {c["subject"]["reference"] for c in seeded.resources("Condition")
                    if c["code"]["coding"][0]["code"] == "I10"}
    assert len(hypertensive) > 50
    encounters = {f"Encounter/{e['id']}": e for e in seeded.resources("Encounter")}
    series: dict[str, list[dict]] = defaultdict(list)
    for observation in seeded.resources("Observation"):
        if observation["code"]["coding"][0]["code"] == "85354-9":
            series[observation["subject"]["reference"]].append(observation)
    for patient in hypertensive:
        readings = sorted(series[patient], key=lambda o: o["effectiveDateTime"])
        assert len(readings) >= 12, patient  # monthly over 12-18 months
        times = [dt.datetime.fromisoformat(o["effectiveDateTime"]) for o in readings]
        assert all(t.utcoffset() == dt.timedelta(hours=8) for t in times)
        assert (times[-1] - times[0]).days >= 330
        for observation in readings:
            assert observation["category"][0]["coding"][0]["code"] == "vital-signs"
            systolic, diastolic = observation["component"]
            assert systolic["code"]["coding"][0]["code"] == "8480-6"
            assert diastolic["code"]["coding"][0]["code"] == "8462-4"
            assert systolic["valueQuantity"]["code"] == diastolic["valueQuantity"]["code"] == "mm[Hg]"
            assert 90 <= systolic["valueQuantity"]["value"] <= 220
            assert diastolic["valueQuantity"]["value"] < systolic["valueQuantity"]["value"]
            visit = encounters[observation["encounter"]["reference"]]
            assert visit["subject"]["reference"] == patient


def test_diabetics_have_lab_series_in_reports(seeded):
    diabetic = {c["subject"]["reference"] for c in seeded.resources("Condition")
                if c["code"]["coding"][0]["code"] == "E11.9"}
    observations = {f"Observation/{o['id']}": o for o in seeded.resources("Observation")}
    reported: dict[str, set[str]] = defaultdict(set)
    for report in seeded.resources("DiagnosticReport"):
        for result in report["result"]:
            observation = observations[result["reference"]]
            assert observation["subject"] == report["subject"]
            reported[report["subject"]["reference"]].add(observation["code"]["coding"][0]["code"])
    assert diabetic
    for patient in diabetic:
        assert reported[patient] == {"15074-8", "4548-4"}, patient


def test_demo_people_are_in_the_seeded_record(seeded):
    first = seeded.first
    people = demo_people()
    assert people == first.people
    assert people.county_doctor.resource == f"Practitioner/{DEMO_COUNTY_DOCTOR_ID}"
    assert people.specialist.resource == f"Practitioner/{DEMO_SPECIALIST_ID}"
    assert people.patient.resource == f"Patient/{DEMO_PATIENT_ID}"
    for person in (people.county_doctor, people.specialist):
        practitioner = seeded.get("Practitioner", person.resource.split("/")[1])
        assert (practitioner["identifier"][0]["system"], practitioner["identifier"][0]["value"]) == (
            PRACTITIONER_NUMBER_SYSTEM, person.identifier)
    assert seeded.get("Patient", DEMO_PATIENT_ID)["identifier"][0]["value"] == people.patient.identifier
    lines = first.logins()
    assert people.county_doctor.identifier in lines[0] and people.specialist.identifier in lines[1]
    assert any("password" in line for line in lines)
    assert "Patient 300/300" in first.describe()
    # The people's repr is what would reach a log: no ID number there.
    assert people.patient.identifier not in repr(people)


# --- the importer -------------------------------------------------------------------------------


@pytest.fixture
def records(app) -> RecordService:
    return RecordService(RecordStore(app.state.db), "http://testserver/fhir")


async def test_ndjson_import_skips_a_bad_line_and_names_it(settings, records, tmp_path):
    tag = uuid.uuid4().hex[:8]
    lines = [
        {"resourceType": "Patient", "id": f"nd-{tag}-1", "gender": "female", "birthDate": "1961-03-04"},
        {"resourceType": "Patient", "id": f"nd-{tag}-2", "gender": "male"},
        "this line is not JSON",
        {"resourceType": "Observation", "id": f"nd-{tag}-3", "status": "final", "code": {"text": "pulse"},
         "subject": {"reference": f"Patient/nd-{tag}-1"}},
        {"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}},
        {"resourceType": "Patient", "gender": "female"},  # no id: created with a new one
    ]
    path = tmp_path / "records.ndjson"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n")
    seen: list[tuple[int, int]] = []

    report = await asyncio.to_thread(import_paths, settings, [path], lambda _, done, total: seen.append((done, total)))

    assert (report.created, report.updated, report.failed) == (4, 0, 2)
    assert report.errors[0].startswith(f"{path}:3: not valid JSON")
    assert report.errors[1].startswith(f"{path}:5: 422")
    assert seen[-1] == (6, 6)
    for resource_type, number in (("Patient", 1), ("Patient", 2), ("Observation", 3)):
        assert (await records.read(resource_type, f"nd-{tag}-{number}"))["vid"] == 1

    # The same file again: lines with ids are PUT (new versions), the one without is created anew.
    again = await asyncio.to_thread(import_paths, settings, [path])
    assert (again.created, again.updated, again.failed) == (1, 3, 2)
    assert (await records.read("Patient", f"nd-{tag}-1"))["vid"] == 2


async def test_transaction_bundle_import_is_all_or_nothing(settings, records, tmp_path):
    tag = uuid.uuid4().hex[:8]
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    number = {"system": PRACTITIONER_NUMBER_SYSTEM, "value": f"TX{tag}"}
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient_url, "resource": {"resourceType": "Patient", "gender": "male"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "id": f"tx-{tag}", "status": "final", "code": {"text": "weight"},
                      "subject": {"reference": patient_url}},
         "request": {"method": "PUT", "url": f"Observation/tx-{tag}"}},
        {"resource": {"resourceType": "Practitioner", "id": f"tx-{tag}-doc", "identifier": [number]},
         "request": {"method": "PUT", "url": f"Practitioner/tx-{tag}-doc"}},
    ]}))
    # Valid throughout, but its second write finds the practitioner number taken: the first is undone.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": f"tx-{tag}-p", "gender": "female"},
         "request": {"method": "PUT", "url": f"Patient/tx-{tag}-p"}},
        {"resource": {"resourceType": "Practitioner", "id": f"tx-{tag}-dup", "identifier": [number]},
         "request": {"method": "PUT", "url": f"Practitioner/tx-{tag}-dup"}},
    ]}))

    report = await asyncio.to_thread(import_paths, settings, [good])
    assert (report.created, report.updated, report.failed) == (3, 0, 0)
    observation = (await records.read("Observation", f"tx-{tag}"))["resource"]
    subject = observation["subject"]["reference"]  # the urn:uuid became the new Patient's id
    assert subject.startswith("Patient/") and await records.read("Patient", subject.split("/")[1])

    refused = await asyncio.to_thread(import_paths, settings, [bad])
    assert (refused.created, refused.failed) == (0, 2)
    assert refused.errors[0].startswith(f"{bad}: transaction rolled back: 409")
    assert await records.store.get("Patient", f"tx-{tag}-p") is None


async def test_collection_bundle_and_single_resource_files(settings, records, tmp_path):
    tag = uuid.uuid4().hex[:8]
    (tmp_path / "collection.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": f"co-{tag}", "gender": "female"}},
        {"resource": {"resourceType": "Patient", "gender": "male"}},
        {"fullUrl": "urn:uuid:nothing-here"},
    ]}))
    (tmp_path / "single.json").write_text(json.dumps({"resourceType": "Practitioner", "id": f"pr-{tag}"}))
    (tmp_path / "broken.json").write_text('{"resourceType": "Patient",\n  "gender": }')

    report = await asyncio.to_thread(import_paths, settings, [tmp_path])  # a directory: every file in it

    assert report.files == 3
    assert (report.created, report.failed) == (3, 2)
    assert any(e.startswith(f"{tmp_path / 'broken.json'}:2: not valid JSON") for e in report.errors)
    assert any(e.startswith(f"{tmp_path / 'collection.json'}: entry[2]") for e in report.errors)
    assert (await records.read("Practitioner", f"pr-{tag}"))["vid"] == 1


def test_cli_import_exits_non_zero_and_lists_the_bad_line(settings, tmp_path):
    path = tmp_path / "cli.ndjson"
    path.write_text(json.dumps({"resourceType": "Patient", "gender": "female"}) + "\n{oops\n")
    env = {**os.environ, "QILU_MONGODB_DB": settings.mongodb_db}
    done = subprocess.run([sys.executable, "-m", "qilu", "import", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "1 created" in done.stdout and "1 failed" in done.stdout
    assert "resources/s" in done.stdout  # the progress bar shows the pace
    assert f"{path}:2: not valid JSON" in done.stderr
