"""The administrators' users API: creating, listing, disabling, unlocking and resetting practitioner and administrator
accounts, and the help desk's narrow reach into a patient's account, each call audited; everyone else refused, and bad
input refused with a problem that changes nothing."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from fhir.resources.R4B.auditevent import AuditEvent

from fhir_profiles.identifiers import mask_national_id
from qilu.accounts import add_user
from sample_records import PASSWORD, new_national_id

STRONG = "Qilu-2024-strong"


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["title"], body
    return body


def _login() -> str:
    return f"P{uuid.uuid4().hex[:10]}"


async def _token(client: httpx.AsyncClient, login: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/token", data={"username": login, "password": password})


async def _new_practitioner(admin_client: httpx.AsyncClient, organization: str, **extra) -> dict:
    body = {"role": "practitioner", "login": _login(), "password": STRONG, "name": "钱医生",
            "organization": organization, "specialty": "cardiology", **extra}
    response = await admin_client.post("/api/users", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_an_administrator_creates_accounts_that_work_and_lists_them_by_role_and_hospital(
        app, client, admin_client, world):
    events = app.state.db["AuditEvent"]
    before = await events.count_documents({})
    doctor = await _new_practitioner(admin_client, world.home)
    assert doctor["role"] == "practitioner" and doctor["organization"] == world.home and doctor["active"] is True
    assert doctor["fhirUser"].startswith("PractitionerRole/") and doctor["lockedUntil"] is None
    assert not {"password", "password_hash", "passwordHash"} & set(doctor)
    token = await _token(client, doctor["login"], STRONG)
    assert token.status_code == 200, token.text
    me = (await client.get("/api/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"})).json()
    assert me["fhirUser"] == doctor["fhirUser"] and me["organization"] == world.home
    role = (await admin_client.get(f"/fhir/{doctor['fhirUser']}")).json()
    assert role["organization"]["reference"] == world.home and role["specialty"][0]["text"] == "cardiology"

    admin = await admin_client.post("/api/users", json={"role": "admin", "login": _login(), "password": STRONG,
                                                        "name": "运维", "organization": world.home})
    assert admin.status_code == 201, admin.text
    assert admin.headers["location"] == f"/api/users/{admin.json()['id']}"
    assert admin.json()["organization"] is None and admin.json()["fhirUser"] is None  # an administrator has neither
    assert (await admin_client.get(f"/api/users/{admin.json()['id']}")).json()["login"] == admin.json()["login"]

    listed = (await admin_client.get("/api/users", params={"role": "practitioner",
                                                           "organization": world.home})).json()
    ids = [u["id"] for u in listed["entries"]]
    assert doctor["id"] in ids and world.doctor.id in ids and world.doctor_elsewhere.id not in ids
    assert {(u["role"], u["organization"]) for u in listed["entries"]} == {("practitioner", world.home)}
    both = (await admin_client.get("/api/users", params={
        "role": "practitioner", "organization": f"{world.home},{world.elsewhere.removeprefix('Organization/')}"}))
    assert {world.doctor.id, world.doctor_elsewhere.id} <= {u["id"] for u in both.json()["entries"]}
    first = (await admin_client.get("/api/users", params={"organization": world.home, "limit": 1})).json()
    second = (await admin_client.get("/api/users", params={"organization": world.home, "limit": 1,
                                                          "offset": 1})).json()
    assert first["total"] == second["total"] == listed["total"] >= 2
    assert first["entries"][0]["id"] == doctor["id"]  # newest first
    assert second["entries"][0]["id"] != doctor["id"]
    # Patients are not accounts an administrator manages: never listed.
    everyone = (await admin_client.get("/api/users", params={"limit": 200})).json()["entries"]
    assert world.patient.id not in {u["id"] for u in everyone}
    assert {u["role"] for u in everyone} <= {"practitioner", "admin"}

    written = await events.find({}).sort([("updated", 1)]).skip(before).to_list(None)
    descriptions = [e["resource"].get("outcomeDesc") for e in written]
    assert descriptions.count("user account created") == 2 and "user accounts" in descriptions
    created = next(e["resource"] for e in written if e["resource"].get("outcomeDesc") == "user account created")
    assert created["action"] == "C" and {x["what"]["reference"] for x in created["entity"]} == {doctor["fhirUser"]}
    for event in written:
        AuditEvent.model_validate(event["resource"])
        assert "钱医生" not in str(event["resource"])  # the account's name is not in its audit trail


async def test_disabling_unlocking_and_resetting_a_password_take_effect_at_once(client, admin_client, world):
    doctor = await _new_practitioner(admin_client, world.home)
    login, url = doctor["login"], f"/api/users/{doctor['id']}"
    token = (await _token(client, login, STRONG)).json()["access_token"]
    as_doctor = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/me", headers=as_doctor)).status_code == 200

    disabled = await admin_client.post(f"{url}/disable")
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    assert (await client.get("/api/me", headers=as_doctor)).status_code == 401  # the token dies with the account
    assert (await _token(client, login, STRONG)).status_code == 401
    assert (await admin_client.post(f"{url}/enable")).json()["active"] is True
    assert (await _token(client, login, STRONG)).status_code == 200

    for _ in range(5):
        await _token(client, login, "wrong password")
    assert (await _token(client, login, STRONG)).status_code == 429
    assert (await admin_client.get(url)).json()["lockedUntil"] is not None
    unlocked = await admin_client.post(f"{url}/unlock")
    assert unlocked.status_code == 200 and unlocked.json()["lockedUntil"] is None
    assert (await _token(client, login, STRONG)).status_code == 200

    weak = _problem(await admin_client.post(f"{url}/password", json={"password": "short"}), 422)
    assert "10 characters" in weak["detail"]
    assert (await _token(client, login, STRONG)).status_code == 200  # the refused reset changed nothing
    renewed = "Renewed#2024-pass"
    assert (await admin_client.post(f"{url}/password", json={"password": renewed})).status_code == 200
    assert (await _token(client, login, STRONG)).status_code == 401
    assert (await _token(client, login, renewed)).status_code == 200


async def test_a_password_reset_ends_every_session_of_the_account(client, admin_client, world):
    """Whoever knew the old password is logged out: the access and refresh tokens issued before the reset stop
    working at once; a login with the new password works."""
    doctor = await _new_practitioner(admin_client, world.home)
    session = (await _token(client, doctor["login"], STRONG)).json()
    bearer = {"Authorization": f"Bearer {session['access_token']}"}
    assert (await client.get("/api/me", headers=bearer)).status_code == 200
    await asyncio.sleep(1.1)  # tokens carry whole seconds: the reset must come in a later second than the login
    reset = await admin_client.post(f"/api/users/{doctor['id']}/password", json={"password": STRONG + "-new"})
    assert reset.status_code == 200, reset.text

    ended = await client.get("/api/me", headers=bearer)
    assert ended.status_code == 401 and "password was changed" in ended.headers["www-authenticate"]
    refreshed = await client.post("/api/auth/token", data={"grant_type": "refresh_token",
                                                          "refresh_token": session["refresh_token"]})
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    fresh = await _token(client, doctor["login"], STRONG + "-new")
    assert fresh.status_code == 200
    assert (await client.get("/api/me", headers={"Authorization": f"Bearer {fresh.json()['access_token']}"})
            ).status_code == 200


async def test_everyone_but_administrators_and_every_bad_request_is_refused_and_changes_nothing(
        app, client, admin_client, doctor_client, world):
    doctor = await _new_practitioner(admin_client, world.home)
    body = {"role": "practitioner", "login": _login(), "password": STRONG, "name": "孙医生",
            "organization": world.home}
    for http in (doctor_client,):
        _problem(await http.get("/api/users"), 403)
        _problem(await http.post("/api/users", json=body), 403)
        _problem(await http.get(f"/api/users/{doctor['id']}"), 403)
        _problem(await http.post(f"/api/users/{doctor['id']}/disable"), 403)
        _problem(await http.post(f"/api/users/{doctor['id']}/password", json={"password": STRONG + "x"}), 403)
    _problem(await client.get("/api/users"), 401)

    duplicate = _problem(await admin_client.post("/api/users", json={**body, "login": doctor["login"]}), 409)
    assert "exists already" in duplicate["detail"]
    for password, why in (("short1!", "10 characters"), ("onlyletterslong", "mixes letters"),
                          ("1234567890123", "mixes letters"), (f"x-{body['login']}-1", "login")):
        refused = _problem(await admin_client.post("/api/users", json={**body, "password": password}), 422)
        assert why in refused["detail"], (password, refused)
    for bad in ({**body, "role": "wizard"}, {**body, "role": "patient"}, {**body, "organization": None},
                {**body, "organization": "Organization/no-such-hospital"}, {**body, "login": "a b"},
                {**body, "extra": 1}, {**body, "name": ""}):
        _problem(await admin_client.post("/api/users", json=bad), 422)
    assert await app.state.users.by_login(body["login"]) is None  # none of the refusals made the account

    for query in ({"role": "patient"}, {"limit": 0}, {"limit": 201}, {"offset": -1},
                  {"organization": "Organization/bad id"}):
        _problem(await admin_client.get("/api/users", params=query), 422)
    _problem(await admin_client.get("/api/users/no-such-user"), 404)
    _problem(await admin_client.post(f"/api/users/{world.patient.id}/disable"), 409)  # a patient's: help desk only
    _problem(await admin_client.post(f"/api/users/{doctor['id']}/promote"), 422)
    _problem(await admin_client.post(f"/api/users/{world.admin.id}/disable"), 409)  # never their own account
    assert (await admin_client.get(f"/api/users/{doctor['id']}")).json()["active"] is True
    assert (await _token(client, world.admin.login, PASSWORD)).status_code == 200


async def test_the_help_desk_finds_a_patient_by_id_number_and_only_unlocks_or_resets_the_account(
        app, client, admin_client, doctor_client, world):
    """A locked-out or forgetful resident calls the help desk: the administrator finds the account by the ID number
    the resident reads out (never by browsing), sees it masked, and may lift the lock-out or set a new password;
    nothing else. Each of these shows in the resident's own access log."""
    national_id = new_national_id()
    resident = await add_user(app.state.db, "http://testserver/fhir", role="patient", login=national_id,
                              password=PASSWORD, name="王秀英", organization=world.home)
    for _ in range(5):
        await _token(client, national_id, "wrong password")
    assert (await _token(client, national_id, PASSWORD)).status_code == 429

    found = await admin_client.post("/api/users/lookup", json={"login": national_id.lower()})  # x or X
    assert found.status_code == 200, found.text
    account = found.json()
    assert account["id"] == resident.id and account["role"] == "patient" and account["lockedUntil"] is not None
    assert account["login"] == mask_national_id(national_id) and account["login"] != national_id
    assert account["name"] == "王**"
    assert national_id not in found.text and "王秀英" not in found.text
    everyone = (await admin_client.get("/api/users", params={"limit": 200})).json()["entries"]
    assert resident.id not in {u["id"] for u in everyone}  # found, never listed

    url = f"/api/users/{resident.id}"
    for action in ("disable", "enable"):
        refused = _problem(await admin_client.post(f"{url}/{action}"), 409)
        assert "unlocked or given a new password" in refused["detail"]
    unlocked = await admin_client.post(f"{url}/unlock")
    assert unlocked.status_code == 200 and unlocked.json()["lockedUntil"] is None
    assert (await _token(client, national_id, PASSWORD)).status_code == 200
    _problem(await admin_client.post(f"{url}/password", json={"password": "weak"}), 422)
    renewed = "Grandma#2026-new"
    assert (await admin_client.post(f"{url}/password", json={"password": renewed})).status_code == 200
    assert (await _token(client, national_id, PASSWORD)).status_code == 401
    session = await _token(client, national_id, renewed)
    assert session.status_code == 200

    as_resident = {"Authorization": f"Bearer {session.json()['access_token']}"}
    log = (await client.get("/api/me/access-log", params={"count": 100}, headers=as_resident)).json()
    by_help_desk = sorted(e["action"] for e in log["entries"] if e["who"] == world.admin.display_name)
    assert by_help_desk == ["read", "update", "update"], log  # the lookup, the unlock, the new password

    # Only administrators look up; an unknown login and a bad body are refused and change nothing.
    _problem(await doctor_client.post("/api/users/lookup", json={"login": national_id}), 403)
    _problem(await client.post("/api/users/lookup", json={"login": national_id}), 401)
    _problem(await admin_client.post("/api/users/lookup", json={"login": new_national_id()}), 404)
    for bad in ({}, {"login": ""}, {"login": national_id, "role": "patient"}, {"login": 370102}, []):
        _problem(await admin_client.post("/api/users/lookup", json=bad), 422)
    doctor = (await admin_client.post("/api/users/lookup", json={"login": world.doctor.login})).json()
    assert doctor["id"] == world.doctor.id and doctor["login"] == world.doctor.login  # staff are not masked
