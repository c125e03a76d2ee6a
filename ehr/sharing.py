"""Who a patient's records reach: the managing hospital and the hospitals they are shared with, kept as data.

A grant (an accepted referral) lets a hospital read a patient's records for a time, while the patient's Consent
allows it. The patient's reach document is the authority: single reads ask it, so a share or a revocation takes
effect at once. Every stored resource of the patient, and every history entry, carries the same hospitals in
`reach`, so a practitioner's search is ANDed with "my hospital is among them" instead of a list of patients.

A change is written to the patient's resources in bounded batches, first by the request that made it (a few
batches) and then by the worker's sweep, from where the last run stopped. Until a revocation has reached every
resource, a marker (hospital|patient) keeps that patient out of that hospital's searches; the marker goes once a
check, made after any write that began before the change must have ended, finds nothing reaching it any more. A
share that ends by the clock has its marker written ahead, starting at its end, so searches leave it at that
moment as reads do, before the sweep writes the change.

A change is marked on the reach document before the grant, Consent or Patient that makes it is written (`unsettle`):
until it is worked out again, the patient's shares are not trusted for reads and their hospitals' markers are in
force. Should the request stop in between, the sweep works it out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ehr.store import (ABANDONED_WRITE_AFTER, IN_FORCE, PATIENT_REACH_CHANGES, REACHED_TYPES, REVOKING_CHANGES,
                       RecordStore, moment_text)
from qilu.cache import ANNOUNCER

BATCH = 500
INLINE_BATCHES = 4  # what the request that changes a reach writes itself; the worker does the rest
# How far ahead a process reads a hospital's markers that start by the clock (what it keeps holds until then).
MARKERS_AHEAD = timedelta(seconds=60)
# Clinical types that may belong to no patient (a meeting of practitioners): what every practitioner reaches.
EVERY_PRACTITIONER = "*"
# The order in which a patient's documents are brought to a new reach: the Patient first, the history last.
STEPS: tuple[tuple[str, bool], ...] = tuple(
    (resource_type, history) for history in (False, True)
    for resource_type in sorted(REACHED_TYPES, key=lambda t: (t != "Patient", t)))


def consent_allows(consent: dict[str, Any], patient_ref: str, organization: str, now: datetime) -> bool:
    """Whether the patient's Consent lets `organization` read their records now."""
    if consent.get("status") != "active":
        return False
    if (consent.get("patient") or {}).get("reference") != patient_ref:
        return False
    provision = consent.get("provision") or {}
    if provision.get("type") == "deny":
        return False
    ends = _consent_ends(consent)
    if ends is not None and ends <= now:
        return False
    actors = [(a.get("reference") or {}).get("reference") for a in provision.get("actor") or []]
    # No actor named: the patient agreed to sharing with whichever hospital the referral goes to.
    return not actors or organization in actors


def _consent_ends(consent: dict[str, Any]) -> datetime | None:
    """The moment a Consent's period stops allowing: the end of its last day (a date or a dateTime)."""
    end = ((consent.get("provision") or {}).get("period") or {}).get("end")
    if not end:
        return None
    day = datetime.fromisoformat(end[:10]).replace(tzinfo=UTC)
    return day + timedelta(days=1)


def _shares_of(reach: dict[str, Any] | None) -> tuple[tuple[str, datetime | None], ...]:
    return tuple((share["org"], share["until"] and _aware(share["until"])) for share in (reach or {}).get("shares") or [])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _managing(patient: dict[str, Any] | None) -> set[str]:
    return set(((patient or {}).get("sp") or {}).get("organization") or [])


@dataclass(frozen=True)
class Markers:
    """A hospital's revocation markers as read at one moment: (patient id, start) of those in force by `until`."""
    starts: tuple[tuple[str, str], ...]
    until: datetime


@dataclass(frozen=True)
class Reached:
    """What decides who reads one patient's records: the hospital that manages them (as their Patient document
    says, a tombstone too) and the shares of their reach document, each with when it ends by the clock."""
    managing: frozenset[str]
    shares: tuple[tuple[str, datetime | None], ...]
    stale: bool = False  # a change is being worked out: no share is trusted until it is

    def shared(self, now: datetime) -> set[str]:
        """The hospitals shared with at this moment."""
        if self.stale:
            return set()
        return {org for org, until in self.shares if until is None or until > now}

    def orgs(self, now: datetime) -> set[str]:
        return set(self.managing) | self.shared(now)


