"""The record's bulk write path: a batch of resources checked, versioned and stored in a few round trips.

A batch does what one write does (RecordService._commit) for all its resources together: each is validated and
indexed, the current versions are read with one query per type, and the identifier keys, the history entries and
the current versions each go to the engine in one unordered round trip. Every document is still written on its
own and in a single write's order (keys and history entry first, the current version last), so a batch cut short
leaves what a single write cut short leaves, and the same recovery applies. A resource refused at any step leaves
nothing of itself behind and is reported with where it came from; the rest of its batch is written.

It is the system's path (import, seeding): no caller's access rules are asked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson

from ehr.models import RecordError, validate_resource
from ehr.service import (RecordService, Written, changed_meanwhile, check_id, identifier_taken, now_utc,
                         reach_changed_by, require_type, stamped, unique_identifier_keys)
from ehr.store import ABANDONED_WRITE_AFTER, REACHED_TYPES, history_entry, history_id, too_large

# Resources a batch holds: round trips are few, and a batch's documents stay well within what one holds in memory.
BATCH = 500
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # what MongoDB stores as one document


@dataclass
class BulkItem:
    """One resource to write. With an id it is created or updated (as a PUT), without one created with a new id;
    `create_only` refuses, as a conflict, an id that exists already (a seeding run again)."""

    where: str  # file:line, or what else tells the operator which one it was
    resource: Any
    create_only: bool = False


@dataclass
class BulkResult:
    where: str
    written: Written | None = None
    error: RecordError | None = None


@dataclass
class _Pending:
    """A resource of the batch on its way, with what its single write would hold."""

    index: int
    resource_type: str
    resource_id: str
    resource: dict[str, Any]
    create_only: bool
    write_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    previous: dict[str, Any] | None = None
    document: dict[str, Any] = field(default_factory=dict)
    new_keys: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    @property
    def owner(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


class BulkWriter:
    """Writes batches of resources through the record's rules, as the system."""

    def __init__(self, records: RecordService):
        if records.reach is not None:
            raise ValueError("the bulk path writes as the system; a caller's writes go one by one")
        self.records = records
        self.store = records.store

    async def write(self, items: Sequence[BulkItem]) -> list[BulkResult]:
        """Write one batch (up to BATCH items); the results in the items' order. A resource named twice is
        written in turn, the later version on top of the earlier."""
        results = [BulkResult(item.where) for item in items]
        for indexes in _rounds(items):
            await self._write_round(items, indexes, results)
        return results

    async def _write_round(self, items: Sequence[BulkItem], indexes: list[int], results: list[BulkResult]) -> None:
        """Resources that are all different: each step is one round trip for all of them."""

        def refuse(pending: _Pending, error: RecordError) -> None:
            results[pending.index].error = error

        pending = [p for index in indexes if (p := self._prepare(index, items[index], results)) is not None]
        pending = await self._resolved(pending, refuse)
        pending = await self._with_previous(pending, refuse)
        updated = now_utc()
        pending = [p for p in pending if self._build(p, updated, refuse)]
        await self._add_reach(pending)
        # Reaches these writes change are marked first, as a single write does (ehr/sharing.py).
        changing: dict[str, set[str]] = {}
        for p in pending:
            patients, formerly = reach_changed_by(p.resource_type, p.document, p.previous)
            for patient_id in patients:
                changing.setdefault(patient_id, set()).update(formerly)
        for patient_id, formerly in sorted(changing.items()):
            await self.records.sharing.unsettle([patient_id], formerly)
        pending = await self._claim_keys(pending, updated, refuse)
        pending, lost = await self._claim_versions(pending, updated)
        stored, lost_storing = await self._store_documents(pending)
        for p in stored:
            if p.released:
                await asyncio.gather(*(self.store.release_identifier(key, p.owner) for key in p.released))
            await self.records.follow_reach(p.resource_type, p.document, p.previous)
            for patient_id in reach_changed_by(p.resource_type, p.document, p.previous)[0]:
                changing.pop(patient_id, None)
            results[p.index].written = Written(
                p.resource_type, p.resource_id, p.document["vid"], updated, p.document["resource"],
                p.previous is None or p.previous["deleted"], p.previous, p.claimed, p.released)
        for p in [*lost, *lost_storing]:
            # Another writer won this version meanwhile: an update goes on top of it, as a single PUT would.
            if p.create_only:
                refuse(p, changed_meanwhile(p.owner))
                continue
            try:
                results[p.index].written = await self.records.update(p.resource_type, p.resource_id,
                                                                     items[p.index].resource)
            except RecordError as exc:
                refuse(p, exc)
        for patient_id, formerly in sorted(changing.items()):
            # Marked, and not written after all (or written by the update above, which worked it out too).
            await self.records.sharing.refresh(patient_id, formerly=formerly)

    # --- the steps --------------------------------------------------------------------------------

    @staticmethod
    def _prepare(index: int, item: BulkItem, results: list[BulkResult]) -> _Pending | None:
        try:
            resource = validate_resource(item.resource)
            resource_type = resource["resourceType"]
            require_type(resource_type, writing=True)
            resource_id = resource.get("id")
            if resource_id is None:
                resource_id = str(uuid.uuid4())
            else:
                check_id(resource_id)
        except RecordError as exc:
            results[index].error = exc
            return None
        return _Pending(index, resource_type, resource_id, resource, item.create_only)

    async def _resolved(self, pending: list[_Pending], refuse) -> list[_Pending]:
        """Patients named by identifier only become references to them (a look-up each, only for those)."""
        outcomes = await asyncio.gather(*(self.records.resolve_patient_identifiers(p.resource) for p in pending),
                                        return_exceptions=True)
        kept = []
        for p, outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, RecordError):
                refuse(p, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                kept.append(p)
        return kept

    async def _with_previous(self, pending: list[_Pending], refuse) -> list[_Pending]:
        """The current version of each resource, one query per type."""
        wanted: dict[str, list[str]] = defaultdict(list)
        for p in pending:
            wanted[p.resource_type].append(p.resource_id)
        found = await asyncio.gather(*(self.store.find_by_ids(resource_type, ids, include_deleted=True)
                                       for resource_type, ids in wanted.items()))
        current = {(resource_type, doc["_id"]): doc for resource_type, docs in zip(wanted, found, strict=True)
                   for doc in docs}
        kept = []
        for p in pending:
            p.previous = current.get((p.resource_type, p.resource_id))
            if p.previous is not None and p.create_only:
                refuse(p, changed_meanwhile(p.owner))
            else:
                kept.append(p)
        return kept

    def _build(self, p: _Pending, updated: datetime, refuse) -> bool:
        """The new version's resource and document, as a single write makes them; False when it cannot be kept."""
        vid = p.previous["vid"] + 1 if p.previous else 1
        resource = stamped(p.resource, p.resource_id, vid, updated)
        p.document = self.records.document_for(p.resource_type, p.resource_id, vid, updated, resource, p.previous)
        if len(bson.encode(p.document)) > MAX_DOCUMENT_BYTES:
            refuse(p, too_large())
            return False
        before = p.previous["resource"] if p.previous and not p.previous["deleted"] else None
        old_keys, new_keys = unique_identifier_keys(before), unique_identifier_keys(resource)
        p.new_keys, p.released = sorted(new_keys - old_keys), sorted(old_keys - new_keys)
        return True

    async def _add_reach(self, pending: list[_Pending]) -> None:
        """`reach` for the batch with one look-up; a Patient of the batch counts with the hospital it now names."""
        reached = [p for p in pending if p.resource_type in REACHED_TYPES]
        patients = {p.resource_id: p.document for p in reached if p.resource_type == "Patient"}
        reaches = await self.records.sharing.reaches_for([p.document["compartment"] for p in reached], patients)
        for p, reach in zip(reached, reaches, strict=True):
            p.document["reach"] = reach

    async def _claim_keys(self, pending: list[_Pending], updated: datetime, refuse) -> list[_Pending]:
        claims = [(key, p.owner, p.write_id) for p in pending for key in p.new_keys]
        holders = iter(await self.store.claim_identifiers(claims, updated - ABANDONED_WRITE_AFTER))
        kept, giving_up = [], []
        for p in pending:
            taken = {key: holder for key in p.new_keys if (holder := next(holders)) is not None}
            p.claimed = [key for key in p.new_keys if key not in taken]
            if not taken:
                kept.append(p)
                continue
            key, holder = next(iter(taken.items()))
            refuse(p, changed_meanwhile(p.owner) if holder == p.owner else identifier_taken(p.resource_type, key))
            giving_up.append(p)
        await self._release_claims(giving_up)
        return kept

    async def _claim_versions(self, pending: list[_Pending], updated: datetime
                              ) -> tuple[list[_Pending], list[_Pending]]:
        """The history entries, the lock of each version: (those that hold theirs, those that lost it)."""
        entries = [history_entry(p.resource_type, p.resource_id, p.document["vid"], updated,
                                 "PUT" if p.previous else "POST", p.document["resource"], p.write_id,
                                 p.document["compartment"], p.document.get("reach", [])) for p in pending]
        held = await self.store.claim_versions(entries)
        kept = [p for p, ok in zip(pending, held, strict=True) if ok]
        lost = [p for p, ok in zip(pending, held, strict=True) if not ok]
        await self._release_claims(lost)
        for p in lost:
            await self.records.finish_abandoned_write(p.resource_type, p.resource_id, p.document["vid"])
        return kept, lost

    async def _store_documents(self, pending: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """The current versions, last: (those written, those another writer got to first)."""
        created: dict[str, list[_Pending]] = defaultdict(list)
        replaced: dict[str, list[_Pending]] = defaultdict(list)
        for p in pending:
            (replaced if p.previous else created)[p.resource_type].append(p)
        steps = [*(self.store.insert_first_versions(t, [p.document for p in ps]) for t, ps in created.items()),
                 *(self.store.replace_if_versions(t, [(p.previous["vid"], p.document) for p in ps])
                   for t, ps in replaced.items())]
        groups = [*created.values(), *replaced.values()]
        written, lost = [], []
        # One after another: the embedded engine has one writer, and concurrent inserts only wait on each other.
        for group, outcome in zip(groups, [await step for step in steps], strict=True):
            for p, ok in zip(group, outcome, strict=True):
                (written if ok else lost).append(p)
        if lost:
            await self.store.remove_history_entries([history_id(p.resource_type, p.resource_id, p.document["vid"])
                                                     for p in lost])
            await self._release_claims(lost)
        return written, lost

    async def _release_claims(self, pending: list[_Pending]) -> None:
        await asyncio.gather(*(self.store.release_identifier(key, p.owner, p.write_id)
                               for p in pending for key in p.claimed))


def _rounds(items: Sequence[BulkItem]) -> list[list[int]]:
    """The items' indexes in rounds in which no resource comes twice: the n-th mention of an id goes in round n."""
    rounds: list[list[int]] = []
    mentions: dict[tuple[Any, Any], int] = {}
    for index, item in enumerate(items):
        resource = item.resource if isinstance(item.resource, dict) else {}
        number = 0
        if isinstance(resource.get("id"), str):
            name = (resource.get("resourceType"), resource.get("id"))
            number = mentions[name] = mentions.get(name, -1) + 1
        while len(rounds) <= number:
            rounds.append([])
        rounds[number].append(index)
    return rounds
