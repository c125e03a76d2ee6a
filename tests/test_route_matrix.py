"""Every route of the app against the access policy's ROUTES table: no route without a gate, every caller answered
as its gate says.

The callers are nobody, bad tokens (expired, forged, garbage), a disabled practitioner, and each role of the world
fixture. Every path parameter names something of *another* hospital's patient (its Patient id for FHIR routes,
random ids elsewhere), so a route that forgot the policy would answer with that patient, whose ID number and
record id are the canaries: they may appear in no answer to anyone.

What the relation-level gates ("patient:", "party:", "type") decide for each relation is tried in
tests/ehr/test_access_matrix.py (FHIR), tests/ehr/test_access_holes.py, tests/ehr/test_cards.py,
tests/referral/test_relation_matrix.py and tests/referral/test_party_matrix.py; the signaling WebSocket's, by
every kind of caller, in tests/teleconsult/test_signaling_matrix.py.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi.routing import APIWebSocketRoute
from joserfc import jwt
from joserfc.jwk import ECKey
from starlette.routing import Mount

from ehr.access import PARTY_RULES, ROLE_RULES, ROUTES, RULES, type_action
from ehr.service import RecordService
from ehr.store import RecordStore
from logins import login
from qilu.accounts import add_user
from qilu.auth import TOKEN_COOKIE
from sample_records import PASSWORD

# The live feed never ends for a caller it admits; its refusals are all this file asks of it.
STREAMS = {("GET", "/api/referrals/events")}


def app_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, through included routers and mounts."""
    found: set[tuple[str, str]] = set()

    def walk(routes):
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router
                walk(route.original_router.routes)
            elif isinstance(route, APIWebSocketRoute):
                found.add(("WEBSOCKET", route.path))
            elif isinstance(route, Mount):
                found.add(("GET", route.path))
            else:
                found.update((method, route.path) for method in route.methods if method != "HEAD")

    walk(app.router.routes)
    return found


def test_every_route_has_a_gate_and_every_gate_a_route(app):
    served = app_routes(app)
    missing, stale = sorted(served - ROUTES.keys()), sorted(ROUTES.keys() - served)
    assert not missing, f"routes without a row in ehr.access.ROUTES: {missing}"
    assert not stale, f"rows of ehr.access.ROUTES without a route: {stale}"
    tables = {"role": ROLE_RULES, "patient": RULES, "party": PARTY_RULES}
    for key, gates in ROUTES.items():
        assert gates, key
        for gate in gates:
            kind, _, name = gate.partition(":")
            assert kind in ("public", "signed-in", "page", "type", *tables), (key, gate)
            if kind in tables:
                assert name in tables[kind], f"{key}: {gate} names no rule of the policy"
    print(f"\nroute matrix: {len(served)} routes, each with a gate")


class World:
    """The callers, the other hospital's patient and an Observation of theirs, and what they must never see."""

    def __init__(self, clients: dict[str, httpx.AsyncClient], target: str, observation: str, canaries: list[str]):
        self.clients, self.target, self.observation, self.canaries = clients, target, observation, canaries

    def targets(self, path: str) -> list[tuple[str, str]]:
        """What a generic FHIR route is asked about: the patient, and their Observation."""
        if "{resource_type}" in path:
            return [("Patient", self.target), ("Observation", self.observation)]
        return [("Patient", self.target)]


def _path(path: str, target: str, resource: tuple[str, str] | None = None) -> str:
    """The route's path with every parameter filled: FHIR ones name the other hospital's patient (or `resource`)."""
    action = {"/api/users/": "disable", "/api/cards/": "suspend", "/api/referrals/": "accept"}
    resource_type, resource_id = resource or ("Patient", target)
    values = {"resource_type": resource_type, "resource_id": resource_id, "patient_id": target, "version_id": "1",
              "code": "zh"}
    for name in ("definition_id", "job_id", "name", "user_id", "card_id", "referral_id", "consult_id"):
        values[name] = uuid.uuid4().hex
    values["action"] = next((a for prefix, a in action.items() if path.startswith(prefix)), "x")
    return path.format(**values)


