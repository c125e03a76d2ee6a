"""Search indexing and query compilation, checked by which stored documents a filter matches."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehr import search
from ehr.search import DATE_SLOTS, OPEN_HI, OPEN_LO, index_resource, parse_search

NOW = datetime(2024, 6, 1, 12, 0, 0)
ALLOWED_OPERATORS = {"$and", "$or", "$nor", "$not", "$in", "$nin", "$ne", "$gt", "$gte", "$lt", "$lte",
                     "$exists", "$regex", "$options"}


# --- a tiny MongoDB matcher: just the operators search.py may emit ----------------------------------
# Arrays follow MongoDB: a path through an array reaches every element's field, a numeric segment
# picks one element, and each operator of {a: {$gte: x, $lte: y}} may be met by a different element.


def _resolve(node: Any, parts: list[str]) -> list[Any]:
    if not parts:
        return [node]
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if head.isdigit():
            index = int(head)
            return _resolve(node[index], rest) if index < len(node) else []
        return [v for item in node if isinstance(item, dict) for v in _resolve(item, parts)]
    if isinstance(node, dict) and head in node:
        return _resolve(node[head], rest)
    return []


def _candidates(doc: dict, path: str) -> tuple[bool, list[Any]]:
    found = _resolve(doc, path.split("."))
    flat: list[Any] = []
    for value in found:
        flat += value if isinstance(value, list) else [value]
    return bool(found), flat


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return isinstance(a, type(b)) or isinstance(b, type(a))


def _equal(a: Any, b: Any) -> bool:
    return _same_kind(a, b) and a == b


def _field_ops(doc: dict, path: str, ops: dict) -> bool:
    exists, values = _candidates(doc, path)
    for op, arg in ops.items():
        if op == "$options":
            continue
        if op == "$in":
            ok = any(_equal(v, a) for v in values for a in arg)
        elif op == "$nin":
            ok = not any(_equal(v, a) for v in values for a in arg)
        elif op == "$ne":
            ok = not any(_equal(v, arg) for v in values)
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            compare = {"$gt": lambda v: v > arg, "$gte": lambda v: v >= arg,
                       "$lt": lambda v: v < arg, "$lte": lambda v: v <= arg}[op]
            ok = any(_same_kind(v, arg) and compare(v) for v in values)
        elif op == "$exists":
            ok = exists == arg
        elif op == "$regex":
            flags = re.I if "i" in ops.get("$options", "") else 0
            ok = any(isinstance(v, str) and re.search(arg, v, flags) for v in values)
        elif op == "$not":
            ok = not _field_ops(doc, path, arg)
        else:
            raise AssertionError(f"operator {op} is not one search.py may use")
        if not ok:
            return False
    return True


def matches(doc: dict, query: dict) -> bool:
    for key, cond in query.items():
        if key == "$and":
            ok = all(matches(doc, q) for q in cond)
        elif key == "$or":
            ok = any(matches(doc, q) for q in cond)
        elif key == "$nor":
            ok = not any(matches(doc, q) for q in cond)
        elif key.startswith("$"):
            raise AssertionError(f"top-level operator {key} is not one search.py may use")
        elif isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            ok = _field_ops(doc, key, cond)
        else:
            ok = any(_equal(v, cond) for v in _candidates(doc, key)[1])
        if not ok:
            return False
    return True


def stored(resource: dict, *, updated: datetime = NOW, deleted: bool = False) -> dict:
    sp, so, compartment = index_resource(resource)
    return {"_id": resource["id"], "vid": 1, "updated": updated, "deleted": deleted, "resource": resource,
            "sp": sp, "so": so, "compartment": compartment}


def ids(resource_type: str, params: list[tuple[str, str]], docs: list[dict], **kw) -> set[str]:
    plan = parse_search(resource_type, params, now=NOW, **kw)
    assert not plan.errors, plan.errors
    return {d["_id"] for d in docs if matches(d, plan.filter)}


def operators_in(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("$"):
                found.add(key)
            found |= operators_in(value)
    elif isinstance(node, list):
        for item in node:
            found |= operators_in(item)
    return found


def test_the_matcher_itself_distinguishes():
    doc = {"a": [{"x": 1}, {"x": 5}], "s": ["ab", "cd"]}
    assert matches(doc, {"a.x": {"$gte": 4, "$lte": 2}})  # different elements, as in MongoDB
    assert not matches(doc, {"a.0.x": {"$gte": 4}})
    assert matches(doc, {"s": "cd"}) and not matches(doc, {"s": "c"})
    assert matches(doc, {"s": {"$regex": "^c"}}) and not matches(doc, {"s": {"$regex": "^d"}})
    assert matches(doc, {"missing": {"$nin": ["x"]}}) and not matches(doc, {"missing": {"$exists": True}})
    with pytest.raises(AssertionError):
        matches(doc, {"a": {"$elemMatch": {"x": 1}}})


# --- resources used below ---------------------------------------------------------------------------

ZHANG = {
    "resourceType": "Patient", "id": "zhang",
    "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "370102199001011234"}],
    "name": [{"use": "official", "family": "张", "given": ["三"]},
             {"use": "usual", "text": "Zhang San", "family": "Zhang", "given": ["San"]}],
    "gender": "male", "birthDate": "1990-03-15", "active": True,
    "telecom": [{"system": "phone", "value": "13800000000"}, {"system": "email", "value": "z@example.cn"}],
    "address": [{"line": ["经十路 1 号"], "city": "济南市", "district": "历下区", "state": "山东省",
                 "postalCode": "250000", "country": "CN"}],
    "managingOrganization": {"reference": "https://qilu.example/fhir/Organization/sdph/_history/3"},
}
JOSE = {
    "resourceType": "Patient", "id": "jose", "gender": "male", "birthDate": "1985",
    "name": [{"family": "Núñez", "given": ["José", "María"]}],
    "identifier": [{"value": "local-7"}],
}
NO_NAME = {"resourceType": "Patient", "id": "anon", "gender": "unknown"}


def obs(oid: str, **extra) -> dict:
    base = {"resourceType": "Observation", "id": oid, "status": "final",
            "subject": {"reference": "Patient/zhang"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                     "text": "心率"}}
    base.update(extra)
    return base


# --- indexing -------------------------------------------------------------------------------------


def test_patient_with_chinese_name_is_indexed_by_name_identifier_and_birthdate():
    sp, so, compartment = index_resource(ZHANG)
    assert {"张", "三", "张三", "zhang san", "zhang", "san", "san zhang"} <= set(sp["name"])
    assert "张三" in sp["name:exact"] and "Zhang San" in sp["name:exact"]
    assert sp["family"] == ["张", "zhang"] and sp["given"] == ["三", "san"]
    assert sp["identifier"] == ["urn:oid:2.16.156.10011.1.3|370102199001011234", "370102199001011234"]
    assert sp["birthdate"] == [{"lo": datetime(1990, 3, 15), "hi": datetime(1990, 3, 15, 23, 59, 59, 999000)}]
    assert sp["gender"] == ["male", "|male"] and sp["active"] == ["true"]
    assert sp["phone"] == ["phone|13800000000", "13800000000"]
    assert "email|z@example.cn" in sp["telecom"] and "z@example.cn" not in sp["phone"]
    assert sp["organization"] == ["Organization/sdph"]  # base URL and version stripped
    assert {"济南市", "历下区", "250000", "经十路 1 号"} <= set(sp["address"])
    assert so["birthdate"] == datetime(1990, 3, 15) and so["family"] == "张"
    assert compartment == ["Patient/zhang"]


def test_accents_case_and_full_width_forms_fold_away():
    assert search.normalise_text("  José   MARÍA ") == "jose maria"
    assert search.normalise_text("ＡＢＣ１２３") == "abc123"
    sp, _, _ = index_resource(JOSE)
    assert "nunez" in sp["family"] and "jose maria nunez" in sp["name"]
    assert sp["identifier"] == ["|local-7", "local-7"]
    assert sp["birthdate"][0]["hi"] == datetime(1985, 12, 31, 23, 59, 59, 999000)


def test_observation_dates_are_converted_to_utc_and_periods_keep_open_ends():
    sp, so, compartment = index_resource(obs("o1", effectiveDateTime="2020-03-01T10:00:00+08:00"))
    assert sp["date"] == [{"lo": datetime(2020, 3, 1, 2, 0), "hi": datetime(2020, 3, 1, 2, 0, 0, 999000)}]
    assert so["date"] == datetime(2020, 3, 1, 2, 0)
    assert compartment == ["Patient/zhang"]
    sp, _, _ = index_resource(obs("o2", effectivePeriod={"start": "2020-03-01"}))
    assert sp["date"] == [{"lo": datetime(2020, 3, 1), "hi": OPEN_HI}]
    sp, _, _ = index_resource(obs("o3", effectivePeriod={"end": "2020-03"}))
    assert sp["date"] == [{"lo": OPEN_LO, "hi": datetime(2020, 3, 31, 23, 59, 59, 999000)}]
    sp, _, _ = index_resource(obs("o4", effectiveInstant="2020-03-01T00:00:00.123456Z"))
    assert sp["date"][0]["lo"] == datetime(2020, 3, 1, 0, 0, 0, 123000)  # BSON keeps milliseconds
    assert sp["code:text"] == ["heart rate", "心率"]


def test_fallback_paths_use_the_first_that_holds_an_indexable_value():
    sp, _, _ = index_resource(obs("o5", issued="2021-01-02T03:04:05Z"))
    assert sp["date"][0]["lo"] == datetime(2021, 1, 2, 3, 4, 5)
    sp, _, _ = index_resource(obs("o6", effectiveDateTime="2019-05-05", issued="2021-01-02T03:04:05Z"))
    assert sp["date"][0]["lo"] == datetime(2019, 5, 5)
    condition = {"resourceType": "Condition", "id": "c1", "onsetString": "about three years ago",
                 "recordedDate": "2022-02-02", "subject": {"reference": "Patient/zhang"}}
    sp, _, _ = index_resource(condition)
    assert sp["date"][0]["lo"] == datetime(2022, 2, 2) and "onset-date" not in sp


def test_unparseable_or_contained_values_are_skipped_not_fatal():
    sp, _, compartment = index_resource(obs("o7", effectiveDateTime="yesterday",
                                            subject={"reference": "#contained-1"},
                                            performer=[{"reference": "urn:uuid:1234"}, {"display": "x"}]))
    assert "date" not in sp and "subject" not in sp and "performer" not in sp
    assert compartment == []


def test_compartments_follow_the_patient_compartment_definition():
    audit = {"resourceType": "AuditEvent", "id": "a1", "recorded": "2024-01-01T00:00:00Z",
             "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
             "agent": [{"who": {"reference": "Practitioner/d1"}, "requestor": True}],
             "entity": [{"what": {"reference": "Patient/zhang"}}, {"what": {"reference": "Patient/li"}}]}
    assert index_resource(audit)[2] == ["Patient/zhang", "Patient/li"]
    composition = {"resourceType": "Composition", "id": "c1", "status": "final", "type": {"text": "x"},
                   "date": "2024", "title": "出院小结", "author": [{"reference": "Practitioner/d1"}],
                   "subject": {"reference": "Patient/zhang"}, "attester": [{"party": {"reference": "Patient/li"}}]}
    assert index_resource(composition)[2] == ["Patient/zhang", "Patient/li"]
    appointment = {"resourceType": "Appointment", "id": "ap1", "status": "booked", "start": "2024-05-01T09:00:00+08:00",
                   "participant": [{"actor": {"reference": "Patient/zhang"}, "status": "accepted"},
                                   {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"}]}
    sp, _, compartment = index_resource(appointment)
    assert compartment == ["Patient/zhang"]
    assert sp["patient"] == ["Patient/zhang"] and sp["practitioner"] == ["Practitioner/d1"]
    assert sp["actor"] == ["Patient/zhang", "Practitioner/d1"]
    organization = {"resourceType": "Organization", "id": "o1", "name": "山东省立医院"}
    assert index_resource(organization)[2] == []


def test_reference_targets_for_include():
    o = obs("o1", performer=[{"reference": "Practitioner/d1"}, {"reference": "http://x/fhir/Organization/h1"}])
    assert search.reference_targets(o, "Observation", "performer") == ["Practitioner/d1", "Organization/h1"]
    assert search.reference_targets(o, "Observation", "patient") == ["Patient/zhang"]
    assert search.reference_targets(o, "Observation", "code") == []
    assert search.reference_targets(o, "Observation", "nope") == []
    consent = {"resourceType": "Consent", "id": "k1", "status": "active", "scope": {"text": "x"},
               "category": [{"text": "x"}], "patient": {"reference": "Patient/zhang"},
               "provision": {"actor": [{"role": {"text": "x"}, "reference": {"reference": "Organization/h2"}}]}}
    assert search.reference_targets(consent, "Consent", "actor") == ["Organization/h2"]


# --- string search ------------------------------------------------------------------------------

PATIENTS = [stored(ZHANG), stored(JOSE), stored(NO_NAME)]


@pytest.mark.parametrize("params, expected", [
    ([("name", "张")], {"zhang"}),
    ([("name", "张三")], {"zhang"}),
    ([("name", "三")], {"zhang"}),
    ([("name", "ZHANG")], {"zhang"}),
    ([("name", "jose")], {"jose"}),
    ([("name", "JOSÉ MAR")], {"jose"}),
    ([("family", "nunez")], {"jose"}),
    ([("family", "san")], set()),
    ([("given", "san")], {"zhang"}),
    ([("name", "an")], set()),  # starts-with, not contains
    ([("name:contains", "an")], {"zhang"}),
    ([("name:contains", "ÑE")], {"jose"}),
    ([("name:exact", "张三")], {"zhang"}),
    ([("name:exact", "Zhang San")], {"zhang"}),
    ([("name:exact", "zhang san")], set()),
    ([("name:exact", "Núñez")], {"jose"}),
    ([("name:exact", "Nunez")], set()),
    ([("name", "张,jose")], {"zhang", "jose"}),
    ([("name", "张"), ("name", "jose")], set()),
    ([("name", "zhang"), ("given", "三")], {"zhang"}),
    ([("address", "济南")], {"zhang"}),
    ([("address:contains", "历下")], {"zhang"}),
    ([("name", "a.b*c(")], set()),  # regex metacharacters are literal
    ([("name:missing", "true")], {"anon"}),
    ([("name:missing", "false")], {"zhang", "jose"}),
])
def test_string_search(params, expected):
    assert ids("Patient", params, PATIENTS) == expected


def test_escaped_comma_is_part_of_the_value():
    doc = stored({"resourceType": "Organization", "id": "x", "name": "Lee, Wong & Co"})
    assert ids("Organization", [("name", r"lee\, wong")], [doc]) == {"x"}
    assert ids("Organization", [("name", "lee, wong")], [doc]) == {"x"}  # "lee" OR " wong"
    assert ids("Organization", [("name", r"wong\, lee")], [doc]) == set()


# --- token search -------------------------------------------------------------------------------

OBSERVATIONS = [
    stored(obs("loinc")),
    stored(obs("local", code={"coding": [{"code": "HR-1"}]})),
    stored(obs("snomed", code={"coding": [{"system": "http://snomed.info/sct", "code": "364075005"},
                                          {"system": "http://loinc.org", "code": "8867-4"}]}, status="amended")),
    stored({"resourceType": "Observation", "id": "nocode", "status": "preliminary"}),
]


@pytest.mark.parametrize("params, expected", [
    ([("code", "8867-4")], {"loinc", "snomed"}),
    ([("code", "http://loinc.org|8867-4")], {"loinc", "snomed"}),
    ([("code", "|8867-4")], set()),
    ([("code", "|HR-1")], {"local"}),
    ([("code", "HR-1")], {"local"}),
    ([("code", "http://snomed.info/sct|")], {"snomed"}),
    ([("code", "http://snomed.info|")], set()),  # a system, not a prefix of one
    ([("code", "http://snomed.info/sct|,HR-1")], {"snomed", "local"}),
    ([("code", "HR-1,http://snomed.info/sct|364075005")], {"local", "snomed"}),
    ([("code", "8867-4"), ("code", "http://snomed.info/sct|364075005")], {"snomed"}),
    ([("code:not", "8867-4")], {"local", "nocode"}),
    ([("code:not", "http://snomed.info/sct|,HR-1")], {"loinc", "nocode"}),
    ([("code:text", "heart")], {"loinc"}),
    ([("code:text", "心")], {"loinc"}),
    ([("code:missing", "true")], {"nocode"}),
    ([("status", "final")], {"loinc", "local"}),
    ([("status", "final,amended")], {"loinc", "local", "snomed"}),
    ([("status:not", "final")], {"snomed", "nocode"}),
    ([("_id", "loinc,local")], {"loinc", "local"}),
    ([("_id:not", "loinc")], {"local", "snomed", "nocode"}),
])
def test_token_search(params, expected):
    assert ids("Observation", params, OBSERVATIONS) == expected


def test_identifier_boolean_and_contact_point_tokens():
    assert ids("Patient", [("identifier", "urn:oid:2.16.156.10011.1.3|370102199001011234")], PATIENTS) == {"zhang"}
    assert ids("Patient", [("identifier", "370102199001011234")], PATIENTS) == {"zhang"}
    assert ids("Patient", [("identifier", "|local-7")], PATIENTS) == {"jose"}
    assert ids("Patient", [("identifier", "|370102199001011234")], PATIENTS) == set()
    assert ids("Patient", [("active", "true")], PATIENTS) == {"zhang"}
    assert ids("Patient", [("active", "false")], PATIENTS) == set()
    assert ids("Patient", [("phone", "13800000000")], PATIENTS) == {"zhang"}
    assert ids("Patient", [("phone", "z@example.cn")], PATIENTS) == set()
    assert ids("Patient", [("telecom", "email|z@example.cn")], PATIENTS) == {"zhang"}
    assert ids("Patient", [("gender", "male"), ("gender:not", "unknown")], PATIENTS) == {"zhang", "jose"}


def test_deleted_documents_never_match():
    docs = [stored(ZHANG, deleted=True), stored(JOSE)]
    assert ids("Patient", [], docs) == {"jose"}
    assert ids("Patient", [("name", "张")], docs) == set()


# --- reference search ---------------------------------------------------------------------------

REFERRING = [
    stored(obs("to-zhang")),
    stored(obs("to-group", subject={"reference": "Group/zhang"})),
    stored(obs("to-li", subject={"reference": "https://elsewhere.example/fhir/Patient/li"})),
    stored({"resourceType": "Observation", "id": "to-none", "status": "final"}),
]


@pytest.mark.parametrize("params, expected", [
    ([("patient", "zhang")], {"to-zhang"}),
    ([("patient", "Patient/zhang")], {"to-zhang"}),
    ([("patient", "https://qilu.example/fhir/Patient/zhang")], {"to-zhang"}),
    ([("patient", "li")], {"to-li"}),
    ([("patient", "zhang,li")], {"to-zhang", "to-li"}),
    ([("subject", "zhang")], {"to-zhang", "to-group"}),
    ([("subject:Patient", "zhang")], {"to-zhang"}),
    ([("subject:Group", "zhang")], {"to-group"}),
    ([("subject", "Group/zhang")], {"to-group"}),
    ([("subject", "zhang"), ("patient", "zhang")], {"to-zhang"}),
    ([("subject", "zhan")], set()),  # an id is matched whole
    ([("subject:missing", "true")], {"to-none"}),
    ([("subject", "Patient/zhang/_history/4")], {"to-zhang"}),
])
def test_reference_search(params, expected):
    assert ids("Observation", params, REFERRING) == expected


def test_reference_to_one_target_type_uses_plain_equality():
    plan = parse_search("Patient", [("organization", "sdph")])
    assert plan.filter["$and"] == [{"sp.organization": "Organization/sdph"}]
    assert ids("Patient", [("organization", "sdph")], PATIENTS) == {"zhang"}


# --- date search --------------------------------------------------------------------------------


def _spec_match(prefix: str, t_lo, t_hi, p_lo, p_hi) -> bool:
    """The FHIR R4 prefix definitions in their own words, on inclusive ranges."""
    contains = p_lo <= t_lo and t_hi <= p_hi  # search range fully contains target range
    above = t_hi > p_hi  # the range above the search value intersects the target
    below = t_lo < p_lo  # the range below the search value intersects the target
    overlaps = t_lo <= p_hi and t_hi >= p_lo
    return {
        "eq": contains, "ne": not contains, "gt": above, "lt": below,
        "ge": above or contains, "le": below or contains,
        "sa": not overlaps and t_lo > p_hi, "eb": not overlaps and t_hi < p_lo,
    }[prefix]


SEARCH_VALUES = ["2020", "2020-06", "2020-06-15", "2020-06-15T10:30:00Z", "2020-06-15T18:30:00+08:00",
                 "2020-06-15T10:30Z"]
TARGETS = {  # id -> effective[x]
    "y2019": "2019", "y2020": "2020", "y2021": "2021",
    "m2020-05": "2020-05", "m2020-06": "2020-06", "d0614": "2020-06-14", "d0615": "2020-06-15",
    "d0616": "2020-06-16", "t1029": "2020-06-15T10:29:59Z", "t1030": "2020-06-15T10:30:00Z",
    "t1030.5": "2020-06-15T10:30:00.500Z", "t1031": "2020-06-15T10:31:00Z", "t-eve": "2020-06-15T23:59:59.999Z",
    "p-open-end": {"start": "2020-06-15T10:30:00Z"}, "p-open-start": {"end": "2020-06-15"},
    "p-2020": {"start": "2020-01-01", "end": "2020-12-31"}, "p-span": {"start": "2019-12-31", "end": "2021-01-01"},
    "p-june": {"start": "2020-06-01T00:00:00Z", "end": "2020-06-30T23:59:59Z"},
}


def _obs_with_date(oid: str, value) -> dict:
    key = "effectivePeriod" if isinstance(value, dict) else "effectiveDateTime"
    return stored(obs(oid, **{key: value}))


DATED = [_obs_with_date(k, v) for k, v in TARGETS.items()] + [stored(obs("undated"))]


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])
@pytest.mark.parametrize("value", SEARCH_VALUES)
def test_date_prefix_semantics_at_every_precision(prefix, value):
    p_lo, p_hi = search.date_range(value)
    expected = {d["_id"] for d in DATED if "date" in d["sp"]
                and _spec_match(prefix, d["sp"]["date"][0]["lo"], d["sp"]["date"][0]["hi"], p_lo, p_hi)}
    assert ids("Observation", [("date", prefix + value)], DATED) == expected


def test_date_prefix_examples_by_hand():
    def found(q):
        return ids("Observation", [("date", q)], DATED)
    assert found("2020-06-15") == {"d0615", "t1029", "t1030", "t1030.5", "t1031", "t-eve"}
    assert found("2020-06-15T10:30:00Z") == {"t1030", "t1030.5"}
    assert found("2020-06-15T18:30:00+08:00") == {"t1030", "t1030.5"}
    assert found("sa2020-06-15") == {"d0616", "y2021"}
    assert found("eb2020-06") == {"y2019", "m2020-05"}
    assert "p-open-end" in found("ge2020-06-16") and "p-open-start" not in found("ge2020-06-16")
    assert "p-open-start" in found("le2020-06-01") and "p-span" in found("le2020-06-01")
    assert "undated" not in found("ne2020")
    assert found("gt2020,lt2019-06") == {"y2021", "p-span", "p-open-end", "y2019", "p-open-start"}


def test_date_and_or_combinations():
    within_2020 = ids("Observation", [("date", "ge2020"), ("date", "le2020")], DATED)
    assert {"y2020", "m2020-06", "d0615", "p-2020"} <= within_2020
    assert "y2019" not in within_2020 and "y2021" not in within_2020
    assert ids("Observation", [("date", "2019,2021")], DATED) == {"y2019", "y2021"}
    assert ids("Observation", [("date", "eq2019,eq2021"), ("date", "lt2020")], DATED) == {"y2019"}
    assert ids("Observation", [("date:missing", "true")], DATED) == {"undated"}


def test_ap_matches_near_values_and_not_far_ones():
    near = ids("Observation", [("date", "ap2020-06-15")], DATED)
    # 10% of the ~4 years between NOW and the value: about 146 days either side of 2020-06-15.
    assert {"d0615", "d0614", "d0616", "m2020-06", "m2020-05", "y2020", "p-june", "p-span"} <= near
    assert not {"y2019", "y2021"} & near and "p-open-start" in near
    far = ids("Observation", [("date", "ap2024-05-31")], DATED)  # a day before NOW: a window of hours
    assert far == {"p-open-end"}


def test_same_item_rule_for_multi_valued_dates():
    # Two values: 2019 and 2021. eq2020 must not match by taking lo from one and hi from the other.
    two = {"_id": "two", "deleted": False, "sp": {"date": [
        {"lo": datetime(2019, 1, 1), "hi": datetime(2019, 12, 31, 23, 59, 59, 999000)},
        {"lo": datetime(2021, 1, 1), "hi": datetime(2021, 12, 31, 23, 59, 59, 999000)}]}}
    assert ids("Observation", [("date", "eq2020")], [two]) == set()
    assert ids("Observation", [("date", "eq2021")], [two]) == {"two"}
    assert ids("Observation", [("date", "ap2021-06")], [two]) == {"two"}
    assert ids("Observation", [("date", "ne2021")], [two]) == {"two"}  # its 2019 value is not in 2021
    last_slot = {"_id": "last", "deleted": False, "sp": {"date": [
        {"lo": datetime(2000 + i, 1, 1), "hi": datetime(2000 + i, 12, 31)} for i in range(DATE_SLOTS)]}}
    assert ids("Observation", [("date", f"eq{2000 + DATE_SLOTS - 1}")], [last_slot]) == {"last"}


def test_every_date_parameter_yields_at_most_one_value():
    for resource_type, params in search.SEARCH_PARAMETERS.items():
        for param in params.values():
            if param.type == "date":
                assert len(param.paths) == 1 or param.first_path_only, (resource_type, param.name)


def test_last_updated_compares_the_updated_field_directly():
    docs = [stored(obs(f"u{d}"), updated=datetime(2024, 1, d, 8, 0)) for d in (1, 2, 3)]
    assert ids("Observation", [("_lastUpdated", "2024-01-02")], docs) == {"u2"}
    assert ids("Observation", [("_lastUpdated", "gt2024-01-01T08:00:00Z")], docs) == {"u2", "u3"}
    assert ids("Observation", [("_lastUpdated", "ge2024-01-01T16:00:00+08:00")], docs) == {"u1", "u2", "u3"}
    assert ids("Observation", [("_lastUpdated", "lt2024-01-02T16:00:00 08:00")], docs) == {"u1"}  # "+" as space
    plan = parse_search("Observation", [("_lastUpdated", "ge2024")])
    assert plan.filter["$and"] == [{"$or": [{"updated": {"$gt": datetime(2024, 12, 31, 23, 59, 59, 999000)}},
                                            {"updated": {"$gte": datetime(2024, 1, 1)}}]}]


_precisions = st.sampled_from(["year", "month", "day", "minute", "second", "millis"])


@st.composite
def fhir_dates(draw):
    moment = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)))
    precision = draw(_precisions)
    text = {"year": f"{moment:%Y}", "month": f"{moment:%Y-%m}", "day": f"{moment:%Y-%m-%d}",
            "minute": f"{moment:%Y-%m-%dT%H:%M}Z", "second": f"{moment:%Y-%m-%dT%H:%M:%S}Z",
            "millis": f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"}[precision]
    if precision not in ("year", "month", "day") and draw(st.booleans()):
        hours = draw(st.integers(-12, 14))
        text = text[:-1] + f"{'+' if hours >= 0 else '-'}{abs(hours):02d}:{draw(st.sampled_from(['00', '30']))}"
    return text


def _instant_doc(moment: datetime) -> dict:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return {"_id": "t", "deleted": False, "sp": {"date": [{"lo": moment, "hi": moment}]}}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=fhir_dates(), moment=st.datetimes(min_value=datetime(1899, 12, 1), max_value=datetime(2101, 2, 1)))
def test_prefix_pairs_split_every_instant_exactly_once(value, moment):
    doc = [_instant_doc(moment)]

    def hit(prefix):
        return bool(ids("Observation", [("date", prefix + value)], doc))
    assert hit("ge") != hit("lt")
    assert hit("gt") != hit("le")
    assert hit("ne") != hit("eq")
    assert [hit("eb"), hit("eq"), hit("sa")].count(True) == 1


@st.composite
def target_ranges(draw):
    a = draw(fhir_dates())
    if draw(st.booleans()):
        return {"effectiveDateTime": a}
    b = draw(fhir_dates())
    lo_a, lo_b = search.date_range(a)[0], search.date_range(b)[0]
    start, end = (a, b) if lo_a <= lo_b else (b, a)
    period = {"start": start, "end": end}
    if draw(st.booleans()):
        del period[draw(st.sampled_from(["start", "end"]))]
    return {"effectivePeriod": period}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(target=target_ranges(), value=fhir_dates(), prefix=st.sampled_from(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]))
def test_any_target_range_matches_as_the_spec_says(target, value, prefix):
    doc = stored(obs("x", **target))
    if "date" not in doc["sp"]:
        return  # a period whose end precedes its start at a coarser precision is not indexable
    t = doc["sp"]["date"][0]
    p_lo, p_hi = search.date_range(value)
    expected = _spec_match(prefix, t["lo"], t["hi"], p_lo, p_hi)
    assert (ids("Observation", [("date", prefix + value)], [doc]) == {"x"}) == expected


@pytest.mark.parametrize("text, lo, hi", [
    ("2020", datetime(2020, 1, 1), datetime(2020, 12, 31, 23, 59, 59, 999000)),
    ("2020-02", datetime(2020, 2, 1), datetime(2020, 2, 29, 23, 59, 59, 999000)),
    ("2020-12", datetime(2020, 12, 1), datetime(2020, 12, 31, 23, 59, 59, 999000)),
    ("2020-02-28", datetime(2020, 2, 28), datetime(2020, 2, 28, 23, 59, 59, 999000)),
    ("2020-02-28T23:30+08:00", datetime(2020, 2, 28, 15, 30), datetime(2020, 2, 28, 15, 30, 59, 999000)),
    ("2020-02-28T23:30:15Z", datetime(2020, 2, 28, 23, 30, 15), datetime(2020, 2, 28, 23, 30, 15, 999000)),
    ("2020-02-28T23:30:15.5-05:00", datetime(2020, 2, 29, 4, 30, 15, 500000), datetime(2020, 2, 29, 4, 30, 15, 599000)),
    ("9999", datetime(9999, 1, 1), OPEN_HI),
])
def test_date_ranges(text, lo, hi):
    assert search.date_range(text) == (lo, hi)


# --- issues: unknown, unsupported and malformed ------------------------------------------------


def test_unknown_parameter_is_a_warning_when_lenient_and_an_error_when_strict():
    lenient = parse_search("Patient", [("nickname", "x"), ("name", "张")])
    assert [(i.severity, i.code, i.expression) for i in lenient.issues] == [("warning", "not-supported", "nickname")]
    assert lenient.used == [("name", "张")]
    strict = parse_search("Patient", [("nickname", "x")], handling="strict")
    assert strict.strict and [(i.severity, i.code) for i in strict.issues] == [("error", "not-supported")]
    chained = parse_search("Observation", [("subject.name", "张")])
    assert chained.issues[0].severity == "warning" and chained.filter == {"deleted": False}
    assert parse_search("Observation", [("_has:Provenance:target:agent", "x")]).issues[0].severity == "warning"


@pytest.mark.parametrize("resource_type, params", [
    ("Observation", [("date", "2020-13")]),
    ("Observation", [("date", "xx2020")]),
    ("Observation", [("date", "20")]),
    ("Observation", [("date", "2020-02-30")]),
    ("Observation", [("date", "2020-01-01T25:00Z")]),
    ("Observation", [("date", "2020-01-01T10:00+15:00")]),
    ("Observation", [("date", "ge")]),
    ("Observation", [("_lastUpdated", "last week")]),
    ("Observation", [("code", "a|b|c")]),
    ("Observation", [("code", "|")]),
    ("Observation", [("patient", "not an id!")]),
    ("Observation", [("patient", "urn:uuid:0f3c")]),
    ("Observation", [("subject:Patient", "Group/1")]),
    ("Observation", [("patient:Group", "1")]),
    ("Observation", [("code:missing", "maybe")]),
    ("Observation", [("code:exact", "x")]),
    ("Observation", [("code:below", "x")]),
    ("Patient", [("name:fuzzy", "x")]),
    ("Patient", [("_id:contains", "x")]),
    ("Patient", [("_count", "abc")]),
    ("Patient", [("_count", "-1")]),
    ("Patient", [("_count", "1.5")]),
    ("Patient", [("_offset", "-3")]),
    ("Patient", [("_sort", "nickname")]),
    ("Patient", [("_summary", "everything")]),
    ("Patient", [("_total", "exact")]),
    ("Patient", [("_elements", "name,a.b")]),
    ("Patient", [("_include", "*")]),
    ("Patient", [("_include", "Patient")]),
    ("Patient", [("_include", "Patient:name")]),
    ("Observation", [("_include", "Patient:organization")]),
    ("Observation", [("_include", "Observation:subject:Nonsense")]),
    ("Observation", [("_include", "Observation:patient:Group")]),
    ("Organization", [("_revinclude", "Observation:patient")]),
    ("Patient", [("_include:deep", "Patient:organization")]),
])
def test_malformed_values_are_error_issues_not_exceptions(resource_type, params):
    plan = parse_search(resource_type, params)
    assert [i.severity for i in plan.issues] == ["error"], plan.issues
    assert plan.issues[0].expression == params[0][0]
    assert plan.issues[0].code in ("invalid", "value", "not-supported")


@settings(max_examples=300)
@given(name=st.sampled_from(sorted({*search.SEARCH_PARAMETERS["Observation"], "_sort", "_count", "_offset",
                                    "_include", "_revinclude", "_summary", "_elements", "_total"})),
       modifier=st.sampled_from(["", ":missing", ":not", ":exact", ":contains", ":text", ":Patient", ":iterate"]),
       value=st.text(max_size=30))
def test_no_input_raises(name, modifier, value):
    plan = parse_search("Observation", [(name + modifier, value)])
    assert operators_in(plan.filter) <= ALLOWED_OPERATORS
    for doc in DATED[:3]:
        matches(doc, plan.filter)


def test_empty_values_and_format_parameters_are_ignored_quietly():
    plan = parse_search("Patient", [("name", ""), ("_format", "json"), ("_pretty", "true")])
    assert plan.issues == [] and plan.used == [] and plan.filter == {"deleted": False}


# --- result parameters --------------------------------------------------------------------------


def test_sort_parsing():
    assert parse_search("Patient", []).sort == [("_id", 1)]
    assert parse_search("Patient", [("_sort", "-birthdate,family")]).sort == [
        ("so.birthdate", -1), ("so.family", 1), ("_id", 1)]
    assert parse_search("Patient", [("_sort", "_lastUpdated")]).sort == [("updated", 1), ("_id", 1)]
    assert parse_search("Patient", [("_sort", "-_lastUpdated,-_id,name")]).sort == [("updated", -1), ("_id", -1)]
    assert parse_search("Patient", [("_sort", "family,family")]).sort == [("so.family", 1), ("_id", 1)]
    plan = parse_search("Patient", [("_sort", "family,nope")])
    assert plan.sort[-1] == ("_id", 1) and [i.expression for i in plan.errors] == ["_sort"]


def test_sort_keys_order_documents():
    docs = [stored(ZHANG), stored(JOSE)]
    by_birthdate = sorted(docs, key=lambda d: d["so"]["birthdate"])
    assert [d["_id"] for d in by_birthdate] == ["jose", "zhang"]


@pytest.mark.parametrize("value, count, warned", [
    (None, 20, False), ("0", 0, False), ("1", 1, False), ("500", 500, False), ("501", 500, True),
    ("100000", 500, True),
])
def test_count_bounds(value, count, warned):
    plan = parse_search("Patient", [("_count", value)] if value is not None else [])
    assert plan.count == count and not plan.errors
    assert bool(plan.issues) == warned
    assert search.summary_count_only(plan) == (count == 0)


def test_offset_summary_elements_total():
    plan = parse_search("Patient", [("_offset", "40"), ("_summary", "count"), ("_total", "accurate"),
                                    ("_elements", "Patient.name,birthDate")])
    assert plan.offset == 40 and plan.summary == "count" and plan.total == "accurate"
    assert plan.elements == ["name", "birthDate"]
    assert search.summary_count_only(plan)
    assert ("_offset", "40") not in plan.used and ("_summary", "count") in plan.used


def test_include_and_revinclude_parsing():
    plan = parse_search("Observation", [
        ("_include", "Observation:subject"), ("_include", "Observation:patient:Patient,Observation:performer"),
        ("_include:iterate", "Patient:organization"), ("_revinclude", "Provenance:target"),
        ("_revinclude", "AuditEvent:entity:Observation"), ("_include", "Observation:subject")])
    assert plan.include == [
        search.Include("Observation", "subject", None, False),
        search.Include("Observation", "patient", "Patient", False),
        search.Include("Observation", "performer", None, False),
        search.Include("Patient", "organization", None, True),
    ]
    assert plan.revinclude == [search.Include("Provenance", "target", None, False),
                               search.Include("AuditEvent", "entity", "Observation", False)]
    assert not plan.issues
    assert ("_include:iterate", "Patient:organization") in plan.used


def test_used_lists_applied_parameters_for_links():
    plan = parse_search("Patient", [("name", "张"), ("bogus", "1"), ("_count", "5"), ("_offset", "5"),
                                    ("_sort", "-birthdate"), ("gender", "male,female")])
    assert plan.used == [("name", "张"), ("_sort", "-birthdate"), ("gender", "male,female")]


def test_filters_use_only_operators_both_engines_run():
    queries = [("date", p + v) for p in search.DATE_PREFIXES for v in ("2020", "2020-06-15T10:00Z")]
    queries += [("code", "a,s|,|b,s|c"), ("code:not", "s|"), ("code:text", "x"), ("subject", "1,Patient/2"),
                ("_id", "a,b"), ("_lastUpdated", "ap2020"), ("_tag", "s|c"), ("_profile", "http://p")]
    for query in queries:
        plan = parse_search("Observation", [query])
        assert not plan.errors
        assert operators_in(plan.filter) <= ALLOWED_OPERATORS, query
        assert "$elemMatch" not in operators_in(plan.filter)
        assert plan.filter["deleted"] is False


def test_meta_parameters_are_common_to_every_type():
    tagged = stored({"resourceType": "Basic", "id": "b1", "code": {"text": "note"},
                     "meta": {"tag": [{"system": "urn:qilu", "code": "demo"}], "profile": ["http://qilu/p"]}})
    assert ids("Basic", [("_tag", "urn:qilu|demo")], [tagged]) == {"b1"}
    assert ids("Basic", [("_profile", "http://qilu/p")], [tagged]) == {"b1"}
    assert ids("Basic", [("_profile", "http://qilu")], [tagged]) == set()
    for resource_type, params in search.SEARCH_PARAMETERS.items():
        assert {"_id", "_lastUpdated"} <= set(params), resource_type


def test_table_covers_the_required_parameters():
    need = {
        "Patient": "identifier name family given birthdate gender telecom organization",
        "Organization": "identifier name type partof address",
        "Practitioner": "identifier name family given",
        "PractitionerRole": "practitioner organization role specialty identifier",
        "Location": "organization name address",
        "HealthcareService": "organization specialty service-type characteristic active name",
        "Task": "focus owner requester based-on business-status intent priority patient subject date status code",
        "ServiceRequest": "requester performer priority intent based-on patient subject date code status category",
        "Consent": "actor patient date status category",
        "Basic": "identifier author patient subject code date",
        "Composition": "type patient date status", "DocumentReference": "type patient date status",
        "AuditEvent": "agent entity type action date patient", "Communication": "part-of sender recipient date",
        "Appointment": "actor patient date status", "Provenance": "target patient date",
        "Encounter": "patient subject date status", "Condition": "patient subject code date category encounter",
        "Observation": "patient subject code date status category encounter",
        "AllergyIntolerance": "patient code date category", "MedicationRequest": "patient subject code date status",
        "Procedure": "patient subject code date status", "Immunization": "patient date status",
        "DiagnosticReport": "patient subject code date status category", "CarePlan": "patient subject date status",
    }
    for resource_type, names in need.items():
        assert set(names.split()) <= set(search.SEARCH_PARAMETERS[resource_type]), resource_type
    for resource_type, params in search.SEARCH_PARAMETERS.items():
        if "patient" in params:
            assert params["patient"].type == "reference" and params["patient"].targets == ("Patient",)


# --- shaping results ----------------------------------------------------------------------------


def test_apply_elements_keeps_the_listed_elements_and_marks_the_subset():
    out = search.apply_elements(ZHANG, ["name", "birthDate"])
    assert set(out) == {"resourceType", "id", "meta", "name", "birthDate"}
    assert out["meta"]["tag"] == [search.SUBSETTED]
    assert "meta" not in ZHANG  # the stored resource is not touched
    choice = search.apply_elements(obs("o", effectiveDateTime="2020"), ["effective[x]"])
    assert choice["effectiveDateTime"] == "2020" and "code" not in choice


def test_apply_summary_modes():
    resource = dict(obs("o", effectiveDateTime="2020", valueQuantity={"value": 72}),
                    text={"status": "generated", "div": "<div>72</div>"},
                    meta={"versionId": "2", "tag": [search.SUBSETTED]})
    summary = search.apply_summary(resource, "true")
    assert {"code", "status", "subject", "effectiveDateTime"} <= set(summary)
    assert "valueQuantity" not in summary and "text" not in summary
    assert summary["meta"]["tag"] == [search.SUBSETTED] and summary["meta"]["versionId"] == "2"
    text = search.apply_summary(resource, "text")
    assert set(text) == {"resourceType", "id", "meta", "text", "status", "code", "subject"}
    data = search.apply_summary(resource, "data")
    assert "text" not in data and "valueQuantity" in data
    assert search.apply_summary(resource, "false") is resource


def test_helpers_used_by_the_record_service():
    assert search.is_valid_id("abc-1.2") and not search.is_valid_id("a/b") and not search.is_valid_id("x" * 65)
    assert search.parse_count("30") == 30 and search.parse_count("9000") == search.MAX_COUNT
    with pytest.raises(search.SearchValueError):
        search.parse_count("-1")
    with pytest.raises(search.SearchValueError):
        search.parse_offset("x")
    assert search.parse_instant("2024-01-01T08:00:00+08:00") == datetime(2024, 1, 1)
    with pytest.raises(ValueError):
        search.parse_instant("soon")
    assert search.reference_key("http://a.example/fhir/Patient/x/_history/2") == "Patient/x"
    assert search.reference_key("#c1") is None and search.reference_key("urn:uuid:1") is None
    assert timedelta(0) < OPEN_HI - datetime(9999, 12, 31)
