"""Greedy planner: every resource of the contract respected, and each failure named precisely.

Problems are hand-made over the ``tiny_plan`` contact plan (conftest): only
satellite A (``FLOCK 4X-2``) has a node profile, so every job computes on A and
downlinks over A-S1 [100, 700] s or A-S2 [7000, 7600] s. Candidates come from
the real ``build_candidates``; every plan is checked by the independent validator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from orbit.contact_plan import ContactPlan
from scheduler.feasibility import build_candidates
from scheduler.greedy import (
    SunSegment,
    check_placements,
    greedy_assign,
    greedy_plan,
    simulate_soc,
)
from scheduler.types import Job, ModelSpec, NodeProfile, OnboardSource, Plan, Problem
from scheduler.validator import validate_plan

SAT_A = "FLOCK 4X-2"  # the satellite the conftest's tiny_plan gives A-S1 [100, 700] s and A-S2 [7000, 7600] s
TINY_MODEL = ModelSpec("cloudmask@1", size_bytes=40_000_000, sha256="", memory_bytes=200_000_000,
                       gflop_per_inference=12.5)

# compute 125 GFLOP/s and 12.5 GFLOP per tile: a job of N tiles runs N/10 s.
NODE = NodeProfile(
    name="test-node", compute_gflops=125.0, memory_bytes=4 * 10**9, slots=1, active_power_w=40.0,
    idle_power_w=15.0, battery_wh=200.0, solar_w=60.0, min_soc=0.3, uplink_bps=(("default", 2e6),),
    downlink_bps=(("default", 220e6),), isl_bps=0.0, resident_models=(TINY_MODEL.model_id,),
)


def a_problem(plan: ContactPlan, jobs: Sequence[Job], profile: NodeProfile = NODE) -> Problem:
    return Problem(plan.start_utc, plan, {SAT_A: profile}, {TINY_MODEL.model_id: TINY_MODEL}, tuple(jobs))


def a_job(job_id: str, **kw: object) -> Job:
    """A job whose input is on A at submit (0 s), deadline 9000 s, 1 MB result, 160 tiles unless told."""
    base: dict[str, object] = dict(job_id=job_id, model_id=TINY_MODEL.model_id, priority=1, submit_s=0.0,
                                   deadline_s=9000.0, input_bytes=1000, output_bytes=1_000_000, tiles=160,
                                   source=OnboardSource(SAT_A))
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def planned(problem: Problem) -> Plan:
    plan = greedy_plan(problem, build_candidates(problem))
    assert validate_plan(problem, plan) == []
    assert sorted([s.job_id for s in plan.scheduled] + [u.job_id for u in plan.unschedulable]) == sorted(
        j.job_id for j in problem.jobs)
    return plan


def reason_of(plan: Plan, job_id: str) -> str:
    return next(u.reason for u in plan.unschedulable if u.job_id == job_id)


def test_single_job_runs_at_once_and_downlinks_on_the_first_pass(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("j1", tiles=1000)])  # 100 s
    plan = planned(problem)
    (sj,) = plan.scheduled
    assert (sj.node, sj.start_s, sj.end_s) == (SAT_A, 0.0, pytest.approx(100.0))
    # 1 MB at 220 Mb/s takes 36.4 ms, leaving as soon as the job ends inside A-S1 [100, 700].
    assert sj.arrival_s == pytest.approx(100.0 + 8e6 / 220e6)
    assert plan.objective == 1 and plan.bound == 1


def test_one_slot_serialises_jobs_and_higher_priority_wins(tiny_plan: ContactPlan) -> None:
    jobs = [a_job("low", tiles=4000, priority=1, deadline_s=700.0),  # 400 s each, both must be down by 700 s
            a_job("high", tiles=4000, priority=5, deadline_s=700.0)]
    plan = planned(a_problem(tiny_plan, jobs))
    assert [s.job_id for s in plan.scheduled] == ["high"]
    assert reason_of(plan, "low").startswith("capacity: no slot free")


def test_two_slots_run_concurrently(tiny_plan: ContactPlan) -> None:
    jobs = [a_job("a", tiles=4000, deadline_s=700.0), a_job("b", tiles=4000, deadline_s=700.0)]
    plan = planned(a_problem(tiny_plan, jobs, replace(NODE, slots=2)))
    assert sorted(s.start_s for s in plan.scheduled) == [0.0, 0.0]


def test_contact_volume_is_shared(tiny_plan: ContactPlan) -> None:
    # A-S1 carries 220e6 * 600 / 8 = 16.5 GB; two 10 GB results cannot both use it, and A-S2 is after the deadline.
    jobs = [a_job("x", tiles=10, output_bytes=10 * 10**9, deadline_s=5000.0, priority=2),
            a_job("y", tiles=10, output_bytes=10 * 10**9, deadline_s=5000.0)]
    plan = planned(a_problem(tiny_plan, jobs))
    assert [s.job_id for s in plan.scheduled] == ["x"]
    assert "contact volume" in reason_of(plan, "y")
    assert reason_of(plan, "y").startswith("capacity:")


def test_battery_limits_jobs_exactly(tiny_plan: ContactPlan) -> None:
    # No solar, no idle draw: 5 Wh above the 50 % floor; each 10 s job at +720 W costs 2 Wh -> two fit, not three.
    node = replace(NODE, solar_w=0.0, idle_power_w=0.0, active_power_w=720.0, battery_wh=10.0, min_soc=0.5)
    jobs = [a_job(f"e{i}", tiles=100) for i in range(3)]
    problem = a_problem(tiny_plan, jobs, node)
    plan = planned(problem)
    assert len(plan.scheduled) == 2
    (lost,) = plan.unschedulable
    assert lost.reason.startswith("energy:")


def test_memory_counts_distinct_models(tiny_plan: ContactPlan) -> None:
    # A second model does not fit next to the resident one: its jobs cannot run on A at all.
    big = replace(TINY_MODEL, model_id="big@1", memory_bytes=3_900_000_000)
    problem = a_problem(tiny_plan, [a_job("m1", model_id="big@1"), a_job("m0")])
    problem = replace(problem, models={**problem.models, "big@1": big})
    plan = planned(problem)
    assert [s.job_id for s in plan.scheduled] == ["m0"]
    assert reason_of(plan, "m1").startswith("no-compute-node:")


def test_fixed_jobs_keep_their_resources(tiny_plan: ContactPlan) -> None:
    first = planned(a_problem(tiny_plan, [a_job("old", tiles=4000, deadline_s=700.0)]))
    problem = replace(a_problem(tiny_plan, [a_job("old", tiles=4000, deadline_s=700.0),
                                            a_job("new", tiles=4000, deadline_s=700.0, priority=9)]),
                      fixed=first.scheduled)
    plan = planned(problem)
    assert [s.job_id for s in plan.scheduled] == ["old"]  # the higher priority cannot evict a fixed job
    assert plan.scheduled[0] == first.scheduled[0]


def test_preferred_placement_is_tried_first(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("p", tiles=100)])
    result = greedy_assign(problem, build_candidates(problem), preferred={"p": (SAT_A, 300.0)})
    assert result.plan.scheduled[0].start_s == 300.0
    assert validate_plan(problem, result.plan) == []


def test_simulation_clips_at_capacity_and_tracks_minimum() -> None:
    node = replace(NODE, battery_wh=100.0, initial_soc=0.9, idle_power_w=10.0, solar_w=70.0, active_power_w=110.0)
    segs = [SunSegment(0.0, 3600.0, 1.0), SunSegment(3600.0, 7200.0, 0.0)]
    # Sunlit hour: +60 W, clipped at 100 Wh. Umbra hour: -10 W idle, a 30 min job at +100 W: 100 - 10 - 50 = 40.
    low, final = simulate_soc(node, segs, [(3600.0, 5400.0)])
    assert final == pytest.approx(40.0)
    assert low == pytest.approx(40.0)


def test_replay_check_rejects_overlap(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("a", tiles=1000), a_job("b", tiles=1000)])
    feas = build_candidates(problem)
    result = greedy_assign(problem, feas)
    assert validate_plan(problem, result.plan) == []
    assert check_placements(problem, feas, result.placements.values()) == []
    a, b = result.placements["a"], result.placements["b"]
    clash = [a, replace(b, start_s=a.start_s)]
    assert any("no slot" in p for p in check_placements(problem, feas, clash))
