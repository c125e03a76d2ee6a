"""Who a patient's records reach: the managing hospital and the hospitals they are shared with, kept as data.

A grant (an accepted referral) lets a hospital read a patient's records for a time, while the patient's Consent
allows it. The patient's reach document is the authority: single reads ask it, so a share or a revocation takes
effect at once. Every stored resource of the patient, and every history entry, carries the same hospitals in
`reach`, so a practitioner's search is ANDed with "my hospital is among them" instead of a list of patients.

A change is written to the patient's resources in bounded batches, first by the request that made it (a few
batches) and then by the worker's sweep, from where the last run stopped. Until a revocation has reached every
resource, a marker (hospital|patient) keeps that patient out of that hospital's searches; the marker goes once a
check, made after any write that began before the change must have ended, finds nothing reaching it any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ehr.store import ABANDONED_WRITE_AFTER, REACHED_TYPES, RecordStore

BATCH = 500
INLINE_BATCHES = 4  # what the request that changes a reach writes itself; the worker does the rest
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


def live_shares(reach: dict[str, Any], now: datetime) -> set[str]:
    """The hospitals a patient's reach document shares with at this moment."""
    return {share["org"] for share in reach.get("shares") or []
            if share.get("until") is None or _aware(share["until"]) > now}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _managing(patient: dict[str, Any] | None) -> set[str]:
    return set(((patient or {}).get("sp") or {}).get("organization") or [])


class Sharing:
    """The reach of patients' records: computed from grants and Consents, and written to their resources."""

    def __init__(self, store: RecordStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *,
                 batch: int = BATCH, inline_batches: int = INLINE_BATCHES):
        self.store = store
        self.clock = clock
        self.batch = batch
        self.inline_batches = inline_batches

    # --- asking --------------------------------------------------------------------------------

    async def shared_with(self, patient_ids: set[str], organization: str | None) -> set[str]:
        """Which of these patients `organization` reads through a live share (one look-up)."""
        if not patient_ids or not organization:
            return set()
        now = self.clock()
        return {doc["_id"] for doc in await self.store.patient_reaches(sorted(patient_ids))
                if organization in live_shares(doc, now)}

    async def reach_of(self, patient_ids: set[str],
                       patients_read: dict[str, dict[str, Any]] | None = None) -> dict[str, set[str]]:
        """The hospitals each patient's records reach now: the managing one and the live shares.
        `patients_read`: Patient documents by id that the caller has read already (not read again)."""
        ids = sorted(patient_ids)
        known = [patients_read[pid] for pid in ids if patients_read and pid in patients_read]
        missing = sorted(set(ids) - {doc["_id"] for doc in known})
        fetched, reaches = await asyncio.gather(self.store.find_by_ids("Patient", missing, include_deleted=True),
                                                self.store.patient_reaches(ids))
        now = self.clock()
        out: dict[str, set[str]] = {pid: set() for pid in ids}
        for patient in [*known, *fetched]:
            out[patient["_id"]] |= _managing(patient)
        for reach in reaches:
            out[reach["_id"]] |= live_shares(reach, now)
        return out

    async def reaches_for(self, compartments: list[list[str]],
                          patients_read: dict[str, dict[str, Any]] | None = None) -> list[list[str]]:
        """`reach` for documents of these compartments, with one look-up for all (a batch)."""
        patients = {member.removeprefix("Patient/") for compartment in compartments for member in compartment}
        reach = await self.reach_of(patients, patients_read) if patients else {}
        return [sorted(set().union(*(reach[m.removeprefix("Patient/")] for m in compartment)))
                if compartment else [EVERY_PRACTITIONER] for compartment in compartments]

    async def reach_of_document(self, resource_type: str, document: dict[str, Any], previous: dict[str, Any] | None,
                                patients_read: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """`reach` of a document about to be written (its sp and compartment made)."""
        if document["deleted"]:
            return list((previous or {}).get("reach") or [])
        if resource_type == "Patient":
            # Its managing hospital is the one the new version names, not the stored one's.
            reaches = await self.store.patient_reaches([document["_id"]])
            shares = live_shares(reaches[0], self.clock()) if reaches else set()
            return sorted(_managing(document) | shares)
        return (await self.reaches_for([document["compartment"]], patients_read))[0]

    # --- changing -------------------------------------------------------------------------------

    async def grant(self, source: str, patient_ref: str, organization: str, consent_ref: str,
                    start: datetime | None, until: datetime | None) -> None:
        """Set the share that `source` (a referral) gives, or with no `start` withdraw it; the reach follows."""
        patient_id = patient_ref.removeprefix("Patient/")
        if start is None:
            await self.store.remove_grant(source)
        else:
            await self.store.put_grant({"_id": source, "patient": patient_id, "org": organization,
                                        "consent": consent_ref, "start": start, "until": until})
        await self.refresh(patient_id)

    async def refresh(self, patient_id: str, formerly: set[str] = frozenset(),
                      inline_batches: int | None = None) -> None:
        """Work out the patient's reach again from their hospital, grants and Consents, and write it.
        `formerly`: hospitals the patient's resources may reach that their reach document does not name (the
        managing hospital before a transfer)."""
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
        patients, reaches = await asyncio.gather(
            self.store.find_by_ids("Patient", [patient_id], include_deleted=True),
            self.store.patient_reaches([patient_id]))
        orgs = (_managing(patients[0]) if patients else set()) | set(shares)
        before = set(reaches[0].get("orgs") or []) if reaches else set()
        removed = (before | set(formerly)) - orgs
        shares_list = [{"org": org, "until": until} for org, until in sorted(shares.items())]
        if not reaches and not grants and not removed:
            return  # never shared: every write already gives its resources the managing hospital
        if reaches and not removed and before == orgs and not reaches[0].get("pending") and [
                {"org": s["org"], "until": s["until"] and _aware(s["until"])} for s in reaches[0]["shares"]
        ] == shares_list:
            return  # nothing changed (another Consent of the patient was written)
        if removed:
            # The marker comes first: from this moment the patient is out of those hospitals' searches.
            await self.store.mark_revoking(patient_id, removed)
        untils = [until for until in shares.values() if until is not None]
        await self.store.put_patient_reach(patient_id, {
            "shares": shares_list,
            "orgs": sorted(orgs),
            # When the next share ends by the clock, as text so the embedded engine's index can range over it.
            "expires": min(untils).isoformat(timespec="milliseconds") if untils else None})
        await self.spread(patient_id, max_batches=self.inline_batches if inline_batches is None else inline_batches)

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
        """Finish reaches a request left half-written, end shares whose time is up, and lift the markers of
        revocations that have reached every resource."""
        now = self.clock()
        done = {"spread": 0, "expired": 0, "settled": 0}
        expired = {"expires": {"$ne": None, "$lte": now.isoformat(timespec="milliseconds")}}
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
