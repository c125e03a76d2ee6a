"""The directory routing reads: built from FHIR JSON, loaded from the real record store, cached for a while."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ehr.service import RecordService
from ehr.store import RecordStore
from fhir_profiles.extensions import (
    CAPABILITY_SYSTEM,
    accepting_referrals_extension,
    division_code_extension,
    hospital_tier_extension,
    medical_alliance_extension,
    referral_capacity_extension,
)
from fhir_profiles.identifiers import USCC_SYSTEM, make_uscc
from referral import directory as directory_module
from referral.directory import (
    DEFAULT_DAILY_CAPACITY,
    SPECIALTY_SYSTEM,
    Directory,
    DirectoryCache,
    Service,
    load_directory,
)


def org(org_id: str, *, tier=(3, "甲"), division="370102", alliance: str | None = "alliance-370100-1",
        active=True, **extra) -> dict:
    extensions = []
    if tier:
        extensions.append(hospital_tier_extension(*tier))
    if division:
        extensions.append(division_code_extension(division))
    if alliance:
        extensions.append(medical_alliance_extension(alliance))
    resource = {"resourceType": "Organization", "id": org_id, "active": active, "name": f"医院{org_id}",
                "identifier": [{"system": USCC_SYSTEM, "value": make_uscc(org_id + uuid.uuid4().hex)}],
                "extension": extensions}
    resource.update(extra)
    return resource


def hs(hs_id: str, org_id: str, specialty="cardiology", caps=("pci",), capacity: int | None = 12,
       accepting: bool | None = True, active=True, provided_by: str | None = None) -> dict:
    extensions = []
    if capacity is not None:
        extensions.append(referral_capacity_extension(capacity))
    if accepting is not None:
        extensions.append(accepting_referrals_extension(accepting))
    resource = {"resourceType": "HealthcareService", "id": hs_id, "active": active,
                "providedBy": {"reference": provided_by or f"Organization/{org_id}"},
                "specialty": [{"coding": [{"system": SPECIALTY_SYSTEM, "code": specialty}]}],
                "characteristic": [{"coding": [{"system": CAPABILITY_SYSTEM, "code": c}]} for c in caps]
                + [{"coding": [{"system": "http://example.org/other", "code": "not-a-capability"}]}]}
    if extensions:
        resource["extension"] = extensions
    return resource


# --- from_resources (pure) -----------------------------------------------------------------------


def test_from_resources_reads_tier_place_alliance_and_departments():
    orgs = [org("qilu", address=[{"state": "山东省", "city": "济南市", "district": "历下区"}]),
            org("pingyin", tier=(2, "乙"), division="370124", alliance=None,
                address=[{"city": "济南市", "district": "平阴县"}])]
    services = [hs("hs-qilu-cardio", "qilu", caps=("pci", "chronic-care"), capacity=30),
                hs("hs-qilu-neuro", "qilu", specialty="neurology", caps=("thrombectomy",), accepting=False),
                hs("hs-pingyin-cardio", "pingyin", caps=(), capacity=0)]
    directory = Directory.from_resources(orgs, services)

    qilu = directory.hospitals["Organization/qilu"]
    assert (qilu.name, qilu.level, qilu.grade, qilu.division, qilu.alliance) == (
        "医院qilu", 3, "甲", "370102", "alliance-370100-1")
    assert qilu.services == (
        Service(id="hs-qilu-cardio", organization="Organization/qilu", specialty="cardiology",
                capabilities=frozenset({"pci", "chronic-care"}), daily_capacity=30, accepting=True),
        Service(id="hs-qilu-neuro", organization="Organization/qilu", specialty="neurology",
                capabilities=frozenset({"thrombectomy"}), daily_capacity=12, accepting=False),
    )
    pingyin = directory.hospitals["Organization/pingyin"]
    assert (pingyin.level, pingyin.alliance, pingyin.services[0].daily_capacity) == (2, None, 0)
    assert directory.place_names == {"370102": "历下区", "370100": "济南市", "370000": "山东省",
                                     "370124": "平阴县"}


def test_the_specialty_index_is_by_level_in_id_order():
    orgs = [org("b"), org("a"), org("c", tier=(2, "甲"))]
    services = [hs(f"hs-{o}", o) for o in ("b", "a", "c")] + [hs("hs-a-neuro", "a", specialty="neurology")]
    directory = Directory.from_resources(orgs, services)
    assert [h.id for h, _ in directory.offering("cardiology", [3])] == ["Organization/a", "Organization/b"]
    assert [h.id for h, _ in directory.offering("cardiology", [2, 3])] == [
        "Organization/c", "Organization/a", "Organization/b"]
    assert [s.id for _, s in directory.offering("neurology", [1, 2, 3])] == ["hs-a-neuro"]
    assert list(directory.offering("oncology", [3])) == []
    assert list(directory.hospitals) == ["Organization/a", "Organization/b", "Organization/c"]


def test_from_resources_leaves_out_what_routing_cannot_use():
    orgs = [org("ok"), org("closed", active=False), org("untiered", tier=None),
            {**org("broken"), "extension": [{"url": hospital_tier_extension(3, "甲")["url"], "valueInteger": 3}]}]
    services = [hs("hs-ok", "ok"), hs("hs-off", "ok", specialty="oncology", active=False),
                hs("hs-closed", "closed"), hs("hs-untiered", "untiered"), hs("hs-orphan", "nowhere"),
                {**hs("hs-bad", "ok", specialty="neurology"),
                 "extension": [{"url": referral_capacity_extension(1)["url"], "valueInteger": -3}]}]
    directory = Directory.from_resources(orgs, services)
    assert list(directory.hospitals) == ["Organization/ok"]
    assert [s.id for s in directory.hospitals["Organization/ok"].services] == ["hs-ok"]


def test_missing_capacity_and_accepting_take_the_defaults():
    directory = Directory.from_resources([org("x")], [hs("hs-x", "x", capacity=None, accepting=None)])
    [svc] = directory.hospitals["Organization/x"].services
    assert (svc.daily_capacity, svc.accepting) == (DEFAULT_DAILY_CAPACITY, True)


def test_an_absolute_provided_by_and_a_missing_division_are_understood():
    directory = Directory.from_resources(
        [org("x", division=None)], [hs("hs-x", "x", provided_by="http://t/fhir/Organization/x")])
    hospital = directory.hospitals["Organization/x"]
    assert hospital.division == "" and [s.id for s in hospital.services] == ["hs-x"]


def test_a_service_of_two_specialties_is_offered_under_both():
    resource = hs("hs-x", "x")
    resource["specialty"].append({"coding": [{"system": SPECIALTY_SYSTEM, "code": "neurology"}]})
    directory = Directory.from_resources([org("x")], [resource])
    assert [(s.id, s.specialty) for s in directory.hospitals["Organization/x"].services] == [
        ("hs-x", "cardiology"), ("hs-x", "neurology")]


# --- load_directory against the real record store ------------------------------------------------


def _system(app) -> RecordService:
    return RecordService(RecordStore(app.state.db), "http://t/fhir")


async def _write(app, resources: list[dict]) -> None:
    records = _system(app)
    for resource in resources:
        await records.update(resource["resourceType"], resource["id"], resource)


async def test_load_directory_reads_every_page_of_the_record_store(app, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    ids = [f"dir-{tag}-{n}" for n in range(5)]
    # The first two departments publish their capacity and whether they accept; the rest take the defaults.
    await _write(app, [org(i, tier=(3 if n < 3 else 2, "甲")) for n, i in enumerate(ids)]
                 + [hs(f"hs-{i}", i, capacity=7 if n < 2 else None, accepting=(n == 0) if n < 2 else None)
                    for n, i in enumerate(ids)]
                 + [org(f"dir-{tag}-closed", active=False), hs(f"hs-dir-{tag}-off", ids[0], specialty="oncology",
                                                              capacity=None, accepting=None, active=False)])
    # Pages of two, so that a directory larger than one page is read whole.
    monkeypatch.setattr(directory_module, "PAGE_SIZE", 2)
    directory = await load_directory(_system(app))
    mine = {ref: h for ref, h in directory.hospitals.items() if ref.startswith(f"Organization/dir-{tag}")}
    assert sorted(mine) == sorted(f"Organization/{i}" for i in ids)
    assert [h.level for _, h in sorted(mine.items())] == [3, 3, 3, 2, 2]
    for ref, hospital in mine.items():
        assert [s.id for s in hospital.services] == ["hs-" + ref.removeprefix("Organization/")]
        assert hospital.services[0].capabilities == {"pci"}
    published = [(h.services[0].daily_capacity, h.services[0].accepting) for _, h in sorted(mine.items())]
    assert published == [(7, True), (7, False)] + [(DEFAULT_DAILY_CAPACITY, True)] * 3


# --- the cache -----------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_cache_reloads_only_when_older_than_its_ttl():
    clock, loads = Clock(), []

    async def load() -> Directory:
        loads.append(clock.now)
        return Directory.build([])

    cache = DirectoryCache(load, ttl_s=30, clock=clock)
    first = await cache.get()
    clock.now += 29.9
    assert await cache.get() is first and len(loads) == 1
    clock.now += 0.1
    second = await cache.get()
    assert second is not first and len(loads) == 2
    cache.invalidate()
    assert await cache.get() is not second and len(loads) == 3


async def test_callers_arriving_together_share_one_reload():
    loads = 0

    async def load() -> Directory:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return Directory.build([])

    cache = DirectoryCache(load, ttl_s=30)
    results = await asyncio.gather(*(cache.get() for _ in range(20)))
    assert loads == 1 and all(r is results[0] for r in results)


async def test_a_failed_reload_raises_and_the_next_call_tries_again():
    clock, calls = Clock(), []

    async def load() -> Directory:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("database away")
        return Directory.build([])

    cache = DirectoryCache(load, ttl_s=30, clock=clock)
    await cache.get()
    clock.now += 31
    with pytest.raises(ConnectionError):
        await cache.get()
    assert isinstance(await cache.get(), Directory) and len(calls) == 3


async def test_the_cache_over_the_record_store_sees_a_new_hospital_after_the_ttl(app):
    clock = Clock()
    cache = DirectoryCache(lambda: load_directory(_system(app)), ttl_s=30, clock=clock)
    before = await cache.get()
    new = f"new-{uuid.uuid4().hex[:8]}"
    await _write(app, [org(new), hs(f"hs-{new}", new, capacity=None, accepting=None)])
    assert f"Organization/{new}" not in (await cache.get()).hospitals
    clock.now += 30
    after = await cache.get()
    assert after is not before and f"Organization/{new}" in after.hospitals
