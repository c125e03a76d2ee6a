"""The record's searches are served by an index: the engine's own explain of every query the service sends.

On the embedded FerretDB, Qilu's build keeps `mk_*` indexes in side tables (qilu/ferretdb/); these tests hold it
to giving exactly the filter's matches through every kind of write, and hold the record's searches to never
reading a whole collection. On MongoDB the plans are MongoDB's own and only the results are checked.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, monitoring

from ehr.access import Reach
from ehr.service import RecordService
from ehr.store import IN_FORCE, RecordStore, ensure_indexes
from qilu.auth import Caller
from sample_records import observation, organization, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Commands(monitoring.CommandListener):
    """Every query command the service sends, with its collection and filter."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if event.command_name in ("find", "count"):
            self.queries.append((command[event.command_name], dict(command.get("filter") or command.get("query")
                                                                     or {})))
        elif event.command_name == "aggregate":
            match = next((stage["$match"] for stage in command.get("pipeline", []) if "$match" in stage), None)
            if match is not None:
                self.queries.append((command["aggregate"], dict(match)))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


async def _plan(db, collection: str, query: dict[str, Any]) -> dict[str, Any]:
    return await db.command("explain", {"find": collection, "filter": query})


def _scans(plan: dict[str, Any]) -> list[str]:
    """The steps that read a whole table or a whole index: SQLite's plan says SCAN for both (a SCAN "USING
    INDEX" reads every entry of that index), SEARCH for a B-tree search."""
    return [step for step in plan["queryPlanner"]["Plan"] if step.split("detail=")[-1].startswith("SCAN ")]


@pytest.fixture(scope="module")
async def engine(settings):
    listener = Commands()
    client = AsyncIOMotorClient(settings.effective_mongodb_url, event_listeners=[listener])
    name = f"{settings.mongodb_db}_plans"
    await client.drop_database(name)
    db = client[name]
    info = await db.command("buildInfo")
    yield db, listener, "ferretdbVersion" in info
    await client.drop_database(name)
    client.close()


async def test_a_multikey_index_gives_exactly_the_matches_through_every_kind_of_write(engine):
    db, _listener, is_ferretdb = engine
    collection = db["mk_check"]
    await collection.insert_many([{"_id": f"d{i}", "tags": [f"t{i % 5}", "all"], "owner": f"o{i % 3}",
                                   "name": [f"zhang{i % 4}"]} for i in range(60)])
    await collection.create_index([("owner", ASCENDING), ("tags", ASCENDING)], name="mk_owner_tags")
    await collection.create_index([("name", ASCENDING)], name="mk_name")
    filters = [{"owner": "o1", "tags": "t2"}, {"$and": [{"tags": {"$in": ["t1", "t3"]}}, {"owner": "o2"}]},
               {"name": {"$regex": "^(?:zhang1|zhang3)"}}, {"name": {"$regex": "^zhang"}},
               {"name": {"$gte": "zhang2", "$lt": "zhang3"}}, {"owner": "o0", "tags": "none"},
               # Only the first field of (owner, tags): a document without tags has no row there, and still matches.
               {"owner": "o1"},
               # Fields of two indexes: one is read, the other asked about each of its rows.
               {"owner": "o1", "tags": "t2", "name": "zhang1"},
               {"$and": [{"name": {"$gte": "zhang1", "$lt": "zhang3"}}, {"owner": "o2", "tags": "all"}]}]

    async def agree() -> None:
        everything = await collection.find().to_list(None)
        for query in filters:
            expected = sorted(d["_id"] for d in everything if _matches(d, query))
            found = sorted(d["_id"] for d in await collection.find(query).to_list(None))
            assert found == expected, query
            in_order = [d["_id"] for d in await collection.find(query, sort=[("_id", -1)]).to_list(None)]
            assert in_order == expected[::-1], query
            assert await collection.count_documents(query) == len(expected), query

    await agree()
    await collection.insert_one({"_id": "late", "tags": ["t2"], "owner": "o1", "name": "zhang1"})  # plain values
    # A list holding one value twice has two rows in the side table, and is still one match.
    await collection.insert_one({"_id": "untagged", "owner": "o1", "name": ["li"]})
    await collection.insert_one({"_id": "twice", "tags": ["t2", "t2"], "owner": ["o1", "o1"], "name": ["zhang1"]})
    await collection.update_one({"_id": "d1"}, {"$set": {"tags": ["t2"]}})
    await collection.replace_one({"_id": "d2"}, {"owner": "o1", "tags": ["t2", "t9"], "name": ["li"]})
    await collection.delete_many({"_id": {"$in": ["d7", "d10"]}})
    await agree()
    if is_ferretdb:
        for query in filters[:5] + filters[-2:]:
            plan = await _plan(db, collection.name, query)
            assert plan["filterPushdown"] is True and not _scans(plan), (query, plan)
        for query in filters[-2:]:  # the narrowing is the intersection of both indexes
            steps = " ".join((await _plan(db, collection.name, query))["queryPlanner"]["Plan"])
            assert "mk_owner_tags_keys" in steps and "mk_name_keys" in steps, steps
        await collection.drop_index("mk_name")
        await agree()  # the side table went with the index; nothing narrows by name now, and nothing is lost
        # One trigger keeps all of a table's side tables: the index that stays is still kept by every write...
        await collection.insert_one({"_id": "after-drop", "tags": ["t2"], "owner": "o1", "name": ["zhang3"]})
        await collection.update_one({"_id": "d4"}, {"$set": {"owner": "o1", "tags": ["t2"]}})
        await agree()
        # ...and an index made over stored documents is filled from them and kept from then on, beside the other.
        await collection.create_index([("name", ASCENDING)], name="mk_name")
        await collection.insert_one({"_id": "after-create", "tags": ["t1"], "owner": "o2", "name": ["zhang1"]})
        await collection.update_one({"_id": "d5"}, {"$set": {"name": ["zhang3"], "owner": "o2"}})
        await collection.delete_one({"_id": "d6"})
        await agree()
        for query in filters[:3]:
            assert (await _plan(db, collection.name, query))["filterPushdown"] is True, query
    await collection.drop()


