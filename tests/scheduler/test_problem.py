"""Scenario sections nodes/models/jobs -> Problem, and every user mistake as FILE:LINE: key.path: message."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from scheduler_cases import DATA_DIR, SAT_A, SAT_B, SAT_C

from orbit.contact_plan import ContactPlan
from scheduler.problem import build_problem, profiles_by_name
from scheduler.types import BUILTIN_PROFILES, CaptureSource, OnboardSource, Problem, UplinkSource
from skyinfer.errors import InputError
from skyinfer.scenario import load_scenario

SHA = "ab" * 32

HEAD = f"""\
name: test
start: 2023-04-20T00:00:00Z
duration: 10000s
constellation:
  - tle: {DATA_DIR / 'planet-2023-04-20.tle'}
    select: ["{SAT_A}", "{SAT_B}", "{SAT_C}"]
ground_stations:
  - {{name: S1, latitude_deg: 78.23, longitude_deg: 15.41, min_elevation_deg: 5}}
  - {{name: S2, latitude_deg: 64.97, longitude_deg: -147.5}}
"""

GOOD = f"""\
nodes:
  profiles:
    my-orin:
      base: jetson-orin
      compute_gflops: 1500
      battery_wh: 150
      resident_models: [cloudmask@1]
      downlink_bps: {{default: 160e6, s-band: 2e6}}
    scratch:
      compute_gflops: 10
      memory_bytes: 1GiB
      slots: 1
      active_power_w: 5
      idle_power_w: 1
      battery_wh: 20
      solar_w: 6
      min_soc: 0.5
      uplink_bps: 1e5
      downlink_bps: 1e6
      isl_bps: 0
  assign:
    - {{profile: my-orin, satellites: ["{SAT_A}"]}}
    - {{profile: cubesat, pattern: "FLOCK 4X-*"}}
models:
  - {{id: cloudmask@1, size_bytes: 40MB, sha256: "{SHA}", memory_bytes: 2e8, gflop_per_inference: 12.5}}
  - {{id: tiny@1, size_bytes: 1e5, memory_bytes: 1000000, reference_ms: 120, reference_profile: scratch,
     path: models/tiny.onnx}}
jobs:
  - id: j1
    model: cloudmask@1
    priority: 3
    submit: 2023-04-20T00:10:00Z
    deadline: 2h
    input_bytes: 2e8
    output_bytes: 1MB
    tiles: 100
    source: {{capture: {{latitude_deg: 48.1, longitude_deg: 11.6, min_elevation_deg: 30}}}}
    destination: S1
  - {{id: j2, model: tiny@1, submit: +600s, deadline: "2023-04-20T02:00:00Z", input_bytes: 0, output_bytes: 10,
     source: {{uplink: {{station: S2}}}}}}
  - {{id: j3, model: tiny@1, deadline: 3600, input_bytes: 5, output_bytes: 5, source: {{uplink: {{}}}}}}
  - {{id: j4, model: tiny@1, submit: 60, deadline: 90m, input_bytes: 5, output_bytes: 5,
     source: {{onboard: {{satellite: "{SAT_B}"}}}}}}
