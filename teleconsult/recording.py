"""Recording a consult: every participant's video tiled and audio summed into one MP4, and its post-processing.

aiortc's MediaRecorder writes one stream per track and cannot take a track added after it has started, while
participants come and go; so two mixing tracks of our own (one video grid, one audio sum) are what it
records. The recording's clock stands still while it is paused (someone present has not consented, or the
room is empty), so the file holds exactly the consented time.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_PTIME = 0.02
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_PTIME)
# Audio kept per participant ahead of the mix; more is dropped, so a slow clock never builds up delay.
AUDIO_BACKLOG = AUDIO_SAMPLES * 10 * 2


class Timeline:
    """Seconds recorded so far; it stands still while the recording is paused."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._paused_at: float | None = time.monotonic()
        self._paused_total = 0.0
        self.running = asyncio.Event()

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()
            self.running.clear()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None
            self.running.set()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def now(self) -> float:
        end = self._paused_at if self._paused_at is not None else time.monotonic()
        return end - self._started - self._paused_total

    async def until(self, seconds: float) -> None:
        while True:
            await self.running.wait()
            delay = seconds - self.now()
            if delay <= 0:
                return
            await asyncio.sleep(delay)


class VideoGrid(MediaStreamTrack):
    """The latest frame of every participant, tiled into one picture at a fixed size and rate."""

    kind = "video"

    def __init__(self, timeline: Timeline, width: int, height: int, fps: int):
        super().__init__()
        self.timeline, self.width, self.height, self.fps = timeline, width, height, fps
        self.latest: dict[str, VideoFrame | None] = {}
        self.started = asyncio.Event()
        self._index = -1

    async def recv(self) -> VideoFrame:
        self._index += 1
        await self.timeline.until(self._index / self.fps)
        # Behind (a busy CPU): skip the frames whose time has passed instead of falling further behind.
        self._index = max(self._index, int(self.timeline.now() * self.fps))
        frame = VideoFrame.from_ndarray(self._tile([f for f in self.latest.values() if f is not None]),
                                        format="rgb24")
        frame.pts = self._index * (VIDEO_CLOCK // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.started.set()
        return frame

    def _tile(self, frames: list[VideoFrame]) -> np.ndarray:
        canvas = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        if not frames:
            return canvas
        columns = math.ceil(math.sqrt(len(frames)))
        rows = math.ceil(len(frames) / columns)
        tile_w, tile_h = self.width // columns // 2 * 2, self.height // rows // 2 * 2
        for i, frame in enumerate(frames):
            y, x = (i // columns) * tile_h, (i % columns) * tile_w
            canvas[y:y + tile_h, x:x + tile_w] = frame.reformat(width=tile_w, height=tile_h,
                                                                format="rgb24").to_ndarray()
        return canvas


class AudioMix(MediaStreamTrack):
    """Every participant's audio summed, 20 ms at a time, as 48 kHz stereo."""

    kind = "audio"

    def __init__(self, timeline: Timeline, video: VideoGrid):
        super().__init__()
        self.timeline = timeline
        self.video = video
        self.buffers: dict[str, np.ndarray] = {}
        self._index = 0

    def feed(self, source: str, samples: np.ndarray) -> None:
        buffer = np.concatenate([self.buffers.get(source, np.zeros(0, np.int16)), samples])
        self.buffers[source] = buffer[-AUDIO_BACKLOG:]

    async def recv(self) -> AudioFrame:
        # The recorder sizes the video stream from its first frame and writes the file's header at the first
        # packet of any stream: the first packet must be video, or the file has no video stream.
        await self.video.started.wait()
        self._index += 1
        await self.timeline.until(self._index * AUDIO_PTIME)
        self._index = max(self._index, int(self.timeline.now() / AUDIO_PTIME))
        mixed = np.zeros(AUDIO_SAMPLES * 2, np.int32)
        for source, buffer in self.buffers.items():
            chunk = buffer[:AUDIO_SAMPLES * 2]
            mixed[:len(chunk)] += chunk
            self.buffers[source] = buffer[len(chunk):]
        frame = AudioFrame.from_ndarray(np.clip(mixed, -32768, 32767).astype(np.int16).reshape(1, -1),
                                        format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = (self._index - 1) * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


@dataclass
class RecordingResult:
    path: Path
    seconds: float  # time recorded (pauses excluded)


class RoomRecording:
    """One consult's recording: mixing tracks fed from relayed tracks, written by aiortc's MediaRecorder."""

    def __init__(self, path: Path, width: int, height: int, fps: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.timeline = Timeline()
        self.video = VideoGrid(self.timeline, width, height, fps)
        self.audio = AudioMix(self.timeline, self.video)
        self.recorder = MediaRecorder(str(path), format="mp4")
        self.recorder.addTrack(self.audio)
        self.recorder.addTrack(self.video)
        self.feeds: dict[tuple[str, str], tuple[MediaStreamTrack, asyncio.Task]] = {}
        self._started = False

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.recorder.start()

    def set_paused(self, paused: bool) -> None:
        self.timeline.pause() if paused else self.timeline.resume()

    def add_source(self, peer: str, track: MediaStreamTrack) -> None:
        """`track` is this recording's own relay subscription to one of the participant's tracks."""
        key = (peer, track.kind)
        if key in self.feeds:
            track.stop()
            return
        if track.kind == "video":
            self.video.latest[peer] = None
        task = asyncio.ensure_future(self._feed(peer, track))
        self.feeds[key] = (track, task)

    def remove_source(self, peer: str) -> None:
        for kind in ("audio", "video"):
            feed = self.feeds.pop((peer, kind), None)
            if feed is not None:
                feed[1].cancel()
                feed[0].stop()  # leaves the relay at once, so no frame is queued for it any more
        self.video.latest.pop(peer, None)
        self.audio.buffers.pop(peer, None)

    async def _feed(self, peer: str, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE) if track.kind == "audio" \
            else None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if resampler is None:
                self.video.latest[peer] = frame
            else:
                for chunk in resampler.resample(frame):
                    self.audio.feed(peer, chunk.to_ndarray().reshape(-1))

    @property
    def tasks(self) -> int:
        return sum(1 for _, task in self.feeds.values() if not task.done())

    async def stop(self) -> RecordingResult | None:
        """Finish the file; None when nothing was recorded (it never ran unpaused), so there is no file."""
        for peer, _ in list(self.feeds):
            self.remove_source(peer)
        seconds = self.timeline.now()
        await self.recorder.stop()
        self.audio.stop()
        self.video.stop()
        return RecordingResult(self.path, seconds) if self.path.is_file() else None


# --- post-processing (run by a worker) --------------------------------------------------------------------

def describe_recording(path: Path) -> dict[str, Any]:
    """Duration (PyAV), size, SHA-256 (and the SHA-1 FHIR's Attachment.hash wants) and a JPEG thumbnail."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()  # noqa: S324 - FHIR R4 Attachment.hash is defined as SHA-1
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    with av.open(str(path)) as container:
        duration = container.duration / av.time_base if container.duration else _stream_duration(container)
        thumbnail = _first_frame_jpeg(container)
    return {"size": path.stat().st_size, "sha256": sha256.hexdigest(),
            "sha1_base64": base64.b64encode(sha1.digest()).decode(), "duration_s": round(duration, 3),
            "thumbnail": thumbnail}


def _stream_duration(container: av.container.InputContainer) -> float:
    return max((float(s.duration * s.time_base) for s in container.streams if s.duration), default=0.0)


def _first_frame_jpeg(container: av.container.InputContainer, look_at: int = 50) -> bytes | None:
    """The first frame that shows something, as JPEG (the very first is black if no video had arrived yet)."""
    if not container.streams.video:
        return None
    container.seek(0)
    chosen = None
    for index, frame in enumerate(container.decode(video=0)):
        chosen = chosen or frame
        if frame.to_ndarray(format="gray").std() > 2:
            chosen = frame
            break
        if index >= look_at:
            break
    if chosen is None:
        return None
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = chosen.width // 2 * 2, chosen.height // 2 * 2
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 25)
    image = chosen.reformat(width=encoder.width, height=encoder.height, format="yuvj420p")
    image.pts = 0
    return b"".join(bytes(packet) for packet in encoder.encode(image) + encoder.encode(None))
