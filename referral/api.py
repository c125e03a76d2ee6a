"""The referral API under /api/referrals: thin routes over the referral service, each access audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from qilu.audit import record_access
from qilu.auth import CurrentCaller
from referral.models import EVENTS_CHANNEL, Action, ActionBody, ReferralBody, RouteBody, public_view
from referral.service import ReferralRefused, ReferralService

router = APIRouter(prefix="/api/referrals", tags=["referrals"])
log = structlog.get_logger("qilu.referral.api")


async def referral_refused_handler(request: Request, exc: ReferralRefused) -> Response:
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
                         offset: int = Query(0, ge=0)) -> dict[str, Any]:
    docs, total = await referrals(request).list(caller, box, status, limit, offset)
    await record_access(request, caller, "referral-search", entities=[],
                        patients=sorted({d["patient"] for d in docs}))
    return {"total": total, "offset": offset, "entries": [_jsonable(public_view(d)) for d in docs]}


@router.get("/stats")
async def stats(request: Request, caller: CurrentCaller) -> dict[str, Any]:
    return _jsonable(await referrals(request).stats(caller))


@router.get("/events")
async def events(request: Request, caller: CurrentCaller) -> StreamingResponse:
    """Server-sent events: the live feed of referral events for the caller's hospital (or own referrals)."""
    audience = caller.organization if caller.role == "practitioner" else None

    async def stream() -> AsyncIterator[bytes]:
        pubsub = request.app.state.redis.pubsub()
        await pubsub.subscribe(EVENTS_CHANNEL)
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=15)
                if message is None:
                    yield b": keep-alive\n\n"  # keeps proxies from closing an idle stream
                    continue
                event = json.loads(message["data"])
                if audience in event.get("to", []) or (caller.role == "patient" and event.get("patient") ==
                                                       caller.fhir_user):
                    yield f"id: {event['id']}\nevent: referral\ndata: {json.dumps(event)}\n\n".encode()
        finally:
            await pubsub.unsubscribe(EVENTS_CHANNEL)
            await pubsub.aclose()

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

