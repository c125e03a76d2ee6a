"""The StructureDefinitions Qilu publishes, read from the JSON files shipped in structure_definitions_json/."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

STRUCTURE_DEFINITIONS_FOLDER = "structure_definitions_json"


@functools.cache
def _read_all() -> dict[str, dict[str, Any]]:
    folder = resources.files("fhir_profiles").joinpath(STRUCTURE_DEFINITIONS_FOLDER)
    found: dict[str, dict[str, Any]] = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".json"):
            continue
        definition = json.loads(entry.read_text(encoding="utf-8"))
        # The file name is the id it is served under; a mismatch would serve the wrong resource.
        if definition.get("id") != entry.name.removesuffix(".json"):
            raise RuntimeError(f"{entry.name} holds StructureDefinition id {definition.get('id')!r}")
        found[definition["id"]] = definition
    return found


def load_structure_definitions() -> dict[str, dict[str, Any]]:
    """Every Qilu StructureDefinition by id (read from disk once; each call gets its own copy)."""
    # A copy, so that a caller adding meta or text to what it serves cannot change it for others.
    return copy.deepcopy(_read_all())
