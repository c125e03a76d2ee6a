"""MongoDB access for consult rooms: one document per room (its state, who is invited, its recording).

A live room is written by the one process that hosts its media (see the README on several media hosts), and
that process writes it under a lock per room; state changes are still conditioned on `status`, so a stale
writer (a worker, a second host) cannot move a room backwards.
"""

from __future__ import annotations

from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, ReturnDocument

ROOMS = "consult_rooms"


async def ensure_indexes(db: AsyncIOMotorDatabase) -> None:
    rooms = db[ROOMS]
    await rooms.create_index([("patient", ASCENDING)], name="patient")
    await rooms.create_index([("referral", ASCENDING)], name="referral")
    await rooms.create_index([("status", ASCENDING), ("scheduled", ASCENDING)], name="status_scheduled")
    # A practitioner's consults: those they hold and those they are invited to.
    await rooms.create_index([("host", ASCENDING)], name="host")
    await rooms.create_index([("invited", ASCENDING)], name="invited")


class ConsultStore:
    def __init__(self, db: AsyncIOMotorDatabase):
        self.rooms = db[ROOMS]

    async def insert(self, document: dict[str, Any]) -> None:
        await self.rooms.insert_one(document)

    async def get(self, consult_id: str) -> dict[str, Any] | None:
        return await self.rooms.find_one({"_id": consult_id})

    async def find(self, query: dict[str, Any], *, skip: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """Rooms matching `query`, newest first."""
        return await self.rooms.find(query, sort=[("created", DESCENDING), ("_id", ASCENDING)], skip=skip,
                                     limit=limit).to_list(length=limit)

    async def count(self, query: dict[str, Any]) -> int:
        return await self.rooms.count_documents(query)

    async def update(self, consult_id: str, changes: dict[str, Any], *,
                     when_status: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """Set `changes`; with `when_status`, only from one of those states. The updated room, or None."""
        query: dict[str, Any] = {"_id": consult_id}
        if when_status is not None:
            query["status"] = {"$in": list(when_status)}
        return await self.rooms.find_one_and_update(query, {"$set": changes}, return_document=ReturnDocument.AFTER)