def _matches(document: dict[str, Any], query: dict[str, Any]) -> bool:
    """The test's own reading of the few filter forms it uses."""
    for field, condition in query.items():
        if field == "$and":
            if not all(_matches(document, branch) for branch in condition):
                return False
            continue
        values = document.get(field)
        values = values if isinstance(values, list) else [values]
        values = [v for v in values if v is not None]
        if isinstance(condition, dict) and "$in" in condition:
            ok = any(v in condition["$in"] for v in values)
        elif isinstance(condition, dict) and "$regex" in condition:
            alternatives = condition["$regex"].removeprefix("^").removeprefix("(?:").removesuffix(")").split("|")
            ok = any(isinstance(v, str) and v.startswith(tuple(alternatives)) for v in values)
        elif isinstance(condition, dict):
            ok = any(condition["$gte"] <= v < condition["$lt"] for v in values)
        else:
            ok = condition in values
        if not ok:
            return False
    return True


async def test_the_records_searches_read_no_whole_collection(engine):
    """Every find and count the service sends for the searches the portals use (a patient's results by code,
    a patient by name, a patient's conditions, $everything, an instance's history, the hospital's results by code
    and a type's history), as the managing hospital's practitioner, is answered through an index."""
    db, listener, is_ferretdb = engine
    await ensure_indexes(db)
    system = RecordService(RecordStore(db), "http://testserver/fhir")

    async def make(resource_type: str, body: dict[str, Any]) -> str:
        written, _ = await system.create(resource_type, body)
        return written.resource_id

    org = "Organization/" + await make("Organization", organization())
    family = f"测{uuid.uuid4().hex[:6]}"
    bodies = [patient(organization=org, family=family if i == 0 else None) for i in range(3)]
    ids = [await make("Patient", body) for body in bodies]
    for pid in ids:
        for code in ("8480-6", "8867-4", "2339-0"):
            await make("Observation", observation(pid, code=code))
    await make("Condition", {"resourceType": "Condition", "subject": {"reference": f"Patient/{ids[0]}"},
                             "code": {"text": "高血压"}})
    await system.update("Patient", ids[0], {**bodies[0], "id": ids[0], "active": False})
    caller = Caller(user_id="plans", role="practitioner", fhir_user=None, organization=org, practitioner=None,
                    scopes=("user/*.*",))
    records = RecordService(RecordStore(db), "http://testserver/fhir", Reach(caller, RecordStore(db)))
    first = ids[0]
    listener.queries.clear()
    found = await records.search("Observation", [("subject", f"Patient/{first}"), ("code", "http://loinc.org|8867-4")])
    assert [e["resource"]["subject"]["reference"] for e in found["entry"]] == [f"Patient/{first}"]
    found = await records.search("Patient", [("family", family)])
    assert [e["resource"]["id"] for e in found["entry"]] == [first]
    found = await records.search("Condition", [("patient", first)])
    assert len(found["entry"]) == 1
    everything = await records.everything(first, [])
    assert len([e for e in everything["entry"] if e["resource"]["resourceType"] == "Observation"]) == 3
    history = await records.history("Patient", first, [])
    assert history["total"] == 2
    # Without a patient: the hospital's reach is the condition, with a revocation under way or not.
    found = await records.search("Observation", [("code", "http://loinc.org|2339-0")])
    assert len(found["entry"]) == 3
    await RecordStore(db).put_revoking(ids[2], {org: IN_FORCE})
    found = await records.search("Observation", [("code", "http://loinc.org|2339-0")])
    assert {e["resource"]["subject"]["reference"] for e in found["entry"]} == {f"Patient/{i}" for i in ids[:2]}
    assert len((await records.history("Observation", None, [("_count", "5")]))["entry"]) == 5
    assert "entry" not in await records.search("Appointment", [("status", "booked")])
    queries = list(listener.queries)
    assert len(queries) >= 5
    if not is_ferretdb:
        pytest.skip("MongoDB plans its own queries; the results above were checked")
    scanning = []
    for collection, query in queries:
        plan = await _plan(db, collection, query)
        if not plan["filterPushdown"] or _scans(plan):
            scanning.append((collection, query, plan["queryPlanner"]["Plan"]))
    assert not scanning, scanning
    # The hospital's search by code reads the compound index of reach and code as its rows come, in `_id`
    # order, so a page reads about a page of documents however many the hospital has.
    reached = [query for collection, query in queries if collection == "Observation" and "reach" in str(query)]
    assert reached
    plan = await db.command("explain", {"find": "Observation", "filter": reached[0], "sort": {"_id": 1}})
    steps = plan["queryPlanner"]["Plan"]
    assert "mk_reach_code_keys" in steps[0] and not [step for step in steps if "LIST SUBQUERY" in step], steps


