"""One login per person across the province: users, their roles, password checks with lock-out."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from qilu.cache import ANNOUNCER, AnnouncedCache

Role = Literal["patient", "practitioner", "admin"]
ROLES: tuple[Role, ...] = ("patient", "practitioner", "admin")
USERS = "users"
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)

_hasher = PasswordHasher()
# Compared against when the login is unknown, so a wrong login costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("qilu-no-such-user")


class LoginRefused(Exception):
    def __init__(self, reason: Literal["credentials", "locked", "inactive"], retry_after_s: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class UserExists(Exception):
    pass


@dataclass(frozen=True)
class User:
    id: str
    login: str
    role: Role
    fhir_user: str | None  # "Patient/.." or "PractitionerRole/.."
    organization: str | None  # "Organization/.." of a practitioner
    practitioner: str | None  # "Practitioner/.." behind a PractitionerRole
    display_name: str
    # Seconds since the epoch: sessions (tokens) issued before then no longer count (a password reset).
    sessions_since: int = 0

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> User:
        since = doc.get("sessions_since")
        return cls(doc["_id"], doc["login"], doc["role"], doc.get("fhir_user"), doc.get("organization"),
                   doc.get("practitioner"), doc.get("display_name", ""), int(since.timestamp()) if since else 0)


async def ensure_indexes(db: AsyncIOMotorDatabase) -> None:
    await db[USERS].create_index([("login", ASCENDING)], name="login", unique=True)
    await db[USERS].create_index([("fhir_user", ASCENDING)], name="fhir_user")
    # The administrators' users page lists by role and hospital.
    await db[USERS].create_index([("role", ASCENDING), ("organization", ASCENDING)], name="role_organization")


def _normalise_login(login: str) -> str:
    # National ID numbers end in an upper-case X; people type either case.
    return login.strip().upper() if len(login.strip()) == 18 else login.strip()


class UserDirectory:
    """The users. With `redis` to listen on, the user check every request makes (`get`) is answered from this
    process's memory; every change is announced on Redis (qilu.cache.ANNOUNCER) so that every process forgets
    that user at once; while this process is not hearing the announcements (Redis away, or before it has
    subscribed), it asks the database."""

    def __init__(self, db: AsyncIOMotorDatabase, redis: Any = None):
        self.users = db[USERS]
        self.redis = redis
        self.db_name = db.name
        self._cache = AnnouncedCache("users")
        self._listener: asyncio.Task | None = None

    # --- the cache of the user check ---

    def start(self) -> None:
        if self.redis is not None and self._listener is None:
            self._listener = asyncio.create_task(self._cache.listen(self.redis, self.db_name))

    @property
    def listening(self) -> bool:
        return self._cache.listening

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        self._cache.forget_all()

    async def _announce(self, user_id: str) -> None:
        # Announced by the process's announcer, so a change made by a command or a worker is heard too.
        self._cache.forget([user_id])
        await ANNOUNCER.announce(self.db_name, "users", [user_id])

    async def add(self, *, login: str, password: str, role: Role, display_name: str, fhir_user: str | None = None,
                  organization: str | None = None, practitioner: str | None = None) -> User:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise ValueError("a password has at least 8 characters")
        doc = {"_id": uuid.uuid4().hex, "login": _normalise_login(login), "role": role,
               "password_hash": _hasher.hash(password), "fhir_user": fhir_user, "organization": organization,
               "practitioner": practitioner, "display_name": display_name, "failed_logins": 0,
               "locked_until": None, "active": True, "created": datetime.now(UTC)}
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError as exc:
            raise UserExists(login) from exc
        return User.from_document(doc)

    async def get(self, user_id: str) -> User | None:
        """The user if active (the check every request makes)."""
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        token = self._cache.reading()
        doc = await self.users.find_one({"_id": user_id, "active": True})
        user = User.from_document(doc) if doc else None
        if user is not None:
            self._cache.keep(user_id, user, token)
        return user

    async def by_login(self, login: str) -> User | None:
        doc = await self.users.find_one({"login": _normalise_login(login)})
        return User.from_document(doc) if doc else None

    # --- for the administrators' users API: documents as stored, inactive ones too ---------------------------

    async def find(self, *, roles: list[str], organizations: list[str] | None, skip: int, limit: int
                   ) -> tuple[list[dict[str, Any]], int]:
        """Users of these roles (and hospitals), newest first, with how many match; no password hashes."""
        query: dict[str, Any] = {"role": {"$in": roles}}
        if organizations:
            query["organization"] = {"$in": organizations}
        docs = await self.users.find(query, {"password_hash": 0}, sort=[("created", DESCENDING), ("_id", ASCENDING)],
                                     skip=skip, limit=limit).to_list(length=limit)
        return docs, await self.users.count_documents(query)

    async def document(self, user_id: str) -> dict[str, Any] | None:
        return await self.users.find_one({"_id": user_id}, {"password_hash": 0})

    async def change(self, user_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Set `changes` (active, lock-out) on one user; the user as now stored, or None."""
        # FerretDB's findAndModify takes no projection: the hash is left out by reading the user again.
        result = await self.users.update_one({"_id": user_id}, {"$set": changes})
        await self._announce(user_id)
        return await self.document(user_id) if result.matched_count else None

    async def set_password(self, login: str, password: str) -> bool:
        """A new password ends every session of the account: whoever knew the old one is logged out."""
        doc = await self.users.find_one_and_update({"login": _normalise_login(login)}, {"$set": {
            "password_hash": _hasher.hash(password), "failed_logins": 0, "locked_until": None,
            "sessions_since": datetime.now(UTC)}})
        if doc is not None:
            await self._announce(doc["_id"])
        return doc is not None

    async def authenticate(self, login: str, password: str) -> User:
        doc = await self.users.find_one({"login": _normalise_login(login)})
        now = datetime.now(UTC)
        if doc is None:
            _verify(_DUMMY_HASH, password)
            raise LoginRefused("credentials")
        locked_until = doc.get("locked_until")
        if locked_until is not None:
            locked_until = locked_until if locked_until.tzinfo else locked_until.replace(tzinfo=UTC)
            if locked_until > now:
                raise LoginRefused("locked", int((locked_until - now).total_seconds()) + 1)
        if not _verify(doc["password_hash"], password):
            # One atomic increment, so concurrent guesses are all counted.
            updated = await self.users.find_one_and_update(
                {"_id": doc["_id"]}, {"$inc": {"failed_logins": 1}}, return_document=ReturnDocument.AFTER)
            if updated["failed_logins"] >= MAX_FAILED_LOGINS:
                await self.users.update_one({"_id": doc["_id"]}, {"$set": {
                    "locked_until": now + LOCKOUT, "failed_logins": 0}})
                raise LoginRefused("locked", int(LOCKOUT.total_seconds()))
            raise LoginRefused("credentials")
        if not doc.get("active", True):
            raise LoginRefused("inactive")
        if doc.get("failed_logins") or doc.get("locked_until"):
            await self.users.update_one({"_id": doc["_id"]}, {"$set": {"failed_logins": 0, "locked_until": None}})
        return User.from_document(doc)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
