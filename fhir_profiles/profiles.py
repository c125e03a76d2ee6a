"""The province's rules on a FHIR resource that the R4B models already accepted: what else makes it valid here."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fhir_profiles.extensions import (
    ACCEPTING_REFERRALS_URL,
    CANONICAL_BASE,
    CAPABILITY_SYSTEM,
    CODE_SYSTEM_BASE,
    DIVISION_CODE_URL,
    EHEALTH_CARD_STATUS_URL,
    HOSPITAL_TIER_URL,
    MEDICAL_ALLIANCE_URL,
    REFERRAL_CAPACITY_URL,
    parse_accepting_referrals_extension,
    parse_division_code_extension,
    parse_ehealth_card_status_extension,
    parse_hospital_tier_extension,
    parse_medical_alliance_extension,
    parse_referral_capacity_extension,
)
from fhir_profiles.identifiers import (
    EHEALTH_CARD_SYSTEM,
    NATIONAL_ID_SYSTEM,
    USCC_SYSTEM,
    IdentifierError,
    mask_national_id,
    parse_national_id,
    parse_uscc,
)
from fhir_profiles.valuesets import (
    CAPABILITY_CODES,
    CODEABLE_CONCEPT_SYSTEMS,
    ICD10_SYSTEM,
    REQUIRED_CODES,
    is_icd10_code,
)

QILU_PATIENT_PROFILE_URL = CANONICAL_BASE + "qilu-patient"
QILU_ORGANIZATION_PROFILE_URL = CANONICAL_BASE + "qilu-organization"
EHEALTH_CARD_PROFILE_URL = CANONICAL_BASE + "ehealth-card"
# Basic.code of every e-health card, so that cards can be searched for by code.
EHEALTH_CARD_CODE_SYSTEM = CODE_SYSTEM_BASE + "basic-resource-type"
EHEALTH_CARD_CODE = "ehealth-card"

# Resources about a person, whose national ID number must agree with their birthDate and gender.
PERSON_RESOURCE_TYPES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})

# Anything shaped like an ID number that reaches a diagnostic is masked, whatever put it there.
_NATIONAL_ID_SHAPE = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


@dataclass(frozen=True)
class ProfileIssue:
    """One broken rule, shaped like an OperationOutcome.issue."""

    severity: str  # "error" | "warning"
    code: str  # FHIR issue-type: invalid, code-invalid, value, business-rule, required
    expression: str  # FHIRPath; several are joined with ", " when a rule involves two elements
    diagnostics: str

    def __post_init__(self) -> None:
        masked = _NATIONAL_ID_SHAPE.sub(lambda m: mask_national_id(m.group()), self.diagnostics)
        object.__setattr__(self, "diagnostics", masked)

    @property
    def expressions(self) -> list[str]:
        """The FHIRPath expressions one by one, as OperationOutcome.issue.expression lists them."""
        return [part.strip() for part in self.expression.split(",") if part.strip()]

    def as_operation_outcome_issue(self) -> dict[str, Any]:
        """This issue as an OperationOutcome.issue element."""
        return {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
            "expression": self.expressions,
        }


def has_errors(issues: list[ProfileIssue]) -> bool:
    """True when any issue is an error (warnings let a resource through)."""
    return any(issue.severity == "error" for issue in issues)


def _error(code: str, expression: str, diagnostics: str) -> ProfileIssue:
    return ProfileIssue("error", code, expression, diagnostics)


# --- walking a resource ------------------------------------------------------------------------


def _values_at(node: Any, path: list[str], expression: str) -> Iterator[tuple[str, Any]]:
    """Every value at a dotted path, with its FHIRPath; lists are walked, indexes named."""
    if not path:
        yield expression, node
        return
    if not isinstance(node, dict):
        return
    key, rest = path[0], path[1:]
    value = node.get(key)
    if value is None:
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _values_at(item, rest, f"{expression}.{key}[{index}]")
    else:
        yield from _values_at(value, rest, f"{expression}.{key}")


def _elements(node: Any, expression: str, *, top: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every complex element of a resource with its FHIRPath, not entering nested resources
    (contained ones are checked on their own; Bundle entries by whoever processes them)."""
    if isinstance(node, dict):
        if not top and "resourceType" in node:
            return
        yield expression, node
        for key, value in node.items():
            if key == "resourceType":
                continue
            # "_birthDate" holds the extensions of birthDate; FHIRPath names it birthDate.
            yield from _elements(value, f"{expression}.{key.lstrip('_')}", top=False)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _elements(item, f"{expression}[{index}]", top=False)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- value sets --------------------------------------------------------------------------------


