"""Consult rooms with real aiortc peers through a real server: media relayed to everyone, chat, cleanup, refusals."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from consult_world import GRACE_S, ConsultPeople, ConsultServer, hold_consult
from peers import ConsultPeer, PeerClosed

TONES = {1: 440.0, 2: 660.0, 3: 880.0, 4: 1100.0}


def peer(server: ConsultServer, consult: dict, person, mark: int) -> ConsultPeer:
    return ConsultPeer(server.ws, consult["id"], person.token, mark=mark, hertz=TONES[mark], name=f"peer{mark}")


async def receives_everyone(me: ConsultPeer, others: list[ConsultPeer], *, frames: int = 8) -> None:
    """`me` gets every other peer's video (their own mark, numbers increasing) and their tone."""
    def done() -> bool:
        return all(len(me.video_from(o.peer_id, o.mark)) >= frames and me.audio_from(o.peer_id) is not None
                   and len(me.audio_from(o.peer_id).audio) >= 25 for o in others)

    await me.until(done, timeout=25, what=f"media of {[o.name for o in others]}")
    for other in others:
        numbers = me.video_from(other.peer_id, other.mark)
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), (me.name, other.name, str(numbers))
        # nothing of anybody else, bar a frame or two of whoever the m-line carried before
        strangers = [m for m in me.marks_from(other.peer_id) if m != other.mark]
        assert len(strangers) <= 2, (me.name, other.name, strangers)
        assert abs(me.audio_from(other.peer_id).hertz() - other.hertz) < 30, (me.name, other.name)


async def diagnostics(people: ConsultPeople, consult_id: str) -> dict:
    response = await people.host.http.get(f"/api/consults/{consult_id}/diagnostics")
    assert response.status_code == 200, response.text
    return response.json()


async def test_two_participants_see_and_hear_each_other_and_chat(consult_server, people: ConsultPeople):
    consult = await hold_consult(people)
    host, specialist = peer(consult_server, consult, people.host, 1), peer(consult_server, consult, people.specialist, 2)
    try:
        joined = await host.join(consent=False)
        assert joined["iceServers"] == [] and joined["consult"]["status"] == "live"
        await specialist.join(consent=False)
        await asyncio.gather(receives_everyone(host, [specialist]), receives_everyone(specialist, [host]))
        peers = await host.wait_for(lambda m: m["type"] == "peers" and len(m["peers"]) == 2)
        assert {p["peer"] for p in peers["peers"]} == {host.peer_id, specialist.peer_id}
        assert peers["recording"] is False

        await host.send({"type": "chat", "text": "请看心电图 please look at the ECG"})
        chat = await specialist.wait_for(lambda m: m["type"] == "chat")
        assert chat["text"].startswith("请看心电图") and chat["from"]["peer"] == host.peer_id
        stored = await people.host.http.get(f"/fhir/{chat['communication']}")
        assert stored.status_code == 200, stored.text
        assert stored.json()["encounter"]["reference"] == consult["encounter"]
        assert stored.json()["payload"][0]["contentString"] == chat["text"]

        # a record of the patient the host can read, shared with the room
        share = {"type": "share", "reference": people.patient.role, "note": "the patient"}
        await host.send(share)
        shared = await specialist.wait_for(lambda m: m["type"] == "share")
        assert shared["reference"] == people.patient.role and shared["communication"].startswith("Communication/")
        # one the host cannot read is refused, and the connection stays
        await host.send({**share, "reference": "Observation/not-there"})
        refused = await host.wait_for(lambda m: m["type"] == "error" and m["error"] == "record-not-found")
        assert refused["code"] == 404
    finally:
        await host.leave()
        await specialist.leave()

    # joining was audited on the patient's record
    log = await people.patient.http.get("/api/me/access-log", params={"count": 100})
    assert log.status_code == 200, log.text
    assert any(e["action"] == "consult-join" for e in log.json()["entries"])


