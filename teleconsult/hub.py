"""The media hub: one RTCPeerConnection per participant, each participant's audio and video relayed to the others.

`MediaHub` is all a consult room asks of its media server; `AiortcHub` answers it in this process with aiortc
(decode once, `MediaRelay` fan-out, re-encode per receiver). An SFU such as LiveKit or mediasoup would sit
behind the same interface, forwarding packets instead (see the README on several media hosts).

Signaling is server-led: the hub makes every offer (on join, and again when someone's tracks come or go)
and the client answers, so offers never collide. A participant's tracks are relayed once their connection
is up. Leaving closes the participant's connection, which ends their tracks and every relayed copy; the
others' m-lines that carried them go inactive and are reused for the next participant, so a room where
people come and go many times keeps its SDP as small as its largest attendance.
"""

from __future__ import annotations

import abc
import asyncio
import gc
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from aiortc import (RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpTransceiver,
                    RTCSessionDescription)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame, VideoFrame

from teleconsult.recording import RecordingResult, RoomRecording

log = structlog.get_logger("qilu.teleconsult.hub")

Signal = Callable[[dict[str, Any]], Awaitable[None]]
Lost = Callable[[], Awaitable[None]]


class SignalingError(Exception):
    """A client's SDP or candidate that cannot be applied; the participant is disconnected."""


class MediaHub(abc.ABC):
    """What a consult room needs from a media server, whichever one it is."""

    @abc.abstractmethod
    async def admit(self, room_id: str, peer_id: str, signal: Signal, lost: Lost) -> None:
        """Open the participant's connection and send them the first offer through `signal`."""

    @abc.abstractmethod
    async def answer(self, room_id: str, peer_id: str, sdp: str) -> None:
        """Apply the participant's answer to the hub's last offer."""

    @abc.abstractmethod
    async def candidate(self, room_id: str, peer_id: str, candidate: str, sdp_mid: str | None,
                        sdp_mline_index: int | None) -> None:
        """Add a trickled ICE candidate of the participant."""

    @abc.abstractmethod
    async def release(self, room_id: str, peer_id: str) -> None:
        """The participant left (or dropped): close their connection and stop relaying them."""

    @abc.abstractmethod
    async def record(self, room_id: str, path: Path | None, *, paused: bool) -> None:
        """Start recording the room into `path` (once), or pause/resume it."""

    @abc.abstractmethod
    async def close_room(self, room_id: str) -> RecordingResult | None:
        """Close every connection of the room and finish its recording."""

    @abc.abstractmethod
    def diagnostics(self, room_id: str | None = None) -> dict[str, Any]:
        """Counts of what is running, for leak checks and the host's debug view."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close every room (process shutdown)."""


class ForwardedTrack(MediaStreamTrack):
    """What one outgoing m-line sends: the relayed track of whichever participant it carries now.

    aiortc's sender stops for good when its track ends; this track outlives the participants it carries,
    so the m-line (and its sender) can carry the next one. Timestamps run on across a change of source.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self._source: MediaStreamTrack | None = None
        self._attached = asyncio.Event()
        self._offset: int | None = None
        self._last: int | None = None

    def attach(self, source: MediaStreamTrack) -> None:
        self._source, self._offset = source, None
        self._attached.set()

    def detach(self) -> None:
        # The source's own end (its connection closes next) wakes a pending recv; it then waits here.
        self._source = None
        self._attached.clear()

    async def recv(self) -> AudioFrame | VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                await self._attached.wait()
                continue
            try:
                frame = await source.recv()
            except MediaStreamError:
                if self._source is source:
                    self.detach()
                continue
            if self._source is source:
                return self._restamp(frame)

    def _restamp(self, frame: AudioFrame | VideoFrame) -> AudioFrame | VideoFrame:
        if self._offset is None:
            # One frame on: an audio frame's samples, or a 30 fps frame in the 90 kHz video clock.
            step = frame.samples if isinstance(frame, AudioFrame) else 3000
            self._offset = 0 if self._last is None else self._last + step - frame.pts
        self._last = frame.pts + self._offset
        if self._offset == 0:
            return frame
        # The relay hands the same frame to every receiver: restamp a copy, never the original.
        copy = _copy(frame)
        copy.pts, copy.time_base = self._last, frame.time_base
        return copy

    def stop(self) -> None:
        super().stop()
        if self._source is not None:
            self._source.stop()  # leaves the relay
        self.detach()
        self._attached.set()  # a pending recv sees the track has ended


def _copy(frame: AudioFrame | VideoFrame) -> AudioFrame | VideoFrame:
    if isinstance(frame, AudioFrame):
        copy = AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name)
        copy.sample_rate = frame.sample_rate
        return copy
    image = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
    return VideoFrame.from_ndarray(image.to_ndarray(), format="yuv420p")


class _Slot:
    """One outgoing m-line of a participant's connection and the track it sends."""

    def __init__(self, transceiver: RTCRtpTransceiver, track: ForwardedTrack):
        self.transceiver = transceiver
        self.track = track


