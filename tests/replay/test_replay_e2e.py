"""End-to-end replays of a small real scenario: invariants of the report, and determinism."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from orbit.contact_plan import station_node
from scheduler.store import ACTIVE_STATES, ALLOWED_TRANSITIONS, JobState, Store
from skyinfer.cli import main
from skyinfer.replay.engine import OUTCOMES, ReplayResult
from skyinfer.replay.report import deterministic_part, store_disagreements
from skyinfer.replay.run import Prepared, play, prepare

SMALL = Path(__file__).parent / "data" / "small.yaml"
TIME_TOL_S = 1e-3  # the planner contract's 1 ms tolerance on times
SOC_TOL = 1e-9


@pytest.fixture(scope="module")
def small() -> Prepared:
    return prepare(SMALL)


@pytest.fixture(scope="module")
def greedy_runs(small: Prepared, tmp_path_factory: pytest.TempPathFactory
                ) -> list[tuple[ReplayResult, dict[str, object], Path]]:
    out = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"greedy{i}")
        result, report = play(small, d, policy="greedy")
        out.append((result, report, d))
    return out


def check_invariants(result: ReplayResult, report: dict[str, object]) -> None:
    setup = result.setup
    cp = setup.contact_plan
    # Every job accounted for, exactly once.
    assert sorted(o.job.job_id for o in result.outcomes) == sorted(j.job_id for j in setup.jobs)
    assert all(o.outcome in OUTCOMES for o in result.outcomes)
    total = report["jobs"]["total"]  # type: ignore[index]
    assert total["submitted"] == len(setup.jobs) == sum(total[k] for k in OUTCOMES)
    for o in result.outcomes:
        if o.outcome in ("on_time", "late"):
            assert o.arrival_s is not None
            assert (o.arrival_s <= o.job.deadline_s + TIME_TOL_S) == (o.outcome == "on_time")
    # No transfer outside a contact of the contact plan, none during a fault on its link.
    by_link: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for c in cp.contacts():
        by_link.setdefault((c.src, c.dst), []).append((c.start_s, c.end_s))
    for t in result.transfers:
        assert t.end_s >= t.start_s
        windows = by_link[(t.src, t.dst)]
        assert any(s - TIME_TOL_S <= t.start_s and t.end_s <= e + TIME_TOL_S for s, e in windows), t
        if not t.ok:
            continue
        for f in setup.faults:
            hit = ((f.kind == "station_offline" and station_node(f.target) in (t.src, t.dst))
                   or (f.kind == "node_down" and f.target in (t.src, t.dst))
                   or (f.kind == "isl_cut" and {f.target, f.other} == {t.src, t.dst}))
            if hit:
                assert t.end_s <= f.start_s + TIME_TOL_S or t.start_s >= f.end_s - TIME_TOL_S, (t, f)
    # No node over capacity: concurrent runs never exceed the profile's slots.
    profiles = setup.base_problem.profiles_by_node
    by_node: dict[str, list[tuple[float, float]]] = {}
    for r in result.runs:
        by_node.setdefault(r.node, []).append((r.start_s, r.end_s))
    for node, runs in by_node.items():
        if node == "ground":
            continue
        edges = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
        level = peak = 0
        for _, d in edges:
            level += d
            peak = max(peak, level)
        assert peak <= profiles[node].slots, node
    # State of charge within [min_soc, 1] on every node (the scenario's idle load alone never breaks it).
    for name, stats in result.nodes.items():
        assert 0.0 <= stats["min_soc"] <= 1.0 + SOC_TOL
        assert stats["min_soc"] >= profiles[name].min_soc - SOC_TOL, name
    # The plan validator passed on every planning round.
    assert result.rounds
    assert [e for r in result.rounds for e in r.errors] == []
    assert report["planner"]["validator_errors"] == 0  # type: ignore[index]
    check_store(result, report)


def check_store(result: ReplayResult, report: dict[str, object]) -> None:
    """The scheduler's store (serve's record of the run) agrees with the report: every job accounted for."""
    total = report["jobs"]["total"]  # type: ignore[index]
    store: dict[str, Any] = report["store"]  # type: ignore[assignment]
    assert store_disagreements(result) == [] and store["disagreements"] == 0
    states = store["states"]
    in_store = [o for o in result.outcomes if o.state]
    assert store["jobs"] == len(in_store) == sum(states.values())
    assert states.get("SUCCEEDED", 0) == total["on_time"]
    assert states.get("EXPIRED", 0) == total["expired"] + total["late"]
    assert states.get("FAILED", 0) == sum(1 for o in in_store if o.outcome == "failed")
    assert sum(states.get(s.value, 0) for s in ACTIVE_STATES) == sum(1 for o in in_store if o.outcome == "unfinished")
    assert states.get("CANCELLED", 0) == 0
    # Read back from the file itself: each job's transitions form one chain of allowed steps in time order.
    events = [e for e in result.events if e["type"] == "job.state"]
    with Store(result.store_path) as db:
        jobs = db.list_jobs(limit=10**6)
        assert {j.request_id: j.state.value for j in jobs} == {o.job.job_id: o.state for o in in_store}
        steps = 0
        for job in jobs:
            chain = db.transitions(job.job_id)
            steps += len(chain)
            assert chain[0].from_state is None and chain[0].to_state is JobState.PENDING
            for a, b in itertools.pairwise(chain):
                assert b.from_state is a.to_state and b.to_state in ALLOWED_TRANSITIONS[a.to_state], (a, b)
                assert b.time_utc >= a.time_utc
            assert chain[-1].to_state is job.state
        assert steps == len(events)  # events.jsonl holds every committed transition


def test_greedy_replay_keeps_every_invariant(greedy_runs: list[tuple[ReplayResult, dict[str, object], Path]]
                                             ) -> None:
    result, report, out = greedy_runs[0]
    check_invariants(result, report)
    total = report["jobs"]["total"]  # type: ignore[index]
    assert total["on_time"] >= 3  # in-orbit inference delivers in this scenario
    assert report["runs"]["count"] >= total["on_time"]  # type: ignore[index]
    kinds = {json.loads(line)["type"] for line in (out / "events.jsonl").read_text().splitlines()}
    assert {"job.submitted", "plan.round", "job.committed", "transfer.done", "job.running", "job.on_time",
            "fault.start", "fault.end"} <= kinds


def test_same_scenario_and_seed_give_the_same_report(
        greedy_runs: list[tuple[ReplayResult, dict[str, object], Path]]) -> None:
    (_, _, a), (_, _, b) = greedy_runs
    ra = json.loads((a / "report.json").read_text())
    rb = json.loads((b / "report.json").read_text())
    assert ra["wall"]["wall_s"] is not None
    assert json.dumps(deterministic_part(ra)) == json.dumps(deterministic_part(rb))
    assert (a / "events.jsonl").read_text() == (b / "events.jsonl").read_text()


def test_cpsat_and_bentpipe_replays_keep_every_invariant(small: Prepared, tmp_path: Path) -> None:
    cpsat, cpsat_report = play(small, tmp_path / "cpsat", policy="cpsat")
    check_invariants(cpsat, cpsat_report)
    bent, bent_report = play(small, tmp_path / "bentpipe", policy="bentpipe")
    check_invariants(bent, bent_report)
    assert {r.node for r in bent.runs} <= {"ground"}
    # In-orbit inference sends results down, not raw scenes: far fewer bytes than bent-pipe.
    assert cpsat_report["bytes"]["downlinked"] < bent_report["bytes"]["downlinked"] / 10


FAULTS = """
name: faults
start: 2023-04-20T00:00:00Z
duration: 3h
constellation:
  - tle: {tle}
    select: [SKYSAT-C1, SKYSAT-C2, SKYSAT-C3, SKYSAT-C4, SKYSAT-C5, SKYSAT-C9]
