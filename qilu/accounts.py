"""Accounts: creating a user of any role with the FHIR resource they stand for (`qilu user add`, the demo), and the
administrators' rules over accounts (the users API): practitioners and administrators in full, patients only at the
help desk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from motor.motor_asyncio import AsyncIOMotorDatabase

from ehr.access import decide_by_role
from ehr.models import RecordError
from ehr.service import RecordService
from fhir_profiles.identifiers import (NATIONAL_ID_SYSTEM, PRACTITIONER_NUMBER_SYSTEM, mask_name, mask_national_id,
                                      parse_national_id)
from qilu.auth import Caller
from qilu.identity import Role, User, UserDirectory, UserExists
from qilu.problems import Problem

log = structlog.get_logger("qilu.accounts")


class AccountError(ValueError):
    pass


async def _find_one(records: RecordService, resource_type: str, params: list[tuple[str, str]]) -> dict | None:
    bundle = await records.search(resource_type, params)
    matches = [e["resource"] for e in bundle.get("entry") or [] if e.get("search", {}).get("mode") == "match"]
    return matches[0] if matches else None


async def _ensure_patient(records: RecordService, national_id: str, name: str, organization: str | None) -> str:
    try:
        parsed = parse_national_id(national_id)
    except ValueError as exc:
        raise AccountError(f"the login of a patient is a valid national ID number: {exc}") from None
    existing = await _find_one(records, "Patient", [("identifier", f"{NATIONAL_ID_SYSTEM}|{parsed.value}")])
    if existing:
        return f"Patient/{existing['id']}"
    patient: dict[str, Any] = {
        "resourceType": "Patient", "active": True,
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": parsed.value}],
        "name": [{"use": "official", "text": name, "family": name[:1], "given": [name[1:]] if len(name) > 1 else []}],
        "gender": parsed.sex, "birthDate": parsed.birth_date.isoformat(),
    }
    if organization:
        patient["managingOrganization"] = {"reference": organization}
    written, _ = await records.create("Patient", patient)
    return f"Patient/{written.resource_id}"


async def _ensure_practitioner_role(records: RecordService, number: str, name: str, organization: str,
                                    specialty: str | None) -> tuple[str, str]:
    org_id = organization.removeprefix("Organization/")
    try:
        await records.read("Organization", org_id)
    except RecordError:
        raise AccountError(f"Organization/{org_id} is not in the directory") from None
    practitioner = await _find_one(records, "Practitioner", [("identifier", f"{PRACTITIONER_NUMBER_SYSTEM}|{number}")])
    if practitioner is None:
        written, _ = await records.create("Practitioner", {
            "resourceType": "Practitioner", "active": True,
            "identifier": [{"system": PRACTITIONER_NUMBER_SYSTEM, "value": number}],
            "name": [{"text": name, "family": name[:1], "given": [name[1:]] if len(name) > 1 else []}]})
        practitioner = written.resource
    practitioner_ref = f"Practitioner/{practitioner['id']}"
    role = await _find_one(records, "PractitionerRole", [("practitioner", practitioner_ref),
                                                         ("organization", f"Organization/{org_id}")])
    if role is None:
        resource: dict[str, Any] = {
            "resourceType": "PractitionerRole", "active": True,
            "practitioner": {"reference": practitioner_ref, "display": name},
            "organization": {"reference": f"Organization/{org_id}"},
            "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role",
                                  "code": "doctor", "display": "Doctor"}]}]}
        if specialty:
            resource["specialty"] = [{"text": specialty}]
        written, _ = await records.create("PractitionerRole", resource)
        role = written.resource
    return f"PractitionerRole/{role['id']}", practitioner_ref


async def add_user(db: AsyncIOMotorDatabase, base_url: str, *, role: Role, login: str, password: str, name: str,
                   organization: str | None = None, specialty: str | None = None) -> User:
    """Create the user, and the Patient or Practitioner + PractitionerRole behind it when missing."""
    records = RecordService.as_system(db, base_url)
    users = UserDirectory(db)
    if await users.by_login(login):
        raise AccountError("a user with this login exists already")
    organization = f"Organization/{organization.removeprefix('Organization/')}" if organization else None
    if role == "patient":
        fhir_user = await _ensure_patient(records, login, name, organization)
        return await users.add(login=login, password=password, role=role, display_name=name, fhir_user=fhir_user)
    if role == "practitioner":
        if not organization:
            raise AccountError("a practitioner works at an organization: give --organization")
        fhir_user, practitioner = await _ensure_practitioner_role(records, login, name, organization, specialty)
        return await users.add(login=login, password=password, role=role, display_name=name, fhir_user=fhir_user,
                               organization=organization, practitioner=practitioner)
    return await users.add(login=login, password=password, role=role, display_name=name)


# --- the administrators' users API ----------------------------------------------------------------------------

# Practitioners and administrators are listed and managed in full. Patients never are listed (administrators do not
# browse residents): a help desk finds one account by the ID number the resident shows, and may only lift its
# lock-out or set a new password, the two things a locked-out or forgetful resident calls about.
MANAGED_ROLES: tuple[Role, ...] = ("practitioner", "admin")
PATIENT_ACTIONS = ("unlock", "password")
MIN_PASSWORD_LENGTH = 10


def password_weakness(password: str, login: str) -> str | None:
    """Why a password an administrator sets is too weak, in words; None when it will do."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password has at least {MIN_PASSWORD_LENGTH} characters"
    kinds = (any(c.isalpha() for c in password), any(c.isdigit() for c in password),
             any(not c.isalnum() for c in password))
    if sum(kinds) < 2:
        return "a password mixes letters with digits or signs"
    if login.strip().lower() in password.lower():
        return "a password must not contain the login"
    return None


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def account_view(doc: dict[str, Any]) -> dict[str, Any]:
    """An account as the administrators' page shows it (never its password hash; a patient's ID number and name
    masked, enough for the help desk to see it is the person in front of them)."""
    locked_until = doc.get("locked_until")
    if locked_until is not None and locked_until.replace(tzinfo=locked_until.tzinfo or UTC) <= datetime.now(UTC):
        locked_until = None  # the lock-out is over
    patient = doc["role"] == "patient"
    return {"id": doc["_id"], "login": mask_national_id(doc["login"]) if patient else doc["login"], "role": doc["role"],
            "name": mask_name(doc.get("display_name", "")) if patient else doc.get("display_name", ""),
            "organization": doc.get("organization"), "fhirUser": doc.get("fhir_user"),
            "practitioner": doc.get("practitioner"), "active": doc.get("active", True),
            "lockedUntil": _instant(locked_until), "failedLogins": doc.get("failed_logins", 0),
            "created": _instant(doc.get("created"))}


