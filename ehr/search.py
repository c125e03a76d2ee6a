"""FHIR search as pure functions: what each stored resource is indexed by, and how a search query becomes a MongoDB filter."""

from __future__ import annotations

import copy
import functools
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

# --- what a search parameter is -----------------------------------------------------------------

ParamType = str  # "token" | "string" | "date" | "reference" | "uri"


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: ParamType
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference target types; empty = any type
    description: str = ""
    # True when the paths are alternatives: the first path that holds a value is the only one used
    # (Observation.date is effective[x], and issued only when there is no effective[x]).
    first_path_only: bool = False


@dataclass(frozen=True)
class Include:
    source_type: str
    param: str
    target_type: str | None
    iterate: bool = False


@dataclass(frozen=True)
class SearchIssue:
    severity: str  # "warning" | "error"
    code: str  # "not-supported" | "invalid" | "value"
    expression: str
    diagnostics: str


@dataclass
class SearchPlan:
    """A parsed search. `filter` always holds {"deleted": False}: documents always carry the flag,
    and a plain equality is the cheapest test on both engines."""

    resource_type: str
    filter: dict[str, Any]
    sort: list[tuple[str, int]]
    count: int = 20
    offset: int = 0
    include: list[Include] = field(default_factory=list)
    revinclude: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    issues: list[SearchIssue] = field(default_factory=list)
    # Applied parameters in request order, for self/next links; _count and _offset are left out
    # because every link writes its own.
    used: list[tuple[str, str]] = field(default_factory=list)
    strict: bool = False

    @property
    def errors(self) -> list[SearchIssue]:
        return [i for i in self.issues if i.severity == "error"]


class SearchValueError(ValueError):
    """A malformed search value; parse_search turns it into an error issue, the helpers raise it."""

    def __init__(self, diagnostics: str, code: str = "value"):
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.code = code


# --- the parameter table ------------------------------------------------------------------------
# One row per parameter: (name, type, paths, targets). Paths are dotted element names; lists are
# walked through; "x[x]" is a choice element; "telecom[system=phone]" keeps matching items only;
# "a | b" is the union of both paths, "a else b" uses b only when a holds nothing.

DEFAULT_COUNT = 20
MAX_COUNT = 500
# Two-bound date tests (eq, ap) look at this many values per parameter; every date parameter in
# the table below yields one value, so this is headroom, not a limit anyone meets.
DATE_SLOTS = 4

_ANY = ""
_PAT = "Patient"
_ORG = "Organization"
_PRAC = "Practitioner"
_LOC = "Location"
_ENC = "Encounter"
_SR = "ServiceRequest"

_COMMON_ROWS = (
    ("_id",          "token",     "id",                 _ANY),
    ("_lastUpdated", "date",      "meta.lastUpdated",   _ANY),
    ("_tag",         "token",     "meta.tag",           _ANY),
    ("_profile",     "uri",       "meta.profile",       _ANY),
    ("_security",    "token",     "meta.security",      _ANY),
)

