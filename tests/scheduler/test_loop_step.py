"""PlanningLoop.step and expire without a fleet: the planning loop as scenario replay drives it.

A real store in a temporary directory, the real job service and the real planner (greedy) on the hand-made
tiny contact plan; no gRPC, no agents.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from scheduler_cases import SAT_B, tiny_job, tiny_problem

from orbit.contact_plan import ContactPlan
from scheduler.clock import SimClock
from scheduler.loop import EXPIRE_CODES, LoopConfig, PlanningLoop, plan_round, reason_code, rolls_nothing
from scheduler.planner import plan, replan, rolled_problem
from scheduler.service import Catalog, JobService
from scheduler.store import JobSpec, JobState, NewTransition, Store
from scheduler.types import Job, UplinkSource
from scheduler.validator import validate_plan


@dataclass
class Side:
    """serve's store, job service and planning loop on simulated time, without a fleet."""

    store: Store
    service: JobService
    loop: PlanningLoop
    epoch: datetime
    ids: dict[str, str]  # problem job id -> store job id

    def at(self, t_s: float) -> datetime:
        return self.epoch + timedelta(seconds=t_s)

    def submit(self, job: Job) -> str:
        spec = JobSpec(model_id=job.model_id, priority=job.priority, deadline_utc=self.at(job.deadline_s),
                       source=job.source, input_bytes=job.input_bytes, output_bytes=job.output_bytes,
                       tiles=job.tiles, destination=job.destination)
        record, created = self.service.submit(spec, now=self.at(job.submit_s), request_id=job.job_id).result()
        assert created
        self.ids[job.job_id] = record.job_id
        return record.job_id

    def state(self, job_id: str) -> JobState:
        return self.store.get(self.ids[job_id]).state


@pytest.fixture
def side(tmp_path: Path, tiny_plan: ContactPlan) -> Iterator[Side]:
    base = tiny_problem(tiny_plan, [])
    store = Store(tmp_path / "loop.db")
    service = JobService(store)
    service.catalog = Catalog.from_problem(base)
    loop = PlanningLoop(store, service, SimClock(base.epoch_utc), None, LoopConfig(policy="greedy", seed=1))
    yield Side(store, service, loop, base.epoch_utc, {})
    store.close()


def test_step_plans_saves_and_applies_the_plan_like_serve(side: Side, tiny_plan: ContactPlan) -> None:
    jobs = [tiny_job("ok"), tiny_job("hopeless", deadline_s=90.0)]
    for job in jobs:
        side.submit(job)
    problem = tiny_problem(tiny_plan, jobs)
    result = side.loop.step(problem, side.at(0.0), "test", store_ids=side.ids)
    # The plan speaks the problem's ids and is valid for the problem as given.
    assert validate_plan(problem, result.plan) == []
    assert [s.job_id for s in result.plan.scheduled] == ["ok"]
    # Stored and published under the store's ids.
    stored = side.store.load_plan()
    assert stored is not None and stored == side.service.plan()
    assert [s.job_id for s in stored.plan.scheduled] == [side.ids["ok"]]
    assert [u.job_id for u in stored.plan.unschedulable] == [side.ids["hopeless"]]
    # Applied with serve's rules: placed -> SCHEDULED with its placement; a reason that only gets worse
    # with time -> EXPIRED with that reason.
    ok = side.store.get(side.ids["ok"])
    planned = result.plan.scheduled[0]
    assert ok.state is JobState.SCHEDULED and ok.node == planned.node
    assert ok.placement is not None and ok.placement.start_utc == side.at(planned.start_s)
    hopeless = side.store.get(side.ids["hopeless"])
    assert hopeless.state is JobState.EXPIRED and reason_code(hopeless.reason) in EXPIRE_CODES
    assert {(t.job_id, t.to_state) for t in result.transitions} == {
        (side.ids["ok"], JobState.SCHEDULED), (side.ids["hopeless"], JobState.EXPIRED)}
    assert side.loop.rounds == 1


def test_step_hints_the_previous_placement_and_records_no_change(side: Side, tiny_plan: ContactPlan) -> None:
    job = tiny_job("ok", source=UplinkSource("S2"))  # S2 sees a satellite from 3000 s on
    side.submit(job)
    problem = tiny_problem(tiny_plan, [job])
    first = side.loop.step(problem, side.at(0.0), store_ids=side.ids).plan.scheduled[0]
    assert first.start_s > 50.0
    # A later round before the job starts: the placement is kept, nothing changes state.
    again = side.loop.step(replace(problem, now_s=50.0), side.at(50.0), store_ids=side.ids)
    assert again.plan.scheduled[0].node == first.node
    assert again.transitions == ()
    assert side.state("ok") is JobState.SCHEDULED


