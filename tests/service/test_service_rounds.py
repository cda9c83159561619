"""Planning rounds of the service loop: arrivals are placed incrementally around the previous plan, a full round
re-plans everything (and lets priorities displace), and every merged plan passes the independent validator."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from service_harness import CLOCK_START

from scheduler.clock import SimClock
from scheduler.loop import LoopConfig, PlanningLoop, to_problem_job
from scheduler.service import Catalog, JobService
from scheduler.store import JobRecord, JobSpec, JobState, Store, StoredPlan
from scheduler.types import Problem, UplinkSource
from scheduler.validator import validate_plan


def _spec(priority: int) -> JobSpec:
    return JobSpec(model_id="tiny@1", priority=priority, deadline_utc=CLOCK_START + timedelta(hours=2),
                   source=UplinkSource(None), input_bytes=10_000, output_bytes=1_000, tiles=4)


def _submit(service: JobService, clock: SimClock, n: int, priority: int) -> list[JobRecord]:
    futures = [service.submit(_spec(priority), now=clock.now()) for _ in range(n)]
    return [f.result()[0] for f in futures]


def _check(base: Problem, store: Store, stored: StoredPlan) -> None:
    """The stored plan covers every active job once and is feasible as a whole (independent validator)."""
    active = store.active_jobs()
    problem = dataclasses.replace(base, jobs=tuple(to_problem_job(j, stored.epoch_utc) for j in active))
    listed = [s.job_id for s in stored.plan.scheduled] + [u.job_id for u in stored.plan.unschedulable]
    assert sorted(listed) == sorted(j.job_id for j in active)
    assert validate_plan(problem, stored.plan) == []


@contextlib.contextmanager
def _loop(db: Path, base: Problem) -> Iterator[tuple[PlanningLoop, JobService, Store, SimClock]]:
    """A planning loop run by hand (no thread) on a fresh store, in simulated time."""
    clock = SimClock(CLOCK_START)
    with Store(db) as store:
        service = JobService(store)
        service.catalog = Catalog.from_problem(base)
        loop = PlanningLoop(store, service, clock, None, LoopConfig(time_limit_s=2.0))
        loop.start(base, background=False)
        try:
            yield loop, service, store, clock
        finally:
            loop.stop()


def test_arrivals_are_placed_around_the_previous_plan_until_a_full_round(tmp_path: Path,
                                                                        base_problem: Problem) -> None:
    with _loop(tmp_path / "jobs.db", base_problem) as (loop, service, store, clock):
        _submit(service, clock, 400, priority=2)  # more than the nodes can run before the deadline
        loop.run_once()
        first = service.plan()
        assert first is not None
        kept = {s.job_id: (s.node, s.start_s) for s in first.plan.scheduled}
        waiting = {u.job_id: u.reason for u in first.plan.unschedulable}
        assert kept and waiting and all(r.startswith("capacity") for r in waiting.values())
        _check(base_problem, store, first)

        clock.advance_by(30.0)
        urgent = _submit(service, clock, 5, priority=900)
        loop.run_once(full=False)
        second = service.plan()
        assert second is not None and any(n.startswith("incremental: 5 job(s) placed") for n in second.plan.notes)
        assert {s.job_id: (s.node, s.start_s) for s in second.plan.scheduled} == kept  # nothing moved
        assert {u.job_id: u.reason for u in second.plan.unschedulable if u.job_id in waiting} == waiting
        assert all(store.get(j.job_id).state is JobState.PENDING for j in urgent)  # no room without displacing
        _check(base_problem, store, second)

        loop.run_once(full=True)
        third = service.plan()
        assert third is not None and not any(n.startswith("incremental") for n in third.plan.notes)
        assert all(store.get(j.job_id).state is JobState.SCHEDULED for j in urgent)  # priority displaces now
        assert len(third.plan.scheduled) == len(kept)
        _check(base_problem, store, third)


def test_an_incremental_round_places_new_jobs_into_free_capacity(tmp_path: Path, base_problem: Problem) -> None:
    with _loop(tmp_path / "jobs.db", base_problem) as (loop, service, store, clock):
        _submit(service, clock, 20, priority=1)
        loop.run_once()
        first = service.plan()
        assert first is not None and not first.plan.unschedulable
        later = _submit(service, clock, 20, priority=1)
        loop.run_once(full=False)
        second = service.plan()
        assert second is not None and any(n.startswith("incremental: 20 job(s) placed around 20 kept")
                                          for n in second.plan.notes)
        assert all(store.get(j.job_id).state is JobState.SCHEDULED for j in later)
        before = {s.job_id: s for s in first.plan.scheduled}
        assert all(s == before[s.job_id] for s in second.plan.scheduled if s.job_id in before)
        _check(base_problem, store, second)
