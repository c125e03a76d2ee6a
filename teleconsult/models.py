"""What a consult is: the request bodies, the signaling messages, the room's states and the FHIR it writes."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# scheduled -> live (first join) -> ended (the host ends it, or it stays empty for the grace period).
RoomStatus = Literal["scheduled", "live", "ended"]
ENCOUNTER_STATUS = {"scheduled": "planned", "live": "in-progress", "ended": "finished"}
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSULT_IDENTIFIER_SYSTEM = "urn:qilu:consult"
RECORDING_SHA256_SYSTEM = "urn:qilu:recording-sha256"
OPINION_SECTION = "consult opinion"
REFERENCE_PATTERN = r"^[A-Z][A-Za-z]{1,40}/[A-Za-z0-9\-.]{1,64}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


class ConsultBody(StrictModel):
    """A consult to hold: about a referral the caller can see, or stand-alone about a patient."""

    referral: str | None = Field(default=None, max_length=64, description="the referral's id")
    patient: str | None = Field(default=None, max_length=80, description="Patient/{id}; implied by a referral")
    invite: list[Annotated[str, Field(pattern=r"^PractitionerRole/[A-Za-z0-9\-.]{1,64}$")]] = Field(
        min_length=1, max_length=12, description="the specialists and colleagues invited, as PractitionerRoles")
    invite_patient: bool = Field(default=False, alias="invitePatient")
    scheduled: datetime
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("scheduled")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give the scheduled time with its UTC offset, e.g. 2024-05-03T09:00:00+08:00")
        return value.astimezone(UTC)


class OpinionBody(StrictModel):
    text: str = Field(min_length=1, max_length=20000)
    title: str | None = Field(default=None, max_length=200)
    status: Literal["preliminary", "final"] = "final"


# --- signaling: what a client may send over the WebSocket ----------------------------------------------

class JoinMessage(StrictModel):
    type: Literal["join"]
    consent: bool = Field(description="whether this participant agrees to the consult being recorded")


class OfferMessage(StrictModel):
    type: Literal["offer"]
    sdp: str = Field(max_length=200_000)


class AnswerMessage(StrictModel):
    type: Literal["answer"]
    sdp: str = Field(min_length=1, max_length=200_000)


class CandidateMessage(StrictModel):
    type: Literal["candidate"]
    candidate: str = Field(max_length=1000, description="an a=candidate line's value; empty: end of candidates")
    sdpMid: str | None = Field(default=None, max_length=32)
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=1000)


class LeaveMessage(StrictModel):
    type: Literal["leave"]


class ChatMessage(StrictModel):
    type: Literal["chat"]
    text: str = Field(min_length=1, max_length=2000)


class ShareMessage(StrictModel):
    type: Literal["share"]
    reference: str = Field(pattern=REFERENCE_PATTERN, description="a FHIR reference the sender can read")
    note: str | None = Field(default=None, max_length=500)


ClientMessage = Annotated[JoinMessage | OfferMessage | AnswerMessage | CandidateMessage | LeaveMessage | ChatMessage
                          | ShareMessage, Field(discriminator="type")]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The consult room as API clients and portals see it."""
    recording = doc.get("recording") or {}
    return {
        "id": doc["_id"], "status": doc["status"], "encounter": doc["encounter"], "patient": doc["patient"],
        "referral": doc.get("referral"), "host": doc["host"], "invited": doc["invited"],
        "invitePatient": doc.get("invite_patient", False), "scheduled": _instant(doc["scheduled"]),
        "reason": doc.get("reason"), "created": _instant(doc["created"]), "started": _instant(doc.get("started")),
        "ended": _instant(doc.get("ended")), "endReason": doc.get("end_reason"),
        "recording": {
            "status": recording.get("status", "none"), "seconds": recording.get("seconds"),
            "durationS": recording.get("duration_s"), "size": recording.get("size"),
            "sha256": recording.get("sha256"), "documentReference": recording.get("document_reference"),
            "url": f"/api/consults/{doc['_id']}/recording" if recording.get("path") else None,
        },
    }


def encounter(consult_id: str, patient: str, host: str, invited: list[str], scheduled: datetime,
              organization: str | None, referral: str | None, reason: str | None) -> dict[str, Any]:
    """The consult as a planned virtual Encounter (class VR) of the patient."""
    participants = [{"type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "PPRF",
                                           "display": "primary performer"}]}], "individual": {"reference": host}}]
    participants += [{"type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "CON", "display": "consultant"}]}],
                      "individual": {"reference": role}} for role in invited]
    resource: dict[str, Any] = {
        "resourceType": "Encounter", "status": "planned",
        "identifier": [{"system": CONSULT_IDENTIFIER_SYSTEM, "value": consult_id}],
        "class": {"system": V3_ACT_CODE, "code": "VR", "display": "virtual"},
        "type": [{"text": "远程会诊 Remote consultation"}],
        "subject": {"reference": patient}, "participant": participants,
        "period": {"start": _instant(scheduled)},
    }
    if organization:
        resource["serviceProvider"] = {"reference": organization}
    if referral:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{referral}"}]
    if reason:
        resource["reasonCode"] = [{"text": reason}]
    return resource


def communication(consult_id: str, patient: str, sender: str, recipients: list[str], sent: datetime, *,
                  text: str | None = None, reference: str | None = None) -> dict[str, Any]:
    """One chat line, or one shared record, kept in the record under the consult's Encounter."""
    payload: list[dict[str, Any]] = []
    if text:
        payload.append({"contentString": text})
    if reference:
        payload.append({"contentReference": {"reference": reference}})
    resource: dict[str, Any] = {
        "resourceType": "Communication", "status": "completed",
        "category": [{"text": "consult-share" if reference else "consult-chat"}],
        "subject": {"reference": patient}, "encounter": {"reference": f"Encounter/{consult_id}"},
        "sent": _instant(sent), "sender": {"reference": sender}, "payload": payload,
    }
    if recipients:
        resource["recipient"] = [{"reference": r} for r in recipients]
    return resource


def opinion_composition(consult_id: str, patient: str, author: str, body: OpinionBody, now: datetime
                        ) -> dict[str, Any]:
    """The specialist's consult note: a Composition whose section "consult opinion" holds the text."""
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in body.text.splitlines() if line.strip())
    return {
        "resourceType": "Composition", "status": body.status,
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}]},
        "subject": {"reference": patient}, "encounter": {"reference": f"Encounter/{consult_id}"},
        "date": _instant(now), "author": [{"reference": author}],
        "title": body.title or "远程会诊意见 Consult opinion",
        "section": [{"title": OPINION_SECTION, "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{paragraphs or html.escape(body.text)}</div>'}}],
    }
