"""What the FHIR API costs over the bare driver: create, read and search through a real server beside motor.

Creates an Organization and a practitioner there in database `qilu_bench` (dropped at start and end), starts
`qilu serve` on a loopback port, logs the practitioner in, then for each operation runs it over HTTP
(httpx.AsyncClient, bearer token; the server checks the token, applies the access rules and appends one
AuditEvent per request) and straight through motor on the same database, at concurrency 1 and 32, and prints
throughput, p50/p99 latency and the API/direct ratio, then the engine commands per request by route (from
the server's /metrics). Bounded in count and time; stops by itself.

    .venv/bin/python bench/fhir_api.py [--n 400] [--phase-seconds 8] [--log-level INFO]
    .venv/bin/python bench/fhir_api.py --before COMMIT   # read and create, this checkout against COMMIT
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from motor.motor_asyncio import AsyncIOMotorClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_server import BenchRun, add_organization, add_person, cpu_seconds, engine_pid, log_in, \
    start_server  # noqa: E402
from timing import Run, measure, settle  # noqa: E402

from ehr.search import index_resource, parse_search  # noqa: E402
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, make_national_id  # noqa: E402
from qilu.audit import audit_event  # noqa: E402
from qilu.auth import Caller  # noqa: E402
from qilu.identity import User  # noqa: E402
from qilu.settings import Settings  # noqa: E402

BENCH_DB = "qilu_bench"
FHIR_JSON = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
# The targets of issue 3 (2-core machine, concurrency 1).
TARGET_READ_P50_MS = 3.0
TARGET_CREATE_P50_MS = 6.0
TARGET_RATIO = 2.0
CONCURRENCY = (1, 32)
PRACTITIONER_LOGIN = "BENCH0001"
ENGINE_READ = "  direct: all of a read"
ENGINE_CREATE = "  direct: all of a create"


def national_ids(count: int, seed: int) -> list[str]:
    """`count` distinct valid numbers (distinct birth dates x order codes), shuffled."""
    rng = random.Random(seed)
    days = rng.sample(range(0, 25000), count // 100 + 1)
    numbers = [make_national_id("370102", dt.date(1940, 1, 1) + dt.timedelta(days=d), seq,
                                "female" if seq % 2 else "male")
               for d in days for seq in range(100)]
    rng.shuffle(numbers)
    return numbers[:count]


def patient(number: str, i: int, organization: str) -> dict:
    """A Patient managed by `organization`, which the bench's practitioner works at (so may write it)."""
    birth = dt.datetime.strptime(number[6:14], "%Y%m%d").date()
    sex = "male" if int(number[16]) % 2 else "female"
    return {"resourceType": "Patient",
            "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": number}],
            "name": [{"family": "王", "given": [f"测{i}"], "text": f"王测{i}"}],
            "gender": sex, "birthDate": birth.isoformat(),
            "telecom": [{"system": "phone", "value": f"138{i:08d}"}],
            "address": [{"city": "济南市", "district": "历下区", "postalCode": "250011"}],
            "managingOrganization": {"reference": organization}}


def observation(patient_id: str, i: int) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
            "subject": {"reference": f"Patient/{patient_id}"},
            "effectiveDateTime": f"2024-03-{i % 28 + 1:02d}T08:00:00+08:00",
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}


def stored_document(resource: dict) -> dict:
    """The current-version document the record store keeps for a resource (same fields, same size)."""
    resource_id = str(uuid.uuid4())
    updated = dt.datetime.now(dt.UTC)
    resource = {**resource, "id": resource_id,
                "meta": {"versionId": "1", "lastUpdated": updated.isoformat(timespec="milliseconds")}}
    sp, so, compartment = index_resource(resource)
    return {"_id": resource_id, "vid": 1, "updated": updated, "deleted": False, "resource": resource,
            "sp": sp, "so": so, "compartment": compartment}


def audit_document(caller: Caller, patient_id: str) -> dict:
    """The AuditEvent the API appends for one read of a Patient by the bench's practitioner, as stored."""
    event = audit_event(caller=caller, interaction="read", outcome="0", purpose="TREAT", source_address="127.0.0.1",
                        entities=[f"Patient/{patient_id}"], patients=[f"Patient/{patient_id}"])
    return stored_document(event)


