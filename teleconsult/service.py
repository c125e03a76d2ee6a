"""The consult rules: who may hold, see, join and end a room; its states; chat, shared records, recording, opinion.

A room's people are kept here (who is present, what they agreed to); its media is the hub's. Record writes
are made as the system once these rules have allowed them: a specialist of another hospital, holding the consult or
invited to it, writes the consult's chat and opinion into a record their own organization does not manage.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from ehr.access import HOST, Reach, consult_party, decide_by_role, decide_party
from ehr.models import RecordError
from ehr.service import RecordService
from qilu.auth import Caller
from referral.service import ReferralRefused, ReferralService
from teleconsult.hub import MediaHub
from teleconsult.models import (ENCOUNTER_STATUS, RECORDING_SHA256_SYSTEM, ConsultBody, OpinionBody, communication,
                                encounter, opinion_composition, public_view)
from teleconsult.store import ConsultStore

log = structlog.get_logger("qilu.teleconsult")
# Why a consult ended, by code: the English words kept on the consult and in its referral's history.
END_REASONS = {"empty": "everyone left", "host": "ended by the host", "hub-stopped": "the media host stopped"}

Enqueue = Callable[[str], None]
Kick = Callable[[], None]


class ConsultRefused(Exception):
    """A refusal with its HTTP status; over the WebSocket it closes with code 4000 + status."""

    def __init__(self, status: int, title: str, detail: str, *, fatal: bool = True):
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.fatal = fatal  # over the WebSocket: close the connection, or only tell the client

    @property
    def close_code(self) -> int:
        return 4000 + self.status

    @property
    def error(self) -> str:
        return self.title.lower().replace(" ", "-")


# The short name of each refusal (over the WebSocket its `error`, as clients know it).
REFUSAL_TITLES = {"consult-join": "Not invited", "consult-end": "Host only",
                  "consult-opinion": "Practitioners of the consult only"}


def not_found(consult_id: str) -> ConsultRefused:
    return ConsultRefused(404, "Consult not found", f"Consult {consult_id} is not known")


@dataclass(frozen=True)
class ConsultRules:
    grace_s: float = 120.0
    opens_before_s: float = 1800.0
    recording_dir: Path = Path("var/consult-recordings")
    ice_servers: tuple[dict[str, Any], ...] = ()
    public_base_url: str = "http://127.0.0.1:8000"  # where this process serves playback


class Channel:
    """A participant's signaling connection as the rules see it: send a message, or close it."""

    async def send(self, message: dict[str, Any]) -> None:  # pragma: no cover - the API provides it
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:  # pragma: no cover
        raise NotImplementedError


@dataclass
class Presence:
    consult_id: str
    peer_id: str
    caller: Caller
    consent: bool
    channel: Channel
    host: bool
    joined: datetime = field(default_factory=lambda: datetime.now(UTC))

    def public(self) -> dict[str, Any]:
        return {"peer": self.peer_id, "who": self.caller.who, "name": self.caller.name, "role": self.caller.role,
                "host": self.host, "consent": self.consent}


