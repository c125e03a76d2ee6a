"""Shared fixtures: the real engines (FerretDB, Redis) brought up once, the live app, a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests get a database and a Redis database of their own, so a demo on the same engines is left alone.
os.environ.setdefault("QILU_MONGODB_DB", "qilu_test")
os.environ.setdefault("QILU_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("QILU_DATA_DIR", str(ROOT / "var"))
os.environ.setdefault("QILU_LOG_FORMAT", "console")
os.environ.setdefault("QILU_LOG_LEVEL", "WARNING")

import httpx  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from qilu.app import create_app  # noqa: E402
from qilu.services import services_up  # noqa: E402
from qilu.settings import Settings, get_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session", autouse=True)
def engines(settings: Settings):
    """FerretDB and Redis, started for real when they are not running (idempotent)."""
    services_up(settings)
    with MongoClient(settings.effective_mongodb_url) as client:
        client.drop_database(settings.mongodb_db)
    yield settings


@pytest.fixture(scope="session")
async def app(settings: Settings):
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture(scope="session")
def celery_worker(settings: Settings):
    """A real `qilu worker` process on the real Redis, stopped at the end of the session."""
    log_path = settings.path("log", "test-worker.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qilu", "worker", "--concurrency", "1"], cwd=ROOT,
                                env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    from workers.celery_app import app as celery_app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}; see {log_path}")
        if celery_app.control.ping(timeout=0.5):
            break
    else:
        proc.terminate()
        raise RuntimeError(f"the worker did not answer within 60 s; see {log_path}")
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