async def set_up_people(settings: Settings, fhir_base: str) -> tuple[str, User]:
    """The hospital the bench's patients belong to, and a practitioner there who makes every API call."""
    return await set_up_people_in(settings, fhir_base, BENCH_DB)


async def set_up_people_in(settings: Settings, fhir_base: str, db_name: str) -> tuple[str, User]:
    mongo = AsyncIOMotorClient(settings.effective_mongodb_url, tz_aware=True, uuidRepresentation="standard")
    try:
        organization = await add_organization(mongo[db_name], fhir_base, "历下区人民医院 (bench)")
        practitioner = await add_person(mongo[db_name], fhir_base, "practitioner", PRACTITIONER_LOGIN, "王医生",
                                        organization)
    finally:
        mongo.close()
    return organization, practitioner


def expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
                           f"{response.text[:150]}")
    return response


async def bench(args: argparse.Namespace, settings: Settings, base: str, organization: str,
                practitioner: User, server_pid: int | None) -> list[Run]:
    n = args.n
    # Enough distinct ID numbers for every patient any path creates.
    numbers = iter(national_ids(4 * n * len(CONCURRENCY) + args.patients + 200, seed=args.seed))
    rng = random.Random(args.seed)
    runs: list[Run] = []
    mongo = AsyncIOMotorClient(settings.effective_mongodb_url, tz_aware=True, uuidRepresentation="standard",
                               maxPoolSize=100)
    db = mongo[BENCH_DB]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=FHIR_JSON, limits=limits, timeout=30) as http:
        # Every call below is the practitioner's: their token, their organization's reach, their AuditEvents.
        http.headers.update(await log_in(http, PRACTITIONER_LOGIN))
        caller = Caller.of(practitioner)
        # --- seed: patients with observations, through the API (not timed) --------------------------
        seeded: list[tuple[str, str]] = []  # (id, national ID number)
        sem = asyncio.Semaphore(32)

        async def seed_patient(i: int) -> None:
            number = next(numbers)
            async with sem:
                created = expect(await http.post("/fhir/Patient", json=patient(number, i, organization)), 201).json()
                for k in range(args.observations):
                    expect(await http.post("/fhir/Observation", json=observation(created["id"], k)), 201)
            seeded.append((created["id"], number))

        try:
            await asyncio.wait_for(asyncio.gather(*(seed_patient(i) for i in range(args.patients))), 45)
        except TimeoutError:
            if not seeded:
                raise SystemExit("seeding through the API made no progress in 45 s")
            print(f"seeding stopped at {len(seeded)} patients after 45 s", file=sys.stderr)
        sample = [rng.choice(seeded) for _ in range(n)]

        # --- the operations: (name, API call, direct call); each takes the op index ---------------
        async def api_floor(i: int) -> None:
            expect(await http.get("/healthz"), 200)

        async def direct_floor(i: int) -> None:
            await mongo.admin.command("ping")

        def make_create() -> tuple[Callable, Callable, Callable]:
            # Bodies built before timing, with ID numbers no other phase uses.
            api_bodies = [patient(next(numbers), i, organization) for i in range(n)]
            direct_docs = [stored_document(patient(next(numbers), i, organization)) for i in range(n)]
            store_docs = [stored_document(patient(next(numbers), i, organization)) for i in range(n)]

            async def api(i: int) -> None:
                expect(await http.post("/fhir/Patient", json=api_bodies[i]), 201)

            async def direct(i: int) -> None:
                await db["Patient"].insert_one(direct_docs[i])

            async def as_store(i: int) -> None:
                await write_as_the_store_does(store_docs[i])
            return api, direct, as_store

        async def write_as_the_store_does(document: dict) -> None:
            """What the record's create of a Patient with an ID number writes, as it sends them: the identifier
            key and the history entry together, then the current version."""
            resource = document["resource"]
            key = f"Patient|{NATIONAL_ID_SYSTEM}|{resource['identifier'][0]['value']}"
            await asyncio.gather(
                db["identifier_keys"].insert_one({"_id": key, "owner": f"Patient/{document['_id']}"}),
                db["resource_history"].insert_one({
                    "_id": f"Patient/{document['_id']}/1", "type": "Patient", "id": document["_id"], "vid": 1,
                    "updated": document["updated"], "method": "POST", "resource": resource, "write": "bench"}))
            await db["Patient"].insert_one(document)

        async def api_read(i: int) -> None:
            expect(await http.get(f"/fhir/Patient/{sample[i][0]}"), 200)

        async def direct_read(i: int) -> None:
            if await db["Patient"].find_one({"_id": sample[i][0]}) is None:
                raise RuntimeError("not found")

        def search_pair(resource_type: str, param: str, value: Callable[[int], str]) -> tuple[Callable, Callable]:
            async def api(i: int) -> None:
                bundle = expect(await http.get(f"/fhir/{resource_type}", params={param: value(i)}), 200).json()
                if not bundle.get("entry"):
                    raise RuntimeError("empty searchset")

            async def direct(i: int) -> None:
                # The filter, sort and page size the API's own compiler makes of the same query.
                plan = parse_search(resource_type, [(param, value(i))])
                found = await db[resource_type].find(plan.filter, sort=plan.sort or None,
                                                     limit=plan.count).to_list(plan.count)
                if not found:
                    raise RuntimeError("empty result")
            return api, direct

        def make_engine_work() -> tuple[Callable, Callable]:
            """The engine work of an API read and of an API create, done straight through motor: the user
            behind the token looked up, the record operation, the AuditEvent inserted. Against these rows the
            API's cost is what HTTP, the checks and the FHIR work add, the database's part being equal."""
            audit_docs = [audit_document(caller, sample[i][0]) for i in range(n)]
            create_docs = [stored_document(patient(next(numbers), i, organization)) for i in range(n)]

            async def user() -> None:
                if await db["users"].find_one({"_id": practitioner.id, "active": True}) is None:
                    raise RuntimeError("the practitioner is gone")

            async def read(i: int) -> None:
                await user()
                if await db["Patient"].find_one({"_id": sample[i][0]}) is None:
                    raise RuntimeError("not found")
                await db["AuditEvent"].insert_one(audit_docs[i])

            async def create(i: int) -> None:
                await user()
                await write_as_the_store_does(create_docs[i])
                await db["AuditEvent"].insert_one({**audit_docs[i], "_id": uuid.uuid4().hex})
            return read, create

        def make_audit() -> Callable:
            documents = [audit_document(caller, sample[i][0]) for i in range(n)]

            async def direct(i: int) -> None:
                # The one insert every API request above also makes (ehr.store.RecordStore.insert_audit_event).
                await db["AuditEvent"].insert_one(documents[i])
            return direct

        creates = {c: make_create() for c in CONCURRENCY}
        engine_work = {c: make_engine_work() for c in CONCURRENCY}
        audits = {c: make_audit() for c in CONCURRENCY}
        ops: list[tuple[str, Callable | None, Callable]] = [
            ("ping (floor)", api_floor, direct_floor),
            ("read Patient", api_read, direct_read),
            ("search Patient?identifier", *search_pair(
                "Patient", "identifier", lambda i: f"{NATIONAL_ID_SYSTEM}|{sample[i][1]}")),
            ("search Observation?patient", *search_pair(
                "Observation", "patient", lambda i: f"Patient/{sample[i][0]}")),
        ]
        # Each operation at both concurrencies before the next, so both see the same collection sizes;
        # creates last, so reads and searches run on the seeded collections and nothing else.
        phases = [(name, path, call, c) for name, api, direct in ops for c in CONCURRENCY
                  for path, call in (("api", api), ("direct", direct))]
        phases += [("create Patient", path, creates[c][slot], c) for c in CONCURRENCY
                   for path, slot in (("api", 0), ("direct", 1))]
        phases += [("  direct: key+history+doc", "direct", creates[c][2], c) for c in CONCURRENCY]
        phases += [("  direct: AuditEvent insert", "direct", audits[c], c) for c in CONCURRENCY]
        phases += [(ENGINE_READ, "direct", engine_work[c][0], c) for c in CONCURRENCY]
        phases += [(ENGINE_CREATE, "direct", engine_work[c][1], c) for c in CONCURRENCY]

        async def read_pair() -> float:
            started = time.perf_counter()
            await api_read(0)
            await direct_read(0)
            return time.perf_counter() - started

        engine = engine_pid(settings)
        quiet = statistics.median([await read_pair() for _ in range(9)])
        deadline = time.monotonic() + args.budget_seconds
        warmed = set()
        for index, (name, path, call, concurrency) in enumerate(phases):
            if (name, path) not in warmed and not name.startswith(("create", "  direct")):
                warmed.add((name, path))
                for _ in range(5):  # warm connections and caches (index 0 is reused on purpose)
                    try:
                        await call(0)
                    except Exception:  # counted in the measured phase, not here
                        pass
            seconds = min(args.phase_seconds, max(0.5, (deadline - time.monotonic()) / (len(phases) - index)))
            processes = {"server": server_pid if path == "api" else None, "engine": engine}
            cpu_before = {who: cpu_seconds(pid) for who, pid in processes.items()}
            run = await measure(name, path, concurrency, n, seconds, call)
            if run.latencies:
                run.cpu_ms = {who: (cpu_seconds(pid) - cpu_before[who]) * 1000 / len(run.latencies)
                              for who, pid in processes.items() if pid is not None}
            runs.append(run)
            if run.unfinished:
                await settle(read_pair, quiet, min(20.0, max(1.0, deadline - time.monotonic())))
            print(f"  done: {name} {path} at concurrency {concurrency}", file=sys.stderr, flush=True)
    mongo.close()
    return runs