_TABLE: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "Patient": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("name",                 "string",    "name",                            _ANY),
        ("family",               "string",    "name.family",                     _ANY),
        ("given",                "string",    "name.given",                      _ANY),
        ("birthdate",            "date",      "birthDate",                       _ANY),
        ("gender",               "token",     "gender",                          _ANY),
        ("telecom",              "token",     "telecom",                         _ANY),
        ("phone",                "token",     "telecom[system=phone]",           _ANY),
        ("email",                "token",     "telecom[system=email]",           _ANY),
        ("address",              "string",    "address",                         _ANY),
        ("active",               "token",     "active",                          _ANY),
        ("organization",         "reference", "managingOrganization",            _ORG),
        ("general-practitioner", "reference", "generalPractitioner",             "Practitioner|Organization|PractitionerRole"),
        ("link",                 "reference", "link.other",                      "Patient|RelatedPerson"),
    ),
    "Practitioner": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("name",                 "string",    "name",                            _ANY),
        ("family",               "string",    "name.family",                     _ANY),
        ("given",                "string",    "name.given",                      _ANY),
        ("telecom",              "token",     "telecom",                         _ANY),
        ("address",              "string",    "address",                         _ANY),
        ("gender",               "token",     "gender",                          _ANY),
        ("active",               "token",     "active",                          _ANY),
    ),
    "PractitionerRole": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("practitioner",         "reference", "practitioner",                    _PRAC),
        ("organization",         "reference", "organization",                    _ORG),
        ("role",                 "token",     "code",                            _ANY),
        ("specialty",            "token",     "specialty",                       _ANY),
        ("location",             "reference", "location",                        _LOC),
        ("service",              "reference", "healthcareService",               "HealthcareService"),
        ("active",               "token",     "active",                          _ANY),
    ),
    "Organization": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("name",                 "string",    "name | alias",                    _ANY),
        ("type",                 "token",     "type",                            _ANY),
        ("partof",               "reference", "partOf",                          _ORG),
        ("address",              "string",    "address",                         _ANY),
        ("active",               "token",     "active",                          _ANY),
    ),
    "Location": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("name",                 "string",    "name | alias",                    _ANY),
        ("address",              "string",    "address",                         _ANY),
        ("organization",         "reference", "managingOrganization",            _ORG),
        ("type",                 "token",     "type",                            _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("partof",               "reference", "partOf",                          _LOC),
    ),
    "HealthcareService": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("name",                 "string",    "name",                            _ANY),
        ("organization",         "reference", "providedBy",                      _ORG),
        ("specialty",            "token",     "specialty",                       _ANY),
        ("service-type",         "token",     "type",                            _ANY),
        ("service-category",     "token",     "category",                        _ANY),
        ("characteristic",       "token",     "characteristic",                  _ANY),
        ("location",             "reference", "location",                        _LOC),
        ("active",               "token",     "active",                          _ANY),
    ),
    "Encounter": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("class",                "token",     "class",                           _ANY),
        ("type",                 "token",     "type",                            _ANY),
        ("date",                 "date",      "period",                          _ANY),
        ("participant",          "reference", "participant.individual",          _ANY),
        ("service-provider",     "reference", "serviceProvider",                 _ORG),
        ("location",             "reference", "location.location",               _LOC),
        ("based-on",             "reference", "basedOn",                         _SR),
        ("reason-code",          "token",     "reasonCode",                      _ANY),
    ),
    "Condition": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("clinical-status",      "token",     "clinicalStatus",                  _ANY),
        ("verification-status",  "token",     "verificationStatus",              _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("severity",             "token",     "severity",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "onset[x] else recordedDate",      _ANY),
        ("onset-date",           "date",      "onset[x]",                        _ANY),
        ("recorded-date",        "date",      "recordedDate",                    _ANY),
        ("asserter",             "reference", "asserter",                        _ANY),
        ("body-site",            "token",     "bodySite",                        _ANY),
    ),
    "Observation": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "effective[x] else issued",        _ANY),
        ("performer",            "reference", "performer",                       _ANY),
        ("based-on",             "reference", "basedOn",                         _ANY),
        ("value-concept",        "token",     "valueCodeableConcept",            _ANY),
    ),
    "AllergyIntolerance": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "patient",                         _PAT),
        ("code",                 "token",     "code",                            _ANY),
        ("clinical-status",      "token",     "clinicalStatus",                  _ANY),
        ("verification-status",  "token",     "verificationStatus",              _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("criticality",          "token",     "criticality",                     _ANY),
        ("type",                 "token",     "type",                            _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "recordedDate",                    _ANY),
        ("recorder",             "reference", "recorder",                        _ANY),
        ("asserter",             "reference", "asserter",                        _ANY),
    ),
    "MedicationRequest": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "medicationCodeableConcept",       _ANY),
        ("medication",           "reference", "medicationReference",             "Medication"),
        ("status",               "token",     "status",                          _ANY),
        ("intent",               "token",     "intent",                          _ANY),
        ("priority",             "token",     "priority",                        _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "authoredOn",                      _ANY),
        ("authoredon",           "date",      "authoredOn",                      _ANY),
        ("requester",            "reference", "requester",                       _ANY),
        ("intended-performer",   "reference", "performer",                       _ANY),
    ),
    "Procedure": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "performed[x]",                    _ANY),
        ("performer",            "reference", "performer.actor",                 _ANY),
        ("based-on",             "reference", "basedOn",                         _ANY),
        ("reason-code",          "token",     "reasonCode",                      _ANY),
        ("location",             "reference", "location",                        _LOC),
    ),
    "Immunization": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "patient",                         _PAT),
        ("vaccine-code",         "token",     "vaccineCode",                     _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "occurrence[x]",                   _ANY),
        ("performer",            "reference", "performer.actor",                 _ANY),
        ("location",             "reference", "location",                        _LOC),
    ),
    "DiagnosticReport": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "effective[x]",                    _ANY),
        ("issued",               "date",      "issued",                          _ANY),
        ("performer",            "reference", "performer",                       _ANY),
        ("result",               "reference", "result",                          "Observation"),
        ("based-on",             "reference", "basedOn",                         _ANY),
    ),
    "DocumentReference": (
        ("identifier",           "token",     "identifier | masterIdentifier",   _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("type",                 "token",     "type",                            _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("date",                 "date",      "date",                            _ANY),
        ("period",               "date",      "context.period",                  _ANY),
        ("author",               "reference", "author",                          _ANY),
        ("custodian",            "reference", "custodian",                       _ORG),
        ("encounter",            "reference", "context.encounter",               _ANY),
        ("related",              "reference", "context.related",                 _ANY),
    ),
    "Composition": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("type",                 "token",     "type",                            _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("date",                 "date",      "date",                            _ANY),
        ("author",               "reference", "author",                          _ANY),
        ("attester",             "reference", "attester.party",                  _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("title",                "string",    "title",                           _ANY),
    ),
    "CarePlan": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("intent",               "token",     "intent",                          _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "period",                          _ANY),
        ("based-on",             "reference", "basedOn",                         "CarePlan"),
        ("performer",            "reference", "activity.detail.performer",       _ANY),
    ),
    "ServiceRequest": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("intent",               "token",     "intent",                          _ANY),
        ("priority",             "token",     "priority",                        _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "authoredOn",                      _ANY),
        ("authored",             "date",      "authoredOn",                      _ANY),
        ("occurrence",           "date",      "occurrence[x]",                   _ANY),
        ("requester",            "reference", "requester",                       _ANY),
        ("performer",            "reference", "performer",                       _ANY),
        ("based-on",             "reference", "basedOn",                         _ANY),
        ("requisition",          "token",     "requisition",                     _ANY),
        ("reason-code",          "token",     "reasonCode",                      _ANY),
    ),
    "Task": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "for",                             _PAT),
        ("subject",              "reference", "for",                             _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("business-status",      "token",     "businessStatus",                  _ANY),
        ("intent",               "token",     "intent",                          _ANY),
        ("priority",             "token",     "priority",                        _ANY),
        ("focus",                "reference", "focus",                           _ANY),
        ("owner",                "reference", "owner",                           _ANY),
        ("requester",            "reference", "requester",                       _ANY),
        ("based-on",             "reference", "basedOn",                         _ANY),
        ("part-of",              "reference", "partOf",                          "Task"),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "authoredOn",                      _ANY),
        ("authored-on",          "date",      "authoredOn",                      _ANY),
        ("modified",             "date",      "lastModified",                    _ANY),
        ("period",               "date",      "executionPeriod",                 _ANY),
        ("performer",            "token",     "performerType",                   _ANY),
    ),
    "Consent": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "patient",                         _PAT),
        ("status",               "token",     "status",                          _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("scope",                "token",     "scope",                           _ANY),
        ("date",                 "date",      "dateTime",                        _ANY),
        ("period",               "date",      "provision.period",                _ANY),
        ("actor",                "reference", "provision.actor.reference",       _ANY),
        ("action",               "token",     "provision.action",                _ANY),
        ("purpose",              "token",     "provision.purpose",               _ANY),
        ("data",                 "reference", "provision.data.reference",        _ANY),
        ("organization",         "reference", "organization",                    _ORG),
        ("consentor",            "reference", "performer",                       _ANY),
        ("source-reference",     "reference", "sourceReference",                 _ANY),
    ),
    "Appointment": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "participant.actor",               _PAT),
        ("actor",                "reference", "participant.actor",               _ANY),
        ("practitioner",         "reference", "participant.actor",               _PRAC),
        ("location",             "reference", "participant.actor",               _LOC),
        ("part-status",          "token",     "participant.status",              _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("date",                 "date",      "start",                           _ANY),
        ("service-type",         "token",     "serviceType",                     _ANY),
        ("service-category",     "token",     "serviceCategory",                 _ANY),
        ("specialty",            "token",     "specialty",                       _ANY),
        ("appointment-type",     "token",     "appointmentType",                 _ANY),
        ("based-on",             "reference", "basedOn",                         _SR),
        ("reason-code",          "token",     "reasonCode",                      _ANY),
        ("supporting-info",      "reference", "supportingInformation",           _ANY),
    ),
    "Communication": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("status",               "token",     "status",                          _ANY),
        ("category",             "token",     "category",                        _ANY),
        ("medium",               "token",     "medium",                          _ANY),
        ("encounter",            "reference", "encounter",                       _ENC),
        ("date",                 "date",      "sent",                            _ANY),
        ("sent",                 "date",      "sent",                            _ANY),
        ("received",             "date",      "received",                        _ANY),
        ("sender",               "reference", "sender",                          _ANY),
        ("recipient",            "reference", "recipient",                       _ANY),
        ("part-of",              "reference", "partOf",                          _ANY),
        ("based-on",             "reference", "basedOn",                         _ANY),
    ),
    "Basic": (
        ("identifier",           "token",     "identifier",                      _ANY),
        ("patient",              "reference", "subject",                         _PAT),
        ("subject",              "reference", "subject",                         _ANY),
        ("code",                 "token",     "code",                            _ANY),
        ("author",               "reference", "author",                          _ANY),
        ("date",                 "date",      "created",                         _ANY),
        ("created",              "date",      "created",                         _ANY),
    ),
    "Provenance": (
        ("target",               "reference", "target",                          _ANY),
        ("patient",              "reference", "target",                          _PAT),
        ("agent",                "reference", "agent.who",                       _ANY),
        ("entity",               "reference", "entity.what",                     _ANY),
        ("location",             "reference", "location",                        _LOC),
        ("activity",             "token",     "activity",                        _ANY),
        ("date",                 "date",      "recorded",                        _ANY),
        ("recorded",             "date",      "recorded",                        _ANY),
    ),
    "AuditEvent": (
        ("type",                 "token",     "type",                            _ANY),
        ("subtype",              "token",     "subtype",                         _ANY),
        ("action",               "token",     "action",                          _ANY),
        ("outcome",              "token",     "outcome",                         _ANY),
        ("date",                 "date",      "recorded",                        _ANY),
        ("agent",                "reference", "agent.who",                       _ANY),
        ("entity",               "reference", "entity.what",                     _ANY),
        ("entity-type",          "token",     "entity.type",                     _ANY),
        ("patient",              "reference", "agent.who | entity.what",         _PAT),
        ("source",               "reference", "source.observer",                 _ANY),
        ("site",                 "token",     "source.site",                     _ANY),
    ),
}

