"""Faults: parsing with locations, and removing what they break from a real contact plan."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from orbit.build import build_contact_plan
from orbit.types import Constellation, GroundStation, IslConfig
from skyinfer.config import parse_yaml
from skyinfer.errors import InputError
from skyinfer.replay.faults import Fault, clip_contact_plan, parse_faults, start_at_now, trim_contact_plan

EPOCH = datetime(2023, 4, 20, tzinfo=UTC)


def _faults(text: str) -> tuple[Fault, ...]:
    return parse_faults(parse_yaml(text, "f.yaml").value["faults"], EPOCH)


def test_every_fault_kind_parses() -> None:
    faults = _faults("""
faults:
  - {kind: node_down, node: A, at: 1h}
  - {kind: node_down, node: B, at: 2023-04-20T02:00:00Z, duration: 30m}
  - {kind: station_offline, station: Troll, from: 1h, to: 2h}
  - {kind: isl_cut, a: B, b: A, from: +10m, duration: 5m}
  - {kind: agent_kill, node: A, at: 90m}
""")
    assert faults[0] == Fault("node_down", "A", 3600.0, math.inf, where=faults[0].where)
    assert (faults[1].start_s, faults[1].end_s) == (7200.0, 9000.0)
    assert (faults[2].kind, faults[2].target, faults[2].start_s, faults[2].end_s) == ("station_offline", "Troll",
                                                                                      3600.0, 7200.0)
    assert (faults[3].target, faults[3].other, faults[3].end_s) == ("A", "B", 900.0)
    assert (faults[4].start_s, faults[4].end_s) == (5400.0, 5460.0)  # restarts after 60 s by default


@pytest.mark.parametrize(("text", "expected"), [
    ("faults:\n  - {kind: meteor, node: A}\n", "f.yaml:2: faults[0].kind: expected one of"),
    ("faults:\n  - {kind: station_offline, station: T, from: 1h}\n", "f.yaml:2: faults[0].from: give 'to'"),
    ("faults:\n  - {kind: station_offline, station: T, from: 2h, to: 1h}\n", "f.yaml:2: faults[0].to: must be after"),
    ("faults:\n  - {kind: node_down, at: 1h}\n", "f.yaml:2: faults[0]: missing required key 'node'"),
    ("faults:\n  - {kind: isl_cut, a: A, b: A, from: 0}\n", "f.yaml:2: faults[0].b: an ISL joins two different"),
    ("faults:\n  - {kind: agent_kill, node: A, at: soon}\n", "f.yaml:2: faults[0].at: expected a duration"),
])
def test_bad_faults_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(InputError) as err:
        _faults(text)
    assert str(err.value).startswith(expected), str(err.value)


@pytest.fixture(scope="module")
def plan(planet: Constellation, real_stations: tuple[GroundStation, ...]):  # type: ignore[no-untyped-def]
    sats = planet.subset(list(range(12)))  # the SkySats, several of them within laser range of each other
    return build_contact_plan(sats, real_stations, EPOCH, 6 * 3600.0, isl=IslConfig(policy="los"), sunlight=False)


def _coverage_s(intervals: list[tuple[float, float]], t0: float, t1: float) -> float:
    return sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in intervals)


def test_station_offline_removes_exactly_its_interval(plan) -> None:  # type: ignore[no-untyped-def]
    name = plan.stations[0].name
    fault = Fault("station_offline", name, 3600.0, 3 * 3600.0)
    clipped = clip_contact_plan(plan, (fault,))
    before = [(c.start_s, c.end_s) for c in plan.contacts() if f"gs:{name}" in (c.src, c.dst)]
    after = [(c.start_s, c.end_s) for c in clipped.contacts() if f"gs:{name}" in (c.src, c.dst)]
    assert before, "the fixture should give this station passes"
    assert _coverage_s(after, fault.start_s, fault.end_s) == 0.0
    # Outside the fault nothing is lost except slivers shorter than a second.
    for t0, t1 in ((0.0, fault.start_s), (fault.end_s, plan.duration_s)):
        assert _coverage_s(after, t0, t1) == pytest.approx(_coverage_s(before, t0, t1), abs=2 * len(before))
    others = [c for c in plan.contacts() if f"gs:{name}" not in (c.src, c.dst)]
    assert others == [c for c in clipped.contacts() if f"gs:{name}" not in (c.src, c.dst)]


def test_isl_cut_and_node_down(plan) -> None:  # type: ignore[no-untyped-def]
    isl = [c for c in plan.contacts() if c.kind == "isl"]
    assert isl, "the fixture should give inter-satellite links"
    a, b = isl[0].src, isl[0].dst
    cut = clip_contact_plan(plan, (Fault("isl_cut", a, 0.0, plan.duration_s, other=b),))
    assert not [c for c in cut.contacts() if {c.src, c.dst} == {a, b}]
    victim = plan.constellation.names[2]
    down = clip_contact_plan(plan, (Fault("node_down", victim, 7200.0),))
    touching = [c for c in down.contacts() if victim in (c.src, c.dst)]
    assert touching and all(c.end_s <= 7200.0 for c in touching)


def test_trim_keeps_exactly_the_contacts_overlapping_the_horizon(plan) -> None:  # type: ignore[no-untyped-def]
    t0, t1 = 3600.0, 7200.0
    trimmed = trim_contact_plan(plan, t0, t1)
    want = [c for c in plan.contacts() if c.end_s >= t0 and c.start_s <= t1]
    assert trimmed.contacts() == want
    assert 0 < len(want) < len(plan.contacts())
    assert trim_contact_plan(plan, 0.0, plan.duration_s) is plan


def test_start_at_now_cuts_contacts_under_way_and_keeps_the_fixed_ones(plan) -> None:  # type: ignore[no-untyped-def]
    contacts = plan.contacts()
    now = next(c for c in contacts if c.kind == "ground_down").start_s + 30.0
    under_way = [c for c in contacts if c.start_s < now < c.end_s - 1.0]
    kept = under_way[0]
    cut = start_at_now(plan, now, {(kept.src, kept.dst, kept.start_s, kept.end_s)}).contacts()
    assert kept in cut  # whole, as the fixed hop names it
    for c in cut:
        assert c.end_s > now or (c.src, c.dst) in {(kept.src, kept.dst), (kept.dst, kept.src)}
        if (c.src, c.dst, c.end_s) not in {(kept.src, kept.dst, kept.end_s), (kept.dst, kept.src, kept.end_s)}:
            assert c.start_s >= now
    ends = {(c.src, c.dst, c.end_s) for c in cut}
    assert all((c.src, c.dst, c.end_s) in ends for c in under_way)  # cut, not dropped
