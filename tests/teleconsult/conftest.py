"""Consult fixtures: a real `qilu serve` on a free loopback port (its own media hub), and the people of a consult."""

from __future__ import annotations

import uuid

import pytest

from consult_world import SERVER_ENV, ConsultPeople, ConsultServer, sign_in
from qilu.accounts import add_user
from live_server import running_server
from sample_records import PASSWORD


@pytest.fixture(scope="session")
def consult_server(engines, settings) -> ConsultServer:
    """`qilu serve` on the tests' database, with a short grace period and small recordings."""
    with running_server(settings, "consult", SERVER_ENV) as (base, proc):
        yield ConsultServer(base, proc)


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
