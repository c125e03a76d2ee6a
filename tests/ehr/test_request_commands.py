"""How many engine commands one request sends (pymongo's command monitoring, per request): the user check and
the access decision are answered from what the process keeps (forgotten when a change is announced), so they
and the audit record add one command to the work itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehr.service import RecordService
from ehr.sharing import REACH_CACHES
from ehr.store import RecordStore

from sample_records import create, observation, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]

# Most commands each request may send, as the managing hospital's practitioner, with what the process keeps
# warm (the user, the patient's hospital and shares, the hospital's revocations under way): the work, and the
# audit insert.
LIMITS = {
    "read Patient": 2,             # the document; the audit insert
    "read Observation": 2,         # the document; the audit insert
    "create Observation": 3,       # the history entry; the document; the audit insert
    "search Observation by patient and code": 2,  # the page; the audit insert
    "search Observation by code": 3,  # the page; its total, counted up to a bound; the audit insert
}


def _commands(app, method: str, route: str) -> float:
    value = app.state.metrics.registry.get_sample_value("qilu_engine_commands_per_request_sum",
                                                        {"method": method, "route": route})
    return value or 0.0


async def test_each_request_sends_a_bounded_number_of_engine_commands(app, world, doctor_client):
    for _ in range(100):  # the app hears of changes once it has subscribed; until then nothing is kept
        if all(cache.listening for cache in REACH_CACHES):
            break
        await asyncio.sleep(0.05)
    pid = (await create(doctor_client, patient(organization=world.home)))["id"]
    oid = (await create(doctor_client, observation(pid, code="8867-4")))["id"]
    code = f"t-{pid[:8]}"  # three matches in the hospital, so a page of two has a next page and a total to count
    for _ in range(3):
        await create(doctor_client, observation(pid, code=code))
    await doctor_client.get(f"/fhir/Patient/{pid}")  # the user check is now warm
    await doctor_client.get("/fhir/Observation", params={"code": code})  # and the hospital's revocations

    async def count(method: str, route: str, path: str, **kwargs) -> float:
        before = _commands(app, method, route)
        response = await doctor_client.request(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return _commands(app, method, route) - before

    instance, type_route = "/fhir/{resource_type}/{resource_id}", "/fhir/{resource_type}"
    sent = {
        "read Patient": await count("GET", instance, f"/fhir/Patient/{pid}"),
        "read Observation": await count("GET", instance, f"/fhir/Observation/{oid}"),
        "create Observation": await count("POST", type_route, "/fhir/Observation",
                                          json=observation(pid), headers={"Content-Type": "application/fhir+json"}),
        "search Observation by patient and code": await count(
            "GET", type_route, "/fhir/Observation", params={"patient": pid, "code": "http://loinc.org|8867-4"}),
        "search Observation by code": await count("GET", type_route, "/fhir/Observation",
                                                  params={"code": code, "_count": "2"}),
    }
    print("\nengine commands per request:", sent)
    over = {name: (n, LIMITS[name]) for name, n in sent.items() if n > LIMITS[name]}
    assert not over, over
    assert all(n >= 1 for n in sent.values()), sent  # the count is real: every request did some work


# A process that does not hear of changes (Redis away, a script): it keeps nothing, so only the request itself
# can spare the second look at the patient, between the decision to write and the reach of what is written.
CREATE_UNHEARD = """
import asyncio, sys
from pymongo import monitoring
from ehr.access import Reach
from ehr.service import RecordService
from ehr.sharing import PATIENTS_REACHED
from ehr.store import RecordStore
from qilu.auth import Caller
from qilu.db import connect_mongodb, database
from qilu.settings import get_settings
from sample_records import observation

class Finds(monitoring.CommandListener):
    looks = []
    def started(self, event):
        if event.command_name == "find" and event.command["find"] in ("Patient", "patient_reach"):
            self.looks.append(event.command["find"])
    def succeeded(self, event): pass
    def failed(self, event): pass

async def main(organization, patient_id):
    settings = get_settings()
    monitoring.register(Finds())
    client = connect_mongodb(settings)
    assert not PATIENTS_REACHED.listening
    store = RecordStore(database(client, settings))
    caller = Caller(user_id="unheard", role="practitioner", fhir_user=None, organization=organization,
                    practitioner=None, scopes=("user/*.*",))
    records = RecordService(store, "http://testserver/fhir", Reach(caller, store))
    written, _ = await records.create("Observation", observation(patient_id))
    print(written.resource_id, ",".join(Finds.looks))
    client.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_create_looks_at_its_patient_once_where_nothing_is_kept(app, world):
    system = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    pid = (await system.create("Patient", patient(organization=world.home)))[0].resource_id
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", CREATE_UNHEARD, world.home, pid], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    oid, looks = done.stdout.split()
    assert sorted(looks.split(",")) == ["Patient", "patient_reach"], looks  # one look (two finds at once), not two
    stored = await app.state.db["Observation"].find_one({"_id": oid})
    assert stored["reach"] == [world.home]
