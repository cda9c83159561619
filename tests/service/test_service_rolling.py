"""A long-running serve rolls its contact plan forward: jobs whose inputs can only arrive after the first window
are still planned, in the planning thread and in the planner worker process."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from service_harness import EPOCH, SCENARIO

from scheduler.clock import SimClock
from scheduler.loop import LoopConfig, PlanningLoop, to_problem_job
from scheduler.service import Catalog, JobService, ScenarioProblem
from scheduler.store import JobSpec, JobState, NewTransition, Store
from scheduler.types import Problem, UplinkSource
from scheduler.validator import validate_plan

WINDOW_S = 2 * 3600.0


def _spec(deadline_after_s: float, now: datetime) -> JobSpec:
    return JobSpec(model_id="tiny@1", priority=1, deadline_utc=now + timedelta(seconds=deadline_after_s),
                   source=UplinkSource(None), input_bytes=10_000, output_bytes=1_000, tiles=1)


class _Fixed:
    """A loader that cannot move (no ``moved_to``): the server keeps its first window."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def __call__(self) -> Problem:
        return self.problem


@pytest.mark.parametrize("planner_process", [False, True])
def test_the_contact_plan_rolls_forward_and_jobs_after_the_first_window_are_planned(
        tmp_path: Path, planner_process: bool) -> None:
    loader = ScenarioProblem(str(SCENARIO), EPOCH, WINDOW_S)
    problem = loader()
    clock = SimClock(EPOCH)
    with Store(tmp_path / "jobs.db") as store:
        service = JobService(store)
        service.catalog = Catalog.from_problem(problem)
        loop = PlanningLoop(store, service, clock, None, LoopConfig(time_limit_s=2.0, planner_process=planner_process))
        loop.start(problem, background=False, load_problem=loader)
        try:
            loop.run_once()
            early, _ = service.submit(_spec(3 * 3600.0, clock.now()), now=clock.now()).result()
            loop.run_once()
            assert store.get(early.job_id).state is JobState.SCHEDULED
            first = service.plan()
            assert first is not None and first.epoch_utc == EPOCH

            # Less than half the window left, but work in flight: the roll waits (until a quarter is left).
            clock.advance_to(EPOCH + timedelta(seconds=0.6 * WINDOW_S))
            node = store.get(early.job_id).node
            store.transition([NewTransition(early.job_id, JobState.DISPATCHED, "test", node=node,
                                            expect=frozenset({JobState.SCHEDULED}), work_id="w1")], now=clock.now())
            loop.run_once()
            plan = service.plan()
            assert plan is not None and plan.epoch_utc == EPOCH
            store.transition([NewTransition(early.job_id, JobState.CANCELLED, "test")], now=clock.now())

            # Past the first window: a job that can only be served from here on.
            clock.advance_to(EPOCH + timedelta(seconds=WINDOW_S + 600.0))
            late, _ = service.submit(_spec(3 * 3600.0, clock.now()), now=clock.now()).result()
            loop.run_once()
            rolled = service.plan()
            start = clock.now().replace(second=0, microsecond=0)
            assert rolled is not None and rolled.epoch_utc == start
            assert service.catalog is not None and service.catalog.epoch_utc == start
            assert service.catalog.horizon_end_utc == start + timedelta(seconds=WINDOW_S)
            job = store.get(late.job_id)
            assert job.state is JobState.SCHEDULED, job.reason
            assert job.placement is not None and job.placement.start_utc >= clock.now()
            # The plan is one of the new window (its routes use that window's contacts): check it there,
            # with the validator, on the new window built independently.
            window = dataclasses.replace(loader.moved_to(start)(), jobs=(to_problem_job(job, start),))
            assert validate_plan(window, rolled.plan) == []
        finally:
            loop.stop()


def test_a_loader_that_cannot_move_keeps_its_window(tmp_path: Path) -> None:
    problem = ScenarioProblem(str(SCENARIO), EPOCH, WINDOW_S)()
    clock = SimClock(EPOCH)
    with Store(tmp_path / "jobs.db") as store:
        service = JobService(store)
        service.catalog = Catalog.from_problem(problem)
        loop = PlanningLoop(store, service, clock, None, LoopConfig(time_limit_s=2.0))
        loop.start(problem, background=False, load_problem=_Fixed(problem))
        clock.advance_to(EPOCH + timedelta(seconds=WINDOW_S + 600.0))
        late, _ = service.submit(_spec(3 * 3600.0, clock.now()), now=clock.now()).result()
        loop.run_once()
        plan = service.plan()
        assert plan is not None and plan.epoch_utc == EPOCH
        gone = store.get(late.job_id)  # no contact left in the window: it could never be served
        assert gone.state is JobState.EXPIRED and gone.reason.startswith("no-contact"), gone.reason
        loop.stop()
