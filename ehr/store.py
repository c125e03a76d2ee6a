"""MongoDB access for the record: current versions per resource type, every version in one history, identifier keys.

The only module of the record that names collections. Every write is a single-document atomic operation,
so the same code runs on MongoDB and on FerretDB.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime
from collections.abc import AsyncIterator, Iterator
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DocumentTooLarge, DuplicateKeyError

from ehr.models import RESOURCE_TYPES, RecordError
from ehr.search import SEARCH_PARAMETERS

HISTORY = "resource_history"
IDENTIFIER_KEYS = "identifier_keys"


def history_id(resource_type: str, resource_id: str, version: int) -> str:
    return f"{resource_type}/{resource_id}/{version}"


async def ensure_indexes(db: AsyncIOMotorDatabase) -> None:
    """Indexes for the compartment, every supported search parameter but dates and the history (idempotent).

    The search fields hold lists, so their indexes are named `mk_*`: on MongoDB ordinary multikey indexes, and
    on the embedded FerretDB the name asks Qilu's build to keep them in side tables it can search (see
    qilu/ferretdb/). A date parameter is stored as a list of ranges ({lo, hi}), which neither can narrow by;
    its condition is applied to what the other conditions found. Indexes of an earlier layout are dropped.
    """
    for resource_type in RESOURCE_TYPES:
        collection = db[resource_type]
        wanted = {"_id_", "updated", "mk_compartment"}
        await collection.create_index([("updated", DESCENDING)], name="updated")
        await collection.create_index([("compartment", ASCENDING)], name="mk_compartment")
        for name, param in SEARCH_PARAMETERS.get(resource_type, {}).items():
            if name.startswith("_") or param.type == "date":
                continue  # _id and _lastUpdated use the _id and updated fields indexed above
            wanted.add(f"mk_sp_{name}")
            await collection.create_index([(f"sp.{name}", ASCENDING)], name=f"mk_sp_{name}")
        for index in await collection.list_indexes().to_list(None):
            if index["name"] not in wanted:
                await collection.drop_index(index["name"])
    history = db[HISTORY]
    wanted = {"_id_", "mk_instance", "mk_type_compartment", "type_updated", "updated"}
    # An instance's versions, and a type's versions within patients' compartments, are searched for.
    await history.create_index([("type", ASCENDING), ("id", ASCENDING)], name="mk_instance")
    await history.create_index([("type", ASCENDING), ("compartment", ASCENDING)], name="mk_type_compartment")
    await history.create_index([("type", ASCENDING), ("updated", DESCENDING)], name="type_updated")
    await history.create_index([("updated", DESCENDING)], name="updated")
    for index in await history.list_indexes().to_list(None):
        if index["name"] not in wanted:
            await history.drop_index(index["name"])


@contextmanager
def _fits() -> Iterator[None]:
    """A current version is the resource and its search index, which repeats indexed strings several times over: a
    resource within the body limit can make a document past MongoDB's 16 MB, which the driver refuses (a 500)."""
    try:
        yield
    except DocumentTooLarge:
        raise RecordError.single(413, "too-costly", "The resource is too large to store with its search index "
                                                    "(MongoDB holds at most 16 MB a document); make its texts "
                                                    "shorter") from None


class RecordStore:
    """Reads and single-document writes of FHIR resource documents.

    A current-version document is {_id, vid, updated, deleted, resource, sp, so, compartment};
    a history document is {_id: "Type/id/vid", type, id, vid, updated, method, resource, write, compartment}.
    """

    def __init__(self, db: AsyncIOMotorDatabase):
        self.db = db

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
        return result.matched_count == 1

    async def restore(self, resource_type: str, previous: dict[str, Any] | None, resource_id: str) -> None:
        """Undo a write of this request: put back the previous document, or remove a created one."""
        if previous is None:
            await self.db[resource_type].delete_one({"_id": resource_id})
        else:
            await self.db[resource_type].replace_one({"_id": resource_id}, previous)

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

    async def count(self, resource_type: str, query: dict[str, Any]) -> int:
        return await self.db[resource_type].count_documents(query)

    async def ids_matching(self, resource_type: str, query: dict[str, Any]) -> set[str]:
        cursor = self.db[resource_type].find(query, projection={"_id": 1})
        return {doc["_id"] async for doc in cursor}

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
                            resource: dict[str, Any] | None, write_id: str, compartment: list[str]) -> bool:
        """Insert the history entry of version `vid`; False when another write already holds that version.

        This insert is the atomic step of every write: FerretDB runs a conditional replace or
        find_one_and_update as read-then-write, so two writers that read the same version could both
        "win" it, but only one of them can insert the unique _id "Type/id/vid".
        """
        entry = {"_id": history_id(resource_type, resource_id, vid), "type": resource_type, "id": resource_id,
                 "vid": vid, "updated": updated, "method": method, "resource": resource, "write": write_id,
                 "compartment": compartment}
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
