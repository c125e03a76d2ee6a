"""`qilu reindex`: the search fields, compartments and reach of stored resources derived again, in batches, from where
an interrupted run stopped; a second run changes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from motor.motor_asyncio import AsyncIOMotorClient

from ehr.reindex import Reindex
from ehr.service import RecordService
from ehr.store import HISTORY, RecordStore, ensure_indexes
from sample_records import observation, organization, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def old_layout(settings):
    """A database of its own, written as before the record kept `reach` and before `code` was indexed."""
    client = AsyncIOMotorClient(settings.effective_mongodb_url)
    name = f"{settings.mongodb_db}_reindex_{uuid.uuid4().hex[:6]}"
    db = client[name]
    await ensure_indexes(db)
    system = RecordService(RecordStore(db), "http://testserver/fhir")
    org = "Organization/" + (await system.create("Organization", organization()))[0].resource_id
    pids = [(await system.create("Patient", patient(organization=org)))[0].resource_id for _ in range(3)]
    for pid in pids:
        for code in ("8480-6", "8462-4"):
            await system.create("Observation", observation(pid, code=code))
    for collection in ("Patient", "Observation"):
        await db[collection].update_many({}, {"$unset": {"reach": "", "sp.code": ""}})
    await db[HISTORY].update_many({}, {"$unset": {"reach": ""}})
    yield db, name, org, system
    await client.drop_database(name)
    client.close()


async def test_reindex_is_resumable_and_idempotent(old_layout):
    db, _, org, system = old_layout
    reindex = Reindex(RecordStore(db), batch=2)
    seen: list[tuple[str, int, int]] = []
    first = await reindex.run(["Patient", "Observation"], lambda what, done, total: seen.append((what, done, total)),
                              max_batches=3)
    # Three batches of two: the three Patients, then two of their history entries, and it stopped.
    assert first == {"Patient": 3, "Patient/_history": 2}
    assert await db["Observation"].count_documents({"reach": org}) == 0
    rest = await reindex.run(["Patient", "Observation"], lambda what, done, total: seen.append((what, done, total)))
    # The second run went on from where the first stopped: 3 Patients + 6 Observations, 3 + 6 history entries.
    assert sum(first.values()) + sum(rest.values()) == 18
    assert ("Patient", 2, 3) in seen and ("Observation/_history", 6, 6) in seen
    assert await db["Observation"].count_documents({"reach": org}) == 6
    assert await db["Observation"].count_documents({"sp.code": "http://loinc.org|8480-6"}) == 3
    assert await db[HISTORY].count_documents({"type": "Observation", "reach": org}) == 6
    again = await reindex.run(["Patient", "Observation"])
    assert sum(again.values()) == 0
    found = await system.search("Observation", [("code", "http://loinc.org|8462-4")])
    assert found["total"] == 3


async def test_cli_reindex_refuses_an_unknown_type_and_reindexes_a_known_one(old_layout):
    _, name, _, _ = old_layout
    env = {**os.environ, "QILU_MONGODB_DB": name}

    def qilu(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qilu", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    refused = await asyncio.to_thread(qilu, "reindex", "Patinet")
    assert refused.returncode == 2 and "Patinet" in refused.stderr
    done = await asyncio.to_thread(qilu, "reindex", "Observation")
    assert done.returncode == 0, done.stderr
    assert "reindexed: 12 documents changed" in done.stdout
