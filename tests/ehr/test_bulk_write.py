"""The record's bulk write path: a batch is validated, versioned, kept in history, claims its keys and derives
its reach as single writes do; a refused resource leaves nothing behind and the rest of its batch is written."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from ehr.access import Reach
from ehr.bulk import BATCH, BulkItem, BulkWriter
from ehr.importer import import_paths
from ehr.service import RecordService, identifier_key
from ehr.store import HISTORY, IDENTIFIER_KEYS, RecordStore, history_id
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM
from qilu.auth import Caller
from sample_records import observation, organization, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")
BASE = "http://testserver/fhir"


@pytest.fixture
def records(app) -> RecordService:
    return RecordService(RecordStore(app.state.db), BASE)


@pytest.fixture
async def hospital(records) -> str:
    written, _ = await records.create("Organization", organization())
    return f"Organization/{written.resource_id}"


def with_id(resource: dict, prefix: str) -> dict:
    return {**resource, "id": f"{prefix}-{uuid.uuid4().hex[:10]}"}


def national_number(resource: dict) -> str:
    return resource["identifier"][0]["value"]


async def left_behind(db, resource_type: str, resource_id: str) -> list[str]:
    """What a resource left in the store: its current version, history entries, identifier keys."""
    found = []
    if await db[resource_type].find_one({"_id": resource_id}):
        found.append("document")
    if await db[HISTORY].count_documents({"type": resource_type, "id": resource_id}):
        found.append("history")
    if await db[IDENTIFIER_KEYS].count_documents({"owner": f"{resource_type}/{resource_id}"}):
        found.append("identifier key")
    return found


async def test_a_batch_is_written_as_single_writes_are_and_a_bad_resource_leaves_nothing(app, records, hospital):
    db = app.state.db
    person = with_id(patient(organization=hospital), "bw")
    pulse = with_id(observation(person["id"], code="8867-4"), "bw")
    bad_status = with_id(observation(person["id"], status="not-a-status"), "bw")
    no_type = {"id": "bw-no-type", "status": "final"}
    items = [BulkItem("line 1", person), BulkItem("line 2", bad_status), BulkItem("line 3", pulse),
             BulkItem("line 4", no_type), BulkItem("line 5", "not an object")]

    results = await BulkWriter(records).write(items)

    assert [r.where for r in results] == ["line 1", "line 2", "line 3", "line 4", "line 5"]
    assert [r.error.status if r.error else None for r in results] == [None, 422, None, 400, 400]
    assert [bool(r.written and r.written.created) for r in results] == [True, False, True, False, False]
    assert await left_behind(db, "Observation", bad_status["id"]) == []
    # Each written one is what a single write keeps: the version, its history entry, its keys and its reach.
    stored = await records.read("Observation", pulse["id"])
    assert stored["vid"] == 1 and stored["resource"]["meta"]["versionId"] == "1"
    assert stored["compartment"] == [f"Patient/{person['id']}"]
    # The Observation's patient came in the same batch: it reaches the hospital that patient now names.
    assert stored["reach"] == [hospital]
    entry = await db[HISTORY].find_one({"_id": history_id("Observation", pulse["id"], 1)})
    assert entry["method"] == "POST" and entry["reach"] == [hospital]
    key = identifier_key("Patient", NATIONAL_ID_SYSTEM, national_number(person))
    assert await records.store.identifier_owner(key) == f"Patient/{person['id']}"
    found = await records.search("Observation", [("subject", f"Patient/{person['id']}"), ("code", "8867-4")])
    assert [e["resource"]["id"] for e in found["entry"]] == [pulse["id"]]


async def test_an_identifier_held_elsewhere_refuses_that_resource_only_and_keeps_the_holders_key(app, records,
                                                                                                 hospital):
    db = app.state.db
    holder, _ = await records.create("Patient", patient(organization=hospital))
    number = national_number(holder.resource)
    # The same person again (an ID number agrees with its holder's birth date and sex), under another id.
    twin = with_id({k: v for k, v in holder.resource.items() if k != "meta"}, "bw")
    first = with_id(patient(organization=hospital), "bw")
    second = with_id(first, "bw")  # two of the batch want one number: the first gets it

    results = await BulkWriter(records).write([BulkItem("a", twin), BulkItem("b", first), BulkItem("c", second)])

    assert [(r.error.status, r.error.issues[0].code) if r.error else None for r in results] == [
        (409, "duplicate"), None, (409, "duplicate")]
    assert await left_behind(db, "Patient", twin["id"]) == []
    assert await left_behind(db, "Patient", second["id"]) == []
    key = identifier_key("Patient", NATIONAL_ID_SYSTEM, number)
    assert await records.store.identifier_owner(key) == f"Patient/{holder.resource_id}"
    assert await left_behind(db, "Patient", first["id"]) == ["document", "history", "identifier key"]


async def test_an_id_named_twice_is_written_in_turn_and_an_update_releases_the_old_number(app, records, hospital):
    db = app.state.db
    person = with_id(patient(organization=hospital), "bw")
    old_number = national_number(person)
    renumbered = {**patient(organization=hospital, birth_date=None), "id": person["id"]}
    writer = BulkWriter(records)

    results = await writer.write([BulkItem("1", person), BulkItem("2", renumbered)])

    assert [r.written.vid for r in results] == [1, 2]
    assert [r.written.created for r in results] == [True, False]
    current = await records.read("Patient", person["id"])
    assert current["vid"] == 2 and national_number(current["resource"]) == national_number(renumbered)
    assert [e["method"] for e in await db[HISTORY].find({"type": "Patient", "id": person["id"]},
                                                        sort=[("vid", 1)]).to_list(None)] == ["POST", "PUT"]
    assert await records.store.identifier_owner(identifier_key("Patient", NATIONAL_ID_SYSTEM, old_number)) is None
    # The released number is free for another patient.
    other = with_id(person, "bw")
    assert (await writer.write([BulkItem("3", other)]))[0].error is None


async def test_create_only_refuses_an_id_that_exists_and_changes_nothing(records, hospital):
    person = with_id(patient(organization=hospital), "bw")
    writer = BulkWriter(records)
    await writer.write([BulkItem("seed", person, create_only=True)])

    again = await writer.write([BulkItem("seed again", {**person, "active": False}, create_only=True)])

    assert (again[0].error.status, again[0].error.issues[0].code) == (409, "conflict")
    current = await records.read("Patient", person["id"])
    assert current["vid"] == 1 and "active" not in current["resource"]


async def test_the_bulk_path_is_the_systems_only(app, hospital):
    caller = Caller(user_id="u", role="practitioner", fhir_user=None, organization=hospital,
                    practitioner=None, scopes=("user/*.*",))
    store = RecordStore(app.state.db)
    with pytest.raises(ValueError):
        BulkWriter(RecordService(store, BASE, Reach(caller, store)))


async def test_an_import_across_batches_names_each_bad_line_and_writes_every_good_one(settings, records, hospital,
                                                                                      tmp_path):
    person = with_id(patient(organization=hospital), "bwi")
    lines = [person]
    bad_lines = {3, BATCH + 2}  # one in the first batch, one in the second
    for number in range(2, BATCH + 50):
        status = "not-a-status" if number in bad_lines else "final"
        lines.append({**observation(person["id"], status=status), "id": f"{person['id']}-{number}"})
    path = tmp_path / "across.ndjson"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    report = await asyncio.to_thread(import_paths, settings, [path])

    assert (report.created, report.failed) == (len(lines) - 2, 2)
    # Two batches are written at once, so their errors may come in either order.
    assert sorted(e.split(": ")[0] for e in report.errors) == sorted(f"{path}:{n}" for n in bad_lines)
    for number in bad_lines:
        assert await records.store.get("Observation", f"{person['id']}-{number}") is None
    kept = await records.store.count("Observation", {"compartment": f"Patient/{person['id']}"})
    assert kept == len(lines) - 3
