"""The health record: FHIR R4 resources in MongoDB, the FHIR REST API, and e-health cards."""