def _check_required_codes(resource: dict[str, Any], resource_type: str) -> Iterator[ProfileIssue]:
    for (bound_type, path), codes in REQUIRED_CODES.items():
        if bound_type != resource_type:
            continue
        allowed = ", ".join(sorted(codes))
        system = CODEABLE_CONCEPT_SYSTEMS.get((bound_type, path))
        for expression, value in _values_at(resource, path.split("."), resource_type):
            if system is None:
                if not isinstance(value, str) or value not in codes:
                    yield _error(
                        "code-invalid",
                        expression,
                        f"{_shown(value)} is not a code of {expression}; allowed: {allowed}",
                    )
                continue
            codings = [
                (index, coding)
                for index, coding in enumerate((value.get("coding") or []) if isinstance(value, dict) else [])
                if isinstance(coding, dict) and coding.get("system") == system
            ]
            if not codings:
                yield _error(
                    "code-invalid",
                    expression,
                    f"{expression} needs a coding from {system} (one of: {allowed})",
                )
            for index, coding in codings:
                if coding.get("code") not in codes:
                    yield _error(
                        "code-invalid",
                        f"{expression}.coding[{index}].code",
                        f"{_shown(coding.get('code'))} is not a code of {system}; allowed: {allowed}",
                    )


# Codings whose system Qilu knows the codes of, wherever in a resource they appear.
_CODING_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    ICD10_SYSTEM: (
        is_icd10_code,
        "is not an ICD-10 code (a letter, two digits, optionally . and up to 4 more, e.g. I63.9)",
    ),
    CAPABILITY_SYSTEM: (
        lambda code: code in CAPABILITY_CODES,
        "is not a Qilu capability; known: " + ", ".join(sorted(CAPABILITY_CODES)),
    ),
}


def _check_codings(resource: dict[str, Any], resource_type: str) -> Iterator[ProfileIssue]:
    for expression, element in _elements(resource, resource_type):
        system = element.get("system")
        rule = _CODING_RULES.get(system) if isinstance(system, str) else None
        if rule is None or "code" not in element:
            continue
        accepts, complaint = rule
        code = element["code"]
        if not isinstance(code, str) or not accepts(code):
            yield _error("code-invalid", f"{expression}.code", f"{_shown(code)} {complaint}")


# --- extensions --------------------------------------------------------------------------------

# Each Qilu extension, how to read it (ValueError when malformed), and how many one element may carry.
_EXTENSION_PARSERS: dict[str, Callable[[dict[str, Any]], object]] = {
    HOSPITAL_TIER_URL: parse_hospital_tier_extension,
    DIVISION_CODE_URL: parse_division_code_extension,
    MEDICAL_ALLIANCE_URL: parse_medical_alliance_extension,
    EHEALTH_CARD_STATUS_URL: parse_ehealth_card_status_extension,
    REFERRAL_CAPACITY_URL: parse_referral_capacity_extension,
    ACCEPTING_REFERRALS_URL: parse_accepting_referrals_extension,
}


def _check_extensions(resource: dict[str, Any], resource_type: str) -> Iterator[ProfileIssue]:
    for expression, element in _elements(resource, resource_type):
        for key in ("extension", "modifierExtension"):
            extensions = element.get(key)
            if not isinstance(extensions, list):
                continue
            urls = Counter(
                ext.get("url") for ext in extensions if isinstance(ext, dict) and isinstance(ext.get("url"), str)
            )
            for url, count in urls.items():
                if url in _EXTENSION_PARSERS and count > 1:
                    yield _error(
                        "invalid", f"{expression}.{key}", f"{count} {url} extensions; at most one is allowed"
                    )
            for index, extension in enumerate(extensions):
                if not isinstance(extension, dict):
                    continue
                url = extension.get("url")
                where = f"{expression}.{key}[{index}]"
                parse = _EXTENSION_PARSERS.get(url) if isinstance(url, str) else None
                if parse is not None:
                    try:
                        parse(extension)
                    except ValueError as err:
                        yield _error("value", where, str(err))
                elif isinstance(url, str) and url.startswith(CANONICAL_BASE):
                    # A mistyped Qilu URL would otherwise be ignored as someone else's extension.
                    yield _error("value", f"{where}.url", f"{url} is not an extension Qilu defines")


