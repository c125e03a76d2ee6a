"""The referral rules: routing, the strict workflow with deadlines and escalation, sharing, outbox and statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from ehr.access import Decision, Reach, decide_by_role, decide_party, referral_party
from ehr.models import RecordError
from ehr.service import RecordService
from ehr.sharing import consent_allows
from fhir_profiles.divisions import is_valid_division_code
from fhir_profiles.identifiers import CHINA_STANDARD_TIME
from qilu.auth import Caller
from referral.directory import DirectoryCache
from referral.models import (ICD10_SYSTEM, MOVES, OPEN_STATUSES, PRIORITY_ORDER, WAITING_STATUSES,
                             ActionBody, ReferralBody, RouteBody)
from referral.routing import Candidate, RouteRequest, RouteResult, route_candidates
from referral.store import ReferralStore

log = structlog.get_logger("qilu.referral")

Publish = Callable[[dict[str, Any]], Awaitable[Any]]
Mail = Callable[[list[str], str, str], Awaitable[None]]
# (Organization or Patient references, text, idempotency key): a text message to their phones.
Page = Callable[[list[str], str, str], Awaitable[None]]


def routing_of(candidate: Candidate) -> dict[str, Any]:
    """Why a referral went where it went, as the referral keeps it: the rank, the score and each part's reason (in
    English, and as a message code with values for the portals)."""
    return {"rank": candidate.rank, "score": candidate.score, "reasons": [p.reason for p in candidate.parts],
            "explained": [{"code": p.code, "values": p.values} for p in candidate.parts]}


def province_month(moment: datetime) -> str:
    """The month a referral counts in: the province's calendar month, so one sent at 03:00 on 1 December in
    Jinan counts in December although it is still November in UTC."""
    return moment.astimezone(CHINA_STANDARD_TIME).strftime("%Y-%m")


class ReferralRefused(Exception):
    """A refusal with its HTTP status, rendered as problem JSON by the API."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


PRIORITY_WORDS = {"stat": "危急", "asap": "紧急", "urgent": "加急", "routine": "常规"}
# What a text message says of each move worth waking someone for; `target` is the hospital now asked.
PAGER_TEXTS = {
    "requested": "【齐鲁健康】{priority}转诊待接收，请于 {deadline} 前处理：{link}",
    "escalated": "【齐鲁健康】{priority}转诊超时未接收，已改派{target}，请于 {deadline} 前处理：{link}",
    "accepted": "【齐鲁健康】{priority}转诊已被{target}接收：{link}",
    "rejected": "【齐鲁健康】{priority}转诊被{target}拒绝，请尽快另选医院：{link}",
    "failed": "【齐鲁健康】{priority}转诊无医院接收，请立即电话联系上级医院：{link}",
    "cancelled": "【齐鲁健康】{priority}转诊已由转出医院取消：{link}",
}
# What a text message tells the patient, whatever the urgency: where and when to go.
PATIENT_TEXTS = {
    "scheduled": "【齐鲁健康】您的转诊已预约：{target}，{start}。请带身份证或电子健康卡按时就诊：{portal}/me/referrals",
    "referred-back": "【齐鲁健康】您在{target}的治疗已完成，转回{origin}继续随访：{portal}/me/referrals",
}
EVENT_OF_ACTION = {"receive": "received", "accept": "accepted", "reject": "rejected", "schedule": "scheduled",
                   "arrive": "arrived", "complete": "completed", "cancel": "cancelled"}


# Tries of one write of a referral while other writes of it come between (each waits a little longer).
WRITE_ATTEMPTS = 8


def not_found(referral_id: str) -> ReferralRefused:
    # The same words whether it does not exist or the caller may not see it.
    return ReferralRefused(404, "Referral not found", f"Referral {referral_id} is not known")


def enforce_about_patient(decision: Decision, patient_ref: str) -> None:
    """The policy's answer about the patient, as the referral API says it: hidden reads as an unknown patient."""
    if decision.outcome == "hide":
        raise ReferralRefused(404, "Patient not found", f"{patient_ref} is not known")
    if not decision.allowed:
        raise ReferralRefused(403, "Not allowed", decision.rule)


@dataclass(frozen=True)
class ReferralRules:
    """Deadlines to accept by urgency (minutes), escalation and sharing windows — all configurable."""

    accept_minutes: dict[str, float] = field(default_factory=lambda: {"stat": 15, "asap": 60, "urgent": 240,
                                                                    "routine": 48 * 60})
    max_escalations: int = 2
    share_days_after_completion: int = 30
    load_cache_s: float = 5.0
    # Referrals so urgent that someone must be woken: their moves are also sent by text message.
    paged_priorities: tuple[str, ...] = ("stat", "asap")


def now_utc() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ref(value: str, resource_type: str) -> str:
    value = value.strip()
    return value if value.startswith(f"{resource_type}/") else f"{resource_type}/{value}"


