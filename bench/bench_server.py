"""A live `qilu serve` on a loopback port for the benches, and the organization and people that drive it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from pymongo import MongoClient
from motor.motor_asyncio import AsyncIOMotorDatabase

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ehr.service import RecordService  # noqa: E402
from ehr.store import RecordStore  # noqa: E402
from fhir_profiles.identifiers import USCC_SYSTEM, make_uscc  # noqa: E402
from qilu.accounts import add_user  # noqa: E402
from qilu.identity import Role, User  # noqa: E402
from qilu.services import services_up  # noqa: E402
from qilu.settings import Settings  # noqa: E402

PASSWORD = "bench password 42"


def fresh_bench_database(db_name: str) -> Settings:
    """The engines up and the bench's database dropped, so every run starts from nothing."""
    settings = Settings(mongodb_db=db_name)
    services_up(settings)
    with MongoClient(settings.effective_mongodb_url) as client:
        client.drop_database(db_name)
    return settings


class BenchRun:
    """The engines up, a database of the bench's own (dropped on entry and on exit) and a loopback port for the
    `qilu serve` the bench starts with `serve`; leaving the `with` block stops that server too."""

    def __init__(self, db_name: str):
        self.db_name = db_name
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BenchRun:
        self.settings = fresh_bench_database(self.db_name)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        return self

    def serve(self, log_name: str, log_level: str = "INFO", workers: int = 1) -> subprocess.Popen:
        self.proc = start_server(self.settings, self.db_name, self.port, log_name=log_name, log_level=log_level,
                                 workers=workers)
        return self.proc

    def __exit__(self, *exc_info) -> None:
        try:
            if self.proc is not None:
                stop_server(self.proc)
        finally:
            with MongoClient(self.settings.effective_mongodb_url) as client:
                client.drop_database(self.db_name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(settings: Settings, db_name: str, port: int, *, log_name: str, log_level: str = "INFO",
                 workers: int = 1, source: Path = ROOT) -> subprocess.Popen:
    """`qilu serve` on 127.0.0.1:port against database `db_name`; returns once /healthz answers (or exits).
    `source`: the checkout whose code serves (another one: a baseline version, measured in the same run)."""
    env = {**os.environ, "QILU_MONGODB_DB": db_name, "QILU_LOG_LEVEL": log_level,
           "QILU_DATA_DIR": str(settings.path()), "PYTHONPATH": str(source)}
    log_path = settings.path("log", log_name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qilu", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", str(workers)], cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"qilu serve exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit(f"qilu serve did not answer within 30 s; see {log_path}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


async def add_organization(db: AsyncIOMotorDatabase, fhir_base: str, name: str) -> str:
    """An Organization written as the system (no caller reach); returns "Organization/{id}"."""
    records = RecordService(RecordStore(db), fhir_base)
    written, _ = await records.create("Organization", {
        "resourceType": "Organization", "name": name,
        "identifier": [{"system": USCC_SYSTEM, "value": make_uscc(uuid.uuid4().hex)}]})
    return f"Organization/{written.resource_id}"


async def add_person(db: AsyncIOMotorDatabase, fhir_base: str, role: Role, login: str, name: str,
                     organization: str | None) -> User:
    """A user with PASSWORD; a patient's `organization` becomes their managingOrganization."""
    return await add_user(db, fhir_base, role=role, login=login, password=PASSWORD, name=name,
                          organization=organization)


async def log_in(http: httpx.AsyncClient, login: str) -> dict[str, str]:
    """Log in through the API (OAuth2 password form); returns the Authorization header to send."""
    # The form's content type named outright: a client whose default is FHIR JSON would send that instead.
    response = await http.post("/api/auth/token", data={"username": login, "password": PASSWORD},
                               headers={"content-type": "application/x-www-form-urlencoded"})
    if response.status_code != 200:
        raise SystemExit(f"login of {login} refused: {response.status_code} {response.text[:200]}")
    return {"authorization": "Bearer " + response.json()["access_token"]}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (Linux /proc); NaN when it cannot be read.

    CPU time per operation is the bench's steadier figure on a shared machine: waiting for a core that
    another program holds lengthens latencies but adds no CPU time to our processes."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def engine_pid(settings: Settings) -> int | None:
    """The FerretDB process serving the bench's port, found by its command line; None for another server."""
    wanted = f"--listen-addr=127.0.0.1:{settings.ferretdb_port}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:
                continue
    return None
