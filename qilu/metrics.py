"""Prometheus metrics of the API process: request counts and latency per route template, refused accesses."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class RequestMetrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qilu_http_requests", "HTTP requests handled",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("qilu_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

        self.engine_commands = Histogram("qilu_engine_commands_per_request",
                                         "Database commands one HTTP request sent (the audit insert, shared "
                                         "between concurrent requests, counts for the one that sent it)",
                                         ["method", "route"], registry=self.registry,
                                         buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100))
        self.denials = Counter("qilu_access_denied", "Accesses refused by the access policy (or by role)",
                               ["interaction", "role"], registry=self.registry)
        self.denial_bursts = Counter("qilu_access_denial_bursts", "Callers held back after a burst of refusals",
                                     ["role"], registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float, engine_commands: int) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        self.engine_commands.labels(method, route).observe(engine_commands)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
