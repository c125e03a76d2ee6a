"""The FHIR REST API at /fhir: thin routes that turn HTTP into calls of the record service and back."""

from __future__ import annotations

import io
from collections.abc import Awaitable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

import orjson
import segno
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from ehr.access import Reach
from ehr.capability import capability_statement
from ehr.cards import CardRefused, CardService
from ehr.export import NDJSON, UNDER_WAY, parse_export_request
from ehr.models import RecordError
from ehr.search import CONTROL_CHARACTERS
from ehr.service import RecordService, Written
from ehr.store import RecordStore
from fhir_profiles.structure_definitions import load_structure_definitions
from qilu.audit import OUTCOME_MINOR, OUTCOME_SERIOUS, record_access, record_denial
from qilu.auth import Caller, CurrentCaller

T = TypeVar("T")

router = APIRouter(prefix="/fhir", tags=["fhir"])

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def record_error_handler(request: Request, exc: RecordError) -> Response:
    outcome = {"resourceType": "OperationOutcome", "issue": [issue.as_outcome_issue() for issue in exc.issues]}
    return FhirResponse(outcome, status_code=exc.status, headers=exc.headers)


def _fhir_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def record_service(request: Request, caller: Caller) -> RecordService:
    reach = Reach(caller, RecordStore(request.app.state.db))
    return RecordService(reach.store, _fhir_base(request), reach)


async def audited(request: Request, caller: Caller, service: RecordService, interaction: str, work: Awaitable[T],
                  *, attempted: str | None = None, search: bool = False) -> T:
    """Run one interaction and write its AuditEvent before the response leaves, whatever the outcome.

    A refused or failed request is traced with what was asked for, never with what it would have shown.
    """
    try:
        result = await work
    except RecordError as exc:
        await record_access(request, caller, interaction, entities=[attempted] if attempted else [], patients=[],
                            outcome=OUTCOME_MINOR if exc.status < 500 else OUTCOME_SERIOUS,
                            description=exc.issues[0].diagnostics if exc.issues else "", query=(
                                request.url.query if search else None), denied=exc.status in (403, 404))
        raise
    entities = [] if search else list(dict.fromkeys(service.touched))
    await record_access(request, caller, interaction, entities=entities[:100],
                        patients=sorted(service.touched_patients), query=request.url.query if search else None)
    return result


async def read_json_body(request: Request) -> Any:
    content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise RecordError.single(415, "not-supported", f"Send FHIR JSON (Content-Type {FHIR_JSON}), not {content_type}")
    raw = await request.body()
    if not raw.strip():
        raise RecordError.single(400, "required", "The request body is empty; a FHIR resource is expected")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError.single(400, "structure", f"The body is not valid JSON: {exc}") from None
    _check_json(body)
    return body


# orjson parses up to 1024 levels, but validating a resource nested a few hundred levels deep overflows Python's
# stack (a 500), and MongoDB refuses documents nested over 100 levels (the resource is stored one level down);
# real resources, in a Bundle too, stay far below this.
MAX_JSON_DEPTH = 64


# FHIR: "strings SHALL NOT exceed 1 MB". base64Binary is not a string (a 3 MB attachment is fine) and neither is
# the narrative's xhtml; these are the element names that hold them in R4B.
MAX_STRING_CHARS = 1024 * 1024
_NOT_STRINGS = frozenset({"data", "hash", "query", "carrierAIDC", "div"})