ground_stations:
  - {{name: Svalbard, latitude_deg: 78.2298, longitude_deg: 15.4078, min_elevation_deg: 5, class: x-band}}
  - {{name: Inuvik, latitude_deg: 68.3195, longitude_deg: -133.5495, min_elevation_deg: 5, class: x-band}}
sunlight: true
nodes:
  assign: [{{profile: jetson-orin, pattern: "SKYSAT-*"}}]
models:
  - {{id: tiny@1, size_bytes: 1MB, memory_bytes: 10MB, gflop_per_inference: 1}}
jobs:
  - {{id: lost, model: tiny@1, deadline: 2h, input_bytes: 10MB, output_bytes: 1MB, tiles: 10,
     source: {{onboard: {{satellite: SKYSAT-C3}}}}}}
faults:
  - {{kind: node_down, node: SKYSAT-C3, at: 10s}}
  - {{kind: station_offline, station: Inuvik, from: 0s, to: 3h}}
policy: {{name: greedy, min_replan_gap: 30s}}
"""


def test_node_down_loses_onboard_data_and_offline_station_carries_nothing(tmp_path: Path) -> None:
    tle = Path(__file__).parents[1] / "data" / "planet-2023-04-20.tle"
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(FAULTS.format(tle=tle))
    prepared = prepare(scenario)
    result, report = play(prepared, tmp_path / "out")
    check_invariants(result, report)
    outcome = {o.job.job_id: o for o in result.outcomes}["lost"]
    assert outcome.outcome == "failed" and outcome.reason.startswith("node-down"), outcome
    assert not [t for t in result.transfers if "gs:Inuvik" in (t.src, t.dst)]


def test_bad_scenario_exits_2_with_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SMALL.read_text().replace("tle: ../../data/", f"tle: {SMALL.parents[2] / 'data'}/")
    text = text.replace("rate_per_h: 5", "rate_per_hour: 5")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "rate_per_hour" in s)
    assert main(["replay", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:{line}: workload.generators[0].rate_per_hour: unknown key" in err, err
    assert "Traceback" not in err


def test_html_is_self_contained_and_czml_is_consistent(
        small: Prepared, greedy_runs: list[tuple[ReplayResult, dict[str, object], Path]], tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from skyinfer.replay.czml import build_czml
    from skyinfer.replay.html import render_html

    page = render_html([(r, rep) for r, rep, _ in greedy_runs])
    root = ET.fromstring(page.removeprefix("<!DOCTYPE html>"))  # well-formed: every tag closed
    assert len(root.findall(".//svg")) >= 5  # summary has none; CDF, map, 2 x (Gantt, SoC)
    lowered = page.lower()
    assert "<script" not in lowered and "http://" not in lowered and "https://" not in lowered
    packets = build_czml(small.setup)
    assert packets[0]["id"] == "document"
    ids = {p["id"] for p in packets}
    sats = [p for p in packets if p["id"].startswith("sat/")]
    assert len(sats) == len(small.setup.contact_plan.constellation)
    for p in sats:
        samples = p["position"]["cartesian"]
        assert len(samples) % 4 == 0 and len(samples) >= 8
        r_m = [sum(v * v for v in samples[i + 1:i + 4]) ** 0.5 for i in range(0, len(samples), 4)]
        assert all(6_600_000 < r < 7_400_000 for r in r_m)  # LEO radius in metres
    links = [p for p in packets if p["id"].startswith(("link/", "isl/"))]
    assert len(links) == len(small.setup.contact_plan.ground)
    for p in links:
        for ref in p["polyline"]["positions"]["references"]:
            assert ref.removesuffix("#position") in ids


AGENT_KILL = """
name: agent-kill
start: 2023-04-20T00:00:00Z
duration: 4h
constellation:
  - tle: {tle}
    select: [SKYSAT-C1, SKYSAT-C2]
