"""E-health cards (电子健康卡): one per resident, a FHIR Basic resource, shown as a signed QR token that lives 60 s.

The QR encodes a compact JWS (ES256, `kid` in the header) of {cn: card number, exp, nonce, iss}. Any hospital
verifies it against the public JWKS; this service also checks the card's status and that the token is used
once (its nonce is kept in Redis until it expires).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey

from ehr.access import CARD_ISSUE, Reach, decide_by_role
from ehr.models import RecordError
from ehr.service import RecordService, identifier_key
from fhir_profiles.extensions import EHEALTH_CARD_STATUS_URL, ehealth_card_status_extension, read_ehealth_card_status
from fhir_profiles.identifiers import EHEALTH_CARD_SYSTEM, NATIONAL_ID_SYSTEM, mask_national_id
from fhir_profiles.profiles import EHEALTH_CARD_CODE, EHEALTH_CARD_CODE_SYSTEM, EHEALTH_CARD_PROFILE_URL
from qilu.auth import Caller

QR_TOKEN_TTL_S = 60
TOKEN_TYPE = "ehc+jws"
# Allowed moves between card states, by action.
TRANSITIONS = {"suspend": ({"active"}, "suspended"), "reactivate": ({"suspended"}, "active"),
               "revoke": ({"active", "suspended"}, "revoked")}


class CardRefused(Exception):
    """A card request refused with a machine code each scanner can show its own words for."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _luhn_digit(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def new_card_number() -> str:
    """19 digits: 3700 (Shandong), 14 random digits, a Luhn check digit against typing errors at a desk."""
    body = "3700" + f"{secrets.randbelow(10 ** 14):014d}"
    return body + _luhn_digit(body)


def _name_on_file(patient: dict[str, Any]) -> set[str]:
    names = set()
    for name in patient.get("name") or []:
        if name.get("text"):
            names.add(name["text"].replace(" ", ""))
        family, given = name.get("family") or "", "".join(name.get("given") or [])
        if family or given:
            names.add(family + given)
            names.add(given + family)
    return names


def _national_id(patient: dict[str, Any]) -> str | None:
    for identifier in patient.get("identifier") or []:
        if identifier.get("system") == NATIONAL_ID_SYSTEM:
            return identifier.get("value")
    return None


@dataclass(frozen=True)
class CardView:
    card: dict[str, Any]

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def number(self) -> str:
        return next(i["value"] for i in self.card["identifier"] if i["system"] == EHEALTH_CARD_SYSTEM)

    @property
    def status(self) -> str:
        return read_ehealth_card_status(self.card) or "active"

    @property
    def patient(self) -> str:
        return self.card["subject"]["reference"]

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "number": self.number, "status": self.status, "patient": self.patient,
                "issuer": (self.card.get("author") or {}).get("reference"), "issued": self.card.get("created"),
                "versionId": self.card["meta"]["versionId"]}


