"""The scheduler service inside a replay: the same store, job service and planning loop that ``serve`` runs.

``serve`` keeps its jobs in a :class:`~scheduler.store.Store` (SQLite, WAL, ``synchronous=FULL``, one writer
thread with group commit), validates submits with :class:`~scheduler.service.JobService` and plans with
:class:`~scheduler.loop.PlanningLoop`. A replay goes through that very code on a
:class:`~scheduler.clock.SimClock`:

* arrivals are :meth:`JobService.submit` calls (the scenario's job id is the request id);
* planning rounds are :meth:`PlanningLoop.step` (``replan`` with the previous plan as the hint, the plan
  saved and published, SCHEDULED / PENDING / EXPIRED transitions with the loop's rules);
* deadlines are :meth:`PlanningLoop.expire`;
* the engine's physical events (dispatch, inference start, result on the ground, failures, lost work)
  become the transitions ``serve`` records for them, batched: one ``Store.transition`` call per simulated
  instant (:meth:`ReplayScheduler.flush`).

The engine keeps working with the scenario's job ids (report.json and events.jsonl show them); this class
keeps the map to the store's ids. The planner also sees the scenario ids: store ids carry random bits, and
the planner breaks ties by job id, so planning under them would make two runs of one seed differ.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from scheduler.clock import SimClock
from scheduler.loop import LoopConfig, PlanningLoop, StepResult
from scheduler.service import Catalog, JobService
from scheduler.store import (
    ACTIVE_STATES,
    JobRecord,
    JobResult,
    JobSpec,
    JobState,
    NewTransition,
    Store,
    TransitionRecord,
    from_ms,
    to_ms,
)
from scheduler.types import Job, Problem
from skyinfer.errors import InputError
from skyinfer.replay.settings import ReplaySettings

DB_NAME = "replay.db"
IN_FLIGHT = frozenset({JobState.DISPATCHED, JobState.RUNNING})
# What a finished replay outcome is in the store: a result on the ground by the deadline is SUCCEEDED; the
# loop's deadline rule expires everything else at the deadline (a late result cannot happen: its work is
# cancelled then, as serve cancels it); lost data or an agent error is FAILED; a job still under way when
# the window ends keeps its active state.
STATE_OF_OUTCOME: dict[str, frozenset[JobState]] = {
    "on_time": frozenset({JobState.SUCCEEDED}),
    "late": frozenset({JobState.EXPIRED}),
    "expired": frozenset({JobState.EXPIRED}),
    "failed": frozenset({JobState.FAILED}),
    "unfinished": frozenset(ACTIVE_STATES),
}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A submit the service refused (the same validation as ``SubmitJob``)."""

    reason: str