# Elements whose Patient references put a resource in that patient's compartment, after the FHIR R4
# Patient CompartmentDefinition. Task is not in R4's definition; Qilu adds Task.for so that a
# patient's referral Tasks are theirs to see.
COMPARTMENT_PATHS: dict[str, tuple[str, ...]] = {
    "Encounter":          ("subject",),
    "Condition":          ("subject", "asserter"),
    "Observation":        ("subject", "performer"),
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "MedicationRequest":  ("subject",),
    "Procedure":          ("subject", "performer.actor"),
    "Immunization":       ("patient",),
    "DiagnosticReport":   ("subject",),
    "DocumentReference":  ("subject", "author"),
    "Composition":        ("subject", "author", "attester.party"),
    "CarePlan":           ("subject", "activity.detail.performer"),
    "ServiceRequest":     ("subject", "performer"),
    "Task":               ("for",),
    "Consent":            ("patient",),
    "Appointment":        ("participant.actor",),
    "Communication":      ("subject", "sender", "recipient"),
    "Basic":              ("subject", "author"),
    "Provenance":         ("target",),
    "AuditEvent":         ("agent.who", "entity.what"),
}


def _build_params(resource_type: str, rows) -> dict[str, SearchParam]:
    out: dict[str, SearchParam] = {}
    for name, kind, path_text, target_text in (*_COMMON_ROWS, *rows):
        fallback = " else " in path_text
        paths = tuple(p.strip() for p in re.split(r" else | \| ", path_text))
        targets = tuple(t for t in target_text.split("|") if t)
        description = f"{kind} on " + (" else " if fallback else " | ").join(f"{resource_type}.{p}" for p in paths)
        out[name] = SearchParam(name, kind, paths, targets, description, fallback)
    return out


SEARCH_PARAMETERS: dict[str, dict[str, SearchParam]] = {
    resource_type: _build_params(resource_type, rows) for resource_type, rows in _TABLE.items()
}
_COMMON_PARAMS = _build_params("Resource", ())

# --- normalisation ------------------------------------------------------------------------------

_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Case-, accent- and width-insensitive form used by string search (NFKD folds full-width forms)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WS.sub(" ", stripped.casefold()).strip()


def _is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\U00020000" <= ch <= "\U0002fa1f"
               for ch in text)


_REGEX_SPECIALS = set("\\.^$|?*+()[]{}")


def regex_escape(text: str) -> str:
    # Escapes only the metacharacters shared by PCRE (MongoDB) and RE2 (FerretDB): Python's
    # re.escape also escapes characters RE2 would read differently.
    return "".join("\\" + ch if ch in _REGEX_SPECIALS else ch for ch in text)


# --- dates --------------------------------------------------------------------------------------
# Stored and compared at millisecond precision because BSON datetimes are milliseconds: a hi bound
# of .999999 would be silently truncated to .999 by the driver anyway.

_MS = timedelta(milliseconds=1)
OPEN_LO = datetime(1, 1, 1)
OPEN_HI = datetime(9999, 12, 31, 23, 59, 59, 999000)

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    # A space stands for "+": an unencoded "+" in a query string arrives decoded as a space.
    r"(?P<tz>Z|[+\- ]\d{2}:\d{2})?)?)?)?$"
)


def _next_boundary(lo: datetime, unit: str) -> datetime:
    if unit == "year":
        return lo.replace(year=lo.year + 1)
    if unit == "month":
        return lo.replace(year=lo.year + 1, month=1) if lo.month == 12 else lo.replace(month=lo.month + 1)
    raise AssertionError(unit)


