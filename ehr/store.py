"""MongoDB access for the record: current versions per resource type, every version in one history, identifier keys.

The only module of the record that names collections. Every write is a single-document atomic operation (the
bulk ones send many of them in one round trip), so the same code runs on MongoDB and on FerretDB.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from collections.abc import AsyncIterator, Iterator
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DocumentTooLarge, DuplicateKeyError

from ehr.models import RESOURCE_TYPES, RecordError
from ehr.search import COMPARTMENT_PATHS, SEARCH_PARAMETERS
from qilu.cache import ANNOUNCER
from qilu.db import is_embedded_engine

HISTORY = "resource_history"
IDENTIFIER_KEYS = "identifier_keys"
# Who each patient's records reach (see ehr/sharing.py): the patient's shares, the grants they come from,
# and the revocations whose effect on the stored resources is still being written.
PATIENT_REACH = "patient_reach"
REACH_GRANTS = "reach_grants"
REACH_REVOKING = "reach_revoking"
REINDEX_STATE = "reindex_state"  # where a `qilu reindex` stopped, per collection
# What processes keep of those (ehr/sharing.py) and forget when the store announces a write: a patient's
# managing hospital and shares, by patient id; the revocations under way, by hospital.
PATIENT_REACH_CHANGES = "patient-reach"
REVOKING_CHANGES = "revoking"


# A version or identifier claim whose write has not finished this long after was left by a writer that died.
ABANDONED_WRITE_AFTER = timedelta(seconds=30)
# The start of a revocation marker in force now (any moment's text sorts after it); a marker may also start
# at a moment to come, when a share ends by the clock.
IN_FORCE = ""


def moment_text(moment: datetime) -> str:
    """A moment as text in UTC: what the embedded engine's indexes can range over, sorting as time does."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")

# The types whose documents carry `reach`: a patient's own and the types of patients' records. AuditEvents
# are left out: they are the administrators' trail (a role decides who reads them), and append-only.
REACHED_TYPES = frozenset({"Patient", *COMPARTMENT_PATHS}) - {"AuditEvent"}


def history_id(resource_type: str, resource_id: str, version: int) -> str:
    return f"{resource_type}/{resource_id}/{version}"


def history_entry(resource_type: str, resource_id: str, vid: int, updated: datetime, method: str,
                  resource: dict[str, Any] | None, write_id: str, compartment: list[str],
                  reach: list[str]) -> dict[str, Any]:
    """The history document of one version, which its write inserts first (the version's lock)."""
    return {"_id": history_id(resource_type, resource_id, vid), "type": resource_type, "id": resource_id,
            "vid": vid, "updated": updated, "method": method, "resource": resource, "write": write_id,
            "compartment": compartment, "reach": reach}


