"""What verifying an e-health card QR token costs through the API, beside a bare JWS verify of the same tokens.

Creates an Organization, a practitioner there and a patient it manages (plus `--cards` other patients with
cards) in database `qilu_bench_cards` (dropped at start and end), starts `qilu serve` on a loopback port, has
the patient issue a card (`POST /api/cards`) and fetch fresh QR tokens (`GET /api/cards/{id}/qr`, JSON; not
timed), then has the practitioner verify each token once (`POST /api/cards/verify`) at concurrency 1 and 16.
In the same run, on the same tokens: a bare joserfc compact-JWS verify with the card key taken from
`/.well-known/jwks.json`, and that verify plus one Redis SET NX as the replay guard makes. Prints ops/s,
p50/p99 and the ratios. Bounded in count and time; stops by itself (well under 2 minutes by default).

    .venv/bin/python bench/cards.py [--n 200] [--cards 50] [--phase-seconds 15] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from joserfc import jws
from joserfc.jwk import ECKey, KeySet
from motor.motor_asyncio import AsyncIOMotorClient
from redis import asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_server import BenchRun, add_organization, add_person, log_in  # noqa: E402
from timing import Run, measure, settle  # noqa: E402

from ehr.service import RecordService  # noqa: E402
from ehr.store import RecordStore  # noqa: E402
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, make_national_id  # noqa: E402
from qilu.settings import Settings  # noqa: E402

BENCH_DB = "qilu_bench_cards"
CONCURRENCY = (1, 16)
PRACTITIONER_LOGIN = "BENCHCARD01"
PATIENT_NAME = "王卡测"
TOKEN_LIFETIME_S = 60  # ehr.cards.QR_TOKEN_TTL_S: every token must be verified within this of its fetch
FETCH_CONCURRENCY = 8
API = "POST /api/cards/verify"
BARE = "bare JWS verify (joserfc)"
BARE_NX = "bare verify + Redis SET NX"
FLOORS = ("GET /healthz (HTTP floor)", "GET /api/me (HTTP + token)")


@dataclass
class Resident:
    patient: str  # "Patient/{id}"
    national_id: str
    name: str


@dataclass
class People:
    organization: str
    practitioner_login: str
    holder: Resident  # the patient whose card is scanned
    others: list[Resident]  # further card holders, so the card lookup is not of a one-card collection


def resident_patient(national_id: str, name: str, organization: str) -> dict:
    birth = dt.datetime.strptime(national_id[6:14], "%Y%m%d").date()
    return {"resourceType": "Patient", "active": True,
            "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": national_id}],
            "name": [{"use": "official", "text": name, "family": name[:1], "given": [name[1:]]}],
            "gender": "male" if int(national_id[16]) % 2 else "female", "birthDate": birth.isoformat(),
            "managingOrganization": {"reference": organization}}


async def set_up_people(settings: Settings, fhir_base: str, other_cards: int) -> People:
    """Written before the server starts, as the system: the hospital, its practitioner, its patients."""
    numbers = [make_national_id("370102", dt.date(1950, 1, 1) + dt.timedelta(days=i), 7, "female")
               for i in range(other_cards + 1)]
    mongo = AsyncIOMotorClient(settings.effective_mongodb_url, tz_aware=True, uuidRepresentation="standard")
    try:
        db = mongo[BENCH_DB]
        organization = await add_organization(db, fhir_base, "历下区人民医院 (card bench)")
        await add_person(db, fhir_base, "practitioner", PRACTITIONER_LOGIN, "李挂号", organization)
        # The patient's login is their national ID number; their Patient is managed by the organization.
        user = await add_person(db, fhir_base, "patient", numbers[0], PATIENT_NAME, organization)
        records = RecordService(RecordStore(db), fhir_base)
        others = []
        for i, number in enumerate(numbers[1:]):
            name = f"张{chr(0x4E00 + i)}"
            written, _ = await records.create("Patient", resident_patient(number, name, organization))
            others.append(Resident(f"Patient/{written.resource_id}", number, name))
    finally:
        mongo.close()
    return People(organization, PRACTITIONER_LOGIN, Resident(user.fhir_user, numbers[0], PATIENT_NAME), others)


def expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
                           f"{response.text[:200]}")
    return response


async def bench(args: argparse.Namespace, settings: Settings, base: str, people: People) -> list[Run]:
    runs: list[Run] = []
    redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        as_holder = await log_in(http, people.holder.national_id)
        as_scanner = await log_in(http, people.practitioner_login)

        # --- the cards (not timed): the holder's own, and the others issued by the hospital's registrar ---
        card = expect(await http.post("/api/cards", headers=as_holder, json={
            "patient": people.holder.patient, "national_id": people.holder.national_id,
            "name": people.holder.name}), 201).json()
        sem = asyncio.Semaphore(4)

        async def issue_other(resident: Resident) -> None:
            async with sem:
                expect(await http.post("/api/cards", headers=as_scanner, json={
                    "patient": resident.patient, "national_id": resident.national_id, "name": resident.name}), 201)

        try:
            await asyncio.wait_for(asyncio.gather(*(issue_other(r) for r in people.others)), 30)
        except TimeoutError:
            print("issuing the other cards stopped after 30 s", file=sys.stderr)

        # --- the card key, as any hospital gets it: from the public JWKS ---------------------------------
        key_set = KeySet.import_key_set(expect(await http.get("/.well-known/jwks.json"), 200).json())

        async def fresh_tokens(count: int) -> list[str]:
            fetch_sem = asyncio.Semaphore(FETCH_CONCURRENCY)

            async def one() -> str:
                async with fetch_sem:
                    response = await http.get(f"/api/cards/{card['id']}/qr",
                                              headers={**as_holder, "accept": "application/json"})
                    return expect(response, 200).json()["token"]
            return await asyncio.gather(*(one() for _ in range(count)))

        probe = (await fresh_tokens(1))[0]
        card_key = key_set.get_by_kid(jws.extract_compact(probe.encode()).protected["kid"])
        assert isinstance(card_key, ECKey)

        def bare_verify(token: str) -> dict:
            """What an offline scanner does: signature against the JWKS key, then the payload and its expiry."""
            payload = json.loads(jws.deserialize_compact(token, card_key, algorithms=["ES256"]).payload)
            if payload["exp"] <= time.time():
                raise RuntimeError("token expired before it was verified")
            return payload

        async def me_latency() -> float:
            """The median of a few token-checked round trips: what the server answers in when it is idle."""
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                expect(await http.get("/api/me", headers=as_scanner), 200)
                samples.append(time.perf_counter() - started)
            return sorted(samples)[2]

        quiet: float | None = None
        for concurrency in CONCURRENCY:
            fetched_at = time.monotonic()
            tokens = await fresh_tokens(args.n + args.warmup)
            warm, tokens = tokens[:args.warmup], tokens[args.warmup:]
            if time.monotonic() - fetched_at > TOKEN_LIFETIME_S / 3:
                raise SystemExit(f"fetching {args.n} tokens took {time.monotonic() - fetched_at:.0f} s; "
                                 "lower --n so they are verified before they expire")
            prefix = f"qilu:bench:card-nonce:{uuid.uuid4().hex}:"

            async def api_verify(i: int, pool: list[str] = tokens) -> None:
                body = expect(await http.post("/api/cards/verify", headers=as_scanner, json={"token": pool[i]}),
                              200).json()
                if body["card"]["id"] != card["id"]:
                    raise RuntimeError(f"verified the wrong card: {body['card']}")

            async def bare(i: int) -> None:
                bare_verify(tokens[i])

            async def bare_nx(i: int) -> None:
                payload = bare_verify(tokens[i])
                remaining = payload["exp"] - int(time.time())
                # Own key prefix: the server's replay guard has these nonces already (or will).
                if not await redis.set(prefix + payload["nonce"], "1", nx=True, ex=remaining + 5):
                    raise RuntimeError("nonce seen twice")

            async def healthz(i: int) -> None:
                expect(await http.get("/healthz"), 200)

            async def me(i: int) -> None:
                expect(await http.get("/api/me", headers=as_scanner), 200)

            for i in range(len(warm)):  # connections, caches, the server's first-call paths
                await api_verify(i, warm)
                await healthz(i)
                await me(i)
                bare_verify(warm[i])
            if quiet is None:
                quiet = await me_latency()
            # The bare verifies first (a second or two), then the API on the same tokens while they are fresh;
            # the HTTP floors last, after the server has worked off what a cut-off phase left in flight.
            for name, path, op, on_tokens in ((BARE, "bare", bare, True), (BARE_NX, "bare", bare_nx, True),
                                              (API, "api", api_verify, True), (FLOORS[0], "api", healthz, False),
                                              (FLOORS[1], "api", me, False)):
                left = TOKEN_LIFETIME_S - 5 - (time.monotonic() - fetched_at)
                seconds = max(1.0, min(args.phase_seconds, left)) if on_tokens else args.phase_seconds
                run = await measure(name, path, concurrency, args.n, seconds, op)
                runs.append(run)
                if run.unfinished:
                    await settle(me_latency, quiet, 20.0, pause=0.2)
                print(f"  done: {name} at concurrency {concurrency}", file=sys.stderr, flush=True)
    await redis.aclose()
    return runs


def _cell(value: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:>{width}.{digits}f}"  # NaN -> "-"


def print_table(runs: list[Run]) -> None:
    by_key = {(r.operation, r.concurrency): r for r in runs}
    header = (f"{'operation':<28}{'c':>3} | {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'done':>5} | "
              f"{'vs bare: p50 x':>14} {'p99 x':>6} {'ops/s x':>7} | {'vs +SET NX: p50 x':>17} {'p99 x':>6} "
              f"{'ops/s x':>7}")
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for concurrency in CONCURRENCY:
        bases = [by_key.get((BARE, concurrency)), by_key.get((BARE_NX, concurrency))]
        for name in (API, BARE, BARE_NX, *FLOORS):
            run = by_key.get((name, concurrency))
            if run is None:
                continue
            tput = run.throughput if run.latencies else nan
            line = (f"{name:<28}{concurrency:>3} | {_cell(tput, 7, 0)} {_cell(run.p(0.5), 7, 2)} "
                    f"{_cell(run.p(0.99), 7, 2)} {len(run.latencies):>5} |")
            for widths, baseline in zip(((14, 6, 7), (17, 6, 7)), bases, strict=True):
                if baseline is None or not baseline.latencies:
                    ratios = (nan, nan, nan)
                else:
                    ratios = (run.p(0.5) / baseline.p(0.5), run.p(0.99) / baseline.p(0.99),
                              baseline.throughput / tput)
                line += " " + " ".join(_cell(v, w, 1) for v, w in zip(ratios, widths, strict=True)) + " |"
            print(line.rstrip(" |"))
    print("p50 x, p99 x = this row's latency / the baseline's;  ops/s x = baseline ops/s / this row's: how many\n"
          "times dearer than the baseline. Baselines at the same concurrency, on the same tokens, in this run.\n"
          "The API verify also checks the caller's token, looks the card up, reads the Patient and appends one\n"
          "AuditEvent; the bare verify is CPU-bound in this one process, so concurrency does not help it.")
    for run in runs:
        if run.errors or run.unfinished:
            label = "ERRORS" if run.errors else "cut off"
            print(f"{label} {run.operation} (c={run.concurrency}): {run.errors} failed, {run.unfinished} still in "
                  "flight when its time was up" + (f"; first failure: {run.first_error}" if run.errors else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="tokens verified per (operation, concurrency)")
    parser.add_argument("--cards", type=int, default=50, help="other patients with a card in the database")
    parser.add_argument("--warmup", type=int, default=5, help="untimed verifies before each concurrency")
    parser.add_argument("--phase-seconds", type=float, default=15.0,
                        help="stop any one measurement after this (capped by the 60 s token lifetime)")
    parser.add_argument("--log-level", default="INFO", help="the server's QILU_LOG_LEVEL (INFO logs every request, "
                                                            "as production does)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    args.n = max(10, min(args.n, 2000))
    args.cards = max(0, min(args.cards, 2000))
    args.warmup = max(1, min(args.warmup, 50))

    started = time.monotonic()
    with BenchRun(BENCH_DB) as run:
        people = asyncio.run(set_up_people(run.settings, run.base + "/fhir", args.cards))
        run.serve("bench-cards-server.log", args.log_level, args.workers)
        print(f"qilu serve on 127.0.0.1:{run.port} (db {BENCH_DB}, {args.workers} worker, log {args.log_level}); "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; n={args.n}, "
              f"{args.cards + 1} cards", flush=True)
        runs = asyncio.run(bench(args, run.settings, run.base, people))
    print_table(runs)
    print(f"took {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.1f} "
          "(server, engines and this client share the machine)")


if __name__ == "__main__":
    main()
