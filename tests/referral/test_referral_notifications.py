"""Notifications: the outbox delivered by the worker to the live feed (a Redis stream), by e-mail to a real SMTP server, and over SSE."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from referral_world import build_referral_world, new_case, read_feed_until, referral_body

from logins import login
from sample_records import PASSWORD, patient
from ehr import store as ehr_store
from fhir_profiles.identifiers import CHINA_STANDARD_TIME
from qilu.accounts import add_user
from qilu.auth import Caller
from qilu.db import connect_mongodb
from referral import store as referral_store
from referral import api as referral_api
from referral import tasks as referral_tasks
from referral.models import EVENT_POSITION, EVENTS_STREAM, ActionBody, ReferralBody
from referral.store import ReferralFeed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.3)
    pytest.fail(f"{what} not met within {timeout} s")


# --- in-app: the live feed, through the real worker --------------------------------------------------------


async def test_the_worker_publishes_every_event_and_marks_it_sent(app, rw, settings, celery_worker):
    redis = aioredis.Redis.from_url(settings.redis_url)
    feed = ReferralFeed(redis)
    start = await feed.position()
    county, jinan = await login(app, rw.county_doctor), await login(app, rw.jinan_specialist)
    try:
        case = await new_case(app.state.db, rw)
        created = await county.post("/api/referrals", json=referral_body(rw, case))
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        for action in ("receive", "accept"):
            assert (await jinan.post(f"/api/referrals/{rid}/{action}")).status_code == 200

        def of_this_referral(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {e["id"]: e for e in events if e.get("referral") == rid}  # the feed is shared: filter

        heard = of_this_referral(await read_feed_until(feed, start, lambda events: len(of_this_referral(events)) >= 3))
        assert sorted(e["type"] for e in heard.values()) == ["accepted", "received", "requested"], heard
        by_type = {e["type"]: e for e in heard.values()}
        assert by_type["requested"]["to"] == [rw.jinan]
        assert by_type["accepted"]["to"] == sorted([rw.county, rw.jinan])
        assert all(e["patient"] == case.patient for e in heard.values())

        async def all_sent():
            doc = await app.state.db["referrals"].find_one({"_id": rid})
            return doc if not doc["outbox_pending"] and all(e["sent"] for e in doc["outbox"]) else None

        doc = await wait_for(all_sent, what="outbox marked sent")
        assert {e["id"] for e in doc["outbox"]} == set(heard)
    finally:
        await county.aclose()
        await jinan.aclose()
        await redis.aclose()


async def test_delivery_racing_transitions_loses_neither(app, rw):
    """FerretDB runs an update as read-then-write: marking events sent must never undo a transition made meanwhile."""
    county, jinan = await login(app, rw.county_doctor), await login(app, rw.jinan_specialist)
    heard: list[str] = []

    async def publish(message: dict[str, Any]) -> None:
        heard.append(message["id"])

    stop = asyncio.Event()

    async def deliver_all_the_time() -> None:
        while not stop.is_set():
            await app.state.referrals.deliver_outbox(publish, None)

    start = await ReferralFeed(app.state.redis).position()
    try:
        case = await new_case(app.state.db, rw)
        created = await county.post("/api/referrals", json=referral_body(rw, case))
        rid = created.json()["id"]
        deliverers = [asyncio.create_task(deliver_all_the_time()) for _ in range(2)]
        for action, body in (("receive", None), ("accept", None), ("schedule", {"start": "2031-05-04T09:00:00Z"}),
                             ("arrive", None)):
            response = await jinan.post(f"/api/referrals/{rid}/{action}", json=body)
            assert response.status_code == 200, response.text
        stop.set()
        await asyncio.gather(*deliverers)
        await app.state.referrals.deliver_outbox(publish, None)

        async def all_sent():
            # A worker of an earlier test may hold this referral's claim for a moment; it marks what it sent.
            doc = await app.state.db["referrals"].find_one({"_id": rid})
            return doc if not doc["outbox_pending"] and all(e.get("sent") for e in doc["outbox"]) else None

        doc = await wait_for(all_sent, timeout=30, what="every event marked sent")
        assert doc["status"] == "in-progress" and doc["version"] == 5
        assert [h["action"] for h in doc["history"]] == ["create", "receive", "accept", "schedule", "arrive"]
        assert [e["type"] for e in doc["outbox"]] == ["requested", "received", "accepted", "scheduled", "arrived"]
        # Each at least once: here, or by the worker of an earlier test, which appends to the live feed.
        wanted = {e["id"] for e in doc["outbox"]}
        await read_feed_until(ReferralFeed(app.state.redis), start,
                              lambda events: wanted <= set(heard) | {e["id"] for e in events}, timeout=30)
    finally:
        await county.aclose()
        await jinan.aclose()


# --- e-mail: a real SMTP server on this machine ------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps what it is sent."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


@asynccontextmanager
async def mail_database(settings) -> AsyncIterator[Any]:
    """A database of its own for the SMTP test: no worker serves it, so only this test delivers its outbox."""
    name = f"{settings.mongodb_db}_mail"
    client = connect_mongodb(settings)
    await client.drop_database(name)
    try:
        db = client[name]
        await ehr_store.ensure_indexes(db)
        await referral_store.ensure_indexes(db)
        yield db
    finally:
        await client.drop_database(name)
        client.close()


def practitioner(user_org: str, who: str) -> Caller:
    return Caller(user_id=who, role="practitioner", fhir_user=f"PractitionerRole/{who}", organization=user_org,
                  practitioner=None, scopes=())


async def test_events_are_mailed_over_smtp_at_least_once(settings):
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    mail_settings = settings.model_copy(update={"mongodb_db": f"{settings.mongodb_db}_mail",
                                                "smtp_host": "127.0.0.1", "smtp_port": port,
                                                "smtp_from": "referrals@qilu.example.org"})
    try:
        async with mail_database(settings) as db:
            rw = await build_referral_world(db, with_users=False)
            case = await new_case(db, rw)
            service = referral_tasks.referral_service(db, mail_settings)
            county, jinan = practitioner(rw.county, "county-doctor"), practitioner(rw.jinan, "jinan-doctor")
            doc, _ = await service.create(county, ReferralBody(**referral_body(rw, case)), None)
            await service.act(jinan, doc["_id"], "receive", ActionBody())

            assert await referral_tasks.deliver_outbox(mail_settings) == 2
            assert await referral_tasks.deliver_outbox(mail_settings) == 0  # sent once, marked sent
            assert len(inbox.messages) == 2
            (to_requested, requested), (to_received, received) = inbox.messages
            assert to_requested == [rw.emails["jinan"]]
            assert sorted(to_received) == sorted([rw.emails["county"], rw.emails["jinan"]])
            assert requested["From"] == "referrals@qilu.example.org"
            assert "requested" in requested["Subject"] and "received" in received["Subject"]
            assert doc["_id"] in requested.get_content()
            stored = await db["referrals"].find_one({"_id": doc["_id"]})
            assert all(e["sent"] for e in stored["outbox"]) and not stored["outbox_pending"]

            # The mail server goes away: the event stays pending and is sent once it is back.
            controller.stop()
            await service.act(jinan, doc["_id"], "accept", ActionBody())
            assert await referral_tasks.deliver_outbox(mail_settings) == 0
            stored = await db["referrals"].find_one({"_id": doc["_id"]})
            assert stored["outbox_pending"] and not stored["outbox"][-1]["sent"]
            controller = Controller(inbox, hostname="127.0.0.1", port=port)
            controller.start()
            assert await referral_tasks.deliver_outbox(mail_settings) == 1
            assert "accepted" in inbox.messages[-1][1]["Subject"]
            stored = await db["referrals"].find_one({"_id": doc["_id"]})
            assert all(e["sent"] for e in stored["outbox"]) and not stored["outbox_pending"]
    finally:
        controller.stop(no_assert=True)


# --- text messages: the real HTTP adapter, against a stand-in for the SMS provider on this machine ----------


class SmsProvider:
    """What stands in for the province's SMS provider: its HTTP API on loopback, keeping what it is sent; it can
    be told to fail, as a provider does."""

    def __init__(self, token: str):
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.failing = False

        async def receive(request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            if self.failing:
                return JSONResponse({"error": "try later"}, status_code=503)
            body = await request.json()
            assert request.headers["idempotency-key"] == body["idempotencyKey"]
            self.messages.append(body)
            return JSONResponse({"accepted": len(body["to"])})

        self.app = Starlette(routes=[Route("/v1/messages", receive, methods=["POST"])])


async def test_the_most_urgent_moves_are_texted_to_on_call_numbers_naming_no_patient(settings):
    provider = SmsProvider(token="provider-secret")
    async with serving(provider.app) as base, mail_database(settings) as db:
        sms_settings = settings.model_copy(update={"mongodb_db": f"{settings.mongodb_db}_mail", "smtp_host": None,
                                                   "sms_url": f"{base}/v1/messages", "sms_token": "provider-secret"})
        rw = await build_referral_world(db, with_users=False)
        phones = {"county": "+8613800000001", "jinan": "+8613800000002"}
        for key in phones:  # each hospital's on-call number, beside its e-mail address
            org = await db["Organization"].find_one({"_id": getattr(rw, key).removeprefix("Organization/")})
            telecom = [*org["resource"]["telecom"], {"system": "sms", "value": phones[key]}]
            await db["Organization"].update_one({"_id": org["_id"]}, {"$set": {"resource.telecom": telecom}})
        service = referral_tasks.referral_service(db, sms_settings)
        county, jinan = practitioner(rw.county, "county-doctor"), practitioner(rw.jinan, "jinan-doctor")
        resident = patient(organization=rw.county, family="欧阳", given=["秀英"],
                           telecom=[{"system": "phone", "value": "+8613900000003", "use": "mobile"}])
        written, _ = await service.records.create("Patient", resident)
        case = await new_case(db, rw, f"Patient/{written.resource_id}")
        stat, _ = await service.create(county, ReferralBody(**referral_body(rw, case, priority="stat")), None)
        routine, _ = await service.create(county, ReferralBody(**referral_body(rw, case)), None)

        assert await referral_tasks.deliver_outbox(sms_settings) == 2
        # The specialist on call is woken for the stat referral only; the routine one waits for the inbox.
        (requested,) = provider.messages
        assert requested["to"] == [phones["jinan"]]
        assert requested["idempotencyKey"] == stat["outbox"][0]["id"]
        assert "危急转诊待接收" in requested["text"] and f"/referrals/{stat['_id']}" in requested["text"]
        deadline = stat["deadline"].astimezone(CHINA_STANDARD_TIME).strftime("%H:%M")
        assert deadline in requested["text"]  # on the province's clock

        # Received: nobody woken. Accepted: the county doctor who referred is told, not the hospital that accepted.
        await service.act(jinan, stat["_id"], "receive", ActionBody())
        await service.act(jinan, stat["_id"], "accept", ActionBody())
        await service.act(jinan, routine["_id"], "receive", ActionBody())
        assert await referral_tasks.deliver_outbox(sms_settings) == 3
        assert [m["to"] for m in provider.messages[1:]] == [[phones["county"]]]
        assert "已被" in provider.messages[1]["text"] and "接收" in provider.messages[1]["text"]

        # The provider fails: the event stays pending, and goes out once it answers again; the live feed, which it
        # did reach, is not sent it twice.
        provider.failing = True
        feed = ReferralFeed(aioredis.Redis.from_url(settings.redis_url))
        since = await feed.position()
        await service.act(county, stat["_id"], "cancel", ActionBody(reason="patient transferred by ambulance"))
        assert await referral_tasks.deliver_outbox(sms_settings) == 0
        stored = await db["referrals"].find_one({"_id": stat["_id"]})
        assert stored["outbox_pending"] and stored["outbox"][-1]["reached"] == ["feed"]
        assert await referral_tasks.deliver_outbox(sms_settings) == 0  # still failing: still held
        provider.failing = False
        assert await referral_tasks.deliver_outbox(sms_settings) == 1
        assert provider.messages[-1]["to"] == [phones["jinan"]] and "取消" in provider.messages[-1]["text"]
        cancelled = stored["outbox"][-1]["id"]
        on_feed = [e for _, e in await feed.read(since, 100) if e["id"] == cancelled]
        assert len(on_feed) == 1
        await feed.redis.aclose()

        # The patient is told where and when to go, whatever the urgency, on their own mobile.
        start = datetime(2031, 5, 4, 1, 30, tzinfo=UTC)  # 09:30 in Jinan
        await service.act(jinan, routine["_id"], "accept", ActionBody())
        await service.act(jinan, routine["_id"], "schedule", ActionBody(start=start))
        assert await referral_tasks.deliver_outbox(sms_settings) == 2
        (appointment,) = [m for m in provider.messages if m["to"] == ["+8613900000003"]]
        assert "您的转诊已预约" in appointment["text"] and "05月04日 09:30" in appointment["text"]
        assert appointment["idempotencyKey"] == (await db["referrals"].find_one(
            {"_id": routine["_id"]}))["outbox"][-1]["id"] + ":patient"
        assert "/me/referrals" in appointment["text"]

        # A text message may be read on a locked screen: never the patient's name, ID number or the reasons.
        national_id = resident["identifier"][0]["value"]
        for message in provider.messages:
            assert "欧阳" not in message["text"] and national_id not in message["text"]
            assert "ambulance" not in message["text"]


# --- the portals' live feed: server-sent events over a real HTTP server ------------------------------------


@asynccontextmanager
async def serving(app) -> AsyncIterator[str]:
    """The session's app behind a real uvicorn on a free port (its lifespan already runs in the session)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                                           timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


