"""Error responses: RFC 9457 problem JSON for the app's own routes, OperationOutcome under /fhir."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("qilu.errors")

FHIR_MEDIA_TYPE = "application/fhir+json"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# FHIR issue-type code for an HTTP status, when the raiser did not name one.
_ISSUE_CODE_BY_STATUS = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                         409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly", 415: "not-supported",
                         422: "processing", 429: "throttled", 503: "transient"}


class Problem(Exception):
    """A refusal the caller can act on: raised anywhere in a request, rendered by the handlers below."""

    def __init__(self, status: int, title: str, detail: str = "", *, type_: str = "about:blank",
                 issue_code: str | None = None, expression: list[str] | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.issue_code = issue_code
        self.expression = expression
        self.headers = headers
        self.extra = extra or {}


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


def outcome_issue(severity: str, code: str, diagnostics: str, expression: list[str] | None = None) -> dict:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return issue


def is_fhir_request(request: Request) -> bool:
    path = request.url.path
    return path == "/fhir" or path.startswith("/fhir/")


def error_response(request: Request, status: int, title: str, detail: str = "", *, type_: str = "about:blank",
                   issue_code: str | None = None, expression: list[str] | None = None,
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
                   issues: list[dict[str, Any]] | None = None) -> JSONResponse:
    if is_fhir_request(request):
        body = operation_outcome(issues or [outcome_issue(
            "error" if status < 500 else "fatal", issue_code or _ISSUE_CODE_BY_STATUS.get(status, "exception"),
            detail or title, expression)])
        return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_MEDIA_TYPE)
    body = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update(extra or {})
    if issues:
        body["errors"] = issues
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
    return error_response(request, exc.status, exc.title, exc.detail, type_=exc.type, issue_code=exc.issue_code,
                          expression=exc.expression, headers=exc.headers, extra=exc.extra)


async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    titles = {404: "Not found", 405: "Method not allowed", 401: "Not authenticated", 403: "Forbidden",
              413: "Request body too large"}
    detail = exc.detail if isinstance(exc.detail, str) else ""
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"There is nothing at {request.url.path}."
    return error_response(request, exc.status_code, titles.get(exc.status_code, detail or "Error"), detail,
                          headers=getattr(exc, "headers", None))


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query", "path", "header"))


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    issues = [{"field": _field_path(tuple(err.get("loc", ()))), "message": err.get("msg", "")} for err in exc.errors()]
    if is_fhir_request(request):
        fhir_issues = [outcome_issue("error", "invalid", i["message"], [i["field"]] if i["field"] else None)
                       for i in issues]
        return error_response(request, 400, "Invalid request", issues=fhir_issues)
    summary = "; ".join(f"{i['field'] or 'request'}: {i['message']}" for i in issues)
    return error_response(request, 422, "Invalid request", summary, issues=issues)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", path=request.url.path)
    return error_response(request, 500, "Internal error",
                          "Something went wrong on our side; the request id helps us find it.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