def date_range(text: str) -> tuple[datetime, datetime]:
    """The [lo, hi] instants (naive UTC, inclusive, milliseconds) that a FHIR date/dateTime/instant covers.

    A value without a time zone (a date, or a search value without offset) is read as UTC.
    """
    m = _DATE_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise SearchValueError(f"'{text}' is not a FHIR date (YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|+hh:mm]]]])")
    try:
        year = int(m["y"])
        if m["m"] is None:
            lo = datetime(year, 1, 1)
            hi = _safe(lambda: _next_boundary(lo, "year") - _MS)
        elif m["d"] is None:
            lo = datetime(year, int(m["m"]), 1)
            hi = _safe(lambda: _next_boundary(lo, "month") - _MS)
        elif m["H"] is None:
            lo = datetime(year, int(m["m"]), int(m["d"]))
            hi = _safe(lambda: lo + timedelta(days=1) - _MS)
        else:
            second = int(m["S"]) if m["S"] is not None else 0
            lo = datetime(year, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), second)
            if m["S"] is None:
                step = timedelta(minutes=1)
            elif m["f"] is None:
                step = timedelta(seconds=1)
            else:
                digits = m["f"]
                lo = lo.replace(microsecond=int(digits[:3].ljust(3, "0")) * 1000)
                step = timedelta(milliseconds=10 ** max(0, 3 - len(digits)))
            hi = _safe(lambda: lo + step - _MS)
            tz = m["tz"]
            if tz and tz != "Z":
                hours, minutes = int(tz[1:3]), int(tz[4:6])
                if hours > 14 or minutes > 59:
                    raise SearchValueError(f"'{text}' has an impossible time-zone offset")
                offset = timedelta(hours=hours, minutes=minutes) * (-1 if tz[0] == "-" else 1)
                lo, hi = _safe(lambda: lo - offset, OPEN_LO), _safe(lambda: hi - offset)
    except ValueError as exc:
        if isinstance(exc, SearchValueError):
            raise
        raise SearchValueError(f"'{text}' is not a valid date: {exc}") from None
    return lo, hi


def _safe(compute, fallback: datetime = OPEN_HI) -> datetime:
    # Only the far ends of the calendar (year 1 or 9999) overflow; clamp them to the open bounds.
    try:
        return compute()
    except (OverflowError, ValueError):  # timedelta overflows; replace(year=10000) is a ValueError
        return fallback


def parse_instant(text: str) -> datetime:
    """The naive-UTC start of a date/dateTime/instant value (for `_since` and the like)."""
    return date_range(text)[0]


def _value_date_range(value: Any) -> tuple[datetime, datetime] | None:
    if isinstance(value, str):
        try:
            return date_range(value)
        except SearchValueError:
            return None  # an unparseable stored date is not indexed rather than failing the write
    if isinstance(value, dict) and ("start" in value or "end" in value):  # Period
        start, end = value.get("start"), value.get("end")
        lo = _value_date_range(start) if start else None
        hi = _value_date_range(end) if end else None
        if (start and lo is None) or (end and hi is None) or (lo is None and hi is None):
            return None
        return (lo[0] if lo else OPEN_LO), (hi[1] if hi else OPEN_HI)
    return None


# --- references ---------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_REF_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?/?$")


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and bool(_ID_RE.match(value))


def reference_key(reference: str) -> str | None:
    """The relative "Type/id" a reference names, with any base URL and version stripped;
    None for contained (#...) and urn: references, which do not name a stored resource."""
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")) or not reference:
        return None
    m = _REF_TAIL.search(reference)
    return f"{m[1]}/{m[2]}" if m else None


# --- walking resources --------------------------------------------------------------------------

_FILTER_SEGMENT = re.compile(r"^(?P<name>[A-Za-z]+(?:\[x\])?)(?:\[(?P<key>[A-Za-z]+)=(?P<value>[^\]]*)\])?$")


@dataclass(frozen=True)
class _Step:
    """One segment of an element path: `name`, `value[x]` (any typed child) or `name[key=value]`."""

    name: str
    stem: str | None  # for `value[x]`: "value"
    key: str | None
    value: str | None


@functools.lru_cache(maxsize=None)
def _steps(path: str) -> tuple[_Step, ...]:
    """A path parsed once (every write walks the same few hundred paths)."""
    steps = []
    for segment in path.split("."):
        m = _FILTER_SEGMENT.match(segment)
        if not m:
            raise AssertionError(f"bad path segment {segment!r}")
        name = m["name"]
        steps.append(_Step(name, name[:-3] if name.endswith("[x]") else None, m["key"], m["value"]))
    return tuple(steps)


def _walk(node: Any, path: str) -> Iterator[Any]:
    """The values at an element path, lists flattened."""
    yield from _walk_steps(node, _steps(path))


