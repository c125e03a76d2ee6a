"""Whether a request costs the same at 1,000 patients per hospital or 100,000: one hospital grown step by step.

The engines come up (`qilu services up`), database `qilu_bench_scale` is dropped at start and end, and a real
`qilu serve` and `qilu worker` run on loopback. A county hospital is grown to each of `--sizes` patients (about
twenty resources each, bench/scale_records.py), written as NDJSON and loaded with `qilu import` (the record's
bulk path: the load's resources per second are printed). A tertiary hospital has forty referrals from it
waiting, and a third hospital holds 1,000 patients of its own, loaded once, for the export. At each size, with a
practitioner's token, `--n` requests of each (concurrency 1), p50 and p99, and the CPU per request of the server
and of the engine:

  read Patient by id; Patient?family&given; Observation?code (the hospital's, no patient);
  Observation?subject&code; Patient/$everything; the specialist's referral inbox; and a bulk export
  (kick-off, the worker's job, every file fetched) by the third hospital's practitioner, of its 1,000 patients.

Then the ratio of the largest size to the smallest of each (flat is 1.0; the target is at most 1.5), and each
search as a multiple of the read at every size (Observation?subject&code: at most 3).

    .venv/bin/python bench/scale.py                       # 1,000 and 10,000 patients: about 15 minutes
    .venv/bin/python bench/scale.py --sizes 1000,10000,100000 --n 30   # the issue's sizes: about an hour
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from motor.motor_asyncio import AsyncIOMotorClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import (  # noqa: E402
    BenchRun, add_person, cpu_seconds, engine_pid, log_in, stop_server)
from scale_records import patient_records, write_ndjson  # noqa: E402
from timing import Run, measure  # noqa: E402

from ehr.service import RecordService  # noqa: E402
from ehr.store import RecordStore  # noqa: E402
from fhir_profiles.extensions import (  # noqa: E402
    CAPABILITY_SYSTEM, accepting_referrals_extension, division_code_extension, hospital_tier_extension,
    medical_alliance_extension, referral_capacity_extension)
from referral.directory import SPECIALTY_SYSTEM  # noqa: E402

DB = "qilu_bench_scale"
FHIR_JSON = {"accept": "application/fhir+json"}
SPECIALTY = "neurology-bench"
REFERRALS = 40
EXPORTED_PATIENTS = 1000
EXPORT_FIRST = 10_000_000  # the export hospital's patient numbers, apart from the county's
OPERATIONS = ["read Patient", "Patient?family&given", "Observation?code (hospital)", "Observation?subject&code",
              "Patient/$everything", "referral inbox", "export of 1,000 patients"]


def hospital(name: str, level: int, division: str) -> dict:
    return {"resourceType": "Organization", "name": name, "active": True,
            "extension": [hospital_tier_extension(level, "甲"), division_code_extension(division),
                          medical_alliance_extension("bench-alliance")]}


async def set_up(run: BenchRun) -> dict:
    """The three hospitals, their practitioners, the tertiary hospital's department; as the system."""
    fhir = run.base + "/fhir"
    mongo = AsyncIOMotorClient(run.settings.effective_mongodb_url, tz_aware=True)
    try:
        db = mongo[DB]
        records = RecordService(RecordStore(db), fhir)
        people = {}
        for key, (name, level, division) in {"county": ("平阴县人民医院 (bench)", 2, "370124"),
                                             "tertiary": ("山东省立医院 (bench)", 3, "370102"),
                                             "exporting": ("长清区人民医院 (bench)", 2, "370113")}.items():
            written, _ = await records.create("Organization", hospital(name, level, division))
            org = f"Organization/{written.resource_id}"
            user = await add_person(db, fhir, "practitioner", f"BENCH{key.upper()}", f"{key}医生", org)
            people[key] = {"org": org, "login": f"BENCH{key.upper()}", "practitioner": user.fhir_user}
        await records.create("HealthcareService", {
            "resourceType": "HealthcareService", "active": True, "name": "神经内科",
            "providedBy": {"reference": people["tertiary"]["org"]},
            "specialty": [{"coding": [{"system": SPECIALTY_SYSTEM, "code": SPECIALTY}]}],
            "characteristic": [{"coding": [{"system": CAPABILITY_SYSTEM, "code": "stroke-thrombolysis"}]}],
            "extension": [referral_capacity_extension(1000), accepting_referrals_extension(True)]})
    finally:
        mongo.close()
    return people


