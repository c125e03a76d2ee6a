"""ASGI middleware around every request: request id, structured access log, metrics, body size limit."""

from __future__ import annotations

import time
import uuid

import structlog
from starlette.exceptions import HTTPException

from qilu.db import counting_engine_commands
from qilu.metrics import RequestMetrics

log = structlog.get_logger("qilu.http")


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on and the error handlers render it."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than the limit of {limit} bytes.")


class RequestContextMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so WebSockets and streamed bodies pass through untouched."""

    def __init__(self, app, *, metrics: RequestMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status_holder = {"status": 500}
        limit = self.max_body_bytes

        async def send_with_request_id(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                   (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        received = 0

        async def receive_limited():
            nonlocal received
            # Refuse on the declared length before reading anything; count bytes for chunked bodies.
            if declared > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        with counting_engine_commands() as commands:
            try:
                await self.app(scope, receive_limited, send_with_request_id)
            finally:
                elapsed = time.perf_counter() - started
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                status = status_holder["status"]
                self.metrics.observe(scope["method"], template, status, elapsed, commands.count)
                log.info("request", method=scope["method"], route=template, status=status,
                         ms=round(elapsed * 1000, 2), engine_commands=commands.count)
            structlog.contextvars.unbind_contextvars("request_id")
