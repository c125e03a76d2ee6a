"""The Celery tasks; each one is a thin call into a domain service."""

from __future__ import annotations

import asyncio

from qilu.settings import get_settings
from ehr import tasks as ehr_tasks
from referral import tasks as referral_tasks
from teleconsult import tasks as teleconsult_tasks
from workers.celery_app import app

# Idempotent tasks, so a retry (or a second worker) does no harm; back off on engine hiccups.
RETRYING = {"autoretry_for": (Exception,), "retry_backoff": True, "retry_backoff_max": 60, "max_retries": 5}


@app.task(name="qilu.ping")
def ping(payload: str = "ping") -> dict:
    """Round-trips through the broker so health checks and tests can see a live worker."""
    return {"pong": payload, "hostname": ping.request.hostname}


@app.task(name="qilu.referral.sweep_deadlines", **RETRYING)
def sweep_referral_deadlines() -> int:
    return asyncio.run(referral_tasks.sweep_deadlines(get_settings()))


@app.task(name="qilu.referral.deliver_outbox", **RETRYING)
def deliver_referral_outbox() -> int:
    return asyncio.run(referral_tasks.deliver_outbox(get_settings()))


@app.task(name="qilu.referral.refresh_stats", **RETRYING)
def refresh_referral_stats() -> dict:
    return asyncio.run(referral_tasks.refresh_stats(get_settings()))


@app.task(name="qilu.ehr.run_export", **RETRYING)
def run_bulk_export(job_id: str) -> str:
    return asyncio.run(ehr_tasks.run_export(get_settings(), job_id))


@app.task(name="qilu.ehr.sweep_exports", **RETRYING)
def sweep_bulk_exports() -> int:
    return asyncio.run(ehr_tasks.sweep_exports(
        get_settings(), lambda job_id: run_bulk_export.apply_async(args=[job_id], ignore_result=True)))


@app.task(name="qilu.ehr.sweep_reach", **RETRYING)
def sweep_reach() -> dict:
    return asyncio.run(ehr_tasks.sweep_reach(get_settings()))


@app.task(name="qilu.teleconsult.process_recording", **RETRYING)
def process_consult_recording(consult_id: str) -> str | None:
    return asyncio.run(teleconsult_tasks.process_recording(get_settings(), consult_id))