def _check_json(body: Any) -> None:
    """Refuse what no FHIR resource holds before anything recursive reads it (walked without recursion)."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        node, depth, key = stack.pop()
        if isinstance(node, str):
            # the R4B models let control characters through, so a name holding a NUL was stored as sent
            if (bad := CONTROL_CHARACTERS.search(node)) is not None:
                raise RecordError.single(400, "value", f"A string holds the control character U+{ord(bad.group()):04X}"
                                                       f" after {node[:bad.start()][-20:]!r}; FHIR strings hold none "
                                                       "but tab, carriage return and line feed")
            if len(node) > MAX_STRING_CHARS and key not in _NOT_STRINGS and not key.endswith("Base64Binary"):
                raise RecordError.single(400, "too-long", f"{key or 'A string'} is {len(node)} characters long; "
                                                          f"FHIR strings are at most {MAX_STRING_CHARS}")
        elif isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise RecordError.single(400, "structure", f"The body is nested more than {MAX_JSON_DEPTH} levels "
                                                           "deep; no FHIR resource is")
            if isinstance(node, dict):
                stack.extend((name, depth, "") for name in node)
                stack.extend((child, depth + 1, name) for name, child in node.items())
            else:
                stack.extend((child, depth + 1, key) for child in node)


def _query(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _prefer_return(request: Request) -> str:
    for part in request.headers.get("prefer", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            return value.strip().strip('"')
    return "representation"


def _handling(request: Request) -> str | None:
    for part in request.headers.get("prefer", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"')
    return None


def _version_headers(vid: int, updated: datetime) -> dict[str, str]:
    # The HTTP date format takes only datetime.UTC; stored datetimes carry bson's own UTC (or none).
    updated = updated.replace(tzinfo=UTC) if updated.tzinfo is None else updated.astimezone(UTC)
    return {"ETag": f'W/"{vid}"', "Last-Modified": format_datetime(updated, usegmt=True)}


def _written_response(request: Request, written: Written, status: int) -> Response:
    headers = _version_headers(written.vid, written.updated)
    headers["Location"] = f"{str(request.base_url).rstrip('/')}/fhir/{written.location}"
    prefer = _prefer_return(request)
    if prefer == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer == "OperationOutcome":
        verb = "Created" if status == 201 else "Updated"
        return FhirResponse({"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": f"{verb} {written.location}"}]}, status_code=status, headers=headers)
    return FhirResponse(written.resource, status_code=status, headers=headers)


# --- whole-server interactions (declared before the /{type} routes they would otherwise match) -------
# metadata and the StructureDefinitions are public, as FHIR clients discover a server before logging in.


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    return FhirResponse(capability_statement(_fhir_base(request)))


@router.post("")
async def batch_or_transaction(request: Request, caller: CurrentCaller) -> Response:
    body = await read_json_body(request)
    service = record_service(request, caller)
    kind = body.get("type") if isinstance(body, dict) and body.get("type") in ("batch", "transaction") else "batch"
    return FhirResponse(await audited(request, caller, service, kind, service.process_bundle(body)))


@router.get("/StructureDefinition")
async def list_structure_definitions(request: Request) -> Response:
    base = _fhir_base(request)
    definitions = load_structure_definitions()
    return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(definitions), "entry": [
        {"fullUrl": f"{base}/StructureDefinition/{sid}", "resource": sd, "search": {"mode": "match"}}
        for sid, sd in sorted(definitions.items())]})


@router.get("/StructureDefinition/{definition_id}")
async def read_structure_definition(definition_id: str) -> Response:
    definition = load_structure_definitions().get(definition_id)
    if definition is None:
        raise RecordError.single(404, "not-found", f"StructureDefinition/{definition_id} is not known")
    return FhirResponse(definition)


# --- bulk export (FHIR Bulk Data: kick-off, status, files, cancel) ---------------------------------


@router.get("/Patient/$export")
async def export_kick_off(request: Request, caller: CurrentCaller) -> Response:
    """Start an export of every patient in the caller's reach; answers 202 with where to ask how it goes."""
    params = _query(request)
    try:
        request.app.state.exports.admit(caller)
        wanted = parse_export_request(params, request.headers.get("prefer", ""))
        job = await request.app.state.exports.start(caller, wanted, str(request.url))
    except RecordError as exc:
        await record_access(request, caller, "export", entities=[], patients=[], outcome=OUTCOME_MINOR,
                            description=exc.issues[0].diagnostics if exc.issues else "", query=request.url.query)
        raise
    await record_access(request, caller, "export", entities=[f"urn:qilu:export:{job['_id']}"], patients=[],
                        description="bulk export requested", query=request.url.query)
    request.app.state.enqueue_export(job["_id"])
    status_url = f"{_fhir_base(request)}/$export-status/{job['_id']}"
    return Response(status_code=202, headers={"Content-Location": status_url})


@router.get("/$export")
async def system_export(caller: CurrentCaller) -> Response:
    raise RecordError.single(400, "not-supported", "Only patient-level export is offered: GET /fhir/Patient/$export "
                                                   "exports every patient you may read")


@router.get("/$export-status/{job_id}")
async def export_status(job_id: str, request: Request, caller: CurrentCaller) -> Response:
    exports = request.app.state.exports
    job = await exports.of_caller(caller, job_id)
    if job["status"] in UNDER_WAY:
        total = len(job["types"])
        return Response(status_code=202, headers={"X-Progress": f"{job['progress']} of {total} types",
                                                  "Retry-After": "2"})
    if job["status"] == "failed":
        raise RecordError.single(503, "transient", f"The export failed: {job['error']}")
    return FhirResponse(exports.manifest(job, _fhir_base(request)), media_type="application/json")


