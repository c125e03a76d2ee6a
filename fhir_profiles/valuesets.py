"""The code sets FHIR binds as required that the R4B models accept any string for, and ICD-10."""

from __future__ import annotations

import re

ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"

CONDITION_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


# FHIR R4B (4.3.0) value sets, by name, as the specification lists their codes.
ADMINISTRATIVE_GENDER = _codes("male female other unknown")
REQUEST_PRIORITY = _codes("routine urgent asap stat")
REQUEST_STATUS = _codes("draft active on-hold revoked completed entered-in-error unknown")
REQUEST_INTENT = _codes(
    "proposal plan directive order original-order reflex-order filler-order instance-order option"
)
EVENT_STATUS = _codes(
    "preparation in-progress not-done on-hold stopped completed entered-in-error unknown"
)
IDENTIFIER_USE = _codes("usual official temp secondary old")
NAME_USE = _codes("usual official temp nickname anonymous old maiden")
CONTACT_POINT_SYSTEM = _codes("phone fax email pager url sms other")
CONTACT_POINT_USE = _codes("home work temp old mobile")
ADDRESS_USE = _codes("home work temp old billing")
ADDRESS_TYPE = _codes("postal physical both")
TASK_STATUS = _codes(
    "draft requested received accepted rejected ready cancelled in-progress on-hold failed "
    "completed entered-in-error"
)
TASK_INTENT = _codes(
    "unknown proposal plan order original-order reflex-order filler-order instance-order option"
)
OBSERVATION_STATUS = _codes(
    "registered preliminary final amended corrected cancelled entered-in-error unknown"
)
CONDITION_CLINICAL = _codes("active recurrence relapse inactive remission resolved")
CONDITION_VERIFICATION = _codes(
    "unconfirmed provisional differential confirmed refuted entered-in-error"
)
ENCOUNTER_STATUS = _codes(
    "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown"
)
CONSENT_STATUS = _codes("draft proposed active rejected inactive entered-in-error")
CONSENT_PROVISION_TYPE = _codes("deny permit")
APPOINTMENT_STATUS = _codes(
    "proposed pending booked arrived fulfilled cancelled noshow entered-in-error checked-in "
    "waitlist"
)
PARTICIPANT_REQUIRED = _codes("required optional information-only")
PARTICIPATION_STATUS = _codes("accepted declined tentative needs-action")
COMPOSITION_STATUS = _codes("preliminary final amended entered-in-error")
COMPOSITION_ATTESTATION_MODE = _codes("personal professional legal official")
DOCUMENT_REFERENCE_STATUS = _codes("current superseded entered-in-error")
DOCUMENT_RELATIONSHIP_TYPE = _codes("replaces transforms signs appends")
MEDICATION_REQUEST_STATUS = _codes(
    "active on-hold cancelled completed entered-in-error stopped draft unknown"
)
MEDICATION_REQUEST_INTENT = _codes(
    "proposal plan order original-order reflex-order filler-order instance-order option"
)
IMMUNIZATION_STATUS = _codes("completed entered-in-error not-done")
DIAGNOSTIC_REPORT_STATUS = _codes(
    "registered partial preliminary final amended corrected appended cancelled "
    "entered-in-error unknown"
)
ALLERGY_CLINICAL = _codes("active inactive resolved")
ALLERGY_VERIFICATION = _codes("unconfirmed confirmed refuted entered-in-error")
ALLERGY_TYPE = _codes("allergy intolerance")
ALLERGY_CATEGORY = _codes("food medication environment biologic")
ALLERGY_CRITICALITY = _codes("low high unable-to-assess")
CARE_PLAN_INTENT = _codes("proposal plan order option")
CARE_PLAN_ACTIVITY_STATUS = _codes(
    "not-started scheduled in-progress on-hold completed cancelled stopped unknown "
    "entered-in-error"
)
LOCATION_STATUS = _codes("active suspended inactive")
BUNDLE_TYPE = _codes(
    "document message transaction transaction-response batch batch-response history "
    "searchset collection"
)
HTTP_VERB = _codes("GET HEAD POST PUT DELETE PATCH")
AUDIT_EVENT_ACTION = _codes("C R U D E")
AUDIT_EVENT_OUTCOME = _codes("0 4 8 12")
LINK_TYPE = _codes("replaced-by replaces refer seealso")


def _person_elements(resource_type: str) -> dict[tuple[str, str], frozenset[str]]:
    # The datatypes every person or organisation carries; the models leave their codes open too.
    return {
        (resource_type, "identifier.use"): IDENTIFIER_USE,
        (resource_type, "telecom.system"): CONTACT_POINT_SYSTEM,
        (resource_type, "telecom.use"): CONTACT_POINT_USE,
        (resource_type, "address.use"): ADDRESS_USE,
        (resource_type, "address.type"): ADDRESS_TYPE,
    }