async def test_three_participants_leave_rejoin_and_nothing_is_left(consult_server, people: ConsultPeople):
    consult = await hold_consult(people, invite=[people.specialist, people.second_specialist])
    a = peer(consult_server, consult, people.host, 1)
    b = peer(consult_server, consult, people.specialist, 2)
    c = peer(consult_server, consult, people.second_specialist, 3)
    before = (await diagnostics(people, consult["id"]))["process"]
    try:
        for p in (a, b, c):
            await p.join(consent=False)
        await asyncio.gather(receives_everyone(a, [b, c]), receives_everyone(b, [a, c]),
                             receives_everyone(c, [a, b]))
        room = (await diagnostics(people, consult["id"]))["room"]
        assert len(room["participants"]) == 3 and all(p["connection"] == "connected" for p in room["participants"])

        # c's signaling drops (no leave): the server lets c go, the others are offered again, c's streams ended
        await c.drop()
        gone = c.peer_id
        await a.wait_for(lambda m: m["type"] == "peers" and gone not in {p["peer"] for p in m["peers"]})
        await a.until(lambda: any(s["peer"] == gone and not s["live"] for s in a.streams.values()), what="ended")
        counted = len(a.video_from(b.peer_id))
        await a.until(lambda: len(a.video_from(b.peer_id)) > counted + 5, what="b still flowing")

        await c.close()
        # c comes back as a new peer (its video marked anew), and everyone gets everyone again
        c = peer(consult_server, consult, people.second_specialist, 4)
        await c.join(consent=False)
        await asyncio.gather(receives_everyone(a, [b, c]), receives_everyone(c, [a, b]),
                             receives_everyone(b, [a, c]))
        # the m-lines that carried the first c now carry the second: nobody's connection grew
        room = (await diagnostics(people, consult["id"]))["room"]
        assert [p["mlines"] for p in room["participants"]] == [6, 6, 6], room
    finally:
        for p in (a, b, c):
            await p.leave()

    # everyone left: no connection, task, socket, thread or file of the media is left in the server
    await asyncio.sleep(0.5)
    after = await diagnostics(people, consult["id"])
    assert after["room"] is None and after["present"] == 0, after
    assert after["peerConnectionsOpen"] == 0 and after["peerConnectionsAlive"] == 0, after
    assert after["hubTasks"] == 0, after
    process = after["process"]
    assert process["udpSockets"] == before["udpSockets"] == 0, (before, process)
    assert process["decoderThreads"] == 0 and process["openRecordings"] == 0, process
    # the grace timer is the only consult task until the grace period passes; then the room has ended
    await asyncio.sleep(GRACE_S + 1)
    ended = await people.host.http.get(f"/api/consults/{consult['id']}")
    assert ended.json()["status"] == "ended" and ended.json()["endReason"] == "everyone left"
    final = await diagnostics(people, consult["id"])
    assert final["process"]["mediaTasks"] == 0 and final["graceTimers"] == 0, final
    late = peer(consult_server, consult, people.host, 1)
    with pytest.raises(PeerClosed):
        await late.join()
    assert late.close_code == 4409 and late.messages[-1]["error"] == "consult-ended"
    await late.close()


async def test_refusals_are_clean_and_the_room_keeps_working(consult_server, people: ConsultPeople):
    consult = await hold_consult(people, invite=[people.specialist, people.second_specialist])
    host, specialist = peer(consult_server, consult, people.host, 1), peer(consult_server, consult, people.specialist, 2)
    intruders: list[ConsultPeer] = []

    async def refused(person_token: str, first: str | dict | None, code: int, error: str, **options) -> ConsultPeer:
        p = ConsultPeer(consult_server.ws, consult["id"], person_token, mark=3, hertz=880.0, **options)
        intruders.append(p)
        await p.connect()
        with pytest.raises(PeerClosed) as closed:
            if first is None:
                await p.join()
            else:
                await p.send(first)
                await p.wait_for(lambda m: False, timeout=10)
        assert closed.value.code == code, (closed.value.code, closed.value.reason, p.messages)
        assert p.messages[-1]["type"] == "error" and p.messages[-1]["error"] == error, p.messages
        assert p.messages[-1]["message"], p.messages
        return p

    try:
        await host.join(consent=False)
        await specialist.join(consent=False)
        await asyncio.gather(receives_everyone(host, [specialist]), receives_everyone(specialist, [host]))

        await refused("not-a-token", None, 4401, "bad-token")
        # a doctor outside the consult learns nothing of it; its patient, not invited, is told so
        await refused(people.outsider.token, None, 4404, "consult-not-found")
        await refused(people.patient.token, None, 4403, "not-invited")
        # the refused join is in the trail as a failure, naming the room asked for (newest first: the outsider
        # is refused elsewhere in the run too)
        trail = await people.admin.http.get("/fhir/AuditEvent", params={"agent": people.outsider.role,
                                                                         "_sort": "-date", "_count": "50"})
        assert trail.status_code == 200, trail.text
        asked = {entity["what"]["reference"] for e in trail.json().get("entry", []) if e["resource"]["outcome"] != "0"
                 for entity in e["resource"].get("entity", []) if "what" in entity}
        assert f"urn:qilu:request:/api/consults/{consult['id']}/ws" in asked, asked
        second = people.second_specialist.token
        await refused(second, "{not json", 4400, "malformed-message")
        await refused(second, {"type": "join", "consent": "perhaps"}, 4400, "malformed-message")
        await refused(second, json.dumps({"type": "chat", "text": "x" * 70000}), 4413, "message-too-large")
        await refused(second, {"type": "chat", "text": "hello"}, 4400, "join-first")

        # malformed SDP in the answer to the server's offer
        garbage = ConsultPeer(consult_server.ws, consult["id"], second, mark=3, hertz=880.0, auto_answer=False)
        intruders.append(garbage)
        await garbage.join(consent=False)
        await garbage.wait_for(lambda m: m["type"] == "offer")
        await garbage.send({"type": "answer", "sdp": "v=0\r\nthis is not a session description\r\n"})
        with pytest.raises(PeerClosed) as closed:
            await garbage.wait_for(lambda m: False, timeout=10)
        assert closed.value.code == 4400 and garbage.messages[-1]["error"] == "malformed-sdp"

        # a flood: told it is rate limited, then disconnected; the others got only what was let through
        flooder = ConsultPeer(consult_server.ws, consult["id"], second, mark=3, hertz=880.0)
        intruders.append(flooder)
        await flooder.join(consent=False)
        chats_before = sum(1 for m in host.messages if m["type"] == "chat")
        with pytest.raises(PeerClosed) as closed:
            for i in range(300):
                await flooder.send({"type": "chat", "text": f"spam {i}"})
            await flooder.wait_for(lambda m: False, timeout=15)
        assert closed.value.code == 4429, closed.value.reason
        assert any(m["type"] == "error" and m["error"] == "rate-limited" for m in flooder.messages)
        relayed = sum(1 for m in host.messages if m["type"] == "chat") - chats_before
        assert relayed < 150, relayed

        # the room still works for the two who behaved
        await host.wait_for(lambda m: m["type"] == "peers" and len(m["peers"]) == 2
                            and flooder.peer_id not in {p["peer"] for p in m["peers"]})
        counts = len(host.video_from(specialist.peer_id)), len(specialist.video_from(host.peer_id))
        await host.until(lambda: len(host.video_from(specialist.peer_id)) > counts[0] + 10, what="video goes on")
        await specialist.until(lambda: len(specialist.video_from(host.peer_id)) > counts[1] + 10, what="video goes on")
        await host.send({"type": "chat", "text": "still here"})
        await specialist.wait_for(lambda m: m["type"] == "chat" and m["text"] == "still here")
        assert host.close_code is None and specialist.close_code is None
    finally:
        for p in (host, specialist, *intruders):
            await p.close()


