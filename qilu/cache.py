"""The Redis client of a process (pub/sub fan-out, replay guards), and what a process keeps in memory while it
hears, through Redis, of every change to it."""

from __future__ import annotations

import asyncio
import queue
import threading
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
    runs each task in its own) can announce. An announcement Redis refused is sent again from a thread of its
    own, for as long as the others would trust their copy, so they still forget the change."""

    def __init__(self) -> None:
        self._caches: dict[str, list[AnnouncedCache]] = {}
        self._client: redis.Redis | None = None
        self._again: queue.Queue[tuple[str, str, float]] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._sender_lock = threading.Lock()

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
        channel, message = channel_of(db_name, topic), "\n".join(keys)
        try:
            await asyncio.to_thread(self._client.publish, channel, message)
        except Exception as exc:  # noqa: BLE001 - sent again; the write does not wait for it
            log.warning("a change was not announced; trying again", topic=topic, error=str(exc))
            self._send_again(channel, message)

    def _send_again(self, channel: str, message: str) -> None:
        with self._sender_lock:
            self._again.put((channel, message, time.monotonic() + TRUSTED_S))
            if self._sender is None:
                self._sender = threading.Thread(target=self._resend, name="qilu-announce-again", daemon=True)
                self._sender.start()

    def _resend(self) -> None:
        """Send the refused announcements in order, each until it goes or the copies it empties have aged."""
        assert self._client is not None
        while True:
            with self._sender_lock:
                if self._again.empty():
                    self._sender = None  # the next refusal starts another thread
                    return
                channel, message, deadline = self._again.get()
            delay = 0.05
            while True:
                try:
                    self._client.publish(channel, message)
                    break
                except Exception:  # noqa: BLE001 - Redis still refuses: wait a little longer each time
                    if time.monotonic() + delay >= deadline:
                        log.warning("a change was never announced; the others' copies aged instead", channel=channel)
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)


# The process's announcer: every process that opens the database configures it (qilu.db.connect_mongodb).
ANNOUNCER = Announcer()
