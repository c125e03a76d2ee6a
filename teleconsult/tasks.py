"""Building the consult service for the API process, and what a worker does with a finished recording."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ehr.service import RecordService
from qilu.db import connect_mongodb, database
from qilu.settings import Settings
from referral.service import ReferralService
from teleconsult.hub import AiortcHub, MediaHub
from teleconsult.recording import describe_recording
from teleconsult.service import ConsultRules, ConsultService, Enqueue, Kick
from teleconsult.store import ConsultStore


def rules_from(settings: Settings) -> ConsultRules:
    return ConsultRules(grace_s=settings.consult_grace_s, opens_before_s=settings.consult_opens_before_s,
                        recording_dir=settings.path(settings.consult_recording_dir),
                        ice_servers=tuple(settings.consult_ice_servers), public_base_url=settings.base_url)


def media_hub(settings: Settings) -> MediaHub:
    return AiortcHub(settings.consult_ice_servers,
                     (settings.consult_recording_width, settings.consult_recording_height),
                     settings.consult_recording_fps)


def consult_service(db, settings: Settings, *, referrals: ReferralService | None, hub: MediaHub | None,
                    enqueue_recording: Enqueue | None = None, kick_outbox: Kick | None = None) -> ConsultService:
    """The consult service over one database, writing to the record as the system."""
    records = RecordService.as_system(db, settings.fhir_base_url)
    return ConsultService(ConsultStore(db), records, referrals, hub, rules_from(settings), enqueue_recording,
                          kick_outbox=kick_outbox)


async def _describe(path: Path) -> dict[str, Any]:
    return await asyncio.to_thread(describe_recording, path)


async def process_recording(settings: Settings, consult_id: str) -> str | None:
    """Duration, size, SHA-256, thumbnail, and the DocumentReference on the patient's record; idempotent."""
    client = connect_mongodb(settings)
    try:
        service = consult_service(database(client, settings), settings, referrals=None, hub=None)
        return await service.process_recording(consult_id, _describe)
    finally:
        client.close()
