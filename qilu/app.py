"""The app factory: one FastAPI app with the engines opened in its lifespan and every domain mounted."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from ehr import api as ehr_api
from ehr import export as ehr_export
from ehr import pages as ehr_pages
from ehr import store as ehr_store
from ehr.cards import CardRefused
from ehr.models import RecordError
from ehr.service import RecordService
from ehr.sharing import REACH_CACHES
from ehr.tasks import bulk_exports
from qilu import audit, auth, identity, ops, users, web
from qilu.audit import AuditTrailWriter
from qilu.auth import TokenService
from qilu.identity import UserDirectory
from qilu.keys import SigningKeys
from qilu.cache import connect_redis
from qilu.db import connect_mongodb, database, ping_mongodb
from qilu.logs import configure_logging
from qilu.denials import DenialGuard
from qilu.metrics import RequestMetrics
from qilu.middleware import RequestContextMiddleware
from qilu.problems import install_error_handlers
from qilu.settings import Settings, get_settings
from referral import api as referral_api
from referral import pages as referral_pages
from referral import store as referral_store
from referral.service import ReferralRefused
from referral.tasks import referral_service
from teleconsult import api as consult_api
from teleconsult import pages as consult_pages
from teleconsult import store as consult_store
from teleconsult.service import ConsultRefused
from teleconsult.tasks import consult_service, media_hub

log = structlog.get_logger("qilu.app")

# Each domain's store creates its own indexes; start-up runs them all (idempotent).
INDEX_SETUPS = (ehr_store.ensure_indexes, ehr_export.ensure_indexes, identity.ensure_indexes,
                referral_store.ensure_indexes, consult_store.ensure_indexes)


def _kick_outbox() -> None:
    """Have a worker deliver new referral events now; the beat sweep delivers them anyway if this fails."""
    from workers.tasks import deliver_referral_outbox

    try:
        deliver_referral_outbox.apply_async(retry=False, ignore_result=True)
    except Exception as exc:  # noqa: BLE001 - a lost kick only delays delivery until the next sweep
        log.warning("outbox kick failed", error=str(exc))


def _enqueue_recording(consult_id: str) -> None:
    """Have a worker post-process a finished consult recording (duration, hash, DocumentReference)."""
    from workers.tasks import process_consult_recording

    try:
        process_consult_recording.apply_async(args=[consult_id], retry=False, ignore_result=True)
    except Exception as exc:  # noqa: BLE001 - the file is kept; re-running the task later finishes it
        log.warning("recording post-processing not enqueued", consult=consult_id, error=str(exc))


def _enqueue_export(job_id: str) -> None:
    """Have a worker make a bulk export; the beat sweep hands it to one later if this is lost."""
    from workers.tasks import run_bulk_export

    try:
        run_bulk_export.apply_async(args=[job_id], retry=False, ignore_result=True)
    except Exception as exc:  # noqa: BLE001 - the job waits in MongoDB; the sweep enqueues it again
        log.warning("export not enqueued", job=job_id, error=str(exc))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.mongo = connect_mongodb(settings)
        app.state.db = database(app.state.mongo, settings)
        app.state.redis = connect_redis(settings)
        app.state.users = UserDirectory(app.state.db, app.state.redis)
        app.state.users.start()
        # What the access decisions keep of patients' reach, heard of while the app runs (ehr/sharing.py).
        app.state.reach_listeners = [asyncio.create_task(cache.listen(app.state.redis, settings.mongodb_db))
                                     for cache in REACH_CACHES]
        app.state.tokens = TokenService(settings, app.state.keys, app.state.redis, app.state.users)
        # The audit trail and the access log live in the record; auth and audit reach them through these.
        records = RecordService.as_system(app.state.db, settings.fhir_base_url)
        app.state.audit_sink = AuditTrailWriter(records.append_audit_events)
        app.state.access_log_reader = records.access_log
        app.state.referrals = referral_service(app.state.db, settings)
        app.state.kick_outbox = _kick_outbox
        app.state.exports = bulk_exports(app.state.db, settings)
        app.state.enqueue_export = _enqueue_export
        # Consult rooms: the media hub lives as long as the process; stopping it closes every peer connection.
        app.state.consults = consult_service(app.state.db, settings, referrals=app.state.referrals,
                                             hub=media_hub(settings), enqueue_recording=_enqueue_recording,
                                             kick_outbox=_kick_outbox)
        try:
            await ping_mongodb(app.state.mongo, timeout_s=settings.mongodb_timeout_ms / 1000)
            for ensure_indexes in INDEX_SETUPS:
                await ensure_indexes(app.state.db)
            log.info("started", mongodb=settings.effective_mongodb_url, db=settings.mongodb_db)
            yield
        finally:
            await app.state.consults.stop()
            await app.state.users.stop()
            for listener in app.state.reach_listeners:
                listener.cancel()
            await asyncio.gather(*app.state.reach_listeners, return_exceptions=True)
            await app.state.redis.aclose()
            app.state.mongo.close()

    app = FastAPI(title="Qilu", version="0.1.0", lifespan=lifespan,
                  description="Telemedicine referrals and e-health records for a tiered provincial health system.")
    app.state.settings = settings
    app.state.metrics = RequestMetrics()
    app.state.denials = DenialGuard(app.state.metrics, settings.denial_burst)
    app.state.keys = SigningKeys.load(settings)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.add_exception_handler(RecordError, ehr_api.record_error_handler)
    app.add_exception_handler(CardRefused, ehr_api.card_refused_handler)
    app.add_exception_handler(ReferralRefused, referral_api.referral_refused_handler)
    app.add_exception_handler(ConsultRefused, consult_api.consult_refused_handler)
    # The FHIR API first: routes are matched in order, and it takes most requests (no other router has /fhir).
    app.include_router(ehr_api.router)
    app.include_router(ops.router)
    app.include_router(auth.router)
    app.include_router(audit.router)
    app.include_router(users.router)
    app.include_router(ehr_api.cards_router)
    app.include_router(referral_api.router)
    app.include_router(consult_api.router)
    # The portals: shared layout, static files and each domain's pages (shells over the APIs above).
    web.install(app, ehr_pages.router, referral_pages.router, consult_pages.router)
    return app
