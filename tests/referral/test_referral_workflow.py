"""The referral workflow through the API: the two-way journey, sharing, refusals, concurrency, bad input, statistics."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from referral_world import (
    BASE,
    Case,
    ReferralWorld,
    add_hospital,
    assert_problem,
    consent,
    discharge_summary,
    new_case,
    referral_body,
)

from logins import login
from ehr.service import RecordService
from ehr.store import RecordStore
from fhir_profiles.identifiers import china_today
from referral.service import province_month
from sample_records import FHIR_JSON, JSON_HEADERS, condition


async def _client(app, user):
    http = await login(app, user)
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture(scope="module")
async def county(app, rw):
    async for http in _client(app, rw.county_doctor):
        yield http


@pytest.fixture(scope="module")
async def jinan(app, rw):
    async for http in _client(app, rw.jinan_specialist):
        yield http


@pytest.fixture(scope="module")
async def qingdao(app, rw):
    async for http in _client(app, rw.qingdao_specialist):
        yield http


@pytest.fixture(scope="module")
async def patient_client(app, rw):
    async for http in _client(app, rw.patient):
        yield http


def records(app) -> RecordService:
    return RecordService(RecordStore(app.state.db), BASE)


async def create_referral(county: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await county.post("/api/referrals", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def act(client: httpx.AsyncClient, referral_id: str, action: str, body: dict[str, Any] | None = None,
              status: int = 200) -> dict[str, Any]:
    response = await client.post(f"/api/referrals/{referral_id}/{action}", json=body)
    if status >= 400:
        return assert_problem(response, status)
    assert response.status_code == status, response.text
    return response.json()


def tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()


async def walk_to_completed(app, rw: ReferralWorld, county, jinan, case: Case, **overrides) -> tuple[dict, str]:
    """An upward referral taken by Jinan from request to completion; returns it and its discharge summary."""
    up = await create_referral(county, referral_body(rw, case, **overrides))
    for action, body in (("receive", None), ("accept", None), ("schedule", {"start": tomorrow()}),
                         ("arrive", None)):
        await act(jinan, up["id"], action, body)
    # Here the tertiary hospital's own system filed the summary already, and completion names it.
    written, _ = await records(app).create("Composition", discharge_summary(case.patient_id,
                                                                             rw.jinan_specialist.fhir_user))
    summary = f"Composition/{written.resource_id}"
    done = await act(jinan, up["id"], "complete", {"outcome": summary, "note": "stable, home in a week"})
    assert done["status"] == "completed"
    return done, summary


# --- the whole journey -------------------------------------------------------------------------------------


async def test_the_two_way_journey(app, rw, county, jinan, patient_client):
    case = await new_case(app.state.db, rw, rw.patient.fhir_user)

    # Routing reads only: ranked candidates, each with its score in parts and words.
    route = await county.post("/api/referrals/route", json={
        "patient": case.patient, "direction": "up", "specialty": rw.specialty, "capabilities": list(rw.capabilities),
        "priority": "urgent"})
    assert route.status_code == 200, route.text
    candidates = route.json()["candidates"]
    assert [c["hospital"] for c in candidates] == [rw.jinan, rw.qingdao]
    assert [c["rank"] for c in candidates] == [1, 2] and candidates[0]["score"] > candidates[1]["score"]
    first_reasons = " | ".join(p["reason"] for p in candidates[0]["parts"])
    assert "same medical alliance" in first_reasons and "same city" in first_reasons, first_reasons
    assert {p["factor"] for p in candidates[0]["parts"]} == {"alliance", "nearness", "capacity", "speed"}
    outbox = await county.get("/api/referrals", params={"box": "outbox", "limit": 200})
    assert case.patient not in {e["patient"] for e in outbox.json()["entries"]}

    # Up: one referral however often the same request is sent.
    body = referral_body(rw, case, priority="urgent")
    key = uuid.uuid4().hex
    first = await county.post("/api/referrals", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = await county.post("/api/referrals", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 200, again.text
    up = first.json()
    assert again.json()["id"] == up["id"]
    assert first.headers["location"] == f"/api/referrals/{up['id']}"
    outbox = await county.get("/api/referrals", params={"box": "outbox", "limit": 200})
    assert [e["id"] for e in outbox.json()["entries"] if e["patient"] == case.patient] == [up["id"]]
    assert up["target"] == rw.jinan and up["status"] == "requested" and up["direction"] == "up"
    assert up["routing"]["rank"] == 1 and up["routing"]["reasons"]
    assert up["task"]["status"] == "requested" and up["task"]["owner"] == {"reference": rw.jinan}
    assert up["serviceRequest"]["reasonReference"][0]["reference"] == case.condition
    assert up["serviceRequest"]["supportingInfo"] == [{"reference": case.observation}]
    assert up["reason"]["code"] == "I21.0"
    inbox = await jinan.get("/api/referrals", params={"box": "inbox", "limit": 200})
    assert up["id"] in [e["id"] for e in inbox.json()["entries"]]

    received = await act(jinan, up["id"], "receive")
    assert received["status"] == "received" and received["task"]["status"] == "received"
    accepted = await act(jinan, up["id"], "accept", {"note": "bed ready in CCU"})
    assert accepted["status"] == "accepted"

    scheduled = await act(jinan, up["id"], "schedule", {"start": tomorrow()})
    assert scheduled["status"] == "accepted" and scheduled["businessStatus"] == "scheduled"
    appointment = scheduled["appointment"]
    assert appointment.startswith("Appointment/")
    read = await jinan.get(f"/fhir/{appointment}")
    assert read.status_code == 200, read.text
    assert read.json()["basedOn"] == [{"reference": f"ServiceRequest/{up['id']}"}]

    arrived = await act(jinan, up["id"], "arrive")
    assert arrived["status"] == "in-progress" and arrived["encounter"].startswith("Encounter/")
    encounter = (await jinan.get(f"/fhir/{arrived['encounter']}")).json()
    assert encounter["serviceProvider"] == {"reference": rw.jinan} and encounter["subject"] == {
        "reference": case.patient}

    await act(jinan, up["id"], "complete", {}, status=422)  # no discharge summary, no completion
    # The specialist files the discharge summary with the completion itself: the access rules let them read
    # the shared patient's record, not write it, so the workflow writes it on their behalf.
    completed = await act(jinan, up["id"], "complete", {"summary": discharge_summary(
        case.patient_id, rw.jinan_specialist.fhir_user)})
    summary = completed["outcome"]
    assert completed["status"] == "completed" and summary.startswith("Composition/")
    assert {"type": {"text": "outcome"}, "valueReference": {"reference": summary}} in completed["task"]["output"]
    assert completed["serviceRequest"]["status"] == "completed"

    # Down: refer-back makes the downward referral to the county hospital, based on the first.
    back = await act(jinan, up["id"], "refer-back", {"note": "cardiac rehab and secondary prevention"})
    down_id = back["referredBackAs"]
    assert down_id
    down = (await county.get(f"/api/referrals/{down_id}")).json()
    assert down["direction"] == "down" and down["origin"] == rw.jinan and down["target"] == rw.county
    assert down["basedOn"] == up["id"] and summary in down["supporting"]
    assert down["serviceRequest"]["basedOn"] == [{"reference": f"ServiceRequest/{up['id']}"}]
    assert down["status"] == "requested" and down["consent"] == case.consent

    await act(county, down_id, "receive")
    await act(county, down_id, "accept")
    await act(county, down_id, "schedule", {"start": tomorrow()})
    await act(county, down_id, "arrive")
    county_note = await county.post("/fhir/Composition", headers=JSON_HEADERS, json=discharge_summary(
        case.patient_id, rw.county_doctor.fhir_user, "rehab done, back to the village doctor"))
    assert county_note.status_code == 201, county_note.text
    down_done = await act(county, down_id, "complete", {"outcome": f"Composition/{county_note.json()['id']}"})
    assert down_done["status"] == "completed"

    # The closed loop: the referrer sees the outcome and reads the summary through /fhir.
    seen = (await county.get(f"/api/referrals/{up['id']}")).json()
    assert seen["status"] == "completed" and seen["outcome"] == summary and seen["referredBackAs"] == down_id
    document = await county.get(f"/fhir/{summary}", headers={"Accept": FHIR_JSON})
    assert document.status_code == 200, document.text
    assert document.json()["title"].startswith("出院小结")
    assert [h["action"] for h in seen["history"]] == ["create", "receive", "accept", "schedule", "arrive",
                                                      "complete", "refer-back"]
    assert all(h["by"] and h["at"] for h in seen["history"])
    assert seen["history"][2]["by"] == rw.jinan_specialist.fhir_user

    # Every step audited: the patient sees who worked on their referral.
    log = await patient_client.get("/api/me/access-log", params={"count": 100})
    assert log.status_code == 200, log.text
    seen_by = Counter((e["whoReference"], e["action"]) for e in log.json()["entries"])
    for action in ("receive", "accept", "schedule", "arrive", "complete", "refer-back"):
        assert seen_by[(rw.jinan_specialist.fhir_user, f"referral-{action}")] == 1, (action, seen_by)
    for action in ("create", "receive", "accept", "schedule", "arrive", "complete"):
        assert seen_by[(rw.county_doctor.fhir_user, f"referral-{action}")] >= 1, (action, seen_by)
    orgs = {e["organizationReference"] for e in log.json()["entries"]}
    assert rw.jinan in orgs and rw.county in orgs

    # The patient follows their own referrals, and no one else's.
    mine = await patient_client.get(f"/api/referrals/{up['id']}")
    assert mine.status_code == 200 and mine.json()["status"] == "completed"


# --- sharing -----------------------------------------------------------------------------------------------


async def test_sharing_starts_at_acceptance_and_ends_with_the_consent(app, rw, county, jinan, qingdao):
    case = await new_case(app.state.db, rw)
    up = await create_referral(county, referral_body(rw, case))
    patient_path = f"/fhir/{case.patient}"
    assert (await jinan.get(patient_path)).status_code == 404
    await act(jinan, up["id"], "receive")
    assert (await jinan.get(patient_path)).status_code == 404

    await act(jinan, up["id"], "accept")
    assert (await jinan.get(patient_path)).status_code == 200
    assert (await jinan.get(f"/fhir/{case.observation}")).status_code == 200
    assert (await qingdao.get(patient_path)).status_code == 404  # not a side of this referral

    current = (await county.get(f"/fhir/{case.consent}")).json()
    revoked = await county.put(f"/fhir/{case.consent}", headers=JSON_HEADERS, json={**current, "status": "inactive"})
    assert revoked.status_code == 200, revoked.text
    assert (await jinan.get(patient_path)).status_code == 404
    assert (await jinan.get(f"/fhir/{case.observation}")).status_code == 404
    assert (await county.get(patient_path)).status_code == 200  # the patient's own hospital keeps them


async def test_sharing_ends_when_the_referral_is_cancelled(app, rw, county, jinan):
    case = await new_case(app.state.db, rw)
    up = await create_referral(county, referral_body(rw, case))
    await act(jinan, up["id"], "receive")
    await act(jinan, up["id"], "accept")
    assert (await jinan.get(f"/fhir/{case.patient}")).status_code == 200
    cancelled = await act(county, up["id"], "cancel", {"reason": "patient chose another hospital"})
    assert cancelled["status"] == "cancelled" and cancelled["serviceRequest"]["status"] == "revoked"
    assert (await jinan.get(f"/fhir/{case.patient}")).status_code == 404


# --- refusals ----------------------------------------------------------------------------------------------


async def test_illegal_transitions_are_409_naming_the_current_state(app, rw, county, jinan):
    case = await new_case(app.state.db, rw)
    rid = (await create_referral(county, referral_body(rw, case)))["id"]

    def names(problem: dict[str, Any], state: str) -> None:
        assert problem["currentStatus"] == state and state in problem["detail"], problem

    for action in ("accept", "reject", "schedule", "arrive", "complete"):
        names(await act(jinan, rid, action, {"reason": "x", "start": tomorrow()}, status=409), "requested")
    names(await act(jinan, rid, "refer-back", status=409), "requested")
    await act(jinan, rid, "receive")
    names(await act(jinan, rid, "receive", status=409), "received")
    await act(jinan, rid, "accept")
    names(await act(jinan, rid, "accept", status=409), "accepted")
    names(await act(jinan, rid, "arrive", status=409), "accepted")  # a routine referral is scheduled first
    await act(jinan, rid, "schedule", {"start": tomorrow()})
    problem = await act(jinan, rid, "schedule", {"start": tomorrow()}, status=409)
    names(problem, "accepted")
    assert "scheduled" in problem["detail"]
    await act(jinan, rid, "arrive")
    names(await act(county, rid, "cancel", status=409), "in-progress")
    written, _ = await records(app).create("Composition", discharge_summary(case.patient_id,
                                                                             rw.jinan_specialist.fhir_user))
    await act(jinan, rid, "complete", {"outcome": f"Composition/{written.resource_id}"})
    for action in ("receive", "accept", "complete"):
        names(await act(jinan, rid, action, {"outcome": f"Composition/{written.resource_id}"}, status=409),
              "completed")
    names(await act(county, rid, "cancel", status=409), "completed")
    await act(jinan, rid, "refer-back")
    names(await act(jinan, rid, "refer-back", status=409), "completed")  # referred back once only

    # Reject needs a reason; a rejected referral goes nowhere.
    other = (await create_referral(county, referral_body(rw, await new_case(app.state.db, rw))))["id"]
    await act(jinan, other, "receive")
    assert (await act(jinan, other, "reject", {}, status=422))["field"] == "reason"
    rejected = await act(jinan, other, "reject", {"reason": "no CCU bed today"})
    assert rejected["status"] == "rejected" and rejected["statusReason"] == "no CCU bed today"
    names(await act(jinan, other, "accept", status=409), "rejected")


async def test_actions_from_the_wrong_side_are_403(app, rw, county, jinan, qingdao, patient_client, admin_client):
    case = await new_case(app.state.db, rw)
    rid = (await create_referral(county, referral_body(rw, case)))["id"]
    for action in ("receive", "accept", "reject", "schedule", "arrive", "complete"):
        await act(county, rid, action, {"reason": "x"}, status=403)
    await act(jinan, rid, "cancel", status=403)
    for client in (patient_client, admin_client):
        await act(client, rid, "receive", status=403)
    # A hospital that is no side of it does not learn the referral exists.
    assert_problem(await qingdao.get(f"/api/referrals/{rid}"), 404)
    await act(qingdao, rid, "receive", status=404)
    current = (await county.get(f"/api/referrals/{rid}")).json()
    assert current["status"] == "requested" and current["version"] == 1


async def test_consent_and_reason_are_checked_before_anything_is_written(app, rw, county):
    case, other = await new_case(app.state.db, rw), await new_case(app.state.db, rw)
    system = records(app)
    inactive, _ = await system.create("Consent", consent(case.patient_id, status="inactive"))
    only_qingdao, _ = await system.create("Consent", consent(case.patient_id, actors=[rw.qingdao]))
    snomed_only, _ = await system.create("Condition", condition(case.patient_id, code="I21.0") | {
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "401303003"}]}})
    cases = {
        "consent": [f"Consent/{uuid.uuid4()}", other.consent, f"Consent/{inactive.resource_id}",
                    f"Consent/{only_qingdao.resource_id}", case.observation],
        "reason": [f"Condition/{uuid.uuid4()}", other.condition, f"Condition/{snomed_only.resource_id}",
                   case.observation],
        "supporting": [[other.observation], [f"Observation/{uuid.uuid4()}"], ["Patient/x"]],
    }
    for field_name, values in cases.items():
        for value in values:
            response = await county.post("/api/referrals", json=referral_body(rw, case, target=rw.jinan,
                                                                             **{field_name: value}))
            problem = assert_problem(response, 422)
            assert problem["field"].startswith(field_name), (value, problem)
    for missing in ("consent", "reason"):
        body = referral_body(rw, case)
        del body[missing]
        problem = assert_problem(await county.post("/api/referrals", json=body), 422)
        assert missing in problem["detail"]
    # A target that cannot take it is refused with the reason.
    problem = assert_problem(await county.post("/api/referrals", json=referral_body(
        rw, case, capabilities=["pci", "neonatal-icu"], target=rw.jinan)), 422)
    assert "neonatal-icu" in problem["detail"]
    outbox = (await county.get("/api/referrals", params={"box": "outbox", "limit": 200})).json()["entries"]
    assert case.patient not in {e["patient"] for e in outbox}
    # A patient the hospital does not manage cannot be referred up by it.
    problem = assert_problem(await county.post("/api/referrals", json=referral_body(
        rw, case, patient=f"Patient/{uuid.uuid4()}")), 404)
    assert problem["title"] == "Patient not found"


async def test_a_named_target_is_judged_even_below_the_first_ten(app, rw, county):
    specialty = f"neurology-{rw.tag}"
    for n in range(11):  # eleven near, allied hospitals that all rank above the far one
        await add_hospital(app.state.db, f"济南医院 {rw.tag}-{n}", "370102", f"jinan-alliance-{rw.tag}", specialty)
    far = await add_hospital(app.state.db, f"北京医院 {rw.tag}", "110101", f"beijing-{rw.tag}", specialty)
    app.state.referrals.directory.invalidate()
    case = await new_case(app.state.db, rw)
    route = (await county.post("/api/referrals/route", json={
        "patient": case.patient, "direction": "up", "specialty": specialty, "capabilities": ["pci"]})).json()
    assert len(route["candidates"]) == 10 and far not in [c["hospital"] for c in route["candidates"]]
    made = await create_referral(county, referral_body(rw, case, specialty=specialty, target=far))
    assert made["target"] == far and made["routing"]["rank"] == 12


# --- concurrency -------------------------------------------------------------------------------------------


async def test_of_twenty_concurrent_accepts_exactly_one_succeeds(app, rw, county, jinan):
    case = await new_case(app.state.db, rw)
    rid = (await create_referral(county, referral_body(rw, case)))["id"]
    await act(jinan, rid, "receive")
    responses = await asyncio.gather(*(jinan.post(f"/api/referrals/{rid}/accept") for _ in range(20)))
    assert Counter(r.status_code for r in responses) == {200: 1, 409: 19}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["currentStatus"] in ("received", "accepted")
    final = (await jinan.get(f"/api/referrals/{rid}")).json()
    assert final["status"] == "accepted" and final["version"] == 3
    assert [h["action"] for h in final["history"]] == ["create", "receive", "accept"]


async def test_a_double_click_creates_one_referral(app, rw, county):
    case = await new_case(app.state.db, rw)
    key = uuid.uuid4().hex
    responses = await asyncio.gather(*(county.post("/api/referrals", json=referral_body(rw, case),
                                                   headers={"Idempotency-Key": key}) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    outbox = (await county.get("/api/referrals", params={"box": "outbox", "limit": 200})).json()["entries"]
    assert sum(e["patient"] == case.patient for e in outbox) == 1
    # The same key from another hospital is another request.
    assert (await county.post("/api/referrals", json=referral_body(rw, case))).status_code == 201


# --- bad input ---------------------------------------------------------------------------------------------


async def test_bad_input_is_a_422_problem_and_changes_nothing(app, rw, county, jinan):
    case = await new_case(app.state.db, rw)
    good = referral_body(rw, case)
    rid = (await create_referral(county, good))["id"]
    bad_bodies = [
        ("/api/referrals", b"{not json", "application/json"),
        ("/api/referrals", b"[1, 2]", "application/json"),
        ("/api/referrals", b'"a string"', "application/json"),
        ("/api/referrals/route", b"{", "application/json"),
        (f"/api/referrals/{rid}/receive", b"{oops", "application/json"),
        (f"/api/referrals/{rid}/receive", b"[]", "application/json"),
    ]
    for path, content, content_type in bad_bodies:
        client = jinan if "receive" in path else county
        assert_problem(await client.post(path, content=content, headers={"Content-Type": content_type}), 422)
    for override in ({"colour": "red"}, {"priority": "whenever"}, {"direction": "sideways"},
                     {"capabilities": "pci"}, {"capabilities": [1, 2]}, {"supporting": {"a": 1}},
                     {"patient": 42}, {"patient": ""}, {"note": "x" * 5000}, {"capabilities": ["c"] * 21}):
        problem = assert_problem(await county.post("/api/referrals", json={**good, **override}), 422)
        assert problem["errors"], problem
    for override in ({"colour": "red"}, {"priority": 3}):
        assert_problem(await county.post("/api/referrals/route", json={
            "patient": case.patient, "direction": "up", "specialty": rw.specialty, **override}), 422)
    for body in ({"start": "not a time"}, {"outcome": ["Composition/x"]}, {"unknown": 1}):
        assert_problem(await jinan.post(f"/api/referrals/{rid}/receive", json=body), 422)
    assert_problem(await jinan.post(f"/api/referrals/{rid}/teleport"), 422)
    assert_problem(await county.get("/api/referrals", params={"box": "sideways"}), 422)
    assert_problem(await county.get("/api/referrals", params={"limit": "lots"}), 422)
    assert_problem(await county.post("/api/referrals", json=good, headers={"Idempotency-Key": "k" * 300}), 422)
    assert_problem(await county.get(f"/api/referrals/{uuid.uuid4().hex}"), 404)
    assert_problem(await jinan.post(f"/api/referrals/{uuid.uuid4().hex}/accept"), 404)
    assert_problem(await county.post("/api/referrals/route?explain=some", json={
        "patient": case.patient, "direction": "up", "specialty": rw.specialty}), 422)
    current = (await county.get(f"/api/referrals/{rid}")).json()
    assert current["status"] == "requested" and current["version"] == 1
    outbox = (await county.get("/api/referrals", params={"box": "outbox", "limit": 200})).json()["entries"]
    assert sum(e["patient"] == case.patient for e in outbox) == 1


async def test_route_explains_every_exclusion_when_asked(app, rw, county):
    case = await new_case(app.state.db, rw)
    response = await county.post("/api/referrals/route", params={"explain": "all"}, json={
        "patient": case.patient, "direction": "up", "specialty": rw.specialty,
        "capabilities": [*rw.capabilities, "stroke-thrombolysis"], "priority": "stat"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["candidates"] == []
    excluded = {e["hospital"]: e["reasons"] for e in result["excluded"]}
    assert "lacks capability stroke-thrombolysis" in excluded[rw.jinan]
    assert "is the referring hospital itself" in excluded[rw.county]
    problem = assert_problem(await county.post("/api/referrals", json=referral_body(
        rw, case, capabilities=[*rw.capabilities, "stroke-thrombolysis"])), 422)
    assert "explain=all" in problem["detail"]


# --- statistics --------------------------------------------------------------------------------------------


async def test_statistics_for_the_administrator(app, rw, county, jinan, patient_client, admin_client):
    up, _ = await walk_to_completed(app, rw, county, jinan, await new_case(app.state.db, rw))
    await act(jinan, up["id"], "refer-back")
    rejected = (await create_referral(county, referral_body(rw, await new_case(app.state.db, rw))))["id"]
    await act(jinan, rejected, "receive")
    reason = f"no CCU bed ({rw.tag})"
    await act(jinan, rejected, "reject", {"reason": reason})

    await app.state.referrals.refresh_stats()
    response = await admin_client.get("/api/referrals/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    month = china_today().strftime("%Y-%m")  # the dashboard counts by the province's calendar
    flows = {(f["direction"], f["city"], f["month"]): f["count"] for f in stats["flows"]}
    assert flows[("up", "370100", month)] >= 2  # from 平阴县, a county of 济南
    assert flows[("down", "370100", month)] >= 1  # from the Jinan tertiary hospital
    accept = stats["accept_minutes"]
    assert accept["count"] >= 1 and accept["median"] is not None and accept["p90"] >= accept["median"]
    assert {"reason": reason, "count": 1} in stats["rejection_reasons"]
    assert "sla_breaches" in stats and stats["computed"]
    for client in (county, patient_client):
        assert_problem(await client.get("/api/referrals/stats"), 403)


def test_a_referral_counts_in_the_month_of_the_province_calendar():
    # 03:00 on 1 December in Jinan is 19:00 on 30 November in UTC.
    assert province_month(datetime(2026, 11, 30, 19, 0, tzinfo=UTC)) == "2026-12"
    assert province_month(datetime(2026, 11, 30, 15, 59, tzinfo=UTC)) == "2026-11"