def test_step_keeps_the_callers_fixed_work(side: Side, tiny_plan: ContactPlan) -> None:
    """replan's roll-forward would call the job done at its planned arrival; the caller knows it is not."""
    running = tiny_job("running", tiles=1000)
    side.submit(running)
    problem = tiny_problem(tiny_plan, [running])
    placed = side.loop.step(problem, side.at(0.0), store_ids=side.ids).plan.scheduled[0]
    store_id = side.ids["running"]
    side.store.transition([NewTransition(store_id, JobState.DISPATCHED, "sent", node=placed.node, work_id="w1")],
                          now=side.at(placed.start_s - 1.0))
    side.store.transition([NewTransition(store_id, JobState.RUNNING, "running", node=placed.node)],
                          now=side.at(placed.start_s))
    now_s = placed.arrival_s + 100.0  # planned to be down by now; in the caller's world it is still in transit
    newcomer = tiny_job("newcomer", submit_s=now_s, source=replace(running.source))
    side.submit(newcomer)
    profiles = {n: replace(p, initial_soc=max(p.min_soc, 0.6)) for n, p in problem.profiles_by_node.items()}
    later = replace(problem, jobs=(running, newcomer), fixed=(placed,), now_s=now_s, profiles_by_node=profiles)
    result = side.loop.step(later, side.at(now_s), store_ids=side.ids)
    assert validate_plan(later, result.plan) == []
    assert placed in result.plan.scheduled  # still fixed, unchanged
    assert {s.job_id for s in result.plan.scheduled} == {"running", "newcomer"}
    assert side.state("running") is JobState.RUNNING  # work in flight is never touched by a round
    assert side.state("newcomer") is JobState.SCHEDULED


def test_step_refuses_a_problem_of_another_instant(side: Side, tiny_plan: ContactPlan) -> None:
    with pytest.raises(ValueError, match="now_s"):
        side.loop.step(tiny_problem(tiny_plan, []), side.at(10.0))


def test_expire_without_a_fleet_expires_waiting_and_in_flight_jobs(side: Side) -> None:
    waiting = side.submit(tiny_job("waiting", deadline_s=500.0))
    flying = side.submit(tiny_job("flying", deadline_s=500.0, source=tiny_job().source))
    later = side.submit(tiny_job("later", deadline_s=900.0))
    side.store.transition([NewTransition(flying, JobState.SCHEDULED, "planned", node=SAT_B),
                           NewTransition(flying, JobState.DISPATCHED, "sent", node=SAT_B, work_id="w")],
                          now=side.at(10.0))
    active = side.store.active_jobs()
    assert side.loop.expire(active, side.at(499.0)) == set()
    assert side.loop.expire(active, side.at(500.0)) == {waiting, flying}
    assert side.store.get(flying).state is JobState.EXPIRED
    assert side.store.get(waiting).reason.startswith("deadline:")
    assert side.store.get(later).state is JobState.PENDING


def test_plan_round_is_replan_and_skips_a_roll_that_changes_nothing(tiny_plan: ContactPlan) -> None:
    jobs = [tiny_job("a", source=UplinkSource("S2")), tiny_job("b", tiles=2000)]
    problem = tiny_problem(tiny_plan, jobs)
    config = LoopConfig(policy="greedy")
    first = plan(problem, policy="greedy")
    started = min(first.scheduled, key=lambda s: s.start_s)
    for now_s, at_now in ((started.start_s + 1.0, problem), (10.0, replace(problem, now_s=10.0))):
        hints = replace(first, scheduled=tuple(s for s in first.scheduled if s.start_s >= now_s))
        previous = first if at_now is problem else hints
        assert rolls_nothing(at_now, previous, now_s) == (at_now is not problem)
        ours = plan_round(at_now, previous, now_s, config)
        theirs = replan(at_now, previous, now_s, policy="greedy")
        assert (ours.plan.scheduled, ours.plan.unschedulable) == (theirs.scheduled, theirs.unschedulable)
        assert ours.profiles_by_node == rolled_problem(at_now, previous, now_s).profiles_by_node
