"""The access rules as a matrix: every role x every route family x own/other/shared patient, on the live app.

Who is who (relations are the caller's to the target patient):

    patient A ......... managed by hospital H, shared with hospital S
    patient B ......... managed by hospital E, shared with hospital H
    patient C ......... managed by hospital E, shared with nobody (only a bait for _include/_revinclude)

    role        target A        target B
    patient     self            other-patient     (the patient A logged in)
    doctor_H    own             shared
    doctor_E    other           own
    doctor_S    shared          other
    admin       admin           admin
    anon        anon            anon

Writes work on a fresh Observation of A or B that is deleted again afterwards, so that reads stay exact.
Every response is also searched for the canaries of the patients outside the caller's reach (their ID
numbers, names and the ids of their records): none may appear anywhere, refused or allowed.
"""

from __future__ import annotations

import re
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from logins import login
from ehr.service import RecordService
from ehr.store import RecordStore
from qilu.accounts import add_user
from sample_records import FHIR_JSON, JSON_HEADERS, PASSWORD, chinese_given, new_national_id, observation, share_record, \
    organization

PATIENTS = ("A", "B", "C")
# Which patients each role may read; the oracle for every search below.
READABLE = {"patient": {"A"}, "doctor_H": {"A", "B"}, "doctor_E": {"B", "C"}, "doctor_S": {"A"},
            "admin": set(), "anon": set()}
PRACTITIONERS = ("doctor_H", "doctor_E", "doctor_S")

RELATION = {
    ("patient", "A"): "self", ("patient", "B"): "other-patient",
    ("doctor_H", "A"): "own", ("doctor_H", "B"): "shared",
    ("doctor_E", "A"): "other", ("doctor_E", "B"): "own",
    ("doctor_S", "A"): "shared", ("doctor_S", "B"): "other",
    ("admin", "A"): "admin", ("admin", "B"): "admin",
    ("anon", "A"): "anon", ("anon", "B"): "anon",
}

# The words of each rule a 403 must name.
RULES = {
    "admin": "read no clinical data",
    "audit": "audit trail is read by administrators",
    "patient-write": "write nothing clinical",
    "write-managed": "organization manages",
    "directory": "Only administrators edit the directory",
    "card-verify": "not-allowed",
}

ALLOW, HIDDEN, FILTERED, UNAUTH = "allow", "hidden", "filtered", "401"


def forbid(rule: str) -> str:
    return "403:" + rule


# family -> relation -> expected outcome. "filtered" = 200 with exactly what the caller's reach allows.
READ_LIKE = {"self": ALLOW, "other-patient": HIDDEN, "own": ALLOW, "shared": ALLOW, "other": HIDDEN,
             "admin": forbid("admin"), "anon": UNAUTH}
SEARCH_LIKE = {"self": FILTERED, "other-patient": FILTERED, "own": FILTERED, "shared": FILTERED,
               "other": FILTERED, "admin": forbid("admin"), "anon": UNAUTH}
