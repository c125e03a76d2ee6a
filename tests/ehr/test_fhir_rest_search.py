"""FHIR search through the live app: common parameters, Patient/clinical/Organization parameters, paging."""

from __future__ import annotations

import datetime as dt

import pytest

from logins import login
from sample_records import (
    ICD10, JSON_HEADERS, LOINC, OBS_CATEGORY_SYSTEM, assert_outcome, chinese_given, condition, create, encounter, ids,
    link, new_national_id, observation, organization, patient, search, tag, walk_pages,
)
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM, USCC_SYSTEM


# --- common parameters -------------------------------------------------------------------------------


async def test_search_by_id_single_and_list(doctor_client, world):
    a, b, _ = [await create(doctor_client, patient(organization=world.home)) for _ in range(3)]
    bundle = await search(doctor_client, "Patient", {"_id": a["id"]})
    assert bundle["type"] == "searchset" and bundle["total"] == 1 and ids(bundle) == [a["id"]]
    assert bundle["entry"][0]["fullUrl"] == f"http://testserver/fhir/Patient/{a['id']}"
    both = await search(doctor_client, "Patient", {"_id": f"{a['id']},{b['id']}"})
    assert sorted(ids(both)) == sorted([a["id"], b["id"]])
    assert (await search(doctor_client, "Patient", {"_id": tag()}))["total"] == 0


async def test_search_last_updated_prefixes(doctor_client, world):
    family = tag()
    made = await create(doctor_client, patient(organization=world.home, family=family))
    stamp = made["meta"]["lastUpdated"]  # millisecond precision, Z
    day = stamp[:10]

    async def found(value: str) -> bool:
        return ids(await search(doctor_client, "Patient", {"family": family, "_lastUpdated": value})) == [made["id"]]

    assert await found(stamp) and await found(f"eq{stamp}")
    assert await found(f"ge{stamp}") and await found(f"le{stamp}")
    assert not await found(f"gt{stamp}") and not await found(f"lt{stamp}")
    assert not await found(f"ne{stamp}")
    assert await found(day) and await found(stamp[:7]) and await found(stamp[:4])
    assert await found("gt2020-01-01") and not await found("lt2020-01-01")
    assert await found("sa2020-01-01T00:00:00Z") and not await found("eb2020-01-01")


