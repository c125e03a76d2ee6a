"""Every route about a referral or a consult, asked by each way of standing to it, answered as PARTY_RULES say.

A referral from the county hospital, accepted by Jinan; two consults about the same patient held by the county
doctor with Jinan's specialist invited, one with the patient invited and one without. Qingdao's specialist is an
outsider, and an administrator is asked too. Expected answers come from the route's gates in `ehr.access.ROUTES`
(role rows first, then the party row); allow is anything but 401, 403, 404 and 5xx; hide is 404 and the same words
as for an id that does not exist; refuse is a 403 naming the rule. Lists must not name what the caller may not read.

Every ROUTES row with a "party:" gate needs a request here (the WebSocket is tried in
tests/teleconsult/test_signaling_matrix.py, the live feed in tests/referral/test_referral_notifications.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ehr.access import (ADMIN, GUEST, HOST, INVITED_PATIENT, ITS_PATIENT, OUTSIDER, PARTY, PARTY_RULES, ROLE_RULES,
                        ROUTES, RULES, Decision)
from logins import login
from qilu.accounts import add_user
from referral_world import BASE, ReferralWorld, new_case, referral_body
from sample_records import PASSWORD

# Tried elsewhere, as their docstrings say: a stream and a WebSocket.
# The policy's own words: a 403 without them is the workflow's (which side acts next), not the policy's.
POLICY_WORDS = {d.rule.lower() for table in (ROLE_RULES, PARTY_RULES, RULES) for row in table.values()
                for d in row.values() if d.rule}
ELSEWHERE = {("GET", "/api/referrals/events"), ("WEBSOCKET", "/api/consults/{consult_id}/ws")}
ROLE = {"county": "practitioner", "jinan": "practitioner", "patient": "patient", "qingdao": "practitioner",
        "admin": "admin"}


@dataclass
class Things:
    referral: str
    invited: str  # a consult the patient is invited to
    uninvited: str  # one they are not


def _referral_relation(who: str) -> str:
    return {"county": PARTY, "jinan": PARTY, "patient": ITS_PATIENT, "qingdao": OUTSIDER, "admin": ADMIN}[who]


def _consult_relation(who: str, consult: str, t: Things) -> str:
    if who == "patient":
        return INVITED_PATIENT if consult == t.invited else ITS_PATIENT
    return {"county": HOST, "jinan": GUEST, "qingdao": OUTSIDER, "admin": ADMIN}[who]


# (method, route) -> [(what it is about, request)]; "end" is asked last, since the host's ends the consult.
def _requests(t: Things) -> dict[tuple[str, str], list[tuple[str, dict[str, Any]]]]:
    consults = (t.invited, t.uninvited)
    return {
        ("GET", "/api/referrals/{referral_id}"): [(t.referral, {"method": "GET", "url": f"/api/referrals/{t.referral}"})],
        ("POST", "/api/referrals/{referral_id}/{action}"): [
            (t.referral, {"method": "POST", "url": f"/api/referrals/{t.referral}/receive", "json": {}})],
        ("GET", "/api/referrals"): [(t.referral, {"method": "GET", "url": f"/api/referrals?box={box}"})
                                    for box in ("inbox", "outbox")],
        ("GET", "/api/consults/{consult_id}"): [(c, {"method": "GET", "url": f"/api/consults/{c}"}) for c in consults],
        ("GET", "/api/consults"): [(c, {"method": "GET", "url": "/api/consults"}) for c in consults],
        ("GET", "/api/consults/{consult_id}/recording"): [
            (c, {"method": "GET", "url": f"/api/consults/{c}/recording"}) for c in consults],
        ("GET", "/api/consults/{consult_id}/diagnostics"): [
            (c, {"method": "GET", "url": f"/api/consults/{c}/diagnostics"}) for c in consults],
        ("POST", "/api/consults/{consult_id}/opinion"): [
            (c, {"method": "POST", "url": f"/api/consults/{c}/opinion", "json": {"text": "建议溶栓", "status": "preliminary"}})
            for c in consults],
        ("POST", "/api/consults/{consult_id}/end"): [
            (c, {"method": "POST", "url": f"/api/consults/{c}/end"}) for c in consults],
    }


def _expected(key: tuple[str, str], who: str, about: str, t: Things) -> Decision:
    for gate in ROUTES[key]:
        kind, _, name = gate.partition(":")
        if kind == "role":
            decision = ROLE_RULES[name][ROLE[who]]
        elif kind == "party":
            relation = _referral_relation(who) if about == t.referral else _consult_relation(who, about, t)
            decision = PARTY_RULES[name][relation]
        else:
            continue
        if not decision.allowed:
            return decision
    return decision


@pytest.fixture(scope="module")
async def things(app, rw: ReferralWorld):
    admin = await add_user(app.state.db, BASE, role="admin", login=f"PAD{rw.tag}", password=PASSWORD,
                           name="管理员", organization=None)
    people = {"county": rw.county_doctor, "jinan": rw.jinan_specialist, "patient": rw.patient,
              "qingdao": rw.qingdao_specialist, "admin": admin}
    clients = {who: await login(app, user) for who, user in people.items()}
    case = await new_case(app.state.db, rw, patient=rw.patient.fhir_user)
    sent = await clients["county"].post("/api/referrals", json=referral_body(rw, case, target=rw.jinan))
    assert sent.status_code in (200, 201), sent.text
    for step in ("receive", "accept"):
        moved = await clients["jinan"].post(f"/api/referrals/{sent.json()['id']}/{step}", json={})
        assert moved.status_code == 200, moved.text
    held = []
    for invite_patient in (True, False):
        made = await clients["county"].post("/api/consults", json={
            "patient": case.patient, "invite": [rw.jinan_specialist.fhir_user], "invitePatient": invite_patient,
            "scheduled": "2031-05-04T09:00:00+08:00"})
        assert made.status_code == 201, made.text
        held.append(made.json()["id"])
    yield clients, Things(sent.json()["id"], *held)
    for http in clients.values():
        await http.aclose()


def test_every_route_about_a_referral_or_consult_is_in_the_matrix():
    party_routes = {key for key, gates in ROUTES.items() if any(g.startswith("party:") for g in gates)}
    asked = set(_requests(Things("r", "a", "b")))
    assert party_routes - ELSEWHERE - asked == set(), sorted(party_routes - ELSEWHERE - asked)
    assert asked <= ROUTES.keys(), sorted(asked - ROUTES.keys())


def _judge(key, who: str, about: str, expected: Decision, response: httpx.Response) -> list[tuple]:
    status, text = response.status_code, response.text
    wrong: list[tuple] = []
    listing = "{" not in key[1]
    if status >= 500 or status == 401:
        wrong.append((who, key, about, status, text[:160]))
    elif expected.outcome == "refuse":
        if not (status == 403 and expected.rule.lower() in text.lower()):
            wrong.append((who, key, about, status, f"refused naming {expected.rule!r}", text[:160]))
    elif listing:
        if status != 200:
            wrong.append((who, key, about, status, "a list is answered, filtered", text[:160]))
        elif not expected.allowed and about in text:
            wrong.append((who, key, about, status, "lists what the caller may not read"))
    elif expected.outcome == "allow" and (status == 404 and "not known" in text
                                          or status == 403 and any(w in text.lower() for w in POLICY_WORDS)):
        wrong.append((who, key, about, status, "allowed by the policy", text[:160]))
    elif expected.outcome == "hide" and not (status == 404 and "not known" in text):
        wrong.append((who, key, about, status, "hidden (404, as if unknown) by the policy", text[:160]))
    return wrong


async def test_each_party_is_answered_as_the_rules_say(things):
    clients, t = things
    requests = _requests(t)
    order = [key for key in requests if key[1].endswith("/end")]
    order = [key for key in requests if key not in order] + order
    asked, wrong = 0, []
    for key in order:
        # the host last: ending the consult changes what the others are asked
        for who in ("admin", "qingdao", "patient", "jinan", "county"):
            for about, request in requests[key]:
                response = await clients[who].request(**request)
                asked += 1
                wrong += _judge(key, who, about, _expected(key, who, about, t), response)
    print(f"\nparty matrix: {len(requests)} routes x {len(clients)} callers, {asked} requests, {len(wrong)} wrong")
    assert not wrong, "\n".join(map(repr, wrong))