MATRIX: dict[str, dict[str, str]] = {
    "read": READ_LIKE,
    "vread": READ_LIKE,
    "history": READ_LIKE,
    "everything": READ_LIKE,
    "search": SEARCH_LIKE,
    "search-include": SEARCH_LIKE,
    "search-include-from-elsewhere": SEARCH_LIKE,
    "search-revinclude": SEARCH_LIKE,
    "create": {"self": forbid("patient-write"), "other-patient": forbid("patient-write"), "own": ALLOW,
               "shared": forbid("write-managed"), "other": forbid("write-managed"), "admin": forbid("admin"),
               "anon": UNAUTH},
    "update": {"self": forbid("patient-write"), "other-patient": forbid("patient-write"), "own": ALLOW,
               "shared": forbid("write-managed"), "other": HIDDEN, "admin": forbid("admin"), "anon": UNAUTH},
    "delete": {"self": forbid("patient-write"), "other-patient": forbid("patient-write"), "own": ALLOW,
               "shared": forbid("write-managed"), "other": HIDDEN, "admin": forbid("admin"), "anon": UNAUTH},
    "audit-read": {"self": forbid("audit"), "other-patient": forbid("audit"), "own": forbid("audit"),
                   "shared": forbid("audit"), "other": forbid("audit"), "admin": ALLOW, "anon": UNAUTH},
    "audit-search": {"self": forbid("audit"), "other-patient": forbid("audit"), "own": forbid("audit"),
                     "shared": forbid("audit"), "other": forbid("audit"), "admin": ALLOW, "anon": UNAUTH},
    "card-read": {"self": ALLOW, "other-patient": HIDDEN, "own": ALLOW, "shared": HIDDEN, "other": HIDDEN,
                  "admin": HIDDEN, "anon": UNAUTH},
    "card-suspend": {"self": ALLOW, "other-patient": HIDDEN, "own": ALLOW, "shared": HIDDEN, "other": HIDDEN,
                     "admin": HIDDEN, "anon": UNAUTH},
    "card-qr": {"self": ALLOW, "other-patient": HIDDEN, "own": HIDDEN, "shared": HIDDEN, "other": HIDDEN,
                "admin": HIDDEN, "anon": UNAUTH},
    "card-verify": {"self": forbid("card-verify"), "other-patient": forbid("card-verify"), "own": ALLOW,
                    "shared": ALLOW, "other": ALLOW, "admin": forbid("card-verify"), "anon": UNAUTH},
}
# Families about no patient in particular: role -> expected outcome.
ROLE_ONLY: dict[str, dict[str, str]] = {
    "directory-write": {"patient": forbid("directory"), "doctor_H": forbid("directory"),
                        "doctor_E": forbid("directory"), "doctor_S": forbid("directory"), "admin": ALLOW,
                        "anon": UNAUTH},
    "access-log": {"patient": ALLOW, "doctor_H": "403", "doctor_E": "403", "doctor_S": "403", "admin": "403",
                   "anon": UNAUTH},
}


@dataclass(frozen=True)
class Case:
    role: str
    family: str
    target: str  # "A", "B", or "-" for the families about no patient
    expect: str

    def __str__(self) -> str:
        relation = RELATION.get((self.role, self.target), "-")
        return f"{self.family}:{self.role}->{self.target}({relation})={self.expect}"


CASES = [Case(role, family, target, expected[RELATION[(role, target)]])
         for family, expected in MATRIX.items() for role in READABLE for target in ("A", "B")]
CASES += [Case(role, family, "-", expected) for family, by_role in ROLE_ONLY.items()
          for role, expected in by_role.items()]


# --- the world of this module ------------------------------------------------------------------------


@dataclass
class Seed:
    """A resource the module wrote, and the patients whose compartment it is in (empty: belongs to nobody)."""

    reference: str
    compartment: frozenset[str]


@dataclass
class Ctx:
    app: Any
    clients: dict[str, httpx.AsyncClient]
    patients: dict[str, Any]  # key -> User
    seeds: dict[str, Seed] = field(default_factory=dict)
    cards: dict[str, str] = field(default_factory=dict)  # patient key -> card id
    consents: dict[str, str] = field(default_factory=dict)  # patient key -> the Consent their sharing rests on
    audit_events: dict[str, str] = field(default_factory=dict)  # patient key -> an AuditEvent id about them only
    holder_clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    system: RecordService | None = None

    def pid(self, key: str) -> str:
        return self.patients[key].fhir_user.removeprefix("Patient/")

    def visible(self, role: str, seed: Seed) -> bool:
        if not seed.compartment:
            return role in PRACTITIONERS
        return bool(seed.compartment & READABLE[role])

    def canaries(self, role: str) -> list[str]:
        """What must never reach `role`: identity and record ids of the patients outside its reach."""
        out = []
        for key in PATIENTS:
            if key not in READABLE[role]:
                out += [self.patients[key].login, self.patients[key].display_name]
        # Patient ids are left out: a caller names them in the request, and refusals echo the request.
        out += [s.reference.split("/")[1] for s in self.seeds.values()
                if s.compartment and not s.reference.startswith("Patient/") and not self.visible(role, s)]
        return out


