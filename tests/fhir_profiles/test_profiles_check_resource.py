"""check_resource: the province's rules on resources that the R4B models accept."""

import datetime as dt
import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_profiles.extensions import (
    CANONICAL_BASE,
    CAPABILITY_SYSTEM,
    DIVISION_CODE_URL,
    EHEALTH_CARD_STATUS_URL,
    HOSPITAL_TIER_URL,
    division_code_extension,
    ehealth_card_status_extension,
    hospital_tier_extension,
    medical_alliance_extension,
)
from fhir_profiles.identifiers import (
    EHEALTH_CARD_SYSTEM,
    NATIONAL_ID_SYSTEM,
    USCC_SYSTEM,
    make_national_id,
)
from fhir_profiles.profiles import (
    EHEALTH_CARD_CODE,
    EHEALTH_CARD_CODE_SYSTEM,
    EHEALTH_CARD_PROFILE_URL,
    ProfileIssue,
    check_resource,
    has_errors,
)
from fhir_profiles.valuesets import CONDITION_CLINICAL_SYSTEM, ICD10_SYSTEM

TODAY = dt.date(2025, 6, 1)
NATIONAL_ID = "37010219850307123X"  # male, born 1985-03-07


def accepted(resource):
    """The resource, after making sure the R4B model accepts it as the API will have."""
    resource_type = resource["resourceType"]
    model = getattr(importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}"), resource_type)
    model.model_validate(resource)
    return resource


def check(resource):
    return check_resource(accepted(resource), today=TODAY)


def patient(**fields):
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}],
        "name": [{"text": "张三", "family": "张", "given": ["三"]}],
        "gender": "male",
        "birthDate": "1985-03-07",
        **fields,
    }


def expressions(issues):
    return [issue.expression for issue in issues]


def test_a_good_patient_has_no_issues():
    assert check(patient()) == []


@pytest.mark.parametrize("birth_date", ["1985", "1985-03"])
def test_a_partial_birth_date_that_agrees_is_fine(birth_date):
    assert check(patient(birthDate=birth_date)) == []


def test_a_bad_gender_code_names_the_element():
    issues = check(patient(gender="man"))
    assert [(i.severity, i.code, i.expression) for i in issues] == [("error", "code-invalid", "Patient.gender")]
    assert "'man'" in issues[0].diagnostics


def test_a_birth_date_that_disagrees_names_both_elements():
    [issue] = check(patient(birthDate="1985-03-08"))
    assert issue.code == "business-rule"
    assert issue.expressions == ["Patient.identifier[0].value", "Patient.birthDate"]
    assert NATIONAL_ID not in issue.diagnostics


def test_a_sex_that_disagrees_names_both_elements():
    [issue] = check(patient(gender="female"))
    assert issue.code == "business-rule"
    assert issue.expressions == ["Patient.identifier[0].value", "Patient.gender"]


@pytest.mark.parametrize("gender", ["other", "unknown"])
def test_other_and_unknown_gender_are_not_held_against_the_number(gender):
    assert check(patient(gender=gender)) == []


@pytest.mark.parametrize(
    "value", ["37010219850307123Y", "370102198503071230", "37010219850307123", "370102209901011233"]
)
def test_an_invalid_national_id_is_an_error_on_its_value_and_is_not_echoed(value):
    issues = check(patient(identifier=[{"system": "urn:other", "value": "x"}, {"system": NATIONAL_ID_SYSTEM, "value": value}]))
    assert [(i.code, i.expression) for i in issues] == [("value", "Patient.identifier[1].value")]
    assert value not in issues[0].diagnostics


def test_a_lower_case_x_is_an_error_because_it_would_make_a_second_key():
    [issue] = check(patient(identifier=[{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID.lower()}]))
    assert issue.expression == "Patient.identifier[0].value"


def test_one_person_has_one_national_id():
    other = make_national_id("370102", dt.date(1985, 3, 7), 7, "male")
    issues = check(
        patient(identifier=[{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}, {"system": NATIONAL_ID_SYSTEM, "value": other}])
    )
    assert expressions(issues) == ["Patient.identifier"]


def test_a_practitioner_national_id_is_checked_too():
    practitioner = {
        "resourceType": "Practitioner",
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}],
        "gender": "female",
    }
    assert expressions(check(practitioner)) == ["Practitioner.identifier[0].value, Practitioner.gender"]


