"""A change Redis refused to announce is announced again, so another process still forgets its copy of it (and does
not trust it for the minute it would otherwise)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from qilu.cache import AnnouncedCache, Announcer, connect_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _until(check, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_an_announcement_redis_refused_is_sent_again_and_heard_elsewhere(settings):
    admin = redis.Redis.from_url(settings.redis_url)
    user, password = f"announcer-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    # A real refusal by Redis: the announcer's user may do anything but publish, for now.
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                      categories=["+@all"], commands=["-publish"])
    topic, db_name = f"test-{uuid.uuid4().hex[:6]}", "qilu_test"
    elsewhere = AnnouncedCache(topic)  # another process's copy: this announcer cannot empty it but by Redis
    subscriber = connect_redis(settings)
    listening = asyncio.create_task(elsewhere.listen(subscriber, db_name))
    try:
        announcer = Announcer()
        url = settings.redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
        announcer.configure(settings.model_copy(update={"redis_url": url}))
        assert await _until(lambda: elsewhere.listening)
        elsewhere.keep("patient-1", "shared", elsewhere.reading())
        elsewhere.keep("patient-2", "shared", elsewhere.reading())
        await announcer.announce(db_name, topic, ["patient-1"])  # refused: the write does not wait for it
        await asyncio.sleep(0.5)
        assert elsewhere.get("patient-1") == "shared", "refused, so not heard yet"
        admin.acl_setuser(user, enabled=True, commands=["+publish"])
        assert await _until(lambda: elsewhere.get("patient-1") is None), "sent again once Redis takes it"
        assert elsewhere.get("patient-2") == "shared"
    finally:
        admin.acl_deluser(user)
        listening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listening
        await subscriber.aclose()
        admin.close()
