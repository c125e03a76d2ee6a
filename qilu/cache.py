"""The Redis client of a process (pub/sub fan-out, replay guards); one per process, opened in the lifespan."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from qilu.settings import Settings


def connect_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5,
                                   health_check_interval=30)


async def ping_redis(client: aioredis.Redis, timeout_s: float = 2.0) -> None:
    await asyncio.wait_for(client.ping(), timeout_s)
