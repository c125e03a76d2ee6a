"""What the workers do for the record: make bulk exports and sweep away those whose time is up, and bring
patients' resources to their reach."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import structlog

from ehr.export import BulkExports
from ehr.sharing import Sharing
from ehr.store import RecordStore
from qilu.auth import Caller
from qilu.db import connect_mongodb, database
from qilu.identity import UserDirectory
from qilu.settings import Settings

log = structlog.get_logger("qilu.ehr.tasks")


def bulk_exports(db, settings: Settings) -> BulkExports:
    return BulkExports(db, settings.path(settings.export_dir), timedelta(hours=settings.export_keep_hours))


async def run_export(settings: Settings, job_id: str) -> str:
    """Make one export's files as the user who asked for it, with their reach as it is now."""
    client = connect_mongodb(settings)
    try:
        db = database(client, settings)
        users = UserDirectory(db)

        async def caller_of(user_id: str) -> Caller | None:
            user = await users.get(user_id)  # a deactivated account exports nothing
            return Caller.of(user) if user else None

        exports = bulk_exports(db, settings)
        try:
            return await exports.run(job_id, caller_of, settings.fhir_base_url)
        except Exception as exc:  # noqa: BLE001 - the caller is told through the job; a retry would not help
            log.warning("export failed", job=job_id, error=str(exc))
            await exports.fail(job_id, "the export could not be made; start it again")
            return "failed"
    finally:
        client.close()


async def sweep_exports(settings: Settings, enqueue: Callable[[str], None]) -> int:
    """Delete expired and cancelled exports; hand a worker again any waiting one whose start was lost."""
    client = connect_mongodb(settings)
    try:
        exports = bulk_exports(database(client, settings), settings)
        for job_id in await exports.waiting_too_long():
            enqueue(job_id)
        return await exports.sweep()
    finally:
        client.close()


async def sweep_reach(settings: Settings) -> dict[str, int]:
    """Finish half-written reaches, end shares whose time is up, lift settled revocations (ehr/sharing.py)."""
    client = connect_mongodb(settings)
    try:
        return await Sharing(RecordStore(database(client, settings))).sweep()
    finally:
        client.close()
