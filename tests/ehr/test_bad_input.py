"""Hostile and malformed input to the FHIR API, as a practitioner of the managing hospital: deep nesting, huge
strings, NUL and lone surrogates, invalid UTF-8, MongoDB operators and `$`/`.` keys, regex metacharacters in
string searches, garbage `_count`/`_offset`. Each is a 4xx with an OperationOutcome that says what is wrong, and
nothing is written; search values are matched as text, never as a query or a regular expression."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from sample_records import (
    JSON_HEADERS, assert_outcome, create, ids, link, observation, patient, search, tag,
)

MARK = "@@BAD@@"  # stands in a resource for the raw JSON of a case, spliced into the body's bytes
MB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------------------------


def splice(resource: dict[str, Any], raw: bytes) -> bytes:
    """The resource's JSON with the marker string (quotes included) replaced by `raw`, byte for byte."""
    # The standard library's encoder, as orjson's stops at 255 levels, short of the deep cases.
    body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
    assert body.count(b'"' + MARK.encode() + b'"') == 1, body[:200]
    return body.replace(b'"' + MARK.encode() + b'"', raw)


def with_mark(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource with the marker in a string element the record indexes for search."""
    if resource["resourceType"] == "Patient":
        return {**resource, "name": [{**resource["name"][0], "family": MARK}]}
    return {**resource, "code": {**resource["code"], "text": MARK}}


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def post_entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


async def total(client, path: str, params: dict[str, str]) -> int:
    return (await search(client, path, {**params, "_summary": "count"}))["total"]


class Record:
    """One patient of the managing hospital with one Observation, and what the record holds about them."""

    def __init__(self, client, world, made_patient: dict[str, Any], made_observation: dict[str, Any]):
        self.client, self.world = client, world
        self.patient, self.observation = made_patient, made_observation

    async def snapshot(self) -> dict[str, Any]:
        """Counts and current versions that any write this module attempts would change."""
        client, pid, oid = self.client, self.patient["id"], self.observation["id"]
        return {
            "patients of the hospital": await total(client, "Patient", {"organization": self.world.home}),
            "observations of the patient": await total(client, "Observation", {"subject": f"Patient/{pid}"}),
            "patient": (await client.get(f"/fhir/Patient/{pid}")).json(),
            "observation": (await client.get(f"/fhir/Observation/{oid}")).json(),
            "patient history": (await search(client, f"Patient/{pid}/_history"))["total"],
            "observation history": (await search(client, f"Observation/{oid}/_history"))["total"],
        }


@pytest.fixture
async def record(doctor_client, world) -> Record:
    made = await create(doctor_client, patient(organization=world.home))
    return Record(doctor_client, world, made, await create(doctor_client, observation(made["id"])))


# Where a bad body goes: a create of each type, an update of each type, and a transaction Bundle holding
# the bad resource after a good one (all or nothing: the good one must not be written either).
TARGETS = ("create Patient", "create Observation", "update Patient", "update Observation", "transaction")


def target_request(rec: Record, target: str, doctor_family: str) -> tuple[str, str, dict[str, Any]]:
    """(method, path, resource with the marker) of one target."""
    pid, oid = rec.patient["id"], rec.observation["id"]
    if target == "create Patient":
        return "POST", "/fhir/Patient", with_mark(patient(organization=rec.world.home))
    if target == "create Observation":
        return "POST", "/fhir/Observation", with_mark(observation(pid))
    if target == "update Patient":
        return "PUT", f"/fhir/Patient/{pid}", with_mark(rec.patient)
    if target == "update Observation":
        return "PUT", f"/fhir/Observation/{oid}", with_mark(rec.observation)
    good = post_entry(patient(organization=rec.world.home, family=doctor_family))
    return "POST", "/fhir", transaction(good, post_entry(with_mark(observation(pid))))


async def send_bad(rec: Record, target: str, raw: bytes) -> tuple[Any, str]:
    """Send the target's body with `raw` spliced in; returns the response and the family of the good entry."""
    family = tag()
    method, path, resource = target_request(rec, target, family)
    response = await rec.client.request(method, path, content=splice(resource, raw), headers=JSON_HEADERS)
    return response, family


async def send_changed(rec: Record, target: str, change) -> tuple[Any, str]:
    """Send the target's body with `change` applied to its (bad) resource, as JSON."""
    family = tag()
    method, path, resource = target_request(rec, target, family)
    if target == "transaction":
        resource["entry"][1]["resource"] = change(resource["entry"][1]["resource"])
    else:
        resource = change(resource)
    return await rec.client.request(method, path, content=splice(resource, b'"text"'), headers=JSON_HEADERS), family


async def assert_nothing_changed(rec: Record, before: dict[str, Any], good_family: str) -> None:
    assert await rec.snapshot() == before
    assert await total(rec.client, "Patient", {"family": good_family}) == 0


# --- bodies that are not valid JSON, or JSON that no FHIR string holds -------------------------------------

NOT_JSON = ("structure", "not valid JSON")
# Each: the raw JSON that takes the place of a string element of the resource, the issue code, and words of the
# diagnostics.
BAD_BODIES = {
    "nested 10,000 levels": (b"[" * 10_000 + b"]" * 10_000, *NOT_JSON, "depth limit"),
    "lone high surrogate escape": (b'"a\\ud800b"', *NOT_JSON, "surrogate"),
    "lone low surrogate escape": (b'"a\\udc00b"', *NOT_JSON, "surrogate"),
    "invalid UTF-8 bytes": (b'"a\xff\xfeb"', *NOT_JSON, "UTF-8"),
    "UTF-8 encoded surrogate": (b'"a\xed\xa0\x80b"', *NOT_JSON, "UTF-8"),
    "truncated UTF-8 sequence": (b'"a\xe4\xb8"', *NOT_JSON, "UTF-8"),
    "raw NUL byte in a string": (b'"a\x00b"', *NOT_JSON, "control character"),
    "NUL escaped": (b'"a\\u0000b"', "value", "control character", "U+0000"),
    "NUL alone": (b'"\\u0000"', "value", "control character", "U+0000"),
    "escape": (b'"a\\u001b[2Jb"', "value", "control character", "U+001B"),
    "backspace": (b'"ab\\b"', "value", "control character", "U+0008"),
    "NUL in a key": (b'"x","fam\\u0000ily":"y"', "value", "control character", "U+0000"),
    "string of 3 MB": (b'"' + b"x" * (3 * MB) + b'"', "too-long", "3145728 characters long", "at most 1048576"),
    "string just over 1 MB": (b'"' + "字".encode() * (MB + 1) + b'"', "too-long", "1048577 characters long"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", BAD_BODIES)
async def test_bad_body_is_refused(record, target, case):
    raw, code, *words = BAD_BODIES[case]
    before = await record.snapshot()
    response, family = await send_bad(record, target, raw)
    outcome = assert_outcome(response, 400, code)
    for word in words:
        assert word.lower() in outcome["issue"][0]["diagnostics"].lower(), outcome
    await assert_nothing_changed(record, before, family)


async def test_body_over_the_size_limit_is_refused(record, settings):
    before = await record.snapshot()
    for target in TARGETS:
        raw = orjson.dumps("x" * (settings.max_body_bytes + 1))
        response, family = await send_bad(record, target, raw)
        assert_outcome(response, 413, "too-costly", diagnostics=f"limit of {settings.max_body_bytes} bytes")
        await assert_nothing_changed(record, before, family)


@pytest.mark.parametrize("target", ["create Patient", "update Patient", "transaction"])
async def test_resource_too_large_to_store_with_its_index_is_refused(record, target):
    """Four names of a million characters each: every string within FHIR's 1 MB and the body within its limit,
    but the names are indexed several times over, past the 16 MB a MongoDB document may hold."""
    before = await record.snapshot()
    family = tag()
    names = [{"family": c * 1_000_000, "given": [tag()]} for c in "wxyz"]
    if target == "create Patient":
        method, path, body = "POST", "/fhir/Patient", patient(organization=record.world.home, name=names)
    elif target == "update Patient":
        method, path, body = "PUT", f"/fhir/Patient/{record.patient['id']}", {**record.patient, "name": names}
    else:
        method, path, body = "POST", "/fhir", transaction(
            post_entry(patient(organization=record.world.home, family=family)),
            post_entry(patient(organization=record.world.home, name=names)))
    response = await record.client.request(method, path, json=body, headers=JSON_HEADERS)
    assert_outcome(response, 413, "too-costly", diagnostics="too large to store")
    await assert_nothing_changed(record, before, family)
    if target == "create Patient":  # its ID number was not kept either
        again = await record.client.post("/fhir/Patient", json={**body, "name": [{"family": family}]},
                                         headers=JSON_HEADERS)
        assert again.status_code == 201, again.text


async def test_large_attachments_are_not_strings(record):
    """base64Binary is not held to the 1 MB of a string: a 3 MB photo is stored."""
    photo = {"contentType": "image/png", "data": base64.b64encode(b"\x89PNG" * (MB // 2)).decode()}
    made = patient(organization=record.world.home, photo=[photo])
    response = await record.client.post("/fhir/Patient", json=made, headers=JSON_HEADERS)
    assert response.status_code == 201, response.text[:300]
    assert response.json()["photo"] == [photo]


async def test_tab_and_line_breaks_are_kept(record):
    resource = {**observation(record.patient["id"]), "note": [{"text": "line 1\r\n\tline 2"}]}
    response = await record.client.post("/fhir/Observation", json=resource, headers=JSON_HEADERS)
    assert response.status_code == 201, response.text
    assert response.json()["note"][0]["text"] == "line 1\r\n\tline 2"


# --- nesting that JSON allows and no resource needs ------------------------------------------------------


def nested_extension(levels: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "leaf"}
    for _ in range(levels):
        extension = {"url": "http://example.org/nested", "extension": [extension]}
    return extension


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("levels", [40, 150, 400])
async def test_deeply_nested_extensions_are_refused(record, target, levels):
    """Each extension level is two JSON levels: 40 is past the limit of 64 (and past MongoDB's 100 once stored),
    150 used to overflow the validator's stack (500), 400 is within orjson's own limit of 1024."""
    before = await record.snapshot()
    response, family = await send_changed(
        record, target, lambda resource: {**resource, "extension": [nested_extension(levels)]})
    assert_outcome(response, 400, "structure", diagnostics="nested more than 64 levels")
    await assert_nothing_changed(record, before, family)


async def test_nesting_real_resources_use_is_accepted(record):
    resource = {**observation(record.patient["id"]), "extension": [nested_extension(12)]}
    response = await record.client.post("/fhir/Observation", json=resource, headers=JSON_HEADERS)
    assert response.status_code == 201, response.text


# --- valid JSON that is not a valid resource: operators, `$` and `.` keys ---------------------------------

OPERATOR_VALUES = {
    "$gt as a string": b'{"$gt": ""}',
    "$ne null as a string": b'{"$ne": null}',
    "$where as a string": b'{"$where": "sleep(1000) || true"}',
    "$regex as a string": b'{"$regex": ".*"}',
    "operator list": b'[{"$exists": true}]',
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", OPERATOR_VALUES)
async def test_operator_where_a_string_is_expected_is_refused(record, target, case):
    before = await record.snapshot()
    response, family = await send_bad(record, target, OPERATOR_VALUES[case])
    outcome = assert_outcome(response, 400, "value", diagnostics="valid string")
    assert any(e.endswith(("family", "text")) for i in outcome["issue"] for e in i.get("expression", [])), outcome
    await assert_nothing_changed(record, before, family)


def _keyed(resource: dict[str, Any], how: str) -> dict[str, Any]:
    if how == "$where key in an extension":
        return {**resource, "extension": [{"url": "http://example.org/x", "$where": "1 == 1"}]}
    if how == "$set key at the top":
        return {**resource, "$set": {"deleted": True}}
    if how == "dotted key in an extension":
        return {**resource, "extension": [{"url": "http://example.org/x", "valueString": "v", "sp.family": "x"}]}
    if how == "dotted key at the top":
        return {**resource, "meta.versionId": "99"}
    if how == "$ key in a nested element":
        return {**resource, "meta": {"tag": [{"system": "http://example.org", "$gt": ""}]}}
    if how == "operator as the id":
        return {**resource, "id": {"$ne": None}}
    raise AssertionError(how)


KEYED = ("$where key in an extension", "$set key at the top", "dotted key in an extension", "dotted key at the top",
         "$ key in a nested element", "operator as the id")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("how", KEYED)
async def test_operator_keys_and_dotted_keys_are_refused(record, target, how):
    before = await record.snapshot()
    response, family = await send_changed(record, target, lambda resource: _keyed(resource, how))
    outcome = assert_outcome(response, 400)
    words = " ".join(i["diagnostics"] for i in outcome["issue"])
    assert ("Unknown element" in words or "valid string" in words), outcome
    await assert_nothing_changed(record, before, family)


# --- search values are text: regex metacharacters and operators match literally --------------------------

METACHARACTERS = ["(", "[", "*", "\\", "^a|b$", ".*", "+?{1}", ")"]


def fhir_escape(text: str) -> str:
    """A search value that means exactly `text` (FHIR escapes \\ , | and $ with a backslash)."""
    for ch in "\\,|$":
        text = text.replace(ch, "\\" + ch)
    return text


async def test_regex_metacharacters_in_string_search_match_literally(doctor_client, world):
    t = tag()
    odd = f"{t}(.*)[^a|b$]\\+?{{1}}"
    made = await create(doctor_client, patient(organization=world.home, family=odd))
    pid = made["id"]
    everyone = await total(doctor_client, "Patient", {})
    assert everyone > 1

    # The whole name, by its exact text, is found with every string modifier, and only it.
    assert ids(await search(doctor_client, "Patient", {"family": fhir_escape(odd)})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"family:exact": fhir_escape(odd)})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"family:contains": fhir_escape(odd[len(t):])})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name": fhir_escape(odd)})) == [pid]
    # A prefix that ends inside what a regex would call a group or a class still is just a prefix.
    for cut in ("(", "(.*", "(.*)[", "(.*)[^a|b$", "(.*)[^a|b$]\\"):
        assert ids(await search(doctor_client, "Patient", {"family": fhir_escape(t + cut)})) == [pid], cut
    # Read as regular expressions these would match the name; read as text they do not.
    for pattern in (t + ".*", t + "..", t + "\\(", t + "[(]", f"(?i){t}", t.upper() + "(.+"):
        assert ids(await search(doctor_client, "Patient", {"family": fhir_escape(pattern)})) == [], pattern

    for value in METACHARACTERS:
        for sent in {value, fhir_escape(value)}:
            bundle = await search(doctor_client, "Patient", {"family": sent, "_count": "500"})
            assert bundle["total"] < everyone, (sent, bundle["total"])
            assert pid not in ids(bundle), sent
            for entry in bundle.get("entry", []):
                if entry["search"]["mode"] == "match":
                    families = [n.get("family", "") for n in entry["resource"].get("name", [])]
                    assert any(f.casefold().startswith(value.casefold()) for f in families), (sent, families)


async def test_regex_metacharacters_in_a_leading_position_are_found_literally(doctor_client, world):
    """Families that begin with a metacharacter are found by it, and nothing else is."""
    t = tag()
    made = {}
    for value in METACHARACTERS:
        made[value] = (await create(doctor_client, patient(organization=world.home, family=value + t)))["id"]
    for value, pid in made.items():
        exact = ids(await search(doctor_client, "Patient", {"family": fhir_escape(value + t)}))
        assert exact == [pid], value
        leading = await search(doctor_client, "Patient", {"family": fhir_escape(value), "_count": "500"})
        found = ids(leading)
        assert pid in found, value
        others = {v for v, p in made.items() if p in found and v != value}
        assert all(other.startswith(value) for other in others), (value, others)


async def test_regex_metacharacters_and_operators_in_token_search(record):
    client, oid, pid = record.client, record.observation["id"], record.patient["id"]
    mine = {"subject": f"Patient/{pid}"}
    assert ids(await search(client, "Observation", {**mine, "code": "8480-6"})) == [oid]
    for value in (".*", "8480.6", "^8480", "8480-6|.*", "http://loinc.org|.*", "http://loinc.org|8480.*",
                  '{"$gt": ""}', '{"$ne": null}', "$where", "[", "("):
        assert ids(await search(client, "Observation", {**mine, "code": value})) == [], value
        assert ids(await search(client, "Observation", {**mine, "code:text": value})) == [], value
        assert ids(await search(client, "Observation", {**mine, "_id": value})) == [], value


async def test_operators_as_string_search_values_match_literally(record):
    client, family = record.client, record.patient["name"][0]["family"]
    for value in ('{"$gt": ""}', '{"$ne": null}', "$where", "$gt", "this.name", '{"$regex": ".*"}'):
        for params in ({"family": value}, {"family:exact": value}, {"family:contains": value}, {"given": value},
                       {"name": value}):
            bundle = await search(client, "Patient", params)
            assert bundle["total"] == 0, (params, bundle["total"])
    # The patient is there to be found by its real name.
    assert ids(await search(client, "Patient", {"family": family})) == [record.patient["id"]]


async def test_where_as_a_parameter_name_is_not_applied(record):
    """Unknown parameters are ignored with a warning (lenient handling, FHIR's default here) and refused with
    `Prefer: handling=strict`; either way `$where` never reaches the engine as an operator."""
    client, family = record.client, record.patient["name"][0]["family"]
    for name in ("$where", "$or", "family[$ne]", "$expr", "sp.family"):
        bundle = await search(client, "Patient", {"family": family, name: "1 == 1"})
        assert ids(bundle) == [record.patient["id"]], name
        warnings = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
        assert warnings and warnings[0]["issue"][0]["severity"] == "warning", bundle
        assert name in warnings[0]["issue"][0]["diagnostics"], warnings
        assert name not in dict(parse_qsl(urlsplit(link(bundle, "self")).query))
        strict = await client.get("/fhir/Patient", params={"family": family, name: "1 == 1"},
                                  headers={"Prefer": "handling=strict"})
        assert_outcome(strict, 400, "not-supported", diagnostics=name)


# --- search values that no FHIR string holds ------------------------------------------------------------

SEARCHES_WITH_CONTROL_CHARACTERS = [
    ("Patient", "family=a%00b", "family"), ("Patient", "family:exact=a%00b", "family:exact"),
    ("Patient", "family:contains=%00", "family:contains"), ("Patient", "name=%1B%5B2J", "name"),
    ("Patient", "_id=%00", "_id"), ("Patient", "identifier=a%00%7Cb", "identifier"),
    ("Patient", "fam%00ily=x", "fam\x00ily"), ("Patient", "_sort=family%00", "_sort"),
    ("Observation", "code=%00", "code"), ("Observation", "code=http://loinc.org%7C8480-6%00", "code"),
    ("Observation", "code:text=%08", "code:text"),
]


@pytest.mark.parametrize("path, query, expression", SEARCHES_WITH_CONTROL_CHARACTERS)
async def test_control_characters_in_search_are_refused(record, path, query, expression):
    response = await record.client.get(f"/fhir/{path}?{query}")
    assert_outcome(response, 400, "value", expression=expression, diagnostics="control character")
    response = await record.client.post(f"/fhir/{path}/_search", content=query.encode(),
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_outcome(response, 400, "value", expression=expression, diagnostics="control character")


async def test_control_characters_in_if_none_exist_are_refused(record):
    before = await record.snapshot()
    response = await record.client.post("/fhir/Patient", json=patient(organization=record.world.home),
                                        headers={**JSON_HEADERS, "If-None-Exist": "family=a%00b"})
    assert_outcome(response, 400, "value", diagnostics="control character")
    assert await record.snapshot() == before


# --- _count and _offset ------------------------------------------------------------------------------

# 10^9 is refused as not a count at all (more than nine digits); 501..999999999 are lowered (the test below).
BAD_COUNTS = ["-1", "abc", "1e3", "1.5", "0x10", str(10 ** 9), str(10 ** 20), "", " ", "+5", "5;drop"]


@pytest.mark.parametrize("path", ["Patient", "Observation"])
@pytest.mark.parametrize("value", BAD_COUNTS)
async def test_bad_count_is_refused(record, path, value):
    response = await record.client.get(f"/fhir/{path}", params={"_count": value})
    assert_outcome(response, 400, "value", expression="_count", diagnostics="_count must be a whole number")


BAD_OFFSETS = ["-1", "abc", "1e3", str(10 ** 20), "2;drop", "0x10", "1.0"]


@pytest.mark.parametrize("value", BAD_OFFSETS)
async def test_bad_offset_is_refused(record, value):
    response = await record.client.get("/fhir/Patient", params={"_offset": value})
    assert_outcome(response, 400, "value", expression="_offset", diagnostics="_offset must be a whole number")


async def test_garbled_paging_links_are_refused(doctor_client, world):
    family = tag()
    for _ in range(3):
        await create(doctor_client, patient(organization=world.home, family=family, with_id_number=False))
    first = await search(doctor_client, "Patient", {"family": family, "_count": "1"})
    following = link(first, "next")
    assert following and "_offset=1" in following
    for garbage in ("_offset=-1", "_offset=one", "_offset=1%00", "_offset=99999999999999999999999"):
        response = await doctor_client.get(following.replace("_offset=1", garbage))
        assert_outcome(response, 400, "value", expression="_offset")
    for garbage in ("_count=-1", "_count=", "_count=1e3"):
        response = await doctor_client.get(following.replace("_count=1", garbage))
        assert_outcome(response, 400, "value", expression="_count")


async def test_count_zero_is_a_total_without_entries(record):
    client, pid = record.client, record.patient["id"]
    bundle = await search(client, "Observation", {"subject": f"Patient/{pid}", "_count": "0"})
    assert bundle["total"] == 1 and "entry" not in bundle
    assert link(bundle, "next") is None and "_count=0" in link(bundle, "self")


async def test_count_above_the_maximum_is_lowered_with_a_warning(record):
    client, pid = record.client, record.patient["id"]
    for value in ("501", "100000", "999999999"):
        bundle = await search(client, "Observation", {"subject": f"Patient/{pid}", "_count": value})
        assert ids(bundle) == [record.observation["id"]] and "_count=500" in link(bundle, "self")
        warning = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"][0]
        assert warning["issue"][0]["severity"] == "warning" and "at most 500" in warning["issue"][0]["diagnostics"]


async def test_history_paging_parameters_are_checked(record):
    path = f"/fhir/Patient/{record.patient['id']}/_history"
    for params, words in (({"_count": "-1"}, "_count"), ({"_count": "abc"}, "_count"), ({"_offset": "x"}, "_offset"),
                          ({"_since": "yesterday"}, "not a FHIR date"), ({"_since": '{"$gt": ""}'}, "not a FHIR date")):
        assert_outcome(await record.client.get(path, params=params), 400, "value", diagnostics=words)
