"""What the record's searches cost on the engine as the data grows, with its `mk_` indexes and without them.

Straight through motor on the running engine (`qilu services up`), in database `qilu_bench_indexes` (dropped
at start and end): patients of one hospital, each with `--per-patient` Observations, stored as the record
stores them (`ehr.search.index_resource`). At each size it times, p50 of `--n` runs each: a read by `_id`
(the baseline), the find and count the record sends for `Observation?subject=..&code=..` (with the
compartment condition the access rules add), a patient's whole record by compartment (what `$everything`
asks of each type), `Patient?family=..` and the hospital's `Observation?code=..` with no patient (the
`reach` condition a practitioner's search gets). Then it drops the `mk_` indexes and times the largest size again:
that is the engine reading whole collections, as it did before. Prints each search as a multiple of the read
and the largest size over the smallest. Bounded; stops by itself (about a minute at the default sizes).

    .venv/bin/python bench/engine_indexes.py [--sizes 100,1000] [--per-patient 10] [--n 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from motor.motor_asyncio import AsyncIOMotorClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ehr import search  # noqa: E402
from ehr.store import ensure_indexes  # noqa: E402
from qilu.services import services_up  # noqa: E402
from qilu.settings import get_settings  # noqa: E402

CODES = ["8480-6", "8462-4", "8867-4", "2339-0", "29463-7"]


def _document(resource: dict, organization: str) -> dict:
    sp, so, compartment = search.index_resource(resource)
    return {"_id": resource["id"], "vid": 1, "updated": datetime.now(UTC), "deleted": False,
            "resource": resource, "sp": sp, "so": so, "compartment": compartment, "reach": [organization]}


async def _grow(db, start: int, end: int, per_patient: int, organization: str) -> None:
    patients, observations = [], []
    for i in range(start, end):
        pid = f"p{i}"
        patients.append(_document({"resourceType": "Patient", "id": pid, "active": True,
                                   "name": [{"family": f"姓{i % 400}", "given": ["名"]}],
                                   "managingOrganization": {"reference": organization}}, organization))
        for j in range(per_patient):
            code = CODES[j % len(CODES)]
            observations.append(_document({
                "resourceType": "Observation", "id": f"o{i}-{j}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2026-0{1 + j % 9}-01",
                "valueQuantity": {"value": 100 + j, "unit": "mmHg"}}, organization))
    for collection, documents in (("Patient", patients), ("Observation", observations)):
        for k in range(0, len(documents), 500):
            await db[collection].insert_many(documents[k:k + 500])


def _record_filter(resource_type: str, params: list[tuple[str, str]], patient: str | None,
                   organization: str | None = None) -> dict:
    """The filter the record sends: the search's, and the access condition (a patient's compartment, or the
    hospital among the documents' reach)."""
    plan = search.parse_search(resource_type, params)
    query = {"$and": [{**plan.filter, "deleted": False}]}
    if patient:
        query["$and"].append({"compartment": patient})
    if organization:
        query["$and"].append({"reach": organization})
    return query


async def _p50(n: int, operation) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await operation()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _measure(db, size: int, n: int, organization: str) -> dict[str, float]:
    patient = f"Patient/p{size // 2}"
    by_code = _record_filter("Observation", [("subject", patient), ("code", "http://loinc.org|8867-4")], patient)
    by_name = _record_filter("Patient", [("family", f"姓{(size // 2) % 400}")], None, organization)
    hospital_by_code = _record_filter("Observation", [("code", "http://loinc.org|8867-4")], None, organization)
    record = {"compartment": patient, "deleted": False}
    return {
        "read by _id": await _p50(n, lambda: db["Observation"].find_one({"_id": f"o{size // 2}-0"})),
        "Observation?subject&code": await _p50(n, lambda: asyncio.gather(
            db["Observation"].find(by_code, sort=[("_id", 1)], limit=20).to_list(20),
            db["Observation"].count_documents(by_code))),
        "a patient's Observations": await _p50(n, lambda: db["Observation"].find(record).to_list(None)),
        "Patient?family": await _p50(n, lambda: db["Patient"].find(by_name, limit=20).to_list(20)),
        # The hospital's first page by code, with no patient named: the reach condition (no count).
        "Observation?code (hospital)": await _p50(n, lambda: db["Observation"].find(
            hospital_by_code, sort=[("_id", 1)], limit=20).to_list(20)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="patients, comma-separated, ascending")
    parser.add_argument("--per-patient", type=int, default=10)
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = get_settings()
    services_up(settings)
    client = AsyncIOMotorClient(settings.effective_mongodb_url)
    name = "qilu_bench_indexes"
    await client.drop_database(name)
    db = client[name]
    try:
        await ensure_indexes(db)
        organization = f"Organization/{uuid.uuid4()}"
        results, grown = {}, 0
        for size in sizes:
            started = time.perf_counter()
            await _grow(db, grown, size, args.per_patient, organization)
            loaded = time.perf_counter() - started
            grown = size
            print(f"{size} patients, {size * args.per_patient} Observations (loaded in {loaded:.1f} s)")
            results[size] = await _measure(db, size, args.n, organization)
        for collection in ("Patient", "Observation"):
            for index in await db[collection].list_indexes().to_list(None):
                if index["name"].startswith("mk_"):
                    await db[collection].drop_index(index["name"])
        unindexed = await _measure(db, sizes[-1], max(3, args.n // 10), organization)
        first, last = results[sizes[0]], results[sizes[-1]]
        print(f"\np50 ms{'':22} | " + " | ".join(f"{s:>8} pts  x read" for s in sizes)
              + f" | {sizes[-1]}/{sizes[0]} | no mk_ at {sizes[-1]}")
        for operation in first:
            cells = " | ".join(f"{results[s][operation]:8.2f} {results[s][operation] / results[s]['read by _id']:7.1f}"
                               for s in sizes)
            print(f"{operation:28} | {cells} | {last[operation] / first[operation]:9.2f} | "
                  f"{unindexed[operation]:10.2f}")
    finally:
        await client.drop_database(name)
        client.close()


if __name__ == "__main__":
    asyncio.run(main())