class _Participant:
    def __init__(self, peer_id: str, pc: RTCPeerConnection, signal: Signal, lost: Lost):
        self.id = peer_id
        self.pc = pc
        self.signal = signal
        self.lost = lost
        self.incoming: dict[str, MediaStreamTrack] = {}  # kind -> what this participant sends
        self.outgoing: dict[tuple[str, str], _Slot] = {}  # (source peer, kind) -> the m-line relaying it
        self.free: dict[str, list[_Slot]] = {"audio": [], "video": []}  # m-lines whose source has left
        self.ended: dict[str, dict[str, Any]] = {}  # mid -> stream whose source has left
        self.lock = asyncio.Lock()
        self.renegotiate = False
        self.connected = False
        self.closed = False
        self.tasks: set[asyncio.Task] = set()
        self.subscriptions: list[MediaStreamTrack] = []

    def streams(self) -> dict[str, dict[str, Any]]:
        """Which participant each of the client's receiving m-lines carries (mid -> peer, kind)."""
        live = {slot.transceiver.mid: {"peer": peer, "kind": kind, "live": True}
                for (peer, kind), slot in self.outgoing.items() if slot.transceiver.mid is not None}
        return {**self.ended, **live}


class _Room:
    def __init__(self) -> None:
        self.participants: dict[str, _Participant] = {}
        self.relay = MediaRelay()
        self.recording: RoomRecording | None = None


