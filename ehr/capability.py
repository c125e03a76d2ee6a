"""The CapabilityStatement at /fhir/metadata, derived from what the record really supports."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ehr.models import FHIR_VERSION, READ_ONLY_TYPES, RESOURCE_TYPES
from ehr.search import SEARCH_PARAMETERS
from fhir_profiles.structure_definitions import load_structure_definitions

_READ_INTERACTIONS = ("read", "vread", "history-instance", "history-type", "search-type")
_WRITE_INTERACTIONS = ("create", "update", "delete")


def _profiles_by_type() -> dict[str, list[str]]:
    by_type: dict[str, list[str]] = {}
    for definition in load_structure_definitions().values():
        if definition.get("kind") == "resource" and definition.get("type") in RESOURCE_TYPES:
            by_type.setdefault(definition["type"], []).append(definition["url"])
    return by_type


@lru_cache
def _resources() -> list[dict[str, Any]]:
    profiles = _profiles_by_type()
    resources = []
    for resource_type in RESOURCE_TYPES:
        params = SEARCH_PARAMETERS.get(resource_type, {})
        interactions = _READ_INTERACTIONS if resource_type in READ_ONLY_TYPES else \
            _READ_INTERACTIONS + _WRITE_INTERACTIONS
        reference_params = [name for name, p in params.items() if p.type == "reference"]
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": resource_type not in READ_ONLY_TYPES,
            "conditionalCreate": resource_type not in READ_ONLY_TYPES,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchInclude": [f"{resource_type}:{name}" for name in reference_params],
            "searchRevInclude": sorted(
                f"{source}:{name}" for source, source_params in SEARCH_PARAMETERS.items()
                for name, p in source_params.items()
                if p.type == "reference" and (not p.targets or resource_type in p.targets)),
            "searchParam": [{"name": name, "type": p.type, "documentation": p.description}
                            for name, p in params.items()],
        }
        if resource_type in profiles:
            entry["supportedProfile"] = profiles[resource_type]
        if resource_type == "Patient":
            entry["operation"] = [{"name": "everything",
                                   "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                                  {"name": "export",
                                   "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}]
        resources.append(entry)
    # The province's profiles and extensions are served read-only at /fhir/StructureDefinition/{id}.
    resources.append({"type": "StructureDefinition", "interaction": [{"code": "read"}],
                      "documentation": "Qilu's profiles and extensions: "
                                       + ", ".join(sorted(load_structure_definitions()))})
    return resources


def capability_statement(base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-27",
        "publisher": "Qilu",
        "kind": "instance",
        "software": {"name": "Qilu", "version": "0.1.0"},
        "implementation": {"description": "Qilu FHIR record server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": _resources(),
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "searchParam": [
                {"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"},
                {"name": "_count", "type": "number"}, {"name": "_sort", "type": "string"},
                {"name": "_include", "type": "string"}, {"name": "_revinclude", "type": "string"},
                {"name": "_summary", "type": "string"}, {"name": "_elements", "type": "string"},
            ],
        }],
    }