ground_stations:
  - {{name: Svalbard, latitude_deg: 78.2298, longitude_deg: 15.4078, min_elevation_deg: 5, class: x-band}}
  - {{name: Inuvik, latitude_deg: 68.3195, longitude_deg: -133.5495, min_elevation_deg: 5, class: x-band}}
sunlight: true
models:
  - {{id: tiny@1, size_bytes: 1MB, memory_bytes: 10MB, gflop_per_inference: 1}}
nodes:
  profiles:
    slow: {{base: cubesat, resident_models: [tiny@1], battery_wh: 400}}
  assign: [{{profile: slow, pattern: "SKYSAT-*"}}]
jobs:
  # 36,000 tiles x 1 GFLOP at 20 GFLOP/s: a 30-minute run, started at once on the satellite holding the input.
  - {{id: long, model: tiny@1, deadline: 4h, input_bytes: 10MB, output_bytes: 1MB, tiles: 36000,
     source: {{onboard: {{satellite: SKYSAT-C1}}}}}}
faults:
  - {{kind: agent_kill, node: SKYSAT-C1, at: 10m, restart_after: 1m}}
  - {{kind: agent_kill, node: SKYSAT-C2, at: 10m, restart_after: 1m}}
policy: {{name: greedy, min_replan_gap: 30s}}
agents: {{mode: {mode}}}
"""


@pytest.mark.parametrize("mode", ["inproc", "process"])
def test_killed_agent_loses_the_run_but_not_the_input(tmp_path: Path, mode: str) -> None:
    tle = Path(__file__).parents[1] / "data" / "planet-2023-04-20.tle"
    scenario = tmp_path / "kill.yaml"
    scenario.write_text(AGENT_KILL.format(tle=tle, mode=mode))
    prepared = prepare(scenario)
    result, report = play(prepared, tmp_path / "out")
    check_invariants(result, report)
    runs = [r for r in result.runs if r.job_id == "long"]
    aborted = [r for r in runs if not r.ok]
    assert len(aborted) == 1 and aborted[0].end_s == pytest.approx(600.0), runs
    assert sum(1 for r in runs if r.ok) == 1  # re-planned and run again after the restart
    assert min(r.start_s for r in runs if r.ok) >= 660.0 - TIME_TOL_S
    outcome = {o.job.job_id: o for o in result.outcomes}["long"]
    assert outcome.outcome in ("on_time", "late") and outcome.attempts == 2
    if mode == "process":
        assert report["agents"]["started"] == 2  # the killed process was started again


STUCK = """
name: stuck
start: 2023-04-20T00:00:00Z
duration: 5h
constellation:
  - tle: {tle}
    select: [SKYSAT-C1, SKYSAT-C2]
