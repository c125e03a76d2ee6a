"""Qilu's FHIR extensions: their canonical URLs, how to build them and how to read them back."""

from __future__ import annotations

from typing import Any

from fhir_profiles.divisions import is_valid_division_code

FHIR_BASE = "https://qilu.example.org/fhir/"
CANONICAL_BASE = FHIR_BASE + "StructureDefinition/"
CODE_SYSTEM_BASE = FHIR_BASE + "CodeSystem/"

HOSPITAL_TIER_URL = CANONICAL_BASE + "hospital-tier"
DIVISION_CODE_URL = CANONICAL_BASE + "division-code"
# A plain alliance id rather than a Reference to the lead hospital: an alliance (医联体) is an
# agreement with its own id, its lead hospital can change, and a string needs no resolution.
MEDICAL_ALLIANCE_URL = CANONICAL_BASE + "medical-alliance"
# The state of an e-health card (电子健康卡), a Basic resource; see profiles.EHEALTH_CARD_PROFILE_URL.
EHEALTH_CARD_STATUS_URL = CANONICAL_BASE + "ehealth-card-status"

# Capabilities (PCI, thrombolysis, dialysis...) are HealthcareService.characteristic codings.
CAPABILITY_SYSTEM = CODE_SYSTEM_BASE + "capability"

TIER_LEVELS = (1, 2, 3)  # 一级, 二级, 三级 hospitals
TIER_GRADES = ("甲", "乙", "丙")
EHEALTH_CARD_STATUSES = ("active", "suspended", "revoked")

Extension = dict[str, Any]


def hospital_tier_extension(level: int, grade: str) -> Extension:
    """The hospital-tier extension for an Organization, e.g. (3, "甲") for 三级甲等."""
    extension = {
        "url": HOSPITAL_TIER_URL,
        "extension": [
            {"url": "level", "valueInteger": level},
            {"url": "grade", "valueString": grade},
        ],
    }
    parse_hospital_tier_extension(extension)
    return extension


def division_code_extension(code: str) -> Extension:
    """The division-code extension: the GB/T 2260 code of where a resource is."""
    extension = {"url": DIVISION_CODE_URL, "valueCode": code}
    parse_division_code_extension(extension)
    return extension


def medical_alliance_extension(alliance_id: str) -> Extension:
    """The medical-alliance extension: the id of the 医联体 an Organization belongs to."""
    extension = {"url": MEDICAL_ALLIANCE_URL, "valueString": alliance_id}
    parse_medical_alliance_extension(extension)
    return extension


def ehealth_card_status_extension(status: str) -> Extension:
    """The ehealth-card-status extension: active, suspended or revoked."""
    extension = {"url": EHEALTH_CARD_STATUS_URL, "valueCode": status}
    parse_ehealth_card_status_extension(extension)
    return extension


def _value_keys(extension: Extension) -> list[str]:
    return [key for key in extension if key.startswith("value")]


def _only_value(extension: Extension, value_key: str, name: str) -> Any:
    keys = _value_keys(extension)
    if keys != [value_key]:
        raise ValueError(f"the {name} extension carries exactly one {value_key}")
    if extension.get("extension"):
        raise ValueError(f"the {name} extension has a value, not sub-extensions")
    return extension[value_key]


def parse_hospital_tier_extension(extension: Extension) -> tuple[int, str]:
    """(level, grade) of one hospital-tier extension; ValueError says what is malformed."""
    if _value_keys(extension):
        raise ValueError("the hospital-tier extension has sub-extensions, not a value")
    parts: dict[str, list[Extension]] = {}
    for sub in extension.get("extension") or []:
        parts.setdefault(sub.get("url"), []).append(sub)
    unknown = sorted(str(url) for url in parts if url not in ("level", "grade"))
    if unknown:
        raise ValueError(f"the hospital-tier extension has unknown parts: {', '.join(unknown)}")
    if len(parts.get("level", [])) != 1 or len(parts.get("grade", [])) != 1:
        raise ValueError("the hospital-tier extension has exactly one level and one grade")
    level = _only_value(parts["level"][0], "valueInteger", "hospital-tier level")
    grade = _only_value(parts["grade"][0], "valueString", "hospital-tier grade")
    # bool is an int in Python, and True must not pass for level 1.
    if not isinstance(level, int) or isinstance(level, bool) or level not in TIER_LEVELS:
        raise ValueError(f"hospital-tier level must be 1, 2 or 3, not {level!r}")
    if grade not in TIER_GRADES:
        raise ValueError(f"hospital-tier grade must be one of 甲, 乙, 丙, not {grade!r}")
    return level, grade


def parse_division_code_extension(extension: Extension) -> str:
    """The division code of one division-code extension; ValueError says what is malformed."""
    code = _only_value(extension, "valueCode", "division-code")
    if not isinstance(code, str) or not is_valid_division_code(code):
        raise ValueError(
            f"division-code {code!r} is not a six-digit GB/T 2260 code of a known province"
        )
    return code


