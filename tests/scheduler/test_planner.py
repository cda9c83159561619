"""Planner front door: policies, decomposition, hints and the rolling re-plan. Every plan is validated."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_cpsat import trap
from test_greedy import a_job, a_problem

from orbit.contact_plan import ContactPlan
from scheduler.feasibility import build_candidates
from scheduler.planner import deadline_pieces, plan, replan, rolled_problem
from scheduler.types import Problem
from scheduler.validator import REASON_CODES, validate_plan
from skyinfer.errors import InputError


@pytest.mark.parametrize("policy", ["greedy", "cpsat", "bentpipe"])
def test_every_policy_lists_every_job_validly(real_problem: Problem, policy: str) -> None:
    result = plan(real_problem, policy=policy, time_limit_s=3.0, workers=1)
    assert validate_plan(real_problem, result) == []
    listed = [s.job_id for s in result.scheduled] + [u.job_id for u in result.unschedulable]
    assert sorted(listed) == sorted(j.job_id for j in real_problem.jobs)
    assert all(u.reason.split(":")[0] in REASON_CODES for u in result.unschedulable)
    assert result.policy == policy


def test_cpsat_at_least_greedy_on_real_problem(real_problem: Problem) -> None:
    feas = build_candidates(real_problem)
    g = plan(real_problem, policy="greedy", feasibility=feas)
    c = plan(real_problem, policy="cpsat", feasibility=feas, time_limit_s=3.0, workers=1)
    assert validate_plan(real_problem, g) == [] and validate_plan(real_problem, c) == []
    assert c.objective >= g.objective
    assert c.bound >= c.objective


def test_unknown_policy_is_an_input_error(real_problem: Problem) -> None:
    with pytest.raises(InputError, match="policy"):
        plan(real_problem, policy="magic")


def test_feasibility_reasons_reach_the_plan(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("ghost", model_id="ghost@1"), a_job("late", deadline_s=90.0),
                                    a_job("ok")])
    result = plan(problem, policy="cpsat", time_limit_s=2.0, workers=1)
    assert validate_plan(problem, result) == []
    reasons = {u.job_id: u.reason.split(":")[0] for u in result.unschedulable}
    assert reasons["ghost"] == "unknown-model"
    assert reasons["late"] in {"deadline", "no-contact"}
    assert [s.job_id for s in result.scheduled] == ["ok"]


def test_decomposition_keeps_a_valid_plan_and_improves(tiny_plan: ContactPlan) -> None:
    problem = trap(tiny_plan)
    feas = build_candidates(problem)
    assert len(deadline_pieces(problem, feas, 2, 16)) == 2
    greedy = plan(problem, policy="greedy", feasibility=feas)
    assert validate_plan(problem, greedy) == []
    result = plan(problem, policy="cpsat", feasibility=feas, time_limit_s=4.0, workers=1, decompose_above=2)
    assert validate_plan(problem, result) == []
    assert result.status == "FEASIBLE (decomposed)"
    assert result.objective >= greedy.objective


def test_hint_plan_is_followed(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("a", tiles=100), a_job("b", tiles=100)])
    first = plan(problem, policy="greedy")
    assert validate_plan(problem, first) == []
    moved = replace(first, scheduled=tuple(replace(s, start_s=s.start_s + 200.0) for s in first.scheduled))
    again = plan(problem, policy="greedy", hint=moved)
    assert validate_plan(problem, again) == []
    assert sorted(s.start_s for s in again.scheduled) == sorted(s.start_s for s in moved.scheduled)


def test_rolling_replan_keeps_running_jobs_fixed(tiny_plan: ContactPlan) -> None:
    jobs = [a_job("run", tiles=3000, priority=1), a_job("next", tiles=1000, priority=1)]
    problem = a_problem(tiny_plan, jobs)
    first = plan(problem, policy="cpsat", time_limit_s=2.0, workers=1)
    assert validate_plan(problem, first) == []
    running = min(first.scheduled, key=lambda s: s.start_s)
    now_s = running.start_s + 10.0
    newcomer = a_job("urgent", tiles=500, priority=9, submit_s=now_s, deadline_s=2000.0)
    grown = replace(problem, jobs=(*problem.jobs, newcomer))
    rolled = rolled_problem(grown, first, now_s)
    again = replan(grown, first, now_s, time_limit_s=2.0, workers=1)
    assert validate_plan(rolled, again) == []
    kept = next(s for s in again.scheduled if s.job_id == running.job_id)
    assert kept == running
    assert {f.job_id for f in rolled.fixed} == {running.job_id}
    assert "urgent" in {s.job_id for s in again.scheduled}
    assert all(s.start_s >= now_s for s in again.scheduled if s.job_id != running.job_id)


def test_rolling_replan_drops_finished_jobs_and_carries_the_battery(tiny_plan: ContactPlan) -> None:
    problem = a_problem(tiny_plan, [a_job("done", tiles=1000)])
    first = plan(problem, policy="greedy")
    assert validate_plan(problem, first) == []
    done = first.scheduled[0]
    rolled = rolled_problem(problem, first, done.arrival_s + 1.0)
    assert rolled.jobs == () and rolled.fixed == ()
    # A ran 100 s at +25 W in sunlight with 45 W spare from solar: the battery stays full (clipped).
    assert rolled.profiles_by_node[done.node].initial_soc == pytest.approx(1.0)
    with pytest.raises(InputError, match="now_s"):
        rolled_problem(problem, first, -5.0)


@pytest.mark.parametrize("policy", ["greedy", "cpsat", "bentpipe"])
def test_no_jobs_gives_an_empty_valid_plan(tiny_plan: ContactPlan, policy: str) -> None:
    problem = a_problem(tiny_plan, [])
    result = plan(problem, policy=policy, time_limit_s=1.0, workers=1)
    assert validate_plan(problem, result) == []
    assert (result.scheduled, result.unschedulable, result.objective, result.gap) == ((), (), 0.0, 0.0)


def test_deterministic_cpsat_gives_the_same_plan_with_two_workers(walker_problem: Problem) -> None:
    """With ``deterministic=True`` CP-SAT's interleaved search runs on a deterministic-time budget: two runs
    with the same seed and two workers give the same plan (a wall-clock limit with two workers does not
    promise that)."""
    feas = build_candidates(walker_problem)
    runs = [plan(walker_problem, policy="cpsat", time_limit_s=0.5, workers=2, seed=3, feasibility=feas,
                 deterministic=True) for _ in range(2)]
    for p in runs:
        assert validate_plan(walker_problem, p) == []
        assert any("deterministic search" in n for n in p.notes), p.notes
    assert runs[0].scheduled == runs[1].scheduled
    assert runs[0].unschedulable == runs[1].unschedulable
    assert runs[0].objective == runs[1].objective