async def test_a_find_sorted_by_id_is_ordered_by_the_engine_and_stops_at_its_limit(engine):
    """Sorted by `_id` alone, the embedded engine takes the order from SQLite (no sort in Go, no temporary
    B-tree), so a first page reads its page and not every match; the order is the one every match sorted gives."""
    db, _, is_ferretdb = engine
    collection = db[f"sorted_{uuid.uuid4().hex[:6]}"]
    await collection.create_index([("reach", ASCENDING), ("code", ASCENDING)], name="mk_reach_code")
    await collection.insert_many([{"_id": f"{i:04d}-{uuid.uuid4().hex[:6]}", "reach": ["A" if i % 2 else "B"],
                                   "code": ["x" if i % 3 else "y"], "deleted": i % 7 == 0} for i in range(600)])
    query = {"$and": [{"code": "x", "deleted": False}, {"reach": "A"}]}
    every = sorted([d["_id"] async for d in collection.find(query)])
    assert len(every) > 100
    for direction in (1, -1):
        page = [d["_id"] async for d in collection.find(query, sort=[("_id", direction)], skip=3, limit=20)]
        assert page == (every if direction == 1 else every[::-1])[3:23]
        if is_ferretdb:
            plan = await db.command("explain", {"find": collection.name, "filter": query, "sort": {"_id": direction},
                                                "limit": 20})
            assert plan["sortPushdown"] is True
            steps = plan["queryPlanner"]["Plan"]
            assert not [step for step in steps if "TEMP B-TREE" in step], plan
            assert not _scans(plan), plan
            # The documents are read as the index's rows come, in `_id` order: no list of every match first.
            assert "mk_reach_code_keys" in steps[0] and not [step for step in steps if "LIST SUBQUERY" in step], steps


async def test_of_two_indexes_narrowing_as_much_the_one_with_fewer_rows_is_read(engine):
    """A surname shared by thousands against a given name shared by a few: without statistics the engine
    counts each candidate's rows for the filter (up to a bound) and reads the smaller, asking the other about
    each of its rows (by the row's id when the other is a range)."""
    db, _, is_ferretdb = engine
    collection = db[f"names_{uuid.uuid4().hex[:6]}"]
    await collection.create_index([("reach", ASCENDING), ("family", ASCENDING)], name="mk_reach_family")
    await collection.create_index([("reach", ASCENDING), ("given", ASCENDING)], name="mk_reach_given")
    await collection.insert_many([{"_id": f"p{i:05d}", "reach": ["A"], "family": ["zhang"],
                                   "given": [f"g{i % 300}"]} for i in range(1500)])
    everyone = await collection.find().to_list(None)
    for query, read, asked in (({"reach": "A", "family": "zhang", "given": "g7"}, "given", "family"),
                               ({"reach": "A", "family": {"$regex": "^zh"}, "given": {"$regex": "^g7"}}, "given",
                                "family"),
                               ({"reach": "A", "family": "li", "given": "g7"}, "family", "given")):
        expected = sorted(d["_id"] for d in everyone if _matches(d, query))
        assert [d["_id"] async for d in collection.find(query, sort=[("_id", 1)])] == expected, query
        if is_ferretdb:
            plan = await db.command("explain", {"find": collection.name, "filter": query, "sort": {"_id": 1}})
            steps = plan["queryPlanner"]["Plan"]
            first_read = next(step for step in steps if "_keys" in step)
            assert f"mk_reach_{read}_keys" in first_read, steps
            asking = next(step for step in steps if f"mk_reach_{asked}_keys" in step)
            if isinstance(query["family"], dict):  # a range is asked by the row's id, not read whole per row
                assert asking.endswith("(id=?)"), steps
    await collection.drop()
