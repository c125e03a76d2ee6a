"""The StructureDefinitions Qilu serves: valid R4B resources that describe the constants the code uses."""

import json
from importlib import resources

import pytest
from fhir.resources.R4B.structuredefinition import StructureDefinition

from fhir_profiles.extensions import (
    CANONICAL_BASE,
    DIVISION_CODE_URL,
    EHEALTH_CARD_STATUS_URL,
    HOSPITAL_TIER_URL,
    MEDICAL_ALLIANCE_URL,
)
from fhir_profiles.identifiers import EHEALTH_CARD_SYSTEM, NATIONAL_ID_SYSTEM, USCC_SYSTEM
from fhir_profiles.profiles import (
    EHEALTH_CARD_PROFILE_URL,
    QILU_ORGANIZATION_PROFILE_URL,
    QILU_PATIENT_PROFILE_URL,
)
from fhir_profiles.structure_definitions import load_structure_definitions

EXPECTED_IDS = {
    "qilu-patient",
    "qilu-organization",
    "hospital-tier",
    "division-code",
    "medical-alliance",
    "ehealth-card",
    "ehealth-card-status",
    "referral-capacity",
    "accepting-referrals",
}
DEFINITIONS = load_structure_definitions()


def test_every_expected_definition_is_there():
    assert set(DEFINITIONS) == EXPECTED_IDS


def test_the_files_ship_inside_the_package():
    folder = resources.files("fhir_profiles") / "structure_definitions_json"
    assert {entry.name for entry in folder.iterdir() if entry.name.endswith(".json")} == {
        f"{id_}.json" for id_ in EXPECTED_IDS
    }


@pytest.mark.parametrize("id_", sorted(EXPECTED_IDS))
def test_each_definition_is_a_valid_r4b_structure_definition(id_):
    definition = DEFINITIONS[id_]
    model = StructureDefinition.model_validate(definition)
    assert model.id == id_
    assert model.url == CANONICAL_BASE + id_
    assert model.status == "active"
    assert model.fhirVersion == "4.3.0"
    assert model.derivation == "constraint"
    assert model.differential and model.differential.element
    assert model.snapshot is None
    for element in model.differential.element:
        assert element.id.split(".")[0] == model.type


def test_the_model_check_can_fail():
    broken = dict(DEFINITIONS["hospital-tier"])
    del broken["status"]
    with pytest.raises(ValueError):
        StructureDefinition.model_validate(broken)


@pytest.mark.parametrize(
    ("url", "type_"),
    [
        (HOSPITAL_TIER_URL, "Extension"),
        (DIVISION_CODE_URL, "Extension"),
        (MEDICAL_ALLIANCE_URL, "Extension"),
        (EHEALTH_CARD_STATUS_URL, "Extension"),
        (QILU_PATIENT_PROFILE_URL, "Patient"),
        (QILU_ORGANIZATION_PROFILE_URL, "Organization"),
        (EHEALTH_CARD_PROFILE_URL, "Basic"),
    ],
)
def test_the_code_constants_name_served_definitions(url, type_):
    by_url = {definition["url"]: definition for definition in DEFINITIONS.values()}
    assert by_url[url]["type"] == type_


def _fixed_uris(definition):
    return {element.get("fixedUri") for element in definition["differential"]["element"]}


def test_profiles_fix_the_identifier_systems_and_extension_urls_the_code_checks():
    assert NATIONAL_ID_SYSTEM in _fixed_uris(DEFINITIONS["qilu-patient"])
    assert USCC_SYSTEM in _fixed_uris(DEFINITIONS["qilu-organization"])
    assert EHEALTH_CARD_SYSTEM in _fixed_uris(DEFINITIONS["ehealth-card"])
    assert HOSPITAL_TIER_URL in _fixed_uris(DEFINITIONS["hospital-tier"])
    profiles = {
        profile
        for element in DEFINITIONS["qilu-organization"]["differential"]["element"]
        for type_ in element.get("type", [])
        for profile in type_.get("profile", [])
    }
    assert profiles == {HOSPITAL_TIER_URL, DIVISION_CODE_URL, MEDICAL_ALLIANCE_URL}


def test_callers_get_their_own_copy():
    first = load_structure_definitions()
    first["qilu-patient"]["status"] = "retired"
    assert load_structure_definitions()["qilu-patient"]["status"] == "active"


def test_the_json_is_utf8_with_the_chinese_titles_readable():
    text = (resources.files("fhir_profiles") / "structure_definitions_json" / "hospital-tier.json").read_text("utf-8")
    assert "医院等级" in text
    assert json.loads(text)["id"] == "hospital-tier"