@router.delete("/$export-status/{job_id}")
async def export_cancel(job_id: str, request: Request, caller: CurrentCaller) -> Response:
    await request.app.state.exports.cancel(caller, job_id)
    await record_access(request, caller, "export", entities=[f"urn:qilu:export:{job_id}"], patients=[],
                        description="bulk export cancelled")
    return Response(status_code=202)


@router.get("/$export-file/{job_id}/{name}")
async def export_file(job_id: str, name: str, request: Request, caller: CurrentCaller) -> Response:
    path = await request.app.state.exports.file_of(caller, job_id, name)
    await record_access(request, caller, "export", entities=[f"urn:qilu:export:{job_id}:{name}"], patients=[],
                        description="bulk export file fetched")
    return FileResponse(path, media_type=NDJSON, headers={"Cache-Control": "no-store"})


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(patient_id: str, request: Request, caller: CurrentCaller) -> Response:
    service = record_service(request, caller)
    bundle = await audited(request, caller, service, "everything", service.everything(patient_id, _query(request)),
                           attempted=f"Patient/{patient_id}")
    return FhirResponse(bundle)


@router.post("/Patient/{patient_id}/$transfer")
async def patient_transfer(patient_id: str, request: Request, caller: CurrentCaller) -> Response:
    """Hand the patient over to another hospital (Parameters: `organization`), the one way a patient moves."""
    body = await read_json_body(request)
    service = record_service(request, caller)
    written = await audited(request, caller, service, "transfer", service.transfer(patient_id, body),
                            attempted=f"Patient/{patient_id}")
    return _written_response(request, written, 200)


# --- type and instance interactions ------------------------------------------------------------------


@router.get("/{resource_type}/_history")
async def type_history(resource_type: str, request: Request, caller: CurrentCaller) -> Response:
    service = record_service(request, caller)
    bundle = await audited(request, caller, service, "history-type",
                           service.history(resource_type, None, _query(request)), search=True)
    return FhirResponse(bundle)


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(resource_type: str, resource_id: str, request: Request, caller: CurrentCaller) -> Response:
    service = record_service(request, caller)
    bundle = await audited(request, caller, service, "history-instance",
                           service.history(resource_type, resource_id, _query(request)),
                           attempted=f"{resource_type}/{resource_id}")
    return FhirResponse(bundle)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread(resource_type: str, resource_id: str, version_id: str, request: Request,
                caller: CurrentCaller) -> Response:
    service = record_service(request, caller)
    entry = await audited(request, caller, service, "vread", service.vread(resource_type, resource_id, version_id),
                          attempted=f"{resource_type}/{resource_id}")
    return FhirResponse(entry["resource"], headers=_version_headers(entry["vid"], entry["updated"]))


async def _search(request: Request, caller: Caller, resource_type: str, params: list[tuple[str, str]]) -> Response:
    service = record_service(request, caller)
    bundle = await audited(request, caller, service, "search-type",
                           service.search(resource_type, params, handling=_handling(request)), search=True)
    return FhirResponse(bundle)


@router.get("/{resource_type}")
async def search_type(resource_type: str, request: Request, caller: CurrentCaller) -> Response:
    return await _search(request, caller, resource_type, _query(request))


