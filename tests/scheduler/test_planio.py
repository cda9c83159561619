"""Plan JSON round trip, parse errors naming the field path, and the human table."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from scheduler_cases import SAT_B, tiny_job, tiny_problem

from orbit.contact_plan import ContactPlan
from scheduler.planio import plan_from_json, plan_table, plan_to_json
from scheduler.types import Hop, Plan, Problem, ScheduledJob, Unschedulable
from scheduler.validator import validate_plan

MILLISECOND_S = 1e-3


@pytest.fixture(scope="module")
def problem(tiny_plan: ContactPlan) -> Problem:
    return tiny_problem(tiny_plan, [tiny_job("j1", priority=2), tiny_job("j2", deadline_s=90.0)])


@pytest.fixture(scope="module")
def plan(problem: Problem) -> Plan:
    contacts = problem.contact_plan.contacts()
    down = next(i for i, c in enumerate(contacts) if (c.src, c.dst) == (SAT_B, "gs:S2"))
    end = 3000.0 + 8e6 / 220e6
    hop = Hop(SAT_B, "gs:S2", 3000.0, end, 1_000_000, down)
    sj = ScheduledJob("j1", SAT_B, 10.25, 11.25, end, (), (hop,), energy_wh=1.0 / 3600 * 25 / 2)
    return Plan("hand", (sj,), (Unschedulable("j2", "deadline: first downlink at 100 s"),), 2.0, 2.0, 0.5,
                "FEASIBLE", ("a note",))


def test_round_trip(problem: Problem, plan: Plan) -> None:
    data = plan_to_json(problem, plan)
    text = json.dumps(data)
    assert '"start": "2023-04-20T00:00:10.250Z"' in text
    back = plan_from_json(problem, json.loads(text), source="plan.json")
    assert (back.policy, back.objective, back.bound, back.status, back.notes) == (
        "hand", 2.0, 2.0, "FEASIBLE", ("a note",))
    assert back.unschedulable == plan.unschedulable
    (a,), (b,) = plan.scheduled, back.scheduled
    assert (a.job_id, a.node, a.input_route, a.model_route) == (b.job_id, b.node, b.input_route, b.model_route)
    for x, y in ((a.start_s, b.start_s), (a.end_s, b.end_s), (a.arrival_s, b.arrival_s)):
        assert abs(x - y) <= MILLISECOND_S / 2
    assert b.output_route[0].contact == a.output_route[0].contact
    assert b.energy_wh == pytest.approx(a.energy_wh)
    assert validate_plan(problem, back) == []
    assert [j["job_id"] for j in data["jobs"]] == ["j1", "j2"]
    assert data["jobs"][1] == {"job_id": "j2", "status": "unschedulable", "reason": "deadline: first downlink at 100 s"}


def test_hop_without_a_matching_contact(problem: Problem, plan: Plan) -> None:
    from skyinfer.errors import InputError

    data = plan_to_json(problem, plan)
    hop = data["jobs"][0]["output_route"][0]
    del hop["contact"]
    hop["to"] = "gs:S1"  # B never sees S1
    with pytest.raises(InputError, match=r"plan.json: jobs\[0\].output_route\[0\]: no contact"):
        plan_from_json(problem, data, source="plan.json")


def test_contact_found_when_omitted(problem: Problem, plan: Plan) -> None:
    data = plan_to_json(problem, plan)
    del data["jobs"][0]["output_route"][0]["contact"]
    del data["jobs"][0]["energy_wh"]
    back = plan_from_json(problem, data, source="plan.json")
    assert back.scheduled[0].output_route[0].contact == plan.scheduled[0].output_route[0].contact
    assert back.scheduled[0].energy_wh == pytest.approx(plan.scheduled[0].energy_wh)


def _broken(data: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(("path", "value", "expected"), [
    (["jobs", 0, "output_route", 0, "start"], "yesterday", "plan.json: jobs[0].output_route[0].start: "),
    (["jobs", 0, "output_route", 0, "bytes"], -1, "plan.json: jobs[0].output_route[0].bytes: "),
    (["jobs", 0, "output_route", 0, "contact"], 10**6, "plan.json: jobs[0].output_route[0].contact: "),
    (["jobs", 0, "output_route", 0, "to"], "gs:S1", None),  # valid JSON, a validator matter
    (["jobs", 0, "start"], KeyError, "plan.json: jobs[0]: missing required key 'start'"),
    (["jobs", 0, "end"], "2023-04-20T00:00:01.000Z", "plan.json: jobs[0].end: before start"),
    (["jobs", 1, "status"], "maybe", "plan.json: jobs[1].status: "),
    (["jobs", 1, "reason"], KeyError, "plan.json: jobs[1]: missing required key 'reason'"),
    (["jobs"], {}, "plan.json: jobs: expected a list"),
    (["objective"], "high", "plan.json: objective: "),
    (["jobs", 0, "input_route"], "none", "plan.json: jobs[0].input_route: expected a list"),
])
def test_parse_errors_name_the_field(problem: Problem, plan: Plan, path: list[Any], value: Any,
                                     expected: str | None) -> None:
    from skyinfer.errors import InputError

    data = _broken(plan_to_json(problem, plan), path, value)
    if expected is None:
        parsed = plan_from_json(problem, data, source="plan.json")
        assert any("does not match" in e for e in validate_plan(problem, parsed))
        return
    with pytest.raises(InputError) as info:
        plan_from_json(problem, data, source="plan.json")
    assert str(info.value).startswith(expected), str(info.value)


def test_table(problem: Problem, plan: Plan) -> None:
    table = plan_table(problem, plan)
    lines = table.splitlines()
    assert lines[0].startswith("policy hand  objective 2  bound 2  gap 0.00%  scheduled 1/2")
    assert lines[1].split() == ["job", "prio", "node", "start", "end", "arrival", "deadline", "slack", "hops",
                                "in/out/model"]
    row = lines[2]
    assert row.startswith("j1") and SAT_B in row and "00:00:10" in row and "00:50:00" in row and "0/1/0" in row
    assert "j2: deadline: first downlink at 100 s" in table
    empty = plan_table(replace(problem, jobs=()), replace(plan, scheduled=(), unschedulable=()))
    assert "scheduled 0/0" in empty