async def test_count_default_max_and_zero(doctor_client, world):
    family = tag()
    for _ in range(23):
        await create(doctor_client, patient(organization=world.home, family=family, with_id_number=False))
    default = await search(doctor_client, "Patient", {"family": family})
    assert default["total"] == 23 and len(default["entry"]) == 20
    assert "_count=20" in link(default, "self") and link(default, "next") is not None

    capped = await search(doctor_client, "Patient", {"family": family, "_count": "1000"})
    assert len(ids(capped)) == 23 and "_count=500" in link(capped, "self")
    outcome = [e for e in capped["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["severity"] == "warning"

    none = await search(doctor_client, "Patient", {"family": family, "_count": "0"})
    assert none["total"] == 23 and "entry" not in none and link(none, "next") is None


async def test_sort_ascending_descending_and_by_last_updated(doctor_client, world):
    family = tag()
    dates = [dt.date(1970, 5, 1), dt.date(1990, 1, 2), dt.date(1955, 12, 31)]
    made = [await create(doctor_client, patient(organization=world.home, family=family, birth_date=d)) for d in dates]
    by_date = {m["birthDate"]: m["id"] for m in made}
    ascending = await search(doctor_client, "Patient", {"family": family, "_sort": "birthdate"})
    assert ids(ascending) == [by_date[d] for d in sorted(by_date)]
    descending = await search(doctor_client, "Patient", {"family": family, "_sort": "-birthdate"})
    assert ids(descending) == [by_date[d] for d in sorted(by_date, reverse=True)]
    newest = await search(doctor_client, "Patient", {"family": family, "_sort": "-_lastUpdated"})
    assert ids(newest) == [m["id"] for m in reversed(made)]
    assert "_sort=-birthdate" in link(descending, "self")
    assert_outcome(await doctor_client.get("/fhir/Patient", params={"_sort": "shoe-size"}), 400, "not-supported",
                   diagnostics="shoe-size")


async def test_include_and_revinclude(doctor_client, world):
    owner = await create(doctor_client, patient(organization=world.home))
    obs = [await create(doctor_client, observation(owner["id"])) for _ in range(2)]
    other = await create(doctor_client, patient(organization=world.home))
    await create(doctor_client, observation(other["id"]))

    bundle = await search(doctor_client, "Observation", {"patient": owner["id"], "_include": "Observation:patient"})
    assert sorted(ids(bundle)) == sorted(o["id"] for o in obs)
    assert ids(bundle, "include") == [owner["id"]]  # once, though both observations point at it
    assert bundle["total"] == 2  # total counts matches only

    rev = await search(doctor_client, "Patient", {"_id": owner["id"], "_revinclude": "Observation:patient",
                                                  "_include": "Patient:organization"})
    assert ids(rev) == [owner["id"]]
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in rev["entry"]
                if e["search"]["mode"] == "include"}
    # The doctor registers patients only at their own hospital, so that is the organization included.
    home = world.home.removeprefix("Organization/")
    assert included == {("Observation", o["id"]) for o in obs} | {("Organization", home)}

    assert_outcome(await doctor_client.get("/fhir/Observation", params={"_include": "Observation:code"}), 400,
                   "invalid", diagnostics="not a reference parameter")


async def test_summary_count_and_elements(doctor_client, world):
    family = tag()
    for _ in range(3):
        await create(doctor_client, patient(organization=world.home, family=family))
    counted = await search(doctor_client, "Patient", {"family": family, "_summary": "count"})
    assert counted["total"] == 3 and "entry" not in counted

    shaped = await search(doctor_client, "Patient", {"family": family, "_elements": "gender,birthDate"})
    for entry in shaped["entry"]:
        resource = entry["resource"]
        assert set(resource) == {"resourceType", "id", "meta", "gender", "birthDate"}
        assert any(t["code"] == "SUBSETTED" for t in resource["meta"]["tag"])
    assert_outcome(await doctor_client.get("/fhir/Patient", params={"_summary": "maybe"}), 400, "value")


# --- Patient parameters --------------------------------------------------------------------------------


async def test_patient_identifier_token_forms(doctor_client, world):
    made = await create(doctor_client, patient(organization=world.home))
    number = made["identifier"][0]["value"]
    for value in (f"{NATIONAL_ID_SYSTEM}|{number}", number):
        assert ids(await search(doctor_client, "Patient", {"identifier": value})) == [made["id"]]
    assert (await search(doctor_client, "Patient", {"identifier": f"urn:other|{number}"}))["total"] == 0
    assert made["id"] in ids(await search(doctor_client, "Patient", {"identifier": f"{NATIONAL_ID_SYSTEM}|",
                                                                     "_id": made["id"]}))


async def test_a_national_id_search_follows_the_number_through_changes_and_keeps_the_access_rules(
        doctor_client, world, app):
    """Such a search is answered through the identifier keys; what it returns must still be exactly what the
    filter and the access rules say, as the number moves from one patient to another."""
    first = await create(doctor_client, patient(organization=world.home))
    number = first["identifier"][0]["value"]
    by_number = {"identifier": f"{NATIONAL_ID_SYSTEM}|{number}"}
    assert ids(await search(doctor_client, "Patient", by_number)) == [first["id"]]
    assert ids(await search(doctor_client, "Patient", {**by_number, "gender": "other"})) == []

    # The number leaves the first patient (a typo corrected) and is given to a new one.
    changed = {**first, "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": new_national_id()}]}
    changed.pop("birthDate", None), changed.pop("gender", None)
    assert (await doctor_client.put(f"/fhir/Patient/{first['id']}", json=changed,
                                    headers=JSON_HEADERS)).status_code == 200
    empty = await search(doctor_client, "Patient", by_number)
    assert empty["total"] == 0 and ids(empty) == []
    second = await create(doctor_client, patient(
        organization=world.home, birth_date=dt.date.fromisoformat(first["birthDate"]), gender=first["gender"],
        identifier=[{"system": NATIONAL_ID_SYSTEM, "value": number}]))
    assert ids(await search(doctor_client, "Patient", by_number)) == [second["id"]]

    # A doctor of another hospital finds nothing by that number, as by any other parameter.
    stranger = await login(app, world.doctor_elsewhere)
    try:
        assert (await search(stranger, "Patient", by_number))["total"] == 0
    finally:
        await stranger.aclose()
    nobody = await search(doctor_client, "Patient", {"identifier": f"{NATIONAL_ID_SYSTEM}|{new_national_id()}"})
    assert nobody["total"] == 0