# What this process knows of patients' reach and of hospitals' revocations under way, kept while it hears every
# change (the store announces its writes of Patients, reach documents and revocation markers). A share's end by
# the clock needs no announcement: it is judged at each look.
PATIENTS_REACHED = ANNOUNCER.cache(PATIENT_REACH_CHANGES)
REVOKING = ANNOUNCER.cache(REVOKING_CHANGES, size=10_000)
REACH_CACHES = (PATIENTS_REACHED, REVOKING)


class Sharing:
    """The reach of patients' records: computed from grants and Consents, and written to their resources."""

    def __init__(self, store: RecordStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *,
                 batch: int = BATCH, inline_batches: int = INLINE_BATCHES):
        self.store = store
        self.clock = clock
        self.batch = batch
        self.inline_batches = inline_batches

    # --- asking --------------------------------------------------------------------------------

    async def reached(self, patient_ids: set[str], patients: dict[str, dict[str, Any]] | None = None,
                      looked: dict[str, Reached] | None = None) -> dict[str, Reached]:
        """Each of these patients that exists (a deleted one too), with at most two look-ups in parallel and
        none for those this process keeps. `patients`: Patient documents that decide the managing hospital
        instead of the stored ones (about to be written); `looked`: what this request looked at already."""
        out: dict[str, Reached] = {}
        given = {pid: patients[pid] for pid in patient_ids if patients and pid in patients}
        missing = []
        for pid in sorted(patient_ids):
            kept = None if pid in given else (looked or {}).get(pid) or PATIENTS_REACHED.get(pid)
            if kept is None:
                missing.append(pid)
            else:
                out[pid] = kept
        if not missing:
            return out
        token = PATIENTS_REACHED.reading()
        fetched, reaches = await asyncio.gather(
            self.store.find_by_ids("Patient", [pid for pid in missing if pid not in given], include_deleted=True),
            self.store.patient_reaches(missing))
        by_id = {reach["_id"]: reach for reach in reaches}

        def reached_of(patient: dict[str, Any]) -> Reached:
            reach = by_id.get(patient["_id"])
            return Reached(frozenset(_managing(patient)), _shares_of(reach), bool((reach or {}).get("stale")))

        for patient in fetched:
            out[patient["_id"]] = reached_of(patient)
            PATIENTS_REACHED.keep(patient["_id"], out[patient["_id"]], token)
        for pid, patient in given.items():
            out[pid] = reached_of(patient)
        return out

    async def shared_with(self, patient_ids: set[str], organization: str | None) -> set[str]:
        """Which of these patients `organization` reads through a live share."""
        if not patient_ids or not organization:
            return set()
        now = self.clock()
        return {pid for pid, reached in (await self.reached(patient_ids)).items()
                if organization in reached.shared(now)}

    async def revoking_for(self, organization: str) -> frozenset[str]:
        """The patients kept out of this hospital's searches now: their revocation (or a share's end by the clock)
        is still being written to their resources."""
        now = self.clock()
        kept: Markers | None = REVOKING.get(organization)
        if kept is None or kept.until <= now:
            token = REVOKING.reading()
            until = now + MARKERS_AHEAD
            kept = Markers(tuple(await self.store.revoking_for(organization, moment_text(until))), until)
            REVOKING.keep(organization, kept, token)
        by = moment_text(now)
        return frozenset(patient for patient, start in kept.starts if start <= by)

    async def reach_of(self, patient_ids: set[str], patients: dict[str, dict[str, Any]] | None = None,
                       looked: dict[str, Reached] | None = None) -> dict[str, set[str]]:
        """The hospitals each patient's records reach now: the managing one and the live shares.
        `patients`: Patient documents about to be written, whose hospital counts instead of the stored one."""
        reached = await self.reached(patient_ids, patients, looked)
        now = self.clock()
        return {pid: reached[pid].orgs(now) if pid in reached else set() for pid in patient_ids}

    async def reaches_for(self, compartments: list[list[str]], patients: dict[str, dict[str, Any]] | None = None,
                          looked: dict[str, Reached] | None = None) -> list[list[str]]:
        """`reach` for documents of these compartments, with one look-up for all (a batch)."""
        members = {member.removeprefix("Patient/") for compartment in compartments for member in compartment}
        reach = await self.reach_of(members, patients, looked) if members else {}
        return [sorted(set().union(*(reach[m.removeprefix("Patient/")] for m in compartment)))
                if compartment else [EVERY_PRACTITIONER] for compartment in compartments]

    async def reach_of_document(self, resource_type: str, document: dict[str, Any], previous: dict[str, Any] | None,
                                looked: dict[str, Reached] | None = None) -> list[str]:
        """`reach` of a document about to be written (its sp and compartment made); `looked`: what the decision
        to write it looked at."""
        if document["deleted"]:
            return list((previous or {}).get("reach") or [])
        # A Patient's managing hospital is the one the new version names, not the stored one's.
        patients = {document["_id"]: document} if resource_type == "Patient" else None
        compartment = [f"Patient/{document['_id']}"] if resource_type == "Patient" else document["compartment"]
        return (await self.reaches_for([compartment], patients, looked))[0]

    # --- changing -------------------------------------------------------------------------------

    async def grant(self, source: str, patient_ref: str, organization: str, consent_ref: str,
                    start: datetime | None, until: datetime | None) -> None:
        """Set the share that `source` (a referral) gives, or with no `start` withdraw it; the reach follows."""
        patient_id = patient_ref.removeprefix("Patient/")
        await self.unsettle([patient_id])
        if start is None:
            await self.store.remove_grant(source)
        else:
            await self.store.put_grant({"_id": source, "patient": patient_id, "org": organization,
                                        "consent": consent_ref, "start": start, "until": until})
        await self.refresh(patient_id)

    async def unsettle(self, patient_ids: Iterable[str], formerly: set[str] = frozenset()) -> None:
        """Before a change of these patients' reach is written: distrust their shares until it is worked out,
        and keep them out of the searches of the hospitals it may take away (those shared with, `formerly`)."""
        patient_ids = sorted(set(patient_ids))
        reaches = {reach["_id"]: reach for reach in await self.store.patient_reaches(patient_ids)}
        # The mark's text starts with its moment, so the sweep can find marks left long ago.
        token = f"{moment_text(self.clock())}|{uuid.uuid4().hex}"
        for patient_id in patient_ids:
            at_risk = {org for org, _ in _shares_of(reaches.get(patient_id))} | set(formerly)
            if at_risk:
                await self.store.put_revoking(patient_id, dict.fromkeys(at_risk, IN_FORCE))
            await self.store.mark_reach_stale(patient_id, token)

    async def refresh(self, patient_id: str, formerly: set[str] = frozenset(),
                      inline_batches: int | None = None) -> None:
        """Work out the patient's reach again from their hospital, grants and Consents, and write it.
        `formerly`: hospitals the patient's resources may reach that their reach document does not name (the
        managing hospital before a transfer)."""
        # The mark is read before what it marks, so a change written after it is seen.
        reaches, markers = await asyncio.gather(self.store.patient_reaches([patient_id]),
                                                self.store.revoking_of(patient_id))
        stale = reaches[0].get("stale") if reaches else None
        # A reach document that holds only a mark was never written: as if there were none.
        reaches = [reach for reach in reaches if "gen" in reach]
        now = self.clock()
        grants = await self.store.grants_of(patient_id)
        consents = {f"Consent/{c['_id']}": c["resource"] for c in await self.store.find_by_ids(
            "Consent", sorted({g["consent"].removeprefix("Consent/") for g in grants}))}
        patient_ref = f"Patient/{patient_id}"
        shares: dict[str, datetime | None] = {}
        for grant in grants:
            consent = consents.get(grant["consent"])
            if consent is None or _aware(grant["start"]) > now:
                continue
            if not consent_allows(consent, patient_ref, grant["org"], now):
                continue
            ends = [_aware(moment) for moment in (grant.get("until"), _consent_ends(consent)) if moment]
            until = min(ends) if ends else None
            if until is not None and until <= now:
                continue
            known = shares.get(grant["org"], until)
            shares[grant["org"]] = None if known is None or until is None else max(known, until)
        patients = await self.store.find_by_ids("Patient", [patient_id], include_deleted=True)
        managing = _managing(patients[0]) if patients else set()
        orgs = managing | set(shares)
        before = set(reaches[0].get("orgs") or []) if reaches else set()
        # A marker in force says the resources may still reach its hospital.
        removed = (before | set(formerly) | {org for org, start in markers.items() if start == IN_FORCE}) - orgs
        shares_list = [{"org": org, "until": until} for org, until in sorted(shares.items())]
        # The markers wanted: in force for the hospitals taken away (they come first: from this moment the
        # patient is out of those hospitals' searches), and from its end for each share that ends by the clock.
        starts = dict.fromkeys(removed, IN_FORCE) | {
            org: moment_text(until) for org, until in shares.items() if until is not None and org not in managing}
        if changed := {org: start for org, start in starts.items() if markers.get(org) != start}:
            await self.store.put_revoking(patient_id, changed)
        await self.store.drop_revoking(patient_id, set(markers) - set(starts))
        unchanged = (not reaches and not grants and not removed) or (  # never shared: every write gives the hospital
            reaches and not removed and before == orgs and not reaches[0].get("pending") and [
                {"org": s["org"], "until": s["until"] and _aware(s["until"])} for s in reaches[0].get("shares") or []
            ] == shares_list)
        if not unchanged:
            untils = [until for until in shares.values() if until is not None]
            await self.store.put_patient_reach(patient_id, {
                "shares": shares_list,
                "orgs": sorted(orgs),
                # When the next share ends by the clock, as text so the embedded engine's index can range over it.
                "expires": moment_text(min(untils)) if untils else None})
        if stale:
            await self.store.clear_reach_stale(patient_id, stale)
        if not unchanged:
            await self.spread(patient_id,
                              max_batches=self.inline_batches if inline_batches is None else inline_batches)

    async def spread(self, patient_id: str, max_batches: int | None = None) -> bool:
        """Bring the patient's resources to their reach, from where the last run stopped; True when done."""
        reaches = await self.store.patient_reaches([patient_id])
        if not reaches or not reaches[0].get("pending"):
            return True
        gen, cursor = reaches[0]["gen"], reaches[0].get("cursor") or {"step": 0, "after": ""}
        patient_ref = f"Patient/{patient_id}"
        # The budget is in documents: a type the patient has nothing of costs one indexed look, no batch.
        step, after, read = cursor["step"], cursor["after"], 0
        budget = None if max_batches is None else max_batches * self.batch
        while step < len(STEPS):
            if budget is not None and read >= budget:
                return False
            resource_type, history = STEPS[step]
            documents = await self.store.reach_batch(resource_type, history, patient_ref, after, self.batch)
            wanted = await self.reaches_for([d.get("compartment") or [] for d in documents])
            changes = [(d["_id"], reach) for d, reach in zip(documents, wanted, strict=True) if d.get("reach") != reach]
            await self.store.set_reach(resource_type, history, changes)
            read += len(documents)
            if len(documents) < self.batch:
                step, after = step + 1, ""
            else:
                after = documents[-1]["_id"]
            if not await self.store.save_reach_cursor(patient_id, gen, {"step": step, "after": after}):
                # A newer change started over; its run (or the sweep) writes it.
                return await self.spread(patient_id, None if budget is None else max(0, budget - read) // self.batch)
        if not await self.store.finish_patient_reach(patient_id, gen):
            return await self.spread(patient_id, None if budget is None else max(0, budget - read) // self.batch)
        # A write that began before the change and ends after it has taken at most this long (else it was abandoned).
        await self.store.settle_revoking(patient_id, self.clock() + ABANDONED_WRITE_AFTER)
        return True

    # --- the worker's sweep ---------------------------------------------------------------------

    async def sweep(self, limit: int = 100) -> dict[str, int]:
        """Work out changes a request marked and left, finish reaches a request left half-written, end shares
        whose time is up, and lift the markers of revocations that have reached every resource."""
        now = self.clock()
        done = {"spread": 0, "expired": 0, "settled": 0, "reconciled": 0}
        # A mark older than any write that began with it: the request that made it stopped before its end.
        left = {"stale": {"$lte": moment_text(now - ABANDONED_WRITE_AFTER)}}
        for patient_id in await self.store.patients_with_reach(left, limit):
            await self.refresh(patient_id, inline_batches=0)
            done["reconciled"] += 1
        expired = {"expires": {"$lte": moment_text(now)}}
        for patient_id in await self.store.patients_with_reach(expired, limit):
            await self.refresh(patient_id, inline_batches=0)
            done["expired"] += 1
        for patient_id in await self.store.patients_with_reach({"pending": True}, limit):
            await self.spread(patient_id)
            done["spread"] += 1
        for marker in await self.store.revocations_to_settle(now, limit):
            patient_ref = f"Patient/{marker['patient']}"
            if await self._still_reaching(patient_ref, marker["org"]):
                # A write that began before the revocation put the hospital back: write the reach again.
                await self.refresh(marker["patient"], formerly={marker["org"]}, inline_batches=0)
                continue
            await self.store.remove_revoking(marker["_id"])
            done["settled"] += 1
        return done

    async def _still_reaching(self, patient_ref: str, organization: str) -> bool:
        for resource_type, history in STEPS:
            if await self.store.still_reaching(resource_type, history, patient_ref, organization):
                return True
        return False