@given(st.dates(min_value=dt.date(1890, 1, 1), max_value=TODAY), st.integers(0, 499), st.sampled_from(["male", "female"]))
def test_a_made_number_always_agrees_with_what_it_was_made_from(birth_date, sequence, sex):
    value = make_national_id("370124", birth_date, sequence, sex)
    resource = patient(identifier=[{"system": NATIONAL_ID_SYSTEM, "value": value}], gender=sex, birthDate=birth_date.isoformat())
    assert check_resource(resource, today=TODAY) == []
    flipped = check_resource({**resource, "gender": "female" if sex == "male" else "male"}, today=TODAY)
    assert expressions(flipped) == ["Patient.identifier[0].value, Patient.gender"]
    assert all(value not in issue.diagnostics for issue in flipped)


def test_diagnostics_mask_anything_shaped_like_a_national_id():
    issue = ProfileIssue("error", "value", "Patient.name", f"saw {NATIONAL_ID} here")
    assert issue.diagnostics == "saw 370102********123X here"


def test_issue_as_operation_outcome_issue():
    issue = ProfileIssue("error", "business-rule", "Patient.identifier[0].value, Patient.gender", "x")
    assert issue.as_operation_outcome_issue() == {
        "severity": "error",
        "code": "business-rule",
        "diagnostics": "x",
        "expression": ["Patient.identifier[0].value", "Patient.gender"],
    }


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Task", "status": "done", "intent": "order"}, "Task.status"),
        ({"resourceType": "Task", "status": "requested", "intent": "referral"}, "Task.intent"),
        (
            {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "high",
             "subject": {"reference": "Patient/1"}},
            "ServiceRequest.priority",
        ),
        ({"resourceType": "Encounter", "status": "done", "class": {"code": "AMB"}}, "Encounter.status"),
        (
            {"resourceType": "Appointment", "status": "booked",
             "participant": [{"status": "accepted"}, {"status": "maybe"}]},
            "Appointment.participant[1].status",
        ),
        (
            {"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"}, "category": ["food", "pollen"]},
            "AllergyIntolerance.category[1]",
        ),
        (
            {"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "x"}],
             "provision": {"type": "allow"}},
            "Consent.provision.type",
        ),
    ],
)
def test_bad_codes_name_their_element(resource, expression):
    issues = check(resource)
    assert [(i.code, i.expression) for i in issues] == [("code-invalid", expression)]


def condition(**fields):
    return {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, **fields}


def test_condition_status_codings_are_checked():
    good = {"coding": [{"system": CONDITION_CLINICAL_SYSTEM, "code": "active"}]}
    assert check(condition(clinicalStatus=good)) == []
    bad = {"coding": [{"system": "urn:x", "code": "active"}, {"system": CONDITION_CLINICAL_SYSTEM, "code": "ongoing"}]}
    assert expressions(check(condition(clinicalStatus=bad))) == ["Condition.clinicalStatus.coding[1].code"]
    no_system = {"coding": [{"code": "active"}]}
    assert expressions(check(condition(clinicalStatus=no_system))) == ["Condition.clinicalStatus"]


def test_icd10_codings_are_checked_wherever_they_are():
    code = {"coding": [{"system": ICD10_SYSTEM, "code": "I63.9"}, {"system": ICD10_SYSTEM, "code": "stroke"}]}
    issues = check(condition(code=code))
    assert [(i.code, i.expression) for i in issues] == [("code-invalid", "Condition.code.coding[1].code")]
    request = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"},
        "reasonCode": [{"coding": [{"system": ICD10_SYSTEM, "code": "I219"}]}],
    }
    assert expressions(check(request)) == ["ServiceRequest.reasonCode[0].coding[0].code"]


def test_capabilities_must_be_known():
    service = {
        "resourceType": "HealthcareService",
        "characteristic": [{"coding": [{"system": CAPABILITY_SYSTEM, "code": "pci"}]},
                           {"coding": [{"system": CAPABILITY_SYSTEM, "code": "teleportation"}]}],
    }
    assert expressions(check(service)) == ["HealthcareService.characteristic[1].coding[0].code"]


def organization(**fields):
    return {
        "resourceType": "Organization",
        "name": "山东大学齐鲁医院",
        "identifier": [{"system": USCC_SYSTEM, "value": "91350100M000100Y43"}],
        "extension": [hospital_tier_extension(3, "甲"), division_code_extension("370102"), medical_alliance_extension("a1")],
        **fields,
    }


