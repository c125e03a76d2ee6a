"""Who is calling: ES256 access tokens and rotating refresh tokens, the caller of a request, and the auth routes."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from qilu.identity import LoginRefused, User, UserDirectory
from qilu.keys import SigningKeys
from qilu.problems import Problem
from qilu.settings import Settings

log = structlog.get_logger("qilu.auth")
router = APIRouter(tags=["auth"])

TOKEN_COOKIE = "qilu_token"
_SCOPES = {
    "patient": "openid fhirUser launch/patient patient/*.read",
    "practitioner": "openid fhirUser user/*.read user/*.write",
    "admin": "openid user/Organization.* user/Location.* user/HealthcareService.* user/Practitioner.* "
             "user/PractitionerRole.* user/AuditEvent.read",
}


@dataclass(frozen=True)
class Caller:
    """The authenticated person behind a request, as the access rules need them."""

    user_id: str
    role: str
    fhir_user: str | None
    organization: str | None
    practitioner: str | None
    scopes: tuple[str, ...]
    name: str = ""

    @property
    def patient_id(self) -> str | None:
        if self.role == "patient" and self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.removeprefix("Patient/")
        return None

    @property
    def who(self) -> str:
        """The FHIR reference the audit trail names for this caller."""
        return self.fhir_user or f"urn:qilu:user:{self.user_id}"

    @classmethod
    def of(cls, user: User) -> Caller:
        return cls(user.id, user.role, user.fhir_user, user.organization, user.practitioner,
                   tuple(_SCOPES[user.role].split()), user.display_name)


def unauthenticated(detail: str, error: str = "invalid_token") -> Problem:
    challenge = f'Bearer realm="qilu", error="{error}", error_description="{detail}"'
    return Problem(401, "Not authenticated", detail, issue_code="login",
                   headers={"WWW-Authenticate": challenge if error else 'Bearer realm="qilu"'})


SIGNATURE_TRUSTED_S = 60.0
SIGNATURES_KEPT = 10_000


class TokenService:
    def __init__(self, settings: Settings, keys: SigningKeys, redis, users: UserDirectory):
        self.settings = settings
        self.keys = keys
        self.redis = redis
        self.users = users
        self._own_keys = keys.token_key_set()
        self._external_keys: KeySet | None = None
        self._external_fetched = 0.0
        # Token -> (when verified, its claims): a client sends the same token with every request, and checking
        # an ES256 signature costs more than the rest of a read's own work. The claims are still validated
        # (expiry included) on every use; an entry is trusted for a minute at most, so a key taken out of the
        # set stops counting within that minute.
        self._signatures_checked: dict[str, tuple[float, dict[str, Any]]] = {}

    # --- issuing ----------------------------------------------------------------------------

    def access_token(self, user: User) -> tuple[str, int]:
        now = int(time.time())
        ttl = self.settings.access_token_ttl_s
        claims: dict[str, Any] = {
            "iss": self.settings.token_issuer, "aud": self.settings.token_audience, "sub": user.id,
            "iat": now, "nbf": now, "exp": now + ttl, "jti": uuid.uuid4().hex, "role": user.role,
            "scope": _SCOPES[user.role], "fhirUser": user.fhir_user, "org": user.organization,
            "prac": user.practitioner, "name": user.display_name,
        }
        header = {"alg": "ES256", "kid": self.keys.token_key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.keys.token_key, algorithms=["ES256"]), ttl

    async def token_response(self, user: User) -> dict[str, Any]:
        token, ttl = self.access_token(user)
        refresh = secrets.token_urlsafe(32)
        # The user and when the session began, so a password reset after it ends it (see User.sessions_since).
        await self.redis.set(self._refresh_key(refresh), f"{user.id} {int(time.time())}",
                             ex=self.settings.refresh_token_ttl_s)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": ttl, "refresh_token": refresh,
                "scope": _SCOPES[user.role], "role": user.role, "fhirUser": user.fhir_user}
        if user.role == "patient" and user.fhir_user:
            body["patient"] = user.fhir_user.removeprefix("Patient/")
        return body

    @staticmethod
    def _refresh_key(token: str) -> str:
        return "qilu:refresh:" + hashlib.sha256(token.encode()).hexdigest()

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        # GETDEL makes a refresh token single-use: a stolen, already-used one is worth nothing.
        stored = await self.redis.getdel(self._refresh_key(refresh_token))
        user_id, _, began = (stored or b"").decode().partition(" ")
        user = await self.users.get(user_id) if user_id else None
        if user is None or int(began or 0) < user.sessions_since:
            raise Problem(400, "Invalid refresh token", "The refresh token is unknown, used or expired; log in again.",
                          extra={"error": "invalid_grant"})
        return await self.token_response(user)

    # --- verifying --------------------------------------------------------------------------

    async def caller(self, token: str) -> Caller:
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise unauthenticated("The token is not a well-formed JWT") from None
        if header.get("alg") != "ES256":
            raise unauthenticated("Only ES256-signed tokens are accepted")
        if self.settings.oidc_issuer and header.get("kid") not in {k.kid for k in self._own_keys.keys}:
            return await self._external_caller(token)
        claims = self._verified_claims(token, self._own_keys, self.settings.token_issuer, self.settings.token_audience,
                                       self._signatures_checked)
        user = await self.users.get(claims["sub"])  # a deactivated user loses access at once
        if user is None or user.role != claims.get("role"):
            raise unauthenticated("The token's user is no longer active")
        if int(claims.get("iat") or 0) < user.sessions_since:
            raise unauthenticated("The session ended when the password was changed; log in again")
        return Caller.of(user)

    @staticmethod
    def _verified_claims(token: str, keys: KeySet, issuer: str, audience: str,
                         checked: dict[str, tuple[float, dict[str, Any]]] | None = None) -> dict[str, Any]:
        now = time.monotonic()
        earlier = checked.get(token) if checked is not None else None
        if earlier is not None and now - earlier[0] < SIGNATURE_TRUSTED_S:
            claims = earlier[1]
        else:
            try:
                claims = jwt.decode(token, keys, algorithms=["ES256"]).claims
            except (JoseError, ValueError):
                raise unauthenticated("The token's signature does not verify") from None
            if checked is not None:
                if len(checked) >= SIGNATURES_KEPT:
                    checked.clear()  # a burst of distinct tokens: start over rather than track ages
                checked[token] = (now, claims)
        registry = jwt.JWTClaimsRegistry(
            leeway=30, iss={"essential": True, "value": issuer}, aud={"essential": True, "value": audience},
            exp={"essential": True}, sub={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise unauthenticated(f"The token is not valid here: {exc.description or exc.error}") from None
        return claims

    async def _external_caller(self, token: str) -> Caller:
        keys = await self._external_key_set()
        claims = self._verified_claims(token, keys, self.settings.oidc_issuer, self.settings.oidc_audience)
        login = claims.get("preferred_username") or claims["sub"]
        user = await self.users.by_login(str(login))
        user = user and await self.users.get(user.id)  # a deactivated user loses access here too
        if user is None:
            raise unauthenticated("No Qilu user is linked to this identity")
        return Caller.of(user)

    async def _external_key_set(self) -> KeySet:
        # Cached for ten minutes; the issuer's keys rotate rarely.
        if self._external_keys is None or time.monotonic() - self._external_fetched > 600:
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    response = await http.get(self.settings.oidc_jwks_url)
                    response.raise_for_status()
                self._external_keys = KeySet.import_key_set(response.json())
                self._external_fetched = time.monotonic()
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                log.warning("external JWKS unavailable", error=str(exc))
                raise Problem(503, "Identity service unavailable",
                              "The provincial identity service's keys could not be fetched") from None
        return self._external_keys


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE)


async def optional_caller(request: Request) -> Caller | None:
    token = _bearer(request)
    if token is None:
        return None
    caller = await request.app.state.tokens.caller(token)
    request.state.caller = caller
    request.app.state.denials.check(caller)  # a caller probing with refused requests is held back
    return caller


async def current_caller(request: Request) -> Caller:
    caller = await optional_caller(request)
    if caller is None:
        raise unauthenticated("Log in first: send an access token as 'Authorization: Bearer ...'", error="")
    return caller


CurrentCaller = Annotated[Caller, Depends(current_caller)]


async def still_admitted(request: Request) -> bool:
    """For a response that stays open (a live feed): whether the token it was opened with still admits its caller,
    i.e. it has not expired, the user was not deactivated and no password change ended the session."""
    token = _bearer(request)
    if token is None:
        return False
    try:
        await request.app.state.tokens.caller(token)
    except Problem:
        return False
    return True


@router.post("/api/auth/token")
async def issue_token(request: Request, grant_type: Annotated[str, Form()] = "password",
                      username: Annotated[str | None, Form()] = None, password: Annotated[str | None, Form()] = None,
                      refresh_token: Annotated[str | None, Form()] = None) -> JSONResponse:
    tokens: TokenService = request.app.state.tokens
    if grant_type == "refresh_token":
        if not refresh_token:
            raise Problem(400, "Missing refresh token", "grant_type=refresh_token needs refresh_token",
                          extra={"error": "invalid_request"})
        return JSONResponse(await tokens.refresh(refresh_token), headers={"Cache-Control": "no-store"})
    if grant_type != "password":
        raise Problem(400, "Unsupported grant type", "Use grant_type=password or refresh_token",
                      extra={"error": "unsupported_grant_type"})
    if not username or not password:
        raise Problem(400, "Missing credentials", "Send username and password", extra={"error": "invalid_request"})
    try:
        user = await tokens.users.authenticate(username, password)
    except LoginRefused as refused:
        log.info("login refused", reason=refused.reason)
        if refused.reason == "locked":
            raise Problem(429, "Account locked", "Too many failed logins; try again later.",
                          headers={"Retry-After": str(refused.retry_after_s)},
                          extra={"error": "invalid_grant"}) from None
        raise Problem(401, "Login failed", "The login or the password is wrong.",
                      headers={"WWW-Authenticate": 'Bearer realm="qilu"'}, extra={"error": "invalid_grant"}) from None
    log.info("login", role=user.role)
    return JSONResponse(await tokens.token_response(user), headers={"Cache-Control": "no-store"})


@router.get("/api/me")
async def me(caller: CurrentCaller) -> dict[str, Any]:
    return {"id": caller.user_id, "role": caller.role, "name": caller.name, "fhirUser": caller.fhir_user,
            "organization": caller.organization, "practitioner": caller.practitioner, "scopes": list(caller.scopes)}


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.keys.public_jwks(), headers={"Cache-Control": "public, max-age=300"})