def _body(method: str, path: str, target: str, resource_type: str = "Patient") -> Any:
    """A well-formed body for the route, about the other hospital's patient, as an attacker would send it: a
    refusal by role must not hide behind a 4xx about the body (other FHIR writes get an empty object)."""
    patient, password = f"Patient/{target}", "a-long-enough-password-1"
    about = ({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/x"}}
             if resource_type == "Patient" else
             {"resourceType": resource_type, "status": "final", "code": {"text": "x"}, "subject": {"reference": patient}})
    route = {"patient": patient, "direction": "up", "specialty": "neurology", "priority": "stat"}
    bodies = {
        "/api/referrals/route": route,
        "/api/referrals": {**route, "reason": f"Condition/{uuid.uuid4().hex}", "consent": f"Consent/{uuid.uuid4().hex}"},
        "/api/consults": {"patient": patient, "invite": [f"PractitionerRole/{uuid.uuid4().hex}"],
                          "scheduled": "2026-12-08T09:00:00+08:00"},
        "/api/cards": {"patient": patient, "national_id": "370102195001011234", "name": "某某"},
        "/api/cards/verify": {"token": "not-a-card"},
        "/api/users": {"role": "practitioner", "login": f"MAT{uuid.uuid4().hex[:8]}", "password": password,
                       "name": "某医生"},
        "/api/users/lookup": {"login": "370102195001011234"},
        "/api/users/{user_id}/password": {"password": password},
        "/fhir/{resource_type}": about,
    }
    return bodies.get(path, {}) if method in ("POST", "PUT") else None


async def _ask(http: httpx.AsyncClient, method: str, path: str, target: str,
               resource: tuple[str, str] | None = None) -> httpx.Response:
    url, body = _path(path, target, resource), _body(method, path, target, (resource or ("Patient",))[0])
    if path.endswith("/_search"):  # a FHIR search by POST is a form
        return await http.post(url, data={"_id": target}, follow_redirects=False)
    if body is not None:
        return await http.request(method, url, json=body, follow_redirects=False)
    return await http.request(method, url, follow_redirects=False)


def _check_no_canary(world: World, who: str, key, response: httpx.Response, leaks: list) -> None:
    for canary in world.canaries:
        if canary in response.text:
            leaks.append((who, key, canary[:4] + "…"))


@pytest.fixture(scope="module")
async def callers(app, world):
    target = world.patient_elsewhere.fhir_user.removeprefix("Patient/")
    tag = uuid.uuid4().hex[:8]
    disabled = await add_user(app.state.db, "http://testserver/fhir", role="practitioner", login=f"DIS{tag}",
                              password=PASSWORD, name="停用医生", organization=world.home)
    clients = {"patient": await login(app, world.patient), "practitioner": await login(app, world.doctor),
               "admin": await login(app, world.admin), "disabled": await login(app, disabled)}
    for http in clients.values():  # pages read the same token from the session cookie
        http.cookies.set(TOKEN_COOKIE, http.headers["Authorization"].removeprefix("Bearer "))
    off = await clients["admin"].post(f"/api/users/{disabled.id}/disable")
    assert off.status_code == 200, off.text
    # something of the patient's record that only a caller who may read it could quote
    secret = "canary-" + uuid.uuid4().hex
    records = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    written, _ = await records.create("Observation", {
        "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{target}"},
        "code": {"text": secret}, "valueString": secret})
    # Ids are not canaries: the caller names them, and a refusal may quote the request.
    yield World(clients, target, written.resource_id, [world.patient_elsewhere.login, secret])
    for http in clients.values():
        await http.aclose()


def _bad_tokens(app, subject: str) -> dict[str, str]:
    own = app.state.keys.token_key
    now = int(time.time())
    claims = {"iss": app.state.settings.token_issuer, "aud": app.state.settings.token_audience, "sub": subject,
              "iat": now - 7200, "exp": now - 3600, "role": "admin"}
    header = {"alg": "ES256", "kid": own.kid}
    return {"expired": jwt.encode(header, claims, own),
            "forged": jwt.encode(header, {**claims, "exp": now + 600}, ECKey.generate_key("P-256")),
            "garbage": "not-a-token"}