def _walk_steps(node: Any, steps: tuple[_Step, ...]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk_steps(item, steps)
        return
    if not steps:
        if node is not None:
            yield node
        return
    if not isinstance(node, dict):
        return
    step = steps[0]
    if step.stem is not None:
        stem = step.stem
        children = [v for k, v in node.items() if k.startswith(stem) and k[len(stem):][:1].isupper()]
    else:
        children = [node[step.name]] if step.name in node else []
    for child in children:
        items = child if isinstance(child, list) else [child]
        if step.key:
            items = [i for i in items if isinstance(i, dict) and str(i.get(step.key)) == step.value]
        for item in items:
            yield from _walk_steps(item, steps[1:])


def _dedupe(items: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


# --- indexing -----------------------------------------------------------------------------------


def _token_entries(value: Any) -> tuple[list[str], list[str], list[str]]:
    """(index values, bare codes for sorting, display texts for :text) of one token element."""
    if isinstance(value, bool):
        text = "true" if value else "false"
        return [text], [text], []
    if isinstance(value, str):  # code, or a string/uri used as a token
        return [value, f"|{value}"], [value], []
    if not isinstance(value, dict):
        return [], [], []
    if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
        keys, codes, texts = [], [], []
        for coding in value.get("coding") or []:
            k, c, t = _token_entries(coding)
            keys += k
            codes += c
            texts += t
        if isinstance(value.get("text"), str):
            texts.append(value["text"])
        return keys, codes, texts
    code = value.get("code", value.get("value"))  # Coding.code, Identifier.value, ContactPoint.value
    if not isinstance(code, str) or not code:
        return [], [], []
    system = value.get("system")
    texts = [value["display"]] if isinstance(value.get("display"), str) else []
    if isinstance(system, str) and system:
        return [f"{system}|{code}", code], [code], texts
    return [f"|{code}", code], [code], texts


_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def _as_list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [i for i in items if isinstance(i, str) and i.strip()]


def _string_entries(value: Any) -> list[str]:
    """Original strings (before normalisation) that a string parameter matches for one element."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, dict):
        return []
    if any(k in value for k in ("family", "given")) or ("text" in value and "line" not in value
                                                          and "city" not in value):
        family = " ".join(_as_list(value.get("family")))
        given = _as_list(value.get("given"))
        out = _as_list(value.get("text")) + _as_list(value.get("family")) + given
        out += _as_list(value.get("prefix")) + _as_list(value.get("suffix"))
        if family and given:
            if _is_cjk(family + "".join(given)):
                out.append(family + "".join(given))  # 张 + 三 -> 张三: Chinese names are written unspaced
            else:
                out += [" ".join(given + [family]), " ".join([family] + given)]
        return out
    out = []
    for part in _ADDRESS_PARTS:
        out += _as_list(value.get(part))
    return out


def _index_values(param: SearchParam, values: list[Any], sp: dict, so: dict) -> bool:
    """Index one parameter's element values into sp/so; False when none of them was indexable."""
    name = param.name
    if param.type == "token":
        keys, codes, texts = [], [], []
        for v in values:
            k, c, t = _token_entries(v)
            keys += k
            codes += c
            texts += t
        if keys:
            sp[name] = _dedupe(keys)
            so[name] = codes[0]
        texts = _dedupe([n for n in (normalise_text(t) for t in texts) if n])
        if texts:
            sp[f"{name}:text"] = texts
        return bool(keys)
    if param.type == "string":
        originals = _dedupe([s for v in values for s in _string_entries(v)])
        normalised = _dedupe([n for n in (normalise_text(s) for s in originals) if n])
        if normalised:
            sp[name] = normalised
            sp[f"{name}:exact"] = originals
            so[name] = normalised[0]
        return bool(normalised)
    if param.type == "date":
        ranges = [r for r in (_value_date_range(v) for v in values) if r]
        if ranges:
            sp[name] = _dedupe([{"lo": lo, "hi": hi} for lo, hi in ranges])
            so[name] = ranges[0][0]
        return bool(ranges)
    if param.type == "reference":
        refs = _dedupe([k for k in (reference_key(v.get("reference")) for v in values if isinstance(v, dict))
                        if k and (not param.targets or k.split("/")[0] in param.targets)])
        if refs:
            sp[name] = refs
            so[name] = refs[0]
        return bool(refs)
    if param.type == "uri":
        uris = _dedupe([v for v in values if isinstance(v, str) and v])
        if uris:
            sp[name] = uris
            so[name] = uris[0]
        return bool(uris)
    raise AssertionError(param.type)


def _index_param(resource: dict, param: SearchParam, sp: dict, so: dict) -> None:
    if not param.first_path_only:
        _index_values(param, [v for path in param.paths for v in _walk(resource, path)], sp, so)
        return
    # Alternatives: the first path with an indexable value wins (onsetString falls through to recordedDate).
    for path in param.paths:
        if _index_values(param, list(_walk(resource, path)), sp, so):
            return


def params_for(resource_type: str) -> dict[str, SearchParam]:
    return SEARCH_PARAMETERS.get(resource_type, _COMMON_PARAMS)


def index_resource(resource: dict) -> tuple[dict, dict, list[str]]:
    """(sp, so, compartment) for a resource: its search values, sort keys and patient compartments."""
    resource_type = resource.get("resourceType", "")
    sp: dict[str, Any] = {}
    so: dict[str, Any] = {}
    for param in params_for(resource_type).values():
        if param.name in ("_id", "_lastUpdated"):
            continue  # matched against the document's own _id and updated fields
        _index_param(resource, param, sp, so)
    if resource_type == "Patient":
        compartment = [f"Patient/{resource['id']}"] if resource.get("id") else []
    else:
        compartment = []
        for _path, v in compartment_references(resource):
            key = reference_key(v.get("reference"))
            if key and key.startswith("Patient/") and key not in compartment:
                compartment.append(key)
    return sp, so, compartment


def compartment_references(resource: dict) -> Iterator[tuple[str, dict]]:
    """(path, Reference) of every element that puts a resource in a patient's compartment; the Reference
    objects are the resource's own, so they can be resolved in place."""
    for path in COMPARTMENT_PATHS.get(resource.get("resourceType", ""), ()):
        for v in _walk(resource, path):
            if isinstance(v, dict):
                yield path, v


def reference_targets(resource: dict, resource_type: str, param: str) -> list[str]:
    """The "Type/id" values a resource holds for a reference parameter (used by _include)."""
    definition = params_for(resource_type).get(param)
    if definition is None or definition.type != "reference":
        return []
    sp: dict[str, Any] = {}
    _index_param(resource, definition, sp, {})
    return sp.get(param, [])


# --- compiling a query --------------------------------------------------------------------------

# Known to FHIR but not implemented here: with lenient handling they are ignored with a warning.
UNSUPPORTED_PARAMS = {"_text", "_content", "_list", "_has", "_type", "_query", "_filter", "_contained",
                      "_containedType", "_source"}
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_UNSUPPORTED_MODIFIERS = {"above", "below", "in", "not-in", "of-type", "identifier", "iterate", "recurse"}
# No FHIR string holds these (all C0 controls but tab, CR and LF); in a search value a NUL reached MongoDB's
# $regex, which refuses embedded NULs (a 500 there), so they are refused in names and values alike.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _split_unescaped(text: str, sep: str) -> list[str]:
    # FHIR escapes "," "|" "$" and "\" in search values with a backslash.
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", text)


def _split_values(value: str) -> list[str]:
    return [v for v in _split_unescaped(value, ",") if v != ""]


def _any_of(field_path: str, exact: list[str], prefixes: list[str]) -> dict[str, Any]:
    """Match when the field holds any of `exact`, or any value starting with one of `prefixes`."""
    clauses: list[dict[str, Any]] = []
    if exact:
        clauses.append({field_path: exact[0] if len(exact) == 1 else {"$in": exact}})
    if prefixes:
        clauses.append({field_path: {"$regex": "^(?:" + "|".join(regex_escape(p) for p in prefixes) + ")"}})
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _token_clause(field_path: str, values: list[str]) -> dict[str, Any]:
    exact, prefixes = [], []
    for raw in values:
        parts = _split_unescaped(raw, "|")
        if len(parts) > 2:
            raise SearchValueError(f"'{raw}' has more than one unescaped '|'", "invalid")
        if len(parts) == 1:
            exact.append(_unescape(parts[0]))
            continue
        system, code = _unescape(parts[0]), _unescape(parts[1])
        if not system and not code:
            raise SearchValueError("a token needs a code, a system or both", "invalid")
        if code:
            exact.append(f"{system}|{code}")
        else:
            prefixes.append(f"{system}|")  # system| : any code in that system
    return _any_of(field_path, exact, prefixes)


def _reference_clause(param: SearchParam, values: list[str], type_modifier: str | None) -> dict[str, Any]:
    exact: list[str] = []
    patterns: list[str] = []
    for raw in values:
        value = _unescape(raw)
        if "/" in value:
            key = reference_key(value)
            if key is None:
                raise SearchValueError(f"'{value}' is not a Type/id or URL reference", "invalid")
            if type_modifier and not key.startswith(type_modifier + "/"):
                raise SearchValueError(f"'{value}' is not a {type_modifier} reference", "invalid")
            exact.append(key)
            continue
        if not _ID_RE.match(value):
            raise SearchValueError(f"'{value}' is not a resource id", "invalid")
        if type_modifier:
            exact.append(f"{type_modifier}/{value}")
        elif len(param.targets) == 1:
            exact.append(f"{param.targets[0]}/{value}")
        else:
            # An id alone with several possible target types: any of them with that id.
            types = "|".join(param.targets) if param.targets else "[A-Z][A-Za-z]+"
            patterns.append(f"^(?:{types})/{regex_escape(value)}$")
    clauses: list[dict[str, Any]] = []
    field_path = f"sp.{param.name}"
    if exact:
        clauses.append({field_path: exact[0] if len(exact) == 1 else {"$in": exact}})
    clauses += [{field_path: {"$regex": p}} for p in patterns]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _string_clause(param: SearchParam, values: list[str], modifier: str | None) -> dict[str, Any] | None:
    if modifier == "exact":
        originals = [_unescape(v) for v in values]
        return {f"sp.{param.name}:exact": originals[0] if len(originals) == 1 else {"$in": originals}}
    normalised = [n for n in (normalise_text(_unescape(v)) for v in values) if n]
    if not normalised:
        return None
    alternatives = "|".join(regex_escape(n) for n in normalised)
    anchor = "" if modifier == "contains" else "^"
    return {f"sp.{param.name}": {"$regex": f"{anchor}(?:{alternatives})"}}


# Each prefix is a list of alternatives; each alternative is a conjunction of tests on the target
# range [lo, hi] against the search range [P.lo, P.hi] (FHIR R4 search, "prefix" table).
def _date_tests(prefix: str, p_lo: datetime, p_hi: datetime, now: datetime) -> list[list[tuple[str, str, datetime]]]:
    if prefix == "eq":  # search range fully contains target range
        return [[("lo", "$gte", p_lo), ("hi", "$lte", p_hi)]]
    if prefix == "ne":  # search range does not fully contain target range
        return [[("lo", "$lt", p_lo)], [("hi", "$gt", p_hi)]]
    if prefix == "gt":  # range above the search value intersects the target: T.hi > P.hi
        return [[("hi", "$gt", p_hi)]]
    if prefix == "lt":  # range below the search value intersects the target: T.lo < P.lo
        return [[("lo", "$lt", p_lo)]]
    if prefix == "ge":  # gt, or P contains T; reduces to T.hi > P.hi or T.lo >= P.lo
        return [[("hi", "$gt", p_hi)], [("lo", "$gte", p_lo)]]
    if prefix == "le":  # lt, or P contains T; reduces to T.lo < P.lo or T.hi <= P.hi
        return [[("lo", "$lt", p_lo)], [("hi", "$lte", p_hi)]]
    if prefix == "sa":  # no overlap and target wholly above: T.lo > P.hi
        return [[("lo", "$gt", p_hi)]]
    if prefix == "eb":  # no overlap and target wholly below: T.hi < P.lo
        return [[("hi", "$lt", p_lo)]]
    if prefix == "ap":  # target overlaps P widened by 10% of the gap between now and P
        gap = abs(now - (p_lo + (p_hi - p_lo) / 2)) / 10
        gap -= timedelta(microseconds=gap.microseconds % 1000)  # whole milliseconds, like stored bounds
        lo = _safe(lambda: p_lo - gap, OPEN_LO)
        hi = _safe(lambda: p_hi + gap)
        return [[("lo", "$lte", hi), ("hi", "$gte", lo)]]
    raise AssertionError(prefix)


def _date_clause(field_path: str, scalar: bool, values: list[str], now: datetime) -> dict[str, Any]:
    """OR over the comma-separated values. `scalar` fields (updated) hold one instant; sp dates hold a
    list of {lo, hi}. A one-test alternative may be met by any list item, so it uses the dot path
    over the whole list; a two-test alternative must hold on one item, and since FerretDB 1.24 rejects
    $elemMatch with field conditions, it is spelled out per position (DATE_SLOTS of them)."""
    alternatives: list[dict[str, Any]] = []
    for raw in values:
        prefix = "eq"
        text = raw
        if len(raw) >= 2 and raw[:2].isalpha():
            prefix, text = raw[:2], raw[2:]
            if prefix not in DATE_PREFIXES:
                raise SearchValueError(f"'{prefix}' is not a date prefix ({', '.join(DATE_PREFIXES)})")
        p_lo, p_hi = date_range(text)
        for tests in _date_tests(prefix, p_lo, p_hi, now):
            if scalar:
                condition: dict[str, Any] = {}
                for _bound, op, when in tests:
                    condition[op] = when
                alternatives.append({field_path: condition})
            elif len(tests) == 1:
                bound, op, when = tests[0]
                alternatives.append({f"{field_path}.{bound}": {op: when}})
            else:
                for slot in range(DATE_SLOTS):
                    alternatives.append({f"{field_path}.{slot}.{bound}": {op: when} for bound, op, when in tests})
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}


def _param_clause(resource_type: str, param: SearchParam, modifier: str | None, value: str,
                  now: datetime) -> dict[str, Any] | None:
    """The filter clause for one query parameter occurrence; raises SearchValueError."""
    if param.name == "_id":
        field_path = "_id"
    elif param.name == "_lastUpdated":
        field_path = "updated"
    else:
        field_path = f"sp.{param.name}"

    if modifier == "missing":
        if value not in ("true", "false"):
            raise SearchValueError(":missing takes true or false")
        exists_path = field_path if field_path in ("_id", "updated") else f"sp.{param.name}"
        return {exists_path: {"$exists": value == "false"}}

    values = _split_values(value)
    if not values:
        return None

    if param.type == "token":
        if param.name == "_id":
            ids = [_unescape(v) for v in values]
            clause = {"_id": ids[0] if len(ids) == 1 else {"$in": ids}}
        elif modifier == "text":
            normalised = [n for n in (normalise_text(_unescape(v)) for v in values) if n]
            if not normalised:
                return None
            clause = {f"sp.{param.name}:text": {"$regex": "^(?:" + "|".join(regex_escape(n) for n in normalised) + ")"}}
        else:
            clause = _token_clause(field_path, values)
        # :not matches resources that hold none of the values, including those with no value at all.
        return {"$nor": [clause]} if modifier == "not" else clause
    if param.type == "string":
        return _string_clause(param, values, modifier)
    if param.type == "date":
        return _date_clause(field_path, param.name == "_lastUpdated", values, now)
    if param.type == "reference":
        return _reference_clause(param, values, modifier)
    if param.type == "uri":
        uris = [_unescape(v) for v in values]
        return {field_path: uris[0] if len(uris) == 1 else {"$in": uris}}
    raise AssertionError(param.type)


_MODIFIERS_BY_TYPE = {
    "token": {"missing", "not", "text"},
    "string": {"missing", "exact", "contains"},
    "date": {"missing"},
    "reference": {"missing"},  # plus :Type
    "uri": {"missing"},
}


def parse_count(value: str) -> int:
    """_count: 0..MAX_COUNT (larger values are lowered to MAX_COUNT); raises SearchValueError."""
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        raise SearchValueError(f"_count must be a whole number from 0 to {MAX_COUNT}, not '{value}'")
    return min(int(value), MAX_COUNT)


def parse_offset(value: str) -> int:
    """_offset: a whole number >= 0; raises SearchValueError."""
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        raise SearchValueError(f"_offset must be a whole number of 0 or more, not '{value}'")
    return int(value)


def _parse_include(resource_type: str, value: str, *, reverse: bool, iterate: bool) -> Include:
    parts = value.split(":")
    if value.strip() == "*" or (len(parts) >= 2 and parts[1] == "*"):
        raise SearchValueError("the * wildcard is not supported; name the parameter", "not-supported")
    if len(parts) not in (2, 3) or not _TYPE_RE.match(parts[0]):
        raise SearchValueError(f"'{value}' is not of the form Type:param[:targetType]", "invalid")
    source_type, param_name = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else None
    if source_type not in SEARCH_PARAMETERS:
        raise SearchValueError(f"'{source_type}' is not a supported resource type", "not-supported")
    param = SEARCH_PARAMETERS[source_type].get(param_name)
    if param is None or param.type != "reference":
        raise SearchValueError(f"'{param_name}' is not a reference parameter of {source_type}", "invalid")
    if target_type is not None:
        if not _TYPE_RE.match(target_type):
            raise SearchValueError(f"'{target_type}' is not a resource type", "invalid")
        if target_type not in SEARCH_PARAMETERS:
            raise SearchValueError(f"'{target_type}' is not a resource type stored here", "not-supported")
        if param.targets and target_type not in param.targets:
            raise SearchValueError(f"{source_type}:{param_name} does not point to {target_type}", "invalid")
    if not reverse and not iterate and source_type != resource_type:
        raise SearchValueError(f"_include must start with the searched type {resource_type}", "invalid")
    if reverse:
        if target_type is not None and target_type != resource_type and not iterate:
            raise SearchValueError(f"_revinclude target must be {resource_type}", "invalid")
        if param.targets and resource_type not in param.targets and not iterate:
            raise SearchValueError(f"{source_type}:{param_name} never points to {resource_type}", "invalid")
    return Include(source_type, param_name, target_type, iterate)


_SUMMARY_MODES = ("true", "text", "data", "count", "false")
_TOTAL_MODES = ("none", "estimate", "accurate")
_ELEMENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:\[x\])?$")


