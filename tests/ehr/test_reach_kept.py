"""What a process keeps for the access decision (a patient's hospital and shares, a hospital's revocations under
way) is forgotten at once when another process changes it: a share withdrawn by a worker refuses the next read
and leaves the next search, though this process had kept the share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ehr.access import Reach
from ehr.models import RecordError
from ehr.service import RecordService
from ehr.sharing import PATIENTS_REACHED, REACH_CACHES, REVOKING
from ehr.store import RecordStore
from qilu.auth import Caller
from sample_records import consent, observation, organization, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")
BASE = "http://testserver/fhir"
ROOT = Path(__file__).resolve().parents[2]

# Another process, as a worker's task: withdraws the share a referral gave, writing none of the patient's
# resources itself (the sweep would), so only the announcement and the marker stand between the hospital and them.
WITHDRAW = """
import asyncio, sys
from ehr.sharing import Sharing
from ehr.store import RecordStore
from qilu.db import connect_mongodb, database
from qilu.settings import get_settings

async def main(source, patient_ref):
    settings = get_settings()
    client = connect_mongodb(settings)
    store = RecordStore(database(client, settings))
    await Sharing(store, inline_batches=0).grant(source, patient_ref, "", "", None, None)
    client.close()

asyncio.run(main(*sys.argv[1:]))
"""


def practitioner_of(org: str) -> Caller:
    return Caller(user_id=f"u-{uuid.uuid4().hex[:6]}", role="practitioner", fhir_user=None, organization=org,
                  practitioner=None, scopes=("user/*.*",))


async def test_a_share_withdrawn_in_another_process_is_forgotten_here_at_once(app):
    for _ in range(100):
        if all(cache.listening for cache in REACH_CACHES):
            break
        await asyncio.sleep(0.05)
    assert all(cache.listening for cache in REACH_CACHES)
    db = app.state.db
    system = RecordService(RecordStore(db), BASE)
    home = "Organization/" + (await system.create("Organization", organization()))[0].resource_id
    other = "Organization/" + (await system.create("Organization", organization()))[0].resource_id
    pid = (await system.create("Patient", patient(organization=home)))[0].resource_id
    code = f"t-{uuid.uuid4().hex[:6]}"
    oid = (await system.create("Observation", observation(pid, code=code)))[0].resource_id
    consent_id = (await system.create("Consent", consent(pid)))[0].resource_id
    source = f"referral/{uuid.uuid4().hex[:8]}"
    await system.share(source, f"Patient/{pid}", other, f"Consent/{consent_id}",
                       datetime.now(UTC) - timedelta(seconds=1), None)

    def specialist() -> RecordService:
        return RecordService(RecordStore(db), BASE, Reach(practitioner_of(other), RecordStore(db)))

    async def found() -> set[str]:
        bundle = await specialist().search("Observation", [("code", code)])
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert (await specialist().read("Observation", oid))["resource"]["id"] == oid
    assert await found() == {oid}
    # This process now keeps the patient's share and the hospital's (empty) revocations.
    assert PATIENTS_REACHED.get(pid) is not None and other in {org for org, _ in PATIENTS_REACHED.get(pid).shares}
    assert REVOKING.get(other).starts == ()

    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", WITHDRAW, source, f"Patient/{pid}"],
                            cwd=ROOT, check=True, timeout=60)
    assert await db["Observation"].find_one({"_id": oid, "reach": other})  # the resource still names it
    for _ in range(40):  # the announcement travels through Redis
        if PATIENTS_REACHED.get(pid) is None and REVOKING.get(other) is None:
            break
        await asyncio.sleep(0.05)
    assert PATIENTS_REACHED.get(pid) is None and REVOKING.get(other) is None
    with pytest.raises(RecordError) as refused:
        await specialist().read("Observation", oid)
    assert refused.value.status == 404
    assert await found() == set()
