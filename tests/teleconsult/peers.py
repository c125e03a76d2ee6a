"""A consult participant as a test drives it: a real aiortc peer with synthetic media, signaling over `websockets`.

Its video stamps a frame number and the sender's mark into the pixels, its audio is a tone of its own pitch,
so a receiver can tell whose media it gets and that frames arrive in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from aiortc import (AudioStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription,
                    VideoStreamTrack)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from qilu.auth import TOKEN_COOKIE

WIDTH, HEIGHT, FPS = 160, 120, 10
BLOCK = 20  # each bit a 20 x 20 block, 8 to a row: the number (2 rows), the mark, a check byte
SAMPLE_RATE = 48000


class StampedVideo(VideoStreamTrack):
    """Grey frames at 10 fps whose top rows spell the frame number, the sender's mark and a check byte."""

    def __init__(self, mark: int):
        super().__init__()
        self.mark = mark
        self.number = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        self.number += 1
        image = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
        rows = (self.number & 0xFF, self.number >> 8 & 0xFF, self.mark, _check(self.number, self.mark))
        for row, byte in enumerate(rows):
            for bit in range(8):
                image[row * BLOCK:(row + 1) * BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if byte >> bit & 1 else 0
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame

    async def next_timestamp(self) -> tuple[int, fractions.Fraction]:
        # VideoStreamTrack's pacing at our own rate.
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += int(90000 / FPS)
            wait = self._start + (self._timestamp / 90000) - time.time()
            await asyncio.sleep(wait)
        else:
            self._start = time.time()
            self._timestamp = 0
        return self._timestamp, fractions.Fraction(1, 90000)


def _check(number: int, mark: int) -> int:
    return (number ^ (number >> 8) ^ mark ^ 0x5A) & 0xFF


def read_stamp(frame: VideoFrame) -> tuple[int, int] | None:
    """(frame number, sender mark) read back from a received frame; None when the check byte disagrees."""
    image = frame.to_ndarray(format="gray")
    if image.shape != (HEIGHT, WIDTH):
        image = frame.reformat(width=WIDTH, height=HEIGHT, format="gray").to_ndarray()
    inset = BLOCK // 4
    rows = [sum(1 << bit for bit in range(8)
                if image[row * BLOCK + inset:(row + 1) * BLOCK - inset,
                         bit * BLOCK + inset:(bit + 1) * BLOCK - inset].mean() > 128) for row in range(4)]
    number, mark = rows[0] | rows[1] << 8, rows[2]
    return (number, mark) if rows[3] == _check(number, mark) else None


class Tone(AudioStreamTrack):
    """A sine tone of its own pitch, 20 ms at a time."""

    def __init__(self, hertz: float):
        super().__init__()
        self.hertz = hertz
        self.sample = 0

    async def recv(self) -> AudioFrame:
        frame = await super().recv()  # the paced silence: keeps AudioStreamTrack's timing and pts
        samples = frame.samples
        t = (np.arange(samples) + self.sample) / SAMPLE_RATE
        self.sample += samples
        tone = (np.sin(2 * np.pi * self.hertz * t) * 8000).astype(np.int16)
        out = AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate, out.pts, out.time_base = SAMPLE_RATE, frame.pts, frame.time_base
        return out


def dominant_hertz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


@dataclass
class Received:
    """What one receiving m-line has delivered."""

    peer: str | None
    kind: str
    stamps: list[tuple[int, int]] = field(default_factory=list)  # (frame number, sender mark)
    audio: list[np.ndarray] = field(default_factory=list)
    unreadable: int = 0
    first_at: float | None = None

    def hertz(self) -> float | None:
        if not self.audio:
            return None
        samples = np.concatenate(self.audio[-40:])
        return dominant_hertz(samples.astype(np.float64), SAMPLE_RATE)


class PeerClosed(Exception):
    """The server closed the signaling connection; `code` and `reason` say why."""

    def __init__(self, code: int | None, reason: str):
        super().__init__(f"closed {code}: {reason}")
        self.code, self.reason = code, reason


class ConsultPeer:
    """One participant: connect, join, answer the server's offers, receive and record what arrives."""

    def __init__(self, base_ws: str, consult_id: str, token: str | None, *, mark: int, hertz: float, name: str = "",
                 auto_answer: bool = True, cookie: str | None = None, origin: str | None = None):
        """With `token`, it is sent as ?token= (any client); with `cookie`, as the portal's session cookie, the way
        a browser's page opens the socket (with its page's `origin`)."""
        self.auto_answer = auto_answer
        self.url = f"{base_ws}/api/consults/{consult_id}/ws" + (f"?token={token}" if token is not None else "")
        self.headers = {"Cookie": f"{TOKEN_COOKIE}={cookie}"} if cookie is not None else {}
        self.origin = origin
        self.mark, self.hertz, self.name = mark, hertz, name or f"peer{mark}"
        self.ws: Any = None
        self.pc: RTCPeerConnection | None = None
        self.peer_id: str | None = None
        self.joined: dict[str, Any] | None = None
        self.streams: dict[str, dict[str, Any]] = {}
        self.received: dict[str, Received] = {}  # by mid
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed = False
        self.joined_at = 0.0
        self._tasks: list[asyncio.Task] = []
        self._changed = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, open_timeout=10, max_size=2 ** 20, origin=self.origin,
                                           additional_headers=self.headers)
        self._tasks.append(asyncio.ensure_future(self._read()))

    async def join(self, consent: bool = True, *, timeout: float = 15) -> dict[str, Any]:
        if self.ws is None:
            await self.connect()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.pc.addTrack(Tone(self.hertz))
        self.pc.addTrack(StampedVideo(self.mark))

        @self.pc.on("track")
        def on_track(track) -> None:
            transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
            self._tasks.append(asyncio.ensure_future(self._consume(transceiver.mid, track)))

        self.joined_at = time.monotonic()
        await self.send({"type": "join", "consent": consent})
        self.joined = await self.wait_for(lambda m: m["type"] == "joined", timeout=timeout)
        self.peer_id = self.joined["peer"]
        return self.joined

    async def send(self, message: dict[str, Any] | str) -> None:
        try:
            await self.ws.send(message if isinstance(message, str) else json.dumps(message))
        except websockets.ConnectionClosed:
            await self.until(lambda: self.closed, timeout=5, what="the close")
            raise PeerClosed(self.close_code, self.close_reason) from None

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                message = json.loads(text)
                self.messages.append(message)
                if message["type"] == "offer" and self.auto_answer:
                    await self._answer(message)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self._changed.set()

    async def _answer(self, offer: dict[str, Any]) -> None:
        self.streams.update(offer.get("streams") or {})
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})

    async def _consume(self, mid: str, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            stream = self.streams.get(mid) or {}
            received = self.received.get(mid)
            if received is None or received.peer != stream.get("peer"):
                received = self.received[mid] = Received(stream.get("peer"), track.kind)
            if received.first_at is None:
                received.first_at = time.monotonic()
            if track.kind == "video":
                stamp = read_stamp(frame)
                if stamp is None:
                    received.unreadable += 1
                else:
                    received.stamps.append(stamp)
            else:
                received.audio.append(frame.to_ndarray().reshape(-1)[::2])  # left channel
                del received.audio[:-100]
            self._changed.set()

    async def wait_for(self, predicate, *, timeout: float = 15) -> Any:
        """The first message (or state, when `predicate` takes none) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                with contextlib.suppress(KeyError, TypeError):
                    if predicate(message):
                        return message
            if self.closed or time.monotonic() > deadline:
                raise PeerClosed(self.close_code, self.close_reason) if self.closed else TimeoutError(
                    f"{self.name}: nothing matched; messages: {self.messages[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    async def until(self, condition, *, timeout: float = 20, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what or 'condition'} not met; received "
                                   f"{self.summary()}, close {self.close_code}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    def video_from(self, peer_id: str, mark: int | None = None) -> list[int]:
        """Frame numbers received on the m-lines that carry `peer_id` (with `mark`: only that sender's frames;
        an m-line reused for a new participant may still deliver the last frame or two of the one before)."""
        return [n for r in self.received.values() if r.kind == "video" and r.peer == peer_id
                for n, m in r.stamps if mark is None or m == mark]

    def marks_from(self, peer_id: str) -> list[int]:
        return [m for r in self.received.values() if r.kind == "video" and r.peer == peer_id for _, m in r.stamps]

    def audio_from(self, peer_id: str) -> Received | None:
        found = [r for r in self.received.values() if r.kind == "audio" and r.peer == peer_id and r.audio]
        return found[-1] if found else None

    def summary(self) -> dict[str, Any]:
        return {mid: (r.peer, r.kind, len(r.stamps) or len(r.audio)) for mid, r in self.received.items()}

    async def drop(self) -> None:
        """The signaling connection breaks (no `leave`); the peer connection is left to the server to notice."""
        await self.ws.close()
        await self.until(lambda: self.closed, timeout=5, what="the drop")

    async def leave(self) -> None:
        with contextlib.suppress(PeerClosed):
            await self.send({"type": "leave"})
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