@asynccontextmanager
async def logged_in(app, user):
    http = await login(app, user)  # already used, so it cannot be entered with `async with`
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture(scope="module")
async def ctx(app, world, client):
    system = RecordService(RecordStore(app.state.db), "http://testserver/fhir")
    written, _ = await system.create("Organization", organization())
    hospital_s = f"Organization/{written.resource_id}"
    tag = uuid.uuid4().hex[:8]

    async def person(role, login_name, name, org):
        return await add_user(app.state.db, "http://testserver/fhir", role=role, login=login_name,
                              password=PASSWORD, name=name, organization=org)

    managing = {"A": world.home, "B": world.elsewhere, "C": world.elsewhere}
    patients = {key: await person("patient", new_national_id(), "韩" + chinese_given(3), org)
                for key, org in managing.items()}
    doctor_s = await person("practitioner", f"SHR{tag}", "吴医生", hospital_s)
    pid = {key: user.fhir_user.removeprefix("Patient/") for key, user in patients.items()}
    # A is shared with hospital S, B with the home hospital, as accepted referrals share them.
    consents = {"A": await share_record(system, pid["A"], hospital_s),
                "B": await share_record(system, pid["B"], world.home)}
    async with (logged_in(app, patients["A"]) as patient_a, logged_in(app, patients["B"]) as patient_b,
                logged_in(app, world.doctor) as doctor_h, logged_in(app, world.doctor_elsewhere) as doctor_e,
                logged_in(app, doctor_s) as doctor_s_http, logged_in(app, world.admin) as admin):
        anon = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        c = Ctx(app, {"patient": patient_a, "doctor_H": doctor_h, "doctor_E": doctor_e,
                      "doctor_S": doctor_s_http, "admin": admin, "anon": anon}, patients, system=system)
        c.holder_clients = {"A": patient_a, "B": patient_b}
        c.consents = consents

        async def seed(name: str, resource: dict, compartment: set[str]) -> None:
            done, _ = await system.create(resource["resourceType"], resource)
            c.seeds[name] = Seed(f"{resource['resourceType']}/{done.resource_id}", frozenset(compartment))

        for key in PATIENTS:
            c.seeds[f"patient_{key}"] = Seed(f"Patient/{pid[key]}", frozenset({key}))
        for key in ("A", "B", "C"):
            await seed(f"obs_{key}", observation(pid[key]), {key})
        for key in ("A", "B"):
            # Belongs to nobody (a type that may: practitioners see it) but points at the patient: an
            # _include bridge.
            await seed(f"bridge_{key}", {"resourceType": "Provenance", "recorded": "2024-03-01T08:00:00Z",
                                         "target": [{"reference": f"Observation/{key}-elsewhere"}],
                                         "agent": [{"who": {"reference": f"Patient/{pid[key]}"}}]}, set())
            # C's record that points at A or B: bait for _revinclude.
            await seed(f"bait_{key}", {"resourceType": "Task", "status": "requested", "intent": "order",
                                       "for": {"reference": f"Patient/{pid['C']}"},
                                       "focus": {"reference": f"Patient/{pid[key]}"}}, {"C"})
        # A links to C: bait for _include=Patient:link.
        current = (await system.read("Patient", pid["A"]))["resource"]
        await system.update("Patient", pid["A"], {**current, "link": [
            {"other": {"reference": f"Patient/{pid['C']}"}, "type": "seealso"}]})
        for key, holder in c.holder_clients.items():
            issued = await holder.post("/api/cards", json={"patient": patients[key].fhir_user,
                                                           "national_id": patients[key].login,
                                                           "name": patients[key].display_name})
            assert issued.status_code == 201, issued.text
            c.cards[key] = issued.json()["id"]
        # An AuditEvent about A only and one about B only: their managing doctors' reads.
        for key, doctor, user in (("A", doctor_h, world.doctor), ("B", doctor_e, world.doctor_elsewhere)):
            assert (await doctor.get(f"/fhir/Patient/{pid[key]}")).status_code == 200
            found = await admin.get("/fhir/AuditEvent", params={
                "entity": f"Patient/{pid[key]}", "agent": user.fhir_user, "subtype": "read"})
            assert found.status_code == 200, found.text
            events = [e["resource"] for e in found.json().get("entry", [])]
            assert events, found.text
            c.audit_events[key] = events[0]["id"]
        try:
            yield c
        finally:
            await anon.aclose()


# --- checks ---------------------------------------------------------------------------------------------


def _random_id() -> str:
    return str(uuid.uuid4())