class CardService:
    def __init__(self, records: RecordService, redis, card_key: ECKey, issuer: str):
        # The record is read and written as the system; this service applies the card's own rules.
        self.records = records
        self.redis = redis
        self.card_key = card_key
        self.issuer = issuer

    async def _reach(self, caller: Caller) -> Reach:
        return Reach(caller, self.records.store)

    async def _may_act_for(self, caller: Caller, patient_ref: str, action: str = "card") -> bool:
        """The access policy's answer for the card: its holder, or a registrar of the hospital that manages
        them (`card`, `card-issue`); the QR code, its holder only (`card-qr`)."""
        decision = await (await self._reach(caller)).decide_about(action, patient_ref.removeprefix("Patient/"))
        return decision.allowed

    async def _card(self, card_id: str) -> CardView:
        try:
            document = await self.records.read("Basic", card_id)
        except RecordError:
            raise CardRefused(404, "card-unknown", f"Card {card_id} is not known") from None
        card = document["resource"]
        if EHEALTH_CARD_PROFILE_URL not in (card.get("meta") or {}).get("profile", []):
            raise CardRefused(404, "card-unknown", f"Card {card_id} is not known")
        return CardView(card)

    async def _visible_card(self, caller: Caller, card_id: str) -> CardView:
        card = await self._card(card_id)
        if not await self._may_act_for(caller, card.patient):
            raise CardRefused(404, "card-unknown", f"Card {card_id} is not known")  # reveals nothing
        return card

    # --- issue, read, change status ---------------------------------------------------------------

    async def issue(self, caller: Caller, patient_ref: str, national_id: str, name: str) -> dict[str, Any]:
        patient_ref = patient_ref if patient_ref.startswith("Patient/") else f"Patient/{patient_ref}"
        if not await self._may_act_for(caller, patient_ref, "card-issue"):
            raise CardRefused(403, "not-allowed", CARD_ISSUE)
        patient = (await self.records.read("Patient", patient_ref.removeprefix("Patient/")))["resource"]
        on_file = _national_id(patient)
        if on_file is None or on_file.upper() != national_id.strip().upper():
            raise CardRefused(422, "identity-mismatch", "The national ID number does not match the one on file")
        if name.replace(" ", "") not in _name_on_file(patient):
            raise CardRefused(422, "identity-mismatch", "The name does not match the name on file")
        card_id = secrets.token_hex(12)
        # The claim on "one active card per patient" is taken first, so two issues at once give one card.
        active_key = f"active-ehealth-card|{patient_ref}"
        if await self.records.store.claim_identifier(active_key, f"Basic/{card_id}") is not None:
            raise CardRefused(409, "card-exists", "This patient already has a card; revoke it before re-issuing")
        try:
            number = new_card_number()
            card = {
                "resourceType": "Basic", "id": card_id, "meta": {"profile": [EHEALTH_CARD_PROFILE_URL]},
                "extension": [ehealth_card_status_extension("active")],
                "identifier": [{"system": EHEALTH_CARD_SYSTEM, "value": number}],
                "code": {"coding": [{"system": EHEALTH_CARD_CODE_SYSTEM, "code": EHEALTH_CARD_CODE,
                                     "display": "电子健康卡 e-health card"}]},
                "subject": {"reference": patient_ref},
                "created": datetime.now(UTC).date().isoformat(),
            }
            if caller.organization:
                card["author"] = {"reference": caller.organization}
            written = await self.records.update("Basic", card_id, card)
            await self._set_patient_card_number(patient_ref, number)
        except BaseException:
            await self.records.store.release_identifier(active_key, f"Basic/{card_id}")
            raise
        return CardView(written.resource).summary()

    async def _set_patient_card_number(self, patient_ref: str, number: str | None) -> None:
        patient_id = patient_ref.removeprefix("Patient/")
        for _ in range(3):  # re-read on a concurrent edit of the Patient
            document = await self.records.read("Patient", patient_id)
            patient = dict(document["resource"])
            identifiers = [i for i in patient.get("identifier") or [] if i.get("system") != EHEALTH_CARD_SYSTEM]
            if number:
                identifiers.append({"system": EHEALTH_CARD_SYSTEM, "value": number,
                                    "type": {"text": "电子健康卡号 e-health card number"}})
            patient["identifier"] = identifiers
            try:
                await self.records.update("Patient", patient_id, patient, if_match=f'W/"{document["vid"]}"')
                return
            except RecordError as exc:
                if exc.status != 412:
                    raise
        raise CardRefused(409, "busy", "The patient's record is being changed; try again")

    async def get(self, caller: Caller, card_id: str) -> dict[str, Any]:
        return (await self._visible_card(caller, card_id)).summary()

    async def change_status(self, caller: Caller, card_id: str, action: str) -> dict[str, Any]:
        card = await self._visible_card(caller, card_id)
        allowed_from, target = TRANSITIONS[action]
        if card.status not in allowed_from:
            raise CardRefused(409, "card-state", f"The card is {card.status}; it cannot be {action}d")
        updated = dict(card.card)
        updated["extension"] = [e for e in updated.get("extension") or [] if e.get("url") != EHEALTH_CARD_STATUS_URL]
        updated["extension"].append(ehealth_card_status_extension(target))
        try:
            written = await self.records.update("Basic", card.id, updated,
                                                if_match=f'W/"{card.card["meta"]["versionId"]}"')
        except RecordError as exc:
            if exc.status == 412:
                raise CardRefused(409, "card-state", "The card was changed at the same moment; reload it") from None
            raise
        if target == "revoked":
            await self.records.store.release_identifier(f"active-ehealth-card|{card.patient}", f"Basic/{card.id}")
            await self._set_patient_card_number(card.patient, None)
        return CardView(written.resource).summary()

    async def card_of_patient(self, caller: Caller) -> dict[str, Any] | None:
        """The caller's own current card (active or suspended), for the patient portal."""
        if caller.patient_id is None:
            return None
        owner = await self.records.store.identifier_owner(f"active-ehealth-card|{caller.fhir_user}")
        if owner is None:
            return None
        return (await self._card(owner.removeprefix("Basic/"))).summary()

    # --- the QR token -----------------------------------------------------------------------

    async def qr_token(self, caller: Caller, card_id: str) -> tuple[str, int]:
        card = await self._card(card_id)
        if not await self._may_act_for(caller, card.patient, "card-qr"):
            raise CardRefused(404, "card-unknown", f"Card {card_id} is not known")  # only the holder sees it
        if card.status != "active":
            raise CardRefused(409, f"card-{card.status}", f"The card is {card.status}; it shows no QR code")
        expires = int(time.time()) + QR_TOKEN_TTL_S
        payload = {"cn": card.number, "exp": expires, "nonce": secrets.token_urlsafe(12), "iss": self.issuer}
        header = {"alg": "ES256", "kid": self.card_key.kid, "typ": TOKEN_TYPE}
        token = jws.serialize_compact(header, json.dumps(payload, separators=(",", ":")), self.card_key,
                                      algorithms=["ES256"])
        return token, expires

    async def verify(self, caller: Caller, token: str) -> dict[str, Any]:
        decision = decide_by_role("card-verify", caller.role)
        if not decision.allowed:
            raise CardRefused(403, "not-allowed", decision.rule)
        try:
            compact = jws.extract_compact(token.strip().encode())
            header = compact.protected
            payload = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError, AttributeError):
            raise CardRefused(400, "card-token-malformed", "This is not an e-health card code") from None
        if header.get("alg") != "ES256" or header.get("kid") != self.card_key.kid:
            raise CardRefused(422, "card-token-forged", "The code was not signed by this province's card key")
        try:
            jws.deserialize_compact(token.strip(), self.card_key, algorithms=["ES256"])
        except (BadSignatureError, JoseError, ValueError):
            raise CardRefused(422, "card-token-forged", "The code's signature does not verify") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int) or not payload.get("cn") \
                or not payload.get("nonce"):
            raise CardRefused(400, "card-token-malformed", "The code lacks its card number, expiry or nonce")
        remaining = payload["exp"] - int(time.time())
        if remaining <= 0:
            raise CardRefused(422, "card-token-expired", "The code has expired; ask the patient to refresh it")
        # SET NX: the first scan keeps the nonce until the token expires; any other scan is a replay.
        first_use = await self.redis.set(f"qilu:card-nonce:{payload['nonce']}", "1", nx=True, ex=remaining + 5)
        if not first_use:
            raise CardRefused(422, "card-token-replayed", "This code was already scanned; ask for a fresh one")
        card = await self._card_by_number(str(payload["cn"]))
        if card.status != "active":
            raise CardRefused(422, f"card-{card.status}", f"The card is {card.status}")
        patient = (await self.records.read("Patient", card.patient.removeprefix("Patient/")))["resource"]
        name = (patient.get("name") or [{}])[0]
        national_id = _national_id(patient)
        return {"patient": card.patient,
                "name": name.get("text") or (name.get("family", "") + "".join(name.get("given") or [])),
                "gender": patient.get("gender"), "birthDate": patient.get("birthDate"),
                "nationalId": mask_national_id(national_id) if national_id else None,
                "card": {"id": card.id, "number": card.number, "status": card.status}}

    async def _card_by_number(self, number: str) -> CardView:
        # One lookup by key, however many cards the province has issued.
        owner = await self.records.store.identifier_owner(identifier_key("Basic", EHEALTH_CARD_SYSTEM, number))
        if owner is None:
            raise CardRefused(422, "card-unknown", "No card has this number")
        return await self._card(owner.removeprefix("Basic/"))