def now_utc() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class ConsultService:
    def __init__(self, store: ConsultStore, records: RecordService, referrals: ReferralService | None,
                 hub: MediaHub | None, rules: ConsultRules, enqueue_recording: Enqueue | None = None,
                 kick_outbox: Kick | None = None):
        # `records` acts as the system; every rule is applied here before it writes. A worker has no hub.
        self.store = store
        self.records = records
        self.referrals = referrals
        self.hub = hub
        self.rules = rules
        self.enqueue_recording = enqueue_recording
        self.kick_outbox = kick_outbox  # delivers a referral's new events now rather than at the next sweep
        self._present: dict[str, dict[str, Presence]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.Task] = {}

    def _lock(self, consult_id: str) -> asyncio.Lock:
        return self._locks.setdefault(consult_id, asyncio.Lock())

    def _reach(self, caller: Caller) -> Reach:
        return Reach(caller, self.records.store)

    # --- who is who in a room ---------------------------------------------------------------------------


    @staticmethod
    def _may_see(caller: Caller, doc: dict[str, Any]) -> bool:
        # The patient sees every consult about them; joining takes an invitation.
        return decide_party("consult-read", consult_party(caller, doc)).allowed

    def _party_check(self, action: str, caller: Caller, doc: dict[str, Any] | None, consult_id: str
                     ) -> dict[str, Any]:
        """The policy's answer for `action` on this consult: 404 as if missing, or 403 naming the rule."""
        decision = decide_party(action, consult_party(caller, doc)) if doc is not None else None
        if decision is None or decision.outcome == "hide":
            raise not_found(consult_id)
        if not decision.allowed:
            raise ConsultRefused(403, REFUSAL_TITLES.get(action, "Not allowed"), decision.rule)
        return doc

    async def get(self, caller: Caller, consult_id: str) -> dict[str, Any]:
        doc = await self.store.get(consult_id)
        if doc is None or not self._may_see(caller, doc):
            raise not_found(consult_id)
        return doc

    async def list(self, caller: Caller, referral: str | None, status: str | None, limit: int, offset: int
                   ) -> tuple[list[dict[str, Any]], int]:
        """The consults the caller may see (the same rule as one consult's), newest first, and how many there are."""
        decision = decide_by_role("clinical-read", caller.role)
        if not decision.allowed:
            raise ConsultRefused(403, "Practitioners and patients only", decision.rule)
        if caller.role == "practitioner" and caller.fhir_user:
            query: dict[str, Any] = {"$or": [{"host": caller.fhir_user}, {"invited": caller.fhir_user}]}
        elif caller.role == "patient" and caller.fhir_user:
            query = {"patient": caller.fhir_user}
        else:
            raise ConsultRefused(403, "Practitioners and patients only",
                                 "Consults are listed to the practitioners in them and to their patient")
        if referral:
            query["referral"] = referral
        if status == "open":
            query["status"] = {"$in": ["scheduled", "live"]}
        elif status:
            query["status"] = status
        return await self.store.find(query, skip=offset, limit=limit), await self.store.count(query)

    # --- holding a consult ---------------------------------------------------------------------------------

    async def create(self, caller: Caller, body: ConsultBody) -> dict[str, Any]:
        decision = decide_by_role("referral-work", caller.role)
        if not decision.allowed or not caller.fhir_user:
            raise ConsultRefused(403, "Practitioners only", decision.rule or "Consults are held by practitioners")
        referral_id = None
        patient = body.patient
        if body.referral:
            if self.referrals is None:
                raise ConsultRefused(422, "Referrals unavailable", "This server holds stand-alone consults only")
            try:
                referral = await self.referrals.get(caller, body.referral)
            except ReferralRefused:
                raise ConsultRefused(404, "Referral not found", f"Referral {body.referral} is not known") from None
            referral_id = referral["_id"]
            if patient and _ref(patient, "Patient") != referral["patient"]:
                raise ConsultRefused(422, "Patient of another referral",
                                     "patient must be the referral's patient (or left out)")
            patient = referral["patient"]
        if not patient:
            raise ConsultRefused(422, "Patient or referral required",
                                 "Name the referral the consult is about, or the patient of a stand-alone consult")
        patient = _ref(patient, "Patient")
        patient_id = patient.removeprefix("Patient/")
        if not referral_id and not (await self._reach(caller).decide_about("consult", patient_id)).allowed:
            raise ConsultRefused(404, "Patient not found", f"{patient} is not known")
        invited = []
        for index, role in enumerate(dict.fromkeys(body.invite)):
            if role == caller.fhir_user:
                continue  # the host is there anyway
            try:
                await self.records.read("PractitionerRole", role.removeprefix("PractitionerRole/"))
            except RecordError:
                raise ConsultRefused(422, "Unknown invitee", f"invite[{index}] {role} is not in the directory"
                                     ) from None
            invited.append(role)
        if not invited:
            raise ConsultRefused(422, "Nobody invited", "Invite at least one other practitioner")
        consult_id = uuid.uuid4().hex
        now = now_utc()
        await self.records.create("Encounter", encounter(consult_id, patient, caller.fhir_user, invited,
                                                         body.scheduled, caller.organization, referral_id,
                                                         body.reason), resource_id=consult_id)
        doc = {"_id": consult_id, "status": "scheduled", "encounter": f"Encounter/{consult_id}", "patient": patient,
               "referral": referral_id, "host": caller.fhir_user, "host_org": caller.organization,
               "invited": invited, "invite_patient": body.invite_patient, "scheduled": body.scheduled,
               "reason": body.reason, "created": now, "started": None, "ended": None, "consents": {},
               "recording": {"status": "none"}}
        await self.store.insert(doc)
        log.info("consult created", consult=consult_id, referral=referral_id, invited=len(invited))
        if referral_id:
            await self._tell_referral(doc, "consult-start", "consult-started", by=caller.fhir_user,
                                      org=caller.organization, why=doc.get("reason"))
        return doc

    async def _tell_referral(self, doc: dict[str, Any], action: str, event: str, *, by: str | None, org: str | None,
                             why: str | None = None, why_code: str | None = None) -> None:
        """Put a step of the consult (started, live, ended) in its referral's history, and on both hospitals' live
        feed: whoever has the referral page open sees it without reloading."""
        if not doc.get("referral"):
            return
        try:
            await self.referrals.note_in_history(doc["referral"], {
                "by": by, "org": org, "action": action, "why": why, "why_code": why_code, "consult": doc["_id"]},
                event=event)
        except ReferralRefused as refused:
            # The consult stands (its page and the consult list show it); only the live notice is lost.
            log.warning("consult not noted on its referral", consult=doc["_id"], referral=doc["referral"],
                        status=refused.status)
            return
        if self.kick_outbox is not None:
            self.kick_outbox()

    async def _set_encounter_status(self, doc: dict[str, Any], status: str, now: datetime) -> None:
        current = (await self.records.read("Encounter", doc["_id"]))["resource"]
        resource = {k: v for k, v in current.items() if k != "meta"}
        resource["status"] = ENCOUNTER_STATUS[status]
        period = dict(resource.get("period") or {})
        instant = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if status == "live":
            period["start"] = instant
        elif status == "ended":
            period.setdefault("start", instant)
            period["end"] = instant
        resource["period"] = period
        await self.records.update("Encounter", doc["_id"], resource)

    # --- joining and leaving ----------------------------------------------------------------------------------

    def check_joinable(self, caller: Caller, doc: dict[str, Any] | None, consult_id: str) -> dict[str, Any]:
        self._party_check("consult-join", caller, doc, consult_id)
        if doc["status"] == "ended":
            raise ConsultRefused(409, "Consult ended", "This consult has ended")
        opens = _aware(doc["scheduled"]) - timedelta(seconds=self.rules.opens_before_s)
        if doc["status"] == "scheduled" and now_utc() < opens:
            raise ConsultRefused(409, "Not open yet", f"The room opens at {opens.isoformat()}")
        return doc

    async def joinable(self, caller: Caller, consult_id: str) -> dict[str, Any]:
        return self.check_joinable(caller, await self.store.get(consult_id), consult_id)

    def present(self, consult_id: str) -> list[Presence]:
        return list(self._present.get(consult_id, {}).values())

    async def join(self, caller: Caller, consult_id: str, consent: bool, channel: Channel) -> Presence:
        """Admit the caller (already audited by the API): reply `joined`, then the hub sends its offer."""
        async with self._lock(consult_id):
            doc = await self.joinable(caller, consult_id)
            now = now_utc()
            if doc["status"] == "scheduled":
                doc = await self.store.update(consult_id, {"status": "live", "started": now},
                                              when_status=("scheduled",)) or await self.joinable(caller, consult_id)
                await self._set_encounter_status(doc, "live", now)
                log.info("consult live", consult=consult_id)
                await self._tell_referral(doc, "consult-live", "consult-live", by=caller.fhir_user,
                                          org=caller.organization)
            room = self._present.setdefault(consult_id, {})
            for earlier in [p for p in room.values() if p.caller.user_id == caller.user_id]:
                # The same person again (a reload, a second device): the new connection replaces the old one.
                room.pop(earlier.peer_id, None)
                await self.hub.release(consult_id, earlier.peer_id)
                await earlier.channel.close(4409, "joined again from another connection")
            timer = self._timers.pop(consult_id, None)
            if timer is not None:
                timer.cancel()
            presence = Presence(consult_id, uuid.uuid4().hex[:12], caller, consent, channel,
                                consult_party(caller, doc) == HOST)
            room[presence.peer_id] = presence
            await self.store.update(consult_id, {f"consents.{caller.user_id}": {"who": caller.who, "consent": consent,
                                                                                "at": now}})
            await channel.send({"type": "joined", "peer": presence.peer_id, "consult": public_view(doc),
                                "iceServers": list(self.rules.ice_servers), "peers": self._peers(consult_id),
                                "recording": self._all_consent(consult_id)})

            async def lost() -> None:
                await channel.send({"type": "error", "error": "media-failed", "code": 4410,
                                    "message": "The media connection failed; join again"})
                await channel.close(4410, "media connection failed")

            try:
                await self.hub.admit(consult_id, presence.peer_id, channel.send, lost)
            except BaseException:
                room.pop(presence.peer_id, None)
                await self.hub.release(consult_id, presence.peer_id)
                raise
            await self._apply_recording_policy(doc)
            await self._broadcast_peers(consult_id)
            return presence

    async def leave(self, presence: Presence) -> None:
        consult_id = presence.consult_id
        async with self._lock(consult_id):
            room = self._present.get(consult_id, {})
            if room.get(presence.peer_id) is not presence:
                return  # already gone (replaced, or the room ended)
            room.pop(presence.peer_id)
            await self.hub.release(consult_id, presence.peer_id)
            doc = await self.store.get(consult_id)
            if doc is None or doc["status"] == "ended":
                return
            await self._apply_recording_policy(doc)
            await self._broadcast_peers(consult_id)
            if not room:
                self._present.pop(consult_id, None)
                self._timers[consult_id] = asyncio.ensure_future(self._end_when_still_empty(consult_id))

    async def _end_when_still_empty(self, consult_id: str) -> None:
        await asyncio.sleep(self.rules.grace_s)
        async with self._lock(consult_id):
            if self._timers.get(consult_id) is not asyncio.current_task() or self._present.get(consult_id):
                return
            self._timers.pop(consult_id, None)
            doc = await self.store.get(consult_id)
            if doc is not None and doc["status"] == "live":
                await self._end(doc, by=None, reason="empty")

    def _peers(self, consult_id: str) -> list[dict[str, Any]]:
        return [p.public() for p in self.present(consult_id)]

    async def _broadcast(self, consult_id: str, message: dict[str, Any], *, skip: str | None = None) -> None:
        for presence in self.present(consult_id):
            if presence.peer_id != skip:
                await presence.channel.send(message)

    async def _broadcast_peers(self, consult_id: str) -> None:
        await self._broadcast(consult_id, {"type": "peers", "peers": self._peers(consult_id),
                                           "iceServers": list(self.rules.ice_servers),
                                           "recording": self._all_consent(consult_id)})

    # --- recording: only while everyone present has agreed --------------------------------------------------

    def _all_consent(self, consult_id: str) -> bool:
        present = self.present(consult_id)
        return bool(present) and all(p.consent for p in present)

    def recording_path(self, consult_id: str) -> Path:
        return self.rules.recording_dir / consult_id / "recording.mp4"

    async def _apply_recording_policy(self, doc: dict[str, Any]) -> None:
        recording = self._all_consent(doc["_id"])
        started = (doc.get("recording") or {}).get("status") == "recording"
        if recording and not started:
            path = self.recording_path(doc["_id"])
            await self.hub.record(doc["_id"], path, paused=False)
            await self.store.update(doc["_id"], {"recording": {"status": "recording", "path": str(path),
                                                               "started": now_utc()}})
            doc["recording"] = {"status": "recording"}
        elif started:
            await self.hub.record(doc["_id"], None, paused=not recording)

    # --- ending --------------------------------------------------------------------------------------------

    async def end(self, caller: Caller, consult_id: str) -> dict[str, Any]:
        async with self._lock(consult_id):
            doc = self._party_check("consult-end", caller, await self.store.get(consult_id), consult_id)
            if doc["status"] == "ended":
                raise ConsultRefused(409, "Consult ended", "This consult has ended already")
            return await self._end(doc, by=caller.who, reason="host")

    async def _end(self, doc: dict[str, Any], *, by: str | None, reason: str) -> dict[str, Any]:
        """End it; `reason` is one of END_REASONS."""
        consult_id, now = doc["_id"], now_utc()
        ended = await self.store.update(consult_id, {"status": "ended", "ended": now, "ended_by": by,
                                                     "end_reason": END_REASONS[reason]},
                                        when_status=("scheduled", "live"))
        if ended is None:
            raise ConsultRefused(409, "Consult ended", "This consult has ended already")
        await self._set_encounter_status(ended, "ended", now)
        await self._tell_referral(ended, "consult-end", "consult-ended", by=by, org=None, why=END_REASONS[reason],
                                  why_code=f"consult-end-{reason}")
        timer = self._timers.pop(consult_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        present = list(self._present.pop(consult_id, {}).values())
        for presence in present:
            await presence.channel.send({"type": "ended", "reason": reason})
        try:
            result = await self.hub.close_room(consult_id)
        finally:
            for presence in present:
                await presence.channel.close(1000, "consult ended")
        if result is None and (ended.get("recording") or {}).get("status") == "recording":
            # It started but never ran unpaused: there is no file.
            ended = await self.store.update(consult_id, {"recording.status": "empty"}) or ended
        if result is not None:
            ended = await self.store.update(consult_id, {"recording": {
                **(ended.get("recording") or {}), "status": "stopped", "path": str(result.path),
                "url": f"{self.rules.public_base_url.rstrip('/')}/api/consults/{consult_id}/recording",
                "seconds": round(result.seconds, 3), "stopped": now}}) or ended
            if self.enqueue_recording is not None:
                self.enqueue_recording(consult_id)
        self._locks.pop(consult_id, None)
        log.info("consult ended", consult=consult_id, reason=reason, recorded=result is not None)
        return ended

    async def stop(self) -> None:
        """Process shutdown: the rooms this process hosts end (their connections cannot outlive it), which
        finishes and hands over their recordings; then the hub closes whatever is left."""
        hosted = set(self._present) | set(self._timers)
        for timer in list(self._timers.values()):
            timer.cancel()
        self._timers.clear()
        for consult_id in sorted(hosted):
            async with self._lock(consult_id):
                doc = await self.store.get(consult_id)
                if doc is not None and doc["status"] != "ended":
                    try:
                        await self._end(doc, by=None, reason="hub-stopped")
                    except Exception as exc:  # noqa: BLE001 - shutting down: the other rooms must end too
                        log.warning("consult not ended at shutdown", consult=consult_id, error=str(exc))
        if self.hub is not None:
            await self.hub.stop()

    # --- chat and shared records --------------------------------------------------------------------------

    async def chat(self, presence: Presence, text: str) -> None:
        doc = await self.store.get(presence.consult_id)
        written, _ = await self.records.create("Communication", communication(
            doc["_id"], doc["patient"], presence.caller.who, self._recipients(presence), now_utc(), text=text))
        await self._broadcast(presence.consult_id, {
            "type": "chat", "from": presence.public(), "text": text, "at": written.resource["sent"],
            "communication": f"Communication/{written.resource_id}"})

    async def share(self, presence: Presence, reference: str, note: str | None) -> list[str]:
        """Share a record of the consult's patient that the sender can read; returns the patients it touched."""
        doc = await self.store.get(presence.consult_id)
        resource_type, _, resource_id = reference.partition("/")
        reader = RecordService(self.records.store, self.records.base_url, self._reach(presence.caller))
        try:
            document = await reader.read(resource_type, resource_id)
        except RecordError:
            raise ConsultRefused(404, "Record not found", f"{reference} is not a record you can read",
                                 fatal=False) from None
        if doc["patient"] not in (document.get("compartment") or []) and reference != doc["patient"]:
            raise ConsultRefused(422, "Record of another patient", "Share only records of this consult's patient",
                                 fatal=False)
        written, _ = await self.records.create("Communication", communication(
            doc["_id"], doc["patient"], presence.caller.who, self._recipients(presence), now_utc(), text=note,
            reference=reference))
        await self._broadcast(presence.consult_id, {
            "type": "share", "from": presence.public(), "reference": reference, "note": note,
            "resourceType": resource_type, "communication": f"Communication/{written.resource_id}"})
        return [doc["patient"]]

    def _recipients(self, presence: Presence) -> list[str]:
        return sorted({p.caller.who for p in self.present(presence.consult_id) if p.peer_id != presence.peer_id
                       and "/" in p.caller.who and not p.caller.who.startswith("urn:")})

    # --- the consult note ------------------------------------------------------------------------------------

    async def opinion(self, caller: Caller, consult_id: str, body: OpinionBody) -> tuple[dict[str, Any], str]:
        # Either side may hold the consult (the specialist often does, inviting the referring doctor), so the note is
        # written by whichever practitioner took part: the host or one invited. The patient never writes it.
        doc = self._party_check("consult-opinion", caller, await self.store.get(consult_id), consult_id)
        if doc["status"] == "scheduled":
            raise ConsultRefused(409, "Consult not held yet", "Write the opinion once the consult has started")
        written, _ = await self.records.create("Composition", opinion_composition(
            consult_id, doc["patient"], caller.fhir_user, body, now_utc()))
        reference = f"Composition/{written.resource_id}"
        if doc.get("referral") and self.referrals is not None:
            await self.referrals.note_in_history(doc["referral"], {
                "by": caller.fhir_user, "org": caller.organization, "action": "consult-opinion",
                "why": f"consult opinion {reference}", "why_code": "consult-opinion", "consult": consult_id,
                "opinion": reference})
        log.info("consult opinion written", consult=consult_id, referral=doc.get("referral"))
        return doc, reference

    # --- the recording: playback and post-processing -------------------------------------------------------

    async def recording_file(self, caller: Caller, consult_id: str) -> tuple[dict[str, Any], Path]:
        doc = await self.store.get(consult_id)
        if doc is None:
            raise not_found(consult_id)
        if not self._may_see(caller, doc):
            patient_id = doc["patient"].removeprefix("Patient/")
            if not (await self._reach(caller).decide_about("consult", patient_id)).allowed:
                raise not_found(consult_id)
        recording = doc.get("recording") or {}
        if recording.get("status") not in ("stopped", "processed") or not recording.get("path"):
            raise ConsultRefused(404, "No recording", "This consult has no finished recording")
        path = Path(recording["path"])
        if not path.is_file():
            raise ConsultRefused(410, "Recording gone", "The recording's file is no longer there")
        return doc, path

    async def process_recording(self, consult_id: str, describe: Callable[[Path], Awaitable[dict[str, Any]]]
                                ) -> str | None:
        """Post-process a finished recording once: its facts, a thumbnail, a DocumentReference on the record."""
        doc = await self.store.get(consult_id)
        recording = (doc or {}).get("recording") or {}
        if doc is None or recording.get("status") not in ("stopped", "processed"):
            return None
        if recording.get("document_reference"):
            return recording["document_reference"]  # done before: a retry changes nothing
        path = Path(recording["path"])
        facts = await describe(path)
        thumbnail = facts.pop("thumbnail")
        if thumbnail:
            path.with_name("thumbnail.jpg").write_bytes(thumbnail)
        # The playback route of the process that recorded it (set when the consult ended).
        url = recording.get("url") or f"{self.rules.public_base_url.rstrip('/')}/api/consults/{consult_id}/recording"
        content: list[dict[str, Any]] = [{"attachment": {
            "contentType": "video/mp4", "url": url, "size": facts["size"], "hash": facts["sha1_base64"],
            "title": f"Consult recording ({facts['duration_s']:.0f} s)",
            "creation": _instant(recording.get("started"))}}]
        if thumbnail:
            content.append({"attachment": {"contentType": "image/jpeg", "title": "thumbnail",
                                           "data": base64.b64encode(thumbnail).decode(), "size": len(thumbnail)}})
        resource = {
            "resourceType": "DocumentReference", "id": f"consult-recording-{consult_id}", "status": "current",
            "identifier": [{"system": RECORDING_SHA256_SYSTEM, "value": facts["sha256"]}],
            "type": {"text": "远程会诊录像 Consult recording"},
            "subject": {"reference": doc["patient"]}, "date": _instant(now_utc()),
            "author": [{"reference": doc["host"]}],
            "description": f"Recording of consult {consult_id}, {facts['duration_s']:.1f} s",
            "content": content,
            "context": {"encounter": [{"reference": doc["encounter"]}],
                        "period": {"start": _instant(recording.get("started")),
                                   "end": _instant(recording.get("stopped"))}},
        }
        written = await self.records.update("DocumentReference", resource["id"], resource)
        reference = f"DocumentReference/{written.resource_id}"
        await self.store.update(consult_id, {"recording": {**recording, "status": "processed",
                                                           "document_reference": reference, **facts}})
        log.info("consult recording processed", consult=consult_id, seconds=facts["duration_s"], size=facts["size"])
        return reference

    # --- diagnostics ------------------------------------------------------------------------------------------

    async def diagnostics(self, caller: Caller, consult_id: str) -> dict[str, Any]:
        self._party_check("consult-diagnostics", caller, await self.store.get(consult_id), consult_id)
        report = self.hub.diagnostics(consult_id)
        report["present"] = len(self.present(consult_id))
        report["graceTimers"] = sum(1 for t in self._timers.values() if not t.done())
        return report


def _ref(value: str, resource_type: str) -> str:
    value = value.strip()
    return value if value.startswith(f"{resource_type}/") else f"{resource_type}/{value}"


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return _aware(moment).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