"""


def load(tmp_path: Path, body: str, plan: ContactPlan) -> Problem:
    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD + textwrap.dedent(body))
    return build_problem(load_scenario(path), plan)


def test_good_scenario(tmp_path: Path, tiny_plan: ContactPlan) -> None:
    problem = load(tmp_path, GOOD, tiny_plan)
    assert problem.epoch_utc == tiny_plan.start_utc
    # First match wins: A gets my-orin, B and C the cubesat pattern rule.
    assert problem.profiles_by_node[SAT_A].name == "my-orin"
    assert problem.profiles_by_node[SAT_B] == problem.profiles_by_node[SAT_C] == BUILTIN_PROFILES["cubesat"]
    mine = problem.profiles_by_node[SAT_A]
    assert mine.compute_gflops == 1500 and mine.battery_wh == 150
    assert mine.slots == BUILTIN_PROFILES["jetson-orin"].slots  # inherited
    assert mine.resident_models == ("cloudmask@1",)
    assert mine.downlink_rate_bps("s-band") == 2e6 and mine.downlink_rate_bps("x-band") == 160e6
    assert set(profiles_by_name(problem)) == {"my-orin", "cubesat"}
    cm, tiny = problem.models["cloudmask@1"], problem.models["tiny@1"]
    assert cm.size_bytes == 40_000_000 and cm.memory_bytes == 200_000_000 and cm.sha256 == SHA
    # reference_ms on the custom 'scratch' profile: 0.12 s x 10 GFLOP/s = 1.2 GFLOP per inference.
    assert tiny.gflop_per_inference == pytest.approx(1.2)
    assert tiny.path == str(tmp_path / "models" / "tiny.onnx")
    j1, j2, j3, j4 = problem.jobs
    assert (j1.submit_s, j1.deadline_s, j1.priority, j1.tiles) == (600.0, 600.0 + 7200.0, 3, 100)
    assert (j1.input_bytes, j1.output_bytes, j1.destination) == (200_000_000, 1_000_000, "S1")
    assert j1.source == CaptureSource(48.1, 11.6, 30.0)
    assert (j2.submit_s, j2.deadline_s, j2.source) == (600.0, 7200.0, UplinkSource("S2"))
    assert (j3.submit_s, j3.deadline_s, j3.priority, j3.tiles, j3.source) == (0.0, 3600.0, 1, 1, UplinkSource())
    assert (j4.submit_s, j4.deadline_s, j4.source) == (60.0, 60.0 + 5400.0, OnboardSource(SAT_B))


def test_no_sections_is_an_empty_problem(tmp_path: Path, tiny_plan: ContactPlan) -> None:
    problem = load(tmp_path, "", tiny_plan)
    assert problem.jobs == () and problem.models == {} and problem.profiles_by_node == {}


BAD = [
    # (name, replace this, with this, message fragment, key path)
    ("unknown assign profile", "{profile: cubesat,", "{profile: cubsat,", "unknown node profile 'cubsat'",
     "nodes.assign[1].profile"),
    ("unknown base profile", "base: jetson-orin", "base: jetson", "unknown profile 'jetson'",
     "nodes.profiles.my-orin.base"),
    ("unknown satellite", f'satellites: ["{SAT_A}"]', 'satellites: ["FLOCK 9Z-1"]', "unknown satellite",
     "nodes.assign[0].satellites[0]"),
    ("pattern matches nothing", 'pattern: "FLOCK 4X-*"', 'pattern: "DOVE*"', "matches no satellite",
     "nodes.assign[1].pattern"),
    ("both satellites and pattern", '{profile: cubesat, pattern', '{profile: cubesat, satellites: [], pattern',
     "exactly one of", "nodes.assign[1]"),
    ("incomplete profile", "      isl_bps: 0\n", "", "missing isl_bps", "nodes.profiles.scratch"),
    ("builtin name reused", "    scratch:", "    cubesat:", "built-in profile", "nodes.profiles.cubesat"),
    ("bad profile value", "battery_wh: 150", "battery_wh: -1", "battery_wh", "nodes.profiles.my-orin.battery_wh"),
    ("resident unknown model", "resident_models: [cloudmask@1]", "resident_models: [cloud@1]",
     "unknown model 'cloud@1'", "nodes.profiles.my-orin.resident_models[0]"),
    ("unknown job model", "model: cloudmask@1\n", "model: cloudmask@2\n", "unknown model 'cloudmask@2'",
     "jobs[0].model"),
    ("unknown reference profile", "reference_profile: scratch", "reference_profile: scrach",
     "unknown node profile 'scrach'", "models[1].reference_profile"),
    ("bad model id", "{id: cloudmask@1, size", "{id: cloudmask, size", "name@version", "models[0].id"),
    ("duplicate model", "{id: tiny@1, size", "{id: cloudmask@1, size", "defined twice", "models[1].id"),
    ("negative size", "input_bytes: 2e8", "input_bytes: -5", "must be >= 0", "jobs[0].input_bytes"),
    ("absurd size", "output_bytes: 1MB", "output_bytes: 5e20", "absurd", "jobs[0].output_bytes"),
    ("size with a bad unit", "size_bytes: 40MB", "size_bytes: 40 parsecs", "expected a size",
     "models[0].size_bytes"),
    ("deadline before submit", 'deadline: "2023-04-20T02:00:00Z"', 'deadline: "2023-04-20T00:05:00Z"',
     "before (or at) the submit", "jobs[1].deadline"),
    ("negative deadline", "deadline: 3600,", "deadline: -3600,", "positive", "jobs[2].deadline"),
    ("submit before start", "submit: 2023-04-20T00:10:00Z", "submit: 2023-04-19T23:00:00Z",
     "before the scenario start", "jobs[0].submit"),
    ("submit after window", "submit: +600s", "submit: +5h", "end of the scenario window", "jobs[1].submit"),
    ("unknown station", "{station: S2}", "{station: S3}", "unknown ground station 'S3'",
     "jobs[1].source.uplink.station"),
    ("unknown destination", "destination: S1", "destination: Svalbard", "unknown ground station",
     "jobs[0].destination"),
    ("unknown onboard satellite", f'{{satellite: "{SAT_B}"}}', '{satellite: "NOPE"}', "unknown satellite",
     "jobs[3].source.onboard.satellite"),
    ("two sources", "source: {uplink: {}}", "source: {uplink: {}, onboard: {satellite: x}}", "exactly one of",
     "jobs[2].source"),
    ("latitude out of range", "latitude_deg: 48.1", "latitude_deg: 148.1", "must be <= 90",
     "jobs[0].source.capture.latitude_deg"),
    ("priority out of range", "priority: 3", "priority: 0", "must be >= 1", "jobs[0].priority"),
    ("unknown job key", "tiles: 100", "tyles: 100", "did you mean 'tiles'", "jobs[0].tyles"),
    ("duplicate job", "{id: j3,", "{id: j2,", "defined twice", "jobs[2].id"),
]


@pytest.mark.parametrize(("old", "new", "fragment", "key_path"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_mistakes_name_file_line_and_key(tmp_path: Path, tiny_plan: ContactPlan, old: str, new: str,
                                          fragment: str, key_path: str) -> None:
    assert old in GOOD, old
    with pytest.raises(InputError) as info:
        load(tmp_path, GOOD.replace(old, new, 1), tiny_plan)
    message = str(info.value)
    assert re.match(rf"^{re.escape(str(tmp_path / 'scenario.yaml'))}:\d+: {re.escape(key_path)}: ", message), message
    assert fragment in message, message


def test_empty_constellation(tmp_path: Path, tiny_plan: ContactPlan) -> None:
    from dataclasses import replace

    from orbit.types import Constellation

    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD + GOOD)
    empty = replace(tiny_plan, constellation=Constellation(()))
    with pytest.raises(InputError, match=r"scenario.yaml:\d+: constellation: the constellation is empty"):
        build_problem(load_scenario(path), empty)


def test_now_outside_window(tmp_path: Path, tiny_plan: ContactPlan) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD + GOOD)
    with pytest.raises(InputError, match="now_s"):
        build_problem(load_scenario(path), tiny_plan, now_s=-1.0)