async def ensure_indexes(db: AsyncIOMotorDatabase) -> None:
    """Indexes for the compartment, every supported search parameter but dates and the history (idempotent).

    The search fields hold lists, so their indexes are named `mk_*`: on MongoDB ordinary multikey indexes, and
    on the embedded FerretDB the name asks Qilu's build to keep them in side tables it can search (see
    qilu/ferretdb/). A date parameter is stored as a list of ranges ({lo, hi}), which neither can narrow by;
    its condition is applied to what the other conditions found. Indexes of an earlier layout are dropped.

    A practitioner's search is ANDed with `reach` (the hospitals the resource reaches), so each search field
    of a type in patients' records also gets a compound index (reach, field) on the embedded engine. MongoDB
    refuses a compound index over two list fields ("parallel arrays"), so there the two stay apart and its
    planner picks one of them.
    """
    compound = await is_embedded_engine(db)
    for resource_type in RESOURCE_TYPES:
        collection = db[resource_type]
        reached = resource_type in REACHED_TYPES
        wanted = {"_id_", "updated", "mk_compartment"} | ({"mk_reach"} if reached else set())
        await collection.create_index([("updated", DESCENDING)], name="updated")
        await collection.create_index([("compartment", ASCENDING)], name="mk_compartment")
        if reached:
            await collection.create_index([("reach", ASCENDING)], name="mk_reach")
        for name, param in SEARCH_PARAMETERS.get(resource_type, {}).items():
            if name.startswith("_") or param.type == "date":
                continue  # _id and _lastUpdated use the _id and updated fields indexed above
            wanted.add(f"mk_sp_{name}")
            await collection.create_index([(f"sp.{name}", ASCENDING)], name=f"mk_sp_{name}")
            if reached and compound:
                wanted.add(f"mk_reach_{name}")
                await collection.create_index([("reach", ASCENDING), (f"sp.{name}", ASCENDING)],
                                              name=f"mk_reach_{name}")
        for index in await collection.list_indexes().to_list(None):
            if index["name"] not in wanted:
                await collection.drop_index(index["name"])
    history = db[HISTORY]
    wanted = {"_id_", "mk_instance", "mk_type_compartment", "mk_type_reach", "type_updated", "updated"}
    # An instance's versions, and a type's versions within patients' compartments or a hospital's reach. The
    # embedded engine narrows only through an index whose every field the filter gives, so a type's versions
    # alone need their own there; MongoDB reads them through the first field of mk_instance.
    if compound:
        wanted.add("mk_type")
        await history.create_index([("type", ASCENDING)], name="mk_type")
    await history.create_index([("type", ASCENDING), ("id", ASCENDING)], name="mk_instance")
    await history.create_index([("type", ASCENDING), ("compartment", ASCENDING)], name="mk_type_compartment")
    await history.create_index([("type", ASCENDING), ("reach", ASCENDING)], name="mk_type_reach")
    await history.create_index([("type", ASCENDING), ("updated", DESCENDING)], name="type_updated")
    await history.create_index([("updated", DESCENDING)], name="updated")
    for index in await history.list_indexes().to_list(None):
        if index["name"] not in wanted:
            await history.drop_index(index["name"])
    # Patients whose reach is still being written to their resources; shares that end by the clock.
    await db[PATIENT_REACH].create_index([("pending", ASCENDING)], name="mk_pending")
    await db[PATIENT_REACH].create_index([("expires", ASCENDING)], name="mk_expires")
    # Reaches about to change, whose change may have been left half-made.
    await db[PATIENT_REACH].create_index([("stale", ASCENDING)], name="mk_stale")
    await db[REACH_GRANTS].create_index([("patient", ASCENDING)], name="mk_patient")
    # A hospital's markers in force by a moment; a patient's markers; those whose revocation may be settled.
    revoking = db[REACH_REVOKING]
    await revoking.create_index([("org", ASCENDING), ("from", ASCENDING)], name="mk_org_from")
    await revoking.create_index([("patient", ASCENDING)], name="mk_patient")
    await revoking.create_index([("settle_after", ASCENDING)], name="mk_settle_after")
    if "mk_org" in {index["name"] async for index in revoking.list_indexes()}:
        await revoking.drop_index("mk_org")
    # Markers written before they had a start were all in force; their settling is checked again.
    await revoking.update_many({"from": {"$exists": False}},
                               {"$set": {"from": IN_FORCE, "settle_after": moment_text(datetime.now(UTC))}})


async def _insert_unordered(collection: Any, documents: list[dict[str, Any]]) -> set[int]:
    """Insert documents in one unordered round trip; the indexes of those whose _id was taken. Any other
    write error is raised: nothing is known of what it kept out."""
    if not documents:
        return set()
    try:
        with _fits():
            await collection.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors") or any(error.get("code") != 11000 for error in errors):
            raise
        return {error["index"] for error in errors}
    return set()


@contextmanager
def _fits() -> Iterator[None]:
    """A current version is the resource and its search index, which repeats indexed strings several times over: a
    resource within the body limit can make a document past MongoDB's 16 MB, which the driver refuses (a 500)."""
    try:
        yield
    except DocumentTooLarge:
        raise too_large() from None


