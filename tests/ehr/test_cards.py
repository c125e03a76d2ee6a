"""E-health cards end to end on the live app: issue, the QR token (decoded from the PNG), verify, and every refusal."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, KeySet

from logins import login
from fhir_profiles.identifiers import EHEALTH_CARD_SYSTEM
from fhir_profiles.profiles import EHEALTH_CARD_PROFILE_URL
from qilu.accounts import add_user
from sample_records import PASSWORD, chinese_given, new_national_id

README = Path(__file__).resolve().parents[2] / "README.md"


@asynccontextmanager
async def logged_in(app, user):
    # login() has used its client already, so `async with` cannot enter it; close it ourselves.
    http = await login(app, user)
    try:
        yield http
    finally:
        await http.aclose()


async def _new_patient(app, organization: str):
    """A resident managed by `organization`, with a login; the name is unique so mismatches are clear."""
    name = "王" + chinese_given(2)
    return await add_user(app.state.db, "http://testserver/fhir", role="patient", login=new_national_id(),
                          password=PASSWORD, name=name, organization=organization)


@pytest.fixture
async def holder(app, world):
    """A fresh patient of the home hospital, logged in."""
    user = await _new_patient(app, world.home)
    async with logged_in(app, user) as http:
        yield user, http


@pytest.fixture(scope="module")
async def other_doctor_client(app, world):
    async with logged_in(app, world.doctor_elsewhere) as http:
        yield http


def _issue_body(user, **changes) -> dict:
    body = {"patient": user.fhir_user, "national_id": user.login, "name": user.display_name}
    body.update(changes)
    return body


async def _issue(http: httpx.AsyncClient, user) -> dict:
    response = await http.post("/api/cards", json=_issue_body(user))
    assert response.status_code == 201, response.text
    return response.json()


async def _token(http: httpx.AsyncClient, card_id: str) -> str:
    response = await http.get(f"/api/cards/{card_id}/qr", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()["token"]


def _refused(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    return body


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _card_token(key: ECKey, kid: str, **claims) -> str:
    payload = {"cn": "3700000000000000000", "exp": int(time.time()) + 60, "nonce": secrets.token_urlsafe(12),
               "iss": "qilu"}
    payload.update(claims)
    return jws.serialize_compact({"alg": "ES256", "kid": kid, "typ": "ehc+jws"}, json.dumps(payload), key,
                                 algorithms=["ES256"])


def _read_qr(png: bytes) -> str:
    """The text of the QR code in a PNG, as a camera app would read it."""
    image = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None, "not a PNG image"
    # OpenCV's classic detector misses about one code in twenty; its ArUco-based one is the second opinion.
    for detector in (cv2.QRCodeDetector(), cv2.QRCodeDetectorAruco()):
        text, _, _ = detector.detectAndDecode(image)
        if text:
            return text
    return ""


async def _card_numbers_on_patient(http: httpx.AsyncClient, user) -> list[str]:
    response = await http.get(f"/fhir/{user.fhir_user}")
    assert response.status_code == 200, response.text
    return [i["value"] for i in response.json().get("identifier", []) if i["system"] == EHEALTH_CARD_SYSTEM]


# --- issuing -------------------------------------------------------------------------------------


async def test_a_patient_issues_their_own_card_and_its_number_joins_patient_identifier(holder, world):
    user, http = holder
    card = await _issue(http, user)
    assert card["status"] == "active" and card["patient"] == user.fhir_user
    assert re.fullmatch(r"3700\d{15}", card["number"]), card
    assert await _card_numbers_on_patient(http, user) == [card["number"]]
    assert (await http.get("/api/cards/mine")).json()["id"] == card["id"]
    # The card is a FHIR Basic with the EHealthCard profile, readable by its holder.
    basic = (await http.get(f"/fhir/Basic/{card['id']}")).json()
    assert EHEALTH_CARD_PROFILE_URL in basic["meta"]["profile"], basic
    assert basic["subject"]["reference"] == user.fhir_user


async def test_a_registrar_of_the_managing_hospital_issues_a_card(app, world, doctor_client):
    user = await _new_patient(app, world.home)
    response = await doctor_client.post("/api/cards", json=_issue_body(user))
    assert response.status_code == 201, response.text
    card = response.json()
    assert card["issuer"] == world.home and card["patient"] == user.fhir_user
    assert await _card_numbers_on_patient(doctor_client, user) == [card["number"]]


@pytest.mark.parametrize("wrong", ["national_id", "name"])
async def test_a_wrong_id_number_or_name_is_422_and_issues_nothing(holder, wrong):
    user, http = holder
    changes = {"national_id": new_national_id()} if wrong == "national_id" else {"name": "李" + chinese_given(2)}
    _refused(await http.post("/api/cards", json=_issue_body(user, **changes)), 422, "identity-mismatch")
    _refused(await http.get("/api/cards/mine"), 404, "card-unknown")
    assert await _card_numbers_on_patient(http, user) == []
    await _issue(http, user)  # the refusal held nothing back: the right data still gets a card


async def test_a_doctor_of_another_hospital_may_not_issue_a_card(app, world, holder, other_doctor_client):
    user, http = holder
    _refused(await other_doctor_client.post("/api/cards", json=_issue_body(user)), 403, "not-allowed")
    _refused(await http.get("/api/cards/mine"), 404, "card-unknown")


async def test_a_patient_may_not_issue_a_card_for_someone_else(app, world, holder):
    user, http = holder
    someone = await _new_patient(app, world.home)
    _refused(await http.post("/api/cards", json=_issue_body(someone)), 403, "not-allowed")


async def test_a_second_active_card_is_409(holder):
    user, http = holder
    first = await _issue(http, user)
    _refused(await http.post("/api/cards", json=_issue_body(user)), 409, "card-exists")
    assert await _card_numbers_on_patient(http, user) == [first["number"]]


async def test_concurrent_issues_give_exactly_one_card(holder):
    user, http = holder
    responses = await asyncio.gather(*(http.post("/api/cards", json=_issue_body(user)) for _ in range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409, 409, 409], [r.text for r in responses]
    card = next(r.json() for r in responses if r.status_code == 201)
    bundle = (await http.get("/fhir/Basic", params={"subject": user.fhir_user})).json()
    assert [e["resource"]["id"] for e in bundle.get("entry", [])] == [card["id"]]
    assert await _card_numbers_on_patient(http, user) == [card["number"]]


# --- the QR code ---------------------------------------------------------------------------------


async def test_the_qr_png_decodes_to_a_compact_jws_es256_with_kid_exp_and_nonce(app, holder):
    user, http = holder
    card = await _issue(http, user)
    response = await http.get(f"/api/cards/{card['id']}/qr", headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    text = _read_qr(response.content)
    assert text, "the PNG holds no readable QR code"
    head, payload, signature = text.split(".")
    assert head and payload and signature
    decoded = jws.deserialize_compact(text, app.state.keys.card_key, algorithms=["ES256"])
    assert decoded.protected["alg"] == "ES256" and decoded.protected["kid"] == app.state.keys.card_key.kid
    claims = json.loads(decoded.payload)
    assert claims["cn"] == card["number"]
    assert 50 <= claims["exp"] - time.time() <= 61
    assert len(claims["nonce"]) >= 12
    # Each fetch is a new token: another nonce.
    again = await _token(http, card["id"])
    assert json.loads(jws.extract_compact(again.encode()).payload)["nonce"] != claims["nonce"]


async def test_the_qr_comes_as_svg_or_json_by_accept(holder):
    user, http = holder
    card = await _issue(http, user)
    svg = await http.get(f"/api/cards/{card['id']}/qr", headers={"Accept": "image/svg+xml"})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
    as_json = await http.get(f"/api/cards/{card['id']}/qr", headers={"Accept": "application/json"})
    assert as_json.status_code == 200
    body = as_json.json()
    assert body["token"].count(".") == 2 and body["expires"] > time.time()


async def test_only_the_holder_gets_the_qr(app, world, holder, doctor_client, admin_client):
    user, http = holder
    card = await _issue(http, user)
    stranger = await _new_patient(app, world.home)
    async with logged_in(app, stranger) as other_patient:
        for who in (doctor_client, admin_client, other_patient):
            _refused(await who.get(f"/api/cards/{card['id']}/qr"), 404, "card-unknown")
    missing = await http.get(f"/api/cards/{uuid.uuid4().hex[:24]}/qr")
    _refused(missing, 404, "card-unknown")


# --- verifying -----------------------------------------------------------------------------------


async def test_a_practitioner_verifies_a_card_and_the_patient_sees_it_in_the_access_log(
        app, world, holder, other_doctor_client):
    user, http = holder
    card = await _issue(http, user)
    token = await _token(http, card["id"])
    response = await other_doctor_client.post("/api/cards/verify", json={"token": token})
    assert response.status_code == 200, response.text
    identity = response.json()
    assert identity["patient"] == user.fhir_user
    assert identity["name"] == user.display_name
    patient = (await http.get(f"/fhir/{user.fhir_user}")).json()
    assert identity["gender"] == patient["gender"] and identity["birthDate"] == patient["birthDate"]
    assert identity["nationalId"] == user.login[:6] + "********" + user.login[-4:]
    assert user.login not in response.text  # never the full number
    assert identity["card"] == {"id": card["id"], "number": card["number"], "status": "active"}
    log = (await http.get("/api/me/access-log")).json()
    verifications = [e for e in log["entries"] if e["action"] == "card-verify"]
    assert len(verifications) == 1, log
    assert verifications[0]["whoReference"] == world.doctor_elsewhere.fhir_user
    assert verifications[0]["organizationReference"] == world.elsewhere
    assert verifications[0]["outcome"] == "success"


async def test_a_replayed_token_is_refused(holder, doctor_client, other_doctor_client):
    user, http = holder
    card = await _issue(http, user)
    token = await _token(http, card["id"])
    assert (await doctor_client.post("/api/cards/verify", json={"token": token})).status_code == 200
    # A second scan, at the same desk or another hospital's, is a replay.
    for scanner in (doctor_client, other_doctor_client):
        _refused(await scanner.post("/api/cards/verify", json={"token": token}), 422, "card-token-replayed")


async def test_an_expired_token_is_refused(app, holder, doctor_client):
    user, http = holder
    card = await _issue(http, user)
    key = app.state.keys.card_key
    expired = _card_token(key, key.kid, cn=card["number"], exp=int(time.time()) - 5)
    _refused(await doctor_client.post("/api/cards/verify", json={"token": expired}), 422, "card-token-expired")
    # The same card with a live token from the same key is fine: only the expiry was refused.
    fresh = _card_token(key, key.kid, cn=card["number"])
    assert (await doctor_client.post("/api/cards/verify", json={"token": fresh})).status_code == 200


async def test_suspend_reactivate_revoke_and_reissue(holder, doctor_client):
    user, http = holder
    card = await _issue(http, user)
    token = await _token(http, card["id"])

    suspended = await http.post(f"/api/cards/{card['id']}/suspend")
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    _refused(await doctor_client.post("/api/cards/verify", json={"token": token}), 422, "card-suspended")
    _refused(await http.get(f"/api/cards/{card['id']}/qr"), 409, "card-suspended")
    _refused(await http.post("/api/cards", json=_issue_body(user)), 409, "card-exists")

    reactivated = await http.post(f"/api/cards/{card['id']}/reactivate")
    assert reactivated.status_code == 200 and reactivated.json()["status"] == "active"
    assert (await doctor_client.post("/api/cards/verify",
                                     json={"token": await _token(http, card["id"])})).status_code == 200

    token = await _token(http, card["id"])
    revoked = await doctor_client.post(f"/api/cards/{card['id']}/revoke")  # the registrar may revoke too
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    _refused(await doctor_client.post("/api/cards/verify", json={"token": token}), 422, "card-revoked")
    _refused(await http.post(f"/api/cards/{card['id']}/reactivate"), 409, "card-state")
    assert await _card_numbers_on_patient(http, user) == []

    second = await _issue(http, user)
    assert second["id"] != card["id"] and second["number"] != card["number"]
    assert await _card_numbers_on_patient(http, user) == [second["number"]]
    assert (await doctor_client.post("/api/cards/verify",
                                     json={"token": await _token(http, second["id"])})).status_code == 200


async def test_only_the_holder_and_the_managing_hospital_change_a_cards_status(holder, other_doctor_client,
                                                                              admin_client):
    user, http = holder
    card = await _issue(http, user)
    for who in (other_doctor_client, admin_client):
        _refused(await who.post(f"/api/cards/{card['id']}/revoke"), 404, "card-unknown")
        _refused(await who.get(f"/api/cards/{card['id']}"), 404, "card-unknown")
    assert (await http.get(f"/api/cards/{card['id']}")).json()["status"] == "active"


async def test_a_token_signed_by_another_key_with_the_same_kid_is_forged(app, holder, doctor_client):
    user, http = holder
    card = await _issue(http, user)
    kid = app.state.keys.card_key.kid
    forged = _card_token(ECKey.generate_key("P-256"), kid, cn=card["number"])
    _refused(await doctor_client.post("/api/cards/verify", json={"token": forged}), 422, "card-token-forged")
    # A real token whose payload was swapped for another card number keeps a signature that no longer fits.
    head, _, signature = (await _token(http, card["id"])).split(".")
    swapped = _b64url(json.dumps({"cn": "3700123412341234123", "exp": int(time.time()) + 60,
                                  "nonce": "x" * 16}).encode())
    _refused(await doctor_client.post("/api/cards/verify", json={"token": f"{head}.{swapped}.{signature}"}),
             422, "card-token-forged")
    # An access token is signed by this deployment too, but not by the card key.
    access = doctor_client.headers["Authorization"].removeprefix("Bearer ")
    _refused(await doctor_client.post("/api/cards/verify", json={"token": access}), 422, "card-token-forged")
    unsigned = _b64url(b'{"alg":"none","kid":"%s"}' % kid.encode()) + "." + swapped + "."
    _refused(await doctor_client.post("/api/cards/verify", json={"token": unsigned}), 422, "card-token-forged")


@pytest.mark.parametrize("token", [
    "not-a-token",
    "a.b.c",
    "%%%.%%%.%%%",
    _b64url(b'{"alg":"ES256"}') + "." + _b64url(b"not json") + "." + _b64url(b"sig"),
])
async def test_malformed_tokens_are_refused(doctor_client, token):
    _refused(await doctor_client.post("/api/cards/verify", json={"token": token}), 400, "card-token-malformed")


async def test_a_signed_token_without_card_number_or_nonce_is_malformed(app, doctor_client):
    key = app.state.keys.card_key
    for missing in ("cn", "nonce", "exp"):
        payload = {"cn": "3700000000000000000", "exp": int(time.time()) + 60, "nonce": "n" * 16}
        del payload[missing]
        token = jws.serialize_compact({"alg": "ES256", "kid": key.kid}, json.dumps(payload), key)
        _refused(await doctor_client.post("/api/cards/verify", json={"token": token}), 400, "card-token-malformed")


async def test_a_patient_or_an_administrator_cannot_verify(client, holder, admin_client, doctor_client):
    user, http = holder
    card = await _issue(http, user)
    token = await _token(http, card["id"])
    for who in (http, admin_client):
        _refused(await who.post("/api/cards/verify", json={"token": token}), 403, "not-allowed")
    unauthenticated = await client.post("/api/cards/verify", json={"token": token})
    assert unauthenticated.status_code == 401 and "Bearer" in unauthenticated.headers["www-authenticate"]
    # Refused attempts did not use the token up.
    assert (await doctor_client.post("/api/cards/verify", json={"token": token})).status_code == 200


# --- offline verification (the README's example) -------------------------------------------------


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Verifying an e-health card offline", 1)
    assert len(section) == 2, "README.md lacks the section 'Verifying an e-health card offline'"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block, "the README section has no python example"
    return block.group(1)


async def test_a_qr_token_verifies_offline_with_only_the_jwks_as_the_readme_shows(app, client, holder):
    user, http = holder
    card = await _issue(http, user)
    token = await _token(http, card["id"])
    jwks = (await client.get("/.well-known/jwks.json")).json()  # all an offline verifier has
    example = _readme_example()
    assert len(example.strip().splitlines()) <= 14, "the example stays about ten lines"
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    verify_card_token = namespace["verify_card_token"]

    claims = verify_card_token(token, jwks)
    assert claims["cn"] == card["number"] and claims["exp"] > time.time()

    key = app.state.keys.card_key
    refused = {
        "forged": _card_token(ECKey.generate_key("P-256"), key.kid, cn=card["number"]),
        "expired": _card_token(key, key.kid, cn=card["number"], exp=int(time.time()) - 1),
        "an access token": http.headers["Authorization"].removeprefix("Bearer "),
    }
    for why, bad in refused.items():
        with pytest.raises(Exception):  # noqa: B017 - joserfc's error or the example's own ValueError
            verify_card_token(bad, jwks)
            pytest.fail(f"{why} verified offline")
    # The public JWKS holds no private key material.
    assert all("d" not in k for k in jwks["keys"])
    assert KeySet.import_key_set(jwks).get_by_kid(key.kid)
