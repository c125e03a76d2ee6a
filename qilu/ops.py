"""Operations routes: liveness, readiness (MongoDB and Redis reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from qilu.cache import ping_redis
from qilu.db import ping_mongodb

router = APIRouter(tags=["ops"])
log = structlog.get_logger("qilu.ops")


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


async def _check(name: str, probe) -> tuple[str, str | None]:
    try:
        await probe
        return name, None
    except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not ready", said in words
        return name, f"{type(exc).__name__}: {exc}"[:300]


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    results = await asyncio.gather(_check("mongodb", ping_mongodb(state.mongo)), _check("redis", ping_redis(state.redis)))
    down = {name: why for name, why in results if why}
    checks = {name: ("down" if why else "up") for name, why in results}
    if down:
        log.warning("not ready", down=list(down))
        return JSONResponse({"type": "about:blank", "title": "Not ready", "status": 503,
                             "detail": "Unreachable: " + ", ".join(sorted(down)), "checks": checks,
                             "errors": down}, status_code=503, media_type="application/problem+json")
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