def too_large() -> RecordError:
    return RecordError.single(413, "too-costly", "The resource is too large to store with its search index "
                                                 "(MongoDB holds at most 16 MB a document); make its texts shorter")


class RecordStore:
    """Reads and single-document writes of FHIR resource documents.

    A current-version document is {_id, vid, updated, deleted, resource, sp, so, compartment, reach};
    a history document is {_id: "Type/id/vid", type, id, vid, updated, method, resource, write, compartment,
    reach}. `reach` (of the types in REACHED_TYPES) lists the hospitals whose practitioners may read it.
    """

    def __init__(self, db: AsyncIOMotorDatabase):
        self.db = db

    async def _patients_written(self, resource_type: str, patient_ids: list[str]) -> None:
        """Patients whose stored document changed: every process forgets what it kept of their managing hospital.
        A first version needs no announcement, since nobody keeps what did not exist."""
        if resource_type == "Patient":
            await ANNOUNCER.announce(self.db.name, PATIENT_REACH_CHANGES, patient_ids)

    # --- current versions ---------------------------------------------------------------------

    async def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        return await self.db[resource_type].find_one({"_id": resource_id})

    async def insert_first_version(self, resource_type: str, document: dict[str, Any]) -> bool:
        """False when a document with that id already exists (a concurrent create won)."""
        try:
            with _fits():
                await self.db[resource_type].insert_one(document)
            return True
        except DuplicateKeyError:
            return False

    async def replace_if_version(self, resource_type: str, resource_id: str, expected_vid: int,
                                 document: dict[str, Any]) -> bool:
        """Replace the current version only if it is still `expected_vid` (optimistic lock)."""
        with _fits():
            result = await self.db[resource_type].replace_one({"_id": resource_id, "vid": expected_vid}, document)
        await self._patients_written(resource_type, [resource_id])
        return result.matched_count == 1

    async def restore(self, resource_type: str, previous: dict[str, Any] | None, resource_id: str) -> None:
        """Undo a write of this request: put back the previous document, or remove a created one."""
        if previous is None:
            await self.db[resource_type].delete_one({"_id": resource_id})
        else:
            await self.db[resource_type].replace_one({"_id": resource_id}, previous)
        await self._patients_written(resource_type, [resource_id])

    async def find(self, resource_type: str, query: dict[str, Any], *, sort: list[tuple[str, int]],
                   skip: int = 0, limit: int = 20) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        cursor = self.db[resource_type].find(query, sort=sort, skip=skip, limit=limit)
        return await cursor.to_list(length=limit)

    async def each(self, resource_type: str, query: dict[str, Any], batch_size: int = 500
                   ) -> AsyncIterator[dict[str, Any]]:
        """Every matching document, in _id order, read in batches: for exports, which must not hold them all."""
        async for document in self.db[resource_type].find(query, sort=[("_id", 1)], batch_size=batch_size):
            yield document

    async def count(self, resource_type: str, query: dict[str, Any], limit: int | None = None) -> int:
        """How many documents match; with `limit`, counting stops there."""
        if limit is not None:
            return await self.db[resource_type].count_documents(query, limit=limit)
        return await self.db[resource_type].count_documents(query)

    async def insert_audit_events(self, documents: list[dict[str, Any]]) -> list[BaseException | None]:
        """AuditEvents are append-only, version 1 forever, no history entry. One unordered insert; returns
        per document None (stored) or the error that kept it out."""
        try:
            await self.db["AuditEvent"].insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise  # nothing is known to be durable
            failed = {error["index"]: error.get("errmsg", "write error") for error in exc.details.get("writeErrors", [])}
            return [RuntimeError(failed[i]) if i in failed else None for i in range(len(documents))]
        return [None] * len(documents)

    async def find_by_ids(self, resource_type: str, ids: list[str], *,
                          include_deleted: bool = False) -> list[dict[str, Any]]:
        if not ids:
            return []
        # One id as a plain equality: engines narrow by it (FerretDB narrows by no other form of _id).
        query: dict[str, Any] = {"_id": ids[0] if len(ids) == 1 else {"$in": ids}}
        if not include_deleted:
            query["deleted"] = False
        cursor = self.db[resource_type].find(query)
        return await cursor.to_list(length=len(ids))

    # --- history --------------------------------------------------------------------------------

    async def claim_version(self, resource_type: str, resource_id: str, vid: int, updated: datetime, method: str,
                            resource: dict[str, Any] | None, write_id: str, compartment: list[str],
                            reach: list[str]) -> bool:
        """Insert the history entry of version `vid`; False when another write already holds that version.

        This insert is the atomic step of every write: FerretDB runs a conditional replace or
        find_one_and_update as read-then-write, so two writers that read the same version could both
        "win" it, but only one of them can insert the unique _id "Type/id/vid".
        """
        entry = history_entry(resource_type, resource_id, vid, updated, method, resource, write_id, compartment,
                              reach)
        try:
            await self.db[HISTORY].insert_one(entry)
            return True
        except DuplicateKeyError:
            # A retried insert after a lost reply meets its own entry: that is still ours.
            existing = await self.db[HISTORY].find_one({"_id": entry["_id"]}, {"write": 1})
            return existing is not None and existing.get("write") == write_id

    async def remove_history(self, resource_type: str, resource_id: str, vid: int) -> None:
        await self.db[HISTORY].delete_one({"_id": history_id(resource_type, resource_id, vid)})

    async def get_version(self, resource_type: str, resource_id: str, vid: int) -> dict[str, Any] | None:
        return await self.db[HISTORY].find_one({"_id": history_id(resource_type, resource_id, vid)})

    async def history(self, query: dict[str, Any], *, skip: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        total = await self.db[HISTORY].count_documents(query)
        if limit <= 0:
            return [], total
        cursor = self.db[HISTORY].find(query, sort=[("updated", DESCENDING), ("_id", DESCENDING)],
                                       skip=skip, limit=limit)
        return await cursor.to_list(length=limit), total

    # --- reach: the hospitals a patient's records reach (ehr/sharing.py decides them) -----------

    async def patient_reaches(self, patient_ids: list[str]) -> list[dict[str, Any]]:
        """{_id: patient id, shares: [{org, until}], orgs, gen, pending, cursor, expires} of these patients."""
        if not patient_ids:
            return []
        query = {"_id": patient_ids[0] if len(patient_ids) == 1 else {"$in": patient_ids}}
        return await self.db[PATIENT_REACH].find(query).to_list(length=len(patient_ids))

    async def put_patient_reach(self, patient_id: str, fields: dict[str, Any]) -> int:
        """Set a patient's reach, as a new generation that their resources have still to be brought to."""
        doc = await self.db[PATIENT_REACH].find_one_and_update(
            {"_id": patient_id}, {"$set": {**fields, "pending": True, "cursor": None}, "$inc": {"gen": 1}},
            upsert=True, return_document=ReturnDocument.AFTER)
        await ANNOUNCER.announce(self.db.name, PATIENT_REACH_CHANGES, [patient_id])
        return doc["gen"]

    async def save_reach_cursor(self, patient_id: str, gen: int, cursor: dict[str, Any]) -> bool:
        """Where the writing of generation `gen` stands; False when a newer generation replaced it."""
        result = await self.db[PATIENT_REACH].update_one({"_id": patient_id, "gen": gen}, {"$set": {"cursor": cursor}})
        return result.matched_count == 1

    async def finish_patient_reach(self, patient_id: str, gen: int) -> bool:
        result = await self.db[PATIENT_REACH].update_one({"_id": patient_id, "gen": gen},
                                                         {"$set": {"pending": False, "cursor": None}})
        return result.matched_count == 1

    async def patients_with_reach(self, query: dict[str, Any], limit: int) -> list[str]:
        cursor = self.db[PATIENT_REACH].find(query, projection={"_id": 1}, limit=limit)
        return [doc["_id"] async for doc in cursor]

    async def put_grant(self, grant: dict[str, Any]) -> None:
        await self.db[REACH_GRANTS].replace_one({"_id": grant["_id"]}, grant, upsert=True)

    async def remove_grant(self, source: str) -> None:
        await self.db[REACH_GRANTS].delete_one({"_id": source})

    async def grants_of(self, patient_id: str) -> list[dict[str, Any]]:
        return await self.db[REACH_GRANTS].find({"patient": patient_id}).to_list(length=None)

    async def mark_reach_stale(self, patient_id: str, token: str) -> None:
        """Say that the patient's reach is about to change (a grant, a Consent or a transfer is being written):
        until it is worked out again (`clear_reach_stale` with the same token), their shares are not trusted."""
        await self.db[PATIENT_REACH].update_one({"_id": patient_id}, {"$set": {"stale": token}}, upsert=True)
        await ANNOUNCER.announce(self.db.name, PATIENT_REACH_CHANGES, [patient_id])

    async def clear_reach_stale(self, patient_id: str, token: str) -> None:
        """The change marked by `token` is worked out; a later mark stays."""
        result = await self.db[PATIENT_REACH].update_one({"_id": patient_id, "stale": token}, {"$set": {"stale": None}})
        if result.modified_count:
            await ANNOUNCER.announce(self.db.name, PATIENT_REACH_CHANGES, [patient_id])

    async def put_revoking(self, patient_id: str, starts: dict[str, str]) -> None:
        """Keep the patient out of each hospital's searches from the moment given (IN_FORCE: now) until their
        resources no longer reach it (a marker written again waits for its settling again)."""
        for organization, start in sorted(starts.items()):
            await self.db[REACH_REVOKING].update_one(
                {"_id": f"{organization}|{patient_id}"},
                {"$set": {"org": organization, "patient": patient_id, "from": start, "settle_after": None}},
                upsert=True)
        await ANNOUNCER.announce(self.db.name, REVOKING_CHANGES, starts)

    async def drop_revoking(self, patient_id: str, organizations: set[str]) -> None:
        if organizations:
            await self.db[REACH_REVOKING].delete_many(
                {"_id": {"$in": [f"{organization}|{patient_id}" for organization in sorted(organizations)]}})
            await ANNOUNCER.announce(self.db.name, REVOKING_CHANGES, organizations)

    async def revoking_of(self, patient_id: str) -> dict[str, str]:
        """The patient's markers: the start of each, by hospital."""
        cursor = self.db[REACH_REVOKING].find({"patient": patient_id}, projection={"org": 1, "from": 1})
        return {doc["org"]: doc.get("from", IN_FORCE) async for doc in cursor}

    async def revoking_for(self, organization: str, by: str) -> list[tuple[str, str]]:
        """(patient id, start) of this hospital's markers in force by the moment `by` (text)."""
        cursor = self.db[REACH_REVOKING].find({"org": organization, "from": {"$lte": by}},
                                              projection={"patient": 1, "from": 1})
        return [(doc["patient"], doc["from"]) async for doc in cursor]

    async def settle_revoking(self, patient_id: str, after: datetime) -> None:
        """The patient's markers in force may be lifted after `after`, once nothing reaches their hospital."""
        await self.db[REACH_REVOKING].update_many({"patient": patient_id, "from": IN_FORCE},
                                                  {"$set": {"settle_after": moment_text(after)}})

    async def revocations_to_settle(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        cursor = self.db[REACH_REVOKING].find({"settle_after": {"$lte": moment_text(now)}}, limit=limit)
        return await cursor.to_list(length=limit)

    async def remove_revoking(self, marker_id: str) -> None:
        await self.db[REACH_REVOKING].delete_one({"_id": marker_id})
        await ANNOUNCER.announce(self.db.name, REVOKING_CHANGES, [marker_id.split("|", 1)[0]])

    async def reach_batch(self, resource_type: str, history: bool, patient_ref: str, after: str,
                          limit: int) -> list[dict[str, Any]]:
        """The next documents of one patient's compartment, in _id order after `after`: {_id, compartment, reach}."""
        query: dict[str, Any] = {"compartment": patient_ref, "_id": {"$gt": after}}
        collection = self.db[resource_type]
        if history:
            query["type"], collection = resource_type, self.db[HISTORY]
        cursor = collection.find(query, projection={"compartment": 1, "reach": 1}, sort=[("_id", ASCENDING)],
                                 limit=limit)
        return await cursor.to_list(length=limit)

    async def set_reach(self, resource_type: str, history: bool, changes: list[tuple[str, list[str]]]) -> None:
        if changes:
            collection = self.db[HISTORY] if history else self.db[resource_type]
            await collection.bulk_write([UpdateOne({"_id": _id}, {"$set": {"reach": reach}}) for _id, reach in changes],
                                        ordered=False)

    async def still_reaching(self, resource_type: str, history: bool, patient_ref: str, organization: str) -> bool:
        query: dict[str, Any] = {"compartment": patient_ref, "reach": organization}
        collection = self.db[resource_type]
        if history:
            query["type"], collection = resource_type, self.db[HISTORY]
        return await collection.find_one(query, projection={"_id": 1}) is not None

    # --- reindexing: what is kept beside each resource, derived again ------------------------------

    async def stored_batch(self, resource_type: str, history: bool, after: str, limit: int) -> list[dict[str, Any]]:
        """The next current documents (or history entries) of a type in _id order after `after`."""
        query: dict[str, Any] = {"_id": {"$gt": after}}
        collection = self.db[resource_type]
        if history:
            query["type"], collection = resource_type, self.db[HISTORY]
        return await collection.find(query, sort=[("_id", ASCENDING)], limit=limit).to_list(length=limit)

    async def count_stored(self, resource_type: str, history: bool, after: str = "") -> int:
        """How many documents of a type are stored past `after`."""
        query: dict[str, Any] = {"_id": {"$gt": after}} if after else {}
        if history:
            return await self.db[HISTORY].count_documents({**query, "type": resource_type})
        return await self.db[resource_type].count_documents(query)

    async def rederive(self, resource_type: str, history: bool,
                       changes: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Set derived fields of documents still at the version read (a write since then derived its own)."""
        if changes:
            collection = self.db[HISTORY] if history else self.db[resource_type]
            await collection.bulk_write([UpdateOne({"_id": _id, "vid": vid}, {"$set": fields})
                                         for _id, vid, fields in changes], ordered=False)
            if not history:
                await self._patients_written(resource_type, [_id for _id, _, _ in changes])

    async def reindex_cursor(self, key: str) -> str | None:
        found = await self.db[REINDEX_STATE].find_one({"_id": key})
        return found["after"] if found else None

    async def save_reindex_cursor(self, key: str, after: str | None) -> None:
        if after is None:
            await self.db[REINDEX_STATE].delete_one({"_id": key})
        else:
            await self.db[REINDEX_STATE].replace_one({"_id": key}, {"_id": key, "after": after}, upsert=True)

    # --- bulk: the same single-document writes, many per round trip (ehr/bulk.py) ---------------

    async def claim_versions(self, entries: list[dict[str, Any]]) -> list[bool]:
        """claim_version for many history entries (its shape) in one unordered insert: False where another
        write holds that version."""
        errors = await _insert_unordered(self.db[HISTORY], entries)
        if not errors:
            return [True] * len(entries)
        # A retried insert after a lost reply meets its own entry: that is still ours.
        found = {doc["_id"]: doc.get("write") for doc in await self.db[HISTORY].find(
            {"_id": {"$in": [entries[i]["_id"] for i in errors]}}, {"write": 1}).to_list(length=None)}
        return [i not in errors or found.get(entry["_id"]) == entry["write"] for i, entry in enumerate(entries)]

    async def remove_history_entries(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self.db[HISTORY].delete_many({"_id": {"$in": entry_ids}})

    async def insert_first_versions(self, resource_type: str, documents: list[dict[str, Any]]) -> list[bool]:
        """insert_first_version for many documents in one unordered insert: False where the id was taken."""
        errors = await _insert_unordered(self.db[resource_type], documents)
        return [i not in errors for i in range(len(documents))]

    async def replace_if_versions(self, resource_type: str, replacements: list[tuple[int, dict[str, Any]]]
                                  ) -> list[bool]:
        """replace_if_version for many (expected vid, document) in one round trip: False where it was not."""
        if not replacements:
            return []
        collection = self.db[resource_type]
        result = await collection.bulk_write([ReplaceOne({"_id": doc["_id"], "vid": expected}, doc)
                                              for expected, doc in replacements], ordered=False)
        await self._patients_written(resource_type, [doc["_id"] for _, doc in replacements])
        if result.matched_count == len(replacements):
            return [True] * len(replacements)
        # Which ones missed: each writer holds its new version's history entry, so a document now at that
        # version was replaced by this call.
        now = {doc["_id"]: doc["vid"] for doc in await collection.find(
            {"_id": {"$in": [doc["_id"] for _, doc in replacements]}}, {"vid": 1}).to_list(length=None)}
        return [now.get(doc["_id"]) == doc["vid"] for _, doc in replacements]

    async def claim_identifiers(self, claims: list[tuple[str, str, str]], stale_before: datetime
                                ) -> list[str | None]:
        """claim_identifier for many (key, owner, write id) in one unordered insert; a key found there
        already is asked about alone (it may be the owner's own, or a dead write's)."""
        at = datetime.now(UTC)
        errors = await _insert_unordered(self.db[IDENTIFIER_KEYS], [
            {"_id": key, "owner": owner, "write": write_id, "at": at} for key, owner, write_id in claims])
        holders: list[str | None] = [None] * len(claims)
        for index in sorted(errors):
            key, owner, write_id = claims[index]
            holders[index] = await self.claim_identifier(key, owner, write_id, stale_before)
        return holders

    # --- identifier keys: one resource per (system, value) -------------------------------------

    async def claim_identifier(self, key: str, owner: str, write_id: str | None = None,
                               stale_before: datetime | None = None) -> str | None:
        """Claim `system|value` for `owner` ("Type/id"); returns the other owner when taken.

        With `write_id` the claim is that one write's, and only that write releases it on failure: a key
        `owner` already holds through another write still under way is reported as taken by `owner`
        itself, unless that claim is older than `stale_before` (its write died), when it is taken over.
        """
        try:
            await self.db[IDENTIFIER_KEYS].insert_one({"_id": key, "owner": owner, "write": write_id,
                                                       "at": datetime.now(UTC)})
            return None
        except DuplicateKeyError:
            existing = await self.db[IDENTIFIER_KEYS].find_one({"_id": key})
            if existing is None:  # released between our insert and this read: try once more
                return await self.claim_identifier(key, owner, write_id, stale_before)
            if existing["owner"] != owner:
                return existing["owner"]
            if write_id is None or existing.get("write") in (None, write_id):
                return None
            if stale_before is not None and existing["at"] < stale_before:
                await self.db[IDENTIFIER_KEYS].update_one({"_id": key, "owner": owner},
                                                          {"$set": {"write": write_id, "at": datetime.now(UTC)}})
                return None
            return owner

    async def release_identifier(self, key: str, owner: str, write_id: str | None = None) -> None:
        """Give the key up; with `write_id`, only if that write made the claim."""
        query = {"_id": key, "owner": owner} if write_id is None else {"_id": key, "owner": owner, "write": write_id}
        await self.db[IDENTIFIER_KEYS].delete_one(query)

    async def identifier_owner(self, key: str) -> str | None:
        found = await self.db[IDENTIFIER_KEYS].find_one({"_id": key})
        return found["owner"] if found else None
