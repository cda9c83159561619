"""``skyinfer plan`` / ``skyinfer validate-plan`` end to end on a small real scenario.

The scenario uses real Planet TLEs (tests/data) and real station sites; the
plan is written atomically, read back and validated; tampering makes
validate-plan fail with the violation listed; bad input exits 2 without a
traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import skyinfer.cli as cli

DATA = Path(__file__).parent / "data"

SCENARIO = """\
name: plan-cli
start: 2023-04-20T00:00:00Z
duration: 6h
constellation:
  - tle: {tle}
    select: [FLOCK 4X-2, FLOCK 4X-3, FLOCK 4S-1, SKYSAT-C1]
ground_stations:
  - {{name: Svalbard, latitude_deg: 78.23, longitude_deg: 15.41, altitude_m: 500, min_elevation_deg: 5, class: x-band}}
  - {{name: Fairbanks, latitude_deg: 64.97, longitude_deg: -147.5, altitude_m: 300, min_elevation_deg: 10}}
  - {{name: Awarua, latitude_deg: -46.53, longitude_deg: 168.38, altitude_m: 10, min_elevation_deg: 5}}
sunlight: true
nodes:
  assign:
    - {{profile: jetson-orin, pattern: "FLOCK*"}}
    - {{profile: three-body-744tops, satellites: [SKYSAT-C1]}}
models:
  - {{id: cloudmask@1, size_bytes: 40MB, memory_bytes: 200MB, gflop_per_inference: 12.5}}
jobs:
  - {{id: up, model: cloudmask@1, priority: 3, deadline: 5h, input_bytes: 50MB, output_bytes: 1MB, tiles: 2000,
     source: {{uplink: {{}}}}}}
  - {{id: onboard, model: cloudmask@1, priority: 2, submit: +10m, deadline: 5h, input_bytes: 200MB,
     output_bytes: 2MB, tiles: 2809, source: {{onboard: {{satellite: FLOCK 4S-1}}}}}}
  - {{id: hopeless, model: cloudmask@1, deadline: 1h, input_bytes: 1TB, output_bytes: 1MB,
     source: {{uplink: {{}}}}}}
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scn") / "scenario.yaml"
    path.write_text(SCENARIO.format(tle=DATA / "planet-2023-04-20.tle"))
    return path


def test_plan_json_out_then_validate(scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    code = cli.main(["plan", "--scenario", str(scenario), "--policy", "cpsat", "--time-limit-s", "2",
                     "--workers", "1", "--format", "json", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert not list(tmp_path.glob(".plan.json.*"))  # no temp file left behind
    status = {j["job_id"]: j["status"] for j in data["jobs"]}
    assert status == {"up": "scheduled", "onboard": "scheduled", "hopeless": "unschedulable"}
    assert data["policy"] == "cpsat" and data["objective"] == 5
    capsys.readouterr()
    assert cli.main(["validate-plan", "--scenario", str(scenario), "--plan", str(out)]) == 0
    assert "valid" in capsys.readouterr().out

    # Move a scheduled job before its submit time: validate-plan lists the violation and exits 1.
    job = next(j for j in data["jobs"] if j["job_id"] == "onboard")
    job["start"] = "2023-04-20T00:00:00.000Z"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert cli.main(["validate-plan", "--scenario", str(scenario), "--plan", str(bad)]) == 1
    assert "onboard" in capsys.readouterr().out


def test_plan_table_for_each_baseline(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for policy in ("greedy", "bentpipe"):
        assert cli.main(["plan", "--scenario", str(scenario), "--policy", policy]) == 0
        out = capsys.readouterr().out
        assert "onboard" in out and "hopeless" in out


def test_bad_input_exits_2_with_one_line(tmp_path: Path, scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--scenario", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(SCENARIO.format(tle=DATA / "planet-2023-04-20.tle").replace("priority: 3", "priority: -3"))
    assert cli.main(["plan", "--scenario", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "priority" in err and "broken.yaml" in err and "Traceback" not in err
    notjson = tmp_path / "plan.json"
    notjson.write_text("{not json")
    assert cli.main(["validate-plan", "--scenario", str(scenario), "--plan", str(notjson)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert cli.main(["plan", "--scenario", str(scenario), "--time-limit-s", "0"]) == 2


def test_subprocess_entry_point(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "skyinfer.cli", "plan", "--scenario", str(scenario),
                           "--policy", "greedy", "--out", str(out), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["policy"] == "greedy"
    proc = subprocess.run([sys.executable, "-m", "skyinfer.cli", "validate-plan", "--scenario", str(scenario), "--plan",
                           str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_plan_draws_a_scenarios_generated_workload_like_replay(tmp_path: Path) -> None:
    small = Path(__file__).parent / "replay" / "data" / "small.yaml"
    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--scenario", str(small), "--policy", "greedy", "--format", "json",
                     "--out", str(out)]) == 0
    jobs = json.loads(out.read_text())["jobs"]
    ids = {j["job_id"] for j in jobs}
    assert "flood-uplink" in ids
    assert any(i.startswith("eo-") for i in ids), "the workload generators' jobs are planned, not dropped"
    assert cli.main(["validate-plan", "--scenario", str(small), "--plan", str(out)]) == 0
