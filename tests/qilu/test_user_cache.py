"""The user check every request makes is answered from the process's memory, and a change made in any process is
heard by every other at once through Redis; without Redis every check asks the database."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring

from qilu.identity import UserDirectory
from sample_records import PASSWORD

pytestmark = pytest.mark.asyncio(loop_scope="session")


class UserFinds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "users":
            self.count += 1

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


async def _listening(directory: UserDirectory) -> None:
    for _ in range(100):
        if directory.listening:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the directory never heard its channel")


@pytest.fixture
async def process(settings, app):
    """Another process's directory: its own engine client (counting its finds) and its own Redis client."""
    finds = UserFinds()
    client = AsyncIOMotorClient(settings.effective_mongodb_url, event_listeners=[finds])
    redis = aioredis.Redis.from_url(settings.redis_url)
    directory = UserDirectory(client[settings.mongodb_db], redis)
    directory.start()
    await _listening(directory)
    yield directory, finds
    await directory.stop()
    await redis.aclose()
    client.close()


async def _someone(app) -> str:
    user = await app.state.users.add(login=f"UC{uuid.uuid4().hex[:8]}", password=PASSWORD, role="practitioner",
                                     display_name="缓存医生", organization="Organization/x")
    return user.id


async def test_the_user_check_is_answered_from_memory_until_the_user_changes_anywhere(app, process):
    directory, finds = process
    user_id = await _someone(app)
    assert (await directory.get(user_id)).id == user_id
    assert (await directory.get(user_id)).id == user_id
    assert finds.count == 1  # the second check did not ask the database
    await app.state.users.change(user_id, {"active": False})  # the API process, as the administrators' page
    for _ in range(40):  # the announcement travels through Redis
        if await directory.get(user_id) is None:
            break
        await asyncio.sleep(0.05)
    assert await directory.get(user_id) is None
    assert finds.count >= 2


async def test_a_password_reset_is_heard_too(app, process):
    directory, _ = process
    user_id = await _someone(app)
    before = (await directory.get(user_id)).sessions_since
    login = (await app.state.users.document(user_id))["login"]
    await asyncio.sleep(1.1)  # sessions_since counts in seconds
    assert await app.state.users.set_password(login, PASSWORD + "-new")
    for _ in range(40):
        if (await directory.get(user_id)).sessions_since > before:
            break
        await asyncio.sleep(0.05)
    assert (await directory.get(user_id)).sessions_since > before


async def test_without_redis_every_check_asks_the_database(app, settings):
    finds = UserFinds()
    client = AsyncIOMotorClient(settings.effective_mongodb_url, event_listeners=[finds])
    nowhere = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    directory = UserDirectory(client[settings.mongodb_db], nowhere)
    directory.start()
    try:
        user_id = await _someone(app)
        await asyncio.sleep(0.5)  # it tried to subscribe, and could not
        assert (await directory.get(user_id)).id == user_id
        assert (await directory.get(user_id)).id == user_id
        assert finds.count == 2
        await app.state.users.change(user_id, {"active": False})
        assert await directory.get(user_id) is None
        # A change made here while Redis is away is still written (and logged as not announced).
        assert await directory.change(user_id, {"active": True}) is not None
    finally:
        await directory.stop()
        await nowhere.aclose()
        client.close()


async def test_a_change_made_by_a_command_or_a_worker_is_heard_too(app, process):
    """A directory with no Redis of its own (the command line's, a worker task's) still announces its changes."""
    directory, _ = process
    user_id = await _someone(app)
    assert (await directory.get(user_id)).id == user_id
    await UserDirectory(app.state.db).change(user_id, {"active": False})
    for _ in range(40):
        if await directory.get(user_id) is None:
            break
        await asyncio.sleep(0.05)
    assert await directory.get(user_id) is None
