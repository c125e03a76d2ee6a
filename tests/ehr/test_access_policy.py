"""The access policy as a table: complete, the README's copy of it exact, and its refusals counted and held back."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ehr.access import RELATIONS, ROLE_RULES, ROLES, RULES, who_sees_what
from logins import login
from qilu.accounts import add_user
from qilu.denials import DenialGuard
from sample_records import PASSWORD, search

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_rule_judges_every_relation_and_every_role():
    for action, row in RULES.items():
        assert set(row) == set(RELATIONS), action
    for action, row in ROLE_RULES.items():
        assert set(row) == set(ROLES), action
    # A refusal by rule names the rule: the caller is told why.
    for row in (*RULES.values(), *ROLE_RULES.values()):
        for decision in row.values():
            assert decision.outcome in ("allow", "hide", "refuse")
            assert (decision.outcome == "refuse") == bool(decision.rule)


def test_the_readme_table_is_the_policy():
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- who-sees-what: start -->\n", "\n<!-- who-sees-what: end -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0] == who_sees_what()


@pytest.fixture
async def prober(app, world):
    """A practitioner of another hospital, with a burst limit of 5 refusals a minute for this test."""
    user = await add_user(app.state.db, "http://testserver/fhir", role="practitioner",
                          login=f"PRB{uuid.uuid4().hex[:8]}", password=PASSWORD, name="试探者",
                          organization=world.elsewhere)
    saved = app.state.denials
    app.state.denials = DenialGuard(app.state.metrics, 5)
    http = await login(app, user)
    try:
        yield user, http
    finally:
        app.state.denials = saved
        await http.aclose()


async def test_a_burst_of_refusals_is_counted_audited_and_held_back(app, prober, admin_client, doctor_client):
    user, http = prober
    before = (await doctor_client.get("/metrics")).text
    probes = [f"probe-{uuid.uuid4().hex[:10]}" for _ in range(5)]
    for probe in probes:
        assert (await http.get(f"/fhir/Patient/{probe}")).status_code == 404
    held = await http.get("/fhir/Patient/anything")
    assert held.status_code == 429, held.text
    assert held.json()["resourceType"] == "OperationOutcome" and held.json()["issue"][0]["code"] == "throttled"
    assert int(held.headers["Retry-After"]) >= 1
    # Another caller is not held back.
    assert (await doctor_client.get("/fhir/metadata")).status_code == 200
    after = (await doctor_client.get("/metrics")).text

    def counted(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and 'role="practitioner"' in line)

    assert counted(after, "qilu_access_denied_total") - counted(before, "qilu_access_denied_total") >= 5
    assert counted(after, "qilu_access_denial_bursts_total") - counted(before, "qilu_access_denial_bursts_total") >= 1
    # Each refused attempt is in the trail, as a failure, naming what was asked for.
    trail = await search(admin_client, "AuditEvent", {"agent": user.fhir_user, "_count": "50"})
    failures = [e["resource"] for e in trail.get("entry", []) if e["resource"]["outcome"] != "0"]
    asked = {entity["what"]["reference"] for event in failures for entity in event.get("entity", [])
             if "what" in entity}
    assert {f"Patient/{probe}" for probe in probes} <= asked


def test_routes_reach_the_record_only_through_a_handle_bound_to_the_caller():
    """The API modules get their record handle from `record_service(request, caller)`, bound to the caller's
    reach; a system handle (no reach) is named here with the rules that guard it, or this test fails."""
    root = Path(__file__).resolve().parents[2]
    system_handles = {
        # The card service reads and writes as the system and asks the policy's card rows itself.
        ("ehr/api.py", "return CardService(RecordService.as_system(state.db, _fhir_base(request)),"),
        ("ehr/api.py", "return RecordService(reach.store, _fhir_base(request), reach)"),
    }
    found = set()
    for module in ("ehr/api.py", "ehr/pages.py", "referral/api.py", "referral/pages.py", "teleconsult/api.py",
                   "teleconsult/pages.py", "qilu/users.py", "qilu/audit.py", "qilu/web.py", "qilu/ops.py"):
        path = root / module
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if ("RecordService(" in line or "RecordService.as_system(" in line
                    or "RecordStore(" in line and "Reach(" not in line):
                found.add((module, line.strip()))
    assert found == system_handles
