"""Bent-pipe baseline: raw data down first, processed on the ground, contact volumes shared.

Uses the session's real problem (real Planet satellites and ground passes, conftest)
and the hand-made plan for a volume contention case. Every plan is validated.
"""

from __future__ import annotations

import pytest
from test_greedy import a_job, a_problem

from orbit.contact_plan import ContactPlan
from scheduler.bentpipe import GROUND_NODE, bentpipe_plan
from scheduler.types import Problem
from scheduler.validator import validate_plan


def test_real_problem_bentpipe_plan_is_valid(real_problem: Problem) -> None:
    plan = bentpipe_plan(real_problem)
    assert validate_plan(real_problem, plan) == []
    assert plan.policy == "bentpipe"
    jobs = {j.job_id: j for j in real_problem.jobs}
    by_id = {s.job_id: s for s in plan.scheduled}
    # Uplink input is on the ground at submit: processing starts then, 2000 tiles x 12.5 GFLOP at 50 TFLOP/s.
    up = by_id["up-any"]
    assert (up.node, up.start_s, up.input_route) == (GROUND_NODE, 0.0, ())
    assert up.arrival_s == up.end_s == pytest.approx(2000 * 12.5 / real_problem.ground_gflops)
    # Captured / onboard input leaves its satellite and ends on a station.
    for job_id in ("capture", "onboard"):
        if job_id in by_id:
            route = by_id[job_id].input_route
            assert route and not route[0].src.startswith("gs:") and route[-1].dst.startswith("gs:")
            assert by_id[job_id].start_s == pytest.approx(route[-1].end_s)
    assert by_id["onboard"].input_route[0].src == "FLOCK 4S-1"
    assert plan.objective == sum(jobs[k].priority for k in by_id)


def test_bentpipe_shares_downlink_volume(tiny_plan: ContactPlan) -> None:
    # Only A computes/relays; two 10 GB raw inputs, A-S1 carries 16.5 GB, deadline before A-S2.
    problem = a_problem(tiny_plan, [a_job("x", input_bytes=10 * 10**9, deadline_s=5000.0, priority=2),
                                    a_job("y", input_bytes=10 * 10**9, deadline_s=5000.0)])
    plan = bentpipe_plan(problem)
    assert validate_plan(problem, plan) == []
    assert [s.job_id for s in plan.scheduled] == ["x"]
    assert plan.unschedulable[0].reason.startswith("capacity:")
    assert plan.bound == 3  # y alone could have gone down


def test_bentpipe_reasons(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("late", deadline_s=90.0), a_job("ghost", model_id="ghost@1")])
    plan = bentpipe_plan(problem)
    assert validate_plan(problem, plan) == []
    reasons = {u.job_id: u.reason.split(":")[0] for u in plan.unschedulable}
    assert reasons == {"late": "no-contact", "ghost": "unknown-model"}
