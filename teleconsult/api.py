"""The consult API under /api/consults: thin routes, and the signaling WebSocket of a room.

Signaling, one JSON object per message, on a socket opened with the portal's session cookie (from this site's
own pages) or with `?token=<access token>` (any other client). The client sends `join` {consent} first, then
`answer` {sdp} to each `offer` the server makes, optionally `candidate` {candidate, sdpMid, sdpMLineIndex},
`chat` {text}, `share` {reference, note} and `leave`. The server sends `joined`, `offer` {sdp, streams: mid -> the
peer it carries}, `peers` (who is there, the ICE servers, whether it records), `chat`, `share`, `ended` and
`error` {error, code, message}. A refusal is an `error` followed by a close whose code is 4000 + the HTTP status:
4401 bad or missing token, 4403 not invited (or the cookie sent from another site's page), 4404 unknown consult,
4409 ended or not open yet, 4400 malformed message or SDP, 4413 message too large, 4408 no join in time,
4429 flooding.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Query, Request, Response, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from qilu.audit import record_access, record_denial
from qilu.auth import TOKEN_COOKIE, CurrentCaller
from qilu.paging import Offset
from qilu.problems import Problem
from qilu.settings import Settings
from teleconsult.hub import SignalingError
from teleconsult.models import (CLIENT_MESSAGE, AnswerMessage, CandidateMessage, ChatMessage, ConsultBody,
                                JoinMessage, LeaveMessage, OfferMessage, OpinionBody, ShareMessage, public_view)
from teleconsult.service import Channel, ConsultRefused, ConsultService, Presence

router = APIRouter(prefix="/api/consults", tags=["consults"])
log = structlog.get_logger("qilu.teleconsult.api")


async def consult_refused_handler(request: Request, exc: ConsultRefused) -> Response:
    if exc.status in (403, 404) and getattr(request.state, "caller", None) is not None:
        await record_denial(request, "consult", exc.detail)
    return JSONResponse({"type": "about:blank", "title": exc.title, "status": exc.status, "detail": exc.detail,
                         "instance": request.url.path}, status_code=exc.status, media_type="application/problem+json")


def consults(connection: Request | WebSocket) -> ConsultService:
    return connection.app.state.consults


@router.post("", status_code=201)
async def create(body: ConsultBody, request: Request, caller: CurrentCaller) -> Response:
    doc = await consults(request).create(caller, body)
    await record_access(request, caller, "create", entities=[doc["encounter"]], patients=[doc["patient"]])
    return JSONResponse(public_view(doc), status_code=201, headers={"Location": f"/api/consults/{doc['_id']}"})


@router.get("")
async def list_consults(request: Request, caller: CurrentCaller,
                        referral: str | None = Query(None, max_length=64, pattern=r"^[A-Za-z0-9\-.]+$"),
                        status: Literal["open", "scheduled", "live", "ended"] | None = None,
                        limit: int = Query(50, ge=1, le=200), offset: Offset = 0) -> dict[str, Any]:
    """The consults the caller holds or is invited to (a patient: those about them), newest first; `referral`
    narrows them to one referral's, `status=open` to those not ended."""
    docs, total = await consults(request).list(caller, referral, status, limit, offset)
    await record_access(request, caller, "consult-search", entities=[d["encounter"] for d in docs],
                        patients=sorted({d["patient"] for d in docs}))
    return {"total": total, "offset": offset, "entries": [public_view(d) for d in docs]}


