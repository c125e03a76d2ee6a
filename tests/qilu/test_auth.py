"""Identity and tokens: logins of every role, lock-out, refresh rotation, and every way a token can be bad."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from qilu.accounts import add_user
from qilu.app import create_app
from sample_records import PASSWORD


@pytest.fixture(scope="module")
def people(world):
    return {"patient": world.patient, "doctor": world.doctor, "admin": world.admin, "org": world.home}


async def _login(client, login, password=PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/token", data={"grant_type": "password", "username": login,
                                                      "password": password})


async def test_each_role_logs_in_and_me_says_who_they_are(client, people):
    for role in ("patient", "doctor", "admin"):
        user = people[role]
        response = await _login(client, user.login)
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        me = (await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})).json()
        assert me["role"] == user.role and me["fhirUser"] == user.fhir_user
    doctor_me = (await client.get("/api/me", headers={"Authorization": "Bearer " + (
        await _login(client, people["doctor"].login)).json()["access_token"]})).json()
    assert doctor_me["organization"] == people["org"] and doctor_me["fhirUser"].startswith("PractitionerRole/")
    assert "user/*.write" in doctor_me["scopes"]


async def test_the_access_token_is_es256_with_the_users_claims_and_verifies_with_the_jwks(client, people):
    body = (await _login(client, people["patient"].login)).json()
    jwks = (await client.get("/.well-known/jwks.json")).json()
    decoded = jwt.decode(body["access_token"], KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.header["alg"] == "ES256" and decoded.header["kid"]
    assert decoded.claims["fhirUser"] == people["patient"].fhir_user
    assert decoded.claims["role"] == "patient" and "patient/*.read" in decoded.claims["scope"]
    assert decoded.claims["exp"] > time.time()
    assert body["patient"] == people["patient"].fhir_user.removeprefix("Patient/")


async def test_a_wrong_password_is_401_problem_json_and_unknown_login_looks_the_same(client, people):
    wrong = await _login(client, people["doctor"].login, "not the password")
    unknown = await _login(client, "nobody-" + uuid.uuid4().hex, "not the password")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "The login or the password is wrong."


async def test_repeated_failures_lock_the_account_even_for_the_right_password(client, app, people):
    org = people["org"]
    login = f"L{uuid.uuid4().hex[:8]}"
    await add_user(app.state.db, "http://testserver/fhir", role="practitioner", login=login, password=PASSWORD,
                   name="赵医生", organization=org)
    statuses = [(await _login(client, login, f"guess {i}")).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    locked = await _login(client, login)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0


async def test_refresh_tokens_rotate_and_work_once(client, people):
    first = (await _login(client, people["doctor"].login)).json()
    second = await client.post("/api/auth/token", data={"grant_type": "refresh_token",
                                                        "refresh_token": first["refresh_token"]})
    assert second.status_code == 200 and second.json()["refresh_token"] != first["refresh_token"]
    reused = await client.post("/api/auth/token", data={"grant_type": "refresh_token",
                                                        "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(app, people, **changes) -> dict:
    now = int(time.time())
    claims = {"iss": app.state.settings.token_issuer, "aud": app.state.settings.token_audience,
              "sub": people["doctor"].id, "iat": now, "exp": now + 300, "role": "practitioner"}
    claims.update(changes)
    return claims


async def test_bad_tokens_are_401_with_www_authenticate(client, app, people):
    own_key = app.state.keys.token_key
    stranger = ECKey.generate_key("P-256")
    header = {"alg": "ES256", "kid": own_key.kid}
    good = jwt.encode(header, _claims(app, people), own_key)
    assert (await client.get("/api/me", headers={"Authorization": f"Bearer {good}"})).status_code == 200
    head, payload, signature = good.split(".")
    bad_tokens = {
        "expired": jwt.encode(header, _claims(app, people, exp=int(time.time()) - 3600), own_key),
        "wrong signature": jwt.encode(header, _claims(app, people), stranger),
        "wrong audience": jwt.encode(header, _claims(app, people, aud="someone-else"), own_key),
        "wrong issuer": jwt.encode(header, _claims(app, people, iss="https://evil.example"), own_key),
        "alg none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims(app, people)) + ".",
        "tampered claims": head + "." + _b64(_claims(app, people, role="admin", sub=people["admin"].id)) + "." +
                           signature,
        "garbage": "not-a-token",
    }
    for why, token in bad_tokens.items():
        response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, why
        assert response.headers["www-authenticate"].startswith("Bearer"), why
    missing = await client.get("/api/me")
    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]


async def test_a_token_already_seen_is_still_refused_once_it_expires(client, app, people):
    """Signatures are checked once per token, the expiry on every request: a token accepted a moment ago
    is refused as soon as its time (plus the 30 s leeway) is up."""
    own_key = app.state.keys.token_key
    header = {"alg": "ES256", "kid": own_key.kid}
    token = jwt.encode(header, _claims(app, people, exp=int(time.time()) - 29), own_key)
    assert (await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    await asyncio.sleep(2.1)
    late = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert late.status_code == 401 and "expired" in late.headers["www-authenticate"]


async def test_the_cookie_carries_the_same_token(client, people):
    token = (await _login(client, people["patient"].login)).json()["access_token"]
    response = await client.get("/api/me", headers={"Cookie": f"qilu_token={token}"})
    assert response.status_code == 200 and response.json()["role"] == "patient"


class _JwksHandler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


ISSUER = "https://id.province.example"


@asynccontextmanager
async def app_trusting_an_external_issuer(settings) -> AsyncIterator[tuple[httpx.AsyncClient, ECKey, str]]:
    """A second app configured with an external OIDC issuer whose JWKS a loopback HTTP server serves."""
    issuer_key = ECKey.generate_key("P-256", auto_kid=True)
    _JwksHandler.body = json.dumps({"keys": [issuer_key.as_dict(private=False)]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    own = settings.model_copy(update={"oidc_issuer": ISSUER,
                                      "oidc_jwks_url": f"http://127.0.0.1:{server.server_port}/jwks"})
    app = create_app(own)
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
                yield http, issuer_key, own.oidc_audience
    finally:
        server.shutdown()


def _external_token(issuer_key: ECKey, audience: str, login: str, issuer: str = ISSUER) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": f"ext-{login}", "iat": now, "exp": now + 300,
              "preferred_username": login}
    return jwt.encode({"alg": "ES256", "kid": issuer_key.kid}, claims, issuer_key)


async def test_tokens_of_a_configured_external_issuer_are_accepted(settings, people):
    async with app_trusting_an_external_issuer(settings) as (http, issuer_key, audience):
        token = _external_token(issuer_key, audience, people["doctor"].login)
        me = await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["fhirUser"] == people["doctor"].fhir_user
        forged = _external_token(issuer_key, audience, people["doctor"].login, issuer="https://other.example")
        assert (await http.get("/api/me", headers={"Authorization": f"Bearer {forged}"})).status_code == 401


async def test_a_deactivated_user_loses_access_at_once_with_own_or_external_tokens(app, settings, world):
    login = f"D{uuid.uuid4().hex[:8]}"
    user = await add_user(app.state.db, "http://testserver/fhir", role="practitioner", login=login,
                          password=PASSWORD, name="周医生", organization=world.home)
    async with app_trusting_an_external_issuer(settings) as (http, issuer_key, audience):
        own_token = (await _login(http, login)).json()["access_token"]
        external_token = _external_token(issuer_key, audience, login)
        for token in (own_token, external_token):
            me = await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["id"] == user.id
        await app.state.users.change(user.id, {"active": False})  # as the administrators' page does
        for why, token in (("own", own_token), ("external", external_token)):
            me = await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 401, why
            assert me.headers["www-authenticate"].startswith("Bearer"), why
        assert (await _login(http, login)).status_code == 401