class AiortcHub(MediaHub):
    def __init__(self, ice_servers: list[dict[str, Any]], recording_size: tuple[int, int], recording_fps: int):
        self._ice = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                     for s in ice_servers]
        self._recording_size = recording_size
        self._recording_fps = recording_fps
        self._rooms: dict[str, _Room] = {}
        self._tasks: set[asyncio.Task] = set()
        self._connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()

    # --- tasks the hub starts, all of them tracked so none outlives its participant --------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], owner: _Participant | None = None) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        if owner is not None:
            owner.tasks.add(task)
            task.add_done_callback(owner.tasks.discard)
        return task

    # --- joining ---------------------------------------------------------------------------------------

    async def admit(self, room_id: str, peer_id: str, signal: Signal, lost: Lost) -> None:
        room = self._rooms.setdefault(room_id, _Room())
        # One transport for every m-line, so adding a participant's tracks later costs no new ICE.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self._connections.add(pc)
        me = _Participant(peer_id, pc, signal, lost)
        room.participants[peer_id] = me
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        for other in room.participants.values():
            if other is not me and other.connected:
                self._forward(room, other, me)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            me.incoming[track.kind] = track

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected" and not me.connected and not me.closed:
                me.connected = True
                self._fan_out(room, me)
            elif pc.connectionState == "failed" and not me.closed:
                self._spawn(me.lost(), owner=me)

        await self._negotiate(me)

    def _fan_out(self, room: _Room, source: _Participant) -> None:
        """The source's connection is up: relay its tracks to everyone else, and into the recording."""
        for track in source.incoming.values():
            # Keeps the source read while nobody watches it, so its decoded frames never pile up.
            drain = room.relay.subscribe(track, buffered=False)
            source.subscriptions.append(drain)
            self._spawn(_drain(drain), owner=source)
            if room.recording is not None:
                room.recording.add_source(source.id, room.relay.subscribe(track, buffered=track.kind == "audio"))
        for other in room.participants.values():
            if other is not source and not other.closed:
                self._forward(room, source, other)
                self._spawn(self._negotiate(other), owner=other)

    @staticmethod
    def _forward(room: _Room, source: _Participant, to: _Participant) -> None:
        for kind, track in source.incoming.items():
            if (source.id, kind) in to.outgoing:
                continue
            if to.free[kind]:
                slot = to.free[kind].pop()
                to.ended.pop(slot.transceiver.mid, None)
                slot.transceiver.direction = "sendonly"
            else:
                forwarded = ForwardedTrack(kind)
                slot = _Slot(to.pc.addTransceiver(forwarded, direction="sendonly"), forwarded)
            # Video unbuffered: a receiver whose encoder lags gets the newest frame, not a growing queue.
            slot.track.attach(room.relay.subscribe(track, buffered=kind == "audio"))
            to.outgoing[(source.id, kind)] = slot

    async def _negotiate(self, p: _Participant) -> None:
        async with p.lock:
            if p.closed:
                return
            if p.pc.signalingState != "stable":
                p.renegotiate = True  # offer again once the client has answered the offer in flight
                return
            await p.pc.setLocalDescription(await p.pc.createOffer())
            await p.signal({"type": "offer", "sdp": p.pc.localDescription.sdp, "streams": p.streams()})

    # --- the client's side of the negotiation --------------------------------------------------------------

    def _participant(self, room_id: str, peer_id: str) -> _Participant:
        room = self._rooms.get(room_id)
        p = room.participants.get(peer_id) if room else None
        if p is None or p.closed:
            raise SignalingError("you are not connected to this room's media")
        return p

    async def answer(self, room_id: str, peer_id: str, sdp: str) -> None:
        p = self._participant(room_id, peer_id)
        async with p.lock:
            if p.pc.signalingState != "have-local-offer":
                raise SignalingError("no offer of the server is waiting for an answer")
            try:
                await p.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds for a bad SDP; all mean "refused"
                raise SignalingError(f"the answer's SDP cannot be applied: {exc or type(exc).__name__}") from None
            again, p.renegotiate = p.renegotiate, False
        if again:
            await self._negotiate(p)

    async def candidate(self, room_id: str, peer_id: str, candidate: str, sdp_mid: str | None,
                        sdp_mline_index: int | None) -> None:
        p = self._participant(room_id, peer_id)
        text = candidate.strip().removeprefix("a=").removeprefix("candidate:")
        if not text:
            return  # end of candidates
        try:
            parsed = candidate_from_sdp(text)
        except (ValueError, IndexError) as exc:
            raise SignalingError(f"the ICE candidate is malformed: {exc}") from None
        parsed.sdpMid, parsed.sdpMLineIndex = sdp_mid, sdp_mline_index
        if sdp_mid is None and sdp_mline_index is None:
            parsed.sdpMLineIndex = 0  # bundled: every m-line shares the first one's transport
        try:
            await p.pc.addIceCandidate(parsed)
        except Exception as exc:  # noqa: BLE001
            raise SignalingError(f"the ICE candidate cannot be added: {exc or type(exc).__name__}") from None

    # --- leaving ----------------------------------------------------------------------------------------

    async def release(self, room_id: str, peer_id: str) -> None:
        room = self._rooms.get(room_id)
        p = room.participants.pop(peer_id, None) if room else None
        if p is None:
            return
        p.closed = True
        for other in room.participants.values():
            changed = False
            for kind in ("audio", "video"):
                slot = other.outgoing.pop((p.id, kind), None)
                if slot is None:
                    continue
                changed = True
                slot.track.detach()
                slot.transceiver.direction = "inactive"
                if slot.transceiver.mid is not None:
                    other.ended[slot.transceiver.mid] = {"peer": p.id, "kind": kind, "live": False}
                other.free[kind].append(slot)
            if changed:
                self._spawn(self._negotiate(other), owner=other)
        if room.recording is not None:
            room.recording.remove_source(p.id)
        await self._close(p)
        if not room.participants and room.recording is None:
            self._rooms.pop(room_id, None)

    async def _close(self, p: _Participant) -> None:
        p.closed = True
        # Closing ends the participant's incoming tracks, and with them every relayed copy and its sender.
        await p.pc.close()
        for track in p.subscriptions:
            track.stop()
        current = asyncio.current_task()
        for task in list(p.tasks):
            if task is not current:
                task.cancel()

    async def record(self, room_id: str, path: Path | None, *, paused: bool) -> None:
        room = self._rooms.get(room_id)
        if room is None or room.recording is None:
            if path is None:
                return
            room = self._rooms.setdefault(room_id, _Room())
            width, height = self._recording_size
            room.recording = RoomRecording(path, width, height, self._recording_fps)
            for p in room.participants.values():
                if p.connected:
                    for track in p.incoming.values():
                        room.recording.add_source(p.id, room.relay.subscribe(track, buffered=track.kind == "audio"))
            await room.recording.start()
        room.recording.set_paused(paused)

    async def close_room(self, room_id: str) -> RecordingResult | None:
        room = self._rooms.pop(room_id, None)
        if room is None:
            return None
        result = await room.recording.stop() if room.recording is not None else None
        participants = list(room.participants.values())
        room.participants.clear()
        for p in participants:
            await self._close(p)
        return result

    async def stop(self) -> None:
        for room_id in list(self._rooms):
            await self.close_room(room_id)
        for task in list(self._tasks):
            task.cancel()

    # --- diagnostics --------------------------------------------------------------------------------------

    def diagnostics(self, room_id: str | None = None) -> dict[str, Any]:
        gc.collect()  # so connections nobody holds any more are not counted as alive
        report: dict[str, Any] = {
            "rooms": len(self._rooms),
            "participants": sum(len(r.participants) for r in self._rooms.values()),
            "peerConnectionsOpen": sum(1 for pc in self._connections if pc.connectionState != "closed"),
            "peerConnectionsAlive": len(self._connections),
            "hubTasks": sum(1 for t in self._tasks if not t.done()),
            "recordings": sum(1 for r in self._rooms.values() if r.recording is not None),
            "process": process_counts(),
        }
        room = self._rooms.get(room_id) if room_id else None
        if room_id is not None:
            report["room"] = None if room is None else {
                "participants": [{"peer": p.id, "connection": p.pc.connectionState, "sending": sorted(p.incoming),
                                  "receiving": len(p.outgoing), "mlines": len(p.pc.getTransceivers()),
                                  "tasks": len(p.tasks)}
                                 for p in room.participants.values()],
                "recording": None if room.recording is None else {
                    "paused": room.recording.timeline.paused, "seconds": round(room.recording.timeline.now(), 2),
                    "feeds": room.recording.tasks},
            }
        return report


async def _drain(track: MediaStreamTrack) -> None:
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("media task failed", error=repr(task.exception()))


def process_counts() -> dict[str, int]:
    """What media work leaves behind when it leaks: tasks of aiortc/aioice, UDP sockets, decoder threads."""
    media_tasks = 0
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code else ""
        if any(part in filename for part in ("aiortc", "aioice", "teleconsult")):
            media_tasks += 1
    udp_inodes: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as file:
                udp_inodes |= {line.split()[9] for line in file.readlines()[1:]}
        except OSError:
            pass
    udp_sockets = open_files = 0
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in udp_inodes:
                udp_sockets += 1
            elif target.endswith(".mp4"):
                open_files += 1
    except OSError:
        pass
    decoders = sum(1 for t in threading.enumerate() if t.name.endswith("-decoder"))
    return {"mediaTasks": media_tasks, "udpSockets": udp_sockets, "openRecordings": open_files,
            "decoderThreads": decoders}
