"""What the workers do for referrals: deadline sweeps, outbox delivery (in-app, e-mail, text messages), statistics."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from ehr.service import RecordService
from qilu.cache import connect_redis
from qilu.db import connect_mongodb, database
from qilu.settings import Settings
from referral.directory import DirectoryCache, load_directory
from referral.service import ReferralRules, ReferralService
from referral.store import ReferralFeed, ReferralStore


def rules_from(settings: Settings) -> ReferralRules:
    return ReferralRules(accept_minutes={"stat": settings.accept_minutes_stat, "asap": settings.accept_minutes_asap,
                                         "urgent": settings.accept_minutes_urgent,
                                         "routine": settings.accept_minutes_routine},
                         max_escalations=settings.max_escalations,
                         share_days_after_completion=settings.share_days_after_completion,
                         paged_priorities=tuple(settings.sms_priorities))


def referral_service(db, settings: Settings) -> ReferralService:
    """The referral service over one database, acting on the record as the system."""
    records = RecordService.as_system(db, settings.fhir_base_url)
    return ReferralService(ReferralStore(db), records, DirectoryCache(lambda: load_directory(records)),
                           rules_from(settings))


class SmtpMailer:
    """E-mail to the hospitals an event concerns, at the addresses in their Organization.telecom."""

    def __init__(self, settings: Settings, records: RecordService):
        self.settings = settings
        self.records = records

    async def __call__(self, organizations: list[str], subject: str, body: str) -> None:
        addresses = await _contacts(self.records, organizations, lambda t: t.get("system") == "email")
        if not addresses:
            return
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = ", ".join(addresses)
        message["Subject"] = subject
        message.set_content(body)
        await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port, timeout=10) as smtp:
            smtp.send_message(message)


def _texts_to(contact: dict[str, Any]) -> bool:
    return contact.get("system") == "sms" or (contact.get("system") == "phone" and contact.get("use") == "mobile")


async def _contacts(records: RecordService, references: list[str], takes: Callable[[dict[str, Any]], bool]
                    ) -> list[str]:
    """The contact points (`telecom`) of these Organizations and Patients that `takes` accepts, each once."""
    found: set[str] = set()
    for resource_type in ("Organization", "Patient"):
        ids = [r.removeprefix(f"{resource_type}/") for r in references if r.startswith(f"{resource_type}/")]
        for doc in await records.store.find_by_ids(resource_type, ids) if ids else []:
            found.update(t["value"] for t in doc["resource"].get("telecom") or [] if takes(t) and t.get("value"))
    return sorted(found)


class SmsGateway(Protocol):
    """Where text messages leave the machine: the province's SMS provider."""

    async def send(self, phones: list[str], text: str, key: str) -> None: ...


class HttpSmsGateway:
    """The SMS provider's HTTP API: one JSON POST per message, with a bearer token and an idempotency key (the
    event id), so a message delivered twice (the outbox is at least once) reaches each phone once."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 10.0):
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    async def send(self, phones: list[str], text: str, key: str) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            response = await http.post(self.url, json={"to": phones, "text": text, "idempotencyKey": key},
                                       headers={**self.headers, "Idempotency-Key": key})
        response.raise_for_status()  # refused or failed: the event stays pending and is sent again later


class SmsPager:
    """Text messages to the on-call numbers of the hospitals an event concerns (Organization.telecom "sms"), or to
    the patient's mobile (Patient.telecom "sms", or a "phone" whose use is "mobile")."""

    def __init__(self, gateway: SmsGateway, records: RecordService):
        self.gateway = gateway
        self.records = records

    async def __call__(self, recipients: list[str], text: str, key: str) -> None:
        phones = await _contacts(self.records, recipients, _texts_to)
        if phones:
            await self.gateway.send(phones, text, key)


async def _with_service(settings: Settings, work: Callable[[ReferralService, Any], Awaitable[Any]]) -> Any:
    client = connect_mongodb(settings)
    redis = connect_redis(settings)
    try:
        return await work(referral_service(database(client, settings), settings), redis)
    finally:
        await redis.aclose()
        client.close()


async def sweep_deadlines(settings: Settings) -> int:
    return await _with_service(settings, lambda service, _redis: service.escalate_overdue())


async def deliver_outbox(settings: Settings) -> int:
    async def work(service: ReferralService, redis) -> int:
        mailer = SmtpMailer(settings, service.records) if settings.smtp_host else None
        pager = (SmsPager(HttpSmsGateway(settings.sms_url, settings.sms_token), service.records)
                 if settings.sms_url else None)
        return await service.deliver_outbox(ReferralFeed(redis).append, mailer, pager)

    return await _with_service(settings, work)


async def refresh_stats(settings: Settings) -> dict[str, Any]:
    async def work(service: ReferralService, _redis) -> dict[str, Any]:
        stats = await service.refresh_stats()
        return {"flows": len(stats["flows"]), "accepted": stats["accept_minutes"]["count"]}

    return await _with_service(settings, work)