ground_stations:
  - {{name: Svalbard, latitude_deg: 78.2298, longitude_deg: 15.4078, min_elevation_deg: 5, class: x-band}}
  - {{name: Inuvik, latitude_deg: 68.3195, longitude_deg: -133.5495, min_elevation_deg: 5, class: x-band}}
sunlight: true
models:
  - {{id: tiny@1, size_bytes: 1MB, memory_bytes: 10MB, gflop_per_inference: 1}}
nodes:
  profiles:
    slow: {{base: cubesat, resident_models: [tiny@1], battery_wh: 400}}
  assign: [{{profile: slow, pattern: "SKYSAT-*"}}]
jobs:
  # Committed at once (its input is on board) to a node whose agent is down until 5 h: at its deadline the
  # scheduler expires it and cancels the work, as serve does.
  - {{id: stuck, model: tiny@1, submit: +2m, deadline: 4h, input_bytes: 10MB, output_bytes: 1MB, tiles: 100,
     source: {{onboard: {{satellite: SKYSAT-C1}}}}}}
faults:
  - {{kind: agent_kill, node: SKYSAT-C1, at: 1m, restart_after: 5h}}
  - {{kind: agent_kill, node: SKYSAT-C2, at: 1m, restart_after: 5h}}
policy: {{name: greedy, min_replan_gap: 30s}}
"""


def test_work_in_flight_at_its_deadline_is_expired_and_cancelled(tmp_path: Path) -> None:
    tle = Path(__file__).parents[1] / "data" / "planet-2023-04-20.tle"
    scenario = tmp_path / "stuck.yaml"
    scenario.write_text(STUCK.format(tle=tle))
    result, report = play(prepare(scenario), tmp_path / "out")
    check_invariants(result, report)
    (outcome,) = result.outcomes
    assert outcome.outcome == "expired" and outcome.state == "EXPIRED", outcome
    assert "its work was cancelled" in outcome.reason
    assert not result.runs
    steps = [(e["previous"], e["state"]) for e in result.events if e["type"] == "job.state"]
    assert steps == [(None, "PENDING"), ("PENDING", "SCHEDULED"), ("SCHEDULED", "DISPATCHED"),
                     ("DISPATCHED", "EXPIRED")]
    expired = next(e for e in result.events if e["type"] == "job.state" and e["state"] == "EXPIRED")
    assert expired["t_s"] == pytest.approx(120.0 + 4 * 3600.0) and expired["reason"].startswith("deadline:")


def test_a_submit_the_job_service_refuses_fails_and_stays_out_of_the_store(tmp_path: Path) -> None:
    tle = Path(__file__).parents[1] / "data" / "planet-2023-04-20.tle"
    scenario = tmp_path / "far.yaml"
    far = ("  - {{id: far, model: tiny@1, deadline: 800h, input_bytes: 1MB, output_bytes: 1kB, tiles: 1,\n"
           "     source: {{onboard: {{satellite: SKYSAT-C2}}}}}}\n")
    scenario.write_text(STUCK.replace("faults:\n", far + "faults:\n").format(tle=tle))
    result, report = play(prepare(scenario), tmp_path / "out")
    check_invariants(result, report)
    outcome = {o.job.job_id: o for o in result.outcomes}["far"]
    # SubmitJob's validation: a deadline a month ahead is a unit mistake.
    assert (outcome.outcome, outcome.state) == ("failed", "")
    assert outcome.reason.startswith("rejected: deadline: more than 30 days"), outcome.reason
    assert report["store"]["jobs"] == 1
