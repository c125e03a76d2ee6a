"""The code sets against what the R4B models themselves list, and the ICD-10 shape."""

import importlib

import pytest

from fhir_profiles.valuesets import CODEABLE_CONCEPT_SYSTEMS, REQUIRED_CODES, is_icd10_code


def _model_class(resource_type):
    return getattr(importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}"), resource_type)


TOP_LEVEL = sorted(key for key in REQUIRED_CODES if "." not in key[1])


@pytest.mark.parametrize("key", TOP_LEVEL, ids=["/".join(key) for key in TOP_LEVEL])
def test_codes_agree_with_the_enum_values_the_models_list(key):
    resource_type, element = key
    field = _model_class(resource_type).model_fields[element]
    listed = (field.json_schema_extra or {}).get("enum_values", [])
    # The models list a value set whole, or its first few codes followed by "+".
    if "+" in listed:
        assert set(listed) - {"+"} <= REQUIRED_CODES[key]
    elif listed:
        assert set(listed) == REQUIRED_CODES[key]


def test_the_listed_elements_and_codes():
    assert REQUIRED_CODES[("Patient", "gender")] == {"male", "female", "other", "unknown"}
    assert "in-progress" in REQUIRED_CODES[("Task", "status")]
    assert "in-progress" not in REQUIRED_CODES[("ServiceRequest", "status")]
    assert REQUIRED_CODES[("ServiceRequest", "priority")] == {"routine", "urgent", "asap", "stat"}
    assert set(CODEABLE_CONCEPT_SYSTEMS) <= set(REQUIRED_CODES)
    assert CODEABLE_CONCEPT_SYSTEMS[("Condition", "clinicalStatus")] == (
        "http://terminology.hl7.org/CodeSystem/condition-clinical"
    )


@pytest.mark.parametrize("code", ["I10", "E11", "I63.9", "I21.0", "E11.65", "C34.1", "U07.1", "I10.x00"])
def test_icd10_codes(code):
    assert is_icd10_code(code)


@pytest.mark.parametrize("code", ["i10", "I1", "110", "I10.", "I10.12345", "II0", "I10 ", "I63-9", "", None, 10])
def test_not_icd10_codes(code):
    assert not is_icd10_code(code)
