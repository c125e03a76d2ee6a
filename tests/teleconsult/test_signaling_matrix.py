"""The signaling WebSocket, the one route of ehr.access.ROUTES that is not HTTP, asked by every kind of caller.

Bad tokens (none, garbage, expired, a disabled account's) are closed with 4401; everyone else is answered as the
policy's `consult-join` row says for how they stand to the consult: hidden is 4404 as for a consult that does not
exist, refused is 4403, allowed joins. The room must keep working for those in it.
"""

from __future__ import annotations

import time
import uuid

import pytest
from joserfc import jwt

from consult_world import ConsultPeople, ConsultServer, hold_consult, sign_in
from ehr.access import ADMIN, GUEST, HOST, INVITED_PATIENT, ITS_PATIENT, OUTSIDER, PARTY_RULES, ROUTES
from peers import ConsultPeer, PeerClosed
from qilu.accounts import add_user
from sample_records import PASSWORD

ROUTE = ("WEBSOCKET", "/api/consults/{consult_id}/ws")
CLOSE = {"hide": (4404, "consult-not-found"), "refuse": (4403, "not-invited")}


def _expired(app, subject: str) -> str:
    own, now = app.state.keys.token_key, int(time.time())
    return jwt.encode({"alg": "ES256", "kid": own.kid}, {
        "iss": app.state.settings.token_issuer, "aud": app.state.settings.token_audience, "sub": subject,
        "iat": now - 7200, "exp": now - 3600, "role": "practitioner"}, own)


async def _try(server: ConsultServer, consult_id: str, token: str | None) -> tuple[int | None, str]:
    """(close code, error) of a join, or (None, "joined")."""
    peer = ConsultPeer(server.ws, consult_id, token, mark=3, hertz=880.0, name="matrix")
    try:
        await peer.connect()
        await peer.join(consent=False)
        await peer.leave()
        return None, "joined"
    except PeerClosed as closed:
        errors = [m.get("error") for m in peer.messages if m.get("type") == "error"]
        return closed.code, errors[-1] if errors else ""
    finally:
        await peer.close()


async def test_every_caller_of_the_signaling_socket_is_answered_as_the_policy_says(
        app, world, consult_server: ConsultServer, people: ConsultPeople):
    assert ROUTES[ROUTE] == ("party:consult-join",)
    uninvited = await hold_consult(people, invite=[people.specialist])
    invited = await hold_consult(people, invite=[people.specialist], invite_patient=True)
    disabled_user = await add_user(app.state.db, "http://testserver/fhir", role="practitioner",
                                   login=f"WSD{uuid.uuid4().hex[:8]}", password=PASSWORD, name="停用医生",
                                   organization=world.home)
    disabled = await sign_in(consult_server, disabled_user)
    off = await people.admin.http.post(f"/api/users/{disabled_user.id}/disable")
    assert off.status_code == 200, off.text

    bad = {"no token": None, "garbage": "not-a-token", "expired": _expired(app, world.doctor.id),
           "disabled": disabled.token}
    cases = [(uninvited, "admin", people.admin, ADMIN), (uninvited, "outsider", people.outsider, OUTSIDER),
             (uninvited, "its patient", people.patient, ITS_PATIENT),
             (invited, "invited patient", people.patient, INVITED_PATIENT),
             (uninvited, "guest", people.specialist, GUEST), (uninvited, "host", people.host, HOST)]
    asked, wrong = 0, []
    for why, token in bad.items():
        got = await _try(consult_server, uninvited["id"], token)
        asked += 1
        if got != (4401, "bad-token"):
            wrong.append((why, got))
    for consult, who, person, relation in cases:
        decision = PARTY_RULES["consult-join"][relation]
        expected = (None, "joined") if decision.allowed else CLOSE[decision.outcome]
        got = await _try(consult_server, consult["id"], person.token)
        asked += 1
        if got != expected:
            wrong.append((who, relation, "expected", expected, "got", got))
    print(f"\nsignaling matrix: {asked} joins, {len(wrong)} wrong")
    assert not wrong, wrong
    await disabled.http.aclose()
