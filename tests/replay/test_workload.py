"""Workload generators and parsing: seeded Poisson arrivals over real cities, priorities, deadlines, sizes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from scheduler.types import CaptureSource, OnboardSource, UplinkSource
from skyinfer.config import parse_yaml
from skyinfer.errors import InputError
from skyinfer.replay.units import size_bytes
from skyinfer.replay.workload import load_cities, parse_workload

EPOCH = datetime(2023, 4, 20, tzinfo=UTC)
HOUR_S = 3600.0


def _workload(text: str):  # type: ignore[no-untyped-def]
    return parse_workload(parse_yaml(text, "w.yaml").value["workload"], EPOCH)


GEN = """
workload:
  seed: 3
  generators:
    - name: eo
      rate_per_h: 60
      model: cloudmask@1
      targets: {regions: [europe]}
      priorities:
        - {priority: 10, share: 0.25, deadline: 30m}
        - {priority: 1, share: 0.75}
      deadline: [2h, 6h]
      input_bytes: [100MB, 1GB]
      output_bytes: 1MB
      tiles: [10, 20]
"""


def test_cities_are_real_places_with_valid_coordinates() -> None:
    cities = load_cities()
    assert len(cities) >= 100
    assert len({c.name for c in cities}) == len(cities)
    by_name = {c.name: c for c in cities}
    # Independent reference values (city centres, WGS84) to within 0.2 degrees.
    for name, lat, lon in (("London", 51.507, -0.128), ("Tokyo", 35.690, 139.692), ("Sydney", -33.869, 151.209),
                           ("Sao Paulo", -23.551, -46.633), ("Nairobi", -1.286, 36.817)):
        assert abs(by_name[name].latitude_deg - lat) < 0.2
        assert abs(by_name[name].longitude_deg - lon) < 0.2


def test_poisson_arrivals_match_the_rate_and_stay_in_the_window() -> None:
    duration_s = 100 * HOUR_S
    jobs = _workload(GEN).generate(duration_s)
    # 6,000 expected arrivals; a Poisson count has sigma sqrt(6000) ~ 77.
    assert abs(len(jobs) - 6000) < 4 * math.sqrt(6000)
    submits = np.array([j.submit_s for j in jobs])
    assert np.all(np.diff(submits) >= 0) and submits[0] >= 0 and submits[-1] < duration_s
    gaps = np.diff(submits)
    assert abs(gaps.mean() - 60.0) < 3.0  # exponential gaps with mean 3600/60 s
    assert abs(np.std(gaps) / gaps.mean() - 1.0) < 0.1  # coefficient of variation of an exponential is 1


def test_priorities_deadlines_sizes_and_targets_follow_the_spec() -> None:
    jobs = _workload(GEN).generate(50 * HOUR_S)
    europe = {(c.latitude_deg, c.longitude_deg) for c in load_cities() if c.region == "europe"}
    high = [j for j in jobs if j.priority == 10]
    assert abs(len(high) / len(jobs) - 0.25) < 0.04
    for j in jobs:
        rel = j.deadline_s - j.submit_s
        if j.priority == 10:
            assert rel == pytest.approx(1800.0, abs=1e-2)
        else:
            assert 2 * HOUR_S - 1e-2 <= rel <= 6 * HOUR_S + 1e-2
        assert 100_000_000 <= j.input_bytes <= 1_000_000_000
        assert j.output_bytes == 1_000_000
        assert 10 <= j.tiles <= 20
        assert isinstance(j.source, CaptureSource)
        assert (j.source.latitude_deg, j.source.longitude_deg) in europe


def test_same_seed_same_jobs_other_seed_other_jobs() -> None:
    w = _workload(GEN)
    assert w.generate(10 * HOUR_S) == w.generate(10 * HOUR_S)
    assert w.generate(10 * HOUR_S, seed=4) != w.generate(10 * HOUR_S)


def test_uplink_and_onboard_generators() -> None:
    w = _workload("""
workload:
  generators:
    - {name: up, rate_per_h: 10, model: m@1, source: uplink, station: Svalbard, destination: Troll, start: 1h, end: 2h}
    - {name: ob, rate_per_h: 10, model: m@1, source: onboard}
""")
    jobs = w.generate(5 * HOUR_S, satellites=("SAT-A", "SAT-B"))
    up = [j for j in jobs if j.job_id.startswith("up-")]
    ob = [j for j in jobs if j.job_id.startswith("ob-")]
    assert up and ob
    assert all(isinstance(j.source, UplinkSource) and j.source.station == "Svalbard" for j in up)
    assert all(j.destination == "Troll" and HOUR_S <= j.submit_s < 2 * HOUR_S for j in up)
    assert {j.source.satellite for j in ob if isinstance(j.source, OnboardSource)} <= {"SAT-A", "SAT-B"}


@pytest.mark.parametrize(("text", "expected"), [
    ("workload:\n  generators:\n    - {name: g, rate_per_h: 1, model: m@1, colour: red}\n",
     "w.yaml:3: workload.generators[0].colour: unknown key"),
    ("workload:\n  generators:\n    - {name: g, rate_per_h: 1, model: m@1, targets: atlantis}\n",
     "w.yaml:3: workload.generators[0].targets: unknown region 'atlantis'"),
    ("workload:\n  generators:\n    - {name: g, rate_per_h: 1, model: m@1, start: 2h, end: 1h}\n",
     "w.yaml:3: workload.generators[0].end: must be after start"),
    ("workload:\n  generators:\n    - {name: g, rate_per_h: 1, model: m@1, input_bytes: lots}\n",
     "w.yaml:3: workload.generators[0].input_bytes: expected a size"),
    ("workload:\n  generators:\n    - {name: g, rate_per_h: -1, model: m@1}\n",
     "w.yaml:3: workload.generators[0].rate_per_h: must be >= 0"),
    ("workload:\n  generators:\n    - {name: g, rate_per_h: 1, model: m@1, deadline: [5h, 1h]}\n",
     "w.yaml:3: workload.generators[0].deadline: low"),
    ("workload:\n  generators:\n    - {name: g, rate_per_h: 1, model: m@1}\n"
     "    - {name: g, rate_per_h: 2, model: m@1}\n",
     "w.yaml:4: workload.generators[1]: generator name 'g' appears twice"),
])
def test_bad_workloads_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(InputError) as err:
        _workload(text)
    assert str(err.value).startswith(expected), str(err.value)


@pytest.mark.parametrize(("value", "expected"), [
    (1234, 1234), ("250MB", 250_000_000), ("1.5GB", 1_500_000_000), ("64KiB", 65536), ("3 B", 3),
])
def test_sizes(value: object, expected: int) -> None:
    assert size_bytes(parse_yaml(f"v: {value!r}" if isinstance(value, str) else f"v: {value}", "s.yaml")
                      .value["v"]) == expected
