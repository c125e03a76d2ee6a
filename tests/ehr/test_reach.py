"""Reach as data: every document of a patient's record names the hospitals it reaches, on every write path, and a
share, a revocation, an expiry and a transfer reach all of them, in batches, resumably; a revocation is in force at
once, before the last batch is written."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ehr.access import Reach
from ehr.models import RecordError
from ehr.service import RecordService
from ehr.sharing import STEPS, Sharing
from ehr.store import ABANDONED_WRITE_AFTER, HISTORY, RecordStore
from qilu.auth import Caller
from sample_records import consent, observation, organization, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")
BASE = "http://testserver/fhir"


def practitioner_of(org: str) -> Caller:
    return Caller(user_id=f"u-{uuid.uuid4().hex[:6]}", role="practitioner", fhir_user=None, organization=org,
                  practitioner=None, scopes=("user/*.*",))


class Ward:
    """Two hospitals' practitioners over one store, and the system's record."""

    def __init__(self, db, system: RecordService, home: str, other: str):
        self.db, self.system, self.home, self.other = db, system, home, other
        self.store = system.store

    def as_practitioner(self, org: str) -> RecordService:
        return RecordService(RecordStore(self.db), BASE, Reach(practitioner_of(org), RecordStore(self.db)))

    async def documents_of(self, patient_id: str) -> list[dict[str, Any]]:
        """Every current document and history entry of the patient's record, with its reach."""
        found = []
        for resource_type, history in STEPS:
            query: dict[str, Any] = {"compartment": f"Patient/{patient_id}"}
            collection = self.db[HISTORY] if history else self.db[resource_type]
            if history:
                query["type"] = resource_type
            found += await collection.find(query, projection={"reach": 1}).to_list(None)
        return found

    async def reaching(self, patient_id: str, org: str) -> int:
        return sum(org in (d.get("reach") or []) for d in await self.documents_of(patient_id))

    async def searched(self, org: str, resource_type: str, params: list[tuple[str, str]]) -> set[str]:
        bundle = await self.as_practitioner(org).search(resource_type, params)
        return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


@pytest.fixture
async def ward(app):
    db = app.state.db
    system = RecordService(RecordStore(db), BASE)
    home = (await system.create("Organization", organization()))[0].resource_id
    other = (await system.create("Organization", organization()))[0].resource_id
    return Ward(db, system, f"Organization/{home}", f"Organization/{other}")


async def _patient_with(ward: Ward, observations: int, code: str) -> tuple[str, list[str]]:
    pid = (await ward.system.create("Patient", patient(organization=ward.home)))[0].resource_id
    made = [(await ward.system.create("Observation", observation(pid, code=code)))[0].resource_id
            for _ in range(observations)]
    return pid, made


async def _share(ward: Ward, pid: str, until: datetime | None = None) -> str:
    consent_id = (await ward.system.create("Consent", consent(pid)))[0].resource_id
    await ward.system.share(f"referral/{uuid.uuid4().hex[:8]}", f"Patient/{pid}", ward.other,
                            f"Consent/{consent_id}", datetime.now(UTC) - timedelta(seconds=1), until)
    return consent_id


async def test_every_write_path_gives_its_documents_their_reach(ward):
    """Create, update, delete, a transaction Bundle and a conditional create all write `reach` on the current
    document and the history entry: the patient's hospital, and the shared one once shared."""
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, (first,) = await _patient_with(ward, 1, code)
    current = (await ward.system.read("Observation", first))["resource"]
    await ward.system.update("Observation", first, {**current, "status": "amended"})
    second = (await ward.system.create("Observation", observation(pid, code=code)))[0].resource_id
    await ward.system.delete("Observation", second)
    bundle = await ward.system.process_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(pid, code=code), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(pid, code=code), "request": {"method": "POST", "url": "Observation",
                                                              "ifNoneExist": f"code={code}-absent"}}]})
    assert [e["response"]["status"][:3] for e in bundle["entry"]] == ["201", "201"]
    documents = await ward.documents_of(pid)
    # The patient (document, entry), first (document, 2 entries), second (tombstone, 2), the Bundle 2 × (1, 1).
    assert len(documents) == 2 + 3 + 3 + 4
    assert all(d["reach"] == [ward.home] for d in documents), documents
    await _share(ward, pid)
    documents = await ward.documents_of(pid)
    assert [d for d in documents if d["reach"] != sorted([ward.home, ward.other])] == []
    # A resource written while shared reaches both at once.
    late = (await ward.system.create("Observation", observation(pid, code=code)))[0].resource_id
    assert (await ward.db["Observation"].find_one({"_id": late}))["reach"] == sorted([ward.home, ward.other])
    assert late in await ward.searched(ward.other, "Observation", [("code", code)])


