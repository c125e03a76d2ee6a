"""The consult tests' world: the server they drive, the people of a consult, holding one."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from qilu.identity import User
from sample_records import PASSWORD

GRACE_S = 1.5
# Small media keeps two busy cores enough for three peers, the hub and the recording.
SERVER_ENV = {"QILU_CONSULT_GRACE_S": str(GRACE_S), "QILU_CONSULT_RECORDING_WIDTH": "320",
              "QILU_CONSULT_RECORDING_HEIGHT": "240", "QILU_CONSULT_RECORDING_FPS": "10",
              "QILU_CONSULT_MESSAGES_PER_S": "20", "QILU_CONSULT_MESSAGE_BURST": "40",
              "QILU_CONSULT_JOIN_TIMEOUT_S": "10", "QILU_CONSULT_MESSAGE_MAX_BYTES": "65536"}



@dataclass
class ConsultServer:
    base: str
    process: subprocess.Popen

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://", 1)


@dataclass
class Person:
    user: User
    token: str
    http: httpx.AsyncClient

    @property
    def role(self) -> str:
        """The FHIR reference the person acts as (a PractitionerRole, or a Patient)."""
        return self.user.fhir_user


@dataclass
class ConsultPeople:
    host: Person  # a county doctor of the patient's hospital
    specialist: Person  # at another hospital
    second_specialist: Person
    outsider: Person  # a doctor nobody invited
    patient: Person
    admin: Person


async def sign_in(server: ConsultServer, user: User) -> Person:
    http = httpx.AsyncClient(base_url=server.base, timeout=30)
    response = await http.post("/api/auth/token", data={"username": user.login, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    http.headers["Authorization"] = f"Bearer {token}"
    return Person(user, token, http)


async def hold_consult(people: ConsultPeople, *, invite: list[Person] | None = None, invite_patient: bool = False,
                       **extra: Any) -> dict[str, Any]:
    """A stand-alone consult about the host's patient, scheduled now."""
    body = {"patient": people.patient.role, "invite": [p.role for p in (invite or [people.specialist])],
            "invitePatient": invite_patient, "scheduled": datetime.now(UTC).isoformat(), **extra}
    response = await people.host.http.post("/api/consults", json=body)
    assert response.status_code == 201, response.text
    return response.json()
