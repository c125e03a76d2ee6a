"""The timed loop the benches share: n operations from c workers, bounded in time, latencies kept."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Run:
    operation: str
    path: str  # which side of the comparison, e.g. "api" or "direct"
    concurrency: int
    latencies: list[float]  # seconds, one per completed operation
    wall: float
    errors: int
    first_error: str | None
    unfinished: int = 0  # cancelled in flight when the phase's time was up
    cpu_ms: dict[str, float] = field(default_factory=dict)  # process -> CPU ms per completed operation

    def p(self, q: float) -> float:
        """The q-quantile latency in ms (NaN when nothing finished)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


async def measure(operation: str, path: str, concurrency: int, n: int, phase_seconds: float,
                  op: Callable[[int], Awaitable[None]]) -> Run:
    """Run op(i) for i in 0..n-1 from `concurrency` workers; after phase_seconds whatever is still running
    is cancelled and counted as unfinished, so a slow operation cannot stretch the run."""
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    in_flight = 0

    async def worker() -> None:
        nonlocal errors, first_error, in_flight
        while (i := next(counter)) < n:
            started = time.perf_counter()
            in_flight += 1
            try:
                await op(i)
            except Exception as exc:  # counted and shown, never hidden in a latency
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
                continue
            finally:
                in_flight -= 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=phase_seconds)
    unfinished = in_flight
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = min(time.perf_counter() - started, phase_seconds) if pending else time.perf_counter() - started
    return Run(operation, path, concurrency, latencies, wall, errors, first_error, unfinished)


async def settle(probe: Callable[[], Awaitable[float]], quiet: float, limit: float, pause: float = 0.1) -> None:
    """Wait, for at most `limit` seconds, until `probe()` (seconds) is within 3x its `quiet` value again.

    A phase cut off by its time cancels requests the server and the engine still work through; the next
    phase must not pay for that backlog."""
    until = time.monotonic() + limit
    while time.monotonic() < until:
        try:
            if await asyncio.wait_for(probe(), until - time.monotonic()) < 3 * quiet:
                return
        except (Exception, TimeoutError):
            pass
        await asyncio.sleep(pause)