def _cell(value: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:>{width}.{digits}f}"  # NaN -> "-"


def print_table(runs: list[Run]) -> None:
    by_key = {(r.operation, r.path, r.concurrency): r for r in runs}
    rows = list(dict.fromkeys((r.operation, r.concurrency) for r in runs))
    header = (f"{'operation':<28}{'c':>3} | {'API ops/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'done':>5} | "
              f"{'direct ops/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'done':>5} | {'p50 x':>6} {'ops/s x':>7}")
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for operation, concurrency in rows:
        api, direct = by_key.get((operation, "api", concurrency)), by_key[(operation, "direct", concurrency)]
        a50, a99 = (api.p(0.5), api.p(0.99)) if api else (nan, nan)
        a_tput = api.throughput if api and api.latencies else nan
        d_tput = direct.throughput if direct.latencies else nan
        line = (f"{operation:<28}{concurrency:>3} | {_cell(a_tput, 9, 0)} {_cell(a50, 7, 2)} {_cell(a99, 7, 2)} "
                f"{len(api.latencies) if api else '-':>5} | {_cell(d_tput, 12, 0)} {_cell(direct.p(0.5), 7, 2)} "
                f"{_cell(direct.p(0.99), 7, 2)} {len(direct.latencies):>5} | "
                f"{_cell(a50 / direct.p(0.5), 6, 1)} {_cell(d_tput / a_tput, 7, 1)}")
        print(line)
    print("p50 x = API p50 / direct p50;  ops/s x = direct ops/s / API ops/s: what the API costs over the driver.")
    print("The 'key+history+doc' row is the three inserts the record's create makes, sent as it sends them;\n"
          "the 'all of a' rows add what every request also asks of the database (the token's user looked up,\n"
          "the AuditEvent inserted): the database's part of an API read and create, without HTTP and Python.")
    print("Every API request also checks the bearer token, applies the access rules and inserts one AuditEvent;\n"
          "the 'AuditEvent insert' row is that insert alone.")
    c1 = {r.operation: r for r in runs if r.path == "api" and r.concurrency == 1}
    checks = [("read p50 <= 3 ms (c=1)", c1["read Patient"].p(0.5) <= TARGET_READ_P50_MS),
              ("create p50 <= 6 ms (c=1)", c1["create Patient"].p(0.5) <= TARGET_CREATE_P50_MS)]
    for r in runs:
        if r.path == "api" and r.operation != "ping (floor)" and r.latencies:
            d = by_key[(r.operation, "direct", r.concurrency)]
            if d.latencies:
                checks.append((f"{r.operation} c={r.concurrency} p50 <= {TARGET_RATIO:g}x direct",
                               r.p(0.5) <= TARGET_RATIO * d.p(0.5)))
    print()
    print(f"{'CPU ms per operation':<28}{'c':>3} | {'API: server':>11} {'engine':>7} {'total':>7} | "
          f"{'direct: engine':>14} | {'total x':>7}")
    for operation, concurrency in rows:
        api, direct = by_key.get((operation, "api", concurrency)), by_key[(operation, "direct", concurrency)]
        server = api.cpu_ms.get("server", nan) if api else nan
        engine = api.cpu_ms.get("engine", nan) if api else nan
        direct_engine = direct.cpu_ms.get("engine", nan)
        print(f"{operation:<28}{concurrency:>3} | {_cell(server, 11, 2)} {_cell(engine, 7, 2)} "
              f"{_cell(server + engine, 7, 2)} | {_cell(direct_engine, 14, 2)} | "
              f"{_cell((server + engine) / direct_engine, 7, 1)}")
    print("CPU time of the `qilu serve` process and of FerretDB per completed operation (from /proc): what each\n"
          "side costs the machine, which waiting for a busy core does not inflate. The clients' own CPU is left out.")
    for operation, baseline in (("read Patient", ENGINE_READ), ("create Patient", ENGINE_CREATE)):
        for concurrency in CONCURRENCY:
            api, same = by_key.get((operation, "api", concurrency)), by_key.get((baseline, "direct", concurrency))
            if api and same and api.latencies and same.latencies:
                checks.append((f"{operation} c={concurrency} p50 <= {TARGET_RATIO:g}x the same engine work direct "
                               f"({api.p(0.5) / same.p(0.5):.1f}x)", api.p(0.5) <= TARGET_RATIO * same.p(0.5)))
    print("targets (issue 3):")
    for name, ok in checks:
        print(f"  {'met   ' if ok else 'MISSED'} {name}")
    for run in runs:
        if run.errors or run.unfinished:
            label = "ERRORS" if run.errors else "cut off"
            print(f"{label} {run.operation.strip()} ({run.path}, c={run.concurrency}): {run.errors} failed, "
                  f"{run.unfinished} still in flight when its time was up"
                  + (f"; first failure: {run.first_error}" if run.errors else ""))


