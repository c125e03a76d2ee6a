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
    beat_schedule={},
    beat_schedule_filename=str(settings.path("celerybeat-schedule")),
)