async def test_total_is_exact_on_every_page_and_past_the_last_one(doctor_client, world):
    """The total of a page that holds the last match is taken from the page itself; past the end it is counted."""
    family = tag()
    for _ in range(5):
        await create(doctor_client, patient(organization=world.home, family=family, with_id_number=False))
    pages = await walk_pages(doctor_client, await search(doctor_client, "Patient", {"family": family, "_count": "2"}))
    assert [p["total"] for p in pages] == [5, 5, 5] and [len(ids(p)) for p in pages] == [2, 2, 1]
    past = link(pages[0], "next").replace("_offset=2", "_offset=40")
    beyond = (await doctor_client.get(past)).json()
    assert beyond["total"] == 5 and ids(beyond) == []
    whole = await search(doctor_client, "Patient", {"family": family, "_count": "5"})
    assert whole["total"] == 5 and link(whole, "next") is None


async def test_patient_name_family_given_string_modifiers(doctor_client, world):
    family, given = tag(), tag()
    made = await create(doctor_client, patient(organization=world.home, family=family, given=[given, "Mary"]))
    pid = made["id"]
    assert ids(await search(doctor_client, "Patient", {"name": family[:6], "_id": pid})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name": family.upper()})) == [pid]  # case-insensitive
    assert ids(await search(doctor_client, "Patient", {"name:exact": family})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name:exact": family.upper()})) == []
    assert ids(await search(doctor_client, "Patient", {"name:exact": family[:6], "_id": pid})) == []
    assert ids(await search(doctor_client, "Patient", {"name:contains": family[3:9]})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name": family[3:9], "_id": pid})) == []  # not a prefix
    assert ids(await search(doctor_client, "Patient", {"family": family})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"given": given})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"given": "mary", "family": family})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"family": given})) == []


async def test_patient_chinese_names(doctor_client, world):
    given = chinese_given()
    made = await create(doctor_client, patient(organization=world.home, family="欧阳", given=[given]))
    pid = made["id"]
    whole = "欧阳" + given
    assert ids(await search(doctor_client, "Patient", {"name": whole})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name:exact": whole})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name": whole[:3]})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"name:contains": given[1:]})) == [pid]
    assert ids(await search(doctor_client, "Patient", {"given": given})) == [pid]
    assert pid in ids(await search(doctor_client, "Patient", {"family": "欧阳", "_count": "500"}))


@pytest.mark.parametrize("value, expected", [
    ("1980", {0, 1}), ("1980-03", {0}), ("1980-03-15", {0}), ("eq1980-07-01", {1}),
    ("ne1980", {2}), ("gt1980", {2}), ("lt1981", {0, 1}), ("ge1980-07", {1, 2}), ("le1980-07-01", {0, 1}),
    ("gt1980-03-15", {1, 2}), ("lt1980-03-15", set()), ("sa1980-03-15", {1, 2}), ("eb1981", {0, 1}),
    ("ge1981-01-20", {2}), ("1979", set()),
])
async def test_patient_birthdate_prefixes_and_precision(doctor_client, world, value, expected):
    family = tag()
    births = [dt.date(1980, 3, 15), dt.date(1980, 7, 1), dt.date(1981, 1, 20)]
    made = [await create(doctor_client, patient(organization=world.home, family=family, birth_date=b)) for b in births]
    found = set(ids(await search(doctor_client, "Patient", {"family": family, "birthdate": value})))
    assert found == {made[i]["id"] for i in expected}


