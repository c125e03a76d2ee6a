"""The referral-capacity and accepting-referrals extensions of a HealthcareService: built, read, refused."""

import pytest
from fhir.resources.R4B.healthcareservice import HealthcareService
from fhir.resources.R4B.structuredefinition import StructureDefinition

from fhir_profiles.extensions import (
    ACCEPTING_REFERRALS_URL,
    CANONICAL_BASE,
    REFERRAL_CAPACITY_URL,
    accepting_referrals_extension,
    read_accepting_referrals,
    read_referral_capacity,
    referral_capacity_extension,
)
from fhir_profiles.profiles import check_resource
from fhir_profiles.structure_definitions import load_structure_definitions


def service(*extensions):
    return {"resourceType": "HealthcareService", "id": "hs-1", "active": True, "extension": list(extensions)}


def test_urls_are_canonical():
    assert REFERRAL_CAPACITY_URL == CANONICAL_BASE + "referral-capacity"
    assert ACCEPTING_REFERRALS_URL == CANONICAL_BASE + "accepting-referrals"


def test_shapes():
    assert referral_capacity_extension(20) == {"url": REFERRAL_CAPACITY_URL, "valueInteger": 20}
    assert accepting_referrals_extension(False) == {"url": ACCEPTING_REFERRALS_URL, "valueBoolean": False}


@pytest.mark.parametrize(("capacity", "accepting"), [(0, False), (1, True), (20, True), (10_000, False)])
def test_a_service_reads_back_what_was_written(capacity, accepting):
    resource = service(referral_capacity_extension(capacity), accepting_referrals_extension(accepting))
    assert read_referral_capacity(resource) == capacity
    assert read_accepting_referrals(resource) is accepting
    # The R4B model takes them as ordinary extensions.
    HealthcareService.model_validate(resource)


def test_absent_extensions_read_as_none():
    assert read_referral_capacity(service()) is None
    assert read_accepting_referrals(service()) is None
    assert read_referral_capacity({"resourceType": "HealthcareService"}) is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: referral_capacity_extension(-1),
        lambda: referral_capacity_extension(True),  # a bool is an int in Python, not a capacity
        lambda: referral_capacity_extension(2.5),
        lambda: referral_capacity_extension("20"),
        lambda: referral_capacity_extension(None),
        lambda: accepting_referrals_extension(1),
        lambda: accepting_referrals_extension("true"),
        lambda: accepting_referrals_extension(None),
    ],
)
def test_builders_refuse_bad_values(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize(
    "resource",
    [
        service({"url": REFERRAL_CAPACITY_URL, "valueString": "20"}),
        service({"url": REFERRAL_CAPACITY_URL}),
        service({"url": REFERRAL_CAPACITY_URL, "valueInteger": 5, "valueBoolean": True}),
        service({"url": REFERRAL_CAPACITY_URL, "valueInteger": 5, "extension": [{"url": "x", "valueInteger": 1}]}),
        service(referral_capacity_extension(5), referral_capacity_extension(6)),
    ],
)
def test_malformed_capacity_is_refused_on_reading(resource):
    with pytest.raises(ValueError):
        read_referral_capacity(resource)


@pytest.mark.parametrize(
    "resource",
    [
        service({"url": ACCEPTING_REFERRALS_URL, "valueCode": "yes"}),
        service({"url": ACCEPTING_REFERRALS_URL, "valueBoolean": "false"}),
        service(accepting_referrals_extension(True), accepting_referrals_extension(False)),
    ],
)
def test_malformed_accepting_is_refused_on_reading(resource):
    with pytest.raises(ValueError):
        read_accepting_referrals(resource)


@pytest.mark.parametrize(("id_", "url", "value_type"), [
    ("referral-capacity", REFERRAL_CAPACITY_URL, "integer"),
    ("accepting-referrals", ACCEPTING_REFERRALS_URL, "boolean"),
])
def test_each_has_a_structure_definition_like_the_others(id_, url, value_type):
    definition = load_structure_definitions()[id_]
    model = StructureDefinition.model_validate(definition)
    assert model.url == url and model.type == "Extension" and model.status == "active"
    assert model.fhirVersion == "4.3.0" and model.derivation == "constraint"
    assert [c.expression for c in model.context] == ["HealthcareService"]
    elements = {e.id: e for e in model.differential.element}
    assert elements["Extension.url"].fixedUri == url
    assert [t.code for t in elements["Extension.value[x]"].type] == [value_type]
    assert elements["Extension.extension"].max == "0"
    if value_type == "integer":
        assert elements["Extension.value[x]"].minValueInteger == 0


def test_the_province_check_accepts_a_service_carrying_them():
    resource = service(referral_capacity_extension(20), accepting_referrals_extension(True))
    assert check_resource(resource) == []
