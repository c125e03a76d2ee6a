"""Consult media through the aiortc hub: join -> first remote frame, and how many 1:1 consults one process relays.

Writes an Organization, two practitioners and a patient into database `qilu_bench_teleconsult` (dropped at
start and end), starts `qilu serve` on a loopback port, and drives it with aiortc peers in this process,
each sending synthetic 640x360 video at 15 fps (a moving gradient, so VP8 has real work) and a tone:

1. join latency: a host stays in a room; a second peer joins and leaves `--joins` times; the time from
   sending `join` to the first decoded video frame of the host, p50/p95.
2. baseline: one bare aiortc loopback call in this process (two RTCPeerConnections sending each other the
   same media, no server): the CPU it uses (cores) and its frame delivery.
3. capacity: n = 1, 2, ... concurrent 1:1 consults (both peers send); for each n, frames delivered over
   `--window` seconds and the server's CPU (cores, from /proc), until more than 5 % of frames are lost.

The clients run in this process on the same machine: their CPU is printed too, and when it, not the
server, is saturated the capacity printed is a lower bound. Bounded in count and time; stops by itself.

    .venv/bin/python bench/teleconsult.py [--joins 20] [--window 8] [--max-consults 6]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import fractions
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import websockets
from aiortc import (AudioStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription,
                    VideoStreamTrack)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from motor.motor_asyncio import AsyncIOMotorClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_server import BenchRun, add_organization, add_person, log_in  # noqa: E402

from fhir_profiles.identifiers import make_national_id  # noqa: E402
from qilu.settings import Settings  # noqa: E402

BENCH_DB = "qilu_bench_teleconsult"
WIDTH, HEIGHT, FPS = 640, 360, 15
MAX_LOSS = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class MovingGradient(VideoStreamTrack):
    """640x360 at 15 fps; counts the frames the encoder pulled."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        ramp = np.tile(np.arange(WIDTH, dtype=np.uint16), (HEIGHT, 1))
        self._ramp = ramp

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += 90000 // FPS
            await asyncio.sleep(self._start + self._timestamp / 90000 - time.time())
        else:
            self._start, self._timestamp = time.time(), 0
        self.sent += 1
        luma = ((self._ramp + self.sent * 4) % 256).astype(np.uint8)
        frame = VideoFrame.from_ndarray(np.stack([luma, luma, luma], axis=2), format="rgb24")
        frame.pts, frame.time_base = self._timestamp, fractions.Fraction(1, 90000)
        return frame


async def _count(track, sink: dict) -> None:
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
        if sink.get("first") is None:
            sink["first"] = time.perf_counter()
        sink["frames"] = sink.get("frames", 0) + 1


def _connection() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


class Peer:
    """A participant: signaling over `websockets`, one RTCPeerConnection, counting the video it receives."""

    def __init__(self, ws_base: str, consult_id: str, token: str):
        self.url = f"{ws_base}/api/consults/{consult_id}/ws?token={token}"
        self.video = MovingGradient()
        self.received: dict = {}
        self.tasks: list[asyncio.Task] = []

    async def join(self) -> None:
        self.ws = await websockets.connect(self.url, max_size=2 ** 20)
        self.pc = _connection()
        self.pc.addTrack(AudioStreamTrack())
        self.pc.addTrack(self.video)

        @self.pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                self.tasks.append(asyncio.ensure_future(_count(track, self.received)))

        self.tasks.append(asyncio.ensure_future(self._signaling()))
        await self.ws.send(json.dumps({"type": "join", "consent": False}))

    async def _signaling(self) -> None:
        try:
            async for text in self.ws:
                message = json.loads(text)
                if message["type"] == "offer":
                    await self.pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    await self.ws.send(json.dumps({"type": "answer", "sdp": self.pc.localDescription.sdp}))
                elif message["type"] == "error":
                    print("server error:", message, flush=True)
        except websockets.ConnectionClosed:
            pass

    async def leave(self) -> None:
        try:
            await self.ws.send(json.dumps({"type": "leave"}))
            await self.ws.close()
        except websockets.ConnectionClosed:
            pass
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def join_latency(base: str, headers: dict, users: dict, joins: int) -> list[float]:
    async with httpx.AsyncClient(base_url=base, headers=headers["host"], timeout=30) as http:
        consult = await _consult(http, users)
        host = Peer(base.replace("http", "ws", 1), consult, users["host_token"])
        await host.join()
        latencies = []
        try:
            for _ in range(joins):
                guest = Peer(base.replace("http", "ws", 1), consult, users["guest_token"])
                started = time.perf_counter()
                await guest.join()
                if await _until(lambda: guest.received.get("first") is not None, 15):
                    latencies.append(guest.received["first"] - started)
                await guest.leave()
        finally:
            await host.leave()
            await http.post(f"/api/consults/{consult}/end")
    return latencies


async def bare_call(window: float) -> tuple[float, float]:
    """(cores used, share of frames delivered) of one loopback call: two connections, no server."""
    a, b = _connection(), _connection()
    sources = {"a": MovingGradient(), "b": MovingGradient()}
    received = {"a": {}, "b": {}}
    tasks = []
    for name, pc in (("a", a), ("b", b)):
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(sources[name])

        @pc.on("track")
        def on_track(track, name=name) -> None:
            if track.kind == "video":
                tasks.append(asyncio.ensure_future(_count(track, received[name])))

    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await _until(lambda: all(r.get("first") for r in received.values()), 15)
    await asyncio.sleep(1)
    sent0 = sum(s.sent for s in sources.values())
    got0 = sum(r.get("frames", 0) for r in received.values())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    delivered = (sum(r.get("frames", 0) for r in received.values()) - got0) / max(
        1, sum(s.sent for s in sources.values()) - sent0)
    await a.close()
    await b.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cores, delivered


