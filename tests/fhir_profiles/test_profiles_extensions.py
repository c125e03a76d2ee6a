"""Building and reading Qilu's extensions, and refusing malformed ones."""

import pytest

from fhir_profiles.extensions import (
    CANONICAL_BASE,
    CAPABILITY_SYSTEM,
    DIVISION_CODE_URL,
    HOSPITAL_TIER_URL,
    MEDICAL_ALLIANCE_URL,
    division_code_extension,
    ehealth_card_status_extension,
    hospital_tier_extension,
    medical_alliance_extension,
    read_division_code,
    read_ehealth_card_status,
    read_hospital_tier,
    read_medical_alliance,
)


def test_urls_are_canonical():
    assert HOSPITAL_TIER_URL == "https://qilu.example.org/fhir/StructureDefinition/hospital-tier"
    assert DIVISION_CODE_URL.startswith(CANONICAL_BASE) and MEDICAL_ALLIANCE_URL.startswith(CANONICAL_BASE)
    assert CAPABILITY_SYSTEM == "https://qilu.example.org/fhir/CodeSystem/capability"


def test_an_organization_reads_back_what_was_written():
    org = {
        "resourceType": "Organization",
        "extension": [
            hospital_tier_extension(3, "甲"),
            division_code_extension("370102"),
            medical_alliance_extension("jinan-cardio-alliance"),
        ],
    }
    assert read_hospital_tier(org) == (3, "甲")
    assert read_division_code(org) == "370102"
    assert read_medical_alliance(org) == "jinan-cardio-alliance"


def test_hospital_tier_extension_shape():
    assert hospital_tier_extension(2, "乙") == {
        "url": HOSPITAL_TIER_URL,
        "extension": [{"url": "level", "valueInteger": 2}, {"url": "grade", "valueString": "乙"}],
    }


def test_absent_extensions_read_as_none():
    org = {"resourceType": "Organization"}
    assert read_hospital_tier(org) is None
    assert read_division_code(org) is None
    assert read_medical_alliance(org) is None
    assert read_ehealth_card_status({"resourceType": "Basic"}) is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: hospital_tier_extension(4, "甲"),
        lambda: hospital_tier_extension(0, "甲"),
        lambda: hospital_tier_extension(True, "甲"),
        lambda: hospital_tier_extension(3, "特"),
        lambda: hospital_tier_extension(3, "A"),
        lambda: division_code_extension("990102"),
        lambda: division_code_extension("37010"),
        lambda: medical_alliance_extension(""),
        lambda: medical_alliance_extension(" jinan "),
        lambda: ehealth_card_status_extension("lost"),
    ],
)
def test_builders_refuse_bad_values(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize(
    "tier",
    [
        {"url": HOSPITAL_TIER_URL, "extension": [{"url": "level", "valueInteger": 3}]},
        {"url": HOSPITAL_TIER_URL, "valueString": "三级甲等"},
        {
            "url": HOSPITAL_TIER_URL,
            "extension": [{"url": "level", "valueString": "3"}, {"url": "grade", "valueString": "甲"}],
        },
        {
            "url": HOSPITAL_TIER_URL,
            "extension": [
                {"url": "level", "valueInteger": 3},
                {"url": "grade", "valueString": "甲"},
                {"url": "rank", "valueString": "x"},
            ],
        },
    ],
)
def test_reading_a_malformed_tier_raises(tier):
    with pytest.raises(ValueError):
        read_hospital_tier({"resourceType": "Organization", "extension": [tier]})


def test_two_division_codes_are_not_read_as_one():
    org = {"extension": [division_code_extension("370102"), division_code_extension("370124")]}
    with pytest.raises(ValueError):
        read_division_code(org)


def test_card_status_round_trip():
    assert read_ehealth_card_status({"extension": [ehealth_card_status_extension("suspended")]}) == "suspended"
