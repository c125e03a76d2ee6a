"""The app factory: one FastAPI app with the engines opened in its lifespan and every domain mounted."""

from __future__ import annotations

from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from ehr import api as ehr_api
from ehr import store as ehr_store
from ehr.models import RecordError
from qilu import ops
from qilu.cache import connect_redis
from qilu.db import connect_mongodb, database, ping_mongodb
from qilu.logs import configure_logging
from qilu.metrics import RequestMetrics
from qilu.middleware import RequestContextMiddleware
from qilu.problems import install_error_handlers
from qilu.settings import Settings, get_settings

log = structlog.get_logger("qilu.app")

# Each domain's store creates its own indexes; start-up runs them all (idempotent).
INDEX_SETUPS = (ehr_store.ensure_indexes,)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.mongo = connect_mongodb(settings)
        app.state.db = database(app.state.mongo, settings)
        app.state.redis = connect_redis(settings)
        try:
            await ping_mongodb(app.state.mongo, timeout_s=settings.mongodb_timeout_ms / 1000)
            for ensure_indexes in INDEX_SETUPS:
                await ensure_indexes(app.state.db)
            log.info("started", mongodb=settings.effective_mongodb_url, db=settings.mongodb_db)
            yield
        finally:
            await app.state.redis.aclose()
            app.state.mongo.close()

    app = FastAPI(title="Qilu", version="0.1.0", lifespan=lifespan,
                  description="Telemedicine referrals and e-health records for a tiered provincial health system.")
    app.state.settings = settings
    app.state.metrics = RequestMetrics()
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.add_exception_handler(RecordError, ehr_api.record_error_handler)
    app.include_router(ops.router)
    app.include_router(ehr_api.router)
    return app
