"""FHIR REST instance interactions through the live app: create, read, vread, update, If-Match, conditional
create, delete, history and Prefer."""

from __future__ import annotations

import asyncio

from sample_records import (
    FHIR_JSON, JSON_HEADERS, assert_outcome, create, link, observation, organization, patient, server_now, tag,
    walk_pages,
)
from fhir_profiles.identifiers import NATIONAL_ID_SYSTEM


# --- create, read, vread ----------------------------------------------------------------------------


async def test_create_assigns_id_location_and_etag(doctor_client, world):
    body = patient(organization=world.home, id="client-chosen")
    response = await doctor_client.post("/fhir/Patient", json=body, headers=JSON_HEADERS)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    created = response.json()
    new_id = created["id"]
    assert new_id != "client-chosen"  # POST ignores a client id
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"http://testserver/fhir/Patient/{new_id}/_history/1"
    assert response.headers["last-modified"].endswith("GMT")
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"].endswith("Z")
    assert created["name"] == body["name"] and created["identifier"] == body["identifier"]


async def test_read_returns_current_version_with_etag(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    response = await doctor_client.get(f"/fhir/Patient/{created['id']}")
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["content-type"].startswith(FHIR_JSON)
    assert response.json() == created


async def test_read_unknown_and_malformed_ids(doctor_client):
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{tag()}"), 404, "not-found", diagnostics="not known")
    assert_outcome(await doctor_client.get("/fhir/Patient/" + "a" * 65), 400, "value", expression="id")
    assert_outcome(await doctor_client.get("/fhir/Patient/bad_id!"), 400, "value", expression="id")


async def test_vread_each_version(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home, gender="male"))
    pid = created["id"]
    changed = {**created, "active": True}
    response = await doctor_client.put(f"/fhir/Patient/{pid}", json=changed, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text

    first = await doctor_client.get(f"/fhir/Patient/{pid}/_history/1")
    assert first.status_code == 200
    assert first.headers["etag"] == 'W/"1"'
    assert first.json()["meta"]["versionId"] == "1" and "active" not in first.json()
    second = await doctor_client.get(f"/fhir/Patient/{pid}/_history/2")
    assert second.json()["meta"]["versionId"] == "2" and second.json()["active"] is True

    assert_outcome(await doctor_client.get(f"/fhir/Patient/{pid}/_history/3"), 404, "not-found")
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{pid}/_history/two"), 400, "value")
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{tag()}/_history/1"), 404, "not-found")


# --- update and If-Match -------------------------------------------------------------------------------


async def test_update_bumps_version_and_ignores_client_meta(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    body = {**created, "active": False, "meta": {"versionId": "77", "lastUpdated": "2001-01-01T00:00:00Z"}}
    response = await doctor_client.put(f"/fhir/Patient/{pid}", json=body, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/2")
    updated = response.json()
    assert updated["meta"]["versionId"] == "2"
    assert updated["meta"]["lastUpdated"] >= created["meta"]["lastUpdated"]
    assert (await doctor_client.get(f"/fhir/Patient/{pid}")).json() == updated


async def test_put_with_client_id_creates(doctor_client, world):
    pid = tag()
    response = await doctor_client.put(f"/fhir/Patient/{pid}", json=patient(organization=world.home, id=pid),
                                       headers=JSON_HEADERS)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert response.json()["id"] == pid
    assert (await doctor_client.get(f"/fhir/Patient/{pid}")).status_code == 200
    history = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert history["total"] == 1 and history["entry"][0]["request"]["method"] == "POST"


async def test_if_match_version_aware_update(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    ok = await doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "active": True},
                                 headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == 'W/"2"'

    stale = await doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "active": False},
                                    headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
    assert_outcome(stale, 412, "conflict", diagnostics="current version is 2")
    current = (await doctor_client.get(f"/fhir/Patient/{pid}")).json()
    assert current["active"] is True and current["meta"]["versionId"] == "2"

    # If-Match on a resource that does not exist cannot match.
    absent = tag()
    assert_outcome(await doctor_client.put(f"/fhir/Patient/{absent}", json=patient(organization=world.home, id=absent),
                                           headers={**JSON_HEADERS, "If-Match": 'W/"1"'}), 412, "conflict")
    assert (await doctor_client.get(f"/fhir/Patient/{absent}")).status_code == 404


async def test_two_concurrent_puts_with_same_if_match_exactly_one_wins(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    headers = {**JSON_HEADERS, "If-Match": 'W/"1"'}
    bodies = [{**created, "name": [{"family": f"winner{i}", "given": ["x"]}]} for i in range(2)]
    responses = await asyncio.gather(*(doctor_client.put(f"/fhir/Patient/{pid}", json=b, headers=headers)
                                       for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 412], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    assert_outcome(next(r for r in responses if r.status_code == 412), 412, "conflict")

    history = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert history["total"] == 2
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    current = (await doctor_client.get(f"/fhir/Patient/{pid}")).json()
    assert current == winner and current["meta"]["versionId"] == "2"


async def test_many_concurrent_puts_without_if_match_all_land(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    responses = await asyncio.gather(*(
        doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "name": [{"family": f"w{i}"}]}, headers=JSON_HEADERS)
        for i in range(3)))
    assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    landed = sum(r.status_code == 200 for r in responses)
    history = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert history["total"] == 1 + landed
    versions = sorted(int(e["response"]["etag"][3:-1]) for e in history["entry"])
    assert versions == list(range(1, 2 + landed))


# --- conditional create ------------------------------------------------------------------------------


async def test_conditional_create_if_none_exist(doctor_client, world):
    family = tag()
    first = patient(organization=world.home, family=family)
    number = first["identifier"][0]["value"]
    criteria = f"identifier={NATIONAL_ID_SYSTEM}|{number}"

    made = await doctor_client.post("/fhir/Patient", json=first, headers={**JSON_HEADERS, "If-None-Exist": criteria})
    assert made.status_code == 201, made.text
    again = await doctor_client.post("/fhir/Patient", json=first, headers={**JSON_HEADERS, "If-None-Exist": criteria})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == made.json()["id"]
    assert again.headers["etag"] == 'W/"1"'
    history = (await doctor_client.get(f"/fhir/Patient/{made.json()['id']}/_history")).json()
    assert history["total"] == 1

    await create(doctor_client, patient(organization=world.home, family=family))
    two = await doctor_client.post("/fhir/Patient", json=patient(organization=world.home, family=family),
                                   headers={**JSON_HEADERS, "If-None-Exist": f"family={family}"})
    assert_outcome(two, 412, "duplicate", diagnostics="matched 2")
    bundle = (await doctor_client.get("/fhir/Patient", params={"family": family})).json()
    assert bundle["total"] == 2


async def test_conditional_create_with_bad_criteria_is_400(doctor_client, world):
    response = await doctor_client.post("/fhir/Patient", json=patient(organization=world.home),
                                        headers={**JSON_HEADERS, "If-None-Exist": "nosuchparam=1"})
    assert_outcome(response, 400, "not-supported")
    response = await doctor_client.post("/fhir/Patient", json=patient(organization=world.home),
                                        headers={**JSON_HEADERS, "If-None-Exist": "birthdate=1990-13"})
    assert_outcome(response, 400, "value")


# --- delete ------------------------------------------------------------------------------------------


async def test_delete_then_gone_with_history_and_vread(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    deleted = await doctor_client.delete(f"/fhir/Patient/{pid}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert deleted.headers["etag"] == 'W/"2"'

    gone = assert_outcome(await doctor_client.get(f"/fhir/Patient/{pid}"), 410, "deleted")
    assert gone["issue"][0]["diagnostics"].endswith("was deleted")
    assert_outcome(await doctor_client.get(f"/fhir/Patient/{pid}/_history/2"), 410, "deleted")
    assert (await doctor_client.get(f"/fhir/Patient/{pid}/_history/1")).json()["id"] == pid

    history = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert history["total"] == 2
    newest = history["entry"][0]
    assert newest["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert "resource" not in newest and newest["response"]["etag"] == 'W/"2"'
    assert (await doctor_client.get("/fhir/Patient", params={"_id": pid})).json()["total"] == 0

    # Deleting again changes nothing; PUT brings it back as a new version.
    assert (await doctor_client.delete(f"/fhir/Patient/{pid}")).status_code == 204
    assert (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()["total"] == 2
    back = await doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "meta": {}}, headers=JSON_HEADERS)
    assert back.status_code == 201, back.text
    assert back.headers["etag"] == 'W/"3"'
    assert (await doctor_client.get(f"/fhir/Patient/{pid}")).status_code == 200


async def test_delete_unknown_is_404(doctor_client):
    assert_outcome(await doctor_client.delete(f"/fhir/Patient/{tag()}"), 404, "not-found")


# --- history -----------------------------------------------------------------------------------------


async def test_instance_history_newest_first_paged_and_since(doctor_client, world):
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    stamps = [created["meta"]["lastUpdated"]]
    for i in range(4):
        response = await doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "active": bool(i % 2)},
                                           headers=JSON_HEADERS)
        stamps.append(response.json()["meta"]["lastUpdated"])

    full = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert full["type"] == "history" and full["total"] == 5
    assert [e["resource"]["meta"]["versionId"] for e in full["entry"]] == ["5", "4", "3", "2", "1"]
    assert full["entry"][-1]["request"]["method"] == "POST" and full["entry"][0]["request"]["method"] == "PUT"

    first = (await doctor_client.get(f"/fhir/Patient/{pid}/_history", params={"_count": 2})).json()
    assert len(first["entry"]) == 2 and first["total"] == 5
    pages = await walk_pages(doctor_client, first)
    assert [len(p["entry"]) for p in pages] == [2, 2, 1]
    walked = [e["resource"]["meta"]["versionId"] for p in pages for e in p["entry"]]
    assert walked == ["5", "4", "3", "2", "1"]
    assert link(pages[1], "previous") is not None
    back = (await doctor_client.get(link(pages[1], "previous"))).json()
    assert [e["resource"]["meta"]["versionId"] for e in back["entry"]] == ["5", "4"]

    since = (await doctor_client.get(f"/fhir/Patient/{pid}/_history", params={"_since": stamps[3]})).json()
    # Versions written in the same millisecond as version 4 are "since" it too.
    versions = [e["resource"]["meta"]["versionId"] for e in since["entry"]]
    assert versions[:2] == ["5", "4"] and since["total"] == len(versions)
    assert all(e["resource"]["meta"]["lastUpdated"] >= stamps[3] for e in since["entry"])
    assert {"4", "5"} <= {e["resource"]["meta"]["versionId"] for e in since["entry"]}


async def test_type_history_newest_first_since_and_paging(doctor_client, admin_client):
    since = server_now()
    await asyncio.sleep(0.005)
    made = [await create(admin_client, organization()) for _ in range(3)]
    org = made[0]
    # Only administrators edit the directory; the doctor reads its history.
    changed = await admin_client.put(f"/fhir/Organization/{org['id']}", json={**org, "active": True},
                                     headers=JSON_HEADERS)
    assert changed.status_code == 200, changed.text
    assert (await admin_client.delete(f"/fhir/Organization/{made[1]['id']}")).status_code == 204

    history = (await doctor_client.get("/fhir/Organization/_history", params={"_since": since})).json()
    assert history["total"] == 5
    stamps = [e["response"]["lastModified"] for e in history["entry"]]
    assert stamps == sorted(stamps, reverse=True)
    methods = [e["request"]["method"] for e in history["entry"]]
    assert methods == ["DELETE", "PUT", "POST", "POST", "POST"]
    assert history["entry"][0]["request"]["url"] == f"Organization/{made[1]['id']}"
    assert history["entry"][-1]["request"]["url"] == "Organization"

    first = (await doctor_client.get("/fhir/Organization/_history", params={"_since": since, "_count": 2})).json()
    pages = await walk_pages(doctor_client, first)
    etags = [(e["fullUrl"], e["response"]["etag"]) for p in pages for e in p["entry"]]
    assert len(etags) == 5 and len(set(etags)) == 5
    assert all("_since" in p_link["url"] for p in pages for p_link in p["link"])


async def test_history_bad_parameters(doctor_client, admin_client):
    created = await create(admin_client, organization())
    path = f"/fhir/Organization/{created['id']}/_history"
    assert_outcome(await doctor_client.get(path, params={"_count": "many"}), 400, "value", diagnostics="_count")
    assert_outcome(await doctor_client.get(path, params={"_since": "yesterday"}), 400, "value")
    assert_outcome(await doctor_client.get(f"/fhir/Organization/{tag()}/_history"), 404, "not-found")
    assert_outcome(await doctor_client.get("/fhir/Nothing/_history"), 404, "not-supported")


# --- Prefer -------------------------------------------------------------------------------------------


async def test_prefer_return_minimal_representation_and_outcome(doctor_client, world):
    minimal = await doctor_client.post("/fhir/Patient", json=patient(organization=world.home),
                                       headers={**JSON_HEADERS, "Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["etag"] == 'W/"1"' and "/fhir/Patient/" in minimal.headers["location"]
    pid = minimal.headers["location"].split("/fhir/Patient/")[1].split("/")[0]
    current = (await doctor_client.get(f"/fhir/Patient/{pid}")).json()

    outcome = await doctor_client.put(f"/fhir/Patient/{pid}", json=current,
                                      headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 200
    body = outcome.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "information" and body["issue"][0]["code"] == "informational"
    assert f"Patient/{pid}/_history/2" in body["issue"][0]["diagnostics"]
    assert outcome.headers["etag"] == 'W/"2"'

    representation = await doctor_client.put(f"/fhir/Patient/{pid}", json=current,
                                             headers={**JSON_HEADERS, "Prefer": "return=representation"})
    assert representation.json()["resourceType"] == "Patient"
    assert representation.json()["meta"]["versionId"] == "3"

    minimal_put = await doctor_client.put(f"/fhir/Patient/{pid}", json=current,
                                          headers={**JSON_HEADERS, "Prefer": 'return="minimal"'})
    assert minimal_put.status_code == 200 and minimal_put.content == b""
    assert minimal_put.headers["etag"] == 'W/"4"'


async def test_observation_crud_round_trip(doctor_client, world):
    owner = await create(doctor_client, patient(organization=world.home))
    obs = await create(doctor_client, observation(owner["id"]))
    assert obs["subject"] == {"reference": f"Patient/{owner['id']}"}
    obs["status"] = "amended"
    response = await doctor_client.put(f"/fhir/Observation/{obs['id']}", json=obs,
                                       headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
    assert response.status_code == 200 and response.json()["status"] == "amended"
    assert (await doctor_client.delete(f"/fhir/Observation/{obs['id']}")).status_code == 204
    assert_outcome(await doctor_client.get(f"/fhir/Observation/{obs['id']}"), 410, "deleted")


async def test_concurrent_if_match_puts_repeatedly_one_winner(doctor_client, world):
    """Several rounds of three writers on the same version: each round exactly one wins."""
    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    for version in range(1, 5):
        headers = {**JSON_HEADERS, "If-Match": f'W/"{version}"'}
        responses = await asyncio.gather(*(
            doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "name": [{"family": f"r{version}w{i}"}]},
                              headers=headers) for i in range(3)))
        assert sorted(r.status_code for r in responses) == [200, 412, 412], [r.text for r in responses]
    history = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert [e["response"]["etag"] for e in history["entry"]] == [f'W/"{v}"' for v in range(5, 0, -1)]


async def test_write_abandoned_between_history_and_current_is_rolled_forward(doctor_client, world, app):
    """A writer that died after writing its history entry must not leave the record stuck at a conflict."""
    from datetime import timedelta

    from ehr.service import ABANDONED_WRITE_AFTER, now_utc
    from ehr.store import RecordStore

    created = await create(doctor_client, patient(organization=world.home))
    pid = created["id"]
    orphan = {**created, "active": True, "meta": {"versionId": "2", "lastUpdated": created["meta"]["lastUpdated"]}}
    stamp = now_utc() - ABANDONED_WRITE_AFTER - timedelta(seconds=1)
    assert await RecordStore(app.state.db).claim_version("Patient", pid, 2, stamp, "PUT", orphan, "dead-writer",
                                                         [f"Patient/{pid}"], [world.home])

    response = await doctor_client.put(f"/fhir/Patient/{pid}", json={**created, "active": False}, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"3"'
    history = (await doctor_client.get(f"/fhir/Patient/{pid}/_history")).json()
    by_version = {e["response"]["etag"]: e for e in history["entry"]}
    assert sorted(by_version) == ['W/"1"', 'W/"2"', 'W/"3"'] and history["total"] == 3
    assert by_version['W/"2"']["resource"]["active"] is True
