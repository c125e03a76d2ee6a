"""The `qilu services` commands on the real engines, and a Celery task through a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _qilu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qilu", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_services_up_twice_is_a_no_op_the_second_time():
    first = _qilu("services", "up")
    assert first.returncode == 0, first.stderr
    second = _qilu("services", "up")
    assert second.returncode == 0, second.stderr
    assert "mongodb: FerretDB already running" in second.stdout
    assert "redis: Redis already running" in second.stdout


def test_services_status_reports_both_engines():
    status = _qilu("services", "status", "--json")
    assert status.returncode == 0, status.stderr
    engines = {engine["name"]: engine for engine in json.loads(status.stdout)}
    assert set(engines) == {"mongodb", "redis"}
    assert engines["mongodb"]["answers"] and engines["redis"]["answers"]


def test_cli_lists_its_commands():
    help_text = _qilu("--help").stdout
    for command in ("serve", "worker", "services", "demo"):
        assert command in help_text


def test_ping_task_round_trips_through_a_real_worker(celery_worker):
    from workers.tasks import ping

    result = ping.delay("hello").get(timeout=30)
    assert result["pong"] == "hello"
    assert result["hostname"]  # answered by a worker, not run in this process