async def test_nobody_and_bad_tokens_get_no_further_than_the_gate(app, client, world, callers: World):
    asked, wrong, leaks = 0, [], []
    bad = _bad_tokens(app, world.admin.id)
    for (method, path), gates in sorted(ROUTES.items()):
        if method == "WEBSOCKET":
            continue
        kind = gates[0].partition(":")[0]
        response = await _ask(client, method, path, callers.target)
        asked += 1
        _check_no_canary(callers, "nobody", (method, path), response, leaks)
        status = response.status_code
        if kind == "public":  # open to all: no refusal (refreshing without a session is its own 401)
            ok = status < 500 and status != 403
        elif kind == "page":
            ok = status == 303 and response.headers["location"].startswith("/login")
        else:
            ok = status == 401 and response.headers.get("www-authenticate", "").startswith("Bearer")
        if not ok:
            wrong.append(("nobody", method, path, status))
        if kind in ("public", "page"):
            continue
        for why, token in bad.items():
            response = await client.request(method, _path(path, callers.target), headers={
                "Authorization": f"Bearer {token}"}, follow_redirects=False)
            asked += 1
            _check_no_canary(callers, why, (method, path), response, leaks)
            if response.status_code != 401:
                wrong.append((why, method, path, response.status_code))
        if (method, path) in STREAMS:
            continue
        response = await _ask(callers.clients["disabled"], method, path, callers.target)
        asked += 1
        _check_no_canary(callers, "disabled", (method, path), response, leaks)
        if response.status_code != 401:
            wrong.append(("disabled", method, path, response.status_code))
    print(f"\nroute matrix, unauthenticated: {asked} requests, {len(wrong)} wrong, {len(leaks)} leaks")
    assert not wrong and not leaks, "\n".join(map(repr, [*wrong, *leaks]))


def _refusal(method: str, path: str, gates: tuple[str, ...], role: str, resource_type: str) -> str | None:
    """The words of the 403 the role must get from the route's first gate, if it refuses the role outright."""
    kind, _, name = gates[0].partition(":")
    if kind == "type" and path != "/fhir":  # a Bundle's entries are judged one by one, not the Bundle
        name = type_action(resource_type, writing=method in ("POST", "PUT", "DELETE") and not path.endswith("_search"))
    elif kind != "role":
        return None
    decision = ROLE_RULES[name][role]
    return None if decision.allowed else decision.rule


@pytest.mark.parametrize("role", ["patient", "practitioner", "admin"])
async def test_each_role_is_answered_as_its_gate_says(callers: World, role: str):
    http = callers.clients[role]
    asked, wrong, leaks = 0, [], []
    for (method, path), gates in sorted(ROUTES.items()):
        if method == "WEBSOCKET" or (method, path) in STREAMS or path == "/logout":
            continue
        kind, _, name = gates[0].partition(":")
        for resource in callers.targets(path):
            response = await _ask(http, method, path, callers.target, resource)
            asked += 1
            _check_no_canary(callers, role, (method, path, resource[0]), response, leaks)
            status = response.status_code
            rule = _refusal(method, path, gates, role, resource[0])
            if status >= 500 or (status == 401 and kind != "public"):
                wrong.append((method, path, resource[0], status, response.text[:120]))
            elif rule is not None and not (status == 403 and rule.lower() in response.text.lower()):
                wrong.append((method, path, status, f"expected 403 naming {rule!r}", response.text[:120]))
            elif kind == "page":
                allowed = not name or role in name.split(",")
                # the home page ("page:" with no roles) sends each role on to its own
                if status not in ((200, 303) if not name else (200,) if allowed else (403,)):
                    wrong.append((method, path, status, "page"))
            elif (method in ("PUT", "DELETE") or (method, path) == ("POST", "/fhir/{resource_type}")) and status < 300:
                wrong.append((method, path, resource[0], status, "changed another hospital's patient's record"))
    print(f"\nroute matrix, {role}: {asked} requests, {len(wrong)} wrong, {len(leaks)} leaks")
    assert not wrong and not leaks, "\n".join(map(repr, [*wrong, *leaks]))
