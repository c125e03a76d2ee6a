"""The Celery tasks; each one is a thin call into a domain service."""

from __future__ import annotations

from workers.celery_app import app


@app.task(name="qilu.ping")
def ping(payload: str = "ping") -> dict:
    """Round-trips through the broker so health checks and tests can see a live worker."""
    return {"pong": payload, "hostname": ping.request.hostname}