# --- identifiers -------------------------------------------------------------------------------


def _at_most_one_identifier(
    resource: dict[str, Any], resource_type: str, system: str, what: str
) -> Iterator[ProfileIssue]:
    # One person, one number (一号认证); one organisation, one credit code.
    count = sum(
        1
        for identifier in resource.get("identifier") or []
        if isinstance(identifier, dict) and identifier.get("system") == system
    )
    if count > 1:
        yield _error("invalid", f"{resource_type}.identifier", f"{count} identifiers carry a {what}; at most one may")


def _birth_date_text(value: Any) -> str | None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    return value if isinstance(value, str) else None


def _check_national_ids(
    resource: dict[str, Any], resource_type: str, today: dt.date | None
) -> Iterator[ProfileIssue]:
    yield from _at_most_one_identifier(resource, resource_type, NATIONAL_ID_SYSTEM, "national ID number")
    for index, identifier in enumerate(resource.get("identifier") or []):
        if not isinstance(identifier, dict) or identifier.get("system") != NATIONAL_ID_SYSTEM:
            continue
        where = f"{resource_type}.identifier[{index}].value"
        value = identifier.get("value")
        if not value:
            yield _error("required", where, "a national ID identifier needs its number in value")
            continue
        try:
            national_id = parse_national_id(value, today=today)
        except IdentifierError as err:
            yield _error("value", where, str(err))
            continue
        if national_id.value != value:
            # system|value is the uniqueness key: 37...x and 37...X would be two people.
            yield _error("value", where, "write the check character of a national ID number as upper-case X")

        birth_date = _birth_date_text(resource.get("birthDate"))
        # FHIR dates may be partial (1990, 1990-05); compare as much as is given.
        if birth_date and national_id.birth_date.isoformat()[: len(birth_date)] != birth_date:
            yield _error(
                "business-rule",
                f"{where}, {resource_type}.birthDate",
                f"the birth date in the national ID number of identifier[{index}] "
                f"differs from {resource_type}.birthDate",
            )
        gender = resource.get("gender")
        # other/unknown are left alone: the number records sex at registration, not gender.
        if gender in ("male", "female") and gender != national_id.sex:
            yield _error(
                "business-rule",
                f"{where}, {resource_type}.gender",
                f"the national ID number of identifier[{index}] is a {national_id.sex}'s "
                f"but {resource_type}.gender is {gender}",
            )


def _check_usccs(resource: dict[str, Any], resource_type: str) -> Iterator[ProfileIssue]:
    yield from _at_most_one_identifier(resource, resource_type, USCC_SYSTEM, "unified social credit code")
    for index, identifier in enumerate(resource.get("identifier") or []):
        if not isinstance(identifier, dict) or identifier.get("system") != USCC_SYSTEM:
            continue
        where = f"{resource_type}.identifier[{index}].value"
        value = identifier.get("value")
        if not value:
            yield _error("required", where, "a unified social credit code identifier needs its code in value")
            continue
        try:
            code = parse_uscc(value)
        except IdentifierError as err:
            yield _error("value", where, str(err))
            continue
        if code != value:
            yield _error("value", where, "write a unified social credit code in upper case")


# --- the e-health card -------------------------------------------------------------------------


def _profiles(resource: dict[str, Any]) -> set[str]:
    meta = resource.get("meta")
    claimed = meta.get("profile") if isinstance(meta, dict) else None
    # A canonical may carry a version after "|"; the profile is the same.
    return {str(url).split("|", 1)[0] for url in claimed or []}