@router.get("/{consult_id}")
async def read(consult_id: str, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    doc = await consults(request).get(caller, consult_id)
    await record_access(request, caller, "read", entities=[doc["encounter"]], patients=[doc["patient"]])
    view = public_view(doc)
    view["present"] = [p.public() for p in consults(request).present(consult_id)]
    return view


@router.post("/{consult_id}/end")
async def end(consult_id: str, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    doc = await consults(request).end(caller, consult_id)
    await record_access(request, caller, "update", entities=[doc["encounter"]], patients=[doc["patient"]])
    return public_view(doc)


@router.post("/{consult_id}/opinion", status_code=201)
async def opinion(consult_id: str, body: OpinionBody, request: Request, caller: CurrentCaller) -> Response:
    doc, composition = await consults(request).opinion(caller, consult_id, body)
    await record_access(request, caller, "create", entities=[composition], patients=[doc["patient"]])
    return JSONResponse({"composition": composition, "consult": consult_id, "referral": doc.get("referral")},
                        status_code=201, headers={"Location": f"/fhir/{composition}"})


@router.get("/{consult_id}/recording")
async def recording(consult_id: str, request: Request, caller: CurrentCaller) -> FileResponse:
    """The recording, streamed; Range requests are answered 206 (players seek with them)."""
    doc, path = await consults(request).recording_file(caller, consult_id)
    reference = (doc.get("recording") or {}).get("document_reference") or doc["encounter"]
    await record_access(request, caller, "read", entities=[reference], patients=[doc["patient"]])
    return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, no-store"})


@router.get("/{consult_id}/diagnostics")
async def diagnostics(consult_id: str, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    """For the host (or an administrator): what the media hub is running, for this room and the process."""
    return await consults(request).diagnostics(caller, consult_id)


# --- signaling ---------------------------------------------------------------------------------------------

class SocketChannel(Channel):
    def __init__(self, websocket: WebSocket):
        self.websocket = websocket
        self.closed = False
        self._sending = asyncio.Lock()  # the hub, the room and this connection all send on it

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        async with self._sending:
            try:
                await self.websocket.send_text(json.dumps(message, ensure_ascii=False, default=str))
            except Exception:  # noqa: BLE001 - the client is gone; its disconnect ends its session
                self.closed = True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        async with self._sending:
            try:
                await self.websocket.close(code=code, reason=reason.encode()[:120].decode(errors="ignore"))
            except Exception:  # noqa: BLE001
                pass

    async def refuse(self, code: int, error: str, message: str) -> None:
        log.info("consult connection refused", code=code, error=error)
        await self.send({"type": "error", "error": error, "code": code, "message": message})
        await self.close(code, message)


class MessageRate:
    """A token bucket per connection; a client that keeps flooding after being told is disconnected."""

    def __init__(self, per_s: float, burst: int):
        self.per_s, self.burst = per_s, burst
        self.tokens = float(burst)
        self.at = time.monotonic()
        self.refused: list[float] = []
        self.told_at = 0.0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused = [t for t in self.refused if now - t < 10] + [now]
        return False

    @property
    def flooding(self) -> bool:
        return len(self.refused) > 2 * self.burst

    def should_tell(self) -> bool:
        now = time.monotonic()
        if now - self.told_at >= 1:
            self.told_at = now
            return True
        return False


def _problem_of(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where + ': ' if where else ''}{first.get('msg', 'invalid')}"


async def _next_text(websocket: WebSocket) -> str | bytes | None:
    """The next message's text (bytes for a binary one), or None once the client is gone."""
    try:
        message = await websocket.receive()
    except (RuntimeError, OSError):
        return None
    if message["type"] == "websocket.disconnect":
        return None
    return message.get("text") if message.get("text") is not None else message.get("bytes", b"")


@router.websocket("/{consult_id}/ws")
async def signaling(websocket: WebSocket, consult_id: str, token: str | None = None) -> None:
    await websocket.accept()
    channel = SocketChannel(websocket)
    service = consults(websocket)
    settings: Settings = websocket.app.state.settings
    presence: Presence | None = None
    try:
        # Browsers send no Authorization header on an upgrade but do send the portal's session cookie; other
        # clients pass their access token as ?token=. Either is checked like any request's token.
        credential = token or websocket.cookies.get(TOKEN_COOKIE)
        if not token and credential and not _same_origin(websocket, settings):
            await channel.refuse(4403, "cross-origin", "The session cookie is accepted from this site's own pages "
                                                       "only; other clients send ?token=<access token>")
            return
        try:
            caller = await websocket.app.state.tokens.caller(credential or "")
        except Problem as problem:  # 401 for a bad token; 503 when the identity service cannot be reached
            if problem.status == 401:
                await record_denial(websocket, "consult", problem.detail or "no valid token")
            await channel.refuse(4000 + problem.status, "bad-token" if problem.status == 401 else "unavailable",
                                 problem.detail or "Log in first: ?token=<access token>")
            return
        try:
            doc = await service.joinable(caller, consult_id)
            try:
                first = await asyncio.wait_for(_next_text(websocket), settings.consult_join_timeout_s)
            except TimeoutError:
                raise ConsultRefused(408, "Join timeout", "Send join first, within "
                                     f"{settings.consult_join_timeout_s:g} s") from None
            if first is None:
                return
            join = _parse(first, settings)
            if not isinstance(join, JoinMessage):
                raise ConsultRefused(400, "Join first", "The first message must be join {consent}")
            await record_access(websocket, caller, "consult-join", entities=[doc["encounter"]],
                                patients=[doc["patient"]])
            presence = await service.join(caller, consult_id, join.consent, channel)
        except ConsultRefused as refused:
            if refused.status in (403, 404):  # the policy's answer, traced like a refused request's
                await record_denial(websocket, "consult", refused.detail, caller=caller)
            await channel.refuse(refused.close_code, refused.error, refused.detail)
            return
        rate = MessageRate(settings.consult_messages_per_s, settings.consult_message_burst)
        while not channel.closed:
            text = await _next_text(websocket)
            if text is None:
                return
            if not rate.allow():
                if rate.flooding:
                    await channel.refuse(4429, "flooding", "Too many messages; the connection is closed")
                    return
                if rate.should_tell():
                    await channel.send({"type": "error", "error": "rate-limited", "code": 429,
                                        "message": f"More than {settings.consult_messages_per_s:g} messages a "
                                                   "second: messages are being dropped"})
                continue
            try:
                message = _parse(text, settings)
                if isinstance(message, LeaveMessage):
                    await channel.close(1000, "left")
                    return
                await _handle(websocket, service, presence, message)
            except SignalingError as error:
                await channel.refuse(4400, "malformed-sdp", str(error))
                return
            except ConsultRefused as refused:
                if refused.fatal:
                    await channel.refuse(refused.close_code, refused.error, refused.detail)
                    return
                await channel.send({"type": "error", "error": refused.error, "code": refused.status,
                                    "message": refused.detail})
    finally:
        if presence is not None:
            await service.leave(presence)


def _same_origin(websocket: WebSocket, settings: Settings) -> bool:
    """Whether a handshake carrying the cookie comes from our own pages: a page of another site could otherwise open
    a room's socket with the visitor's cookie (cross-site WebSocket hijacking). No Origin: not a browser."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    ours = {websocket.headers.get("host", ""), urlsplit(settings.base_url).netloc}
    return urlsplit(origin).netloc in ours


def _parse(text: str | bytes, settings: Settings) -> Any:
    if isinstance(text, bytes):
        raise ConsultRefused(400, "Malformed message", "Messages are JSON text, not binary")
    if len(text.encode()) > settings.consult_message_max_bytes:
        raise ConsultRefused(413, "Message too large",
                             f"A message is at most {settings.consult_message_max_bytes} bytes")
    try:
        return CLIENT_MESSAGE.validate_json(text)
    except ValidationError as error:
        raise ConsultRefused(400, "Malformed message", _problem_of(error)) from None


async def _handle(websocket: WebSocket, service: ConsultService, presence: Presence, message: Any) -> None:
    room, peer = presence.consult_id, presence.peer_id
    if isinstance(message, AnswerMessage):
        await service.hub.answer(room, peer, message.sdp)
    elif isinstance(message, CandidateMessage):
        await service.hub.candidate(room, peer, message.candidate, message.sdpMid, message.sdpMLineIndex)
    elif isinstance(message, ChatMessage):
        await service.chat(presence, message.text)
    elif isinstance(message, ShareMessage):
        patients = await service.share(presence, message.reference, message.note)
        await record_access(websocket, presence.caller, "read", entities=[message.reference], patients=patients)
    elif isinstance(message, OfferMessage):
        raise ConsultRefused(409, "Server offers", "The server makes the offers in a consult room; answer them",
                             fatal=False)
    elif isinstance(message, JoinMessage):
        raise ConsultRefused(409, "Already joined", "This connection has joined already", fatal=False)