def account_patients(doc: dict[str, Any]) -> list[str]:
    """The patient an account belongs to, if it is a patient's: the access shows in that patient's access log."""
    return [doc["fhir_user"]] if doc["role"] == "patient" and doc.get("fhir_user") else []


def account_reference(doc: dict[str, Any]) -> str:
    """What the audit trail names for an account: the PractitionerRole it stands for, else the user."""
    return doc.get("fhir_user") or f"urn:qilu:user:{doc['_id']}"


class AccountService:
    """Who may manage accounts (administrators) and how: list, create, disable, enable, unlock, reset a password;
    for a patient's account, found by its login only, unlock and reset a password."""

    def __init__(self, db: AsyncIOMotorDatabase, base_url: str, users: UserDirectory | None = None):
        self.db = db
        self.base_url = base_url  # of the FHIR API, for the resources a new account stands for
        self.users = users or UserDirectory(db)

    @staticmethod
    def _require_admin(caller: Caller) -> None:
        decision = decide_by_role("users", caller.role)  # the access policy's row for accounts
        if not decision.allowed:
            raise Problem(403, "Administrators only", decision.rule)

    async def _managed(self, user_id: str, action: str | None = None) -> dict[str, Any]:
        doc = await self.users.document(user_id)
        if doc is None:
            raise Problem(404, "User not found", f"User {user_id} is not known")
        if doc["role"] == "patient" and action is not None and action not in PATIENT_ACTIONS:
            raise Problem(409, "Not for a patient's account", "A patient's account can be unlocked or given a new "
                          "password here; nothing else")
        return doc

    async def find_by_login(self, caller: Caller, login: str) -> dict[str, Any]:
        """The one account with this login, of any role: how the help desk finds a resident's account."""
        self._require_admin(caller)
        user = await self.users.by_login(login)
        if user is None:
            raise Problem(404, "User not found", "No account has this login")
        return await self._managed(user.id)

    async def list(self, caller: Caller, role: str | None, organizations: list[str], limit: int, offset: int
                   ) -> tuple[list[dict[str, Any]], int]:
        self._require_admin(caller)
        return await self.users.find(roles=[role] if role else list(MANAGED_ROLES), organizations=organizations,
                                     skip=offset, limit=limit)

    async def get(self, caller: Caller, user_id: str) -> dict[str, Any]:
        self._require_admin(caller)
        return await self._managed(user_id)

    async def create(self, caller: Caller, *, role: Role, login: str, password: str, name: str,
                     organization: str | None, specialty: str | None) -> dict[str, Any]:
        self._require_admin(caller)
        if role not in MANAGED_ROLES:
            raise Problem(422, "Unknown role", f"role must be one of {', '.join(MANAGED_ROLES)}")
        weakness = password_weakness(password, login)
        if weakness:
            raise Problem(422, "Weak password", weakness, expression=["password"])
        if role == "practitioner" and not organization:
            raise Problem(422, "Hospital required", "A practitioner works at a hospital: give organization",
                          expression=["organization"])
        if await self.users.by_login(login):
            raise Problem(409, "Login taken", "A user with this login exists already", expression=["login"])
        try:
            user = await add_user(self.db, self.base_url, role=role, login=login, password=password, name=name,
                                  organization=organization if role == "practitioner" else None,
                                  specialty=specialty if role == "practitioner" else None)
        except UserExists:
            raise Problem(409, "Login taken", "A user with this login exists already", expression=["login"]) from None
        except AccountError as exc:
            raise Problem(422, "Invalid account", str(exc)) from None
        log.info("account created", user=user.id, role=role)
        return await self._managed(user.id)

    async def act(self, caller: Caller, user_id: str, action: str) -> dict[str, Any]:
        """disable (logins and tokens stop working at once), enable, or unlock (clear a lock-out)."""
        self._require_admin(caller)
        await self._managed(user_id, action)
        if action == "disable" and user_id == caller.user_id:
            raise Problem(409, "Your own account", "An administrator cannot disable their own account")
        changes = {"disable": {"active": False}, "enable": {"active": True},
                   "unlock": {"locked_until": None, "failed_logins": 0}}[action]
        doc = await self.users.change(user_id, changes)
        if doc is None:
            raise Problem(404, "User not found", f"User {user_id} is not known")
        log.info("account changed", user=user_id, action=action)
        return doc

    async def reset_password(self, caller: Caller, user_id: str, password: str) -> dict[str, Any]:
        """A new password chosen by the administrator; it also clears a lock-out."""
        self._require_admin(caller)
        doc = await self._managed(user_id, "password")
        weakness = password_weakness(password, doc["login"])
        if weakness:
            raise Problem(422, "Weak password", weakness, expression=["password"])
        await self.users.set_password(doc["login"], password)
        log.info("account password reset", user=user_id)
        return await self._managed(user_id)
