"""The audit trail: one FHIR AuditEvent per access, written before the response leaves; the patient's access log."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, WebSocket

from ehr.access import decide_by_role
from qilu.auth import Caller, CurrentCaller
from qilu.paging import Offset
from qilu.problems import Problem

router = APIRouter(tags=["audit"])

# FHIR restful-interaction -> AuditEvent.action (C create, R read/view/print, U update, D delete, E execute).
ACTIONS = {"read": "R", "vread": "R", "search-type": "E", "history-instance": "R", "history-type": "E",
           "create": "C", "update": "U", "delete": "D", "everything": "E", "batch": "E", "transaction": "E",
           "card-verify": "E", "card-issue": "C", "card-status": "U", "consult-join": "E", "access-log": "R",
           "transfer": "U"}
# Why the access happened (v3 ActReason); a caller may say so in the X-Purpose-Of-Use header.
PURPOSES = {"TREAT": "治疗 Treatment", "ETREAT": "急诊治疗 Emergency treatment", "HPAYMT": "结算 Payment",
            "PATRQT": "患者本人请求 Patient request", "HOPERAT": "医疗机构运营 Healthcare operations",
            "HRESCH": "研究 Research"}
OUTCOME_SUCCESS, OUTCOME_MINOR, OUTCOME_SERIOUS = "0", "4", "8"


def purpose_of_use(request: Request, caller: Caller | None) -> str:
    asked = (request.headers.get("x-purpose-of-use") or "").strip().upper()
    if asked in PURPOSES:
        return asked
    return "PATRQT" if caller and caller.role == "patient" else "TREAT"


def audit_event(*, caller: Caller | None, interaction: str, outcome: str, purpose: str, source_address: str | None,
                entities: list[str], patients: list[str], description: str = "", query: str | None = None,
                ) -> dict[str, Any]:
    """An R4 AuditEvent naming who, what (resources, and the patients concerned), when, why, from where."""
    now = datetime.now(UTC)
    agents: list[dict[str, Any]] = []
    who = caller.who if caller else "Device/qilu"
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                             "code": "humanuser" if caller else "dataprocessor"}]},
        "role": [{"text": caller.role if caller else "system"}],
        "who": {"reference": who} if "/" in who and not who.startswith("urn:") else {"identifier": {"value": who}},
        "requestor": True,
    }
    if caller and caller.name:
        agent["who"]["display"] = caller.name
    if source_address:
        agent["network"] = {"address": source_address, "type": "2"}
    agents.append(agent)
    if caller and caller.organization:
        agents.append({"type": {"text": "organization"}, "who": {"reference": caller.organization},
                       "requestor": False})
    entity_list: list[dict[str, Any]] = []
    for patient in sorted(set(patients)):
        entity_list.append({"what": {"reference": patient},
                            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                     "code": "1"},
                            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    for reference in entities:
        if reference not in patients:
            entity_list.append({"what": {"reference": reference},
                                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                         "code": "2"}})
    if query is not None:
        entity_list.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                     "code": "2"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/"
                                                                     "object-role", "code": "24"},
                            "query": base64.b64encode(query.encode()).decode()})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": uuid.uuid4().hex,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction" if interaction in (
            "read", "vread", "search-type", "history-instance", "history-type", "create", "update", "delete",
            "batch", "transaction") else "https://qilu.example.org/fhir/CodeSystem/interaction",
                     "code": interaction}],
        "action": ACTIONS.get(interaction, "E"),
        "recorded": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": outcome,
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                        "code": purpose, "display": PURPOSES[purpose]}]}],
        "agent": agents,
        "source": {"observer": {"display": "Qilu"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
    }
    if description:
        event["outcomeDesc"] = description[:500]
    if entity_list:
        event["entity"] = entity_list
    return event


class AuditTrailWriter:
    """Writes AuditEvents durably, each caller waiting until its own event is stored (a group commit).

    The events that arrive while one insert is under way go together in the next one: at one request at
    a time this is one insert per event as before, and 32 requests at once cost a few inserts, not 32.
    """

    def __init__(self, insert_many: Callable[[list[dict[str, Any]]], Awaitable[list[BaseException | None]]],
                 max_batch: int = 256):
        self._insert_many = insert_many
        self._max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._lock = asyncio.Lock()

    async def __call__(self, event: dict[str, Any]) -> None:
        stored: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((event, stored))
        async with self._lock:  # first come, first served: whoever holds it writes what is waiting
            if not stored.done():
                batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
                await self._write(batch)
        await stored  # raises when this event was not stored: no access without its trace

    async def _write(self, batch: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        try:
            errors = await self._insert_many([event for event, _ in batch])
        except BaseException as exc:
            for _, stored in batch:
                if not stored.done():
                    stored.set_exception(exc if isinstance(exc, Exception) else RuntimeError("audit write cut off"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, stored), error in zip(batch, errors, strict=True):
            if stored.done():
                continue
            if error is None:
                stored.set_result(None)
            else:
                stored.set_exception(error)


async def record_access(request: Request, caller: Caller | None, interaction: str, *, entities: list[str],
                        patients: list[str], outcome: str = OUTCOME_SUCCESS, description: str = "",
                        query: str | None = None, denied: bool = False) -> None:
    """Write the AuditEvent durably; if that fails the request fails (no access without its trace).
    `denied`: the access policy refused it (or answered as if missing); it is counted, and a burst held back."""
    if denied:
        request.app.state.denials.note(caller, interaction)
    event = audit_event(caller=caller, interaction=interaction, outcome=outcome,
                        purpose=purpose_of_use(request, caller),
                        source_address=request.client.host if request.client else None,
                        entities=entities, patients=patients, description=description, query=query)
    await request.app.state.audit_sink(event)


async def record_denial(request: Request | WebSocket, domain: str, detail: str, *,
                        caller: Caller | None = None) -> None:
    """A request refused by a domain's own rules (403, or 404 for what the caller may not know of): traced
    with what was asked for, counted, and held back in a burst. FHIR interactions trace theirs as they run.
    `caller`: who asked, where no route dependency left them on the request (a WebSocket)."""
    caller = caller or getattr(request.state, "caller", None)
    await record_access(request, caller, f"{domain}-refused", entities=[f"urn:qilu:request:{request.url.path}"],
                        patients=[], outcome=OUTCOME_MINOR, description=detail, denied=True)


@router.get("/api/me/access-log")
async def access_log(request: Request, caller: CurrentCaller, count: int = Query(20, ge=1, le=100),
                     offset: Offset = 0, include_own: bool = False) -> dict[str, Any]:
    """Who looked at my records, when, from which hospital and why — newest first."""
    decision = decide_by_role("access-log", caller.role)
    if not decision.allowed or caller.patient_id is None:
        raise Problem(403, "Patients only", decision.rule or "The access log is the patient's own")
    reader = request.app.state.access_log_reader
    return await reader(caller.fhir_user, exclude_agent=None if include_own else caller.fhir_user,
                        count=count, offset=offset)
