"""A broad search's total is counted only up to a bound (counting every match costs as much as reading them):
past it the searchset has no total but still its next page; `_total=accurate` counts them all."""

from __future__ import annotations

import uuid

import pytest

from ehr.access import Reach
from ehr.service import RecordService
from ehr.store import RecordStore
from qilu.auth import Caller
from sample_records import observation, organization, patient

pytestmark = pytest.mark.asyncio(loop_scope="session")
BASE = "http://testserver/fhir"


async def test_a_total_past_the_bound_is_left_out_unless_asked_for(app):
    system = RecordService(RecordStore(app.state.db), BASE)
    org = "Organization/" + (await system.create("Organization", organization()))[0].resource_id
    pid = (await system.create("Patient", patient(organization=org)))[0].resource_id
    code = f"t-{uuid.uuid4().hex[:6]}"
    for _ in range(8):
        await system.create("Observation", observation(pid, code=code))
    caller = Caller(user_id="total", role="practitioner", fhir_user=None, organization=org, practitioner=None,
                    scopes=("user/*.*",))
    records = RecordService(RecordStore(app.state.db), BASE, Reach(caller, RecordStore(app.state.db)))
    records.counted = 5
    page = await records.search("Observation", [("code", code), ("_count", "2")])
    assert "total" not in page and len(page["entry"]) == 2
    assert [link["relation"] for link in page["link"]] == ["self", "next"]
    assert (await records.search("Observation", [("code", code), ("_count", "2"), ("_total", "accurate")]))[
        "total"] == 8
    records.counted = 10
    assert (await records.search("Observation", [("code", code), ("_count", "2")]))["total"] == 8
    # The last page knows its total without counting.
    assert (await records.search("Observation", [("code", code), ("_count", "2"), ("_offset", "6")]))["total"] == 8
