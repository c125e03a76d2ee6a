"""What a referral is: the request bodies, the workflow's moves, and the FHIR ServiceRequest + Task it serves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["up", "down"]
Priority = Literal["routine", "urgent", "asap", "stat"]
Action = Literal["receive", "accept", "reject", "schedule", "arrive", "complete", "cancel", "refer-back"]
PRIORITY_ORDER = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
# FHIR Task.status values a referral passes through.
OPEN_STATUSES = ("requested", "received", "accepted", "in-progress")
WAITING_STATUSES = ("requested", "received")  # not yet accepted: the deadline runs
CLOSED_STATUSES = ("rejected", "completed", "cancelled", "failed")
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
REFERRAL_IDENTIFIER_SYSTEM = "urn:qilu:referral"
# The Redis stream the outbox appends referral events to and the portals' live feeds read from.
EVENTS_STREAM = "qilu:referral-events"
# How many events the stream keeps for listeners that come back after a loss (about a busy day's worth).
EVENTS_KEPT = 10_000
# A position in the stream, as Redis writes it: "<milliseconds>-<sequence>".
EVENT_POSITION = r"^[0-9]{1,20}-[0-9]{1,20}$"


class Move(BaseModel):
    """One allowed transition: from which states, to which, who may make it."""

    model_config = ConfigDict(frozen=True)
    sources: tuple[str, ...]
    target: str
    side: Literal["target", "origin"]
    business_status: str | None = None
    needs_scheduled: bool = False


# The strict workflow (Task.status in FHIR terms). Anything not here is a 409 naming the current state.
MOVES: dict[str, Move] = {
    "receive": Move(sources=("requested",), target="received", side="target"),
    "accept": Move(sources=("received",), target="accepted", side="target"),
    "reject": Move(sources=("received",), target="rejected", side="target"),
    "schedule": Move(sources=("accepted",), target="accepted", side="target", business_status="scheduled"),
    "arrive": Move(sources=("accepted",), target="in-progress", side="target", business_status="arrived",
                   needs_scheduled=True),
    "complete": Move(sources=("in-progress",), target="completed", side="target", business_status="completed"),
    "cancel": Move(sources=("requested", "received", "accepted"), target="cancelled", side="origin"),
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RouteBody(StrictModel):
    patient: str = Field(min_length=1, max_length=80, description="Patient/{id} or the id")
    direction: Direction
    specialty: str = Field(min_length=1, max_length=64)
    capabilities: list[str] = Field(default_factory=list, max_length=20)
    priority: Priority = "routine"
    origin: str | None = Field(default=None, max_length=80, description="defaults to the caller's organization")


class ReferralBody(RouteBody):
    reason: str = Field(min_length=1, max_length=80, description="Condition/{id} with an ICD-10 code")
    supporting: list[str] = Field(default_factory=list, max_length=50, description="references to records")
    consent: str = Field(min_length=1, max_length=80, description="Consent/{id}, active, of the patient")
    target: str | None = Field(default=None, max_length=80, description="Organization/{id}; else the best candidate")
    target_service: str | None = Field(default=None, max_length=80)
    note: str | None = Field(default=None, max_length=2000)


class ActionBody(StrictModel):
    reason: str | None = Field(default=None, max_length=1000)
    start: datetime | None = None  # schedule: when the patient is expected
    end: datetime | None = None
    outcome: str | None = Field(default=None, max_length=80, description="complete: Composition/{id} or "
                                                                          "DocumentReference/{id}")
    summary: dict[str, Any] | None = Field(default=None, description="complete: the discharge summary itself, a "
                                                                    "Composition or DocumentReference to file")
    care_plan: str | None = Field(default=None, max_length=80, description="refer-back: CarePlan/{id}")
    note: str | None = Field(default=None, max_length=2000)


def _ref(reference: str | None, display: str | None = None) -> dict[str, Any] | None:
    if not reference:
        return None
    out: dict[str, Any] = {"reference": reference}
    if display:
        out["display"] = display
    return out


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def service_request(doc: dict[str, Any]) -> dict[str, Any]:
    """The clinical ask, as FHIR ServiceRequest, derived from the one referral document."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": doc["_id"],
        "meta": {"versionId": str(doc["version"]), "lastUpdated": _instant(doc["updated"])},
        "identifier": [{"system": REFERRAL_IDENTIFIER_SYSTEM, "value": doc["_id"]}],
        "status": {"completed": "completed", "cancelled": "revoked", "rejected": "revoked",
                   "failed": "revoked"}.get(doc["status"], "active"),
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005",
                                  "display": "Patient referral"}],
                      "text": "上转 upward referral" if doc["direction"] == "up" else "下转 downward referral"}],
        "priority": doc["priority"],
        "code": {"text": doc["specialty"]},
        "subject": {"reference": doc["patient"]},
        "authoredOn": _instant(doc["created"]),
        "requester": _ref(doc["requester"]),
        "performer": [_ref(doc["target"])],
        "reasonReference": [_ref(doc["reason"]["reference"], doc["reason"].get("display"))],
        "supportingInfo": [_ref(r) for r in doc.get("supporting", [])],
    }
    if doc.get("based_on"):
        resource["basedOn"] = [_ref(f"ServiceRequest/{doc['based_on']}")]
    if doc.get("note"):
        resource["note"] = [{"text": doc["note"]}]
    return {k: v for k, v in resource.items() if v not in (None, [], [None])}