def parse_search(resource_type: str, params: list[tuple[str, str]], *, base_url: str = "",
                 handling: str | None = None, now: datetime | None = None) -> SearchPlan:
    """Compile a FHIR search into a SearchPlan. Never raises on user input: problems become issues
    (errors for malformed values and bad modifiers; warnings, or errors when handling="strict",
    for parameters this server does not know). `now` anchors the ap prefix (default: the clock).

    `base_url` is accepted for symmetry with the API: a reference value is reduced to "Type/id"
    whatever its base, exactly as stored references are, so no base needs to be told apart."""
    strict = (handling or "").strip().lower() == "strict"
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    known = params_for(resource_type)
    plan = SearchPlan(resource_type=resource_type, filter={"deleted": False}, sort=[], strict=strict)
    clauses: list[dict[str, Any]] = []
    sort_spec: str | None = None

    def issue(severity: str, code: str, expression: str, diagnostics: str) -> None:
        plan.issues.append(SearchIssue(severity, code, expression, diagnostics))

    def unknown(expression: str, diagnostics: str) -> None:
        issue("error" if strict else "warning", "not-supported", expression, diagnostics)

    for key, value in params:
        key = key.strip()
        value = value if isinstance(value, str) else str(value)
        name, _, modifier = key.partition(":")
        modifier = modifier or None

        try:
            if (bad := CONTROL_CHARACTERS.search(key + value)) is not None:
                raise SearchValueError(f"the search holds the control character U+{ord(bad.group()):04X}; "
                                       "FHIR strings hold none but tab, carriage return and line feed")
            if name in ("_format", "_pretty"):
                continue  # the API negotiates the format; the Bundle is always pretty enough
            if name == "_count":
                plan.count = parse_count(value)
                if int(value) > MAX_COUNT:
                    issue("warning", "value", key, f"_count is at most {MAX_COUNT}; {MAX_COUNT} used")
                continue
            if name == "_offset":
                plan.offset = parse_offset(value)
                continue
            if name == "_sort":
                sort_spec = value
                plan.used.append((key, value))
                continue
            if name in ("_include", "_revinclude"):
                iterate = modifier in ("iterate", "recurse")
                if modifier and not iterate:
                    raise SearchValueError(f"{name} takes only the :iterate modifier", "not-supported")
                target = plan.revinclude if name == "_revinclude" else plan.include
                for item in _split_values(value):
                    include = _parse_include(resource_type, item, reverse=name == "_revinclude", iterate=iterate)
                    if include not in target:
                        target.append(include)
                plan.used.append((key, value))
                continue
            if name == "_summary":
                if value not in _SUMMARY_MODES:
                    raise SearchValueError(f"_summary is one of {', '.join(_SUMMARY_MODES)}")
                plan.summary = value
                plan.used.append((key, value))
                continue
            if name == "_elements":
                elements = []
                for item in _split_values(value):
                    item = item.strip()
                    if item.startswith(resource_type + "."):
                        item = item[len(resource_type) + 1:]
                    if not _ELEMENT_RE.match(item):
                        raise SearchValueError(f"'{item}' is not a top-level element name", "invalid")
                    elements.append(item)
                plan.elements = elements or None
                plan.used.append((key, value))
                continue
            if name == "_total":
                if value not in _TOTAL_MODES:
                    raise SearchValueError(f"_total is one of {', '.join(_TOTAL_MODES)}")
                plan.total = value
                plan.used.append((key, value))
                continue
            if "." in name or name in UNSUPPORTED_PARAMS:
                unknown(key, f"'{key}' (chained, reverse-chained or special search) is not supported")
                continue
            param = known.get(name)
            if param is None:
                unknown(key, f"'{name}' is not a search parameter of {resource_type}")
                continue
            if value == "":
                continue  # FHIR: an empty parameter value is ignored
            type_modifier = None
            allowed = _MODIFIERS_BY_TYPE[param.type]
            if name in ("_id", "_lastUpdated"):
                allowed = {"missing", "not"} if name == "_id" else {"missing"}
            if modifier is not None and modifier not in allowed:
                if param.type == "reference" and _TYPE_RE.match(modifier):
                    if param.targets and modifier not in param.targets:
                        raise SearchValueError(f"{name} does not point to {modifier}", "invalid")
                    type_modifier = modifier
                else:
                    known_elsewhere = modifier in _UNSUPPORTED_MODIFIERS or any(
                        modifier in m for m in _MODIFIERS_BY_TYPE.values())
                    raise SearchValueError(
                        f"the :{modifier} modifier is not supported on {param.type} parameter '{name}'",
                        "not-supported" if known_elsewhere else "invalid")
            clause = _param_clause(resource_type, param, type_modifier or modifier, value, now)
            if clause is not None:
                clauses.append(clause)
                plan.used.append((key, value))
        except SearchValueError as exc:
            issue("error", exc.code, key, exc.diagnostics)

    plan.sort = _parse_sort(sort_spec, known, issue) if sort_spec else [("_id", 1)]
    if clauses:
        plan.filter["$and"] = clauses
    return plan


