"""Bulk export (FHIR Bulk Data, `Patient/$export`): a caller's whole reach of the record as NDJSON files, made by a
worker, fetched by the caller alone, audited in every patient's access log, and deleted after a while.

A practitioner exports the patients their hospital manages or has been shared; a patient exports their own
record; an administrator reads no clinical data and exports nothing. The job is kept in MongoDB, the files under
the data directory (the API and the workers share it).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import structlog
from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING

from ehr.access import Reach, decide_by_role, refused
from ehr.models import RecordError
from ehr.search import COMPARTMENT_PATHS, SearchValueError, parse_instant
from ehr.service import RecordService, fhir_instant, now_utc
from ehr.store import RecordStore
from qilu.audit import audit_event
from qilu.auth import Caller

log = structlog.get_logger("qilu.ehr.export")

EXPORTS = "exports"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
# What a patient-level export holds: the Patient and every type of its compartment, but not the audit trail
# (a patient reads theirs at /api/me/access-log; raw events name other patients).
EXPORT_TYPES = ("Patient", *sorted(t for t in COMPARTMENT_PATHS if t != "AuditEvent"))
KNOWN_PARAMETERS = {"_type", "_since", "_outputFormat"}
# Running or waiting exports one user may have at once: each reads a whole hospital's record.
MAX_OPEN_EXPORTS = 2
# Patients named per AuditEvent of an export, so a hospital's export is many events of a bounded size.
PATIENTS_PER_EVENT = 500
UNDER_WAY = ("accepted", "running")


@dataclass(frozen=True)
class ExportRequest:
    types: tuple[str, ...]
    since: datetime | None


def parse_export_request(params: list[tuple[str, str]], prefer: str) -> ExportRequest:
    """Check a kick-off as the Bulk Data spec asks: `Prefer: respond-async`, NDJSON, known types, a valid _since.
    Unknown parameters are refused rather than ignored: an export that silently widens is worse than none."""
    if "respond-async" not in [part.strip().lower() for part in prefer.split(",")]:
        raise RecordError.single(400, "required", "A bulk export runs in the background: send 'Prefer: respond-async'")
    unknown = sorted({name for name, _ in params} - KNOWN_PARAMETERS)
    if unknown:
        raise RecordError.single(400, "not-supported",
                                 f"Parameter(s) not supported by $export here: {', '.join(unknown)}")
    values: dict[str, list[str]] = {}
    for name, value in params:
        values.setdefault(name, []).append(value)
    output_format = (values.get("_outputFormat") or [NDJSON])[-1]
    if output_format not in OUTPUT_FORMATS:
        raise RecordError.single(400, "not-supported", f"_outputFormat {output_format!r}: only {NDJSON} is made")
    types: list[str] = []
    for value in values.get("_type", []):
        for name in (part.strip() for part in value.split(",")):
            if name not in EXPORT_TYPES:
                raise RecordError.single(400, "not-supported", f"_type {name!r} is not exported; choose among "
                                                               f"{', '.join(EXPORT_TYPES)}")
            if name not in types:
                types.append(name)
    since = None
    if values.get("_since"):
        try:
            since = parse_instant(values["_since"][-1])
        except SearchValueError as exc:
            raise RecordError.single(400, "invalid", f"_since: {exc}") from None
    return ExportRequest(tuple(types) or EXPORT_TYPES, since)


class BulkExports:
    """Export jobs: kicked off by a caller, made by a worker, read and cancelled by that caller only."""

    def __init__(self, db: AsyncIOMotorDatabase, export_dir: Path, keep_for: timedelta = timedelta(hours=24)):
        self.jobs = db[EXPORTS]
        self.db = db
        self.export_dir = export_dir
        self.keep_for = keep_for

    # --- kick-off, status, files, cancel (the API's side) ---------------------------------------------------

    @staticmethod
    def admit(caller: Caller) -> None:
        """The policy's row for reading clinical data, asked before the request is even parsed."""
        decision = decide_by_role("clinical-read", caller.role)
        if not decision.allowed:
            raise refused(decision.rule)

    async def start(self, caller: Caller, request: ExportRequest, request_url: str) -> dict[str, Any]:
        self.admit(caller)
        if await self.jobs.count_documents({"user": caller.user_id, "status": {"$in": list(UNDER_WAY)}}) \
                >= MAX_OPEN_EXPORTS:
            raise RecordError.single(429, "throttled", f"You have {MAX_OPEN_EXPORTS} exports under way; wait for "
                                                       "one to finish or cancel it", headers={"Retry-After": "30"})
        now = now_utc()
        job = {"_id": uuid.uuid4().hex, "status": "accepted", "user": caller.user_id, "role": caller.role,
               "types": list(request.types), "since": request.since, "request": request_url, "created": now,
               "progress": 0, "output": [], "error": None, "finished": None, "expires": None}
        await self.jobs.insert_one(job)
        return job

    async def of_caller(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """The job, if it is this caller's; anyone else's reads as unknown."""
        job = await self.jobs.find_one({"_id": job_id, "user": caller.user_id})
        if job is None or job["status"] == "cancelled":
            raise RecordError.single(404, "not-found", f"No export {job_id} of yours")
        return job

    def manifest(self, job: dict[str, Any], base_url: str) -> dict[str, Any]:
        return {"transactionTime": fhir_instant(job["created"]), "request": job["request"],
                "requiresAccessToken": True,
                "output": [{"type": o["type"], "url": f"{base_url}/$export-file/{job['_id']}/{o['type']}.ndjson",
                            "count": o["count"]} for o in job["output"]],
                "error": [], "extension": {"expires": fhir_instant(job["expires"])}}

    async def file_of(self, caller: Caller, job_id: str, name: str) -> Path:
        job = await self.of_caller(caller, job_id)
        resource_type = name.removesuffix(".ndjson")
        path = self._path(job_id, resource_type)
        if job["status"] != "complete" or resource_type not in {o["type"] for o in job["output"]} \
                or not path.is_file():
            raise RecordError.single(404, "not-found", f"Export {job_id} has no file {name}")
        return path

    async def cancel(self, caller: Caller, job_id: str) -> None:
        """Stop it (a running worker stops at its next type) and delete what it made."""
        await self.of_caller(caller, job_id)
        await self.jobs.update_one({"_id": job_id}, {"$set": {"status": "cancelled", "finished": now_utc()}})
        shutil.rmtree(self.export_dir / job_id, ignore_errors=True)

    # --- making it (the worker's side) ------------------------------------------------------------------------

    def _path(self, job_id: str, resource_type: str) -> Path:
        return self.export_dir / job_id / f"{resource_type}.ndjson"

    async def run(self, job_id: str, caller_of: Callable[[str], Any], base_url: str) -> str:
        """Make the files of one job; idempotent (a job taken up again starts over). Returns its status."""
        job = await self.jobs.find_one({"_id": job_id})
        if job is None or job["status"] not in UNDER_WAY:
            return job["status"] if job else "unknown"
        caller = await caller_of(job["user"])
        if caller is None:
            await self._finish(job_id, "failed", error="the account that asked for it is no longer active")
            return "failed"
        await self.jobs.update_one({"_id": job_id}, {"$set": {"status": "running", "output": [], "progress": 0}})
        shutil.rmtree(self.export_dir / job_id, ignore_errors=True)
        (self.export_dir / job_id).mkdir(parents=True, exist_ok=True)
        store = RecordStore(self.db)
        records = RecordService(store, base_url, Reach(caller, store))
        since = job["since"]
        output = []
        for done, resource_type in enumerate(job["types"], start=1):
            if (await self.jobs.find_one({"_id": job_id}, {"status": 1}) or {}).get("status") != "running":
                shutil.rmtree(self.export_dir / job_id, ignore_errors=True)
                return "cancelled"  # cancelled meanwhile: what was written goes too
            count, patients = await self._write_type(records, resource_type, since, self._path(job_id, resource_type))
            if count:
                output.append({"type": resource_type, "count": count})
                await self._audit(records, caller, job_id, resource_type, patients)
            else:
                self._path(job_id, resource_type).unlink(missing_ok=True)  # the spec leaves empty types out
            await self.jobs.update_one({"_id": job_id, "status": "running"},
                                       {"$set": {"progress": done, "output": output}})
        finished = await self._finish(job_id, "complete", output=output)
        return "complete" if finished else "cancelled"

    @staticmethod
    async def _write_type(records: RecordService, resource_type: str, since: datetime | None,
                          path: Path) -> tuple[int, set[str]]:
        count, patients = 0, set()
        with path.open("wb") as out:
            async for document in records.each_readable(resource_type, since):
                about = [f"Patient/{document['_id']}"] if resource_type == "Patient" else document.get("compartment")
                if not about:
                    continue  # a patient-level export holds what belongs to patients, not a hospital's templates
                out.write(orjson.dumps(document["resource"]) + b"\n")
                count += 1
                patients.update(about)
        return count, patients

    @staticmethod
    async def _audit(records: RecordService, caller: Caller, job_id: str, resource_type: str,
                     patients: set[str]) -> None:
        """One AuditEvent per few hundred patients a file holds, so each patient's access log shows the export."""
        ordered = sorted(patients) or [None]
        events = [audit_event(caller=caller, interaction="export", outcome="0",
                              purpose="PATRQT" if caller.role == "patient" else "TREAT", source_address=None,
                              entities=[f"urn:qilu:export:{job_id}:{resource_type}"],
                              patients=[p for p in ordered[start:start + PATIENTS_PER_EVENT] if p],
                              description=f"bulk export of {resource_type}")
                  for start in range(0, len(ordered), PATIENTS_PER_EVENT)]
        errors = await records.append_audit_events(events)
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]  # no export without its trace: the job fails and its files go

    async def _finish(self, job_id: str, status: str, *, output: list[dict[str, Any]] | None = None,
                      error: str | None = None) -> bool:
        now = now_utc()
        changes: dict[str, Any] = {"status": status, "finished": now, "expires": now + self.keep_for,
                                   "error": error}
        if output is not None:
            changes["output"] = output
        result = await self.jobs.update_one({"_id": job_id, "status": {"$in": list(UNDER_WAY)}},
                                            {"$set": changes})
        return result.modified_count == 1

    async def fail(self, job_id: str, error: str) -> None:
        await self._finish(job_id, "failed", error=error)
        shutil.rmtree(self.export_dir / job_id, ignore_errors=True)

    async def waiting_too_long(self, after: timedelta = timedelta(minutes=2)) -> list[str]:
        """Jobs accepted a while ago that no worker took up (their start was lost while Redis was away)."""
        cursor = self.jobs.find({"status": "accepted", "created": {"$lte": now_utc() - after}}, {"_id": 1})
        return [job["_id"] async for job in cursor]

    async def sweep(self) -> int:
        """Delete the files and jobs whose time is up, and the cancelled ones; returns how many went."""
        now = now_utc()
        gone = 0
        async for job in self.jobs.find({"$or": [{"expires": {"$lte": now}}, {"status": "cancelled"}]},
                                        {"_id": 1}):
            shutil.rmtree(self.export_dir / job["_id"], ignore_errors=True)
            await self.jobs.delete_one({"_id": job["_id"]})
            gone += 1
        return gone


async def ensure_indexes(db: AsyncIOMotorDatabase) -> None:
    await db[EXPORTS].create_index([("user", ASCENDING), ("status", ASCENDING)], name="user_status")
    await db[EXPORTS].create_index([("expires", ASCENDING)], name="expires")