async def test_patient_gender_telecom_organization(doctor_client, world, admin_client):
    family = tag()
    org = await create(admin_client, organization())
    phone = "13" + str(uuid_digits(9))
    woman = await create(doctor_client, patient(organization=world.home, family=family, gender="female",
                                                telecom=[{"system": "phone", "value": phone}]))
    man = await create(doctor_client, patient(organization=world.home, family=family, gender="male"))
    assert ids(await search(doctor_client, "Patient", {"family": family, "gender": "male"})) == [man["id"]]
    assert set(ids(await search(doctor_client, "Patient", {"family": family, "gender": "male,female"}))) == \
        {man["id"], woman["id"]}
    assert ids(await search(doctor_client, "Patient", {"telecom": phone})) == [woman["id"]]
    assert ids(await search(doctor_client, "Patient", {"telecom": f"phone|{phone}"})) == [woman["id"]]
    assert ids(await search(doctor_client, "Patient", {"telecom": f"email|{phone}"})) == []
    # The doctor may register patients only at their own hospital, so both carry it; a hospital that manages
    # none of them matches none.
    home = world.home.removeprefix("Organization/")
    for value in (home, world.home, f"http://testserver/fhir/{world.home}"):
        assert set(ids(await search(doctor_client, "Patient", {"organization": value, "family": family}))) == \
            {woman["id"], man["id"]}
    for value in (org["id"], f"Organization/{org['id']}", f"http://testserver/fhir/Organization/{org['id']}"):
        assert ids(await search(doctor_client, "Patient", {"organization": value, "family": family})) == []


def uuid_digits(n: int) -> str:
    return "".join(c for c in tag() + tag() + tag() if c.isdigit()).ljust(n, "7")[:n]


# --- clinical parameters ------------------------------------------------------------------------------


async def test_observation_parameters(doctor_client, world):
    owner = await create(doctor_client, patient(organization=world.home))
    pid = owner["id"]
    enc = await create(doctor_client, encounter(pid))
    bp = await create(doctor_client, observation(pid, code="8480-6", effective="2024-03-01T08:00:00Z",
                                                 encounter={"reference": f"Encounter/{enc['id']}"}))
    glucose = await create(doctor_client, observation(pid, code="2345-7", status="preliminary", category="laboratory",
                                                      effective="2024-05-20T10:30:00+08:00"))

    async def found(**params) -> set[str]:
        return set(ids(await search(doctor_client, "Observation", {"patient": pid, **params})))

    assert await found() == {bp["id"], glucose["id"]}
    assert set(ids(await search(doctor_client, "Observation", {"subject": f"Patient/{pid}"}))) == \
        {bp["id"], glucose["id"]}
    assert await found(code=f"{LOINC}|8480-6") == {bp["id"]}
    assert await found(code="2345-7") == {glucose["id"]}
    assert await found(code=f"{LOINC}|") == {bp["id"], glucose["id"]}
    assert await found(code="http://snomed.info/sct|8480-6") == set()
    assert await found(status="preliminary") == {glucose["id"]}
    assert await found(category=f"{OBS_CATEGORY_SYSTEM}|vital-signs") == {bp["id"]}
    assert await found(encounter=f"Encounter/{enc['id']}") == {bp["id"]}
    assert await found(date="2024-03") == {bp["id"]}
    assert await found(date="2024-03-01") == {bp["id"]}
    assert await found(date="ge2024-04-01") == {glucose["id"]}
    assert await found(date="lt2024-05-20T02:30:00Z") == {bp["id"]}  # 10:30+08:00 is 02:30Z
    assert await found(date="le2024-05-20T02:30:00Z") == {bp["id"], glucose["id"]}
    assert await found(date="2024-05-20T10:30:00+08:00") == {glucose["id"]}
    assert await found(date="ne2024-03-01") == {glucose["id"]}
    assert await found(date="gt2024") == set()


