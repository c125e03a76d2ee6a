"""MongoDB access: one motor client per process, opened in the app's lifespan, and index set-up."""

from __future__ import annotations

import asyncio

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase

from qilu.settings import Settings


def connect_mongodb(settings: Settings) -> AsyncIOMotorClient:
    # tz_aware so datetimes read back carry UTC, as they were written.
    return AsyncIOMotorClient(settings.effective_mongodb_url, tz_aware=True, uuidRepresentation="standard",
                              serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
                              connectTimeoutMS=settings.mongodb_timeout_ms, appname="qilu")


async def ping_mongodb(client: AsyncIOMotorClient, timeout_s: float = 2.0) -> None:
    await asyncio.wait_for(client.admin.command("ping"), timeout_s)


def database(client: AsyncIOMotorClient, settings: Settings) -> AsyncIOMotorDatabase:
    return client[settings.mongodb_db]
