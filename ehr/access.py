"""The one access policy: for a caller, an action and the patients it concerns, allow, hide (404) or refuse (403).

Every path to patient data asks it: the FHIR API (each Bundle entry as if sent alone), cards, referrals,
consults and the pages. Its rules are the tables `RULES` (actions about a patient, by the caller's
relation to that patient) and `ROLE_RULES` (actions the role alone decides); the README's "who sees what"
table is rendered from them (`who_sees_what`) and a test keeps the two equal. A `Reach` is one caller's
view through the policy; the record handle a request gets is bound to it, and only the system's own jobs
(`caller=None`) hold a record without one.

A refusal never tells what exists: a patient outside the caller's reach is answered as if missing, and
whatever the role alone decides is decided before any lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehr.models import RecordError
from ehr.sharing import EVERY_PRACTITIONER, Reached, Sharing
from ehr.store import RecordStore
from qilu.auth import Caller

# The directory everybody may read and only administrators edit; the rest is clinical.
DIRECTORY_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService"})
AUDIT_TYPE = "AuditEvent"
# Clinical types that may name no patient (a meeting of practitioners; the provenance of a directory entry).
# Every other clinical resource must belong to a patient, or nobody's record would hold it.
MAY_NAME_NO_PATIENT = frozenset({"Appointment", "Provenance"})

# --- the rules ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """allow, hide (answer as if missing: 404) or refuse (403 naming `rule`)."""

    outcome: str
    rule: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


ALLOW = Decision("allow")
HIDE = Decision("hide")


def refuse(rule: str) -> Decision:
    return Decision("refuse", rule)


NO_CLINICAL = "Administrators manage users and the directory and read no clinical data"
PATIENT_WRITES_NOTHING = "Patients read their records and write nothing clinical"
WRITE_MANAGED = "A practitioner writes only the records of patients their organization manages"
TRANSFER_ONLY = ("A patient moves to another hospital only by Patient/{id}/$transfer, done by the managing "
                 "hospital or an administrator, never by an ordinary update")
CARD_ISSUE = ("A card is issued to the patient themself or by a registrar of the hospital that manages the "
              "patient")
DIRECTORY_EDIT = "Only administrators edit the directory of hospitals and practitioners"
AUDIT_READ = ("The audit trail is read by administrators; a patient sees who accessed their records at "
              "/api/me/access-log")
AUDIT_WRITE = "The audit trail is written by the server only"

# How a caller stands to one patient.
SELF, OTHER_PATIENT, MANAGING, SHARED, UNRELATED, ADMIN = (
    "self", "other-patient", "managing", "shared", "unrelated", "admin")
RELATIONS = (SELF, OTHER_PATIENT, MANAGING, SHARED, UNRELATED, ADMIN)
RELATION_WORDS = {SELF: "the patient", OTHER_PATIENT: "another patient", MANAGING: "managing hospital",
                  SHARED: "shared hospital", UNRELATED: "other hospital", ADMIN: "administrator"}

# Actions about one patient: action -> relation -> decision. `read` covers read, vread, history, searches,
# _include/_revinclude and $everything; `create` a new resource in the patient's record; `write` an update
# or delete of one that exists (hidden from who may not read it).
RULES: dict[str, dict[str, Decision]] = {
    "read": {SELF: ALLOW, OTHER_PATIENT: HIDE, MANAGING: ALLOW, SHARED: ALLOW, UNRELATED: HIDE,
             ADMIN: refuse(NO_CLINICAL)},
    "create": {SELF: refuse(PATIENT_WRITES_NOTHING), OTHER_PATIENT: refuse(PATIENT_WRITES_NOTHING),
               MANAGING: ALLOW, SHARED: refuse(WRITE_MANAGED), UNRELATED: refuse(WRITE_MANAGED),
               ADMIN: refuse(NO_CLINICAL)},
    "write": {SELF: refuse(PATIENT_WRITES_NOTHING), OTHER_PATIENT: refuse(PATIENT_WRITES_NOTHING),
              MANAGING: ALLOW, SHARED: refuse(WRITE_MANAGED), UNRELATED: HIDE, ADMIN: refuse(NO_CLINICAL)},
    "transfer": {SELF: refuse(PATIENT_WRITES_NOTHING), OTHER_PATIENT: refuse(PATIENT_WRITES_NOTHING),
                 MANAGING: ALLOW, SHARED: refuse(TRANSFER_ONLY), UNRELATED: HIDE, ADMIN: ALLOW},
    # The card: its holder and the hospital that manages them; nobody else learns it exists.
    "card": {SELF: ALLOW, OTHER_PATIENT: HIDE, MANAGING: ALLOW, SHARED: HIDE, UNRELATED: HIDE, ADMIN: HIDE},
    # Issuing one: the same people; anyone else is refused alike, whether the patient exists or not.
    "card-issue": {SELF: ALLOW, OTHER_PATIENT: refuse(CARD_ISSUE), MANAGING: ALLOW, SHARED: refuse(CARD_ISSUE),
                   UNRELATED: refuse(CARD_ISSUE), ADMIN: refuse(CARD_ISSUE)},
    # The card's QR code is shown by its holder only.
    "card-qr": {SELF: ALLOW, OTHER_PATIENT: HIDE, MANAGING: HIDE, SHARED: HIDE, UNRELATED: HIDE, ADMIN: HIDE},
    # Referring up is the managing hospital's; referring back down or onwards, whoever the patient is shared with.
    "refer-up": {SELF: refuse(PATIENT_WRITES_NOTHING), OTHER_PATIENT: refuse(PATIENT_WRITES_NOTHING),
                 MANAGING: ALLOW, SHARED: refuse(WRITE_MANAGED), UNRELATED: HIDE, ADMIN: refuse(NO_CLINICAL)},
    "refer": {SELF: refuse(PATIENT_WRITES_NOTHING), OTHER_PATIENT: refuse(PATIENT_WRITES_NOTHING),
              MANAGING: ALLOW, SHARED: ALLOW, UNRELATED: HIDE, ADMIN: refuse(NO_CLINICAL)},
    "consult": {SELF: HIDE, OTHER_PATIENT: HIDE, MANAGING: ALLOW, SHARED: ALLOW, UNRELATED: HIDE,
                ADMIN: refuse(NO_CLINICAL)},
}

# Actions the role alone decides: action -> role -> decision.
ROLES = ("patient", "practitioner", "admin")
ROLE_RULES: dict[str, dict[str, Decision]] = {
    "directory-read": {"patient": ALLOW, "practitioner": ALLOW, "admin": ALLOW},
    "directory-write": {"patient": refuse(DIRECTORY_EDIT), "practitioner": refuse(DIRECTORY_EDIT), "admin": ALLOW},
    "clinical-read": {"patient": ALLOW, "practitioner": ALLOW, "admin": refuse(NO_CLINICAL)},
    "clinical-write": {"patient": refuse(PATIENT_WRITES_NOTHING), "practitioner": ALLOW,
                       "admin": refuse(NO_CLINICAL)},
    "audit-read": {"patient": refuse(AUDIT_READ), "practitioner": refuse(AUDIT_READ), "admin": ALLOW},
    "audit-write": {"patient": refuse(AUDIT_WRITE), "practitioner": refuse(AUDIT_WRITE), "admin": refuse(AUDIT_WRITE)},
    "card-verify": {"patient": refuse("A card is verified by a hospital's practitioner"), "practitioner": ALLOW,
                    "admin": refuse("A card is verified by a hospital's practitioner")},
    "access-log": {"patient": ALLOW, "practitioner": refuse("The access log is the patient's own"),
                   "admin": refuse("The access log is the patient's own")},
    "transfer": {"patient": refuse(PATIENT_WRITES_NOTHING), "practitioner": ALLOW, "admin": ALLOW},
    # Making, routing and working referrals and holding consults.
    "referral-work": {"patient": refuse(PATIENT_WRITES_NOTHING), "practitioner": ALLOW, "admin": refuse(NO_CLINICAL)},
    # Counts over every hospital's referrals, no patient in them: the province's administrators watch them.
    "referral-stats": {"patient": refuse("Referral statistics are for administrators"),
                       "practitioner": refuse("Referral statistics are for administrators"), "admin": ALLOW},
    "users": {"patient": refuse("Users are managed by administrators"),
              "practitioner": refuse("Users are managed by administrators"), "admin": ALLOW},
}


# Referrals and consults, by how the caller stands to the referral or consult itself. A referral's parties are
# the practitioners of its two hospitals (and of those it was offered to on the way); they keep the referral
# itself, while the record behind it is shared only as the `read` row above says (an active Consent). A
# consult's are its host, the practitioners invited and the patient when invited. What a party may do next
# (which side accepts, who schedules) is the referral workflow's.
PARTY, HOST, GUEST, INVITED_PATIENT, ITS_PATIENT, OUTSIDER = (
    "party", "host", "guest", "invited-patient", "its-patient", "outsider")
NOT_INVITED = "You are not invited to this consult"
HOST_ENDS = "Only the practitioner who holds the consult ends it"
OPINION_BY_PRACTITIONERS = ("The consult opinion is written by the practitioner who holds the consult or one "
                            "invited to it")
PARTY_RULES: dict[str, dict[str, Decision]] = {
    "referral-read": {PARTY: ALLOW, ITS_PATIENT: ALLOW, OUTSIDER: HIDE, ADMIN: HIDE},
    # Practitioners only (the role row of the same name decides the others before any lookup).
    "referral-work": {PARTY: ALLOW, OUTSIDER: HIDE},
    "consult-read": {HOST: ALLOW, GUEST: ALLOW, INVITED_PATIENT: ALLOW, ITS_PATIENT: ALLOW, OUTSIDER: HIDE,
                     ADMIN: HIDE},
    "consult-join": {HOST: ALLOW, GUEST: ALLOW, INVITED_PATIENT: ALLOW, ITS_PATIENT: refuse(NOT_INVITED),
                     OUTSIDER: HIDE, ADMIN: HIDE},
    "consult-end": {HOST: ALLOW, GUEST: refuse(HOST_ENDS), INVITED_PATIENT: refuse(HOST_ENDS),
                    ITS_PATIENT: refuse(HOST_ENDS), OUTSIDER: HIDE, ADMIN: HIDE},
    "consult-opinion": {HOST: ALLOW, GUEST: ALLOW, INVITED_PATIENT: refuse(OPINION_BY_PRACTITIONERS),
                        ITS_PATIENT: refuse(OPINION_BY_PRACTITIONERS), OUTSIDER: HIDE, ADMIN: HIDE},
    # What the media hub runs for a room: its host, and administrators (no patient data in it).
    "consult-diagnostics": {HOST: ALLOW, GUEST: HIDE, INVITED_PATIENT: HIDE, ITS_PATIENT: HIDE, OUTSIDER: HIDE,
                            ADMIN: ALLOW},
}


# Every route of the service and the gate that decides it, checked against the app by tests/test_route_matrix.py
# (a route without a row, or a row without a route, fails it). A gate is one of:
#   "public"            anyone, signed in or not (nothing about a patient);
#   "signed-in"         any signed-in caller, about themself only;
#   "page:ROLE,..."     a page shell for those roles (the data it shows comes through the API);
#   "role:ACTION"       the ROLE_RULES row ACTION, before anything is looked up;
#   "patient:ACTION"    the RULES row ACTION, by the caller's relation to the patient;
#   "party:ACTION"      the PARTY_RULES row ACTION, by how the caller stands to the referral or consult;
#   "type"              the row type_action() names for the resource type, then "read"/"create"/"write" by patient.
# A route may name several gates, asked in order.
ROUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("GET", "/openapi.json"): ("public",),
    ("GET", "/docs"): ("public",),
    ("GET", "/docs/oauth2-redirect"): ("public",),
    ("GET", "/redoc"): ("public",),
    ("GET", "/healthz"): ("public",),
    ("GET", "/readyz"): ("public",),
    ("GET", "/metrics"): ("public",),
    ("GET", "/.well-known/jwks.json"): ("public",),
    ("POST", "/api/auth/token"): ("public",),
    ("GET", "/fhir/metadata"): ("public",),
    ("GET", "/fhir/StructureDefinition"): ("public",),
    ("GET", "/fhir/StructureDefinition/{definition_id}"): ("public",),
    # FHIR: each entry of a Bundle is asked as the interaction it is.
    ("POST", "/fhir"): ("type",),
    ("GET", "/fhir/{resource_type}/_history"): ("type",),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history"): ("type",),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version_id}"): ("type",),
    ("GET", "/fhir/{resource_type}"): ("type",),
    ("POST", "/fhir/{resource_type}/_search"): ("type",),
    ("POST", "/fhir/{resource_type}"): ("type",),
    ("GET", "/fhir/{resource_type}/{resource_id}"): ("type",),
    ("PUT", "/fhir/{resource_type}/{resource_id}"): ("type",),
    ("DELETE", "/fhir/{resource_type}/{resource_id}"): ("type",),
    ("GET", "/fhir/Patient/{patient_id}/$everything"): ("role:clinical-read", "patient:read"),
    ("POST", "/fhir/Patient/{patient_id}/$transfer"): ("role:transfer", "patient:transfer"),
    # Bulk export: what the caller may read, each resource asked as a search would; the job is its owner's.
    ("GET", "/fhir/Patient/$export"): ("role:clinical-read", "patient:read"),
    ("GET", "/fhir/$export"): ("signed-in",),  # not offered (400 to all): only the patient-level export is
    ("GET", "/fhir/$export-status/{job_id}"): ("signed-in",),
    ("DELETE", "/fhir/$export-status/{job_id}"): ("signed-in",),
    ("GET", "/fhir/$export-file/{job_id}/{name}"): ("signed-in",),
    ("GET", "/api/me"): ("signed-in",),
    ("GET", "/api/me/access-log"): ("role:access-log",),
    ("GET", "/api/users"): ("role:users",),
    ("POST", "/api/users"): ("role:users",),
    ("POST", "/api/users/lookup"): ("role:users",),
    ("GET", "/api/users/{user_id}"): ("role:users",),
    ("POST", "/api/users/{user_id}/password"): ("role:users",),
    ("POST", "/api/users/{user_id}/{action}"): ("role:users",),
    ("POST", "/api/cards"): ("patient:card-issue",),
    ("GET", "/api/cards/mine"): ("signed-in",),
    ("POST", "/api/cards/verify"): ("role:card-verify",),
    ("GET", "/api/cards/{card_id}"): ("patient:card",),
    ("GET", "/api/cards/{card_id}/qr"): ("patient:card-qr",),
    ("POST", "/api/cards/{card_id}/{action}"): ("patient:card",),
    ("POST", "/api/referrals/route"): ("role:referral-work",),
    ("POST", "/api/referrals"): ("role:referral-work", "patient:refer-up", "patient:refer"),
    ("GET", "/api/referrals"): ("role:clinical-read", "party:referral-read"),
    ("GET", "/api/referrals/stats"): ("role:referral-stats",),
    ("GET", "/api/referrals/events"): ("party:referral-read",),
    ("GET", "/api/referrals/{referral_id}"): ("party:referral-read",),
    ("POST", "/api/referrals/{referral_id}/{action}"): ("role:referral-work", "party:referral-work"),
    ("POST", "/api/consults"): ("role:referral-work", "patient:consult"),
    ("GET", "/api/consults"): ("role:clinical-read", "party:consult-read"),
    ("GET", "/api/consults/{consult_id}"): ("party:consult-read",),
    ("POST", "/api/consults/{consult_id}/end"): ("party:consult-end",),
    ("POST", "/api/consults/{consult_id}/opinion"): ("party:consult-opinion",),
    ("GET", "/api/consults/{consult_id}/recording"): ("party:consult-read",),
    ("GET", "/api/consults/{consult_id}/diagnostics"): ("party:consult-diagnostics",),
    ("WEBSOCKET", "/api/consults/{consult_id}/ws"): ("party:consult-join",),
    # The web: login and language are open; each page is a shell for its roles.
    ("GET", "/static"): ("public",),
    ("GET", "/"): ("page:",),
    ("GET", "/login"): ("public",),
    ("POST", "/login"): ("public",),
    ("GET", "/session/resume"): ("public",),
    ("POST", "/session/refresh"): ("public",),
    ("POST", "/logout"): ("public",),
    ("GET", "/lang/{code}"): ("public",),
    ("GET", "/patients"): ("page:practitioner",),
    ("GET", "/patients/{patient_id}"): ("page:practitioner",),
    ("GET", "/me"): ("page:patient",),
    ("GET", "/me/card"): ("page:patient",),
    ("GET", "/me/access"): ("page:patient",),
    ("GET", "/referrals/new"): ("page:practitioner",),
    ("GET", "/referrals/inbox"): ("page:practitioner",),
    ("GET", "/referrals/outbox"): ("page:practitioner",),
    ("GET", "/referrals/{referral_id}"): ("page:practitioner",),
    ("GET", "/me/referrals"): ("page:patient",),
    ("GET", "/admin"): ("page:admin",),
    ("GET", "/admin/directory"): ("page:admin",),
    ("GET", "/admin/users"): ("page:admin",),
    ("GET", "/consults/{consult_id}"): ("page:practitioner,patient",),
}


def referral_party(caller: Caller, doc: dict[str, Any]) -> str:
    """How the caller stands to a stored referral."""
    if caller.role == "admin":
        return ADMIN
    if caller.role == "patient":
        return ITS_PATIENT if doc["patient"] == caller.fhir_user else OUTSIDER
    hospitals = {doc["origin"], doc["target"], *doc.get("tried", [])}
    return PARTY if caller.role == "practitioner" and caller.organization in hospitals else OUTSIDER


def consult_party(caller: Caller, doc: dict[str, Any]) -> str:
    """How the caller stands to a stored consult."""
    if caller.role == "admin":
        return ADMIN
    if caller.role == "practitioner":
        return HOST if caller.fhir_user == doc["host"] else GUEST if caller.fhir_user in doc["invited"] else OUTSIDER
    if caller.role == "patient" and caller.fhir_user == doc["patient"]:
        return INVITED_PATIENT if doc.get("invite_patient", False) else ITS_PATIENT
    return OUTSIDER


def decide_party(action: str, relation: str) -> Decision:
    return PARTY_RULES[action][relation]


def decide(action: str, relation: str) -> Decision:
    return RULES[action][relation]


def decide_by_role(action: str, role: str) -> Decision:
    return ROLE_RULES[action].get(role, refuse("Unknown role"))


def hidden(resource_type: str, resource_id: str) -> RecordError:
    # Word for word what a read of a missing record answers.
    return RecordError.single(404, "not-found", f"{resource_type}/{resource_id} is not known")


def refused(rule: str) -> RecordError:
    return RecordError.single(403, "forbidden", rule)


def enforce(decision: Decision, resource_type: str, resource_id: str) -> None:
    """Turn a refusing decision into the FHIR answer: 404 as if missing, or 403 naming the rule."""
    if decision.outcome == "hide":
        raise hidden(resource_type, resource_id)
    if decision.outcome == "refuse":
        raise refused(decision.rule)


def type_action(resource_type: str, *, writing: bool) -> str:
    """The role-level action an interaction of this type is, before any patient is looked at."""
    if resource_type in DIRECTORY_TYPES:
        return "directory-write" if writing else "directory-read"
    if resource_type == AUDIT_TYPE:
        return "audit-write" if writing else "audit-read"
    return "clinical-write" if writing else "clinical-read"


def who_sees_what() -> str:
    """The README's table, rendered from the rules."""
    words = {"allow": "yes", "hide": "as if missing (404)"}
    lines = ["| action | " + " | ".join(RELATION_WORDS[r] for r in RELATIONS) + " |",
             "|---" * (len(RELATIONS) + 1) + "|"]
    for action, row in RULES.items():
        cells = [words.get(row[r].outcome, "refused (403)") for r in RELATIONS]
        lines.append(f"| {action} | " + " | ".join(cells) + " |")
    lines += ["", "| action | " + " | ".join(ROLES) + " |", "|---" * (len(ROLES) + 1) + "|"]
    for action, by_role in ROLE_RULES.items():
        cells = [words.get(by_role[r].outcome, "refused (403)") for r in ROLES]
        lines.append(f"| {action} | " + " | ".join(cells) + " |")
    parties = list(dict.fromkeys(relation for row in PARTY_RULES.values() for relation in row))
    lines += ["", "| action | " + " | ".join(parties) + " |", "|---" * (len(parties) + 1) + "|"]
    for action, row in PARTY_RULES.items():
        cells = [words.get(row[r].outcome, "refused (403)") if r in row else "" for r in parties]
        lines.append(f"| {action} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- one caller's reach ----------------------------------------------------------------------------


class Reach:
    """What one caller may reach in the record; `caller=None` is the system itself (services, workers)."""

    def __init__(self, caller: Caller | None, store: RecordStore):
        self.caller = caller
        self.store = store
        self.sharing = Sharing(store)
        self._registered: set[str] = set()  # patients this request registers (new ids) at the caller's hospital
        # What this request's decisions last looked at, by patient: a write's reach is worked out from the same
        # look as the decision that let it (without Redis nothing is kept between the two).
        self.looked: dict[str, Reached] = {}

    @property
    def is_system(self) -> bool:
        return self.caller is None

    # --- by role, before any lookup ---

    def check_role(self, action: str) -> None:
        """Refuse what the caller's role may never do; run before any lookup, so it says nothing of what exists."""
        if self.is_system:
            return
        decision = decide_by_role(action, self.caller.role)
        if not decision.allowed:
            raise refused(decision.rule)

    def check_type(self, resource_type: str, *, writing: bool = False) -> None:
        self.check_role(type_action(resource_type, writing=writing))

    # --- relations to patients ---

    def count_as_managed(self, patient_id: str, resource: dict[str, Any]) -> None:
        """A Patient this request registers under a new id at the practitioner's organization is theirs for the
        rest of the request, so a Bundle's other entries may be about it. Only ever consulted for ids that no
        stored Patient holds: an existing Patient's own document always decides who manages it."""
        organization = (resource.get("managingOrganization") or {}).get("reference")
        if self.caller is not None and self.caller.role == "practitioner" and organization == self.caller.organization:
            self._registered.add(patient_id)

    def _managed_in(self, documents: list[dict[str, Any]]) -> set[str]:
        return {d["_id"] for d in documents
                if self.caller.organization in ((d.get("sp") or {}).get("organization") or [])}

    async def relations(self, patient_ids: set[str]) -> dict[str, str]:
        """How the caller stands to each of these patients. A practitioner's is decided by each patient's
        managing hospital and shares (ehr/sharing.py): a look at those patients, not a list of the hospital's,
        and no look at all for patients this process keeps."""
        caller = self.caller
        if caller.role == "admin":
            return {pid: ADMIN for pid in patient_ids}
        if caller.role == "patient":
            return {pid: SELF if pid == caller.patient_id else OTHER_PATIENT for pid in patient_ids}
        if caller.role != "practitioner" or not caller.organization:
            return {pid: UNRELATED for pid in patient_ids}
        reached = await self.sharing.reached(patient_ids) if patient_ids else {}
        self.looked.update(reached)
        now = self.sharing.clock()

        def relation(pid: str) -> str:
            # Deleted patients count too, so a deleted patient of this hospital reads as deleted (410).
            if pid not in reached:
                return MANAGING if pid in self._registered else UNRELATED
            if caller.organization in reached[pid].managing:
                return MANAGING
            return SHARED if caller.organization in reached[pid].shared(now) else UNRELATED

        return {pid: relation(pid) for pid in patient_ids}

    async def relation(self, patient_id: str, document: dict[str, Any] | None = None) -> str:
        """How the caller stands to one patient; with the Patient document in hand, no look-up for its hospital."""
        if document is not None and self.caller.role == "practitioner":
            if self.caller.organization and self._managed_in([document]):
                return MANAGING
            shared = await self.sharing.shared_with({patient_id}, self.caller.organization)
            return SHARED if shared else UNRELATED
        return (await self.relations({patient_id}))[patient_id]

    async def decide_about(self, action: str, patient_id: str, document: dict[str, Any] | None = None) -> Decision:
        """The policy's answer for an action about one patient (the system may do anything)."""
        if self.is_system:
            return ALLOW
        return decide(action, await self.relation(patient_id, document))

    async def readable_among(self, patient_ids: set[str]) -> set[str]:
        """Which of these patients the caller may read."""
        if self.caller is None:
            return set(patient_ids)
        return {pid for pid, relation in (await self.relations(patient_ids)).items()
                if decide("read", relation).allowed}

    # --- records ---

    async def search_filter(self, resource_type: str, *, history: bool = False,
                            about_patient: str | None = None) -> dict[str, Any] | None:
        """An extra condition ANDed into every search of this type (of the history with `history`); None when
        nothing is withheld. `about_patient`: the search asks only for that patient's resources."""
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return None
        self.check_type(resource_type)
        if self.caller.role == "admin":
            return None  # the audit trail, whole
        if about_patient and resource_type != "Patient" and await self.readable_among({about_patient}):
            # The caller may read that patient: their compartment is the condition.
            return {"compartment": f"Patient/{about_patient}"}
        if self.caller.role == "patient":
            # A Patient's own compartment is itself, so one condition serves every type and the history too.
            own = [f"Patient/{self.caller.patient_id}"] if self.caller.patient_id else []
            return {"compartment": {"$in": own}}
        if self.caller.role != "practitioner":
            return {"compartment": {"$in": []}}
        # Every document names the hospitals it reaches (ehr/sharing.py): the managing one and those shared
        # with, the two relations whose practitioners read (RULES). The condition is one of them, not a list of
        # the hospital's patients. Practitioners also see what belongs to no patient (a meeting).
        reached = [self.caller.organization] if self.caller.organization else []
        if resource_type in MAY_NAME_NO_PATIENT:
            reached.append(EVERY_PRACTITIONER)
        condition: dict[str, Any] = {"reach": reached[0] if len(reached) == 1 else {"$in": reached}}
        revoking = sorted(await self.sharing.revoking_for(self.caller.organization)) if self.caller.organization else []
        if revoking:
            # Revoked, and not yet written to every resource: out of this hospital's searches already.
            condition = {"$and": [condition, {"compartment": {"$nin": [f"Patient/{p}" for p in revoking]}}]}
        return condition

    async def may_read(self, resource_type: str, document: dict[str, Any]) -> bool:
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return True
        if not decide_by_role(type_action(resource_type, writing=False), self.caller.role).allowed:
            return False
        if resource_type == AUDIT_TYPE:
            return True  # the role decided: administrators read the whole trail
        patients = _patients_of(resource_type, document)
        if not patients:
            return self.caller.role == "practitioner" and resource_type in MAY_NAME_NO_PATIENT
        if resource_type == "Patient":
            # A current Patient document says which hospital manages it; a history entry does not.
            return (await self.decide_about("read", document["_id"], document if "sp" in document else None)).allowed
        return bool(await self.readable_among(patients))

    async def check_read(self, resource_type: str, document: dict[str, Any]) -> None:
        """Refuse a read: 403 naming the rule when the role may never read this type, else a plain 404."""
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return
        self.check_type(resource_type)
        if not await self.may_read(resource_type, document):
            raise hidden(resource_type, document["_id"])

    def check_may_write(self, resource_type: str) -> None:
        """Refuse a write by role alone; run before any lookup, so the answer says nothing of what exists."""
        self.check_type(resource_type, writing=True)

    async def check_write(self, resource_type: str, resource: dict[str, Any] | None,
                          previous: dict[str, Any] | None, compartment: list[str], *, transfer: bool = False) -> None:
        """`compartment` is the new version's; `previous` the current document (or None on create).
        `transfer`: this write is the $transfer act, the one write that may change managingOrganization (and the
        one an administrator may make to a Patient)."""
        if not transfer:
            self.check_may_write(resource_type)
        if self.is_system or resource_type in DIRECTORY_TYPES:
            return
        # A tombstone is judged too (it keeps its compartment): re-creating it must not hand its history over.
        if previous is not None:
            before = _patients_of(resource_type, previous)
            relations = await self.relations(before)
            if transfer:
                worst = decide("transfer", relations[previous["_id"]])
            else:
                decisions = [decide("write", r) for r in relations.values()]
                worst = next((d for d in decisions if d.outcome == "hide"), None) or next(
                    (d for d in decisions if not d.allowed), ALLOW)
            if worst.outcome == "refuse" and previous.get("deleted"):
                worst = HIDE  # a deleted record tells nobody outside it that it was there
            enforce(worst, resource_type, previous["_id"])
        if resource_type == "Patient":
            self._check_patient_hospital(resource, previous, transfer)
            return
        patients = {member.removeprefix("Patient/") for member in compartment}
        if not patients and resource is not None and resource_type not in MAY_NAME_NO_PATIENT:
            raise RecordError.single(422, "required", f"A {resource_type} names no patient; clinical data belongs "
                                     "in a patient's record (name them in an element the Patient compartment "
                                     f"lists, such as {resource_type}.subject)", resource_type)
        for relation in (await self.relations(patients)).values():
            enforce(decide("create", relation), resource_type, "")

    def _check_patient_hospital(self, resource: dict[str, Any] | None, previous: dict[str, Any] | None,
                                transfer: bool) -> None:
        if resource is None:
            return
        organization = (resource.get("managingOrganization") or {}).get("reference")
        if previous is not None and not previous.get("deleted"):
            before = ((previous.get("resource") or {}).get("managingOrganization") or {}).get("reference")
            if organization != before and not transfer:
                raise refused(TRANSFER_ONLY)
            return
        if self.caller.role == "practitioner" and organization != self.caller.organization:
            raise refused("A practitioner registers patients whose managingOrganization is their own organization "
                          f"({self.caller.organization})")


def _patients_of(resource_type: str, document: dict[str, Any]) -> set[str]:
    """The patients a stored resource belongs to (a Patient belongs to itself)."""
    if resource_type == "Patient":
        return {document["_id"]}
    return {member.removeprefix("Patient/") for member in document.get("compartment") or []}