def load(run: BenchRun, first: int, end: int, organization: str, practitioner: str, label: str) -> tuple[int, float]:
    """Patients first..end-1 written as NDJSON and loaded with `qilu import`; (resources, seconds it took)."""
    path = run.settings.path("bench-scale", f"{label}-{first}-{end}.ndjson")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = write_ndjson(path, first, end, organization, practitioner)
    env = {**os.environ, "QILU_MONGODB_DB": DB, "QILU_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "qilu", "import", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    path.unlink()
    if done.returncode != 0:
        raise SystemExit(f"qilu import failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
    # The import's own time (its report's), without the command's start-up.
    reported = re.search(r"imported \d+ file\(s\) in ([0-9.]+) s", done.stdout)
    return lines, float(reported.group(1)) if reported else elapsed


async def send_referrals(http: httpx.AsyncClient, people: dict) -> None:
    """Forty referrals from the county to the tertiary hospital, each with the patient's Consent."""
    for n in range(REFERRALS):
        pid = f"sc{n}"
        consent = {"resourceType": "Consent", "status": "active",
                   "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                         "code": "patient-privacy"}]},
                   "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                   "patient": {"reference": f"Patient/{pid}"}, "dateTime": "2026-01-05T09:00:00+08:00",
                   "provision": {"type": "permit"}}
        made = await http.post("/fhir/Consent", json=consent)
        made.raise_for_status()
        body = {"patient": f"Patient/{pid}", "direction": "up", "specialty": SPECIALTY, "priority": "urgent",
                "reason": f"Condition/{pid}-c0", "consent": f"Consent/{made.json()['id']}",
                "target": people["tertiary"]["org"], "note": "bench"}
        sent = await http.post("/api/referrals", json=body, headers={"content-type": "application/json"})
        if sent.status_code not in (200, 201):
            raise SystemExit(f"referral refused: {sent.status_code} {sent.text[:300]}")


async def export_once(http: httpx.AsyncClient) -> None:
    kicked = await http.get("/fhir/Patient/$export", headers={"prefer": "respond-async"})
    if kicked.status_code != 202:
        raise RuntimeError(f"export kick-off {kicked.status_code}: {kicked.text[:200]}")
    status_url = kicked.headers["content-location"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = await http.get(status_url)
        if status.status_code == 200:
            for item in status.json()["output"]:
                (await http.get(item["url"], headers={"accept": "application/fhir+ndjson"})).raise_for_status()
            return
        if status.status_code != 202:
            raise RuntimeError(f"export status {status.status_code}: {status.text[:200]}")
        await asyncio.sleep(0.2)
    raise RuntimeError("the export did not finish within 10 minutes")


async def measure_size(run: BenchRun, people: dict, size: int, n: int, server_pid: int | None,
                       worker_pid: int | None, budget: float) -> list[Run]:
    rng = random.Random(size)
    engine = engine_pid(run.settings)
    runs = []
    limits = httpx.Limits(max_connections=4)
    async with httpx.AsyncClient(base_url=run.base, headers=FHIR_JSON, timeout=120, limits=limits) as county, \
            httpx.AsyncClient(base_url=run.base, headers=FHIR_JSON, timeout=120, limits=limits) as specialist, \
            httpx.AsyncClient(base_url=run.base, headers=FHIR_JSON, timeout=600, limits=limits) as exporter:
        county.headers.update(await log_in(county, people["county"]["login"]))
        specialist.headers.update(await log_in(specialist, people["tertiary"]["login"]))
        exporter.headers.update(await log_in(exporter, people["exporting"]["login"]))
        picks = [rng.randrange(size) for _ in range(n)]
        names = {}
        for k in set(picks):
            patient = patient_records(k, "", "")[0]
            names[k] = (patient["name"][0]["family"], patient["name"][0]["given"][0])

        async def get(client: httpx.AsyncClient, path: str, params=None) -> None:
            response = await client.get(path, params=params)
            if response.status_code != 200:
                raise RuntimeError(f"{path} -> {response.status_code}: {response.text[:200]}")

        ops = {
            "read Patient": lambda i: get(county, f"/fhir/Patient/sc{picks[i]}"),
            "Patient?family&given": lambda i: get(county, "/fhir/Patient", {
                "family": names[picks[i]][0], "given": names[picks[i]][1]}),
            "Observation?code (hospital)": lambda i: get(county, "/fhir/Observation", {
                "code": "http://loinc.org|" + ("8480-6", "8867-4", "2339-0")[i % 3], "_count": "20"}),
            "Observation?subject&code": lambda i: get(county, "/fhir/Observation", {
                "subject": f"Patient/sc{picks[i]}", "code": "http://loinc.org|8480-6"}),
            "Patient/$everything": lambda i: get(county, f"/fhir/Patient/sc{picks[i]}/$everything"),
            "referral inbox": lambda i: get(specialist, "/api/referrals", {"box": "inbox"}),
            "export of 1,000 patients": lambda i: export_once(exporter),
        }
        for name in OPERATIONS:
            count = max(3, n // 10) if name.startswith("export") else n
            processes = {"server": server_pid, "engine": engine}
            if name.startswith("export"):
                processes["worker"] = worker_pid
            before = {key: cpu_seconds(pid) for key, pid in processes.items()}
            result = await measure(name, str(size), 1, count, budget, ops[name])
            done = max(1, len(result.latencies))
            result.cpu_ms = {key: (cpu_seconds(pid) - before[key]) * 1000 / done for key, pid in processes.items()}
            if result.errors:
                print(f"  {name}: {result.errors} errors, first: {result.first_error}", file=sys.stderr)
            runs.append(result)
    return runs


def print_results(by_size: dict[int, list[Run]], loads: dict[int, tuple[int, float]]) -> None:
    sizes = sorted(by_size)
    print("\nloading through the bulk path (qilu import):")
    for size in sizes:
        lines, seconds = loads[size]
        print(f"  to {size:>7,} patients: {lines:>9,} resources in {seconds:7.1f} s = {lines / seconds:6.0f} resources/s")
    print(f"\n{'request':30} {'patients':>9} {'p50 ms':>9} {'p99 ms':>9} {'server':>8} {'engine':>8}  (CPU ms per request)")
    for index, name in enumerate(OPERATIONS):
        for size in sizes:
            run = by_size[size][index]
            cpu = run.cpu_ms
            print(f"{name:30} {size:>9,} {run.p(0.5):9.1f} {run.p(0.99):9.1f} {cpu.get('server', 0):8.2f} "
                  f"{cpu.get('engine', 0):8.2f}" + (f"  worker {cpu['worker']:.0f}" if "worker" in cpu else ""))
    smallest, largest = sizes[0], sizes[-1]
    print(f"\nlargest over smallest ({largest:,} / {smallest:,} patients), p50; target at most 1.5:")
    for index, name in enumerate(OPERATIONS):
        ratio = by_size[largest][index].p(0.5) / by_size[smallest][index].p(0.5)
        print(f"  {name:30} {ratio:5.2f}{'' if ratio <= 1.5 else '  over'}")
    print("\neach search as a multiple of a read by id, p50 (Observation?subject&code: target at most 3):")
    for size in sizes:
        read = by_size[size][0].p(0.5)
        cells = ", ".join(f"{name} {by_size[size][i].p(0.5) / read:.1f}" for i, name in enumerate(OPERATIONS)
                          if 0 < i < 5)
        print(f"  {size:>7,}: {cells}")


async def grow_and_measure(args: argparse.Namespace) -> None:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with BenchRun(DB) as run:
        server = run.serve("bench-scale-server.log", log_level="WARNING")
        env = {**os.environ, "QILU_MONGODB_DB": DB, "QILU_LOG_LEVEL": "WARNING"}
        log_path = run.settings.path("log", "bench-scale-worker.log")
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "qilu", "worker", "--concurrency", "1"], cwd=ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            people = await set_up(run)
            lines, seconds = load(run, EXPORT_FIRST, EXPORT_FIRST + EXPORTED_PATIENTS, people["exporting"]["org"],
                                  people["exporting"]["practitioner"], "exporting")
            print(f"the exporting hospital's {EXPORTED_PATIENTS:,} patients: {lines:,} resources in {seconds:.1f} s")
            loads, by_size, grown = {}, {}, 0
            for size in sizes:
                loads[size] = load(run, grown, size, people["county"]["org"], people["county"]["practitioner"],
                                   "county")
                grown = size
                print(f"county hospital at {size:,} patients: loaded {loads[size][0]:,} resources in "
                      f"{loads[size][1]:.1f} s", flush=True)
                if size == sizes[0]:
                    async with httpx.AsyncClient(base_url=run.base, headers=FHIR_JSON, timeout=60) as county:
                        county.headers.update(await log_in(county, people["county"]["login"]))
                        await send_referrals(county, people)
                by_size[size] = await measure_size(run, people, size, args.n, server.pid, worker.pid,
                                                   args.budget_seconds)
                # The tables so far, at every size: a run of hours stopped early keeps what it measured.
                print_results(by_size, loads)
                sys.stdout.flush()
        finally:
            stop_server(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="patients of the county hospital at each step")
    parser.add_argument("--n", type=int, default=30, help="requests of each kind at each size")
    parser.add_argument("--budget-seconds", type=float, default=120, help="time limit of each measurement")
    args = parser.parse_args()
    asyncio.run(grow_and_measure(args))


if __name__ == "__main__":
    main()