def task(doc: dict[str, Any]) -> dict[str, Any]:
    """The referral's state, as FHIR Task, derived from the same document so the two never disagree."""
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": doc["_id"],
        "meta": {"versionId": str(doc["version"]), "lastUpdated": _instant(doc["updated"])},
        "identifier": [{"system": REFERRAL_IDENTIFIER_SYSTEM, "value": doc["_id"]}],
        "basedOn": [{"reference": f"ServiceRequest/{doc['_id']}"}],
        "status": doc["status"],
        "intent": "order",
        "priority": doc["priority"],
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": f"ServiceRequest/{doc['_id']}"},
        "for": {"reference": doc["patient"]},
        "authoredOn": _instant(doc["created"]),
        "lastModified": _instant(doc["updated"]),
        "requester": _ref(doc["origin"]),
        "owner": _ref(doc["target"]),
        "restriction": {"period": {"end": _instant(doc.get("deadline"))}} if doc.get("deadline") else None,
    }
    if doc.get("business_status"):
        resource["businessStatus"] = {"text": doc["business_status"]}
    if doc.get("status_reason"):
        resource["statusReason"] = {"text": doc["status_reason"]}
    outputs = []
    if doc.get("appointment"):
        outputs.append({"type": {"text": "appointment"}, "valueReference": _ref(doc["appointment"])})
    if doc.get("encounter"):
        outputs.append({"type": {"text": "encounter"}, "valueReference": _ref(doc["encounter"])})
    if doc.get("outcome"):
        outputs.append({"type": {"text": "outcome"}, "valueReference": _ref(doc["outcome"])})
    if doc.get("referred_back_as"):
        outputs.append({"type": {"text": "referred back"},
                        "valueReference": _ref(f"ServiceRequest/{doc['referred_back_as']}")})
    if outputs:
        resource["output"] = outputs
    return {k: v for k, v in resource.items() if v not in (None, [], [None])}


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The referral as the portals and API clients see it."""
    return {
        "id": doc["_id"], "version": doc["version"], "direction": doc["direction"], "priority": doc["priority"],
        "status": doc["status"], "businessStatus": doc.get("business_status"), "statusReason": doc.get("status_reason"),
        "patient": doc["patient"], "origin": doc["origin"], "originName": doc.get("origin_name"),
        "target": doc["target"], "targetName": doc.get("target_name"), "targetService": doc.get("target_service"),
        "specialty": doc["specialty"], "capabilities": doc.get("capabilities", []),
        "reason": doc["reason"], "supporting": doc.get("supporting", []), "consent": doc["consent"],
        "requester": doc.get("requester"), "created": _instant(doc["created"]), "updated": _instant(doc["updated"]),
        "deadline": _instant(doc.get("deadline")), "escalations": doc.get("escalations", 0),
        "triedTargets": doc.get("tried", []), "appointment": doc.get("appointment"),
        "scheduledStart": _instant(doc.get("scheduled_start")), "encounter": doc.get("encounter"),
        "outcome": doc.get("outcome"), "basedOn": doc.get("based_on"), "referredBackAs": doc.get("referred_back_as"),
        "carePlan": doc.get("care_plan"), "note": doc.get("note"), "routing": doc.get("routing"),
        "history": [{**h, "at": _instant(h["at"])} for h in doc.get("history", [])],
        "serviceRequest": service_request(doc), "task": task(doc),
    }
