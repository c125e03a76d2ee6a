"""Recording a consult everyone agreed to: the file, its duration, the worker's DocumentReference, ranged playback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import time

import av

from consult_world import ConsultPeople, hold_consult
from peers import ConsultPeer

RECORD_FOR_S = 5.0


async def test_recording_with_everyones_consent(consult_server, people: ConsultPeople, settings, celery_worker):
    consult = await hold_consult(people, invite_patient=True)
    host = ConsultPeer(consult_server.ws, consult["id"], people.host.token, mark=1, hertz=440.0)
    patient = ConsultPeer(consult_server.ws, consult["id"], people.patient.token, mark=2, hertz=660.0)
    try:
        started = time.monotonic()
        joined = await host.join(consent=True)
        assert joined["recording"] is True  # the host is everyone present, and agreed
        # The file starts when the join is answered; the handshake before it can be slow on a busy machine.
        recording_since = time.monotonic()
        await patient.join(consent=True)
        await host.wait_for(lambda m: m["type"] == "peers" and len(m["peers"]) == 2 and m["recording"])
        await host.until(lambda: len(host.video_from(patient.peer_id)) >= 5, what="the patient's video")
        await asyncio.sleep(max(0.0, RECORD_FOR_S - (time.monotonic() - started)))
        ended = await people.host.http.post(f"/api/consults/{consult['id']}/end")
        recorded = time.monotonic() - recording_since
        assert ended.status_code == 200, ended.text
        await host.wait_for(lambda m: m["type"] == "ended")
        await host.until(lambda: host.closed, what="the close")
        assert host.close_code == 1000, host.close_reason
    finally:
        await host.close()
        await patient.close()

    # ending closed every connection and finished the file
    report = (await people.host.http.get(f"/api/consults/{consult['id']}/diagnostics")).json()
    assert report["room"] is None and report["peerConnectionsOpen"] == 0 and report["hubTasks"] == 0, report
    assert report["process"]["openRecordings"] == 0 and report["process"]["udpSockets"] == 0, report

    view = ended.json()
    assert view["status"] == "ended" and view["recording"]["status"] in ("stopped", "processed")
    # the server's data directory is the tests' own, on this machine
    path = settings.path(settings.consult_recording_dir, consult["id"], "recording.mp4")
    assert path.is_file() and path.stat().st_size > 10_000
    with av.open(str(path)) as container:
        duration = container.duration / av.time_base
        assert {s.type for s in container.streams} == {"audio", "video"}
    assert abs(duration - recorded) <= 0.1 * recorded, (duration, recorded)

    # the worker post-processes it: facts on the room, a DocumentReference on the patient's record
    deadline = time.monotonic() + 60
    while True:
        room = (await people.host.http.get(f"/api/consults/{consult['id']}")).json()
        if room["recording"]["documentReference"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    facts = room["recording"]
    assert facts["status"] == "processed", facts
    content = path.read_bytes()
    assert facts["size"] == len(content) and facts["sha256"] == hashlib.sha256(content).hexdigest()
    assert abs(facts["durationS"] - duration) < 0.05
    document = await people.host.http.get(f"/fhir/{facts['documentReference']}")
    assert document.status_code == 200, document.text
    resource = document.json()
    assert resource["subject"]["reference"] == people.patient.role
    assert resource["context"]["encounter"][0]["reference"] == consult["encounter"]
    video, thumbnail = resource["content"][0]["attachment"], resource["content"][1]["attachment"]
    assert video["url"] == f"{consult_server.base}/api/consults/{consult['id']}/recording"
    assert video["size"] == len(content) and video["contentType"] == "video/mp4"
    assert base64.b64decode(video["hash"]) == hashlib.sha1(content).digest()  # noqa: S324 - FHIR's choice
    assert thumbnail["contentType"] == "image/jpeg" and base64.b64decode(thumbnail["data"])[:2] == b"\xff\xd8"
    assert (path.parent / "thumbnail.jpg").is_file()

    # playback: ranged, for the patient and the host; nobody else learns it exists
    ranged = await people.patient.http.get(video["url"], headers={"Range": "bytes=100-1123"})
    assert ranged.status_code == 206, ranged.text
    assert ranged.headers["content-range"] == f"bytes 100-1123/{len(content)}"
    assert ranged.content == content[100:1124]
    whole = await people.host.http.get(video["url"])
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["accept-ranges"] == "bytes"
    assert (await people.outsider.http.get(video["url"])).status_code == 404
    shutil.rmtree(path.parent)  # the test's recording, in the data directory the tests share