class ReplayScheduler:
    """``serve``'s store, job service and planning loop on simulated time, for one replay.

    Parameters
    ----------
    base
        The scenario's problem without jobs (its epoch is the replay's t = 0).
    db_path
        The SQLite store; an existing file (and its WAL) is replaced: every replay starts empty.
    settings
        Policy and solver parameters of the rounds.
    """

    def __init__(self, base: Problem, db_path: Path, settings: ReplaySettings) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        self.epoch_utc = base.epoch_utc
        self.clock = SimClock(self.epoch_utc)
        self.store = Store(db_path)
        self.service = JobService(self.store)
        self.service.catalog = Catalog.from_problem(base)
        self.loop = PlanningLoop(self.store, self.service, self.clock, None, LoopConfig(
            policy=settings.policy, time_limit_s=settings.time_limit_s, workers=settings.workers,
            seed=settings.solver_seed, deterministic=settings.deterministic))
        self.store_ids: dict[str, str] = {}  # scenario job id -> store job id
        self.scenario_ids: dict[str, str] = {}
        self._submits: dict[str, concurrent.futures.Future[tuple[JobRecord, bool]]] = {}
        self._changes: list[NewTransition] = []
        self._committed: list[TransitionRecord] = []
        self._committed_lock = threading.Lock()
        self.store.add_listener(self._on_commit)
        self.transition_calls = 0
        self.store_wall_s = 0.0  # wall time spent waiting for the store (commits and reads), planner excluded

    def _on_commit(self, events: list[TransitionRecord]) -> None:
        # The store's writer thread, before the write's future resolves: every record of a write is here by
        # the time the engine's call returns.
        with self._committed_lock:
            self._committed.extend(events)

    def drain(self) -> list[TransitionRecord]:
        """The transitions committed since the last call (submits included), in store order."""
        with self._committed_lock:
            out, self._committed = self._committed, []
        return sorted(out, key=lambda e: e.seq)

    # -- time -----------------------------------------------------------------------------------------
    def utc(self, t_s: float) -> datetime:
        return self.epoch_utc + timedelta(seconds=t_s)

    def stored_deadline_s(self, job: Job) -> float:
        """``job``'s deadline as the store keeps it (whole milliseconds), s after the epoch."""
        return (from_ms(to_ms(self.utc(job.deadline_s))) - self.epoch_utc).total_seconds()

    def _advance(self, t_s: float) -> datetime:
        now = self.utc(t_s)
        if now > self.clock.now():
            self.clock.advance_to(now)
        return now

    # -- jobs -----------------------------------------------------------------------------------------
    def submit(self, job: Job, t_s: float) -> Rejected | None:
        """Submit ``job`` at ``t_s`` as a client would (validated; committed with the next :meth:`flush`)."""
        now = self._advance(t_s)
        try:
            spec = JobSpec(model_id=job.model_id, priority=job.priority, deadline_utc=self.utc(job.deadline_s),
                           source=job.source, input_bytes=job.input_bytes, output_bytes=job.output_bytes,
                           tiles=job.tiles, destination=job.destination)
            self._submits[job.job_id] = self.service.submit(spec, now=now, request_id=job.job_id)
        except InputError as exc:
            return Rejected(str(exc))
        return None

    def _resolve_submits(self) -> None:
        submits, self._submits = self._submits, {}
        for scenario_id, future in submits.items():
            record, _ = future.result()
            self.store_ids[scenario_id] = record.job_id
            self.scenario_ids[record.job_id] = scenario_id

    def record(self, job_id: str, to_state: JobState, reason: str, *, expect: Iterable[JobState], node: str = "",
               work_id: str | None = None, result: JobResult | None = None) -> None:
        """Queue a transition of scenario job ``job_id`` for this instant's :meth:`flush` (skipped there if the
        job is no longer in one of the ``expect`` states, e.g. the loop expired it first)."""
        if job_id not in self.store_ids and job_id not in self._submits:
            return  # never submitted (rejected, or after the window)
        self._changes.append(NewTransition(job_id, to_state, reason, node=node, result=result,
                                           expect=frozenset(expect), work_id=work_id))

    def flush(self, t_s: float) -> None:
        """Commit this instant's submits and transitions (one ``Store.transition`` call; see :meth:`drain`)."""
        if not self._submits and not self._changes:
            return
        started = time.perf_counter()
        now = self._advance(t_s)
        self._resolve_submits()
        changes, self._changes = self._changes, []
        if changes:
            store_changes = [NewTransition(self.store_ids[c.job_id], c.to_state, c.reason, node=c.node,
                                           placement=c.placement, result=c.result, expect=c.expect,
                                           work_id=c.work_id) for c in changes]
            self.transition_calls += 1
            self.store.transition(store_changes, now=now)
        self.store_wall_s += time.perf_counter() - started

    def work_id(self, job_id: str, t_s: float) -> str:
        """The id of the work sent for a dispatch at ``t_s`` (serve's form: store job id and ms)."""
        self._resolve_submits()
        return f"{self.store_ids[job_id]}.{to_ms(self.utc(t_s))}"

    # -- the loop -------------------------------------------------------------------------------------
    def step(self, problem: Problem, why: str) -> StepResult:
        """A planning round (:meth:`PlanningLoop.step`) at ``problem.now_s``; pending writes go first."""
        self.flush(problem.now_s)
        now = self._advance(problem.now_s)
        ids = {j.job_id: self.store_ids[j.job_id] for j in problem.jobs}
        started = time.perf_counter()
        result = self.loop.step(problem, now, why, store_ids=ids)
        self.store_wall_s += time.perf_counter() - started - result.wall_s  # saving and applying the plan
        return result

    def expire(self, job_ids: Iterable[str], t_s: float) -> set[str]:
        """The loop's deadline rule (:meth:`PlanningLoop.expire`) for these scenario jobs at ``t_s``; the ids
        it expired. Pending writes go first."""
        self.flush(t_s)
        started = time.perf_counter()
        now = self._advance(t_s)
        wanted = [self.store_ids[j] for j in job_ids if j in self.store_ids]
        active = [r for r in self.store.get_many(wanted).values() if r.state in ACTIVE_STATES]
        expired = self.loop.expire(active, now) if active else set()
        self.store_wall_s += time.perf_counter() - started
        return {self.scenario_ids[j] for j in expired}

    def states(self) -> dict[str, JobState]:
        """The final state of every job in the store, by scenario job id."""
        self._resolve_submits()
        jobs = self.store.list_jobs(limit=10**9)
        return {self.scenario_ids[j.job_id]: j.state for j in jobs}

    def close(self) -> None:
        self.store.close()