def test_a_good_organization_has_no_issues():
    assert check(organization()) == []


@pytest.mark.parametrize("value", ["91350100M000100Y44", "91350100M000100Y4", "91350100m000100y43"])
def test_a_bad_credit_code_is_an_error_on_its_value(value):
    issues = check(organization(identifier=[{"system": USCC_SYSTEM, "value": value}]))
    assert [(i.code, i.expression) for i in issues] == [("value", "Organization.identifier[0].value")]


@pytest.mark.parametrize(
    ("extension", "expression"),
    [
        ({"url": HOSPITAL_TIER_URL, "extension": [{"url": "level", "valueInteger": 4}, {"url": "grade", "valueString": "甲"}]},
         "Organization.extension[0]"),
        ({"url": HOSPITAL_TIER_URL, "extension": [{"url": "level", "valueInteger": 3}, {"url": "grade", "valueString": "特"}]},
         "Organization.extension[0]"),
        ({"url": DIVISION_CODE_URL, "valueCode": "990101"}, "Organization.extension[0]"),
        ({"url": DIVISION_CODE_URL, "valueString": "370102"}, "Organization.extension[0]"),
        ({"url": CANONICAL_BASE + "hospital-teir", "valueString": "3甲"}, "Organization.extension[0].url"),
    ],
)
def test_malformed_extensions_are_errors_where_they_are(extension, expression):
    issues = check(organization(extension=[extension]))
    assert [(i.code, i.expression) for i in issues] == [("value", expression)]


def test_two_tiers_on_one_organization():
    issues = check(organization(extension=[hospital_tier_extension(3, "甲"), hospital_tier_extension(2, "甲")]))
    assert expressions(issues) == ["Organization.extension"]


def test_extensions_on_elements_are_checked_too():
    location = {"resourceType": "Location", "address": {"extension": [{"url": DIVISION_CODE_URL, "valueCode": "37"}]}}
    assert expressions(check(location)) == ["Location.address.extension[0]"]


def test_contained_resources_are_checked_at_their_place():
    resource = organization(contained=[patient(gender="女")])
    assert expressions(check(resource)) == ["Organization.contained[0].gender"]


def card(**fields):
    return {
        "resourceType": "Basic",
        "meta": {"profile": [EHEALTH_CARD_PROFILE_URL]},
        "identifier": [{"system": EHEALTH_CARD_SYSTEM, "value": "E3701000000000001"}],
        "extension": [ehealth_card_status_extension("active")],
        "code": {"coding": [{"system": EHEALTH_CARD_CODE_SYSTEM, "code": EHEALTH_CARD_CODE}]},
        "subject": {"reference": "Patient/p1"},
        "author": {"reference": "Organization/o1"},
        "created": "2025-05-01",
        **fields,
    }


def test_a_good_card_has_no_issues():
    assert check(card()) == []


@pytest.mark.parametrize(
    ("fields", "code", "expression"),
    [
        ({"identifier": [{"system": "urn:x", "value": "1"}]}, "required", "Basic.identifier"),
        ({"extension": []}, "required", "Basic.extension"),
        ({"extension": [{"url": EHEALTH_CARD_STATUS_URL, "valueCode": "lost"}]}, "value", "Basic.extension[0]"),
        ({"subject": {"reference": "Practitioner/d1"}}, "invalid", "Basic.subject"),
        ({"subject": {"display": "张三"}}, "invalid", "Basic.subject"),
        ({"author": {"reference": "Patient/p1"}}, "invalid", "Basic.author"),
        ({"code": {"text": "card"}}, "value", "Basic.code"),
    ],
)
def test_a_card_missing_its_parts(fields, code, expression):
    issues = check(card(**fields))
    assert [(i.code, i.expression) for i in issues] == [(code, expression)]
    assert has_errors(issues)


def test_a_card_without_subject_is_missing_it():
    resource = card()
    del resource["subject"]
    assert [(i.code, i.expression) for i in check(resource)] == [("required", "Basic.subject")]


def test_a_basic_that_does_not_claim_the_card_profile_is_left_alone():
    assert check({"resourceType": "Basic", "code": {"text": "note"}}) == []


def test_has_errors():
    assert not has_errors([ProfileIssue("warning", "value", "Patient", "w")])
    assert has_errors([ProfileIssue("warning", "value", "Patient", "w"), ProfileIssue("error", "value", "Patient", "e")])
