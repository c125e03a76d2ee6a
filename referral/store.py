"""MongoDB access for referrals: one document per referral (state, history and outbox together), and its claims.

FerretDB runs every update as read-then-write, so two concurrent writers of one document lose each other's
changes (even a transition and a delivery marking an event sent). Every write of a referral therefore first
inserts a claim whose unique _id is "<referral>/<next rev>": only one writer can, on either engine; it then
applies its single-document update conditioned on `rev`, the document's write counter. `version` counts only
the transitions (what a client sees change); `rev` also counts the outbox bookkeeping.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from qilu.db import is_embedded_engine
from referral.models import EVENTS_KEPT, EVENTS_STREAM

REFERRALS = "referrals"
CLAIMS = "referral_claims"
STATS = "referral_stats"
# A claim whose write has not landed after this long was left by a writer that died; it may be taken over.
STALE_CLAIM = timedelta(seconds=30)


async def ensure_indexes(db: AsyncIOMotorDatabase) -> None:
    """The `mk_` names let the embedded FerretDB search by them too (qilu/ferretdb/): a hospital's inbox, the
    deadline sweep and a patient's referrals then read their own referrals, not the province's. `share.org`
    crosses a list of documents, which an `mk_` index may not, so it stays an ordinary index. The embedded engine
    narrows only through an index whose every field the filter gives, so the fields asked alone (a box of
    every status, the referrals past a deadline by status) get their own there; MongoDB reads the first field
    of the compound index."""
    referrals = db[REFERRALS]
    await referrals.create_index([("target", ASCENDING), ("status", ASCENDING)], name="mk_target_status")
    await referrals.create_index([("origin", ASCENDING), ("status", ASCENDING)], name="mk_origin_status")
    await referrals.create_index([("status", ASCENDING), ("deadline", ASCENDING)], name="mk_status_deadline")
    if await is_embedded_engine(db):
        for field in ("target", "origin", "status"):
            await referrals.create_index([(field, ASCENDING)], name=f"mk_{field}")
    await referrals.create_index([("patient", ASCENDING)], name="mk_patient")
    await referrals.create_index([("share.org", ASCENDING)], name="share_org")
    await referrals.create_index([("outbox_pending", ASCENDING)], name="mk_outbox_pending")
    await referrals.create_index([("created", DESCENDING)], name="created")
    existing = {index["name"] for index in await referrals.list_indexes().to_list(None)}
    for earlier in ("target_status", "origin_status", "status_deadline", "patient", "outbox_pending"):
        if earlier in existing:
            await referrals.drop_index(earlier)


class ReferralStore:
    def __init__(self, db: AsyncIOMotorDatabase):
        self.referrals = db[REFERRALS]
        self.claims = db[CLAIMS]
        self.stats = db[STATS]

    async def get(self, referral_id: str) -> dict[str, Any] | None:
        return await self.referrals.find_one({"_id": referral_id})

    async def insert(self, document: dict[str, Any]) -> None:
        await self.referrals.insert_one(document)

    async def claim(self, key: str, write_id: str, now: datetime) -> bool:
        """Take `key` (a version or an idempotency key) for this write; False when someone holds it."""
        try:
            await self.claims.insert_one({"_id": key, "write": write_id, "at": now})
            return True
        except DuplicateKeyError:
            return False

    async def claim_holder(self, key: str) -> dict[str, Any] | None:
        return await self.claims.find_one({"_id": key})

    async def set_claim_target(self, key: str, write_id: str, referral_id: str) -> None:
        await self.claims.update_one({"_id": key, "write": write_id}, {"$set": {"referral": referral_id}})

    async def release_claim(self, key: str, write_id: str) -> None:
        await self.claims.delete_one({"_id": key, "write": write_id})

    async def take_over_stale_claim(self, key: str, now: datetime) -> None:
        await self.claims.delete_one({"_id": key, "at": {"$lt": now - STALE_CLAIM}})

    async def apply(self, referral_id: str, rev: int, changes: dict[str, Any],
                    history: dict[str, Any], events: list[dict[str, Any]]) -> bool:
        """The transition's one write: new state, its history entry and its outbox events together."""
        update: dict[str, Any] = {"$set": {**changes, "rev": rev + 1}, "$push": {"history": history}}
        if events:
            update["$push"]["outbox"] = {"$each": events}
            update["$set"]["outbox_pending"] = True
        result = await self.referrals.update_one({"_id": referral_id, "rev": rev}, update)
        return result.matched_count == 1

    async def find(self, query: dict[str, Any], *, sort: list[tuple[str, int]], skip: int = 0,
                   limit: int = 50) -> list[dict[str, Any]]:
        return await self.referrals.find(query, sort=sort, skip=skip, limit=limit).to_list(length=limit)

    async def count(self, query: dict[str, Any]) -> int:
        return await self.referrals.count_documents(query)

    async def overdue(self, now: datetime, statuses: tuple[str, ...], limit: int = 200) -> list[dict[str, Any]]:
        return await self.find({"status": {"$in": list(statuses)}, "deadline": {"$lt": now}},
                               sort=[("deadline", ASCENDING)], limit=limit)

    async def with_pending_outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.find({"outbox_pending": True}, sort=[("updated", ASCENDING)], limit=limit)

    async def mark_sent(self, referral_id: str, rev: int, indexes: list[int], still_pending: bool,
                        reached: dict[int, list[str]] | None = None) -> bool:
        """Mark outbox events sent, by position: the outbox only grows, so an event keeps its index (and
        FerretDB has no arrayFilters). `reached`: the channels an event not yet sent did reach. Conditioned on
        `rev`, so no event appended meanwhile is overlooked."""
        changes: dict[str, Any] = {f"outbox.{index}.sent": True for index in indexes}
        changes.update({f"outbox.{index}.reached": channels for index, channels in (reached or {}).items()})
        result = await self.referrals.update_one({"_id": referral_id, "rev": rev}, {
            "$set": {**changes, "outbox_pending": still_pending, "rev": rev + 1}})
        return result.matched_count == 1

    async def aggregate(self, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self.referrals.aggregate(pipeline).to_list(length=None)

    async def save_stats(self, stats: dict[str, Any]) -> None:
        await self.stats.replace_one({"_id": "current"}, {"_id": "current", **stats}, upsert=True)

    async def load_stats(self) -> dict[str, Any] | None:
        return await self.stats.find_one({"_id": "current"})


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _position_key(position: str | bytes) -> tuple[int, int]:
    milliseconds, _, sequence = _text(position).partition("-")
    return int(milliseconds), int(sequence or 0)


class ReferralFeed:
    """The live feed of referral events, kept as a Redis stream: the outbox appends, the portals read from a
    position, so a listener whose connection dropped hears what it missed on its return."""

    def __init__(self, redis: Redis):
        self.redis = redis

    async def append(self, message: dict[str, Any]) -> str:
        return _text(await self.redis.xadd(EVENTS_STREAM, {"event": json.dumps(message)}, maxlen=EVENTS_KEPT,
                                           approximate=True))

    async def position(self) -> str:
        """Where the feed is now: reading after it yields only what is appended from now on."""
        newest = await self.redis.xrevrange(EVENTS_STREAM, count=1)
        return _text(newest[0][0]) if newest else "0-0"

    async def lost_after(self, position: str) -> bool:
        """Whether events that came after `position` may have been trimmed away, so they can no longer be replayed.

        The length cap drops the oldest entries first: if any were dropped and `position` lies before the oldest
        kept, what followed it is (at least partly) gone."""
        try:
            info = await self.redis.xinfo_stream(EVENTS_STREAM)
        except ResponseError:  # no stream yet: nothing was ever kept, nothing dropped
            return False
        oldest = info.get("first-entry")
        if oldest is None or info["entries-added"] <= info["length"]:
            return False
        return _position_key(position) < _position_key(oldest[0])

    async def read(self, after: str, wait_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """The events after `after`, oldest first, waiting up to `wait_ms` for one when there are none yet."""
        reply = await self.redis.xread({EVENTS_STREAM: after}, count=100, block=wait_ms)
        events = []
        for _stream, entries in reply or []:
            for position, fields in entries:
                data = fields.get(b"event") or fields.get("event")
                events.append((_text(position), json.loads(data)))
        return events