async def test_a_room_not_open_yet_is_refused(consult_server, people: ConsultPeople):
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    consult = await hold_consult(people, scheduled=later)
    early = peer(consult_server, consult, people.host, 1)
    with pytest.raises(PeerClosed) as closed:
        await early.join()
    assert closed.value.code == 4409 and early.messages[-1]["error"] == "not-open-yet"
    await early.close()
    assert (await people.host.http.get(f"/api/consults/{consult['id']}")).json()["status"] == "scheduled"


async def test_the_portal_session_cookie_opens_the_socket_from_our_own_pages_only(consult_server,
                                                                                  people: ConsultPeople):
    """A browser page opens the room's socket with its session cookie (no token in the page); a page of another
    site sending the same cookie is refused, and so is a socket with neither cookie nor token."""
    consult = await hold_consult(people)

    def by_cookie(person, mark: int, origin: str | None, cookie: str | None = None) -> ConsultPeer:
        return ConsultPeer(consult_server.ws, consult["id"], None, mark=mark, hertz=TONES[mark], name=f"cookie{mark}",
                           cookie=person.token if cookie is None else cookie, origin=origin)

    async def refused(p: ConsultPeer, code: int, error: str) -> None:
        with pytest.raises(PeerClosed) as closed:
            await p.join()
        assert closed.value.code == code, (closed.value.code, closed.value.reason, p.messages)
        assert p.messages[-1]["error"] == error, p.messages
        await p.close()

    host = by_cookie(people.host, 1, consult_server.base)
    specialist = by_cookie(people.specialist, 2, None)  # no Origin: not a browser, the cookie is its own
    try:
        joined = await host.join(consent=False)
        assert [p["who"] for p in joined["peers"]] == [people.host.role]
        await specialist.join(consent=False)
        await host.wait_for(lambda m: m["type"] == "peers" and {p["who"] for p in m["peers"]} == {
            people.host.role, people.specialist.role})

        await refused(by_cookie(people.second_specialist, 3, "http://elsewhere.example"), 4403, "cross-origin")
        await refused(by_cookie(people.specialist, 3, "http://elsewhere.example"), 4403, "cross-origin")
        await refused(by_cookie(people.host, 3, consult_server.base, cookie="not-a-token"), 4401, "bad-token")
        await refused(ConsultPeer(consult_server.ws, consult["id"], None, mark=3, hertz=TONES[3]), 4401, "bad-token")
        # An outsider's own cookie from our own page is still only theirs: not invited.
        await refused(by_cookie(people.outsider, 3, consult_server.base), 4404, "consult-not-found")
        assert host.close_code is None and specialist.close_code is None
    finally:
        for p in (host, specialist):
            await p.close()