def _no_canaries(c: Ctx, role: str, response: httpx.Response, allowed: set[str] = frozenset()) -> None:
    text = response.text
    for canary in c.canaries(role):
        if canary not in allowed:
            assert canary not in text, f"{role} was shown {canary!r}: {text[:600]}"


def _outcome(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(FHIR_JSON), response.headers["content-type"]
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body


def _check_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    if response.request.url.path.startswith("/fhir"):
        assert _outcome(response, 401)["issue"][0]["code"] == "login"
    else:
        assert response.headers["content-type"].startswith("application/problem+json")


def _check_forbidden(response: httpx.Response, rule: str) -> None:
    if response.request.url.path.startswith("/fhir"):
        issue = _outcome(response, 403)["issue"][0]
        assert issue["code"] == "forbidden", issue
        assert RULES[rule].lower() in issue["diagnostics"].lower(), issue
    else:
        assert response.status_code == 403, response.text
        body = response.json()
        assert body.get("code") == RULES[rule] or RULES[rule].lower() in body.get("detail", "").lower(), body


def _same_shape(denied: httpx.Response, missing: httpx.Response, denied_ids: list[str], missing_ids: list[str]):
    """A refusal that must look exactly like a miss: status, content type, header names and body (ids aside)."""
    assert denied.status_code == missing.status_code == 404, (denied.text, missing.text)
    assert denied.headers["content-type"] == missing.headers["content-type"]
    volatile = {"date", "x-request-id", "content-length", "server-timing"}
    assert {h for h in denied.headers if h not in volatile} == {h for h in missing.headers if h not in volatile}
    denied_text, missing_text = denied.text, missing.text
    for i, (d, m) in enumerate(zip(denied_ids, missing_ids)):
        denied_text, missing_text = denied_text.replace(d, f"<{i}>"), missing_text.replace(m, f"<{i}>")
    assert denied_text == missing_text


def _bundle_refs(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle", bundle
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") != "OperationOutcome"}


# --- the families -------------------------------------------------------------------------------------------
# Each returns (response, ids in the request) for a target; HIDDEN cases call it again for a random target.


@dataclass
class Target:
    patient: str
    obs: str = ""
    bridge: str = ""
    card: str = ""
    audit_event: str = ""

    def ids(self) -> list[str]:
        return [i for i in (self.patient, self.obs, self.bridge, self.card, self.audit_event) if i]


def _target(c: Ctx, key: str) -> Target:
    return Target(c.pid(key), c.seeds[f"obs_{key}"].reference.split("/")[1],
                  c.seeds[f"bridge_{key}"].reference.split("/")[1], c.cards[key], c.audit_events[key])


def _missing_target() -> Target:
    return Target(_random_id(), _random_id(), _random_id(), uuid.uuid4().hex[:24], uuid.uuid4().hex)


async def _read(http, t: Target):
    return await http.get(f"/fhir/Patient/{t.patient}")


async def _vread(http, t: Target):
    return await http.get(f"/fhir/Patient/{t.patient}/_history/1")


async def _history(http, t: Target):
    return await http.get(f"/fhir/Patient/{t.patient}/_history")


async def _everything(http, t: Target):
    return await http.get(f"/fhir/Patient/{t.patient}/$everything")


async def _audit_read(http, t: Target):
    return await http.get(f"/fhir/AuditEvent/{t.audit_event}")


async def _card_read(http, t: Target):
    return await http.get(f"/api/cards/{t.card}")


async def _card_suspend(http, t: Target):
    return await http.post(f"/api/cards/{t.card}/suspend")


async def _card_qr(http, t: Target):
    return await http.get(f"/api/cards/{t.card}/qr", headers={"Accept": "application/json"})


FETCHERS = {"read": _read, "vread": _vread, "history": _history, "everything": _everything,
            "audit-read": _audit_read, "card-read": _card_read, "card-suspend": _card_suspend, "card-qr": _card_qr}

SEARCHES = {
    # family -> (path, params for the target, seeds that can come back for target key)
    "search": lambda t: ("Observation", {"patient": t.patient}),
    "search-include": lambda t: ("Observation", {"patient": t.patient, "_include": "Observation:subject"}),
    "search-include-from-elsewhere": lambda t: ("Provenance", {"_id": t.bridge, "_include": "Provenance:agent"}),
    "search-revinclude": lambda t: ("Patient", [("_id", t.patient), ("_include", "Patient:link"),
                                                ("_revinclude", "Observation:subject"),
                                                ("_revinclude", "Task:focus"),
                                                ("_revinclude", "Provenance:agent")]),
}
CANDIDATES = {  # what each search would return to someone who could read everything
    "search": lambda key: [f"obs_{key}"],
    "search-include": lambda key: [f"obs_{key}", f"patient_{key}"],
    "search-include-from-elsewhere": lambda key: [f"bridge_{key}", f"patient_{key}"],
    "search-revinclude": lambda key: [f"patient_{key}", f"obs_{key}", f"bridge_{key}", f"bait_{key}"] + (
        ["patient_C"] if key == "A" else []),
}


def _expected_refs(c: Ctx, role: str, family: str, key: str) -> set[str]:
    names = CANDIDATES[family](key)
    # Included resources only come with a match: the first candidate is what the search matches.
    if not c.visible(role, c.seeds[names[0]]):
        return set()
    return {c.seeds[n].reference for n in names if c.visible(role, c.seeds[n])}


async def _fresh_observation(c: Ctx, key: str) -> str:
    written, _ = await c.system.create("Observation", observation(c.pid(key), code="29463-7"))
    return written.resource_id


# --- the matrix ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_access_matrix(ctx: Ctx, case: Case):
    c, role, expect = ctx, case.role, case.expect
    http = c.clients[role]
    family = case.family

    if family == "directory-write":
        response = await http.post("/fhir/Organization", json=organization(), headers=JSON_HEADERS)
        _expect_simple(response, expect, allowed_status=201)
        return
    if family == "access-log":
        response = await http.get("/api/me/access-log")
        if expect == ALLOW:
            assert response.status_code == 200, response.text
            for entry in response.json()["entries"]:
                assert entry["whoReference"] != c.patients["A"].fhir_user  # others' accesses only
            _no_canaries(c, role, response)
        elif expect == "403":
            assert response.status_code == 403 and "Patients only" in response.text, response.text
        else:
            _check_unauthenticated(response)
        return

    key = case.target
    target = _target(c, key)

    if family in FETCHERS:
        fetch = FETCHERS[family]
        response = await fetch(http, target)
        if expect == ALLOW:
            assert response.status_code == 200, response.text
            _check_allowed_fetch(c, family, role, key, response)
            if family == "card-suspend":  # put it back for the other cases
                assert (await http.post(f"/api/cards/{target.card}/reactivate")).status_code == 200
        elif expect == HIDDEN:
            missing = _missing_target()
            _same_shape(response, await fetch(http, missing), target.ids(), missing.ids())
        else:
            _expect_simple(response, expect)
        _no_canaries(c, role, response)
        return

    if family in SEARCHES:
        path, params = SEARCHES[family](target)
        response = await http.get(f"/fhir/{path}", params=params)
        if expect == FILTERED:
            assert _bundle_refs(response) == _expected_refs(c, role, family, key)
            if not _expected_refs(c, role, family, key):
                # Nothing to see looks like searching a patient who does not exist.
                missing_path, missing_params = SEARCHES[family](_missing_target())
                missing = await http.get(f"/fhir/{missing_path}", params=missing_params)
                assert _bundle_refs(missing) == set() and missing.json()["total"] == response.json()["total"]
        else:
            _expect_simple(response, expect)
        _no_canaries(c, role, response)
        return

    if family == "audit-search":
        response = await http.get("/fhir/AuditEvent", params={"patient": f"Patient/{target.patient}",
                                                              "_sort": "_lastUpdated", "_count": "50"})
        if expect in (FILTERED, ALLOW):
            assert response.status_code == 200, response.text
            events = [e["resource"] for e in response.json().get("entry", [])]
            named = [{ref for ref in _references(event)} for event in events]
            assert all(f"Patient/{target.patient}" in refs for refs in named)
            if role == "patient":  # only events that name the caller themself
                assert all(c.patients["A"].fhir_user in refs for refs in named), named
            if RELATION[(role, key)] in ("self", "admin"):
                assert c.audit_events[key] in {e["id"] for e in events}
        else:
            _expect_simple(response, expect)
        return

    if family == "card-verify":
        token = (await c.holder_clients[key].get(f"/api/cards/{target.card}/qr",
                                                 headers={"Accept": "application/json"})).json()["token"]
        response = await http.post("/api/cards/verify", json={"token": token})
        if expect == ALLOW:
            assert response.status_code == 200, response.text
            assert response.json()["patient"] == f"Patient/{target.patient}"
            _no_canaries(c, role, response, allowed={c.patients[key].display_name})
            assert c.patients[key].login not in response.text
        else:
            _expect_simple(response, expect)
            _no_canaries(c, role, response)
        return

    await _check_write(c, family, role, key, http, expect)


def _references(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                found.add(v)
            else:
                found |= _references(v)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def _expect_simple(response: httpx.Response, expect: str, allowed_status: int = 200) -> None:
    if expect == ALLOW:
        assert response.status_code == allowed_status, response.text
    elif expect == UNAUTH:
        _check_unauthenticated(response)
    elif expect.startswith("403:"):
        _check_forbidden(response, expect.removeprefix("403:"))
    else:
        raise AssertionError(f"no simple check for {expect}")


def _check_allowed_fetch(c: Ctx, family: str, role: str, key: str, response: httpx.Response) -> None:
    patient_ref = f"Patient/{c.pid(key)}"
    if family in ("read", "vread"):
        assert response.json()["id"] == c.pid(key) and response.headers["etag"]
    elif family == "history":
        refs = _bundle_refs(response)
        assert refs == {patient_ref}, refs
    elif family == "everything":
        refs = _bundle_refs(response)
        assert refs == {patient_ref, c.seeds[f"obs_{key}"].reference, f"Basic/{c.cards[key]}",
                        c.consents[key]}, refs
    elif family == "audit-read":
        assert response.json()["id"] == c.audit_events[key]
    elif family.startswith("card"):
        body = response.json()
        assert body.get("patient", patient_ref) == patient_ref and (body.get("id") or body.get("token"))


async def _check_write(c: Ctx, family: str, role: str, key: str, http: httpx.AsyncClient, expect: str) -> None:
    pid = c.pid(key)
    scratch: list[str] = []  # deleted again at the end, so that the reads of the matrix stay exact
    try:
        if family == "create":
            response = await http.post("/fhir/Observation", json=observation(pid), headers=JSON_HEADERS)
            if response.status_code == 201:
                scratch.append(response.json()["id"])
            if expect == ALLOW:
                assert response.status_code == 201, response.text
                return
            _expect_simple(response, expect)
            if expect.startswith("403:"):
                # Refused alike for a patient who does not exist: the refusal says nothing about the patient.
                stranger = await http.post("/fhir/Observation", json=observation(_random_id()),
                                           headers=JSON_HEADERS)
                if stranger.status_code == 201:
                    scratch.append(stranger.json()["id"])
                assert stranger.status_code == 403
                assert stranger.json()["issue"][0]["diagnostics"] == response.json()["issue"][0]["diagnostics"]
            _no_canaries(c, role, response)
            return

        obs_id = await _fresh_observation(c, key)
        scratch.append(obs_id)
        before = await c.system.read("Observation", obs_id)
        missing_id = _random_id()
        if family == "update":
            body = {**before["resource"], "status": "amended"}
            response = await http.put(f"/fhir/Observation/{obs_id}", json=body, headers=JSON_HEADERS)
            missing = None
        else:
            response = await http.delete(f"/fhir/Observation/{obs_id}")
            missing = await http.delete(f"/fhir/Observation/{missing_id}")
        after = await c.system.store.get("Observation", obs_id)
        if expect == ALLOW:
            assert response.status_code in (200, 204), response.text
            assert after["vid"] == before["vid"] + 1
            return
        assert after["vid"] == before["vid"] and not after["deleted"], "a refused write changed the record"
        if expect == HIDDEN:
            if missing is None:  # a PUT on a missing id would create; a read of a missing id is the reference
                missing = await http.get(f"/fhir/Observation/{missing_id}")
            _same_shape(response, missing, [obs_id], [missing_id])
        else:
            _expect_simple(response, expect)
            if expect in (forbid("patient-write"), forbid("admin")):
                # A role that may never write gets the same answer whether the record exists or not.
                if missing is None:
                    missing = await http.put(f"/fhir/Observation/{missing_id}", headers=JSON_HEADERS,
                                             json={**before["resource"], "id": missing_id})
                    if missing.status_code in (200, 201):
                        scratch.append(missing_id)
                _check_forbidden(missing, expect.removeprefix("403:"))
        _no_canaries(c, role, response)
    finally:
        for obs_id in scratch:
            document = await c.system.store.get("Observation", obs_id)
            if document is not None and not document["deleted"]:
                await c.system.delete("Observation", obs_id)


def test_the_matrix_covers_every_role_family_and_relation():
    relations = {RELATION[(c.role, c.target)] for c in CASES if c.target != "-"}
    assert relations == {"self", "other-patient", "own", "shared", "other", "admin", "anon"}
    assert {c.role for c in CASES} == set(READABLE)
    assert len({str(c) for c in CASES}) == len(CASES)


async def test_a_deleted_record_of_someone_elses_patient_cannot_be_taken_over_by_put(ctx: Ctx):
    """Re-creating a tombstone would make its earlier versions (another hospital's record) the writer's."""
    c = ctx
    obs_id = await _fresh_observation(c, "A")
    await c.system.delete("Observation", obs_id)
    body = {**observation(c.pid("B")), "id": obs_id}
    taken = await c.clients["doctor_E"].put(f"/fhir/Observation/{obs_id}", json=body, headers=JSON_HEADERS)
    assert taken.status_code == 404, taken.text
    assert (await c.system.store.get("Observation", obs_id))["deleted"]
    history = await c.clients["doctor_E"].get(f"/fhir/Observation/{obs_id}/_history")
    assert history.status_code == 404 and c.pid("A") not in history.text
    # The hospital that manages the patient may bring it back.
    restored = await c.clients["doctor_H"].put(f"/fhir/Observation/{obs_id}", headers=JSON_HEADERS,
                                               json={**observation(c.pid("A")), "id": obs_id})
    assert restored.status_code in (200, 201), restored.text
    await c.system.delete("Observation", obs_id)


async def test_a_records_history_never_shows_a_version_that_was_another_patients(app, world, ctx: Ctx):
    """A record filed under the wrong patient and moved: who may read it now must not read what it was."""
    c = ctx
    other, _ = await c.system.create("Patient", {"resourceType": "Patient",
                                                 "managingOrganization": {"reference": world.home}})
    doctor_h, doctor_s = c.clients["doctor_H"], c.clients["doctor_S"]
    misfiled = await doctor_h.post("/fhir/Observation", json=observation(other.resource_id), headers=JSON_HEADERS)
    assert misfiled.status_code == 201, misfiled.text
    obs = misfiled.json()
    moved = await doctor_h.put(f"/fhir/Observation/{obs['id']}", headers=JSON_HEADERS,
                               json={**obs, "subject": {"reference": f"Patient/{c.pid('A')}"}})
    assert moved.status_code == 200, moved.text
    try:
        # The hospital that manages both sees both versions.
        history = await doctor_h.get(f"/fhir/Observation/{obs['id']}/_history")
        assert len(history.json()["entry"]) == 2
        # The hospital A is shared with sees the record as it is, and nothing of the patient it was filed under.
        assert (await doctor_s.get(f"/fhir/Observation/{obs['id']}")).status_code == 200
        history = await doctor_s.get(f"/fhir/Observation/{obs['id']}/_history")
        assert history.status_code == 200, history.text
        assert [e["resource"]["meta"]["versionId"] for e in history.json()["entry"]] == ["2"]
        assert other.resource_id not in history.text
        first = await doctor_s.get(f"/fhir/Observation/{obs['id']}/_history/1")
        never = await doctor_s.get(f"/fhir/Observation/{obs['id']}/_history/99")
        assert first.status_code == never.status_code == 404, first.text
        assert re.sub(r"version \d+", "version <v>", first.text) == re.sub(r"version \d+", "version <v>", never.text)
        type_history = await doctor_s.get("/fhir/Observation/_history", params={"_count": 200})
        assert other.resource_id not in type_history.text
    finally:
        await c.system.delete("Observation", obs["id"])
