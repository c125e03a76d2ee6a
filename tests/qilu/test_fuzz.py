"""Fuzzing: schemathesis over the app's own /openapi.json as a logged-in practitioner, and FHIR-specific bad inputs.

Run alone with `./scripts/test tests/qilu/test_fuzz.py -s` to see the summary lines.
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from logins import login
from qilu.accounts import add_user
from qilu.denials import DenialGuard
from sample_records import PASSWORD

# Examples per operation and generation mode (valid data, then data that breaks the schema). With about 50
# operations this is some 700 requests, which with generation keeps the file near two minutes on a slow 2-core box.
MAX_EXAMPLES = 30

# Operations the fuzzer leaves alone, each for a reason:
SKIPPED = {
    # Server-sent events: the live feed never ends, so a request would wait for the stream instead of an answer
    # (the feed's own tests read it event by event).
    "GET /api/referrals/events",
}
# Not skipped, because they cannot break the fuzzing practitioner's session: password resets and account
# disabling (`/api/users/...`) are an administrator's and answer this caller 403; `/api/auth/token` only ever sees
# generated logins, never this practitioner's. The consult WebSocket and the pages are not in the OpenAPI document.


@pytest.fixture(scope="module")
async def fuzzer(app, world) -> httpx.AsyncClient:
    """A practitioner of its own, so that what the fuzz starts (bulk exports, lock-outs, denial counts) touches no
    other test's user; its client returns the app's 500 responses instead of raising them."""
    user = await add_user(app.state.db, "http://testserver/fhir", role="practitioner",
                          login=f"FUZ{uuid.uuid4().hex[:8]}", password=PASSWORD, name="模糊测试医生",
                          organization=world.home)
    http = await login(app, user, raise_app_exceptions=False)
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture
def many_denials_allowed(app):
    """Most fuzzed requests name ids that do not exist and are refused (404); the denial guard would hold the
    fuzzer back with 429 after QILU_DENIAL_BURST of them, so for this test it allows a million a minute."""
    saved = app.state.denials
    app.state.denials = DenialGuard(app.state.metrics, 1_000_000)
    try:
        yield
    finally:
        app.state.denials = saved


def _narrowed(document: dict[str, Any], resource_types: list[str]) -> dict[str, Any]:
    """The OpenAPI document with `resource_type` path parameters limited to the served types, so that valid
    examples reach the record instead of stopping at "unknown resource type" (negative ones still try others)."""
    document = copy.deepcopy(document)
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "resource_type":
                    parameter["schema"] = {"type": "string", "enum": resource_types}
    return document


def _can_be_negated(operation) -> bool:
    """Whether schema-breaking data exists for it: any string is a valid path segment, so an operation with only
    string path parameters has none (hypothesis would search for it in vain)."""
    definition = operation.definition.raw
    if "requestBody" in definition:
        return True
    return any(p["in"] != "path" or p.get("schema", {}).get("type") != "string"
               for p in definition.get("parameters", []))


def _draw(operation, mode: GenerationMode) -> list[schemathesis.Case]:
    """Up to MAX_EXAMPLES cases, the same ones on every run (derandomized, no example database)."""
    drawn: list[schemathesis.Case] = []

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case):
        drawn.append(case)

    try:
        collect()
    except Unsatisfiable:
        pass
    return drawn


def _request(case: schemathesis.Case) -> dict[str, Any]:
    """The case as keyword arguments of httpx's `request` (schemathesis serializes for `requests`)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    kwargs.pop("cookies", None)  # the API declares none
    data = kwargs.pop("data", None)
    if isinstance(data, (bytes, str)):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    if "files" in kwargs and not kwargs["files"]:
        kwargs.pop("files")
    return kwargs


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzzer, many_denials_allowed, capsys):
    document = (await fuzzer.get("/openapi.json")).json()
    served = [r["type"] for r in (await fuzzer.get("/fhir/metadata")).json()["rest"][0]["resource"]]
    schema = schemathesis.openapi.from_dict(_narrowed(document, served))
    operations = examples = server_errors = 0
    statuses: Counter[int] = Counter()
    problems: dict[tuple[str, str], str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in SKIPPED:
            continue
        operations += 1
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if _can_be_negated(operation) else [])
        for mode in modes:
            for case in _draw(operation, mode):
                response = await fuzzer.request(**_request(case))
                examples += 1
                statuses[response.status_code] += 1
                server_errors += response.status_code >= 500
                try:
                    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                except FailureGroup as group:
                    for failure in group.exceptions:
                        key = (operation.label, failure.title)
                        problems.setdefault(key, f"{response.status_code} {failure.message[:300]} <- "
                                                 f"{case.as_curl_command()[:300]}")
    with capsys.disabled():
        print(f"\nfuzz: {operations} operations, {examples} examples, {server_errors} 5xx, "
              f"{len(problems)} distinct failures; statuses {dict(sorted(statuses.items()))}")
    report = "\n".join(f"{label}: {title}: {detail}" for (label, title), detail in sorted(problems.items()))
    assert server_errors == 0 and not problems, report
