"""Consult fixtures: a real `qilu serve` on a free loopback port (its own media hub), and the people of a consult."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from consult_world import ROOT, SERVER_ENV, ConsultPeople, ConsultServer, free_port, sign_in
from qilu.accounts import add_user
from sample_records import PASSWORD


@pytest.fixture(scope="session")
def consult_server(engines, settings) -> ConsultServer:
    """`qilu serve` on the tests' database, with a short grace period and small recordings."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = settings.path("log", "test-consult-server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SERVER_ENV, "QILU_PUBLIC_BASE_URL": base}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qilu", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 40
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"qilu serve exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"qilu serve did not answer /healthz within 40 s; see {log_path}")
        time.sleep(0.1)
    yield ConsultServer(base, proc)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
async def people(app, world, consult_server) -> ConsultPeople:
    tag = uuid.uuid4().hex[:8]
    specialists = [await add_user(app.state.db, "http://testserver/fhir", role="practitioner", login=f"SPC{i}{tag}",
                                  password=PASSWORD, name=name, organization=world.elsewhere)
                   for i, name in enumerate(("李专家", "赵专家"))]
    crowd = ConsultPeople(
        host=await sign_in(consult_server, world.doctor),
        specialist=await sign_in(consult_server, specialists[0]),
        second_specialist=await sign_in(consult_server, specialists[1]),
        outsider=await sign_in(consult_server, world.doctor_elsewhere),
        patient=await sign_in(consult_server, world.patient),
        admin=await sign_in(consult_server, world.admin))
    yield crowd
    for person in (crowd.host, crowd.specialist, crowd.second_specialist, crowd.outsider, crowd.patient, crowd.admin):
        await person.http.aclose()