@router.post("/{resource_type}/_search")
async def search_type_post(resource_type: str, request: Request, caller: CurrentCaller) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise RecordError.single(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
    form = parse_qsl((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)
    return await _search(request, caller, resource_type, _query(request) + form)


@router.post("/{resource_type}")
async def create(resource_type: str, request: Request, caller: CurrentCaller) -> Response:
    body = await read_json_body(request)
    service = record_service(request, caller)
    written, existing = await audited(request, caller, service, "create", service.create(
        resource_type, body, if_none_exist=request.headers.get("if-none-exist")))
    if existing is not None:
        document = await service.store.get(resource_type, existing["id"])
        return FhirResponse(existing, status_code=200, headers=_version_headers(document["vid"], document["updated"]))
    return _written_response(request, written, 201)


@router.get("/{resource_type}/{resource_id}")
async def read(resource_type: str, resource_id: str, request: Request, caller: CurrentCaller) -> Response:
    service = record_service(request, caller)
    document = await audited(request, caller, service, "read", service.read(resource_type, resource_id),
                             attempted=f"{resource_type}/{resource_id}")
    return FhirResponse(document["resource"], headers=_version_headers(document["vid"], document["updated"]))


@router.put("/{resource_type}/{resource_id}")
async def update(resource_type: str, resource_id: str, request: Request, caller: CurrentCaller) -> Response:
    body = await read_json_body(request)
    service = record_service(request, caller)
    written = await audited(request, caller, service, "update", service.update(
        resource_type, resource_id, body, if_match=request.headers.get("if-match")),
        attempted=f"{resource_type}/{resource_id}")
    return _written_response(request, written, 201 if written.created else 200)


@router.delete("/{resource_type}/{resource_id}")
async def delete(resource_type: str, resource_id: str, request: Request, caller: CurrentCaller) -> Response:
    service = record_service(request, caller)
    written = await audited(request, caller, service, "delete", service.delete(resource_type, resource_id),
                            attempted=f"{resource_type}/{resource_id}")
    headers = {"ETag": written.etag} if written else {}
    return Response(status_code=204, headers=headers)


# --- e-health cards (/api/cards; problem JSON, not FHIR) -------------------------------------------

cards_router = APIRouter(prefix="/api/cards", tags=["cards"])


class CardIssueRequest(BaseModel):
    patient: str = Field(min_length=1, max_length=80, description="Patient/{id} or the id")
    national_id: str = Field(min_length=15, max_length=18)
    name: str = Field(min_length=1, max_length=60)


class CardVerifyRequest(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


async def card_refused_handler(request: Request, exc: CardRefused) -> Response:
    if exc.status in (403, 404) and getattr(request.state, "caller", None) is not None:
        await record_denial(request, "card", exc.detail)
    return JSONResponse({"type": f"https://qilu.example.org/problems/{exc.code}", "title": "Card request refused",
                         "status": exc.status, "detail": exc.detail, "code": exc.code,
                         "instance": request.url.path}, status_code=exc.status,
                        media_type="application/problem+json")


def card_service(request: Request) -> CardService:
    state = request.app.state
    return CardService(RecordService.as_system(state.db, _fhir_base(request)),
                       state.redis, state.keys.card_key, state.settings.token_issuer)


@cards_router.post("", status_code=201)
async def issue_card(body: CardIssueRequest, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    card = await card_service(request).issue(caller, body.patient, body.national_id, body.name)
    await record_access(request, caller, "card-issue", entities=[f"Basic/{card['id']}"], patients=[card["patient"]])
    return card


@cards_router.get("/mine")
async def my_card(request: Request, caller: CurrentCaller) -> dict[str, Any]:
    card = await card_service(request).card_of_patient(caller)
    if card is None:
        raise CardRefused(404, "card-unknown", "You have no e-health card yet")
    return card


@cards_router.post("/verify")
async def verify_card(body: CardVerifyRequest, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    try:
        identity = await card_service(request).verify(caller, body.token)
    except CardRefused as refused:
        if refused.status not in (403, 404):  # a refusal by the rules is traced by the handler
            await record_access(request, caller, "card-verify", entities=[], patients=[], outcome=OUTCOME_MINOR,
                                description=refused.code)
        raise
    await record_access(request, caller, "card-verify", entities=[f"Basic/{identity['card']['id']}"],
                        patients=[identity["patient"]])
    return identity


@cards_router.get("/{card_id}")
async def read_card(card_id: str, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    return await card_service(request).get(caller, card_id)


@cards_router.get("/{card_id}/qr")
async def card_qr(card_id: str, request: Request, caller: CurrentCaller) -> Response:
    token, expires = await card_service(request).qr_token(caller, card_id)
    accept = request.headers.get("accept", "")
    headers = {"Cache-Control": "no-store", "X-Card-Token-Expires": str(expires)}
    if "application/json" in accept:
        return JSONResponse({"token": token, "expires": expires}, headers=headers)
    qr = segno.make(token, error="m")
    buffer = io.BytesIO()
    if "image/svg+xml" in accept:
        qr.save(buffer, kind="svg", scale=4, border=2, title="电子健康卡 e-health card")
        return Response(buffer.getvalue(), media_type="image/svg+xml", headers=headers)
    qr.save(buffer, kind="png", scale=6, border=2)
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)


@cards_router.post("/{card_id}/{action}")
async def change_card_status(card_id: str, action: Literal["revoke", "suspend", "reactivate"], request: Request,
                             caller: CurrentCaller) -> dict[str, Any]:
    card = await card_service(request).change_status(caller, card_id, action)
    await record_access(request, caller, "card-status", entities=[f"Basic/{card_id}"], patients=[card["patient"]],
                        description=action)
    return card