def _reference_type(reference: Any) -> str | None:
    """The resource type a Reference points at, when it can be told without resolving it."""
    if not isinstance(reference, dict):
        return None
    if reference.get("type"):
        return str(reference["type"])
    target = reference.get("reference")
    if not isinstance(target, str) or target.startswith(("urn:", "#")):
        return None
    parts = target.split("/_history/", 1)[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _check_ehealth_card(resource: dict[str, Any]) -> Iterator[ProfileIssue]:
    numbers = [
        (index, identifier)
        for index, identifier in enumerate(resource.get("identifier") or [])
        if isinstance(identifier, dict) and identifier.get("system") == EHEALTH_CARD_SYSTEM
    ]
    if len(numbers) != 1:
        yield _error(
            "required",
            "Basic.identifier",
            f"an e-health card has exactly one identifier with system {EHEALTH_CARD_SYSTEM} (found {len(numbers)})",
        )
    for index, identifier in numbers:
        value = identifier.get("value")
        if not isinstance(value, str) or not value.strip():
            yield _error("required", f"Basic.identifier[{index}].value", "the e-health card number is missing")

    has_status = any(
        isinstance(ext, dict) and ext.get("url") == EHEALTH_CARD_STATUS_URL for ext in resource.get("extension") or []
    )
    if not has_status:
        yield _error(
            "required", "Basic.extension", f"an e-health card needs its status extension {EHEALTH_CARD_STATUS_URL}"
        )

    subject = resource.get("subject")
    if subject is None:
        yield _error("required", "Basic.subject", "an e-health card needs the Patient it belongs to in subject")
    elif _reference_type(subject) not in ("Patient", None) or not (
        isinstance(subject, dict) and subject.get("reference")
    ):
        yield _error("invalid", "Basic.subject", "the subject of an e-health card is a reference to a Patient")

    author = resource.get("author")
    if author is not None and _reference_type(author) not in ("Organization", None):
        yield _error("invalid", "Basic.author", "the issuer of an e-health card (author) is an Organization")

    code = resource.get("code")
    codings = (code.get("coding") or []) if isinstance(code, dict) else []
    if not any(
        isinstance(c, dict) and c.get("system") == EHEALTH_CARD_CODE_SYSTEM and c.get("code") == EHEALTH_CARD_CODE
        for c in codings
    ):
        yield _error(
            "value",
            "Basic.code",
            f"an e-health card's code carries the coding {EHEALTH_CARD_CODE_SYSTEM}|{EHEALTH_CARD_CODE}",
        )


# --- the entry point ---------------------------------------------------------------------------


def check_resource(resource: dict[str, Any], *, today: dt.date | None = None) -> list[ProfileIssue]:
    """Every province rule the resource breaks; an empty list means it is valid here.

    `resource` is the JSON form of a resource the R4B model already accepted. `today` fixes the
    date ID numbers' birth dates must not pass (tests); it defaults to the real today.
    """
    if not isinstance(resource, dict):
        raise TypeError("check_resource takes a resource as a JSON dict")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [_error("required", "resourceType", "the resource has no resourceType")]

    issues: list[ProfileIssue] = []
    issues += _check_required_codes(resource, resource_type)
    issues += _check_codings(resource, resource_type)
    issues += _check_extensions(resource, resource_type)
    if resource_type in PERSON_RESOURCE_TYPES:
        issues += _check_national_ids(resource, resource_type, today)
    if resource_type == "Organization":
        issues += _check_usccs(resource, resource_type)
    if resource_type == "Basic" and EHEALTH_CARD_PROFILE_URL in _profiles(resource):
        issues += _check_ehealth_card(resource)

    # Contained resources are part of this one: their issues are this one's, found at their place.
    for index, contained in enumerate(resource.get("contained") or []):
        if not isinstance(contained, dict):
            continue
        inner_type = contained.get("resourceType", "")
        prefix = f"{resource_type}.contained[{index}]"
        for issue in check_resource(contained, today=today):
            expression = ", ".join(
                prefix + part[len(inner_type) :] if inner_type and part.startswith(inner_type) else f"{prefix}.{part}"
                for part in issue.expressions
            )
            issues.append(ProfileIssue(issue.severity, issue.code, expression, issue.diagnostics))
    return issues
