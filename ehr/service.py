"""The record's rules: versioned writes, identifier uniqueness, reads, history, search, bundles, $everything."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ehr import search
from ehr.access import Reach, enforce
from ehr.models import RESOURCE_TYPES, READ_ONLY_TYPES, RecordError, ResourceIssue, is_supported_type, \
    validate_resource
from ehr.sharing import Sharing
from ehr.store import ABANDONED_WRITE_AFTER, REACHED_TYPES, RecordStore
from fhir_profiles.identifiers import EHEALTH_CARD_SYSTEM, NATIONAL_ID_SYSTEM, PRACTITIONER_NUMBER_SYSTEM, \
    USCC_SYSTEM

# Identifiers that name exactly one resource of their type (a second one is a 409).
UNIQUE_IDENTIFIER_SYSTEMS: dict[str, frozenset[str]] = {
    "Patient": frozenset({NATIONAL_ID_SYSTEM, EHEALTH_CARD_SYSTEM}),
    "Organization": frozenset({USCC_SYSTEM}),
    "Practitioner": frozenset({PRACTITIONER_NUMBER_SYSTEM}),
    # The card's own number: unique, and its key is how a scanned card is found in one lookup.
    "Basic": frozenset({EHEALTH_CARD_SYSTEM}),
}
MAX_REVINCLUDE = 1000
MAX_BUNDLE_ENTRIES = 1000
# A search's total is counted up to this many matches; past it the Bundle has none unless _total=accurate.
COUNTED = 100


def now_utc() -> datetime:
    # BSON keeps milliseconds; cut here so what we return equals what we read back.
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def fhir_instant(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def identifier_key(resource_type: str, system: str, value: str) -> str:
    """The key collection's _id for one identifier of one resource type."""
    return f"{resource_type}|{system}|{value.upper() if system == NATIONAL_ID_SYSTEM else value}"


def unique_identifier_keys(resource: dict[str, Any] | None) -> set[str]:
    if not resource:
        return set()
    systems = UNIQUE_IDENTIFIER_SYSTEMS.get(resource.get("resourceType", ""), frozenset())
    keys = set()
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") in systems and identifier.get("value"):
            keys.add(identifier_key(resource["resourceType"], identifier["system"], identifier["value"]))
    return keys


def _one_patient_asked(params: list[tuple[str, str]]) -> str | None:
    """The patient id a search names with `patient=` or `subject=Patient/..` (one value), if it does."""
    for name, value in params:
        if name in ("patient", "subject") and value and not {",", "\\", "|"} & set(value):
            reference = value if "/" in value or name == "subject" else f"Patient/{value}"
            kind, _, patient_id = reference.rpartition("/")
            if kind.rsplit("/", 1)[-1] == "Patient" and patient_id:
                return patient_id
    return None


def parse_etag(value: str | None) -> int | None:
    """`W/"3"` (or `"3"`, or `3`) -> 3."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else ""  # a Bundle's ifMatch may be any JSON
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise RecordError.single(400, "invalid", f"If-Match must be a version ETag such as W/\"1\", not {value!r}")
    return int(text)


@dataclass
class Written:
    """The outcome of one versioned write, with what is needed to undo it inside a transaction."""

    resource_type: str
    resource_id: str
    vid: int
    updated: datetime
    resource: dict[str, Any] | None  # None for a delete
    created: bool
    previous: dict[str, Any] | None = field(repr=False, default=None)
    claimed_keys: list[str] = field(default_factory=list)
    released_keys: list[str] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return f'W/"{self.vid}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.resource_id}/_history/{self.vid}"


def stamped(resource: dict[str, Any], resource_id: str, vid: int, updated: datetime) -> dict[str, Any]:
    """The resource as version `vid` stores it: its id, and the server's versionId and lastUpdated in meta."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    return {**resource, "id": resource_id,
            "meta": {"versionId": str(vid), "lastUpdated": fhir_instant(updated), **meta}}


def identifier_taken(resource_type: str, key: str) -> RecordError:
    """The refusal of a write whose unique identifier (`key`) another resource holds."""
    system = key.split("|")[1]
    return _issue(409, "duplicate", f"Another {resource_type} already holds this identifier (system {system})",
                  f"{resource_type}.identifier")


def changed_meanwhile(owner: str) -> RecordError:
    """The refusal of a write that lost a race for the version it was writing."""
    return _issue(409, "conflict", f"{owner} was changed by someone else at the same moment; read it again and retry")


def _issue(status: int, code: str, text: str, expression: str | None = None) -> RecordError:
    return RecordError.single(status, code, text, expression)


@contextmanager
def _as_bad_parameter():
    try:
        yield
    except search.SearchValueError as exc:
        raise _issue(400, "value", str(exc)) from None


def require_type(resource_type: str, *, writing: bool = False) -> None:
    if not is_supported_type(resource_type):
        raise _issue(404, "not-supported", f"Resource type '{resource_type}' is not supported here")
    if writing and resource_type in READ_ONLY_TYPES:
        raise _issue(405, "not-supported", f"{resource_type} is written by the server only and cannot be changed")


def check_id(resource_id: str) -> None:
    if not search.is_valid_id(resource_id):
        raise _issue(400, "value", "A resource id is 1-64 characters of A-Z a-z 0-9 - and .", "id")


def _transfer_target(body: Any) -> str:
    """The `Organization/{id}` a $transfer's Parameters name."""
    parameters = body.get("parameter") if isinstance(body, dict) and body.get("resourceType") == "Parameters" else None
    if not isinstance(parameters, list):
        raise _issue(400, "structure", "$transfer takes a Parameters resource with an `organization` parameter",
                     "Parameters")
    for parameter in parameters:
        if isinstance(parameter, dict) and parameter.get("name") == "organization":
            reference = (parameter.get("valueReference") or {}).get("reference") if isinstance(
                parameter.get("valueReference"), dict) else None
            if isinstance(reference, str) and reference.startswith("Organization/") and search.is_valid_id(
                    reference.removeprefix("Organization/")):
                return reference
            break
    raise _issue(400, "required", "$transfer needs the parameter `organization` as a valueReference to "
                                  "Organization/{id}", "Parameters.parameter[organization]")