class EventStream:
    """One open /api/referrals/events stream: the referral events read from it so far, and its last position."""

    def __init__(self, lines: AsyncIterator[str]):
        self.lines = lines
        self.events: list[dict[str, Any]] = []
        self.kinds: list[str] = []  # every event's kind, in order: ready, resync, referral
        self.position: str | None = None
        self.positions: list[str] = []  # of the referral events

    async def next_event(self, timeout: float = 30.0) -> tuple[str, dict[str, Any]]:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(": ")
                    fields[key] = value
                    continue
                if "id" in fields:
                    assert re.fullmatch(EVENT_POSITION, fields["id"]), fields
                    self.position = fields["id"]
                kind, data = fields.get("event", "message"), json.loads(fields.get("data", "{}"))
                self.kinds.append(kind)
                if kind == "referral":
                    self.events.append(data)
                    self.positions.append(fields["id"])
                return kind, data
        raise AssertionError("the stream ended")

    async def until(self, referral: str, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            kind, event = await self.next_event(timeout)
            if kind == "referral" and event["referral"] == referral:
                return event

    def referrals(self) -> set[str]:
        return {e["referral"] for e in self.events}


async def open_stream(http: httpx.AsyncClient, token: str, stack, *, query: str = "",
                      headers: dict[str, str] | None = None) -> EventStream:
    """Open the stream and read up to its `ready` event: from then on, whatever is appended reaches it."""
    response = await stack.enter_async_context(http.stream(
        "GET", f"/api/referrals/events{query}", headers={"Authorization": token, **(headers or {})}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = EventStream(response.aiter_lines())
    while (await stream.next_event())[0] != "ready":
        pass
    return stream


async def test_the_event_stream_carries_a_hospital_its_own_events(app, rw, settings):
    from contextlib import AsyncExitStack

    county = await login(app, rw.county_doctor)
    tokens = {}
    for key, user in (("jinan", rw.jinan_specialist), ("qingdao", rw.qingdao_specialist), ("patient", rw.patient)):
        client = await login(app, user)
        tokens[key] = client.headers["Authorization"]
        await client.aclose()
    try:
        async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(
                10.0, read=30.0)) as http, AsyncExitStack() as stack:
            jinan = await open_stream(http, tokens["jinan"], stack)
            qingdao = await open_stream(http, tokens["qingdao"], stack)
            patient = await open_stream(http, tokens["patient"], stack)

            async def refer(**overrides) -> str:
                case = await new_case(app.state.db, rw, overrides.pop("patient", None))
                response = await county.post("/api/referrals", json=referral_body(rw, case, **overrides))
                assert response.status_code == 201, response.text
                # The worker delivers it when one runs; delivering here too is what at-least-once allows.
                await referral_tasks.deliver_outbox(settings)
                return response.json()["id"]

            to_jinan = await refer(patient=rw.patient.fhir_user)
            to_qingdao = await refer(target=rw.qingdao)
            event = await jinan.until(to_jinan)
            assert event["type"] == "requested" and rw.jinan in event["to"]
            assert (await qingdao.until(to_qingdao))["to"] == [rw.qingdao]
            assert (await patient.until(to_jinan))["patient"] == rw.patient.fhir_user
            again_jinan = await refer()
            await jinan.until(again_jinan)
            assert to_qingdao not in jinan.referrals()  # each hospital hears only of its own referrals
            assert to_jinan not in qingdao.referrals()
            assert to_qingdao not in patient.referrals()
    finally:
        await county.aclose()


def _position(position: str) -> tuple[int, int]:
    milliseconds, sequence = position.split("-")
    return int(milliseconds), int(sequence)


async def test_a_listener_that_comes_back_hears_what_it_missed_from_where_it_left(app, rw, settings):
    """A specialist's inbox whose connection dropped: on its return (the browser sends Last-Event-ID, the portal's
    own reconnect sends ?after=) it hears the referrals sent while it was away, taken up where it left off."""
    from contextlib import AsyncExitStack

    county, jinan_client = await login(app, rw.county_doctor), await login(app, rw.jinan_specialist)
    token = jinan_client.headers["Authorization"]
    await jinan_client.aclose()

    async def refer() -> str:
        response = await county.post("/api/referrals", json=referral_body(rw, await new_case(app.state.db, rw)))
        assert response.status_code == 201, response.text
        await referral_tasks.deliver_outbox(settings)
        return response.json()["id"]

    try:
        async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(
                10.0, read=30.0)) as http:
            async with AsyncExitStack() as stack:
                first = await open_stream(http, token, stack)
                heard_before = await refer()
                await first.until(heard_before)
                left_at = first.position
            missed = [await refer(), await refer()]  # while nobody listened
            for how in ({"headers": {"Last-Event-ID": left_at}}, {"query": f"?after={left_at}"}):
                async with AsyncExitStack() as stack:
                    back = await open_stream(http, token, stack, **how)
                    assert back.kinds == ["ready"], how  # no resync: all of the gap is still kept
                    await back.until(missed[0])  # in the order they were sent
                    await back.until(missed[1])
                    assert left_at not in back.positions  # taken up after where it left, not from the start
                    assert all(_position(p) > _position(left_at) for p in back.positions), how
    finally:
        await county.aclose()


async def test_a_listener_back_after_its_gap_was_trimmed_is_told_to_look_again(app, rw, settings):
    """When what came after the listener's position is no longer kept, the stream says `resync` (the page looks
    again) and carries on from now, instead of pretending nothing happened."""
    from contextlib import AsyncExitStack

    county, jinan_client = await login(app, rw.county_doctor), await login(app, rw.jinan_specialist)
    token = jinan_client.headers["Authorization"]
    await jinan_client.aclose()
    feed = ReferralFeed(app.state.redis)
    try:
        async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(
                10.0, read=30.0)) as http:
            async with AsyncExitStack() as stack:
                left_at = (await open_stream(http, token, stack)).position
            created = await county.post("/api/referrals", json=referral_body(rw, await new_case(app.state.db, rw)))
            await referral_tasks.deliver_outbox(settings)
            # What the stream's length cap does on a busy day: the oldest entries, the gap's among them, are dropped.
            trimmed_to = await feed.position()
            await app.state.redis.xtrim(EVENTS_STREAM, minid=trimmed_to, approximate=False)
            async with AsyncExitStack() as stack:
                back = await open_stream(http, token, stack, headers={"Last-Event-ID": left_at})
                assert back.kinds == ["resync", "ready"]
                # It carries on from now (the session's worker may have added events since the trim).
                assert _position(trimmed_to) <= _position(back.position) <= _position(await feed.position())
            async with AsyncExitStack() as stack:  # a position still kept is replayed as usual
                kept = await open_stream(http, token, stack, query=f"?after={back.position}")
                assert kept.kinds == ["ready"]
            assert created.status_code == 201
    finally:
        await county.aclose()


