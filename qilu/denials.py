"""Refused accesses counted per caller: every denial is a metric, and a burst of them holds the caller back (429)."""

from __future__ import annotations

import time

import structlog

from qilu.auth import Caller
from qilu.metrics import RequestMetrics
from qilu.problems import Problem

log = structlog.get_logger("qilu.denials")


class DenialGuard:
    """A bucket of `burst` refusals per caller, refilled over a minute: someone probing other hospitals' ids
    empties it quickly and then gets 429 until it refills, while a clinician's occasional miss never does.
    Kept in the process (no round trip per request); with several API processes each holds back on its own."""

    def __init__(self, metrics: RequestMetrics, burst: int):
        self.metrics = metrics
        self.burst = burst
        self.per_s = burst / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # user id -> (tokens, when last refilled)

    def _tokens(self, user_id: str, now: float) -> float:
        tokens, at = self._buckets.get(user_id, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_s)

    def note(self, caller: Caller | None, interaction: str) -> None:
        """One refused access by this caller."""
        self.metrics.denials.labels(interaction, caller.role if caller else "anonymous").inc()
        if caller is None:
            return
        now = time.monotonic()
        tokens = self._tokens(caller.user_id, now) - 1
        self._buckets[caller.user_id] = (max(tokens, 0.0), now)
        if 0 <= tokens < 1:
            self.metrics.denial_bursts.labels(caller.role).inc()
            # Who, by internal id and hospital only: the log never names the person or their ID number.
            log.warning("burst of refused accesses; caller held back", user=caller.user_id, role=caller.role,
                        organization=caller.organization, interaction=interaction, limit_per_minute=self.burst)
        if len(self._buckets) > 10_000:  # forget callers whose bucket is full again
            self._buckets = {u: v for u, v in self._buckets.items() if self._tokens(u, now) < self.burst}

    def check(self, caller: Caller) -> None:
        """Refuse a caller whose refusals emptied their bucket, until one refusal's worth has refilled."""
        if caller.user_id not in self._buckets:
            return
        tokens = self._tokens(caller.user_id, time.monotonic())
        if tokens < 1:
            wait = max(1, int((1 - tokens) / self.per_s) + 1)
            raise Problem(429, "Too many refused requests",
                          f"Too many of your requests were refused in a short time; try again in {wait} s",
                          headers={"Retry-After": str(wait)})
