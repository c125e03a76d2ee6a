"""Shared fixtures: the real engines (FerretDB, Redis) brought up once, the live app, a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests get a database and a Redis database of their own, so a demo on the same engines is left alone.
os.environ.setdefault("QILU_MONGODB_DB", "qilu_test")
os.environ.setdefault("QILU_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("QILU_DATA_DIR", str(ROOT / "var"))
os.environ.setdefault("QILU_LOG_FORMAT", "console")
os.environ.setdefault("QILU_LOG_LEVEL", "WARNING")
# A test session outlives the default 15-minute access token.
os.environ.setdefault("QILU_ACCESS_TOKEN_TTL_S", "7200")
# Referral deadlines on a test clock, for the worker too: a stat referral waits 3 s for acceptance, and beat
# sweeps deadlines and the outbox every second. Only stat is shortened; the other tests use other urgencies.
os.environ.setdefault("QILU_ACCEPT_MINUTES_STAT", "0.05")
os.environ.setdefault("QILU_DEADLINE_SWEEP_S", "1")
os.environ.setdefault("QILU_OUTBOX_SWEEP_S", "1")
# The access matrices are refused thousands of times by design; the test of the burst limit sets its own.
os.environ.setdefault("QILU_DENIAL_BURST", "1000000")

import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import httpx  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from ehr.service import RecordService  # noqa: E402
from ehr.store import RecordStore  # noqa: E402
from qilu.accounts import add_user  # noqa: E402
from qilu.app import create_app  # noqa: E402
from qilu.identity import User  # noqa: E402
from logins import login  # noqa: E402
from sample_records import PASSWORD, new_national_id, organization  # noqa: E402
from qilu.services import services_up  # noqa: E402
from qilu.settings import Settings, get_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session", autouse=True)
def engines(settings: Settings):
    """FerretDB and Redis, started for real when they are not running (idempotent)."""
    services_up(settings)
    with MongoClient(settings.effective_mongodb_url) as client:
        client.drop_database(settings.mongodb_db)
    yield settings


@pytest.fixture(scope="session")
async def app(settings: Settings):
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass
class World:
    """Two county hospitals and the people of the tests: doctors at each, an administrator, two patients."""

    home: str  # "Organization/.." the main doctor works at and whose patients the tests create
    elsewhere: str
    doctor: User
    doctor_elsewhere: User
    admin: User
    patient: User  # managed by `home`
    patient_elsewhere: User


@pytest.fixture(scope="session")
async def world(app) -> World:
    records = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    orgs = []
    for _ in range(2):
        written, _ = await records.create("Organization", organization())
        orgs.append(f"Organization/{written.resource_id}")
    tag = uuid.uuid4().hex[:8]

    async def person(role: str, login: str, name: str, org: str | None) -> User:
        return await add_user(app.state.db, "http://testserver/fhir", role=role, login=login, password=PASSWORD,
                              name=name, organization=org)

    return World(
        home=orgs[0], elsewhere=orgs[1],
        doctor=await person("practitioner", f"DOC{tag}", "张医生", orgs[0]),
        doctor_elsewhere=await person("practitioner", f"OTH{tag}", "陈医生", orgs[1]),
        admin=await person("admin", f"admin{tag}", "管理员", None),
        patient=await person("patient", new_national_id(), "刘芳", orgs[0]),
        patient_elsewhere=await person("patient", new_national_id(), "孙强", orgs[1]),
    )


@pytest.fixture(scope="session")
async def doctor_client(app, world) -> httpx.AsyncClient:
    # login() has used the client already, so it cannot be entered again with `async with`.
    http = await login(app, world.doctor)
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture(scope="session")
async def admin_client(app, world) -> httpx.AsyncClient:
    # login() has used the client already, so it cannot be entered again with `async with`.
    http = await login(app, world.admin)
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture(scope="session")
def celery_worker(settings: Settings):
    """A real `qilu worker` process on the real Redis, stopped at the end of the session."""
    log_path = settings.path("log", "test-worker.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qilu", "worker", "--concurrency", "1"], cwd=ROOT,
                                env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    from workers.celery_app import app as celery_app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}; see {log_path}")
        if celery_app.control.ping(timeout=0.5):
            break
    else:
        proc.terminate()
        raise RuntimeError(f"the worker did not answer within 60 s; see {log_path}")
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