async def consults_at_once(base: str, headers: dict, users: dict, n: int, window: float, server_pid: int
                           ) -> tuple[float, float, float]:
    """(share of frames lost, server cores, this process's cores) with n 1:1 consults running."""
    ws = base.replace("http", "ws", 1)
    async with httpx.AsyncClient(base_url=base, headers=headers["host"], timeout=30) as http:
        consults = [await _consult(http, users) for _ in range(n)]
        pairs = [(Peer(ws, c, users["host_token"]), Peer(ws, c, users["guest_token"])) for c in consults]
        peers = [p for pair in pairs for p in pair]
        try:
            for p in peers:
                await p.join()
            if not await _until(lambda: all(p.received.get("first") for p in peers), 30):
                return 1.0, float("nan"), float("nan")
            await asyncio.sleep(2)  # past the start, when keyframes and renegotiation settle
            sent0 = [p.video.sent for p in peers]
            got0 = [p.received.get("frames", 0) for p in peers]
            server0, cpu0, wall0 = _cpu_seconds(server_pid), time.process_time(), time.perf_counter()
            await asyncio.sleep(window)
            wall = time.perf_counter() - wall0
            server = (_cpu_seconds(server_pid) - server0) / wall
            here = (time.process_time() - cpu0) / wall
            # each peer receives what its partner sent
            sent = sum(p.video.sent - s for p, s in zip(peers, sent0))
            got = sum(p.received.get("frames", 0) - g for p, g in zip(peers, got0))
            return max(0.0, 1 - got / max(1, sent)), server, here
        finally:
            for p in peers:
                await p.leave()
            for c in consults:
                await http.post(f"/api/consults/{c}/end")


async def _consult(http: httpx.AsyncClient, users: dict) -> str:
    response = await http.post("/api/consults", json={
        "patient": users["patient"], "invite": [users["guest_role"]], "scheduled": datetime.now(UTC).isoformat()})
    if response.status_code != 201:
        raise SystemExit(f"POST /api/consults -> {response.status_code}: {response.text[:200]}")
    return response.json()["id"]


async def set_up(settings: Settings, fhir_base: str) -> dict:
    mongo = AsyncIOMotorClient(settings.effective_mongodb_url, tz_aware=True, uuidRepresentation="standard")
    try:
        db = mongo[BENCH_DB]
        organization = await add_organization(db, fhir_base, "远程会诊中心 (consult bench)")
        host = await add_person(db, fhir_base, "practitioner", "BENCHTC-HOST", "王主治", organization)
        guest = await add_person(db, fhir_base, "practitioner", "BENCHTC-GUEST", "李专家", organization)
        number = make_national_id("370102", dt.date(1950, 1, 1), 7, "male")
        patient = await add_person(db, fhir_base, "patient", number, "张测试", organization)
    finally:
        mongo.close()
    return {"host_login": host.login, "guest_login": guest.login, "guest_role": guest.fhir_user,
            "patient": patient.fhir_user}


async def bench(args: argparse.Namespace, base: str, users: dict, server_pid: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        headers = {"host": await log_in(http, users["host_login"]), "guest": await log_in(http, users["guest_login"])}
    users["host_token"] = headers["host"]["authorization"].removeprefix("Bearer ")
    users["guest_token"] = headers["guest"]["authorization"].removeprefix("Bearer ")

    latencies = await join_latency(base, headers, users, args.joins)
    print(f"join -> first remote video frame over {len(latencies)}/{args.joins} joins: "
          f"p50 {_quantile(latencies, 0.5) * 1000:.0f} ms, p95 {_quantile(latencies, 0.95) * 1000:.0f} ms", flush=True)

    bare_cores, delivered = await bare_call(args.window)
    print(f"bare aiortc loopback call ({WIDTH}x{HEIGHT}@{FPS}, both ways, in this process): "
          f"{bare_cores:.2f} cores, {delivered:.1%} of frames delivered", flush=True)

    print(f"{'consults':>8} {'lost':>7} {'server cores':>13} {'per consult / bare call':>24} {'client cores':>13}")
    capacity = 0
    for n in range(1, args.max_consults + 1):
        lost, server, here = await consults_at_once(base, headers, users, n, args.window, server_pid)
        print(f"{n:>8} {lost:>7.1%} {server:>13.2f} {server / n / bare_cores:>23.2f}x {here:>13.2f}", flush=True)
        if lost > MAX_LOSS:
            break
        capacity = n
    print(f"capacity: {capacity} concurrent 1:1 consults at {WIDTH}x{HEIGHT}@{FPS} with at most "
          f"{MAX_LOSS:.0%} of frames lost ({os.cpu_count()} CPUs shared by server, clients and engines)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--window", type=float, default=8.0, help="seconds each measurement counts frames")
    parser.add_argument("--max-consults", type=int, default=6)
    args = parser.parse_args()
    args.joins = max(1, min(args.joins, 100))
    args.window = max(2.0, min(args.window, 30.0))
    args.max_consults = max(1, min(args.max_consults, 20))

    started = time.monotonic()
    with BenchRun(BENCH_DB) as run:
        users = asyncio.run(set_up(run.settings, run.base + "/fhir"))
        proc = run.serve("bench-teleconsult-server.log", "WARNING")
        print(f"qilu serve on 127.0.0.1:{run.port} (db {BENCH_DB}); {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        asyncio.run(bench(args, run.base, users, proc.pid))
    print(f"took {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
