"""Which hospitals a referral may go to and in what order: the rules of 分级诊疗 as pure functions, no I/O.

`POST /api/referrals/route` gathers the directory, today's load and the acceptance times, then calls
`route_candidates`; the same inputs always give the same candidates in the same order.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fhir_profiles.divisions import is_valid_division_code, nearness
from fhir_profiles.valuesets import REQUEST_PRIORITY
from referral.directory import Directory, Hospital, Service

Direction = Literal["up", "down"]
Priority = Literal["routine", "urgent", "asap", "stat"]

FACTORS = ("alliance", "nearness", "capacity", "speed")

# Points each factor gives at its full value (1.0), per priority; each row adds up to 100.
# Routine to asap keep the order (alliance > nearness > capacity > speed) and shift weight
# towards speed as the clock matters more; stat puts nearness and capacity over alliance, because in
# a STEMI or a stroke the nearest centre with a free place beats the usual partner.
#
#   priority   alliance  nearness  capacity  speed
#   routine       40        30        20       10
#   urgent        36        30        20       14
#   asap          32        28        22       18
#   stat          15        35        30       20
WEIGHTS: Mapping[str, tuple[int, int, int, int]] = {
    "routine": (40, 30, 20, 10),
    "urgent": (36, 30, 20, 14),
    "asap": (32, 28, 22, 18),
    "stat": (15, 35, 30, 20),
}

# Median minutes to accept at which the speed factor is worth half; faster approaches 1, slower 0.
HALF_SPEED_MINUTES = 60.0
# A hospital with no acceptance in the last 30 days is neither rewarded nor punished: it scores as if
# it took HALF_SPEED_MINUTES.
NEUTRAL_SPEED = 0.5
NEARNESS_WORDS = {3: "same county", 2: "same city", 1: "same province", 0: "outside the province"}
NEARNESS_CODES = {3: "county", 2: "city", 1: "province"}


class UnknownOrigin(ValueError):
    """The referring organization is not a hospital of the directory, so its tier is unknown."""


@dataclass(frozen=True)
class RouteRequest:
    patient_division: str | None  # the patient's home division, six digits
    direction: Direction
    specialty: str
    capabilities: frozenset[str]
    priority: Priority
    origin: str  # "Organization/<id>"
    exclude: frozenset[str] = frozenset()  # hospitals already tried (escalation routes to the next one)

    def __post_init__(self) -> None:
        if self.direction not in ("up", "down"):
            raise ValueError(f"direction is up or down, not {self.direction!r}")
        if self.priority not in REQUEST_PRIORITY:
            raise ValueError(f"priority is one of routine, urgent, asap, stat, not {self.priority!r}")
        if self.patient_division is not None and not is_valid_division_code(self.patient_division):
            raise ValueError(f"patient_division {self.patient_division!r} is not a six-digit division code")
        if not self.specialty:
            raise ValueError("a specialty is needed")
        # Lists and sets are accepted, but the request stays hashable and immutable.
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        object.__setattr__(self, "exclude", frozenset(self.exclude))


@dataclass(frozen=True)
class ScorePart:
    factor: str  # alliance | nearness | capacity | speed
    weight: int  # points at full value
    value: float  # 0..1
    points: float  # weight * value, rounded to 0.01
    reason: str  # in English, for API clients and logs
    # The same reason as a message key and its values, so a portal says it in its reader's language.
    code: str = ""
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    hospital: str  # "Organization/<id>"
    name: str
    service: str  # HealthcareService id
    score: float  # 0..100, rounded to 0.01; ranked by the unrounded sum of the parts
    parts: list[ScorePart]
    rank: int  # 1 is the best


@dataclass(frozen=True)
class Exclusion:
    hospital: str
    name: str
    reasons: list[str]  # in English
    # The same reasons as message codes and values, for the portals (as ScorePart's).
    explained: list[dict[str, Any]] = field(default_factory=list)


# A reason as routing gives it: (English words, message code, values for the portals' words).
Reason = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class RouteResult:
    candidates: list[Candidate]
    excluded: list[Exclusion] = field(default_factory=list)  # filled only when explain_all


# nearness validates both codes on every call (microseconds); a province has a few hundred places where
# patients live and hospitals stand, so the pairs fit in memory (~20 MB at most) and stay warm.
_nearness = functools.lru_cache(maxsize=1 << 17)(nearness)


def _target_levels(direction: str, origin_level: int) -> range:
    return range(origin_level + 1, 4) if direction == "up" else range(1, origin_level)


def _speed_value(minutes: float | None) -> float:
    # Missing, NaN or negative: neutral. (route_candidates inlines this same rule in its loop.)
    if minutes is None or not minutes >= 0:
        return NEUTRAL_SPEED
    return HALF_SPEED_MINUTES / (HALF_SPEED_MINUTES + minutes)


def route_candidates(request: RouteRequest, directory: Directory, load: Mapping[str, int],
                     accept_minutes: Mapping[str, float], *, explain_all: bool = False,
                     limit: int = 10) -> RouteResult:
    """The hospitals a referral may go to, best first, with the reasons of their scores.

    `load`: open referrals today per HealthcareService id. `accept_minutes`: median minutes to accept
    over the last 30 days per Organization reference (missing -> neutral). With `explain_all`, every
    other hospital of the directory comes back in `excluded` with why.
    """
    origin = directory.hospitals.get(request.origin)
    if origin is None:
        raise UnknownOrigin(f"{request.origin} is not a hospital of the directory (no tier known)")
    weights = WEIGHTS[request.priority]
    # Down is about getting the patient home; up is about the referring hospital's reach.
    home = request.patient_division if request.direction == "down" and request.patient_division else origin.division
    required = request.capabilities
    skip = request.exclude | {origin.id}

    wa, wn, wc, ws = weights
    alliance = origin.alliance
    get_load, get_minutes = load.get, accept_minutes.get
    # The hot loop: a few hundred departments per request, so the score is computed inline, exactly
    # (unrounded); the parts in words are only written for the few candidates returned.
    best: dict[str, tuple[float, Service]] = {}
    nearness_of: dict[str, float] = {}  # division -> nearness to `home` / 3, for this request
    for hospital, service in directory.offering(request.specialty, _target_levels(request.direction, origin.level)):
        hospital_id = hospital.id
        if hospital_id in skip or not service.accepting or not required <= service.capabilities:
            continue
        capacity = service.daily_capacity
        used = get_load(service.id, 0)
        if used < 0:
            used = 0
        if used >= capacity:
            continue
        division = hospital.division
        near = nearness_of.get(division)
        if near is None:
            near = nearness_of[division] = _nearness(home, division) / 3 if home and division else 0.0
        minutes = get_minutes(hospital_id)
        score = (
            (wa if alliance is not None and hospital.alliance == alliance else 0.0)
            + wn * near
            + wc * (capacity - used) / capacity
            + ws * (NEUTRAL_SPEED if minutes is None or not minutes >= 0
                    else HALF_SPEED_MINUTES / (HALF_SPEED_MINUTES + minutes))
        )
        kept = best.get(hospital_id)
        # A hospital with two departments of the specialty is offered once, by its better one.
        if kept is None or score > kept[0] or (score == kept[0] and service.id < kept[1].id):
            best[hospital_id] = (score, service)

    top = heapq.nsmallest(max(0, limit), [(-score, hospital_id) for hospital_id, (score, _) in best.items()])
    candidates = [
        _candidate(rank, directory.hospitals[hospital_id], best[hospital_id][1], -negative, weights, request,
                   origin, home, directory, load, accept_minutes)
        for rank, (negative, hospital_id) in enumerate(top, start=1)
    ]
    excluded = _exclusions(request, directory, origin, load, set(best)) if explain_all else []
    return RouteResult(candidates=candidates, excluded=excluded)


def _place(directory: Directory, division: str, level: int) -> str:
    key = division if level == 3 else division[:4] + "00" if level == 2 else division[:2] + "0000"
    return directory.place_names.get(key, key)


def _candidate(rank: int, hospital: Hospital, service: Service, score: float, weights: tuple[int, int, int, int],
               request: RouteRequest, origin: Hospital, home: str, directory: Directory, load: Mapping[str, int],
               accept_minutes: Mapping[str, float]) -> Candidate:
    used = max(0, load.get(service.id, 0))
    values = (
        1.0 if origin.alliance is not None and hospital.alliance == origin.alliance else 0.0,
        _nearness(home, hospital.division) / 3 if home and hospital.division else 0.0,
        (service.daily_capacity - used) / service.daily_capacity,
        _speed_value(accept_minutes.get(hospital.id)),
    )

    # Each reason: (English words, message code, values for the portals' words).
    if origin.alliance is None:
        alliance = ("the origin belongs to no medical alliance", "alliance-none", {})
    elif values[0]:
        alliance = (f"same medical alliance ({origin.alliance})", "alliance-same", {"alliance": origin.alliance})
    else:
        alliance = ("not in the origin's medical alliance", "alliance-other", {})

    near = round(values[1] * 3)
    from_home = request.direction == "down" and bool(request.patient_division)
    anchor = "the patient's home" if from_home else "the origin"
    marks = {"anchor": "home" if from_home else "origin",
             "homeUnknown": request.direction == "down" and not request.patient_division}
    if not home or not hospital.division:
        nearness = ("division unknown, nearness not judged", "near-unknown", marks)
    elif near:
        place = _place(directory, hospital.division, near)
        nearness = (f"{NEARNESS_WORDS[near]} ({place}) as {anchor}", f"near-{NEARNESS_CODES[near]}",
                    {**marks, "place": place})
    else:
        nearness = (f"not in the same province as {anchor}", "near-outside", marks)
    if marks["homeUnknown"]:
        nearness = (nearness[0] + " (patient's home unknown)", nearness[1], nearness[2])

    free = service.daily_capacity - used
    capacity = (f"{free} of {service.daily_capacity} places free today", "capacity",
                {"free": free, "total": service.daily_capacity})

    minutes = accept_minutes.get(hospital.id)
    if minutes is None or not minutes >= 0:
        speed = ("no acceptances in 30 days to judge by (counted as neutral)", "speed-none", {})
    else:
        speed = (f"median {minutes:.0f} min to accept over 30 days", "speed-median", {"minutes": round(minutes)})

    reasons = (alliance, nearness, capacity, speed)
    parts = [ScorePart(factor=f, weight=w, value=round(v, 3), points=round(w * v, 2), reason=r[0], code=r[1],
                       values=r[2])
             for f, w, v, r in zip(FACTORS, weights, values, reasons, strict=True)]
    return Candidate(hospital=hospital.id, name=hospital.name, service=service.id, score=round(score, 2),
                     parts=parts, rank=rank)


def _service_reasons(service: Service, required: frozenset[str], load: Mapping[str, int]) -> list[Reason]:
    reasons: list[Reason] = [(f"lacks capability {code}", "lacks-capability", {"capability": code})
                             for code in sorted(required - service.capabilities)]
    if not service.accepting:
        reasons.append(("not accepting referrals", "not-accepting", {}))
    used = max(0, load.get(service.id, 0))
    if used >= service.daily_capacity:
        reasons.append((f"no capacity left today ({used}/{service.daily_capacity})", "no-capacity",
                        {"used": used, "total": service.daily_capacity}))
    return reasons


def _exclusions(request: RouteRequest, directory: Directory, origin: Hospital, load: Mapping[str, int],
                eligible: set[str]) -> list[Exclusion]:
    """Why each hospital that is not a candidate is not one (every reason that applies)."""
    levels = _target_levels(request.direction, origin.level)
    relation = "above" if request.direction == "up" else "below"
    tier_reasons: dict[int, Reason] = {}  # written once per tier, not once per hospital
    not_offered: Reason = (f"does not offer {request.specialty}", "not-offered", {"specialty": request.specialty})
    offered: dict[str, list[Service]] = {}
    for pairs in directory.by_specialty.get(request.specialty, {}).values():
        for hospital, service in pairs:
            offered.setdefault(hospital.id, []).append(service)
    out: list[Exclusion] = []
    for hospital in directory.hospitals.values():  # in id order (Directory.build sorts)
        if hospital.id in eligible:
            continue
        reasons: list[Reason] = []
        if hospital.id == origin.id:
            reasons.append(("is the referring hospital itself", "is-origin", {}))
        if hospital.id in request.exclude:
            reasons.append(("already tried", "already-tried", {}))
        if hospital.level not in levels:
            reason = tier_reasons.get(hospital.level)
            if reason is None:
                reason = tier_reasons[hospital.level] = (
                    f"tier {hospital.level} is not {relation} the origin's tier {origin.level}", f"tier-not-{relation}",
                    {"tier": hospital.level, "originTier": origin.level})
            reasons.append(reason)
        services = offered.get(hospital.id)
        if services is None:
            reasons.append(not_offered)
        else:
            # The department that comes closest speaks for the hospital.
            reasons += min((_service_reasons(s, request.capabilities, load) for s in services), key=len)
        out.append(Exclusion(hospital=hospital.id, name=hospital.name, reasons=[r[0] for r in reasons],
                             explained=[{"code": r[1], "values": r[2]} for r in reasons]))
    return out