@pytest.mark.parametrize("how", [{"headers": {"Last-Event-ID": "yesterday"}}, {"params": {"after": "1-2-3"}},
                                 {"params": {"after": "1" * 30 + "-0"}}])
async def test_a_malformed_position_is_refused_with_a_problem(app, rw, how):
    jinan = await login(app, rw.jinan_specialist)
    try:
        response = await jinan.get("/api/referrals/events", **how)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    finally:
        await jinan.aclose()


async def test_an_open_feed_ends_when_its_user_is_deactivated(app, rw, settings, monkeypatch):
    """Deactivating a user ends their access at once, live feeds included: an open stream stops at its next check
    and a new one is refused."""
    from contextlib import AsyncExitStack

    monkeypatch.setattr(referral_api, "ADMISSION_RECHECK_S", 0.5)  # the check's period, not what it checks
    user = await add_user(app.state.db, "http://testserver/fhir", role="practitioner", login=f"gone{rw.tag}",
                          password=PASSWORD, name="离职 医生", organization=rw.jinan, specialty="cardiology")
    client = await login(app, user)
    token = client.headers["Authorization"]
    try:
        async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(
                10.0, read=30.0)) as http, AsyncExitStack() as stack:
            stream = await open_stream(http, token, stack)
            await app.state.users.change(user.id, {"active": False})
            with pytest.raises(AssertionError, match="the stream ended"):
                await stream.next_event(timeout=20)
            refused = await http.get("/api/referrals/events", headers={"Authorization": token})
            assert refused.status_code == 401
    finally:
        await client.aclose()


async def test_the_feed_ends_cleanly_when_redis_is_away(app, rw):
    """With the feed's store unreachable the stream ends at once, without an error page or a stack trace; the
    browser comes back later with its last id."""
    jinan = await login(app, rw.jinan_specialist)
    nowhere = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    redis, app.state.redis = app.state.redis, nowhere  # a real client, to a port nothing listens on
    try:
        response = await jinan.get("/api/referrals/events", headers={"Last-Event-ID": "1-0"})
        assert response.status_code == 200 and response.text == ""
    finally:
        app.state.redis = redis
        await jinan.aclose()
        await nowhere.aclose()