async def test_condition_and_encounter_parameters(doctor_client, world):
    owner = await create(doctor_client, patient(organization=world.home))
    pid = owner["id"]
    enc = await create(doctor_client, encounter(pid))
    hypertension = await create(doctor_client, condition(pid, code="I10",
                                                         encounter={"reference": f"Encounter/{enc['id']}"}))
    diabetes = await create(doctor_client, condition(pid, code="E11.9", recordedDate="2023-06-01"))
    assert ids(await search(doctor_client, "Condition", {"patient": pid, "code": f"{ICD10}|E11.9"})) == [diabetes["id"]]
    assert ids(await search(doctor_client, "Condition", {"subject": f"Patient/{pid}", "encounter": enc["id"]})) == \
        [hypertension["id"]]
    assert set(ids(await search(doctor_client, "Condition", {
        "patient": pid, "category": "problem-list-item"}))) == {hypertension["id"], diabetes["id"]}
    assert ids(await search(doctor_client, "Condition", {"patient": pid, "date": "lt2024"})) == [diabetes["id"]]
    assert ids(await search(doctor_client, "Encounter", {"patient": pid, "status": "finished",
                                                         "date": "2024-03-01"})) == [enc["id"]]


# --- Organization parameters --------------------------------------------------------------------------


async def test_organization_parameters(doctor_client, admin_client):
    word = tag()
    parent = await create(admin_client, organization(name=f"山东省立医院 {word}"))
    child = await create(admin_client, organization(
        name=f"Qilu County Hospital {word}",
        type=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}],
        partOf={"reference": f"Organization/{parent['id']}"},
        address=[{"city": f"济南市{word}", "district": "历下区", "line": ["经十路 1 号"]}]))
    uscc = child["identifier"][0]["value"]
    assert ids(await search(doctor_client, "Organization", {"identifier": f"{USCC_SYSTEM}|{uscc}"})) == [child["id"]]
    assert ids(await search(doctor_client, "Organization", {"name": "qilu county", "address": f"济南市{word}"})) == \
        [child["id"]]
    assert ids(await search(doctor_client, "Organization", {"name:contains": f"医院 {word}"})) == [parent["id"]]
    assert ids(await search(doctor_client, "Organization", {"partof": parent["id"]})) == [child["id"]]
    assert ids(await search(doctor_client, "Organization", {"type": "prov", "address": f"济南市{word}"})) == \
        [child["id"]]
    assert ids(await search(doctor_client, "Organization", {"address": f"济南市{word}", "type": "dept"})) == []


# --- unknown parameters, POST _search -----------------------------------------------------------------


async def test_unknown_parameter_lenient_and_strict(doctor_client, world):
    family = tag()
    made = await create(doctor_client, patient(organization=world.home, family=family))
    bundle = await search(doctor_client, "Patient", {"family": family, "shoe-size": "42"})
    assert ids(bundle) == [made["id"]]
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    issue = outcomes[0]["resource"]["issue"][0]
    assert outcomes[0]["resource"]["resourceType"] == "OperationOutcome"
    assert issue["severity"] == "warning" and issue["code"] == "not-supported"
    assert "shoe-size" in issue["diagnostics"] and issue["expression"] == ["shoe-size"]
    assert "shoe-size" not in link(bundle, "self")

    strict = await doctor_client.get("/fhir/Patient", params={"family": family, "shoe-size": "42"},
                                     headers={"Prefer": "handling=strict"})
    assert_outcome(strict, 400, "not-supported", expression="shoe-size", diagnostics="shoe-size")


async def test_post_search_matches_get(doctor_client, world):
    family = tag()
    made = [await create(doctor_client, patient(organization=world.home, family=family)) for _ in range(2)]
    response = await doctor_client.post("/fhir/Patient/_search", data={"family": family, "_sort": "_id"})
    assert response.status_code == 200, response.text
    assert ids(response.json()) == sorted(m["id"] for m in made)
    mixed = await doctor_client.post(f"/fhir/Patient/_search?_id={made[0]['id']}", data={"family": family})
    assert ids(mixed.json()) == [made[0]["id"]]
    wrong = await doctor_client.post("/fhir/Patient/_search", json={"family": family})
    assert_outcome(wrong, 415, "not-supported")
    strict = await doctor_client.post("/fhir/Patient/_search", data={"nope": "1"},
                                      headers={"Prefer": "handling=strict"})
    assert_outcome(strict, 400, "not-supported")


