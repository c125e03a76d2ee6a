"""The FHIR resources the record holds, and what makes one valid here: the R4B model plus the province's profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_profiles.profiles import check_resource

# The resource types the record stores and the FHIR API serves, in the order metadata lists them.
RESOURCE_TYPES: tuple[str, ...] = (
    "Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService",
    "Encounter", "Condition", "Observation", "AllergyIntolerance", "MedicationRequest", "Procedure",
    "Immunization", "DiagnosticReport", "DocumentReference", "Composition", "CarePlan", "ServiceRequest",
    "Task", "Consent", "Appointment", "Communication", "Basic", "Provenance", "AuditEvent",
)
# Written only by the server itself (the audit trail is append-only and never edited through the API).
READ_ONLY_TYPES = frozenset({"AuditEvent"})

FHIR_VERSION = "4.3.0"


@dataclass
class ResourceIssue:
    """One thing wrong with a submitted resource, ready to become an OperationOutcome issue."""

    severity: str
    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)

    def as_outcome_issue(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return issue


class RecordError(Exception):
    """A refusal of the record, with its HTTP status and OperationOutcome issues.

    An invalid resource is 400 (fails the R4B model) or 422 (fails the province's profiles).
    """

    def __init__(self, status: int, issues: list[ResourceIssue], headers: dict[str, str] | None = None):
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = issues
        self.headers = headers or {}

    @classmethod
    def single(cls, status: int, code: str, diagnostics: str, expression: str | None = None,
               headers: dict[str, str] | None = None) -> RecordError:
        return cls(status, [ResourceIssue("error", code, diagnostics, [expression] if expression else [])], headers)


def is_supported_type(resource_type: str) -> bool:
    return resource_type in RESOURCE_TYPES


def _fhirpath(resource_type: str, loc: tuple) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("__root__",):
            path += f".{part}"
    return path


def _model_issues(resource_type: str, error: ValidationError) -> list[ResourceIssue]:
    issues = []
    for err in error.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        message = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            message = f"Unknown element '{loc[-1] if loc else '?'}'"
        code = "structure" if err.get("type") in ("extra_forbidden", "missing") else "value"
        issues.append(ResourceIssue("error", code, message, [_fhirpath(resource_type, loc)]))
    return issues or [ResourceIssue("error", "structure", str(error)[:500], [resource_type])]


def validate_resource(body: Any, *, expected_type: str | None = None, prefix: str = "") -> dict[str, Any]:
    """Check a submitted resource and return it as a plain dict; raise RecordError otherwise.

    `prefix` places issues inside a Bundle (e.g. "Bundle.entry[3].resource").
    """
    def at(issues: list[ResourceIssue]) -> list[ResourceIssue]:
        if prefix:
            for issue in issues:
                issue.expression = [prefix + e[e.find("."):] if "." in e else prefix for e in issue.expression] or [prefix]
        return issues

    if not isinstance(body, dict):
        raise RecordError(400, at([ResourceIssue("error", "structure", "A resource must be a JSON object")]))
    resource_type = body.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise RecordError(400, at([ResourceIssue("error", "required", "resourceType is missing",
                                                     ["resourceType"])]))
    if expected_type and resource_type != expected_type:
        raise RecordError(400, at([ResourceIssue(
            "error", "invalid", f"resourceType is '{resource_type}' but this endpoint takes '{expected_type}'",
            [f"{expected_type}.resourceType"])]))
    if not is_supported_type(resource_type):
        raise RecordError(400, at([ResourceIssue(
            "error", "not-supported", f"Resource type '{resource_type}' is not supported here", ["resourceType"])]))
    try:
        get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as exc:
        raise RecordError(400, at(_model_issues(resource_type, exc))) from None
    except (TypeError, ValueError) as exc:  # the models raise these for some malformed primitives
        raise RecordError(400, at([ResourceIssue("error", "value", str(exc)[:500], [resource_type])])) from None
    # A rule about two elements names both, one FHIRPath per expression item.
    profile_issues = [ResourceIssue(i.severity, i.code, i.diagnostics, i.expressions) for i in check_resource(body)]
    errors = [i for i in profile_issues if i.severity in ("error", "fatal")]
    if errors:
        raise RecordError(422, at(errors))
    return body
