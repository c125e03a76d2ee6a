"""The `qilu services` commands on the real engines, and a Celery task through a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from qilu.services import SQLITE_EDITS, EngineError, change_the_sqlite_backend

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


def test_the_engine_finds_a_document_by_id_through_its_index_even_beside_other_conditions(settings):
    """The FerretDB `qilu services` builds looks `{_id, vid}` (every versioned write's condition) up in the
    `_id` index instead of reading the whole collection; its own explain shows the SQLite plan."""
    with MongoClient(settings.effective_mongodb_url) as client:
        collection = client[settings.mongodb_db]["engine_index_check"]
        collection.insert_many([{"_id": f"doc-{i}", "vid": 1} for i in range(3)])
        plan = client[settings.mongodb_db].command(
            "explain", {"find": collection.name, "filter": {"_id": "doc-1", "vid": 1}})
        found = collection.find_one({"_id": "doc-1", "vid": 1})
        collection.drop()
    if "ferretdbVersion" not in plan.get("serverInfo", {}):
        pytest.skip("the engine is not FerretDB; MongoDB itself uses its _id index")
    assert found == {"_id": "doc-1", "vid": 1}
    assert plan["filterPushdown"] is True
    assert any("USING INDEX" in step and "_id_" in step for step in plan["queryPlanner"]["Plan"]), (
        "the running FerretDB scans for _id: it is not the build `qilu services` makes (restart it with "
        f"`qilu services down && qilu services up`): {plan}")


def test_the_build_refuses_a_ferretdb_source_it_does_not_know(tmp_path):
    """The build changes two known lines; on any other source it stops and says so rather than build blind."""
    for relative, published, _built, _times in SQLITE_EDITS:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(published.replace("Filter", "Filters").replace("columns", "cols"))
    with pytest.raises(EngineError, match="not the one the build changes"):
        change_the_sqlite_backend(tmp_path)