def _parse_sort(spec: str, known: dict[str, SearchParam], issue) -> list[tuple[str, int]]:
    """`_sort` keys, always ending with _id so that pages never overlap or skip.

    Without `_sort` the order is _id ascending: unlike `updated`, it never changes when a resource
    is edited, so a client paging through results does not see a record twice or miss one.
    """
    sort: list[tuple[str, int]] = []
    for item in _split_values(spec):
        direction = -1 if item.startswith("-") else 1
        name = item.lstrip("-").strip()
        if name == "_id":
            field_path = "_id"
        elif name == "_lastUpdated":
            field_path = "updated"
        elif name in known:
            field_path = f"so.{name}"
        else:
            issue("error", "not-supported", "_sort", f"cannot sort by '{name}': not a search parameter here")
            continue
        if any(existing == field_path for existing, _ in sort):
            continue
        sort.append((field_path, direction))
        if field_path == "_id":
            return sort  # _id is unique: nothing after it can change the order
    sort.append(("_id", 1))
    return sort


def summary_count_only(plan: SearchPlan) -> bool:
    """True when the caller wants the total and no entries (_summary=count or _count=0)."""
    return plan.summary == "count" or plan.count == 0


# --- shaping returned resources ------------------------------------------------------------------

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}

_ALWAYS_KEPT = ("resourceType", "id", "meta")
# _summary=true keeps these top-level elements (an approximation of FHIR's isSummary flags):
# identity, status, what it is about and when, and for the directory types their names and contacts.
SUMMARY_ELEMENTS: tuple[str, ...] = (
    "implicitRules", "identifier", "active", "status", "intent", "priority", "category", "code", "class",
    "type", "subject", "patient", "for", "encounter", "name", "title", "gender", "birthDate", "deceased[x]",
    "telecom", "address", "managingOrganization", "partOf", "providedBy", "organization", "practitioner",
    "specialty", "effective[x]", "issued", "onset[x]", "recordedDate", "authoredOn", "occurrence[x]",
    "performed[x]", "period", "date", "start", "end", "sent", "recorded", "created", "dateTime",
    "clinicalStatus", "verificationStatus", "vaccineCode", "medication[x]", "businessStatus", "focus",
    "owner", "requester", "performer", "basedOn", "author", "target", "action", "outcome", "scope",
)
# _summary=text keeps text plus the elements most types require (1..1), approximating "mandatory".
TEXT_ELEMENTS: tuple[str, ...] = ("text", "status", "intent", "code", "class", "subject", "patient")


