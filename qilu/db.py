"""MongoDB access: one motor client per process, opened in the app's lifespan, and index set-up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import monitoring

from qilu.cache import ANNOUNCER
from qilu.settings import Settings

class EngineCommands:
    """How many engine commands a context sent, with the names of its first hundred."""

    def __init__(self) -> None:
        self.count = 0
        self.names: list[str] = []

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.names) < 100:  # a live feed's request lasts hours
            self.names.append(name)


# The commands of the request under way. Motor runs each command in a thread with a copy of the caller's
# context, so the listener finds the counter of the request (or of the task it started) that sent it.
_COMMANDS: ContextVar[EngineCommands | None] = ContextVar("qilu_engine_commands", default=None)


class _CommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        commands = _COMMANDS.get()
        if commands is not None:
            commands.add(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@contextmanager
def counting_engine_commands() -> Iterator[EngineCommands]:
    """The engine commands sent from here on in this context (a request)."""
    commands = EngineCommands()
    token = _COMMANDS.set(commands)
    try:
        yield commands
    finally:
        _COMMANDS.reset(token)


def connect_mongodb(settings: Settings) -> AsyncIOMotorClient:
    # Every process that writes the record opens it here, so every one announces the changes others keep.
    ANNOUNCER.configure(settings)
    # tz_aware so datetimes read back carry UTC, as they were written.
    return AsyncIOMotorClient(settings.effective_mongodb_url, tz_aware=True, uuidRepresentation="standard",
                              serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
                              connectTimeoutMS=settings.mongodb_timeout_ms, appname="qilu",
                              event_listeners=[_CommandCounter()])


async def ping_mongodb(client: AsyncIOMotorClient, timeout_s: float = 2.0) -> None:
    await asyncio.wait_for(client.admin.command("ping"), timeout_s)


def database(client: AsyncIOMotorClient, settings: Settings) -> AsyncIOMotorDatabase:
    return client[settings.mongodb_db]


async def is_embedded_engine(db: AsyncIOMotorDatabase) -> bool:
    """True on FerretDB (the embedded engine), whose build keeps mk_ indexes in side tables."""
    return "ferretdbVersion" in await db.command("buildInfo")
