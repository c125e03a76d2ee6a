"""Who may read and write which part of the record: the access rules applied to every FHIR interaction.

- A patient reads only their own compartment and writes nothing clinical.
- A practitioner reads and writes the patients their organization manages (`managingOrganization`), and
  reads the patients shared with their organization (the referral part supplies that check).
- An administrator manages the directory, reads the audit trail, and reads no clinical data.
A read the caller may not make is answered as if the record did not exist (404): no hint it exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ehr.models import RecordError
from ehr.store import RecordStore
from qilu.auth import Caller

# The directory everybody may read and only administrators edit; the rest is clinical.
DIRECTORY_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService"})
AUDIT_TYPE = "AuditEvent"

# (organization reference) -> ids of the patients shared with it through an active referral and Consent.
SharedPatients = Callable[[str], Awaitable[set[str]]]


async def nobody_shared(_organization: str) -> set[str]:
    return set()


def refused(rule: str) -> RecordError:
    return RecordError.single(403, "forbidden", rule)


def hidden(resource_type: str, resource_id: str) -> RecordError:
    # Word for word what a read of a missing record answers.
    return RecordError.single(404, "not-found", f"{resource_type}/{resource_id} is not known")


class Reach:
    """What one caller may reach in the record; `caller=None` is the system itself (services, workers)."""

    def __init__(self, caller: Caller | None, store: RecordStore, shared_patients: SharedPatients = nobody_shared):
        self.caller = caller
        self.store = store
        self.shared_patients = shared_patients
        self._managed: set[str] | None = None
        self._registered: set[str] = set()  # patients this request registers at the caller's organization
        self._readable: set[str] | None = None
        self._shared: set[str] | None = None

    @property
    def is_system(self) -> bool:
        return self.caller is None

    async def managed_patients(self) -> set[str]:
        """Ids of the patients the practitioner's organization manages (computed once per request)."""
        if self._managed is None:
            self._managed = set()
            if self.caller and self.caller.organization:
                # Tombstones count too, so a deleted patient of this hospital reads as deleted (410), not unknown.
                self._managed = await self.store.ids_matching(
                    "Patient", {"sp.organization": self.caller.organization})
        return self._managed | self._registered

    def count_as_managed(self, patient_id: str, resource: dict[str, Any]) -> None:
        """A Patient this request registers at the practitioner's organization is theirs for the rest of the
        request, so a Bundle's other entries may be about it (a refused write of it undoes a transaction)."""
        organization = (resource.get("managingOrganization") or {}).get("reference")
        if self.caller is not None and self.caller.role == "practitioner" and organization == self.caller.organization:
            self._registered.add(patient_id)
            self._readable = None

    async def _shared_with_caller(self) -> set[str]:
        if self._shared is None:
            organization = self.caller.organization if self.caller else None
            self._shared = await self.shared_patients(organization) if organization else set()
        return self._shared

    async def readable_patients(self) -> set[str]:
        """Every patient the caller may read; searches need the whole list, single reads use `readable_among`."""
        if self._readable is None:
            caller = self.caller
            if caller.role == "patient":
                self._readable = {caller.patient_id} if caller.patient_id else set()
            elif caller.role == "practitioner":
                self._readable = await self.managed_patients() | await self._shared_with_caller()
            else:
                self._readable = set()
        return self._readable

    async def managed_among(self, patient_ids: set[str]) -> set[str]:
        """Which of these patients the practitioner's organization manages, as their own Patient documents
        say: one record's check costs a look at its patients, not a list of the whole hospital's."""
        if not patient_ids or self.caller is None or not self.caller.organization:
            return set()
        if self._managed is not None:
            return patient_ids & (self._managed | self._registered)
        # Tombstones count too, so a deleted patient of this hospital reads as deleted (410), not unknown.
        documents = await self.store.find_by_ids("Patient", sorted(patient_ids), include_deleted=True)
        managed = {d["_id"] for d in documents
                   if self.caller.organization in ((d.get("sp") or {}).get("organization") or [])}
        return managed | (patient_ids & self._registered)

    async def readable_among(self, patient_ids: set[str]) -> set[str]:
        """Which of these patients the caller may read."""
        if self.caller is None:
            return set(patient_ids)
        if self.caller.role == "patient":
            return patient_ids & {self.caller.patient_id}
        if self.caller.role != "practitioner":
            return set()
        readable = await self.managed_among(patient_ids)
        if patient_ids - readable:
            readable |= (patient_ids - readable) & await self._shared_with_caller()
        return readable

    def _clinical_role_check(self, resource_type: str) -> None:
        role = self.caller.role
        if role == "admin" and resource_type != AUDIT_TYPE:
            raise refused("Administrators manage users and the directory and read no clinical data")
        if role != "admin" and resource_type == AUDIT_TYPE:
            # Raw events of a search name every patient it returned; a patient reads their own trail,
            # filtered to them, at /api/me/access-log.
            raise refused("The audit trail is read by administrators; a patient sees who accessed their records "
                          "at /api/me/access-log")

    async def search_filter(self, resource_type: str, *, history: bool = False,
                            about_patient: str | None = None) -> dict[str, Any] | None:
        """An extra condition ANDed into every search of this type (of the history with `history`); None when
        nothing is withheld. `about_patient`: the search asks only for that patient's resources."""
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return None
        self._clinical_role_check(resource_type)
        if self.caller.role == "admin":
            return None  # the audit trail, whole
        if about_patient and resource_type != "Patient" and await self.readable_among({about_patient}):
            # The caller may read that patient: their compartment is the condition, and the hospital's whole
            # list of patients need not be made.
            return {"compartment": f"Patient/{about_patient}"}
        if resource_type == "Patient" and self.caller.role == "practitioner" and not history:
            # A current Patient document says which hospital manages it, so the hospital's patients need not
            # be listed first (history entries do not carry that, so they take the list below).
            others = {"_id": {"$in": sorted(self._registered | await self._shared_with_caller())}}
            if not self.caller.organization:
                return others
            return {"$or": [{"sp.organization": self.caller.organization}, others]}
        # A Patient's own compartment is itself, so one condition serves every type and the history too.
        members = [f"Patient/{pid}" for pid in sorted(await self.readable_patients())]
        if self.caller.role == "practitioner":
            # Practitioners also see the clinical resources that belong to no patient (e.g. a template).
            return {"$or": [{"compartment": {"$in": members}}, {"compartment": []}]}
        return {"compartment": {"$in": members}}

    async def may_read(self, resource_type: str, document: dict[str, Any]) -> bool:
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return True
        try:
            self._clinical_role_check(resource_type)
        except RecordError:
            return False
        if self.caller.role == "admin":
            return True
        if resource_type == "Patient" and self.caller.role == "practitioner" and self.caller.organization in (
                (document.get("sp") or {}).get("organization") or []):
            return True  # the Patient in hand says its hospital manages it: no second look-up
        patients = _patients_of(resource_type, document)
        if not patients:
            return self.caller.role == "practitioner"
        return bool(await self.readable_among(patients))

    async def check_read(self, resource_type: str, document: dict[str, Any]) -> None:
        """Refuse a read: 403 naming the rule when the role may never read this type, else a plain 404."""
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return
        self._clinical_role_check(resource_type)
        if not await self.may_read(resource_type, document):
            raise hidden(resource_type, document["_id"])

    def check_may_write(self, resource_type: str) -> None:
        """Refuse a write by role alone; run before any lookup, so the answer says nothing of what exists."""
        if self.is_system:
            return
        role = self.caller.role
        if resource_type in DIRECTORY_TYPES:
            if role != "admin":
                raise refused("Only administrators edit the directory of hospitals and practitioners")
            return
        if resource_type == AUDIT_TYPE:
            raise refused("The audit trail is written by the server only")
        if role == "patient":
            raise refused("Patients read their records and write nothing clinical")
        if role == "admin":
            raise refused("Administrators manage users and the directory and read no clinical data")

    async def check_write(self, resource_type: str, resource: dict[str, Any] | None,
                          previous: dict[str, Any] | None, compartment: list[str]) -> None:
        """`compartment` is the new version's; `previous` the current document (or None on create)."""
        self.check_may_write(resource_type)
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return
        # A tombstone is judged too (it keeps its compartment): re-creating it must not hand its history over.
        if previous is not None:
            before = _patients_of(resource_type, previous)
            if await self.managed_among(before) != before:
                if not previous.get("deleted") and await self.may_read(resource_type, previous):
                    # Shared with the caller: they know it exists, so say which rule refuses.
                    raise refused("A practitioner writes only the records of patients their organization manages")
                raise hidden(resource_type, previous["_id"])
        if resource_type == "Patient":
            organization = ((resource or {}).get("managingOrganization") or {}).get("reference")
            if resource is not None and organization != self.caller.organization:
                raise refused("A practitioner registers and edits patients whose managingOrganization is their "
                              f"own organization ({self.caller.organization})")
            return
        patients = {member.removeprefix("Patient/") for member in compartment}
        if patients - await self.managed_among(patients):
            raise refused("A practitioner writes only the records of patients their organization manages")


def _patients_of(resource_type: str, document: dict[str, Any]) -> set[str]:
    """The patients a stored resource belongs to (a Patient belongs to itself)."""
    if resource_type == "Patient":
        return {document["_id"]}
    return {member.removeprefix("Patient/") for member in document.get("compartment") or []}