def reach_changed_by(resource_type: str, document: dict[str, Any],
                      previous: dict[str, Any] | None) -> tuple[list[str], set[str]]:
    """The patients whose reach a write changes (a Consent's, or a Patient's moving to another hospital), and
    the hospitals it may take away besides their shares (the one a Patient leaves)."""
    if resource_type == "Consent":
        members = set(document["compartment"]) | set((previous or {}).get("compartment") or [])
        return sorted(member.removeprefix("Patient/") for member in members), set()
    if resource_type == "Patient" and previous is not None:
        before = set((previous.get("sp") or {}).get("organization") or [])
        if before != set(document["sp"].get("organization") or []):
            return [document["_id"]], before
    return [], set()


def rewrite_references(node: Any, mapping: dict[str, str]) -> Any:
    """Replace every `reference` that names a Bundle fullUrl with the id it was given."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = rewrite_references(value, mapping)
        return out
    if isinstance(node, list):
        return [rewrite_references(item, mapping) for item in node]
    return node


class RecordService:
    @classmethod
    def as_system(cls, db: Any, fhir_base: str) -> RecordService:
        """The record over one database as the system: no caller's reach (other services, workers, scripts)."""
        return cls(RecordStore(db), fhir_base)

    def __init__(self, store: RecordStore, base_url: str, reach: Reach | None = None):
        """`reach` is the caller's; without one the service acts as the system (other services, workers)."""
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.reach = reach
        self.sharing = Sharing(store)
        self.counted = COUNTED
        # What this request touched, for its one AuditEvent: resource references and the patients concerned.
        self.touched: list[str] = []
        self.touched_patients: set[str] = set()

    def _touch(self, resource_type: str, document: dict[str, Any]) -> None:
        if self.reach is None:
            return  # the system's long-lived services keep no per-request trace (it would only grow)
        self.touched.append(f"{resource_type}/{document['_id']}")
        self.touched_patients.update(document.get("compartment") or [])

    async def _check_read(self, resource_type: str, document: dict[str, Any]) -> None:
        if self.reach is not None:
            await self.reach.check_read(resource_type, document)

    async def _reach_filter(self, resource_type: str, query: dict[str, Any], *, history: bool = False,
                            about_patient: str | None = None) -> dict[str, Any]:
        extra = (await self.reach.search_filter(resource_type, history=history, about_patient=about_patient)
                 if self.reach is not None else None)
        return query if extra is None else {"$and": [query, extra]}

    # --- the single write path ------------------------------------------------------------------

    def document_for(self, resource_type: str, resource_id: str, vid: int, updated: datetime,
                  resource: dict[str, Any] | None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        if resource is None:
            # A tombstone keeps what it was indexed by (searches skip it by `deleted`), so the access
            # rules judge it as they judged the resource: who could not see it cannot learn it existed.
            previous = previous or {}
            return {"_id": resource_id, "vid": vid, "updated": updated, "deleted": True, "resource": None,
                    "sp": previous.get("sp", {}), "so": previous.get("so", {}),
                    "compartment": previous.get("compartment", [])}
        sp, so, compartment = search.index_resource(resource)
        return {"_id": resource_id, "vid": vid, "updated": updated, "deleted": False, "resource": resource,
                "sp": sp, "so": so, "compartment": compartment}

    async def _commit(self, resource_type: str, resource_id: str, previous: dict[str, Any] | None,
                      resource: dict[str, Any] | None, method: str, *, fresh_id: bool = False,
                      transfer: bool = False) -> Written:
        """The one write path. `fresh_id`: the id was made up by this request (nobody else can write it);
        `transfer`: the $transfer act, the one write that may change a Patient's managingOrganization."""
        vid = previous["vid"] + 1 if previous else 1
        if resource is not None:
            await self.resolve_patient_identifiers(resource)
        updated = now_utc()
        if resource is not None:
            resource = stamped(resource, resource_id, vid, updated)
        owner = f"{resource_type}/{resource_id}"
        document = self.document_for(resource_type, resource_id, vid, updated, resource, previous)
        if self.reach is not None:
            await self.reach.check_write(resource_type, resource, previous, document["compartment"], transfer=transfer)
        if resource_type in REACHED_TYPES:
            # The access check has looked at the patients already: the reach finds them kept, while this
            # process hears of changes (ehr/sharing.py).
            document["reach"] = await self.sharing.reach_of_document(resource_type, document, previous,
                                                                     self.reach.looked if self.reach else None)
        reach_changing, formerly = reach_changed_by(resource_type, document, previous)
        if reach_changing:
            # Marked before it is written: should this request stop before working the reach out, the sweep does.
            await self.sharing.unsettle(reach_changing, formerly)
        old_keys = unique_identifier_keys(previous["resource"] if previous and not previous["deleted"] else None)
        new_keys = unique_identifier_keys(resource)
        keys = sorted(new_keys - old_keys)
        claimed: list[str] = []
        conflict = changed_meanwhile(owner)
        version_claimed = document_written = False
        write_id = uuid.uuid4().hex
        # The document can go with its claims when its id is this request's own (nobody to lock out) and it
        # claims no unique identifier (else a second Patient with the same ID number could be seen for a moment).
        fresh_id = fresh_id and previous is None and not keys
        try:
            # The history entry is the write's lock: only one writer can insert version `vid`. The identifier
            # claims are independent of it, so they go to the engine at the same time.
            steps = [self.store.claim_version(resource_type, resource_id, vid, updated, method, resource, write_id,
                                              document["compartment"], document.get("reach", [])),
                     *(self.store.claim_identifier(key, owner, write_id, updated - ABANDONED_WRITE_AFTER)
                       for key in keys)]
            if fresh_id:
                steps.append(self.store.insert_first_version(resource_type, document))
            outcome = await asyncio.gather(*steps, return_exceptions=True)
            version_claimed = outcome[0] is True
            holders = outcome[1:1 + len(keys)]
            claimed = [key for key, holder in zip(keys, holders, strict=True) if holder is None]
            document_written = fresh_id and outcome[-1] is True
            failures = [result for result in outcome if isinstance(result, BaseException)]
            if failures:
                raise failures[0]
            for key, holder in zip(keys, holders, strict=True):
                if holder is not None:  # held by this same resource: another write of it is taking the key now
                    raise conflict if holder == owner else identifier_taken(resource_type, key)
            if not version_claimed:
                await self.finish_abandoned_write(resource_type, resource_id, vid)
                raise conflict
            if fresh_id:
                ok = document_written
            elif previous is None:
                ok = await self.store.insert_first_version(resource_type, document)
            else:
                ok = await self.store.replace_if_version(resource_type, resource_id, previous["vid"], document)
            if not ok:
                raise conflict
        except BaseException:
            if document_written:
                await self.store.restore(resource_type, None, resource_id)
            if version_claimed:
                await self.store.remove_history(resource_type, resource_id, vid)
            for key in claimed:
                await self.store.release_identifier(key, owner, write_id)
            for patient_id in reach_changing:
                with contextlib.suppress(Exception):  # what was stored stands; the sweep works it out else
                    await self.sharing.refresh(patient_id, formerly=formerly)
            raise
        written_new = previous is None
        released = sorted(old_keys - new_keys)
        for key in released:
            await self.store.release_identifier(key, owner)
        self._touch(resource_type, document)
        if previous is not None:
            self.touched_patients.update(previous.get("compartment") or [])
        if self.reach is not None and resource_type == "Patient" and resource is not None and written_new:
            self.reach.count_as_managed(resource_id, resource)  # later entries of a batch may be about it
        await self.follow_reach(resource_type, document, previous)
        return Written(resource_type, resource_id, vid, updated, resource, previous is None or previous["deleted"],
                       previous, claimed, released)

    async def share(self, source: str, patient_ref: str, organization: str, consent_ref: str,
                    start: datetime | None, until: datetime | None) -> None:
        """What `source` (an accepted referral) shares with `organization` from `start` to `until` (no start:
        nothing); the patient's reach follows at once."""
        await self.sharing.grant(source, patient_ref, organization, consent_ref, start, until)

    async def follow_reach(self, resource_type: str, document: dict[str, Any],
                            previous: dict[str, Any] | None) -> None:
        """A Consent decides which shares hold, and a Patient's hospital is in every one of their resources'
        reach: a write of either works the patient's reach out again (a revocation is in force at once)."""
        patients, formerly = reach_changed_by(resource_type, document, previous)
        for patient_id in patients:
            if self.reach is not None:
                self.reach.looked.pop(patient_id, None)  # the look is from before the change
            await self.sharing.refresh(patient_id, formerly=formerly)

    async def resolve_patient_identifiers(self, resource: dict[str, Any]) -> None:
        """A compartment reference that names a Patient by identifier only becomes a reference to that Patient,
        so the resource is filed in the patient's record and judged by its rules. No match, or a patient the
        caller may not write, is one and the same 422: the answer does not tell whether the patient exists."""
        resource_type = resource.get("resourceType", "")
        for path, slot in search.compartment_references(resource):
            identifier = slot.get("identifier")
            if slot.get("reference") or not isinstance(identifier, dict) or slot.get("type") not in (None, "Patient"):
                continue
            system, value = identifier.get("system"), identifier.get("value")
            if slot.get("type") is None and system != NATIONAL_ID_SYSTEM:
                continue  # not said to be a Patient, and not an ID number: another kind of subject
            patient_id = await self._patient_with_identifier(system, value) if system and value else None
            if patient_id is not None and self.reach is not None and not self.reach.is_system:
                if not (await self.reach.decide_about("create", patient_id)).allowed:
                    patient_id = None
            if patient_id is None:
                where = f"{resource_type}.{path}"
                raise _issue(422, "not-found", f"{where} names a Patient by identifier, and no patient you may "
                                               "write holds that identifier", where)
            slot["reference"] = f"Patient/{patient_id}"

    async def _patient_with_identifier(self, system: str, value: str) -> str | None:
        """The id of the one current Patient holding this identifier (None for none, or for several)."""
        if system in UNIQUE_IDENTIFIER_SYSTEMS["Patient"]:
            holder = await self.store.identifier_owner(identifier_key("Patient", system, value))
            return holder.partition("/")[2] if holder else None
        with _as_bad_parameter():
            plan = search.parse_search("Patient", [("identifier", f"{system}|{value}")], handling="strict")
        matches = await self.store.find("Patient", {"$and": [plan.filter, {"deleted": False}]}, sort=[("_id", 1)],
                                        limit=2)
        return matches[0]["_id"] if len(matches) == 1 else None

    async def finish_abandoned_write(self, resource_type: str, resource_id: str, vid: int) -> None:
        """Roll the current version forward to history entry `vid` when its writer stopped between its two
        steps (the entry is old and the current document never reached it), so the record is not stuck.
        Every caller builds the same document from the same entry, so racing callers agree."""
        entry = await self.store.get_version(resource_type, resource_id, vid)
        current = await self.store.get(resource_type, resource_id)
        if entry is None or (current is not None and current["vid"] >= vid):
            return
        if now_utc() - entry["updated"] < ABANDONED_WRITE_AFTER:
            return  # most likely a writer still between its two steps
        document = self.document_for(resource_type, resource_id, vid, entry["updated"], entry["resource"],
                                  current or {"compartment": entry.get("compartment", [])})
        if resource_type in REACHED_TYPES:
            document["reach"] = entry.get("reach") or []
        if current is None:
            await self.store.insert_first_version(resource_type, document)
        else:
            await self.store.replace_if_version(resource_type, resource_id, vid - 1, document)
        await self.follow_reach(resource_type, document, current)

    async def undo(self, written: Written) -> None:
        """Put back what a write replaced (used to roll a transaction back)."""
        owner = f"{written.resource_type}/{written.resource_id}"
        await self.store.restore(written.resource_type, written.previous, written.resource_id)
        await self.store.remove_history(written.resource_type, written.resource_id, written.vid)
        for key in written.claimed_keys:
            await self.store.release_identifier(key, owner)
        for key in written.released_keys:
            await self.store.claim_identifier(key, owner)
        if written.resource_type in ("Consent", "Patient"):
            # What the write did to the patient's reach is worked out again from what is stored now.
            members = set((written.previous or {}).get("compartment") or [])
            formerly: set[str] = set()
            if written.resource is not None:
                sp, _, compartment = search.index_resource(written.resource)
                members |= set(compartment)
                if written.resource_type == "Patient":
                    formerly = set(sp.get("organization") or [])
            for member in sorted(members):
                await self.sharing.refresh(member.removeprefix("Patient/"), formerly=formerly)

    # --- create, read, update, delete -------------------------------------------------------------

    async def create(self, resource_type: str, body: Any, *, if_none_exist: str | None = None,
                     resource_id: str | None = None) -> tuple[Written | None, dict[str, Any] | None]:
        """Returns (written, None) for a new resource, or (None, existing) when If-None-Exist matched one."""
        require_type(resource_type, writing=True)
        resource = validate_resource(body, expected_type=resource_type)
        if if_none_exist:
            matches = await self._conditional_matches(resource_type, if_none_exist)
            if len(matches) > 1:
                raise _issue(412, "duplicate", f"If-None-Exist matched {len(matches)} resources; it must match "
                                               "at most one")
            if matches:
                return None, matches[0]["resource"]
        return await self._commit(resource_type, resource_id or str(uuid.uuid4()), None, resource, "POST",
                                  fresh_id=resource_id is None), None

    async def _conditional_matches(self, resource_type: str, criteria: str) -> list[dict[str, Any]]:
        if not isinstance(criteria, str):
            raise _issue(400, "invalid", "If-None-Exist is a search query such as identifier=system|value")
        plan = search.parse_search(resource_type, parse_qsl(criteria.lstrip("?"), keep_blank_values=True),
                                   handling="strict")
        self._raise_on_errors(plan)
        # Only what the caller may see can match: a match elsewhere must not be handed back.
        query = await self._reach_filter(resource_type, plan.filter)
        return await self.store.find(resource_type, query, sort=[("_id", 1)], limit=2)

    async def _current(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        require_type(resource_type)
        if self.reach is not None:
            self.reach.check_type(resource_type)  # what the role alone decides, before anything is looked up
        check_id(resource_id)
        document = await self.store.get(resource_type, resource_id)
        if document is None:
            raise _issue(404, "not-found", f"{resource_type}/{resource_id} is not known")
        await self._check_read(resource_type, document)
        self._touch(resource_type, document)
        return document

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """The current document ({vid, updated, resource, ...}); 410 when deleted."""
        document = await self._current(resource_type, resource_id)
        if document["deleted"]:
            raise RecordError.single(410, "deleted", f"{resource_type}/{resource_id} was deleted",
                                     headers={"ETag": f'W/"{document["vid"]}"'})
        return document

    async def vread(self, resource_type: str, resource_id: str, vid: str) -> dict[str, Any]:
        require_type(resource_type)
        check_id(resource_id)
        if not vid.isdigit():
            raise _issue(400, "value", "A version id is a whole number")
        await self._current(resource_type, resource_id)
        entry = await self.store.get_version(resource_type, resource_id, int(vid))
        # A version filed under a patient the caller may not read is, to them, a version that never was.
        if entry is None or (self.reach is not None and not await self.reach.may_read(
                resource_type, {"_id": resource_id, "compartment": entry.get("compartment") or []})):
            raise _issue(404, "not-found", f"{resource_type}/{resource_id} has no version {vid}")
        if entry["resource"] is None:
            raise _issue(410, "deleted", f"Version {vid} of {resource_type}/{resource_id} is a deletion")
        return entry

    async def update(self, resource_type: str, resource_id: str, body: Any, *,
                     if_match: str | None = None) -> Written:
        require_type(resource_type, writing=True)
        if self.reach is not None:
            self.reach.check_may_write(resource_type)  # before any lookup that could tell the record exists
        check_id(resource_id)
        resource = validate_resource(body, expected_type=resource_type)
        if resource.get("id") != resource_id:
            raise _issue(400, "invalid", f"The resource's id ({resource.get('id')!r}) must equal the id in the URL "
                                         f"({resource_id!r})", f"{resource_type}.id")
        expected = parse_etag(if_match)
        for attempt in range(3):
            previous = await self.store.get(resource_type, resource_id)
            if previous is not None:
                await self._check_read(resource_type, previous)  # before any answer that tells it exists
            if expected is not None and (previous is None or previous["vid"] != expected):
                current = previous["vid"] if previous else "none"
                raise _issue(412, "conflict", f"If-Match asked for version {expected} but the current version is "
                                              f"{current}")
            try:
                return await self._commit(resource_type, resource_id, previous, resource,
                                          "PUT" if previous else "POST")
            except RecordError as exc:
                # Lost a race: with If-Match that is the caller's 412; without, apply on top of the winner.
                if exc.status != 409 or exc.issues[0].code != "conflict":
                    raise
                if expected is not None:
                    raise _issue(412, "conflict", f"Version {expected} was replaced while this update was "
                                                  "being written") from None
        raise _issue(409, "conflict", f"{resource_type}/{resource_id} is being changed by many writers at once; retry")

    async def delete(self, resource_type: str, resource_id: str) -> Written | None:
        """Soft delete: a history entry, then 410 on read. None when it was already deleted."""
        require_type(resource_type, writing=True)
        if self.reach is not None:
            self.reach.check_may_write(resource_type)  # before any lookup that could tell the record exists
        previous = await self._current(resource_type, resource_id)
        if previous["deleted"]:
            return None
        return await self._commit(resource_type, resource_id, previous, None, "DELETE")

    # --- Patient/$transfer: the one way a patient moves to another hospital ------------------------

    async def transfer(self, patient_id: str, body: Any) -> Written:
        """Hand a patient, with their whole record, to another hospital: done by the managing hospital or an
        administrator, as its own audited act. `body` is a Parameters resource naming the `organization`."""
        if self.reach is not None:
            self.reach.check_role("transfer")  # a patient may move nobody, whether the id exists or not
        check_id(patient_id)
        organization = _transfer_target(body)
        previous = await self.store.get("Patient", patient_id)
        if previous is None or previous["deleted"]:
            raise _issue(404, "not-found", f"Patient/{patient_id} is not known")
        if self.reach is not None:
            enforce(await self.reach.decide_about("transfer", patient_id, previous), "Patient", patient_id)
        before = (previous["resource"].get("managingOrganization") or {}).get("reference")
        if organization == before:
            raise _issue(422, "business-rule", f"Patient/{patient_id} is already managed by {organization}",
                         "Parameters.parameter[organization]")
        target = await self.store.get("Organization", organization.removeprefix("Organization/"))
        if target is None or target["deleted"]:
            raise _issue(422, "not-found", f"{organization} is not a hospital in the directory",
                         "Parameters.parameter[organization]")
        resource = {**previous["resource"], "managingOrganization": {"reference": organization}}
        written = await self._commit("Patient", patient_id, previous, resource, "PUT", transfer=True)
        self.touched += [ref for ref in (before, organization) if ref]  # the trail names both hospitals
        return written

    # --- history --------------------------------------------------------------------------------

    async def history(self, resource_type: str | None, resource_id: str | None,
                      params: list[tuple[str, str]]) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if resource_type:
            require_type(resource_type)
            query["type"] = resource_type
        if resource_id:
            await self._current(resource_type, resource_id)
            query["id"] = resource_id
        count, offset = 20, 0
        with _as_bad_parameter():
            for name, value in params:
                if name == "_count":
                    count = search.parse_count(value)
                elif name == "_offset":
                    offset = search.parse_offset(value)
                elif name == "_since":
                    query["updated"] = {"$gte": search.parse_instant(value)}
        if resource_type:  # an instance's too: its earlier versions may have been another patient's
            query = await self._reach_filter(resource_type, query, history=True)
        entries, total = await self.store.history(query, skip=offset, limit=count)
        for entry in entries:
            self.touched_patients.update(entry.get("compartment") or [])
        bundle_entries = []
        for entry in entries:
            item: dict[str, Any] = {"fullUrl": f"{self.base_url}/{entry['type']}/{entry['id']}",
                                    "request": {"method": entry["method"], "url": entry["type"] + (
                                        "" if entry["method"] == "POST" else f"/{entry['id']}")},
                                    "response": {"status": "201" if entry["method"] == "POST" else "200",
                                                 "etag": f'W/"{entry["vid"]}"',
                                                 "lastModified": fhir_instant(entry["updated"])}}
            if entry["resource"] is not None:
                item["resource"] = entry["resource"]
            else:
                item["response"]["status"] = "204"
            bundle_entries.append(item)
        path = "/".join(p for p in (resource_type, resource_id, "_history") if p)
        kept = [(k, v) for k, v in params if k == "_since"]
        return self._bundle("history", total, bundle_entries, path, kept, count, offset)

    # --- search ---------------------------------------------------------------------------------

    @staticmethod
    def _raise_on_errors(plan: search.SearchPlan) -> None:
        errors = [i for i in plan.issues if i.severity in ("error", "fatal")]
        if errors:
            raise RecordError(400, [ResourceIssue(i.severity, i.code, i.diagnostics,
                                                  [i.expression] if i.expression else []) for i in errors])

    def _bundle(self, kind: str, total: int | None, entries: list[dict[str, Any]], path: str,
                used: list[tuple[str, str]], count: int, offset: int, more: bool = False) -> dict[str, Any]:
        """`more` says a next page exists when there is no total to tell (_total=none)."""
        def link(relation: str, at: int) -> dict[str, str]:
            query = urlencode([*used, ("_count", str(count)), ("_offset", str(at))])
            return {"relation": relation, "url": f"{self.base_url}/{path}?{query}"}

        links = [link("self", offset)]
        if count > 0 and (offset + count < total if total is not None else more):
            links.append(link("next", offset + count))
        if offset > 0 and count > 0:
            links.append(link("previous", max(0, offset - count)))
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "meta": {
            "lastUpdated": fhir_instant(now_utc())}, "type": kind}
        if total is not None:
            bundle["total"] = total
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return bundle

    def _entry(self, document: dict[str, Any], mode: str, plan: search.SearchPlan | None = None) -> dict[str, Any]:
        resource = document["resource"]
        if plan is not None and plan.elements:
            resource = search.apply_elements(resource, plan.elements)
        elif plan is not None and plan.summary in ("true", "text", "data"):
            resource = search.apply_summary(resource, plan.summary)
        return {"fullUrl": f"{self.base_url}/{resource['resourceType']}/{resource['id']}",
                "resource": resource, "search": {"mode": mode}}

    async def search(self, resource_type: str, params: list[tuple[str, str]], *,
                     handling: str | None = None) -> dict[str, Any]:
        require_type(resource_type)
        plan = search.parse_search(resource_type, params, handling=handling)
        self._raise_on_errors(plan)
        query = await self._reach_filter(resource_type, plan.filter, about_patient=_one_patient_asked(params))
        owner = await self._unique_identifier_owner(resource_type, params)
        if owner is not None:
            # The whole filter still decides; the key only spares the engine reading every other document.
            query = {"_id": owner, "$and": [query]}
        if plan.summary == "count":
            total = None if plan.total == "none" else await self.store.count(resource_type, query)
            return self._bundle("searchset", total, [], resource_type, plan.used, 0, 0)
        # One row more than the page shows whether a next page exists.
        matched = await self.store.find(resource_type, query, sort=plan.sort, skip=plan.offset,
                                        limit=plan.count + 1 if plan.count > 0 else 0)
        more = len(matched) > plan.count
        matched = matched[:plan.count]
        if plan.total == "none":
            total = None
        elif plan.count > 0 and not more and (matched or plan.offset == 0):
            total = plan.offset + len(matched)  # this page holds the last match: counting would say the same
        elif plan.total == "accurate":
            total = await self.store.count(resource_type, query)
        else:
            # Counting every match of a broad search costs as much as reading them all: up to `counted`, and
            # past that no total (a paged searchset may leave it out; `_total=accurate` asks for it).
            counted = await self.store.count(resource_type, query, limit=self.counted + 1)
            total = counted if counted <= self.counted else None
        included = await self._included(resource_type, matched, plan)
        for doc in matched:
            self._touch(resource_type, doc)
        for doc in included:
            self._touch(doc["resource"]["resourceType"], doc)
        entries = [self._entry(doc, "match", plan) for doc in matched]
        entries += [self._entry(doc, "include") for doc in included]
        warnings = [i for i in plan.issues if i.severity not in ("error", "fatal")]
        if warnings:
            outcome = {"resourceType": "OperationOutcome", "id": str(uuid.uuid4()), "issue": [
                ResourceIssue(i.severity, i.code, i.diagnostics, [i.expression] if i.expression else [])
                .as_outcome_issue() for i in warnings]}
            entries.append({"resource": outcome, "search": {"mode": "outcome"}})
        return self._bundle("searchset", total, entries, resource_type, plan.used, plan.count, plan.offset, more)

    async def _unique_identifier_owner(self, resource_type: str, params: list[tuple[str, str]]) -> str | None:
        """The id of the one resource that can match `identifier=system|value` of a unique system, looked up
        in the identifier keys; "" when nobody holds it; None when the search names no such identifier."""
        systems = UNIQUE_IDENTIFIER_SYSTEMS.get(resource_type, frozenset())
        for name, value in params:
            system, bar, code = value.partition("|")
            if name == "identifier" and bar and system in systems and code and not {",", "\\"} & set(value):
                holder = await self.store.identifier_owner(identifier_key(resource_type, system, code))
                return holder.partition("/")[2] if holder else ""
        return None

    async def _included(self, resource_type: str, matched: list[dict[str, Any]],
                        plan: search.SearchPlan) -> list[dict[str, Any]]:
        seen = {f"{resource_type}/{doc['_id']}" for doc in matched}
        found: list[dict[str, Any]] = []
        wanted: dict[str, set[str]] = {}
        for include in plan.include:
            if include.source_type != resource_type:
                continue
            for doc in matched:
                for ref in search.reference_targets(doc["resource"], resource_type, include.param):
                    target_type, _, target_id = ref.partition("/")
                    if include.target_type in (None, target_type) and is_supported_type(target_type):
                        wanted.setdefault(target_type, set()).add(target_id)
        for target_type, ids in wanted.items():
            for doc in await self.store.find_by_ids(target_type, sorted(ids)):
                key = f"{target_type}/{doc['_id']}"
                if key not in seen and (self.reach is None or await self.reach.may_read(target_type, doc)):
                    seen.add(key)
                    found.append(doc)
        matched_refs = [f"{resource_type}/{doc['_id']}" for doc in matched]
        for include in plan.revinclude:
            if not matched_refs or not is_supported_type(include.source_type):
                continue
            query = await self._reach_filter(include.source_type,
                                             {"deleted": False, f"sp.{include.param}": {"$in": matched_refs}})
            for doc in await self.store.find(include.source_type, query, sort=[("_id", 1)], limit=MAX_REVINCLUDE):
                key = f"{include.source_type}/{doc['_id']}"
                if key not in seen:
                    seen.add(key)
                    found.append(doc)
        return found

    # --- bulk export ------------------------------------------------------------------------------

    async def each_readable(self, resource_type: str, since: datetime | None = None
                            ) -> AsyncIterator[dict[str, Any]]:
        """Every current resource of this type the caller may read (changed since `since`), one at a time."""
        require_type(resource_type)
        query: dict[str, Any] = {"deleted": False}
        if since is not None:
            query["updated"] = {"$gte": since}
        async for document in self.store.each(resource_type, await self._reach_filter(resource_type, query)):
            yield document

    # --- the audit trail --------------------------------------------------------------------------

    async def append_audit_events(self, events: list[dict[str, Any]]) -> list[BaseException | None]:
        """One insert for all of them; AuditEvents are never changed. Says, per event, what went wrong."""
        recorded = now_utc()
        documents = [self.document_for("AuditEvent", event["id"], 1, recorded,
                                    {**event, "meta": {"versionId": "1", "lastUpdated": fhir_instant(recorded)}})
                     for event in events]
        return await self.store.insert_audit_events(documents)

    async def access_log(self, patient: str, *, exclude_agent: str | None, count: int, offset: int) -> dict[str, Any]:
        """Who accessed this patient's records, newest first, in words a patient reads."""
        query: dict[str, Any] = {"deleted": False, "compartment": patient}
        if exclude_agent:
            query["sp.agent"] = {"$nin": [exclude_agent]}
        total = await self.store.count("AuditEvent", query)
        events = await self.store.find("AuditEvent", query, sort=[("updated", -1), ("_id", -1)], skip=offset,
                                       limit=count)
        org_refs = {agent["who"]["reference"] for doc in events for agent in doc["resource"].get("agent", [])
                    if not agent.get("requestor") and agent.get("who", {}).get("reference", "").startswith(
                        "Organization/")}
        org_names = {f"Organization/{doc['_id']}": doc["resource"].get("name", "")
                     for doc in await self.store.find_by_ids("Organization",
                                                             sorted(r.removeprefix("Organization/") for r in org_refs))}
        entries = []
        for doc in events:
            event = doc["resource"]
            requestor = next((a for a in event.get("agent", []) if a.get("requestor")), {})
            organization = next((a["who"]["reference"] for a in event.get("agent", []) if not a.get("requestor")
                                 and a.get("who", {}).get("reference", "").startswith("Organization/")), None)
            purpose = ((event.get("purposeOfEvent") or [{}])[0].get("coding") or [{}])[0]
            entries.append({
                "when": event["recorded"],
                "who": requestor.get("who", {}).get("display") or requestor.get("who", {}).get("reference"),
                "whoReference": requestor.get("who", {}).get("reference"),
                "role": (requestor.get("role") or [{}])[0].get("text"),
                "organization": org_names.get(organization) or organization,
                "organizationReference": organization,
                "action": (event.get("subtype") or [{}])[0].get("code"),
                "purpose": purpose.get("display") or purpose.get("code"),
                "outcome": "success" if event.get("outcome") == "0" else "refused",
                # One search's event names every patient it returned; each sees only their own part of it.
                "records": [e["what"]["reference"] for e in event.get("entity", [])
                            if e.get("what", {}).get("reference")
                            and not e["what"]["reference"].startswith("Patient/")],
            })
        return {"total": total, "count": count, "offset": offset, "entries": entries}

    # --- Patient/$everything -------------------------------------------------------------------

    async def everything(self, patient_id: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        patient = await self.read("Patient", patient_id)
        count, offset = 50, 0
        with _as_bad_parameter():
            for name, value in params:
                if name == "_count":
                    count = search.parse_count(value)
                elif name == "_offset":
                    offset = search.parse_offset(value)
        member = {"compartment": f"Patient/{patient_id}", "deleted": False}
        # The compartment is paged across types in a fixed order, the Patient first.
        # The types a patient's compartment can hold, counted at once; the audit trail is about the record, not
        # part of it.
        kinds = [t for t in RESOURCE_TYPES if t in search.COMPARTMENT_PATHS and t != "AuditEvent"]
        first: dict[str, list[dict[str, Any]]] = {}
        if offset == 0:
            # The first page of every type at once: a type that fits in it is counted by it, and only the types
            # with more are counted (the embedded engine reads each document it counts, and a count costs more
            # than a find even of nothing).
            pages = await asyncio.gather(*(self.store.find(resource_type, member, sort=[("_id", 1)], limit=count + 1)
                                           for resource_type in kinds))
            first = dict(zip(kinds, pages, strict=True))
        larger = [t for t in kinds if t not in first or len(first[t]) > count]
        found = dict(zip(larger, await asyncio.gather(*(self.store.count(t, member) for t in larger)), strict=True))
        counts = [("Patient", 1), *((t, found[t] if t in found else len(first[t])) for t in kinds)]
        total = sum(n for _, n in counts)
        entries, position, remaining = [], 0, count
        for resource_type, n in counts:
            if remaining <= 0:
                break
            if position + n <= offset:
                position += n
                continue
            skip = max(0, offset - position)
            if resource_type == "Patient":
                docs = [patient]
            elif resource_type in first:
                docs = first[resource_type][skip:skip + remaining]
            else:
                docs = await self.store.find(resource_type, member, sort=[("_id", 1)], skip=skip, limit=remaining)
            for doc in docs:
                self._touch(resource_type, doc)
            entries += [self._entry(doc, "match") for doc in docs]
            remaining -= len(docs)
            position += n
        return self._bundle("searchset", total, entries, f"Patient/{patient_id}/$everything", [], count, offset)

    # --- batch and transaction Bundles -----------------------------------------------------------

    async def process_bundle(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise _issue(400, "invalid", "POST /fhir takes a Bundle of type batch or transaction", "Bundle")
        kind = body.get("type")
        if kind not in ("batch", "transaction"):
            raise _issue(400, "value", f"Bundle.type must be batch or transaction, not {kind!r}", "Bundle.type")
        entries = body.get("entry") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _issue(400, "structure", "Bundle.entry must be a list of entries", "Bundle.entry")
        if len(entries) > MAX_BUNDLE_ENTRIES:
            raise _issue(413, "too-costly", f"A Bundle may hold at most {MAX_BUNDLE_ENTRIES} entries", "Bundle.entry")
        if kind == "batch":
            return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "batch-response",
                    "entry": [await self._batch_entry(i, entry) for i, entry in enumerate(entries)]}
        return await self._transaction(entries)

    @staticmethod
    def _entry_request(index: int, entry: dict[str, Any]) -> tuple[str, str, str | None, str]:
        """(method, type, id or None, query) of an entry's request."""
        where = f"Bundle.entry[{index}].request"
        request = entry.get("request")
        if not isinstance(request, dict):
            raise _issue(400, "required", "Each entry needs a request with method and url", where)
        method = str(request.get("method", "")).upper()
        if method not in ("GET", "POST", "PUT", "DELETE"):
            raise _issue(400, "not-supported", f"Entry method {method or '(none)'} is not supported here",
                         where + ".method")
        url = str(request.get("url") or "").strip()
        if url.startswith(("http://", "https://")):
            url = url.split("/fhir/", 1)[-1]
        path, _, query = url.lstrip("/").partition("?")
        parts = [p for p in path.split("/") if p]
        if not parts or not is_supported_type(parts[0]) or len(parts) > 2:
            raise _issue(400, "value", f"Entry url {url!r} does not name a supported Type or Type/id", where + ".url")
        if method in ("PUT", "DELETE") and (len(parts) != 2 or query):
            raise _issue(400, "not-supported", f"{method} needs a url Type/id (conditional {method} is not "
                                               "supported)", where + ".url")
        return method, parts[0], parts[1] if len(parts) == 2 else None, query

    def _write_response(self, written: Written | None, existing: dict[str, Any] | None = None) -> dict[str, Any]:
        if written is None:
            if existing is not None:  # If-None-Exist matched
                return {"resource": existing, "response": {"status": "200 OK", "etag": (
                    f'W/"{existing["meta"]["versionId"]}"'),
                    "location": f"{existing['resourceType']}/{existing['id']}/_history/"
                                f"{existing['meta']['versionId']}"}}
            return {"response": {"status": "204 No Content"}}
        response = {"status": "201 Created" if written.created else "200 OK", "etag": written.etag,
                    "lastModified": fhir_instant(written.updated)}
        if written.resource is None:
            return {"response": {"status": "204 No Content", "etag": written.etag}}
        response["location"] = written.location
        return {"fullUrl": f"{self.base_url}/{written.resource_type}/{written.resource_id}",
                "resource": written.resource, "response": response}

    async def _read_entry(self, resource_type: str, resource_id: str | None, query: str) -> dict[str, Any]:
        if resource_id is None:
            bundle = await self.search(resource_type, parse_qsl(query, keep_blank_values=True))
            return {"resource": bundle, "response": {"status": "200 OK"}}
        document = await self.read(resource_type, resource_id)
        return {"resource": document["resource"], "response": {"status": "200 OK", "etag": f'W/"{document["vid"]}"'}}

    async def _batch_entry(self, index: int, entry: dict[str, Any]) -> dict[str, Any]:
        try:
            method, resource_type, resource_id, query = self._entry_request(index, entry)
            request = entry["request"]
            if method == "GET":
                return await self._read_entry(resource_type, resource_id, query)
            if method == "DELETE":
                return self._write_response(await self.delete(resource_type, resource_id))
            if method == "POST":
                written, existing = await self.create(resource_type, entry.get("resource"),
                                                      if_none_exist=request.get("ifNoneExist"))
                return self._write_response(written, existing)
            return self._write_response(await self.update(resource_type, resource_id, entry.get("resource"),
                                                          if_match=request.get("ifMatch")))
        except RecordError as exc:
            return {"response": {"status": str(exc.status), "outcome": {
                "resourceType": "OperationOutcome", "issue": [i.as_outcome_issue() for i in exc.issues]}}}

    async def _transaction(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """All or nothing, without multi-document transactions (FerretDB and a plain MongoDB lack them).

        First every entry is checked and every resource validated, with urn:uuid references resolved, before
        anything is written. Then the writes run in FHIR's order (DELETE, POST, PUT, GET), and if one fails
        the ones already written are undone in reverse: created resources removed, replaced ones put back,
        their history entries and identifier keys returned. A reader may glimpse the partial state for that
        moment; a crash in the middle of the undo could leave it — the price of no transactions.
        """
        requests = [self._entry_request(i, entry) for i, entry in enumerate(entries)]
        mapping: dict[str, str] = {}
        assigned: dict[int, str] = {}
        existing: dict[int, dict[str, Any]] = {}
        for index, ((method, resource_type, resource_id, _), entry) in enumerate(zip(requests, entries)):
            target = f"{resource_type}/{resource_id}"
            if method == "POST":
                condition = entry["request"].get("ifNoneExist")
                matches = await self._conditional_matches(resource_type, condition) if condition else []
                if len(matches) > 1:
                    raise _issue(412, "duplicate", "ifNoneExist matched more than one resource",
                                 f"Bundle.entry[{index}].request.ifNoneExist")
                if matches:  # references to this entry then point at the resource that exists
                    existing[index] = matches[0]["resource"]
                    target = f"{resource_type}/{existing[index]['id']}"
                else:
                    assigned[index] = str(uuid.uuid4())
                    target = f"{resource_type}/{assigned[index]}"
            if method in ("POST", "PUT") and entry.get("fullUrl"):
                if not isinstance(entry["fullUrl"], str):
                    raise _issue(400, "structure", "fullUrl is a URI string", f"Bundle.entry[{index}].fullUrl")
                mapping[entry["fullUrl"]] = target
        resources: dict[int, dict[str, Any]] = {}
        for index, ((method, resource_type, resource_id, _), entry) in enumerate(zip(requests, entries)):
            if method == "PUT" or index in assigned:
                require_type(resource_type, writing=True)
                resource = rewrite_references(entry.get("resource"), mapping)
                resources[index] = validate_resource(resource, expected_type=resource_type,
                                                     prefix=f"Bundle.entry[{index}].resource")
                if method == "PUT" and resources[index].get("id") != resource_id:
                    raise _issue(400, "invalid", "The resource's id must equal the id in the entry's url",
                                 f"Bundle.entry[{index}].resource.id")
            elif method == "DELETE":
                require_type(resource_type, writing=True)
        if self.reach is not None:
            # Entries may be about a Patient this transaction registers under a new id, written after them; should
            # that Patient's own write be refused, the whole transaction is undone. A PUT of a Patient that
            # exists registers nothing: its stored document decides who manages it.
            for index, resource in resources.items():
                if resource["resourceType"] != "Patient":
                    continue
                if index in assigned or await self.store.get("Patient", requests[index][2]) is None:
                    self.reach.count_as_managed(requests[index][2] or assigned[index], resource)
        order = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}
        done: list[Written] = []
        responses: dict[int, dict[str, Any]] = {}
        try:
            for index in sorted(range(len(entries)), key=lambda i: order[requests[i][0]]):
                method, resource_type, resource_id, query = requests[index]
                request = entries[index]["request"]
                try:
                    if method == "GET":
                        responses[index] = await self._read_entry(resource_type, resource_id, query)
                        continue
                    if method == "DELETE":
                        written = await self.delete(resource_type, resource_id)
                    elif index in existing:
                        responses[index] = self._write_response(None, existing[index])
                        continue
                    elif method == "POST":
                        written = await self._commit(resource_type, assigned[index], None, resources[index], "POST",
                                                     fresh_id=True)
                    else:
                        written = await self.update(resource_type, resource_id, resources[index],
                                                    if_match=request.get("ifMatch"))
                except RecordError as exc:
                    for issue in exc.issues:
                        issue.expression = issue.expression or [f"Bundle.entry[{index}]"]
                        issue.diagnostics = f"Bundle.entry[{index}]: {issue.diagnostics}"
                    raise
                if written is not None:
                    done.append(written)
                responses[index] = self._write_response(written)
        except BaseException:
            for written in reversed(done):
                await self.undo(written)
            raise
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction-response",
                "entry": [responses[i] for i in range(len(entries))]}
