"""Celery workers: everything that is not a request (deadlines, notifications, exports, recordings, statistics)."""