async def test_a_revocation_refuses_at_once_while_the_record_is_still_being_written(ward):
    """The patient revokes the Consent; the request writes one small batch, so most of the record still names the
    shared hospital. That hospital already finds nothing, reads nothing; the worker's sweep writes the rest and
    lifts the marker only after a write that began before could have ended."""
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, made = await _patient_with(ward, 12, code)
    consent_id = await _share(ward, pid)
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set(made)
    assert await ward.reaching(pid, ward.other) == len(await ward.documents_of(pid))
    ward.system.sharing = Sharing(ward.store, batch=3, inline_batches=1)
    current = (await ward.system.read("Consent", consent_id))["resource"]
    await ward.system.update("Consent", consent_id, {**current, "status": "inactive"})
    left = await ward.reaching(pid, ward.other)
    assert left > 10, "the test means to catch the record half-written"
    specialist = ward.as_practitioner(ward.other)
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set()
    assert await ward.searched(ward.other, "Patient", [("_id", pid)]) == set()
    history = await specialist.history("Observation", None, [])
    assert not {e["resource"]["id"] for e in history.get("entry", []) if e.get("resource")} & set(made)
    with pytest.raises(RecordError) as refused:
        await specialist.read("Observation", made[0])
    assert refused.value.status == 404
    # The managing hospital is untouched.
    assert await ward.searched(ward.home, "Observation", [("code", code)]) == set(made)
    now = datetime.now(UTC)
    worker = Sharing(ward.store, clock=lambda: now, batch=3)
    done = await worker.sweep()
    assert done["spread"] >= 1 and await ward.reaching(pid, ward.other) == 0
    assert pid in await worker.revoking_for(ward.other)  # not yet settled
    later = Sharing(ward.store, clock=lambda: now + ABANDONED_WRITE_AFTER + timedelta(seconds=1))
    assert (await later.sweep())["settled"] >= 1
    assert pid not in await later.revoking_for(ward.other)
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set()


async def test_writing_a_reach_is_resumable_and_idempotent(ward):
    """A run stopped after each batch takes up where it stopped; running it again changes nothing."""
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, made = await _patient_with(ward, 9, code)
    sharing = Sharing(ward.store, batch=2, inline_batches=0)
    ward.system.sharing = sharing
    await _share(ward, pid)
    assert await ward.reaching(pid, ward.other) == 0  # nothing written by the request
    runs = 1
    while not await sharing.spread(pid, max_batches=1):
        runs += 1
        reach = (await ward.store.patient_reaches([pid]))[0]
        assert reach["pending"] and reach["cursor"]["step"] < len(STEPS)
    assert runs > 5
    assert await ward.reaching(pid, ward.other) == len(await ward.documents_of(pid))
    before = await ward.documents_of(pid)
    await sharing.refresh(pid)  # nothing changed: a no-op
    assert await sharing.spread(pid) and await ward.documents_of(pid) == before
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set(made)


async def _found(records: RecordService, resource_type: str, params: list[tuple[str, str]]) -> set[str]:
    bundle = await records.search(resource_type, params)
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


async def test_a_share_that_ends_by_the_clock_ends_for_reads_and_searches_at_that_moment(ward):
    """Before the sweep has written anything: the share's end is a marker written ahead, in force from then."""
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, made = await _patient_with(ward, 2, code)
    ends = datetime.now(UTC) + timedelta(minutes=5)
    await _share(ward, pid, until=ends)
    specialist = ward.as_practitioner(ward.other)
    assert (await specialist.read("Observation", made[0]))["resource"]["id"] == made[0]
    assert await _found(specialist, "Observation", [("code", code)]) == set(made)
    after = ends + timedelta(seconds=1)
    specialist.reach.sharing.clock = lambda: after  # the specialist reads after the share's end
    assert await specialist.reach.readable_among({pid}) == set()
    assert await ward.reaching(pid, ward.other) == len(await ward.documents_of(pid)), "nothing written yet"
    assert await _found(specialist, "Observation", [("code", code)]) == set()
    assert await _found(specialist, "Patient", [("_id", pid)]) == set()
    # The managing hospital is not kept out.
    home = ward.as_practitioner(ward.home)
    home.reach.sharing.clock = lambda: after
    assert await _found(home, "Observation", [("code", code)]) == set(made)
    done = await Sharing(ward.store, clock=lambda: after).sweep()
    assert done["expired"] >= 1
    assert await ward.reaching(pid, ward.other) == 0
    assert await _found(specialist, "Observation", [("code", code)]) == set()
    settled = Sharing(ward.store, clock=lambda: after + ABANDONED_WRITE_AFTER + timedelta(seconds=1))
    assert (await settled.sweep())["settled"] >= 1
    assert await ward.store.revoking_of(pid) == {}