class ReferralService:
    def __init__(self, store: ReferralStore, records: RecordService, directory: DirectoryCache,
                 rules: ReferralRules | None = None, clock: Callable[[], datetime] = now_utc):
        # `records` acts as the system: this service applies the referral's own access rules first.
        self.store = store
        self.records = records
        self.directory = directory
        self.rules = rules or ReferralRules()
        self.clock = clock
        self._load: tuple[float, dict[str, int]] | None = None
        self._accept_minutes: tuple[float, dict[str, float]] | None = None

    # --- who may do what ------------------------------------------------------------------------------

    def _require_practitioner(self, caller: Caller) -> str:
        decision = decide_by_role("referral-work", caller.role)
        if not decision.allowed:
            raise ReferralRefused(403, "Practitioners only", decision.rule)
        if not caller.organization:
            raise ReferralRefused(403, "Practitioners only", "Referrals are made and worked by practitioners of "
                                                             "a hospital")
        return caller.organization

    @staticmethod
    def _may_see(caller: Caller, doc: dict[str, Any]) -> bool:
        return decide_party("referral-read", referral_party(caller, doc)).allowed

    async def _reach(self, caller: Caller) -> Reach:
        return Reach(caller, self.records.store)

    # --- reading the record as the system, with clear refusals -------------------------------------------

    async def _resource(self, reference: str, expected_types: tuple[str, ...], field_name: str) -> dict[str, Any]:
        resource_type, _, resource_id = reference.partition("/")
        if resource_type not in expected_types or not resource_id:
            raise ReferralRefused(422, "Invalid reference", f"{field_name} must be one of "
                                                            f"{', '.join(t + '/{id}' for t in expected_types)}",
                                  field=field_name)
        try:
            return (await self.records.read(resource_type, resource_id))["resource"]
        except RecordError:
            raise ReferralRefused(422, "Unknown record", f"{field_name} {reference} is not in the record",
                                  field=field_name) from None

    async def _patient_division(self, patient: dict[str, Any]) -> str | None:
        for address in patient.get("address") or []:
            for candidate in (address.get("district"), address.get("postalCode")):
                if isinstance(candidate, str) and len(candidate) == 6 and is_valid_division_code(candidate):
                    return candidate
        managing = (patient.get("managingOrganization") or {}).get("reference")
        hospital = (await self.directory.get()).hospitals.get(managing) if managing else None
        return hospital.division if hospital else None

    # --- routing ------------------------------------------------------------------------------------

    async def open_load(self) -> dict[str, int]:
        """Open referrals taken today per HealthcareService: capacity in use, counted, never typed in."""
        now = self.clock()
        if self._load and (now.timestamp() - self._load[0]) < self.rules.load_cache_s:
            return self._load[1]
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        rows = await self.store.aggregate([
            {"$match": {"status": {"$in": list(OPEN_STATUSES)}, "created": {"$gte": day_start}}},
            {"$group": {"_id": "$target_service", "n": {"$sum": 1}}}])
        load = {row["_id"]: row["n"] for row in rows if row["_id"]}
        self._load = (now.timestamp(), load)
        return load

    async def accept_medians(self) -> dict[str, float]:
        stats = await self.store.load_stats()
        return {org: row["median"] for org, row in ((stats or {}).get("accept_by_target") or {}).items()}

    async def _route(self, patient: dict[str, Any], body: RouteBody, origin: str, exclude: frozenset[str],
                     explain_all: bool, *, every_candidate: bool = False) -> RouteResult:
        request = RouteRequest(patient_division=await self._patient_division(patient), direction=body.direction,
                               specialty=body.specialty, capabilities=frozenset(body.capabilities),
                               priority=body.priority, origin=origin, exclude=exclude)
        directory = await self.directory.get()
        if origin not in directory.hospitals:
            raise ReferralRefused(422, "Unknown origin", f"{origin} is not a hospital in the directory")
        # A named target must be judged even when ten better hospitals would hide it from the short list.
        limit = len(directory.hospitals) if every_candidate else 10
        return route_candidates(request, directory, await self.open_load(), await self.accept_medians(),
                                explain_all=explain_all, limit=limit)

    async def route(self, caller: Caller, body: RouteBody, explain_all: bool = False) -> dict[str, Any]:
        organization = self._require_practitioner(caller)
        origin = _ref(body.origin, "Organization") if body.origin else organization
        patient_ref = _ref(body.patient, "Patient")
        patient_id = patient_ref.removeprefix("Patient/")
        enforce_about_patient(await (await self._reach(caller)).decide_about("read", patient_id), patient_ref)
        patient = await self._resource(patient_ref, ("Patient",), "patient")
        result = await self._route(patient, body, origin, frozenset(), explain_all)
        return dataclasses.asdict(result)

    # --- create ---------------------------------------------------------------------------------------

    async def create(self, caller: Caller, body: ReferralBody, idempotency_key: str | None) -> tuple[dict, bool]:
        """Returns (referral document, created); a retried request with the same Idempotency-Key gets the first."""
        organization = self._require_practitioner(caller)
        now = self.clock()
        claim_key = write_id = None
        if idempotency_key:
            claim_key, write_id = f"idempotency|{organization}|{idempotency_key[:200]}", uuid.uuid4().hex
            if not await self.store.claim(claim_key, write_id, now):
                return await self._replayed(claim_key), False
        try:
            doc = await self._new_referral(caller, organization, body, now)
            await self.store.insert(doc)
        except BaseException:
            if claim_key:
                await self.store.release_claim(claim_key, write_id)
            raise
        if claim_key:
            await self.store.set_claim_target(claim_key, write_id, doc["_id"])
        log.info("referral created", referral=doc["_id"], direction=doc["direction"], priority=doc["priority"])
        return doc, True

    async def _replayed(self, claim_key: str) -> dict[str, Any]:
        for _ in range(50):  # the first request may still be writing
            holder = await self.store.claim_holder(claim_key)
            if holder and holder.get("referral"):
                doc = await self.store.get(holder["referral"])
                if doc:
                    return doc
            if holder is None:
                break
            await asyncio.sleep(0.1)
        raise ReferralRefused(409, "Request in progress", "The same request (Idempotency-Key) is still being "
                                                          "processed; retry in a moment")

    async def _new_referral(self, caller: Caller, organization: str, body: ReferralBody, now: datetime,
                            *, based_on: str | None = None) -> dict[str, Any]:
        patient_ref = _ref(body.patient, "Patient")
        reach = await self._reach(caller)
        patient_id = patient_ref.removeprefix("Patient/")
        # Referring up is the managing hospital's act; a referral back down (or onwards) is the shared one's too.
        action = "refer-up" if body.direction == "up" and based_on is None else "refer"
        enforce_about_patient(await reach.decide_about(action, patient_id), patient_ref)
        patient = await self._resource(patient_ref, ("Patient",), "patient")
        reason = await self._resource(_ref(body.reason, "Condition"), ("Condition",), "reason")
        if (reason.get("subject") or {}).get("reference") != patient_ref:
            raise ReferralRefused(422, "Reason of another patient", "reason must be a Condition of this patient",
                                  field="reason")
        icd10 = [c for c in (reason.get("code") or {}).get("coding") or [] if c.get("system") == ICD10_SYSTEM]
        if not icd10:
            raise ReferralRefused(422, "Reason without ICD-10", "reason must be coded with ICD-10", field="reason")
        for index, reference in enumerate(body.supporting):
            record = await self._resource(reference, tuple(sorted(
                {"Observation", "DiagnosticReport", "DocumentReference", "Composition", "Condition", "CarePlan",
                 "MedicationRequest", "AllergyIntolerance", "Procedure", "Immunization", "Encounter"})),
                f"supporting[{index}]")
            subject = (record.get("subject") or record.get("patient") or {}).get("reference")
            if subject and subject != patient_ref:
                raise ReferralRefused(422, "Record of another patient", f"supporting[{index}] belongs to another "
                                                                         "patient", field=f"supporting[{index}]")
        routing = None
        if body.target:
            target = _ref(body.target, "Organization")
            result = await self._route(patient, body, organization, frozenset(), explain_all=True,
                                       every_candidate=True)
            chosen = next((c for c in result.candidates if c.hospital == target), None)
            if chosen is None:
                excluded = next((e for e in result.excluded if e.hospital == target), None)
                why = "; ".join(excluded.reasons) if excluded else "it is not in the directory"
                raise ReferralRefused(422, "Target cannot take this referral", f"{target}: {why}", field="target")
        else:
            result = await self._route(patient, body, organization, frozenset(), explain_all=False)
            if not result.candidates:
                raise ReferralRefused(422, "No hospital can take this referral",
                                      "No hospital in the directory offers this specialty and capabilities with "
                                      "capacity left; ask with ?explain=all on the route endpoint to see why")
            chosen = result.candidates[0]
        routing = routing_of(chosen)
        consent = await self._resource(_ref(body.consent, "Consent"), ("Consent",), "consent")
        if not consent_allows(consent, patient_ref, chosen.hospital, now):
            raise ReferralRefused(422, "No consent", "The patient has no active Consent to share their records "
                                                     f"with {chosen.name}", field="consent")
        directory = await self.directory.get()
        origin_hospital = directory.hospitals.get(organization)
        return {
            "_id": uuid.uuid4().hex, "version": 1, "rev": 1, "direction": body.direction,
            "priority": body.priority,
            "status": "requested", "business_status": None, "patient": patient_ref, "origin": organization,
            "origin_name": origin_hospital.name if origin_hospital else None,
            "requester": caller.fhir_user, "target": chosen.hospital, "target_name": chosen.name,
            "target_service": chosen.service, "specialty": body.specialty, "capabilities": sorted(body.capabilities),
            "reason": {"reference": _ref(body.reason, "Condition"), "code": icd10[0].get("code"),
                       "display": (reason.get("code") or {}).get("text") or icd10[0].get("display")},
            "supporting": list(body.supporting), "consent": _ref(body.consent, "Consent"), "note": body.note,
            "created": now, "updated": now, "deadline": now + timedelta(minutes=self.rules.accept_minutes[
                body.priority]), "month": province_month(now), "escalations": 0, "tried": [],
            "based_on": based_on, "routing": routing,
            "share": {"org": chosen.hospital, "from": None, "until": None},
            "history": [{"at": now, "by": caller.fhir_user, "org": organization, "action": "create",
                         "from": None, "to": "requested", "why": body.note}],
            "outbox": [self._event("requested", now, [chosen.hospital], body.priority)],
            "outbox_pending": True,
        }

    @staticmethod
    def _event(kind: str, now: datetime, to: list[str], priority: str, **extra: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "type": kind, "at": now, "to": sorted(set(to)), "priority": priority,
                "sent": False, **extra}

    # --- reading ------------------------------------------------------------------------------------------

    async def get(self, caller: Caller, referral_id: str) -> dict[str, Any]:
        doc = await self.store.get(referral_id)
        if doc is None or not self._may_see(caller, doc):
            raise not_found(referral_id)
        return doc

    async def list(self, caller: Caller, box: str, status: str | None, limit: int, offset: int) -> tuple[list, int]:
        if caller.role == "patient":
            query: dict[str, Any] = {"patient": caller.fhir_user}
        else:
            organization = self._require_practitioner(caller)
            query = {"target": organization} if box == "inbox" else {"origin": organization}
        if status == "open":
            query["status"] = {"$in": list(OPEN_STATUSES)}
        elif status:
            query["status"] = status
        total = await self.store.count(query)
        docs = await self.store.find(query, sort=[("deadline", 1), ("created", -1)] if box == "inbox"
                                     else [("created", -1)], skip=offset, limit=limit)
        if box == "inbox":
            # A specialist with forty waiting sees the most urgent first, then the nearest deadline.
            docs.sort(key=lambda d: (d["status"] not in WAITING_STATUSES, PRIORITY_ORDER[d["priority"]],
                                     _aware(d.get("deadline")) or datetime.max.replace(tzinfo=UTC)))
        return docs, total

    # --- transitions ----------------------------------------------------------------------------------------

    async def _claimed_write(self, doc: dict[str, Any], write: Callable[[int], Awaitable[bool]]) -> bool:
        """Claim the referral's next rev, then `write(rev)`; False when another writer holds it or got there first."""
        # Claims age on the wall clock: whether a writer died is not a matter of the referral's (test) clock.
        now = now_utc()
        key, write_id = f"{doc['_id']}/{doc['rev'] + 1}", uuid.uuid4().hex
        if not await self.store.claim(key, write_id, now):
            await self.store.take_over_stale_claim(key, now)  # only if its writer died long ago
            return False
        if await write(doc["rev"]):
            return True
        await self.store.release_claim(key, write_id)
        return False

    async def _apply(self, doc: dict[str, Any], changes: dict[str, Any], entry: dict[str, Any],
                     events: list[dict[str, Any]]) -> dict[str, Any]:
        """One transition: a claim on the next rev, then the single-document write of state, history and outbox."""
        now = self.clock()
        referral_id, version = doc["_id"], doc["version"]
        changes = {**changes, "updated": now, "version": version + 1}

        async def write(rev: int) -> bool:
            return await self.store.apply(referral_id, rev, changes, {**entry, "at": now}, events)

        for attempt in range(WRITE_ATTEMPTS):
            if await self._claimed_write(doc, write):
                written = await self.store.get(referral_id)
                await self._share_as_written(doc, written)
                return written
            current = await self.store.get(referral_id)
            if current["version"] != version:
                raise ReferralRefused(409, "Changed at the same moment",
                                      f"The referral is now {current['status']}: someone else changed it just now; "
                                      "reload it", currentStatus=current["status"])
            # No transition came between: only the outbox bookkeeping moved, or its writer is between claim and
            # write. The move was judged on the state that is still current, so it is tried again.
            doc = current
            await asyncio.sleep(0.02 * (attempt + 1))
        raise ReferralRefused(409, "Busy", f"The referral is {doc['status']} and is being written by someone else; "
                                           "retry in a moment", currentStatus=doc["status"])

    async def act(self, caller: Caller, referral_id: str, action: str, body: ActionBody) -> dict[str, Any]:
        organization = self._require_practitioner(caller)
        doc = await self.get(caller, referral_id)
        if action == "refer-back":
            return await self._refer_back(caller, organization, doc, body)
        move = MOVES[action]
        side_org = doc["target"] if move.side == "target" else doc["origin"]
        if organization != side_org:
            who = "the receiving hospital" if move.side == "target" else "the referring hospital"
            raise ReferralRefused(403, "Not your side of the referral", f"Only {who} may {action} this referral")
        scheduled = doc.get("business_status") == "scheduled"
        # An emergency (stat, asap) may arrive without an appointment; the rest are scheduled first.
        unscheduled_arrival = move.needs_scheduled and not scheduled and doc["priority"] not in ("stat", "asap")
        if doc["status"] not in move.sources or (action == "schedule" and scheduled) or unscheduled_arrival:
            state = doc["status"] + (f" ({doc['business_status']})" if doc.get("business_status") else "")
            raise ReferralRefused(409, "Not allowed in this state",
                                  f"The referral is {state}; '{action}' is not possible now",
                                  currentStatus=doc["status"])
        now = self.clock()
        changes: dict[str, Any] = {"status": move.target}
        if move.business_status:
            changes["business_status"] = move.business_status
        events_to = [doc["origin"], doc["target"]]
        extra: dict[str, Any] = {}
        if action == "reject":
            if not body.reason:
                raise ReferralRefused(422, "Reason required", "Say why the referral is rejected", field="reason")
            changes.update(status_reason=body.reason, **{"share.until": now})
        elif action == "cancel":
            changes.update(status_reason=body.reason or "cancelled by the referring hospital", **{"share.until": now})
        elif action == "accept":
            changes.update({"share.from": now, "accepted_at": now,
                            "accept_minutes": round((now - _aware(doc["created"])).total_seconds() / 60, 1)})
        elif action == "schedule":
            if body.start is None:
                raise ReferralRefused(422, "Time required", "Give the start time the patient is expected",
                                      field="start")
            appointment = await self._write("Appointment", self._appointment(doc, caller, body))
            changes.update(appointment=appointment, scheduled_start=_aware(body.start))
            extra["appointment"] = appointment
        elif action == "arrive":
            changes["encounter"] = await self._write("Encounter", self._encounter(doc, now))
        elif action == "complete":
            outcome = await self._outcome(caller, doc, body)
            changes.update(outcome=outcome, completed_at=now, **{
                "share.until": now + timedelta(days=self.rules.share_days_after_completion)})
            extra["outcome"] = outcome
        entry = {"by": caller.fhir_user, "org": organization, "action": action, "from": doc["status"],
                 "to": move.target, "why": body.reason or body.note}
        event = self._event(EVENT_OF_ACTION[action], now, events_to, doc["priority"], actor=organization, **extra)
        return await self._apply(doc, changes, entry, [event])

    async def note_in_history(self, referral_id: str, entry: dict[str, Any], *,
                              event: str | None = None) -> dict[str, Any]:
        """Add an entry to a referral's history without moving it (e.g. a consult's opinion written back), and
        with `event` tell both hospitals on the live feed; the caller (another domain's service) has applied its
        own rules first."""
        attempts_left = 3
        while True:
            doc = await self.store.get(referral_id)
            if doc is None:
                raise not_found(referral_id)
            events = [] if event is None else [
                self._event(event, self.clock(), [doc["origin"], doc["target"]], doc["priority"])]
            try:
                return await self._apply(doc, {}, {**entry, "from": doc["status"], "to": doc["status"]}, events)
            except ReferralRefused as refused:
                # A note holds whatever state the referral is in: a transition coming between only means reading
                # it again.
                attempts_left -= 1
                if refused.status != 409 or not attempts_left:
                    raise

    async def _write(self, resource_type: str, resource: dict[str, Any]) -> str:
        written, _ = await self.records.create(resource_type, resource)
        return f"{resource_type}/{written.resource_id}"

    @staticmethod
    def _appointment(doc: dict[str, Any], caller: Caller, body: ActionBody) -> dict[str, Any]:
        start = _aware(body.start)
        end = _aware(body.end) or start + timedelta(minutes=30)
        return {"resourceType": "Appointment", "status": "booked",
                "description": f"Referral {doc['_id']} ({doc['specialty']})",
                "start": start.isoformat(), "end": end.isoformat(),
                "basedOn": [{"reference": f"ServiceRequest/{doc['_id']}"}],
                "participant": [{"actor": {"reference": doc["patient"]}, "status": "accepted"},
                                {"actor": {"reference": caller.fhir_user}, "status": "accepted"}]}

    @staticmethod
    def _encounter(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
        return {"resourceType": "Encounter", "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "EMER" if doc["priority"] == "stat" else "IMP"},
                "subject": {"reference": doc["patient"]}, "serviceProvider": {"reference": doc["target"]},
                "basedOn": [{"reference": f"ServiceRequest/{doc['_id']}"}],
                "period": {"start": now.isoformat()}}

    async def _outcome(self, caller: Caller, doc: dict[str, Any], body: ActionBody) -> str:
        if body.summary is not None:
            return await self._file_summary(caller, doc, body.summary)
        if not body.outcome:
            raise ReferralRefused(422, "Outcome required", "Completing needs the discharge summary: a Composition "
                                                           "or DocumentReference of this patient", field="outcome")
        document = await self._resource(body.outcome, ("Composition", "DocumentReference"), "outcome")
        if (document.get("subject") or {}).get("reference") != doc["patient"]:
            raise ReferralRefused(422, "Outcome of another patient", "outcome must be about this patient",
                                  field="outcome")
        return f"{document['resourceType']}/{document['id']}"

    async def _file_summary(self, caller: Caller, doc: dict[str, Any], summary: dict[str, Any]) -> str:
        """The treating specialist files the discharge summary through the workflow: the record's access rules
        let them read the shared patient, not write; completing the episode they treated is the exception."""
        resource_type = summary.get("resourceType")
        if resource_type not in ("Composition", "DocumentReference"):
            raise ReferralRefused(422, "Invalid summary", "summary must be a Composition or DocumentReference",
                                  field="summary")
        subject = (summary.get("subject") or {}).get("reference")
        if subject not in (None, doc["patient"]):
            raise ReferralRefused(422, "Summary of another patient", "summary must be about this patient",
                                  field="summary")
        resource = {**summary, "subject": {"reference": doc["patient"]}}
        if resource_type == "Composition" and not resource.get("author"):
            resource["author"] = [{"reference": caller.fhir_user}]
        try:
            written, _ = await self.records.create(resource_type, resource)
        except RecordError as exc:
            raise ReferralRefused(422, "Invalid summary", "; ".join(i.diagnostics for i in exc.issues),
                                  field="summary") from None
        return f"{resource_type}/{written.resource_id}"

    async def _refer_back(self, caller: Caller, organization: str, doc: dict[str, Any],
                          body: ActionBody) -> dict[str, Any]:
        if organization != doc["target"]:
            raise ReferralRefused(403, "Not your side of the referral", "Only the receiving hospital refers back")
        if doc["direction"] != "up" or doc["status"] != "completed" or doc.get("referred_back_as"):
            raise ReferralRefused(409, "Not allowed in this state",
                                  f"Only a completed upward referral not yet referred back can be referred back; this "
                                  f"one is {doc['direction']}, {doc['status']}", currentStatus=doc["status"])
        patient = await self._resource(doc["patient"], ("Patient",), "patient")
        county = (patient.get("managingOrganization") or {}).get("reference") or doc["origin"]
        supporting = [doc["outcome"]] + ([_ref(body.care_plan, "CarePlan")] if body.care_plan else [])
        down = ReferralBody(patient=doc["patient"], direction="down", specialty=doc["specialty"],
                            capabilities=[], priority="routine", reason=doc["reason"]["reference"],
                            supporting=supporting, consent=doc["consent"], target=county,
                            note=body.note or "下转: recovery and chronic care at the county hospital")
        now = self.clock()
        new = await self._new_referral(caller, organization, down, now, based_on=doc["_id"])
        if body.care_plan:
            new["care_plan"] = _ref(body.care_plan, "CarePlan")
        # Claim the up-referral's next version first, so a double click refers back once.
        updated = await self._apply(doc, {"referred_back_as": new["_id"]},
                                    {"by": caller.fhir_user, "org": organization, "action": "refer-back",
                                     "from": doc["status"], "to": doc["status"], "why": body.note},
                                    [self._event("referred-back", now, [doc["origin"], county], doc["priority"],
                                                 downward=new["_id"])])
        await self.store.insert(new)
        return updated

    # --- deadlines and escalation (Celery beat) -------------------------------------------------------------

    async def escalate_overdue(self) -> int:
        """Re-route every referral not accepted in time; idempotent across repeated and concurrent sweeps."""
        escalated = 0
        for doc in await self.store.overdue(self.clock(), WAITING_STATUSES):
            try:
                await self._escalate(doc)
                escalated += 1
            except ReferralRefused as refused:
                # 409: another sweep took this one. Anything else concerns this referral only (its record was
                # changed under it): the others must still be swept, and the next sweep tries it again.
                if refused.status != 409:
                    log.warning("escalation refused", referral=doc["_id"], status=refused.status,
                                reason=refused.detail)
        return escalated

    async def _escalate(self, doc: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        tried = sorted(set(doc.get("tried", [])) | {doc["target"]})
        entry = {"by": "Device/qilu-deadline-sweep", "org": None, "action": "escalate", "from": doc["status"]}
        candidate = None
        if doc.get("escalations", 0) < self.rules.max_escalations:
            patient = await self._resource(doc["patient"], ("Patient",), "patient")
            body = RouteBody(patient=doc["patient"], direction=doc["direction"], specialty=doc["specialty"],
                             capabilities=doc.get("capabilities", []), priority=doc["priority"])
            consent = await self._resource(doc["consent"], ("Consent",), "consent")
            result = await self._route(patient, body, doc["origin"], frozenset(tried), explain_all=False)
            candidate = next((c for c in result.candidates
                              if consent_allows(consent, doc["patient"], c.hospital, now)), None)
        if candidate is None:
            return await self._apply(doc, {"status": "failed", "status_reason": "no hospital accepted in time",
                                           "tried": tried, "share.until": now},
                                     {**entry, "to": "failed", "why": "deadline passed; no other hospital left"},
                                     [self._event("failed", now, [doc["origin"], doc["target"]], doc["priority"])])
        changes = {"status": "requested", "target": candidate.hospital, "target_name": candidate.name,
                   "target_service": candidate.service, "tried": tried, "escalations": doc.get("escalations", 0) + 1,
                   "deadline": now + timedelta(minutes=self.rules.accept_minutes[doc["priority"]]),
                   "share": {"org": candidate.hospital, "from": None, "until": None},
                   "routing": routing_of(candidate)}
        passed_at = doc["target_name"] or doc["target"]
        return await self._apply(doc, changes, {**entry, "to": "requested",
                                                "why": f"deadline passed at {passed_at}; sent to {candidate.name}",
                                                "why_code": "escalated",
                                                "why_values": {"from": passed_at, "to": candidate.name}},
                                 [self._event("escalated", now, [doc["origin"], doc["target"], candidate.hospital],
                                              doc["priority"], previousTarget=doc["target"])])

    # --- sharing: what an accepted referral lets the receiving hospital read -------------------------------

    async def _share_as_written(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """From acceptance to 30 days after completion the receiving hospital reads the patient's records, while
        the Consent allows; the record keeps that as a grant and writes the patient's reach from it."""
        if before.get("share") == after.get("share"):
            return
        share = after["share"]
        await self.records.share(f"referral/{after['_id']}", after["patient"], share["org"], after["consent"],
                                 share.get("from"), share.get("until"))

    # --- notifications: the outbox ------------------------------------------------------------------------

    async def deliver_outbox(self, publish: Publish, mail: Mail | None, page: Page | None = None) -> int:
        """Deliver every pending event at least once on each channel (live feed, e-mail, text message) and mark it
        sent. A channel that fails holds the event, and its referral's later events, for the next run; the
        channels it already reached are noted, so they are not sent it again. Portals dedupe by event id, the text
        gateway by the idempotency key (the event id)."""
        delivered = 0
        for doc in await self.store.with_pending_outbox():
            sent: set[str] = set()
            reached: dict[str, list[str]] = {}  # of the event held back: the channels it did reach
            for event in doc.get("outbox", []):
                if event.get("sent"):
                    continue
                done = list(event.get("reached") or [])
                try:
                    for channel, deliver in self._channels(doc, event, publish, mail, page):
                        if channel not in done:
                            await deliver()
                            done.append(channel)
                except Exception as exc:  # noqa: BLE001 - a channel down must not hold up the other referrals
                    # Left unsent, so a later run delivers it again; this referral's later events wait behind it,
                    # so nobody hears of a change before the one that came first.
                    log.warning("outbox delivery failed", referral=doc["_id"], event_id=event["id"],
                                error=str(exc))
                    if done != list(event.get("reached") or []):
                        reached[event["id"]] = done
                    break
                sent.add(event["id"])
            await self._mark_sent(doc, sent, reached)
            delivered += len(sent)
        return delivered

    def _channels(self, doc: dict[str, Any], event: dict[str, Any], publish: Publish, mail: Mail | None,
                  page: Page | None) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
        """The ways this event goes out, in order, each as (name, send)."""
        message = {"id": event["id"], "type": event["type"], "referral": doc["_id"], "to": event["to"],
                   "patient": doc["patient"], "priority": event["priority"], "status": doc["status"],
                   "at": event["at"].isoformat() if isinstance(event["at"], datetime) else event["at"]}
        channels: list[tuple[str, Callable[[], Awaitable[Any]]]] = [("feed", lambda: publish(message))]
        if mail is not None:
            channels.append(("mail", lambda: mail(
                event["to"], f"[Qilu] referral {doc['_id'][:8]} {event['type']}",
                f"Referral {doc['_id']} ({doc['priority']}, {doc['specialty']}): {event['type']}; "
                f"it is now {doc['status']}. Open Qilu to see it.")))
        paged = [o for o in event["to"] if o != event.get("actor")]  # not those who made the move
        if page is not None and paged and (on_call := self.pager_text(doc, event)) is not None:
            channels.append(("sms", lambda: page(paged, on_call, event["id"])))
        if page is not None and (to_patient := self.patient_text(doc, event)) is not None:
            # A key of its own: the provider would drop a second message under the event's key as a repeat.
            channels.append(("sms-patient", lambda: page([doc["patient"]], to_patient, f"{event['id']}:patient")))
        return channels

    def _portal(self) -> str:
        # The record's API lives at <portal>/fhir: the portal's pages are beside it.
        return self.records.base_url.removesuffix("/fhir")

    def patient_text(self, doc: dict[str, Any], event: dict[str, Any]) -> str | None:
        """The text message telling the patient where and when to go, or None; it names no diagnosis."""
        if event["type"] not in PATIENT_TEXTS:
            return None
        start = doc.get("scheduled_start")
        return PATIENT_TEXTS[event["type"]].format(
            target=doc.get("target_name") or "上级医院", origin=doc.get("origin_name") or "基层医院",
            start=_aware(start).astimezone(CHINA_STANDARD_TIME).strftime("%m月%d日 %H:%M") if start else "",
            portal=self._portal())

    def pager_text(self, doc: dict[str, Any], event: dict[str, Any]) -> str | None:
        """The text message for an event that must reach someone at once, or None. It names no patient: a text
        message may be read on a locked phone's screen."""
        if doc["priority"] not in self.rules.paged_priorities or event["type"] not in PAGER_TEXTS:
            return None
        deadline = doc.get("deadline")
        return PAGER_TEXTS[event["type"]].format(
            priority=PRIORITY_WORDS.get(doc["priority"], doc["priority"]),
            target=doc.get("target_name") or "上级医院",
            deadline=_aware(deadline).astimezone(CHINA_STANDARD_TIME).strftime("%H:%M") if deadline else "尽快",
            link=f"{self._portal()}/referrals/{doc['_id']}")

    async def _mark_sent(self, doc: dict[str, Any], sent: set[str], reached: dict[str, list[str]]) -> None:
        """Mark delivered events sent (and note the channels a held-back event reached), under the same claims as
        the transitions (FerretDB would lose either)."""
        for attempt in range(WRITE_ATTEMPTS):
            outbox = doc.get("outbox", [])
            indexes = [i for i, e in enumerate(outbox) if e["id"] in sent and not e.get("sent")]
            partial = {i: reached[e["id"]] for i, e in enumerate(outbox) if e["id"] in reached}
            still_pending = any(not e.get("sent") and e["id"] not in sent for e in outbox)
            if not indexes and not partial and still_pending == doc.get("outbox_pending"):
                return

            async def write(rev: int, indexes: list[int] = indexes, partial: dict[int, list[str]] = partial,
                            still_pending: bool = still_pending) -> bool:
                return await self.store.mark_sent(doc["_id"], rev, indexes, still_pending, partial)

            if await self._claimed_write(doc, write):
                return
            await asyncio.sleep(0.02 * (attempt + 1))
            doc = await self.store.get(doc["_id"])
        # Left unmarked, the events go out again on the next run: at least once, and the portals dedupe by id.
        log.warning("outbox marking gave way to transitions", referral=doc["_id"])

    # --- statistics for the administrator's dashboard ------------------------------------------------------

    async def refresh_stats(self) -> dict[str, Any]:
        now = self.clock()
        flows = await self.store.aggregate([
            {"$group": {"_id": {"direction": "$direction", "month": "$month", "origin": "$origin"}, "n": {"$sum": 1}}}])
        directory = await self.directory.get()
        by_city: dict[tuple[str, str, str], int] = {}
        for row in flows:
            hospital = directory.hospitals.get(row["_id"]["origin"])
            city = hospital.division[:4] + "00" if hospital else "unknown"
            key = (row["_id"]["direction"], row["_id"]["month"], city)
            by_city[key] = by_city.get(key, 0) + row["n"]
        accepted = await self.store.aggregate([
            {"$match": {"accepted_at": {"$gte": now - timedelta(days=30)}}},
            {"$project": {"target": 1, "accept_minutes": 1}}])
        minutes_by_target: dict[str, list[float]] = {}
        for row in accepted:
            minutes_by_target.setdefault(row["target"], []).append(row["accept_minutes"])
        all_minutes = sorted(m for values in minutes_by_target.values() for m in values)
        rejections = await self.store.aggregate([
            {"$match": {"status": "rejected"}}, {"$group": {"_id": "$status_reason", "n": {"$sum": 1}}},
            {"$sort": {"n": -1}}, {"$limit": 20}])
        breaches = await self.store.aggregate([
            {"$match": {"escalations": {"$gt": 0}}}, {"$group": {"_id": "$month", "n": {"$sum": 1}}}])
        failed = await self.store.count({"status": "failed"})
        stats = {
            "computed": now,
            "flows": [{"direction": d, "month": m, "city": c, "count": n} for (d, m, c), n in sorted(by_city.items())],
            "accept_minutes": {"count": len(all_minutes), "median": _percentile(all_minutes, 50),
                               "p90": _percentile(all_minutes, 90)},
            "accept_by_target": {t: {"count": len(v), "median": statistics.median(v)}
                                 for t, v in minutes_by_target.items()},
            "rejection_reasons": [{"reason": r["_id"], "count": r["n"]} for r in rejections],
            "sla_breaches": {"escalated_by_month": {r["_id"]: r["n"] for r in breaches}, "failed": failed},
        }
        await self.store.save_stats(stats)
        return stats

    async def stats(self, caller: Caller) -> dict[str, Any]:
        decision = decide_by_role("referral-stats", caller.role)
        if not decision.allowed:
            raise ReferralRefused(403, "Administrators only", decision.rule)
        stats = await self.store.load_stats() or await self.refresh_stats()
        stats.pop("_id", None)
        stats["computed"] = _aware(stats["computed"]).isoformat()
        return stats


def _percentile(sorted_values: list[float], percent: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(percent / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]
