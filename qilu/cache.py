"""The Redis client of a process (pub/sub fan-out, replay guards), and what a process keeps in memory while it
hears, through Redis, of every change to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
from structlog import get_logger

from qilu.settings import Settings

log = get_logger("qilu.cache")
# How long a process trusts what it keeps without hearing of a change (a bound, should an announcement be lost).
TRUSTED_S = 60.0


def connect_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5,
                                   health_check_interval=30)


async def ping_redis(client: aioredis.Redis, timeout_s: float = 2.0) -> None:
    await asyncio.wait_for(client.ping(), timeout_s)


def channel_of(db_name: str, topic: str) -> str:
    return f"qilu:{db_name}:{topic}-changed"


class AnnouncedCache:
    """Values by key, kept while this process hears every change of them announced on a Redis channel (the
    change's key, from whichever process made it). While nobody here is listening (Redis away, or before the
    subscription is confirmed) nothing is kept, so every look-up asks the database. A value read before an
    announcement was heard is not kept: it may be from before the change."""

    def __init__(self, topic: str, *, size: int = 100_000, trusted_s: float = TRUSTED_S):
        self.topic = topic
        self.size = size
        self.trusted_s = trusted_s
        self._values: dict[Hashable, tuple[Any, float]] = {}
        self._heard = 0
        self._hearing = 0  # listeners subscribed (one per app of this process)

    @property
    def listening(self) -> bool:
        return self._hearing > 0

    def get(self, key: Hashable) -> Any | None:
        kept = self._values.get(key)
        if kept is None or not self.listening or time.monotonic() - kept[1] >= self.trusted_s:
            return None
        return kept[0]

    def reading(self) -> int:
        """Call before reading from the database; pass the answer to `keep`."""
        return self._heard

    def keep(self, key: Hashable, value: Any, token: int) -> None:
        if not self.listening or token != self._heard:
            return
        if len(self._values) >= self.size:
            self._values.pop(next(iter(self._values)))  # the oldest kept
        self._values[key] = (value, time.monotonic())

    def forget(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._values.pop(key, None)
        self._heard += 1

    def forget_all(self) -> None:
        self._values.clear()
        self._heard += 1

    async def listen(self, client: aioredis.Redis, db_name: str) -> None:
        """Hear the changes until cancelled (an app's lifetime); started as a task."""
        channel = channel_of(db_name, self.topic)
        while True:
            pubsub = client.pubsub()
            subscribed = False
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe" and not subscribed:
                        subscribed = True
                        self._hearing += 1  # from here on, every change is heard
                    elif message["type"] == "message":
                        self.forget(message["data"].decode().split("\n"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: ask the database until it is back
                log.warning("changes not heard; asking the database", topic=self.topic, error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                if subscribed:
                    self._hearing -= 1
                    self.forget_all()
                await asyncio.shield(pubsub.aclose())


class Announcer:
    """Announces changes of what processes keep (`AnnouncedCache`), from whichever process writes: a server, a
    worker's task, the command line. It forgets the key in this process's caches of that topic at once, then
    publishes it; its Redis client is a synchronous one, used from a thread, so that any event loop (a worker
    runs each task in its own) can announce."""

    def __init__(self) -> None:
        self._caches: dict[str, list[AnnouncedCache]] = {}
        self._client: redis.Redis | None = None

    def configure(self, settings: Settings) -> None:
        if self._client is None:
            # Short timeouts: a write waits for its announcement, and Redis is on this machine's loopback.
            self._client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=1)

    def cache(self, topic: str, **options: Any) -> AnnouncedCache:
        """A cache of this process that the announcements of `topic` empty."""
        cache = AnnouncedCache(topic, **options)
        self._caches.setdefault(topic, []).append(cache)
        return cache

    async def announce(self, db_name: str, topic: str, keys: Iterable[str]) -> None:
        """`keys` of `topic` changed in database `db_name`."""
        keys = sorted(set(keys))
        if not keys:
            return
        for cache in self._caches.get(topic, []):
            cache.forget(keys)
        if self._client is None:
            return  # this process announces to nobody (a test's own store, a script)
        try:
            await asyncio.to_thread(self._client.publish, channel_of(db_name, topic), "\n".join(keys))
        except Exception as exc:  # noqa: BLE001 - the others stop trusting their copy within TRUSTED_S
            log.warning("a change was not announced", topic=topic, error=str(exc))


# The process's announcer: every process that opens the database configures it (qilu.db.connect_mongodb).
ANNOUNCER = Announcer()