async def test_a_hospital_shared_with_again_finds_the_patient_again(ward):
    """A revocation's marker does not outlive a new share with the same hospital (it would keep the patient out of
    its searches for good)."""
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, made = await _patient_with(ward, 2, code)
    consent_id = await _share(ward, pid)
    current = (await ward.system.read("Consent", consent_id))["resource"]
    await ward.system.update("Consent", consent_id, {**current, "status": "inactive"})
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set()
    await _share(ward, pid)
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set(made)
    later = Sharing(ward.store, clock=lambda: datetime.now(UTC) + ABANDONED_WRITE_AFTER + timedelta(seconds=1))
    await later.sweep()
    assert await ward.store.revoking_of(pid) == {}
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set(made)


async def test_a_change_a_request_left_half_made_is_refused_at_once_and_worked_out_by_the_sweep(ward):
    """A request marks the change, withdraws the grant and stops before working the reach out (the process died):
    the hospital already reads and finds nothing; the sweep works the reach out from what is stored. A grant left
    so is given by the sweep too."""
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, made = await _patient_with(ward, 2, code)
    source = f"referral/{uuid.uuid4().hex[:8]}"
    consent_id = (await ward.system.create("Consent", consent(pid)))[0].resource_id
    sharing = ward.system.sharing
    await sharing.grant(source, f"Patient/{pid}", ward.other, f"Consent/{consent_id}",
                        datetime.now(UTC) - timedelta(seconds=1), None)
    assert (await ward.store.patient_reaches([pid]))[0]["stale"] is None, "a finished change leaves no mark"
    specialist = ward.as_practitioner(ward.other)
    assert await _found(specialist, "Observation", [("code", code)]) == set(made)
    # What grant() does before it works the reach out, and no more.
    await sharing.unsettle([pid])
    await ward.store.remove_grant(source)
    with pytest.raises(RecordError):
        await specialist.read("Observation", made[0])
    assert await _found(specialist, "Observation", [("code", code)]) == set()
    assert (await ward.as_practitioner(ward.home).read("Observation", made[0]))["resource"]["id"] == made[0]
    await Sharing(ward.store).sweep()
    assert (await ward.store.patient_reaches([pid]))[0]["stale"], "a mark this young may be a request at work"
    later = Sharing(ward.store, clock=lambda: datetime.now(UTC) + ABANDONED_WRITE_AFTER + timedelta(seconds=1))
    assert (await later.sweep())["reconciled"] >= 1
    reach = (await ward.store.patient_reaches([pid]))[0]
    assert reach["stale"] is None and reach["orgs"] == [ward.home]
    assert await ward.reaching(pid, ward.other) == 0
    with pytest.raises(RecordError):
        await specialist.read("Observation", made[0])
    # A grant given and never worked out: the hospital gets it from the sweep.
    await sharing.unsettle([pid])
    await ward.store.put_grant({"_id": source, "patient": pid, "org": ward.other, "consent": f"Consent/{consent_id}",
                                "start": datetime.now(UTC) - timedelta(seconds=1), "until": None})
    with pytest.raises(RecordError):
        await specialist.read("Observation", made[0])
    assert (await later.sweep())["reconciled"] >= 1
    assert (await specialist.read("Observation", made[0]))["resource"]["id"] == made[0]
    assert await _found(specialist, "Observation", [("code", code)]) == set(made)


async def test_a_transfer_moves_the_whole_record_to_the_new_hospital(ward):
    code = f"t-{uuid.uuid4().hex[:6]}"
    pid, made = await _patient_with(ward, 3, code)
    assert await ward.searched(ward.home, "Observation", [("code", code)]) == set(made)
    await ward.system.transfer(pid, {"resourceType": "Parameters", "parameter": [
        {"name": "organization", "valueReference": {"reference": ward.other}}]})
    assert await ward.searched(ward.home, "Observation", [("code", code)]) == set()
    assert await ward.searched(ward.other, "Observation", [("code", code)]) == set(made)
    assert await ward.reaching(pid, ward.home) == 0
