"""The Celery app: broker and results on Redis, JSON only, late acks, and the beat schedule."""

from __future__ import annotations

from celery import Celery

from qilu.settings import get_settings

settings = get_settings()

app = Celery("qilu", broker=settings.redis_url, backend=settings.redis_url, include=["workers.tasks"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # A task is acknowledged only once it has run, and handed back if its worker dies: tasks are idempotent.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_retry_delay=5,
    result_expires=3600,
    timezone="UTC",
    enable_utc=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # A worker acts on the database its settings name; a queue per database keeps another deployment (or
    # another test session) on the same Redis from taking tasks meant for this one.
    task_default_queue=f"qilu.{settings.mongodb_db}",
    beat_schedule={
        "referral-deadlines": {"task": "qilu.referral.sweep_deadlines", "schedule": settings.deadline_sweep_s},
        "referral-outbox": {"task": "qilu.referral.deliver_outbox", "schedule": settings.outbox_sweep_s},
        "referral-stats": {"task": "qilu.referral.refresh_stats", "schedule": settings.stats_refresh_s},
        "ehr-exports": {"task": "qilu.ehr.sweep_exports", "schedule": settings.export_sweep_s},
        "ehr-reach": {"task": "qilu.ehr.sweep_reach", "schedule": settings.reach_sweep_s},
    },
    # One schedule file per database: two beats sharing a data directory must not share one shelve file.
    beat_schedule_filename=str(settings.path(f"celerybeat-schedule-{settings.mongodb_db}")),
)