# --- paging -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", [None, "-birthdate", "family,-_lastUpdated"])
async def test_paging_walks_every_result_once(doctor_client, world, sort):
    family = tag()
    made = {(await create(doctor_client, patient(organization=world.home, family=family, with_id_number=False)))["id"]
            for _ in range(23)}
    params = {"family": family, "_count": "5"}
    if sort:
        params["_sort"] = sort
    first = await search(doctor_client, "Patient", params)
    assert first["total"] == 23 and link(first, "previous") is None
    pages = await walk_pages(doctor_client, first)
    assert [len(ids(p)) for p in pages] == [5, 5, 5, 5, 3]
    assert all(p["total"] == 23 for p in pages)
    walked = [i for p in pages for i in ids(p)]
    assert len(walked) == len(set(walked)) and set(walked) == made
    assert link(pages[-1], "next") is None

    # previous goes back exactly one page
    back = (await doctor_client.get(link(pages[2], "previous"))).json()
    assert ids(back) == ids(pages[1])
    if sort:
        assert all(f"_sort={sort}".replace(",", "%2C") in link(p, "self") for p in pages)


async def test_paging_by_post_search_links_are_gettable(doctor_client, world):
    family = tag()
    made = {(await create(doctor_client, patient(organization=world.home, family=family, with_id_number=False)))["id"]
            for _ in range(7)}
    first = (await doctor_client.post("/fhir/Patient/_search", data={"family": family, "_count": "3"})).json()
    walked = [i for p in await walk_pages(doctor_client, first) for i in ids(p)]
    assert sorted(walked) == sorted(made)


async def test_bad_search_values(doctor_client):
    cases = [
        ({"_count": "abc"}, "value", "_count"),
        ({"_count": "-1"}, "value", "_count"),
        ({"birthdate": "1980-13-01"}, "value", "birthdate"),
        ({"birthdate": "xx1980"}, "value", "birthdate"),
        ({"_lastUpdated": "yesterday"}, "value", "_lastUpdated"),
        ({"organization": "not an id!"}, "invalid", "organization"),
        ({"gender:fuzzy": "male"}, "invalid", "gender:fuzzy"),
        ({"identifier": "a|b|c"}, "invalid", "identifier"),
    ]
    for params, code, expression in cases:
        response = await doctor_client.get("/fhir/Patient", params=params)
        assert_outcome(response, 400, code, expression=expression)
    assert_outcome(await doctor_client.get("/fhir/Nothing", params={"_id": "x"}), 404, "not-supported")


async def test_paging_without_total_still_links_next(doctor_client, world):
    family = tag()
    made = {(await create(doctor_client, patient(organization=world.home, family=family, with_id_number=False)))["id"]
            for _ in range(5)}
    first = await search(doctor_client, "Patient", {"family": family, "_count": "2", "_total": "none"})
    assert "total" not in first
    pages = await walk_pages(doctor_client, first)
    assert [len(ids(p)) for p in pages] == [2, 2, 1]
    assert sorted(i for p in pages for i in ids(p)) == sorted(made)
    exact = await search(doctor_client, "Patient", {"family": family, "_count": "5", "_total": "none"})
    assert len(ids(exact)) == 5 and link(exact, "next") is None


@pytest.mark.parametrize("count", [3, 4, 50])
async def test_everything_pages_walk_the_whole_record_once_with_its_total(doctor_client, world, count):
    """Whether a type fits the first page (counted by it) or not (counted), and on later pages (by the counts),
    the pages hold every resource of the record once, the Patient first, and say the same total."""
    pid = (await create(doctor_client, patient(organization=world.home)))["id"]
    made = {pid}
    for _ in range(5):
        made.add((await create(doctor_client, observation(pid)))["id"])
    for _ in range(2):
        made.add((await create(doctor_client, condition(pid)))["id"])
    made.add((await create(doctor_client, encounter(pid)))["id"])
    first = await search(doctor_client, f"Patient/{pid}/$everything", {"_count": str(count)})
    pages = await walk_pages(doctor_client, first)
    seen = [e["resource"]["id"] for page in pages for e in page.get("entry", [])]
    assert first["entry"][0]["resource"]["resourceType"] == "Patient"
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
    assert {page["total"] for page in pages} == {len(made)}
    assert len(pages) == -(-len(made) // count)
