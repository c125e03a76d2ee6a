"""Bulk export (FHIR Bulk Data `Patient/$export`) through the live app and a real Celery worker: a doctor exports
their hospital's patients, a patient their own record, as NDJSON files only they may fetch; each exported patient
sees it in their access log; bad requests are refused with an OperationOutcome and start nothing; cancelled and
expired exports leave no files behind."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from ehr import tasks as ehr_tasks
from ehr.export import EXPORTS, ExportRequest
from ehr.service import RecordService
from ehr.store import RecordStore
from logins import login
from qilu.accounts import add_user
from qilu.auth import Caller
from qilu.identity import User, UserDirectory
from sample_records import PASSWORD, assert_outcome, condition, new_national_id, observation, organization, patient, \
    share_record

BASE = "http://testserver/fhir"
ASYNC = {"Prefer": "respond-async"}


@dataclass
class ExportWorld:
    """Two hospitals of their own (so an export's reach is exactly known), a doctor at each, their patients."""

    home: str
    other: str
    doctor: User
    other_doctor: User
    resident: User  # a patient of `home` with an account
    resident_patient: str  # "Patient/.."
    home_patient: str
    other_patient: str
    home_observations: set[str]
    other_observation: str


@pytest.fixture(scope="module")
async def ew(app) -> ExportWorld:
    records = RecordService(RecordStore(app.state.db), BASE)

    async def write(resource: dict) -> str:
        written, _ = await records.create(resource["resourceType"], resource)
        return written.resource_id

    home = f"Organization/{await write(organization())}"
    other = f"Organization/{await write(organization())}"
    tag = uuid.uuid4().hex[:8]
    doctor = await add_user(app.state.db, BASE, role="practitioner", login=f"EXP{tag}", password=PASSWORD,
                            name="导出医生", organization=home)
    other_doctor = await add_user(app.state.db, BASE, role="practitioner", login=f"EXO{tag}", password=PASSWORD,
                                  name="别院医生", organization=other)
    resident = await add_user(app.state.db, BASE, role="patient", login=new_national_id(), password=PASSWORD,
                              name="周秀兰", organization=home)
    home_patient = await write(patient(organization=home))
    other_patient = await write(patient(organization=other))
    resident_id = resident.fhir_user.removeprefix("Patient/")
    observations = {await write(observation(resident_id)), await write(observation(home_patient))}
    await write(condition(home_patient))
    return ExportWorld(home, other, doctor, other_doctor, resident, resident.fhir_user, f"Patient/{home_patient}",
                       f"Patient/{other_patient}", observations, await write(observation(other_patient)))


async def kick_off(client: httpx.AsyncClient, query: str = "") -> str:
    response = await client.get(f"/fhir/Patient/$export{query}", headers=ASYNC)
    assert response.status_code == 202, response.text
    status_url = response.headers["content-location"]
    assert status_url.startswith("http://testserver/fhir/$export-status/")
    return status_url.removeprefix("http://testserver")


async def finished(client: httpx.AsyncClient, status_url: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(status_url)
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("application/json")
            return response.json()
        assert response.status_code == 202, response.text
        assert response.headers["x-progress"].endswith("types") and response.headers["retry-after"]
        await asyncio.sleep(0.3)
    pytest.fail(f"the export at {status_url} did not finish within {timeout} s")


async def lines_of(client: httpx.AsyncClient, manifest: dict, resource_type: str) -> list[dict]:
    (item,) = [o for o in manifest["output"] if o["type"] == resource_type]
    response = await client.get(item["url"].removeprefix("http://testserver"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+ndjson")
    resources = [orjson.loads(line) for line in response.content.splitlines()]
    assert len(resources) == item["count"]
    assert {r["resourceType"] for r in resources} == {resource_type}
    return resources


async def test_a_hospital_a_patient_is_shared_with_exports_them_until_the_consent_is_revoked(app, celery_worker):
    """The export streams through the same reach as a search: the shared patient's record is in the other
    hospital's export while the Consent holds, and out of it once the Consent is revoked."""
    records = RecordService(RecordStore(app.state.db), BASE)
    home = "Organization/" + (await records.create("Organization", organization()))[0].resource_id
    shared_with = "Organization/" + (await records.create("Organization", organization()))[0].resource_id
    specialist = await add_user(app.state.db, BASE, role="practitioner", login=f"EXS{uuid.uuid4().hex[:8]}",
                                password=PASSWORD, name="共享专家", organization=shared_with)
    pid = (await records.create("Patient", patient(organization=home)))[0].resource_id
    await records.create("Observation", observation(pid))
    consent = await share_record(records, pid, shared_with)
    other = await login(app, specialist)
    try:
        manifest = await finished(other, await kick_off(other, "?_type=Patient,Observation"))
        assert {r["id"] for r in await lines_of(other, manifest, "Patient")} == {pid}
        assert {r["subject"]["reference"] for r in await lines_of(other, manifest, "Observation")} == {
            f"Patient/{pid}"}
        consent_id = consent.removeprefix("Consent/")
        current = (await records.read("Consent", consent_id))["resource"]
        await records.update("Consent", consent_id, {**current, "status": "inactive"})
        manifest = await finished(other, await kick_off(other, "?_type=Patient,Observation"))
        assert manifest["output"] == []
    finally:
        await other.aclose()


async def test_a_doctor_exports_exactly_their_hospitals_patients_as_ndjson(app, ew, celery_worker):
    doctor = await login(app, ew.doctor)
    resident = await login(app, ew.resident)
    try:
        status_url = await kick_off(doctor)
        manifest = await finished(doctor, status_url)
        assert manifest["requiresAccessToken"] is True and manifest["error"] == []
        assert manifest["request"].endswith("/fhir/Patient/$export")
        assert manifest["transactionTime"].endswith("Z")
        assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation", "Condition"}
        patients = {f"Patient/{r['id']}" for r in await lines_of(doctor, manifest, "Patient")}
        assert patients == {ew.resident_patient, ew.home_patient}  # not the other hospital's
        observations = {r["id"] for r in await lines_of(doctor, manifest, "Observation")}
        assert observations == ew.home_observations

        # Each exported patient sees it in "who looked at my records".
        log = (await resident.get("/api/me/access-log", params={"count": 100})).json()
        exported = [e for e in log["entries"] if e["action"] == "export"]
        assert exported and {e["who"] for e in exported} == {"导出医生"}
    finally:
        await doctor.aclose()
        await resident.aclose()


async def test_types_since_and_a_patients_own_export(app, ew, celery_worker):
    doctor = await login(app, ew.doctor)
    resident = await login(app, ew.resident)
    try:
        only = await finished(doctor, await kick_off(doctor, "?_type=Observation,Observation"))
        assert [o["type"] for o in only["output"]] == ["Observation"]
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        nothing = await finished(doctor, await kick_off(doctor, f"?_since={tomorrow}"))
        assert nothing["output"] == []  # nothing changed since: no files at all

        own = await finished(resident, await kick_off(resident))
        assert {o["type"] for o in own["output"]} == {"Patient", "Observation"}
        assert [f"Patient/{r['id']}" for r in await lines_of(resident, own, "Patient")] == [ew.resident_patient]
        (mine,) = await lines_of(resident, own, "Observation")
        assert mine["subject"]["reference"] == ew.resident_patient
    finally:
        await doctor.aclose()
        await resident.aclose()


async def test_bad_requests_and_other_people_are_refused_and_start_nothing(app, ew, client, admin_client,
                                                                           celery_worker):
    doctor = await login(app, ew.doctor)
    other = await login(app, ew.other_doctor)
    jobs = app.state.db[EXPORTS]
    try:
        before = await jobs.count_documents({})
        assert_outcome(await doctor.get("/fhir/Patient/$export"), 400, "required", diagnostics="respond-async")
        for query, code in (("?_type=AuditEvent", "not-supported"), ("?_type=Nope", "not-supported"),
                            ("?_since=yesterday", "invalid"), ("?_outputFormat=text/csv", "not-supported"),
                            ("?patient=Patient/x", "not-supported"), ("?_typeFilter=Observation%3Fcode%3Dx",
                                                                      "not-supported")):
            assert_outcome(await doctor.get(f"/fhir/Patient/$export{query}", headers=ASYNC), 400, code)
        assert_outcome(await admin_client.get("/fhir/Patient/$export", headers=ASYNC), 403, "forbidden")
        assert_outcome(await doctor.get("/fhir/$export", headers=ASYNC), 400, "not-supported")
        assert (await client.get("/fhir/Patient/$export", headers=ASYNC)).status_code == 401
        assert await jobs.count_documents({}) == before  # none of them started an export

        manifest = await finished(doctor, status_url := await kick_off(doctor, "?_type=Patient"))
        file_url = manifest["output"][0]["url"].removeprefix("http://testserver")
        # Another hospital's doctor learns nothing of it, not even that it exists.
        assert_outcome(await other.get(status_url), 404, "not-found")
        assert_outcome(await other.get(file_url), 404, "not-found")
        assert_outcome(await other.delete(status_url), 404, "not-found")
        assert_outcome(await doctor.get(file_url.replace("Patient.ndjson", "Observation.ndjson")), 404)
        assert_outcome(await doctor.get(file_url.replace("Patient.ndjson", "..%2F..%2Fsecrets")), 404)
        assert (await doctor.get(file_url)).status_code == 200

        # Two exports under way at once is the most one user may have.
        tag = uuid.uuid4().hex
        await jobs.insert_many([{"_id": f"{tag}-{n}", "status": "accepted", "user": ew.other_doctor.id,
                                 "types": ["Patient"], "created": datetime.now(UTC), "progress": 0, "output": []}
                                for n in range(2)])
        busy = await other.get("/fhir/Patient/$export", headers=ASYNC)
        assert_outcome(busy, 429, "throttled")
        assert busy.headers["retry-after"]
        await jobs.delete_many({"_id": {"$in": [f"{tag}-0", f"{tag}-1"]}})
    finally:
        await doctor.aclose()
        await other.aclose()


async def test_cancelled_and_expired_exports_leave_no_files(app, ew, settings, celery_worker):
    doctor = await login(app, ew.doctor)
    export_dir = settings.path(settings.export_dir)
    try:
        status_url = await kick_off(doctor)
        manifest = await finished(doctor, status_url)
        job_id = status_url.rsplit("/", 1)[1]
        assert (export_dir / job_id / "Patient.ndjson").is_file()
        assert (await doctor.delete(status_url)).status_code == 202
        assert_outcome(await doctor.get(status_url), 404, "not-found")
        assert_outcome(await doctor.get(manifest["output"][0]["url"].removeprefix("http://testserver")), 404)
        assert not (export_dir / job_id).exists()

        expiring_url = await kick_off(doctor, "?_type=Patient")
        await finished(doctor, expiring_url)
        expiring = expiring_url.rsplit("/", 1)[1]
        await app.state.db[EXPORTS].update_one({"_id": expiring}, {"$set": {"expires": datetime.now(UTC)}})
        enqueued: list[str] = []
        assert await ehr_tasks.sweep_exports(settings, enqueued.append) >= 2  # the expired and the cancelled
        assert not (export_dir / expiring).exists()
        assert_outcome(await doctor.get(expiring_url), 404, "not-found")
        assert await app.state.db[EXPORTS].count_documents({"_id": {"$in": [job_id, expiring]}}) == 0
    finally:
        await doctor.aclose()


async def test_an_account_deactivated_before_its_export_runs_exports_nothing(app, ew, settings):
    """The worker acts as the user as they are when it runs: a deactivated account's export fails, with no file."""
    user = await add_user(app.state.db, BASE, role="practitioner", login=f"GONE{uuid.uuid4().hex[:8]}",
                          password=PASSWORD, name="离职医生", organization=ew.home)
    exports = ehr_tasks.bulk_exports(app.state.db, settings)
    job = await exports.start(Caller.of(user), ExportRequest(("Patient",), None), "http://testserver/fhir/x")
    await UserDirectory(app.state.db).change(user.id, {"active": False})
    status = await ehr_tasks.run_export(settings, job["_id"])
    assert status == "failed"
    stored = await app.state.db[EXPORTS].find_one({"_id": job["_id"]})
    assert stored["status"] == "failed" and "no longer active" in stored["error"]
    assert not Path(settings.path(settings.export_dir), job["_id"], "Patient.ndjson").exists()
