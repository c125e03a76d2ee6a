"""The foundation against the real engines: readiness, errors as problem JSON, body limit, metrics, indexes."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from qilu.app import create_app
from qilu.services import start_ferretdb, stop_ferretdb
from qilu.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_healthz_and_readyz_answer_when_engines_are_up(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"mongodb": "up", "redis": "up"}


async def test_startup_creates_search_indexes(app):
    names = {index["name"] async for index in app.state.db["Patient"].list_indexes()}
    assert {"mk_sp_identifier", "mk_sp_name", "mk_compartment", "updated"} <= names
    assert "mk_sp_birthdate" not in names  # dates are stored as ranges, which no index narrows by
    assert not names & {"sp_identifier", "compartment"}  # the earlier layout's are gone
    history = {index["name"] async for index in app.state.db["resource_history"].list_indexes()}
    assert {"mk_instance", "mk_type_compartment"} <= history


async def _readyz(app) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get("/readyz")


async def test_readyz_names_mongodb_while_ferretdb_is_stopped_and_recovers(settings, tmp_path):
    # A FerretDB of its own on another port, so stopping it does not disturb the other tests.
    own = Settings(data_dir=tmp_path, ferretdb_port=_free_port(), mongodb_db="qilu_readyz",
                   redis_url=settings.redis_url, mongodb_timeout_ms=1500)
    await asyncio.to_thread(start_ferretdb, own)
    app = create_app(own)
    try:
        async with app.router.lifespan_context(app):
            assert (await _readyz(app)).status_code == 200
            await asyncio.to_thread(stop_ferretdb, own)
            down = await _readyz(app)
            assert down.status_code == 503
            assert down.headers["content-type"].startswith("application/problem+json")
            assert down.json()["checks"] == {"mongodb": "down", "redis": "up"}
            assert "mongodb" in down.json()["detail"]
            await asyncio.to_thread(start_ferretdb, own)
            for _ in range(40):  # the driver rediscovers the server on its own
                if (await _readyz(app)).status_code == 200:
                    break
                await asyncio.sleep(0.5)
            assert (await _readyz(app)).status_code == 200
    finally:
        await asyncio.to_thread(stop_ferretdb, own)


async def test_unknown_route_is_problem_json_404(client):
    response = await client.get("/api/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404 and body["instance"] == "/api/no-such-thing" and body["title"] == "Not found"


async def test_wrong_method_is_problem_json_405(client):
    response = await client.post("/healthz")
    assert response.status_code == 405
    assert response.json()["status"] == 405


async def test_oversize_declared_body_is_413_and_writes_nothing(doctor_client, settings):
    before = (await doctor_client.get("/fhir/Patient", params={"_summary": "count"})).json()["total"]
    big = b'{"resourceType": "Patient", "text": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    response = await doctor_client.post("/fhir/Patient", content=big, headers={"content-type": "application/fhir+json"})
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["code"] == "too-costly"
    after = (await doctor_client.get("/fhir/Patient", params={"_summary": "count"})).json()["total"]
    assert after == before


async def test_oversize_streamed_body_without_length_is_413(doctor_client, settings):
    chunk = b"x" * (1024 * 1024)

    async def chunks():
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk

    response = await doctor_client.post("/fhir/Patient", content=chunks(),
                                        headers={"content-type": "application/fhir+json"})
    assert response.status_code == 413


async def test_fhir_without_a_token_is_401_with_a_challenge(client):
    response = await client.get("/fhir/Patient", params={"_summary": "count"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_request_id_is_echoed_or_made(client):
    given = await client.get("/healthz", headers={"x-request-id": "abc123"})
    assert given.headers["x-request-id"] == "abc123"
    made = await client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32


async def test_metrics_count_requests_per_route_template(client, doctor_client):
    await doctor_client.get("/fhir/Patient/does-not-exist")
    text = (await client.get("/metrics")).text
    assert 'qilu_http_requests_total{method="GET",route="/fhir/{resource_type}/{resource_id}",status="404"}' in text
    assert "qilu_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("path,body", [
    ("/fhir/Patient", b"{not json"),
    ("/fhir/Patient", b"[1, 2]"),
    ("/fhir/Patient", b'{"resourceType": "Observation"}'),
    ("/fhir", b'{"resourceType": "Bundle", "type": "collection"}'),
    ("/fhir", b"null"),
    ("/fhir/Nonsense", b"{}"),
])
async def test_malformed_input_is_a_clear_4xx_never_500(doctor_client, path, body):
    response = await doctor_client.post(path, content=body, headers={"content-type": "application/fhir+json"})
    assert 400 <= response.status_code < 500
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]