# (resourceType, dotted element path) -> allowed codes. A path walks through lists, so
# "participant.status" means every Appointment.participant[i].status.
REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    **_person_elements("Patient"),
    ("Patient", "gender"): ADMINISTRATIVE_GENDER,
    ("Patient", "name.use"): NAME_USE,
    ("Patient", "contact.gender"): ADMINISTRATIVE_GENDER,
    ("Patient", "link.type"): LINK_TYPE,
    **_person_elements("Practitioner"),
    ("Practitioner", "gender"): ADMINISTRATIVE_GENDER,
    ("Practitioner", "name.use"): NAME_USE,
    ("RelatedPerson", "gender"): ADMINISTRATIVE_GENDER,
    **_person_elements("Organization"),
    ("Organization", "contact.telecom.system"): CONTACT_POINT_SYSTEM,
    ("Location", "status"): LOCATION_STATUS,
    ("Task", "status"): TASK_STATUS,
    ("Task", "intent"): TASK_INTENT,
    ("Task", "priority"): REQUEST_PRIORITY,
    ("ServiceRequest", "status"): REQUEST_STATUS,
    ("ServiceRequest", "intent"): REQUEST_INTENT,
    ("ServiceRequest", "priority"): REQUEST_PRIORITY,
    ("Observation", "status"): OBSERVATION_STATUS,
    ("Condition", "clinicalStatus"): CONDITION_CLINICAL,
    ("Condition", "verificationStatus"): CONDITION_VERIFICATION,
    ("Encounter", "status"): ENCOUNTER_STATUS,
    ("Encounter", "statusHistory.status"): ENCOUNTER_STATUS,
    ("Consent", "status"): CONSENT_STATUS,
    ("Consent", "provision.type"): CONSENT_PROVISION_TYPE,
    ("Appointment", "status"): APPOINTMENT_STATUS,
    ("Appointment", "participant.required"): PARTICIPANT_REQUIRED,
    ("Appointment", "participant.status"): PARTICIPATION_STATUS,
    ("Composition", "status"): COMPOSITION_STATUS,
    ("Composition", "attester.mode"): COMPOSITION_ATTESTATION_MODE,
    ("Composition", "relatesTo.code"): DOCUMENT_RELATIONSHIP_TYPE,
    ("DocumentReference", "status"): DOCUMENT_REFERENCE_STATUS,
    ("DocumentReference", "docStatus"): COMPOSITION_STATUS,
    ("DocumentReference", "relatesTo.code"): DOCUMENT_RELATIONSHIP_TYPE,
    ("MedicationRequest", "status"): MEDICATION_REQUEST_STATUS,
    ("MedicationRequest", "intent"): MEDICATION_REQUEST_INTENT,
    ("MedicationRequest", "priority"): REQUEST_PRIORITY,
    ("Procedure", "status"): EVENT_STATUS,
    ("Immunization", "status"): IMMUNIZATION_STATUS,
    ("DiagnosticReport", "status"): DIAGNOSTIC_REPORT_STATUS,
    ("AllergyIntolerance", "clinicalStatus"): ALLERGY_CLINICAL,
    ("AllergyIntolerance", "verificationStatus"): ALLERGY_VERIFICATION,
    ("AllergyIntolerance", "type"): ALLERGY_TYPE,
    ("AllergyIntolerance", "category"): ALLERGY_CATEGORY,
    ("AllergyIntolerance", "criticality"): ALLERGY_CRITICALITY,
    ("CarePlan", "status"): REQUEST_STATUS,
    ("CarePlan", "intent"): CARE_PLAN_INTENT,
    ("CarePlan", "activity.detail.status"): CARE_PLAN_ACTIVITY_STATUS,
    ("Communication", "status"): EVENT_STATUS,
    ("Communication", "priority"): REQUEST_PRIORITY,
    ("CommunicationRequest", "status"): REQUEST_STATUS,
    ("CommunicationRequest", "priority"): REQUEST_PRIORITY,
    ("Bundle", "type"): BUNDLE_TYPE,
    ("Bundle", "entry.request.method"): HTTP_VERB,
    ("AuditEvent", "action"): AUDIT_EVENT_ACTION,
    ("AuditEvent", "outcome"): AUDIT_EVENT_OUTCOME,
}

# The REQUIRED_CODES entries that are CodeableConcepts: their codes are read from the
# codings of this system, and at least one such coding must be there.
CODEABLE_CONCEPT_SYSTEMS: dict[tuple[str, str], str] = {
    ("Condition", "clinicalStatus"): CONDITION_CLINICAL_SYSTEM,
    ("Condition", "verificationStatus"): CONDITION_VERIFICATION_SYSTEM,
    ("AllergyIntolerance", "clinicalStatus"): ALLERGY_CLINICAL_SYSTEM,
    ("AllergyIntolerance", "verificationStatus"): ALLERGY_VERIFICATION_SYSTEM,
}

# Qilu's own capability codes (HealthcareService.characteristic, system CAPABILITY_SYSTEM).
CAPABILITY_CODES: dict[str, str] = {
    "pci": "primary percutaneous coronary intervention (STEMI)",
    "stroke-thrombolysis": "intravenous thrombolysis for ischaemic stroke",
    "thrombectomy": "mechanical thrombectomy",
    "dialysis": "haemodialysis",
    "neonatal-icu": "neonatal intensive care",
    "chemotherapy": "oncology day chemotherapy",
    "rehab-stroke": "post-stroke rehabilitation",
    "chronic-care": "hypertension and diabetes follow-up",
}

# Category letter, two digits, then an optional subdivision. The national clinical edition
# (国家临床版) writes its placeholder as a lower-case x, as in I10.x00, so x is allowed there.
_ICD10_CODE = re.compile(r"[A-Z][0-9]{2}(\.[0-9A-Zx]{1,4})?")


def is_icd10_code(code: str) -> bool:
    """True when `code` is shaped like an ICD-10 code (I10, E11, I63.9, I21.0)."""
    return isinstance(code, str) and _ICD10_CODE.fullmatch(code) is not None
