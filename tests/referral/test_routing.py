"""Routing rules one by one, the weight order per priority, the explanations, and properties over random directories."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from referral.directory import Directory, Hospital, Service
from referral.routing import (
    FACTORS,
    WEIGHTS,
    RouteRequest,
    UnknownOrigin,
    route_candidates,
)

JINAN, PINGYIN, SHANGHE = "370100", "370124", "370126"
QINGDAO, JIAOZHOU = "370200", "370281"
BEIJING = "110101"
PLACES = {PINGYIN: "平阴县", SHANGHE: "商河县", JINAN: "济南市", QINGDAO: "青岛市", JIAOZHOU: "胶州市",
          "370000": "山东省"}


def service(org: str, specialty: str = "cardiology", caps=("pci",), capacity: int = 20, accepting: bool = True,
            sid: str | None = None) -> Service:
    return Service(id=sid or f"hs-{org}-{specialty}", organization=f"Organization/{org}", specialty=specialty,
                   capabilities=frozenset(caps), daily_capacity=capacity, accepting=accepting)


def hospital(org: str, level: int = 3, division: str = JINAN, alliance: str | None = None,
             services: tuple[Service, ...] | None = None, **service_args) -> Hospital:
    return Hospital(id=f"Organization/{org}", name=f"医院{org}", level=level, grade="甲", division=division,
                    alliance=alliance, services=services if services is not None else (service(org, **service_args),))


def county(org: str = "county", division: str = PINGYIN, alliance: str | None = "a1", level: int = 2) -> Hospital:
    return hospital(org, level=level, division=division, alliance=alliance,
                    services=(service(org, caps=("chronic-care",)),))


def request(origin: str = "county", *, direction: str = "up", specialty: str = "cardiology", caps=("pci",),
            priority: str = "routine", home: str | None = PINGYIN, exclude=()) -> RouteRequest:
    return RouteRequest(patient_division=home, direction=direction, specialty=specialty, capabilities=frozenset(caps),
                        priority=priority, origin=f"Organization/{origin}", exclude=frozenset(exclude))


def route(hospitals, req, load=None, minutes=None, **kwargs):
    return route_candidates(req, Directory.build(hospitals, PLACES), load or {}, minutes or {}, **kwargs)


def ids(result) -> list[str]:
    return [c.hospital.removeprefix("Organization/") for c in result.candidates]


def reasons(result) -> dict[str, list[str]]:
    return {e.hospital.removeprefix("Organization/"): e.reasons for e in result.excluded}


# --- the weight table ----------------------------------------------------------------------------


def test_every_priority_has_a_row_of_100_points():
    assert set(WEIGHTS) == {"routine", "urgent", "asap", "stat"}
    for row in WEIGHTS.values():
        assert len(row) == len(FACTORS) and sum(row) == 100


@pytest.mark.parametrize("priority", ["routine", "urgent", "asap"])
def test_below_stat_the_weights_keep_the_issue_order(priority):
    alliance, near, capacity, speed = WEIGHTS[priority]
    assert alliance > near > capacity > speed


def test_stat_weighs_nearness_and_capacity_over_alliance():
    alliance, near, capacity, _ = WEIGHTS["stat"]
    assert near > alliance and capacity > alliance


# --- the rules, one by one -----------------------------------------------------------------------


def test_up_goes_only_to_a_higher_tier():
    result = route([county(), hospital("t3"), hospital("t2", level=2), hospital("t1", level=1)], request(),
                   explain_all=True)
    assert ids(result) == ["t3"]
    assert "tier 2 is not above the origin's tier 2" in reasons(result)["t2"]
    assert "tier 1 is not above the origin's tier 2" in reasons(result)["t1"]


def test_down_goes_only_to_a_lower_tier():
    origin = hospital("origin", level=3)
    result = route([origin, hospital("t3b"), hospital("t2", level=2, division=PINGYIN),
                    hospital("t1", level=1, division=PINGYIN)],
                   request("origin", direction="down"), explain_all=True)
    assert ids(result) == ["t1", "t2"]  # equal scores: by id
    assert "tier 3 is not below the origin's tier 3" in reasons(result)["t3b"]


def test_the_specialty_must_be_offered():
    result = route([county(), hospital("neuro", specialty="neurology"), hospital("cardio")], request(),
                   explain_all=True)
    assert ids(result) == ["cardio"]
    assert reasons(result)["neuro"] == ["does not offer cardiology"]


def test_every_required_capability_must_be_there():
    hospitals = [county(), hospital("both", caps=("pci", "thrombectomy")), hospital("pci-only", caps=("pci",)),
                 hospital("none", caps=())]
    result = route(hospitals, request(caps=("pci", "thrombectomy")), explain_all=True)
    assert ids(result) == ["both"]
    assert reasons(result)["pci-only"] == ["lacks capability thrombectomy"]
    assert reasons(result)["none"] == ["lacks capability pci", "lacks capability thrombectomy"]


def test_a_department_not_accepting_is_left_out():
    result = route([county(), hospital("closed", accepting=False), hospital("open")], request(), explain_all=True)
    assert ids(result) == ["open"]
    assert reasons(result)["closed"] == ["not accepting referrals"]


def test_a_full_department_is_left_out_and_load_counts_per_service():
    hospitals = [county(), hospital("full", capacity=20), hospital("one-left", capacity=20),
                 hospital("zero", capacity=0)]
    load = {"hs-full-cardiology": 20, "hs-one-left-cardiology": 19}
    result = route(hospitals, request(), load, explain_all=True)
    assert ids(result) == ["one-left"]
    assert reasons(result)["full"] == ["no capacity left today (20/20)"]
    assert reasons(result)["zero"] == ["no capacity left today (0/0)"]
    assert result.candidates[0].parts[2].reason == "1 of 20 places free today"


def test_the_origin_is_never_a_candidate():
    # A tier-3 origin routing "up" has nowhere to go, itself included.
    result = route([hospital("top"), hospital("other")], request("top"), explain_all=True)
    assert ids(result) == []
    assert "is the referring hospital itself" in reasons(result)["top"]


def test_hospitals_already_tried_are_skipped_and_the_next_one_comes_first():
    hospitals = [county(), hospital("first", alliance="a1"), hospital("second")]
    assert ids(route(hospitals, request())) == ["first", "second"]
    result = route(hospitals, request(exclude=["Organization/first"]), explain_all=True)
    assert ids(result) == ["second"]
    assert reasons(result)["first"] == ["already tried"]


def test_an_unknown_origin_is_refused():
    with pytest.raises(UnknownOrigin):
        route([hospital("t3")], request("nowhere"))


@pytest.mark.parametrize("bad", [dict(direction="sideways"), dict(priority="whenever"), dict(home="999999"),
                                 dict(specialty="")])
def test_a_malformed_request_is_refused(bad):
    with pytest.raises(ValueError):
        request(**bad)


def test_without_explain_all_nothing_is_explained():
    result = route([county(), hospital("t3"), hospital("t2", level=2)], request())
    assert result.excluded == []


def test_explain_all_gives_every_reason_that_applies():
    bad = hospital("bad", level=2, caps=(), accepting=False)
    result = route([county(), bad, hospital("ok")], request(exclude=["Organization/bad"]), {"hs-bad-cardiology": 25},
                   explain_all=True)
    assert reasons(result)["bad"] == ["already tried", "tier 2 is not above the origin's tier 2",
                                      "lacks capability pci", "not accepting referrals",
                                      "no capacity left today (25/20)"]
    # ...and the same as codes and values, for the portals to word.
    (bad_explained,) = [e.explained for e in result.excluded if e.hospital == "Organization/bad"]
    assert bad_explained == [
        {"code": "already-tried", "values": {}},
        {"code": "tier-not-above", "values": {"tier": 2, "originTier": 2}},
        {"code": "lacks-capability", "values": {"capability": "pci"}},
        {"code": "not-accepting", "values": {}},
        {"code": "no-capacity", "values": {"used": 25, "total": 20}},
    ]
    # Everyone is either a candidate or explained, once.
    assert {c.hospital for c in result.candidates} | {e.hospital for e in result.excluded} == {
        "Organization/county", "Organization/bad", "Organization/ok"}


def test_a_hospital_is_offered_once_by_its_better_department():
    two = hospital("two", services=(service("two", sid="hs-a", capacity=10), service("two", sid="hs-b", capacity=10)))
    result = route([county(), two], request(), {"hs-a": 8, "hs-b": 2})
    assert [(c.hospital, c.service) for c in result.candidates] == [("Organization/two", "hs-b")]


def test_limit_cuts_the_list_but_does_not_exclude():
    hospitals = [county()] + [hospital(f"t{i:02}") for i in range(15)]
    result = route(hospitals, request(), explain_all=True, limit=3)
    assert [c.rank for c in result.candidates] == [1, 2, 3]
    assert {e.hospital for e in result.excluded} == {"Organization/county"}
    assert len(route(hospitals, request()).candidates) == 10


# --- the preferences and their order -------------------------------------------------------------

def _pair(better: str, worse: str):
    """Hospitals X (best at `better` only) and Y (best at `worse` only), worst at everything else."""
    best = ("a1", PINGYIN, 0, 0.0)  # used load 0 = all 20 places free
    worst = ("other", BEIJING, 19, 10_000.0)  # one place of 20 left, a week to accept
    index = {"alliance": 0, "nearness": 1, "capacity": 2, "speed": 3}

    def make(org: str, good: str):
        values = list(worst)
        values[index[good]] = best[index[good]]
        alliance, division, used, minutes = values
        return hospital(org, division=division, alliance=alliance), used, minutes

    hx, ux, mx = make("x", better)
    hy, uy, my = make("y", worse)
    load = {"hs-x-cardiology": ux, "hs-y-cardiology": uy}
    minutes = {"Organization/x": mx, "Organization/y": my}
    return [county(), hx, hy], load, minutes


ORDER = ["alliance", "nearness", "capacity", "speed"]


@pytest.mark.parametrize("priority", ["routine", "urgent", "asap"])
@pytest.mark.parametrize(("better", "worse"), [(ORDER[i], ORDER[j]) for i in range(4) for j in range(i + 1, 4)])
def test_below_stat_a_factor_outweighs_every_later_one(priority, better, worse):
    hospitals, load, minutes = _pair(better, worse)
    assert ids(route(hospitals, request(priority=priority), load, minutes)) == ["x", "y"]


@pytest.mark.parametrize("better", ["nearness", "capacity"])
def test_stat_puts_nearness_and_capacity_before_alliance(better):
    hospitals, load, minutes = _pair(better, "alliance")
    assert ids(route(hospitals, request(priority="stat"), load, minutes)) == ["x", "y"]
    # ...which routine does the other way round.
    assert ids(route(hospitals, request(priority="routine"), load, minutes)) == ["y", "x"]


def test_nearness_counts_county_over_city_over_province():
    hospitals = [county(alliance=None), hospital("province", division=QINGDAO), hospital("city", division=SHANGHE),
                 hospital("same-county", division=PINGYIN), hospital("beijing", division=BEIJING)]
    result = route(hospitals, request(), explain_all=True)
    assert ids(result) == ["same-county", "city", "province", "beijing"]
    near = {c.hospital: c.parts[1] for c in result.candidates}
    assert near["Organization/same-county"].reason == "same county (平阴县) as the origin"
    assert near["Organization/city"].reason == "same city (济南市) as the origin"
    assert near["Organization/province"].reason == "same province (山东省) as the origin"
    assert near["Organization/beijing"].reason == "not in the same province as the origin"


def test_down_is_measured_from_the_patients_home_not_the_origin():
    origin = hospital("origin", level=3, division=JINAN)
    near_home = hospital("jiaozhou", level=2, division=JIAOZHOU, caps=())
    near_origin = hospital("pingyin", level=2, division=PINGYIN, caps=())
    result = route([origin, near_home, near_origin], request("origin", direction="down", caps=(), home=JIAOZHOU))
    assert ids(result) == ["jiaozhou", "pingyin"]
    assert result.candidates[0].parts[1].reason == "same county (胶州市) as the patient's home"
    # Without a known home, the origin's place stands in, and the reason says so.
    unknown = route([origin, near_home, near_origin], request("origin", direction="down", caps=(), home=None))
    assert ids(unknown) == ["pingyin", "jiaozhou"]
    assert unknown.candidates[0].parts[1].reason.endswith("(patient's home unknown)")
    assert result.candidates[0].parts[1].values == {"anchor": "home", "homeUnknown": False, "place": "胶州市"}
    assert unknown.candidates[0].parts[1].values["homeUnknown"] is True


def test_up_is_measured_from_the_origin_not_the_patients_home():
    hospitals = [county(division=PINGYIN, alliance=None), hospital("jinan", division=JINAN),
                 hospital("qingdao", division=QINGDAO)]
    assert ids(route(hospitals, request(home=JIAOZHOU))) == ["jinan", "qingdao"]


def test_more_free_places_and_faster_acceptance_rank_higher():
    hospitals = [county(alliance=None), hospital("busy"), hospital("quiet")]
    assert ids(route(hospitals, request(), {"hs-busy-cardiology": 15, "hs-quiet-cardiology": 5})) == ["quiet", "busy"]
    faster = {"Organization/busy": 20, "Organization/quiet": 90}
    assert ids(route(hospitals, request(), {}, faster)) == ["busy", "quiet"]


def test_a_hospital_without_acceptance_history_is_scored_as_neutral():
    hospitals = [county(alliance=None), hospital("fast"), hospital("new"), hospital("slow")]
    result = route(hospitals, request(), {}, {"Organization/fast": 10, "Organization/slow": 300})
    assert ids(result) == ["fast", "new", "slow"]
    speed = {c.hospital: c.parts[3] for c in result.candidates}
    assert speed["Organization/new"].value == 0.5
    assert speed["Organization/new"].reason == "no acceptances in 30 days to judge by (counted as neutral)"
    assert speed["Organization/fast"].reason == "median 10 min to accept over 30 days"


def test_the_parts_explain_the_score_in_words_and_numbers():
    hospitals = [county(alliance="a1"), hospital("lead", alliance="a1", capacity=20)]
    [candidate] = route(hospitals, request(), {"hs-lead-cardiology": 8}, {"Organization/lead": 35}).candidates
    assert candidate.rank == 1 and candidate.name == "医院lead" and candidate.service == "hs-lead-cardiology"
    assert [p.factor for p in candidate.parts] == ["alliance", "nearness", "capacity", "speed"]
    assert [p.weight for p in candidate.parts] == list(WEIGHTS["routine"])
    assert [p.reason for p in candidate.parts] == [
        "same medical alliance (a1)",
        "same city (济南市) as the origin",
        "12 of 20 places free today",
        "median 35 min to accept over 30 days",
    ]
    # The same reasons as message codes and values, for the portals to say in their reader's language.
    assert [(p.code, p.values) for p in candidate.parts] == [
        ("alliance-same", {"alliance": "a1"}),
        ("near-city", {"anchor": "origin", "homeUnknown": False, "place": "济南市"}),
        ("capacity", {"free": 12, "total": 20}),
        ("speed-median", {"minutes": 35}),
    ]
    assert candidate.parts[0].points == 40 and candidate.parts[2].value == 0.6
    # The score is ranked by unrounded; the parts shown are each rounded to 0.01.
    assert abs(candidate.score - sum(p.points for p in candidate.parts)) <= 0.02


# --- determinism ---------------------------------------------------------------------------------


def test_ties_are_broken_by_hospital_id_whatever_the_input_order():
    hospitals = [county()] + [hospital(name) for name in ("m", "b", "z", "a")]
    first = route(hospitals, request())
    assert ids(first) == ["a", "b", "m", "z"]
    for seed in range(5):
        shuffled = hospitals[:]
        random.Random(seed).shuffle(shuffled)
        assert route(shuffled, request(), explain_all=True) == route(hospitals, request(), explain_all=True)


# --- properties ----------------------------------------------------------------------------------

SPECIALTIES = ("cardiology", "neurology")
CAPABILITIES = ("pci", "dialysis", "thrombectomy")
DIVISIONS = (PINGYIN, SHANGHE, JINAN, JIAOZHOU, QINGDAO, BEIJING)


@st.composite
def worlds(draw, routable: bool = False):
    """A random directory, its load and acceptance times, and a request from one of its hospitals.

    `routable` points the request where the origin's tier leaves somewhere to go (up from tier 3 never can).
    """
    count = draw(st.integers(2, 12))
    hospitals, load, minutes = [], {}, {}
    for n in range(count):
        org = f"h{n:02}"
        services = []
        for specialty in draw(st.lists(st.sampled_from(SPECIALTIES), unique=True, min_size=1, max_size=2)):
            for k in range(draw(st.integers(1, 2))):
                sid = f"hs-{org}-{specialty}-{k}"
                # Biased towards departments that could take the referral, so candidates are common.
                capabilities = frozenset(c for c in CAPABILITIES if draw(st.integers(0, 3)))
                services.append(Service(id=sid, organization=f"Organization/{org}", specialty=specialty,
                                        capabilities=capabilities, daily_capacity=draw(st.integers(0, 6)),
                                        accepting=draw(st.integers(0, 4)) > 0))
                load[sid] = draw(st.integers(0, 5))
        hospitals.append(Hospital(id=f"Organization/{org}", name=org, level=draw(st.integers(1, 3)), grade="甲",
                                  division=draw(st.sampled_from(DIVISIONS)),
                                  alliance=draw(st.sampled_from((None, "a1", "a2"))), services=tuple(services)))
        if draw(st.booleans()):
            minutes[f"Organization/{org}"] = draw(st.floats(0, 3000))
    origin = draw(st.sampled_from(hospitals))
    direction = draw(st.sampled_from(("up", "down")))
    if routable and origin.level != 2:
        direction = "up" if origin.level == 1 else "down"
    req = RouteRequest(
        patient_division=draw(st.none() | st.sampled_from(DIVISIONS)), direction=direction,
        specialty=draw(st.sampled_from(SPECIALTIES)),
        capabilities=frozenset(draw(st.lists(st.sampled_from(CAPABILITIES), max_size=2))),
        priority=draw(st.sampled_from(sorted(WEIGHTS))), origin=origin.id,
        exclude=frozenset(draw(st.lists(st.sampled_from([h.id for h in hospitals]), max_size=2))))
    return hospitals, load, minutes, req


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rank(result, hospital_id: str) -> int | None:
    return next((c.rank for c in result.candidates if c.hospital == hospital_id), None)


@PROPERTY_SETTINGS
@given(worlds())
def test_every_candidate_obeys_every_rule(world):
    hospitals, load, minutes, req = world
    directory = Directory.build(hospitals)
    origin = directory.hospitals[req.origin]
    result = route_candidates(req, directory, load, minutes, explain_all=True, limit=100)
    for candidate in result.candidates:
        target = directory.hospitals[candidate.hospital]
        assert (target.level > origin.level) if req.direction == "up" else (target.level < origin.level)
        [svc] = [s for s in target.services if s.id == candidate.service]
        assert svc.specialty == req.specialty and req.capabilities <= svc.capabilities
        assert svc.accepting and load.get(svc.id, 0) < svc.daily_capacity
        assert candidate.hospital != req.origin and candidate.hospital not in req.exclude
    assert [c.rank for c in result.candidates] == list(range(1, len(result.candidates) + 1))
    assert [c.score for c in result.candidates] == sorted((c.score for c in result.candidates), reverse=True)
    # Every hospital is a candidate or explained, never both, and an exclusion always says why.
    chosen = [c.hospital for c in result.candidates]
    explained = [e.hospital for e in result.excluded]
    assert sorted(chosen + explained) == sorted(directory.hospitals)
    assert all(e.reasons for e in result.excluded)


@PROPERTY_SETTINGS
@given(worlds(routable=True), st.integers(1, 10), st.data())
def test_adding_capacity_to_a_candidate_never_lowers_its_rank(world, extra, data):
    hospitals, load, minutes, req = world
    before = route_candidates(req, Directory.build(hospitals), load, minutes, limit=100)
    assume(before.candidates)
    chosen = data.draw(st.sampled_from(before.candidates))
    grown = [dataclasses.replace(h, services=tuple(
        dataclasses.replace(s, daily_capacity=s.daily_capacity + extra) if s.id == chosen.service else s
        for s in h.services)) for h in hospitals]
    after = route_candidates(req, Directory.build(grown), load, minutes, limit=100)
    assert _rank(after, chosen.hospital) <= chosen.rank
    # Nobody else moved up past it, and nobody else's score changed.
    others = {c.hospital: c.score for c in before.candidates if c.hospital != chosen.hospital}
    assert {c.hospital: c.score for c in after.candidates if c.hospital != chosen.hospital} == others


@PROPERTY_SETTINGS
@given(worlds(routable=True), st.data())
def test_removing_load_never_lowers_a_rank(world, data):
    hospitals, load, minutes, req = world
    assume(load)
    before = route_candidates(req, Directory.build(hospitals), load, minutes, limit=100)
    # Mostly a candidate's own department (where the rank can move), sometimes any department.
    chosen = [c.service for c in before.candidates]
    pick_candidate = chosen and data.draw(st.integers(0, 3))
    sid = data.draw(st.sampled_from(chosen) if pick_candidate else st.sampled_from(sorted(load)))
    lighter = dict(load, **{sid: data.draw(st.integers(0, max(0, load[sid] - 1)))})
    owner = next(h.id for h in hospitals if any(s.id == sid for s in h.services))
    after = route_candidates(req, Directory.build(hospitals), lighter, minutes, limit=100)
    rank_before = _rank(before, owner)
    if rank_before is not None:
        assert _rank(after, owner) <= rank_before
    # Less load can only add candidates, never remove one.
    assert {c.hospital for c in before.candidates} <= {c.hospital for c in after.candidates}


@PROPERTY_SETTINGS
@given(worlds())
def test_the_same_inputs_give_the_same_answer(world):
    hospitals, load, minutes, req = world
    one = route_candidates(req, Directory.build(hospitals), load, minutes, explain_all=True)
    two = route_candidates(req, Directory.build(list(reversed(hospitals))), dict(reversed(load.items())),
                           dict(reversed(minutes.items())), explain_all=True)
    assert one == two
