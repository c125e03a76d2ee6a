"""Derives again, in batches and resumably, what the record keeps beside each stored resource: its search fields,
sort keys, compartment and reach. For a search parameter added after resources were stored, and for data stored
before the record kept `reach` (the migration to it runs through here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ehr import search
from ehr.models import RESOURCE_TYPES
from ehr.sharing import Sharing
from ehr.store import REACHED_TYPES, RecordStore

BATCH = 500
# Called as progress(what, done, total): what is "Type" or "Type/_history".
Progress = Callable[[str, int, int], None]


class Reindex:
    def __init__(self, store: RecordStore, batch: int = BATCH):
        self.store = store
        self.sharing = Sharing(store)
        self.batch = batch

    async def run(self, resource_types: list[str] | None = None, progress: Progress | None = None, *,
                  max_batches: int | None = None) -> dict[str, int]:
        """Derive the fields again for these types (all by default), from where an earlier run stopped; returns
        how many documents changed per collection. `max_batches` stops early (the next run goes on)."""
        progress = progress or (lambda what, done, total: None)
        changed: dict[str, int] = {}
        batches = 0
        for resource_type in resource_types or list(RESOURCE_TYPES):
            for history in (False, True):
                what = resource_type + ("/_history" if history else "")
                after = await self.store.reindex_cursor(what) or ""
                remaining = await self.store.count_stored(resource_type, history, after)
                total = await self.store.count_stored(resource_type, history)
                done = total - remaining
                progress(what, done, total)
                changed[what] = 0
                while True:
                    if max_batches is not None and batches >= max_batches:
                        return changed
                    documents = await self.store.stored_batch(resource_type, history, after, self.batch)
                    if not documents:
                        break
                    changes = await self._changes(resource_type, history, documents)
                    await self.store.rederive(resource_type, history, changes)
                    changed[what] += len(changes)
                    after, done, batches = documents[-1]["_id"], done + len(documents), batches + 1
                    await self.store.save_reindex_cursor(what, after)
                    progress(what, done, total)
                await self.store.save_reindex_cursor(what, None)
        return changed

    async def _changes(self, resource_type: str, history: bool,
                       documents: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
        derived = []
        for document in documents:
            resource = document.get("resource")
            fields: dict[str, Any] = {}
            if resource is not None:
                sp, so, compartment = search.index_resource(resource)
                fields = {"compartment": compartment} if history else {"sp": sp, "so": so, "compartment": compartment}
            derived.append(fields)
        if resource_type in REACHED_TYPES:
            compartments = [fields.get("compartment", document.get("compartment") or [])
                            for fields, document in zip(derived, documents, strict=True)]
            # A Patient's hospital is the one its fields derived now name, not the stored ones.
            patients = ({document["_id"]: {**document, **fields} for document, fields in zip(documents, derived,
                                                                                            strict=True)}
                        if resource_type == "Patient" and not history else None)
            reaches = await self.sharing.reaches_for(compartments, patients)
            for fields, reach in zip(derived, reaches, strict=True):
                fields["reach"] = reach
        return [(document["_id"], document["vid"], fields)
                for document, fields in zip(documents, derived, strict=True)
                if any(document.get(name) != value for name, value in fields.items())]
