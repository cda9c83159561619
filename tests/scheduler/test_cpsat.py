"""CP-SAT planner: never worse than its greedy hint, better where greedy is short-sighted, deterministic.

Same hand-made set-up as ``test_greedy`` (only satellite A computes). Every plan
goes through the independent validator.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_greedy import NODE, a_job, a_problem

from orbit.contact_plan import ContactPlan
from scheduler.cpsat import CpSatParams, build_model, report_lines, solve
from scheduler.feasibility import build_candidates
from scheduler.greedy import greedy_assign, weighted_latency_s
from scheduler.types import Plan, Problem
from scheduler.validator import validate_plan


def trap(plan: ContactPlan) -> Problem:
    """Greedy takes the priority-3 job (500 s) and loses two priority-2 jobs (250 s each): 3 instead of 4."""
    return a_problem(plan, [a_job("H", tiles=5000, priority=3, deadline_s=700.0),
                            a_job("L1", tiles=2500, priority=2, deadline_s=700.0),
                            a_job("L2", tiles=2500, priority=2, deadline_s=700.0)])


def solved(problem: Problem, **kw: object) -> Plan:
    params = CpSatParams(**{"time_limit_s": 5.0, "workers": 1, **kw})  # type: ignore[arg-type]
    plan = solve(problem, build_candidates(problem), params)
    assert validate_plan(problem, plan) == []
    return plan


def test_cpsat_beats_the_greedy_trap_and_proves_it(tiny_plan: ContactPlan) -> None:
    problem = trap(tiny_plan)
    feas = build_candidates(problem)
    greedy = greedy_assign(problem, feas).plan
    assert validate_plan(problem, greedy) == []
    assert greedy.objective == 3
    plan = solved(problem)
    assert plan.objective == 4
    assert sorted(s.job_id for s in plan.scheduled) == ["L1", "L2"]
    assert plan.bound == 4 and plan.gap == 0.0
    assert plan.status == "OPTIMAL"
    assert [u.reason.split(":")[0] for u in plan.unschedulable] == ["capacity"]
    assert any("gap 0.00 %" in line for line in report_lines(plan))


def test_cpsat_never_worse_than_greedy_and_minimises_latency(tiny_plan: ContactPlan) -> None:
    # Two short jobs and slack: both fit either way; CP-SAT must not lose on-time jobs or add latency.
    problem = a_problem(tiny_plan, [a_job("a", tiles=1000, priority=2), a_job("b", tiles=3000)])
    feas = build_candidates(problem)
    greedy = greedy_assign(problem, feas).plan
    assert validate_plan(problem, greedy) == []
    plan = solved(problem)
    assert plan.objective >= greedy.objective
    assert weighted_latency_s(plan) <= weighted_latency_s(greedy) + 1e-6


def test_energy_model_is_conservative_and_exact_enough(tiny_plan: ContactPlan) -> None:
    node = replace(NODE, solar_w=0.0, idle_power_w=0.0, active_power_w=720.0, battery_wh=10.0, min_soc=0.5)
    problem = a_problem(tiny_plan, [a_job(f"e{i}", tiles=100) for i in range(3)], node)
    plan = solved(problem)
    assert len(plan.scheduled) == 2  # 2 Wh each, 5 Wh to spend: the third would break the floor
    assert plan.bound == 2


def test_same_input_same_plan_single_worker(tiny_plan: ContactPlan) -> None:
    problem = trap(tiny_plan)
    a, b = solved(problem, seed=7), solved(problem, seed=7)
    assert a.scheduled == b.scheduled and a.unschedulable == b.unschedulable


def test_same_plan_with_two_workers_when_proven_optimal(tiny_plan: ContactPlan) -> None:
    # Multi-worker search is only reproducible when both phases finish (OPTIMAL) within the limit.
    problem = trap(tiny_plan)
    a, b = solved(problem, workers=2), solved(problem, workers=2)
    assert a.status == b.status == "OPTIMAL"
    assert a.scheduled == b.scheduled


def test_model_names_and_dump(tiny_plan: ContactPlan, tmp_path: pytest.TempPathFactory) -> None:
    problem = trap(tiny_plan)
    feas = build_candidates(problem)
    model, v = build_model(problem, feas, CpSatParams())
    names = {x.name for x in v.presence_by_option}
    assert "x_H_FLOCK_4X-2_0" in names
    assert set(v.options_by_job) == {"H", "L1", "L2"}
    dump = tmp_path / "model.pb.txt"  # type: ignore[operator]
    solve(problem, feas, CpSatParams(time_limit_s=2.0, workers=1, dump_path=str(dump)))
    assert dump.exists() and "x_H_FLOCK_4X-2_0" in dump.read_text()
    del model


def test_hint_is_kept_when_time_is_too_short(tiny_plan: ContactPlan) -> None:
    problem = trap(tiny_plan)
    feas = build_candidates(problem)
    greedy = greedy_assign(problem, feas)
    assert validate_plan(problem, greedy.plan) == []
    plan = solve(problem, feas, CpSatParams(time_limit_s=0.01, workers=1), greedy=greedy)
    assert validate_plan(problem, plan) == []
    assert plan.objective >= greedy.plan.objective


@pytest.mark.parametrize("case", ["trap", "energy"])
def test_greedy_plan_is_a_complete_feasible_hint(tiny_plan: ContactPlan, case: str) -> None:
    from ortools.sat.python import cp_model

    from scheduler.cpsat import _add_hints, _hint_options

    if case == "trap":
        problem = trap(tiny_plan)
    else:
        node = replace(NODE, solar_w=0.0, idle_power_w=0.0, active_power_w=720.0, battery_wh=10.0, min_soc=0.5)
        problem = a_problem(tiny_plan, [a_job(f"e{i}", tiles=100) for i in range(3)], node)
    feas = build_candidates(problem)
    greedy = greedy_assign(problem, feas)
    assert validate_plan(problem, greedy.plan) == []
    model, v = build_model(problem, feas, CpSatParams(), keep=greedy.placements)
    chosen = _hint_options(v, greedy.placements)
    assert len(chosen) == len(greedy.placements)
    _add_hints(model, v, chosen)
    solver = cp_model.CpSolver()
    solver.parameters.fix_variables_to_their_hinted_value = True
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = 5.0
    assert solver.solve(model) in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    if case == "energy":
        assert v.chain_by_node  # the battery chain is in the model for this critical node
