"""The FHIR REST API at /fhir: thin routes that turn HTTP into calls of the record service and back."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ehr.capability import capability_statement
from ehr.models import RecordError
from ehr.service import RecordService, Written
from ehr.store import RecordStore
from fhir_profiles.structure_definitions import load_structure_definitions

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


def record_service(request: Request) -> RecordService:
    return RecordService(RecordStore(request.app.state.db), str(request.base_url).rstrip("/") + "/fhir")


async def read_json_body(request: Request) -> Any:
    content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise RecordError.single(415, "not-supported", f"Send FHIR JSON (Content-Type {FHIR_JSON}), not {content_type}")
    raw = await request.body()
    if not raw.strip():
        raise RecordError.single(400, "required", "The request body is empty; a FHIR resource is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError.single(400, "structure", f"The body is not valid JSON: {exc}") from None


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


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    return FhirResponse(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))


@router.post("")
async def batch_or_transaction(request: Request) -> Response:
    body = await read_json_body(request)
    return FhirResponse(await record_service(request).process_bundle(body))


@router.get("/StructureDefinition")
async def list_structure_definitions(request: Request) -> Response:
    base = str(request.base_url).rstrip("/") + "/fhir"
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


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(patient_id: str, request: Request) -> Response:
    return FhirResponse(await record_service(request).everything(patient_id, _query(request)))


# --- type and instance interactions ------------------------------------------------------------------


@router.get("/{resource_type}/_history")
async def type_history(resource_type: str, request: Request) -> Response:
    return FhirResponse(await record_service(request).history(resource_type, None, _query(request)))


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(resource_type: str, resource_id: str, request: Request) -> Response:
    return FhirResponse(await record_service(request).history(resource_type, resource_id, _query(request)))


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread(resource_type: str, resource_id: str, version_id: str, request: Request) -> Response:
    entry = await record_service(request).vread(resource_type, resource_id, version_id)
    return FhirResponse(entry["resource"], headers=_version_headers(entry["vid"], entry["updated"]))


@router.get("/{resource_type}")
async def search_type(resource_type: str, request: Request) -> Response:
    bundle = await record_service(request).search(resource_type, _query(request), handling=_handling(request))
    return FhirResponse(bundle)


@router.post("/{resource_type}/_search")
async def search_type_post(resource_type: str, request: Request) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise RecordError.single(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
    form = parse_qsl((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)
    bundle = await record_service(request).search(resource_type, _query(request) + form, handling=_handling(request))
    return FhirResponse(bundle)


@router.post("/{resource_type}")
async def create(resource_type: str, request: Request) -> Response:
    body = await read_json_body(request)
    service = record_service(request)
    written, existing = await service.create(resource_type, body, if_none_exist=request.headers.get("if-none-exist"))
    if existing is not None:
        document = await service.read(resource_type, existing["id"])
        return FhirResponse(existing, status_code=200, headers=_version_headers(document["vid"], document["updated"]))
    return _written_response(request, written, 201)


@router.get("/{resource_type}/{resource_id}")
async def read(resource_type: str, resource_id: str, request: Request) -> Response:
    document = await record_service(request).read(resource_type, resource_id)
    return FhirResponse(document["resource"], headers=_version_headers(document["vid"], document["updated"]))


@router.put("/{resource_type}/{resource_id}")
async def update(resource_type: str, resource_id: str, request: Request) -> Response:
    body = await read_json_body(request)
    written = await record_service(request).update(resource_type, resource_id, body,
                                                  if_match=request.headers.get("if-match"))
    return _written_response(request, written, 201 if written.created else 200)


@router.delete("/{resource_type}/{resource_id}")
async def delete(resource_type: str, resource_id: str, request: Request) -> Response:
    written = await record_service(request).delete(resource_type, resource_id)
    headers = {"ETag": written.etag} if written else {}
    return Response(status_code=204, headers=headers)

