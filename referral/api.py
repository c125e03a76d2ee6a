"""The referral API under /api/referrals: thin routes over the referral service, each access audited."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from redis.exceptions import RedisError

from qilu.audit import record_access, record_denial
from qilu.auth import CurrentCaller, still_admitted
from qilu.paging import Offset
from referral.models import EVENT_POSITION, Action, ActionBody, ReferralBody, RouteBody, public_view
from referral.service import ReferralRefused, ReferralService
from referral.store import ReferralFeed

router = APIRouter(prefix="/api/referrals", tags=["referrals"])
log = structlog.get_logger("qilu.referral.api")
FEED_WAIT_MS = 3000  # below the Redis client's 5 s socket timeout
KEEP_ALIVE_S = 15
# How often an open feed checks that its caller is still admitted: a deactivated user, an expired token or a
# password change ends the stream (the browser then reconnects with its renewed token, or is refused).
ADMISSION_RECHECK_S = 30.0
RECONNECT_AFTER_MS = 3000


async def referral_refused_handler(request: Request, exc: ReferralRefused) -> Response:
    if exc.status in (403, 404) and getattr(request.state, "caller", None) is not None:
        await record_denial(request, "referral", exc.detail)
    return JSONResponse({"type": "about:blank", "title": exc.title, "status": exc.status, "detail": exc.detail,
                         "instance": request.url.path, **exc.extra}, status_code=exc.status,
                        media_type="application/problem+json")


def referrals(request: Request) -> ReferralService:
    return request.app.state.referrals


def _kick_outbox(request: Request) -> None:
    """Ask a worker to deliver the new events now; the beat sweep delivers them anyway if this is lost."""
    kick = getattr(request.app.state, "kick_outbox", None)
    if kick is not None:
        kick()


@router.post("/route")
async def route(body: RouteBody, request: Request, caller: CurrentCaller,
                explain: Literal["all"] | None = None) -> dict[str, Any]:
    result = await referrals(request).route(caller, body, explain_all=explain == "all")
    await record_access(request, caller, "referral-route", entities=[], patients=[
        body.patient if body.patient.startswith("Patient/") else f"Patient/{body.patient}"])
    return result


@router.post("", status_code=201)
async def create(body: ReferralBody, request: Request, caller: CurrentCaller,
                 idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Response:
    doc, created = await referrals(request).create(caller, body, idempotency_key)
    await record_access(request, caller, "referral-create" if created else "referral-read",
                        entities=[f"ServiceRequest/{doc['_id']}"], patients=[doc["patient"]])
    if created:
        _kick_outbox(request)
    return JSONResponse(_jsonable(public_view(doc)), status_code=201 if created else 200,
                        headers={"Location": f"/api/referrals/{doc['_id']}"})


@router.get("")
async def list_referrals(request: Request, caller: CurrentCaller, box: Literal["inbox", "outbox"] = "inbox",
                         status: str | None = Query(None, max_length=20), limit: int = Query(50, ge=1, le=200),
                         offset: Offset = 0) -> dict[str, Any]:
    docs, total = await referrals(request).list(caller, box, status, limit, offset)
    await record_access(request, caller, "referral-search", entities=[],
                        patients=sorted({d["patient"] for d in docs}))
    return {"total": total, "offset": offset, "entries": [_jsonable(public_view(d)) for d in docs]}


@router.get("/stats")
async def stats(request: Request, caller: CurrentCaller) -> dict[str, Any]:
    return _jsonable(await referrals(request).stats(caller))


@router.get("/events")
async def events(request: Request, caller: CurrentCaller,
                 after: Annotated[str | None, Query(pattern=EVENT_POSITION,
                                                    description="replay what came after this event id")] = None,
                 last_event_id: Annotated[str | None, Header(pattern=EVENT_POSITION)] = None) -> StreamingResponse:
    """Server-sent events: the live feed of referral events for the caller's hospital (or own referrals).

    Each event's `id` is its place in the feed. A listener that comes back with `Last-Event-ID` (browsers send it
    when they reconnect) or `?after=` first hears what it missed; when that is no longer kept, a `resync` event
    tells it to look again instead."""
    audience = caller.organization if caller.role == "practitioner" else None
    feed = ReferralFeed(request.app.state.redis)
    asked = last_event_id or after

    def visible(event: dict[str, Any]) -> bool:
        return audience in event.get("to", []) or (caller.role == "patient" and event.get("patient") ==
                                                     caller.fhir_user)

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in feed_from(asked):
                yield chunk
        except RedisError as exc:
            # The feed's store is away: end the stream; the browser comes back with its last id and hears the gap.
            log.warning("live feed unavailable", error=str(exc))

    async def feed_from(asked: str | None) -> AsyncIterator[bytes]:
        position = asked or await feed.position()
        if asked and await feed.lost_after(asked):
            yield b"event: resync\ndata: {}\n\n"
            position = await feed.position()
        # The first event carries the position, so even a listener that hears nothing else can come back to it.
        yield f": connected\nretry: {RECONNECT_AFTER_MS}\nid: {position}\nevent: ready\ndata: {{}}\n\n".encode()
        quiet_since = checked_at = time.monotonic()
        while not await request.is_disconnected():
            if time.monotonic() - checked_at >= ADMISSION_RECHECK_S:
                if not await still_admitted(request):
                    return
                checked_at = time.monotonic()
            # Waits stay below the Redis client's socket timeout; a keep-alive goes out when the feed is quiet.
            for event_position, event in await feed.read(position, FEED_WAIT_MS):
                position = event_position
                if visible(event):
                    quiet_since = time.monotonic()
                    yield f"id: {position}\nevent: referral\ndata: {json.dumps(event)}\n\n".encode()
            if time.monotonic() - quiet_since >= KEEP_ALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"  # keeps proxies from closing an idle stream

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{referral_id}")
async def read(referral_id: str, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    doc = await referrals(request).get(caller, referral_id)
    await record_access(request, caller, "referral-read", entities=[f"ServiceRequest/{doc['_id']}"],
                        patients=[doc["patient"]])
    return _jsonable(public_view(doc))


@router.post("/{referral_id}/{action}")
async def act(referral_id: str, action: Action, request: Request, caller: CurrentCaller,
              body: ActionBody | None = None) -> dict[str, Any]:
    doc = await referrals(request).act(caller, referral_id, action, body or ActionBody())
    await record_access(request, caller, f"referral-{action}", entities=[f"ServiceRequest/{doc['_id']}"],
                        patients=[doc["patient"]])
    _kick_outbox(request)
    return _jsonable(public_view(doc))


def _jsonable(value: Any) -> Any:
    """Datetimes (stats, history) as ISO strings; everything else as it is."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))

