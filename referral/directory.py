"""The hospital directory as routing sees it: tiered hospitals and their departments, indexed by specialty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from fhir_profiles.extensions import (
    CAPABILITY_SYSTEM,
    CODE_SYSTEM_BASE,
    read_accepting_referrals,
    read_division_code,
    read_hospital_tier,
    read_medical_alliance,
    read_referral_capacity,
)

log = structlog.get_logger(__name__)

# Specialties are Qilu codes named after the province directory's specialty keys (see qilu.demo).
SPECIALTY_SYSTEM = CODE_SYSTEM_BASE + "specialty"
# A department that has not published its referral capacity still takes referrals: a day's worth
# of a typical department rather than none, so the directory works before every ward has filled it in.
DEFAULT_DAILY_CAPACITY = 20
PAGE_SIZE = 500  # the largest _count the record search serves


@dataclass(frozen=True, slots=True)
class Service:
    """One department (HealthcareService) of a hospital for one specialty."""

    id: str  # HealthcareService id
    organization: str  # "Organization/<id>"
    specialty: str
    capabilities: frozenset[str]
    daily_capacity: int
    accepting: bool


@dataclass(frozen=True, slots=True)
class Hospital:
    id: str  # "Organization/<id>"
    name: str
    level: int  # 1, 2 or 3 (一级, 二级, 三级)
    grade: str  # 甲, 乙 or 丙
    division: str  # six-digit GB/T 2260 code; "" when the Organization names none (then near nothing)
    alliance: str | None
    services: tuple[Service, ...]


@dataclass(frozen=True)
class Directory:
    """Hospitals by Organization reference, and per specialty the (hospital, service) pairs offering it.

    Build it with `Directory.build` or `Directory.from_resources`; the indexes are derived, so that
    routing reads one specialty's departments instead of scanning the whole province.
    """

    hospitals: Mapping[str, Hospital]
    # specialty -> level -> (hospital, service) pairs, in hospital id order.
    by_specialty: Mapping[str, Mapping[int, tuple[tuple[Hospital, Service], ...]]] = field(default_factory=dict)
    # division code -> its name (平阴县, 济南市), as far as the Organizations' addresses tell.
    place_names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, hospitals: Iterable[Hospital], place_names: Mapping[str, str] | None = None) -> Directory:
        ordered = sorted(hospitals, key=lambda h: h.id)
        by_id = {h.id: h for h in ordered}
        if len(by_id) != len(ordered):
            raise ValueError("a hospital appears twice in the directory")
        index: dict[str, dict[int, list[tuple[Hospital, Service]]]] = {}
        for hospital in ordered:
            for service in sorted(hospital.services, key=lambda s: s.id):
                index.setdefault(service.specialty, {}).setdefault(hospital.level, []).append((hospital, service))
        frozen = {specialty: {level: tuple(pairs) for level, pairs in sorted(levels.items())}
                  for specialty, levels in index.items()}
        return cls(hospitals=by_id, by_specialty=frozen, place_names=dict(place_names or {}))

    @classmethod
    def from_resources(cls, organizations: list[dict[str, Any]], services: list[dict[str, Any]]) -> Directory:
        """The directory from FHIR JSON Organizations and HealthcareServices (pure).

        Left out: inactive Organizations and services, Organizations without a hospital tier, services of
        Organizations left out, and any resource whose Qilu extensions are malformed (logged) — one bad
        record must not take routing down for the whole province.
        """
        places: dict[str, str] = {}
        orgs: dict[str, dict[str, Any]] = {}
        for org in organizations:
            if org.get("resourceType") != "Organization" or org.get("active") is False or not org.get("id"):
                continue
            try:
                tier = read_hospital_tier(org)
                division = read_division_code(org) or ""
                alliance = read_medical_alliance(org)
            except ValueError as err:
                log.warning("directory.organization_skipped", organization=org.get("id"), reason=str(err))
                continue
            if tier is None:
                continue
            ref = "Organization/" + org["id"]
            orgs[ref] = {"name": org.get("name") or ref, "tier": tier, "division": division,
                         "alliance": alliance, "services": []}
            if division:
                _learn_place_names(places, division, org)
        for resource in services:
            if resource.get("resourceType") != "HealthcareService" or resource.get("active") is False:
                continue
            owner = _organization_ref((resource.get("providedBy") or {}).get("reference"))
            if owner not in orgs or not resource.get("id"):
                continue
            try:
                capacity = read_referral_capacity(resource)
                accepting = read_accepting_referrals(resource)
            except ValueError as err:
                log.warning("directory.service_skipped", service=resource.get("id"), reason=str(err))
                continue
            capabilities = frozenset(
                coding["code"]
                for concept in resource.get("characteristic") or []
                for coding in (concept.get("coding") or [])
                if coding.get("system") == CAPABILITY_SYSTEM and coding.get("code"))
            for specialty in _specialty_codes(resource):
                orgs[owner]["services"].append(Service(
                    id=resource["id"], organization=owner, specialty=specialty, capabilities=capabilities,
                    daily_capacity=DEFAULT_DAILY_CAPACITY if capacity is None else capacity,
                    accepting=True if accepting is None else accepting))
        hospitals = [
            Hospital(id=ref, name=o["name"], level=o["tier"][0], grade=o["tier"][1], division=o["division"],
                     alliance=o["alliance"], services=tuple(sorted(o["services"], key=lambda s: (s.id, s.specialty))))
            for ref, o in orgs.items()
        ]
        return cls.build(hospitals, places)

    def offering(self, specialty: str, levels: Iterable[int]) -> Iterable[tuple[Hospital, Service]]:
        """The (hospital, service) pairs of a specialty at the given tiers."""
        by_level = self.by_specialty.get(specialty, {})
        for level in levels:
            yield from by_level.get(level, ())


def _organization_ref(reference: Any) -> str | None:
    # providedBy may be relative ("Organization/x") or absolute (".../fhir/Organization/x").
    if not isinstance(reference, str):
        return None
    parts = reference.split("/_history/", 1)[0].rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] != "Organization" or not parts[-1]:
        return None
    return "Organization/" + parts[-1]


def _specialty_codes(resource: dict[str, Any]) -> list[str]:
    """The specialty codes of a HealthcareService: Qilu's specialty codings, else any coded specialty."""
    codings = [coding for concept in resource.get("specialty") or [] for coding in concept.get("coding") or []
               if isinstance(coding.get("code"), str) and coding["code"]]
    own = [c["code"] for c in codings if c.get("system") == SPECIALTY_SYSTEM]
    return sorted(set(own or [c["code"] for c in codings]))