def parse_medical_alliance_extension(extension: Extension) -> str:
    """The alliance id of one medical-alliance extension; ValueError says what is malformed."""
    alliance_id = _only_value(extension, "valueString", "medical-alliance")
    if not isinstance(alliance_id, str) or not alliance_id.strip() or alliance_id != alliance_id.strip():
        raise ValueError("medical-alliance id must be a non-empty string without surrounding spaces")
    return alliance_id


def parse_ehealth_card_status_extension(extension: Extension) -> str:
    """The status of one ehealth-card-status extension; ValueError says what is malformed."""
    status = _only_value(extension, "valueCode", "ehealth-card-status")
    if status not in EHEALTH_CARD_STATUSES:
        raise ValueError(f"e-health card status must be active, suspended or revoked, not {status!r}")
    return status


def _single(resource: dict[str, Any], url: str) -> Extension | None:
    found = [ext for ext in resource.get("extension") or [] if ext.get("url") == url]
    if len(found) > 1:
        raise ValueError(f"{resource.get('resourceType', 'resource')} has {len(found)} {url} extensions; at most one")
    return found[0] if found else None


def read_hospital_tier(org: dict[str, Any]) -> tuple[int, str] | None:
    """(level, grade) of an Organization, None when it has no tier; ValueError when malformed."""
    extension = _single(org, HOSPITAL_TIER_URL)
    return None if extension is None else parse_hospital_tier_extension(extension)


def read_division_code(resource: dict[str, Any]) -> str | None:
    """The division code on a resource, None when it has none; ValueError when malformed."""
    extension = _single(resource, DIVISION_CODE_URL)
    return None if extension is None else parse_division_code_extension(extension)


def read_medical_alliance(resource: dict[str, Any]) -> str | None:
    """The medical alliance id on a resource, None when it has none; ValueError when malformed."""
    extension = _single(resource, MEDICAL_ALLIANCE_URL)
    return None if extension is None else parse_medical_alliance_extension(extension)


def read_ehealth_card_status(card: dict[str, Any]) -> str | None:
    """The status of an e-health card (Basic), None when it has none; ValueError when malformed."""
    extension = _single(card, EHEALTH_CARD_STATUS_URL)
    return None if extension is None else parse_ehealth_card_status_extension(extension)


# --- referral capacity of a department (HealthcareService) ---------------------------------------

# How many referrals a department takes in a day (转诊号源), set by the department. The capacity in
# use is counted from open referrals, so only the ceiling is recorded here, never a running count.
REFERRAL_CAPACITY_URL = CANONICAL_BASE + "referral-capacity"
# Whether a department takes referrals at all just now; a HealthcareService can stay active (it still
# treats patients) while it stops taking referrals, e.g. during a ward refit.
ACCEPTING_REFERRALS_URL = CANONICAL_BASE + "accepting-referrals"


def referral_capacity_extension(per_day: int) -> Extension:
    """The referral-capacity extension: referrals a HealthcareService takes per day (0 or more)."""
    extension = {"url": REFERRAL_CAPACITY_URL, "valueInteger": per_day}
    parse_referral_capacity_extension(extension)
    return extension


def accepting_referrals_extension(accepting: bool) -> Extension:
    """The accepting-referrals extension: whether a HealthcareService takes referrals now."""
    extension = {"url": ACCEPTING_REFERRALS_URL, "valueBoolean": accepting}
    parse_accepting_referrals_extension(extension)
    return extension


def parse_referral_capacity_extension(extension: Extension) -> int:
    """The daily capacity of one referral-capacity extension; ValueError says what is malformed."""
    per_day = _only_value(extension, "valueInteger", "referral-capacity")
    # bool is an int in Python, and True must not pass for a capacity of 1.
    if not isinstance(per_day, int) or isinstance(per_day, bool) or per_day < 0:
        raise ValueError(f"referral-capacity must be a whole number of referrals per day, 0 or more, not {per_day!r}")
    return per_day


def parse_accepting_referrals_extension(extension: Extension) -> bool:
    """Whether one accepting-referrals extension says yes; ValueError says what is malformed."""
    accepting = _only_value(extension, "valueBoolean", "accepting-referrals")
    if not isinstance(accepting, bool):
        raise ValueError(f"accepting-referrals must be true or false, not {accepting!r}")
    return accepting


def read_referral_capacity(service: dict[str, Any]) -> int | None:
    """The daily referral capacity of a HealthcareService, None when it has none; ValueError when malformed."""
    extension = _single(service, REFERRAL_CAPACITY_URL)
    return None if extension is None else parse_referral_capacity_extension(extension)


def read_accepting_referrals(service: dict[str, Any]) -> bool | None:
    """Whether a HealthcareService accepts referrals, None when it does not say; ValueError when malformed."""
    extension = _single(service, ACCEPTING_REFERRALS_URL)
    return None if extension is None else parse_accepting_referrals_extension(extension)