# --- before and after: the same reads and creates against this checkout and an earlier commit -------------

BEFORE_DB = "qilu_bench_before"
ROUNDS = 5


async def compare_versions(args: argparse.Namespace, sides: dict[str, tuple[str, str]]) -> None:
    """Alternate rounds of reads (of the practitioner's own Patients, judged from the document in hand, and
    Observations, judged by their patients' documents) and creates (of Observations) on both servers, so drift of a shared machine hits both; prints each side's
    median p50 over the rounds and the after/before ratio."""
    numbers = iter(national_ids(4 * len(sides) * (args.patients + 10), seed=args.seed))
    clients: dict[str, httpx.AsyncClient] = {}
    samples: dict[str, list[str]] = {}
    patients: dict[str, list[str]] = {}
    try:
        for side, (base, organization) in sides.items():
            http = httpx.AsyncClient(base_url=base, headers=FHIR_JSON, timeout=30)
            clients[side] = http
            http.headers.update(await log_in(http, PRACTITIONER_LOGIN))
            patients[side], samples[side] = [], []
            for i in range(args.patients):
                created = expect(await http.post("/fhir/Patient", json=patient(next(numbers), i, organization)),
                                 201).json()
                patients[side].append(created["id"])
                samples[side].append(expect(await http.post("/fhir/Observation", json=observation(created["id"], i)),
                                            201).json()["id"])
        p50: dict[tuple[str, str], list[float]] = {}
        n = max(10, args.n // ROUNDS)
        for round_ in range(ROUNDS):
            for side, http in clients.items():
                async def read(i: int, http=http, side=side) -> None:
                    expect(await http.get(f"/fhir/Observation/{samples[side][(i + round_) % len(samples[side])]}"),
                           200)

                async def create(i: int, http=http, side=side) -> None:
                    expect(await http.post("/fhir/Observation", json=observation(
                        patients[side][i % len(patients[side])], i)), 201)
                async def read_patient(i: int, http=http, side=side) -> None:
                    expect(await http.get(f"/fhir/Patient/{patients[side][(i + round_) % len(patients[side])]}"), 200)
                for name, op in (("read Patient", read_patient), ("read Observation", read),
                                 ("create Observation", create)):
                    run = await measure(name, side, 1, n, args.phase_seconds, op)
                    if run.errors:
                        raise SystemExit(f"{name} on {side}: {run.errors} errors, first {run.first_error}")
                    p50.setdefault((name, side), []).append(statistics.median(run.latencies) * 1000)
    finally:
        for http in clients.values():
            await http.aclose()
    print(f"{'operation (concurrency 1)':<26} {'before p50 ms':>14} {'after p50 ms':>13} {'after/before':>13}")
    for name in ("read Patient", "read Observation", "create Observation"):
        before = statistics.median(p50[(name, "before")])
        after = statistics.median(p50[(name, "after")])
        print(f"{name:<26} {before:>14.2f} {after:>13.2f} {after / before:>13.2f}")
    print(f"({ROUNDS} alternating rounds of {n} requests per side; each figure is the median of the rounds' p50)")


def run_before_and_after(args: argparse.Namespace) -> None:
    """Serve `args.before` (a commit) from a worktree beside this checkout's server, on databases of their own."""
    worktree = Path(tempfile.mkdtemp(prefix="qilu-bench-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree), args.before],
                   check=True)
    try:
        with BenchRun(BENCH_DB) as after, BenchRun(BEFORE_DB) as before:
            sides = {}
            for side, run, source in (("before", before, worktree), ("after", after, ROOT)):
                organization, _ = asyncio.run(set_up_people_in(run.settings, run.base + "/fhir", run.db_name))
                run.proc = start_server(run.settings, run.db_name, run.port, log_name=f"bench-fhir-api-{side}.log",
                                        log_level=args.log_level, source=source)
                sides[side] = (run.base, organization)
            print(f"before: {args.before} on {sides['before'][0]}; after: this checkout on {sides['after'][0]}; "
                  f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
            asyncio.run(compare_versions(args, sides))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)


def print_engine_commands(metrics: str) -> None:
    """Engine commands per request, by route, from the server's own count (pymongo command monitoring)."""
    sums, counts = {}, {}
    for line in metrics.splitlines():
        for suffix, into in (("_sum{", sums), ("_count{", counts)):
            if line.startswith("qilu_engine_commands_per_request" + suffix):
                labels, value = line.rsplit(" ", 1)
                into[labels.split("{", 1)[1].rstrip("}")] = float(value)
    if not counts:
        return
    print("\nengine commands per request (mean over the run; the audit insert, shared between concurrent "
          "requests, counts for the request that sent it)")
    for labels, count in sorted(counts.items()):
        if count:
            print(f"  {labels:<70} {sums.get(labels, 0) / count:5.2f}  ({count:.0f} requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="operations per (operation, path, concurrency)")
    parser.add_argument("--patients", type=int, default=50, help="patients seeded for read and search")
    parser.add_argument("--observations", type=int, default=4, help="observations seeded per patient")
    parser.add_argument("--phase-seconds", type=float, default=8.0, help="stop any one measurement after this")
    parser.add_argument("--budget-seconds", type=float, default=120.0,
                        help="all measurements together; phases shrink to fit")
    parser.add_argument("--log-level", default="INFO", help="the server's QILU_LOG_LEVEL (INFO logs every request, "
                                                            "as production does)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--before", metavar="COMMIT", help="instead of the full table: read and create of an "
                        "Observation against this checkout and COMMIT (served from a temporary worktree), "
                        "alternating, with the after/before ratio")
    args = parser.parse_args()
    args.n = max(10, min(args.n, 20000))
    if args.before:
        run_before_and_after(args)
        return

    started = time.monotonic()
    with BenchRun(BENCH_DB) as run:
        organization, practitioner = asyncio.run(set_up_people(run.settings, run.base + "/fhir"))
        proc = run.serve("bench-fhir-api-server.log", args.log_level, args.workers)
        print(f"qilu serve on 127.0.0.1:{run.port} (db {BENCH_DB}, {args.workers} worker, log {args.log_level}); "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; n={args.n}", flush=True)
        # With one worker uvicorn serves in the process it was started as; with more, its CPU is not counted.
        runs = asyncio.run(bench(args, run.settings, run.base, organization, practitioner,
                                 proc.pid if args.workers == 1 else None))
        metrics = httpx.get(run.base + "/metrics", timeout=10).text if args.workers == 1 else ""
    print_table(runs)
    print_engine_commands(metrics)
    print(f"took {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.1f} "
          "(the engines and this client share the machine: a busy machine inflates both columns)")


if __name__ == "__main__":
    main()