def _learn_place_names(places: dict[str, str], division: str, org: dict[str, Any]) -> None:
    # An address carries the names; the division code says which level each name belongs to.
    for address in org.get("address") or []:
        city, district = address.get("city"), address.get("district")
        if division[4:] != "00" and district:
            places.setdefault(division, district)
        if division[2:4] != "00" and city:
            places.setdefault(division[:4] + "00", city)
        if address.get("state"):
            places.setdefault(division[:2] + "0000", address["state"])


async def _all(records: Any, resource_type: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    offset = 0
    while True:
        bundle = await records.search(resource_type, [("_count", str(PAGE_SIZE)), ("_offset", str(offset)),
                                                      ("_total", "none")])
        page = [e["resource"] for e in bundle.get("entry") or [] if (e.get("search") or {}).get("mode") == "match"]
        found.extend(page)
        if len(page) < PAGE_SIZE:
            return found
        offset += PAGE_SIZE


async def load_directory(records: Any) -> Directory:
    """The directory from the record store; `records` is an ehr.service.RecordService acting as the system."""
    organizations = await _all(records, "Organization")
    services = await _all(records, "HealthcareService")
    return Directory.from_resources(organizations, services)


class DirectoryCache:
    """The last directory loaded, reloaded once it is older than `ttl_s`.

    Routing runs on every referral form; reading 2,000 hospitals from the database each time would cost
    more than the routing. `load` is called afresh for each reload (e.g. `lambda: load_directory(
    RecordService(store, base))`), so no long-lived RecordService accumulates what it touched.
    """

    def __init__(self, load: Callable[[], Awaitable[Directory]], ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self._load = load
        self.ttl_s = ttl_s
        self._clock = clock
        self._directory: Directory | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._directory is not None and self._clock() - self._loaded_at < self.ttl_s

    async def get(self) -> Directory:
        if self._fresh():
            return self._directory  # type: ignore[return-value]
        # One reload at a time: callers arriving during it wait and get its result.
        async with self._lock:
            if not self._fresh():
                directory = await self._load()
                self._directory, self._loaded_at = directory, self._clock()
            return self._directory  # type: ignore[return-value]

    def invalidate(self) -> None:
        """Forget the held directory, so the next `get` reloads (after a directory edit)."""
        self._directory = None