def _keep(resource: dict, wanted: tuple[str, ...] | list[str]) -> dict:
    plain = {w for w in wanted if not w.endswith("[x]")}
    stems = tuple(w[:-3] for w in wanted if w.endswith("[x]"))
    out = {}
    for key, value in resource.items():
        if key in _ALWAYS_KEPT or key in plain or (
                stems and any(key.startswith(s) and key[len(s):][:1].isupper() for s in stems)):
            out[key] = copy.deepcopy(value)
    return out


def _mark_subsetted(resource: dict) -> dict:
    meta = resource.setdefault("meta", {})
    tags = meta.setdefault("tag", [])
    if not any(t.get("code") == "SUBSETTED" and t.get("system") == SUBSETTED["system"] for t in tags):
        tags.append(dict(SUBSETTED))
    return resource


def apply_elements(resource: dict, elements: list[str]) -> dict:
    """A copy with only resourceType, id, meta (tagged SUBSETTED) and the listed top-level elements."""
    return _mark_subsetted(_keep(resource, elements))


def apply_summary(resource: dict, mode: str) -> dict:
    """A copy shaped for _summary=true|text|data (SUBSETTED-tagged); other modes return it unchanged."""
    if mode == "true":
        return _mark_subsetted(_keep(resource, SUMMARY_ELEMENTS))
    if mode == "text":
        return _mark_subsetted(_keep(resource, TEXT_ELEMENTS))
    if mode == "data":
        out = {k: copy.deepcopy(v) for k, v in resource.items() if k != "text"}
        return _mark_subsetted(out)
    return resource
