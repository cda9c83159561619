"""The planning loop: re-plan as jobs and nodes come and go, dispatch work when the contact plan allows.

One thread. It wakes on a trigger (job arrival, cancellation, a result, an agent registering, a node lost),
waits ``debounce_s`` so that a burst of submits costs one re-plan, and also re-plans every ``period_s``.
Between re-plans it does the cheap bookkeeping on time: nodes that stopped heartbeating are marked lost and
their work goes back to PENDING (and is re-planned without them); jobs whose deadline passed become
EXPIRED; scheduled jobs are dispatched once the contact plan says their input (and model) has reached the
node. RUNNING is recorded when the agent reports that it started the work (Fleet ``WorkStarted``).

Stability: work already DISPATCHED or RUNNING is passed to the planner as fixed; SCHEDULED jobs are hints
(the previous plan), so they move only when the planner finds a better plan. A job the planner cannot place
for a reason that only gets worse with time (``deadline``, ``no-contact``, ``model-uplink``) is EXPIRED
with that reason; for other reasons (capacity, energy) it stays PENDING and the reason is shown.

The planner runs on the clock's "now" converted to seconds after the contact plan's epoch. Scenario replay
(:mod:`skyinfer.replay`) drives the same loop on a :class:`~scheduler.clock.SimClock` without a fleet: it
builds each round's problem itself (its simulated links, batteries and in-flight work) and calls
:meth:`PlanningLoop.step`, which plans, saves and applies the plan exactly as :meth:`PlanningLoop.run_once`
does after building serve's problem, and :meth:`PlanningLoop.expire` at deadlines.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler import planner
from scheduler.clock import Clock, SimClock
from scheduler.fleet import FleetRegistry
from scheduler.service import Catalog, JobService
from scheduler.store import (
    ACTIVE_STATES,
    JobRecord,
    JobState,
    NewTransition,
    NodeRecord,
    Placement,
    Store,
    StoredPlan,
    TransitionRecord,
)
from scheduler.types import Job, NodeProfile, Plan, Problem, ScheduledJob, Unschedulable
from skyinfer.errors import InputError
from skyinfer.timefmt import format_utc
from skyinfer.v1 import fleet_pb2

log = logging.getLogger(__name__)

# Unschedulable reasons that can only get worse as time passes: the job is EXPIRED with that reason.
EXPIRE_CODES = frozenset({"deadline", "no-contact", "model-uplink"})
_IN_FLIGHT = frozenset({JobState.DISPATCHED, JobState.RUNNING})


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Planner settings and timing of the loop (seconds of the service clock)."""

    policy: str = "greedy"
    time_limit_s: float = 5.0
    workers: int = 1
    seed: int = 0
    deterministic: bool = False  # CP-SAT budgets in deterministic time (replay: reproducible rounds)
    debounce_s: float = 0.2  # real seconds
    # Real seconds between the end of one re-plan and the start of the next triggered one: under a steady
    # stream of submits the planner (which shares the process) runs at most this often.
    min_interval_s: float = 1.0
    period_s: float = 60.0
    tick_s: float = 1.0  # bookkeeping interval (lost nodes, dispatch) when nothing else wakes the loop
    # Plan in a worker process: the planner is CPU-bound Python and would otherwise hold the GIL away from
    # the gRPC server for whole seconds on large backlogs. The worker builds its own copy of the base
    # problem with the server's (picklable) loader.
    planner_process: bool = False

    def __post_init__(self) -> None:
        if self.policy not in planner.POLICIES:
            raise InputError(f"policy: unknown policy {self.policy!r}; expected one of {', '.join(planner.POLICIES)}")
        for name in ("time_limit_s", "period_s", "tick_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: must be positive")
        if self.debounce_s < 0:
            raise InputError("debounce_s: must be >= 0")
        if self.min_interval_s < 0:
            raise InputError("min_interval_s: must be >= 0")
        if self.workers < 0:
            raise InputError("workers: must be >= 0")


def to_problem_job(job: JobRecord, epoch: datetime) -> Job:
    """A stored job as the planner sees it (times in seconds after ``epoch``)."""
    spec = job.spec
    submit_s = (job.submit_utc - epoch).total_seconds()
    return Job(job_id=job.job_id, model_id=spec.model_id, priority=spec.priority, submit_s=submit_s,
               deadline_s=(spec.deadline_utc - epoch).total_seconds(), input_bytes=spec.input_bytes,
               output_bytes=spec.output_bytes, tiles=spec.tiles, source=spec.source, destination=spec.destination)


def ready_s(sj: ScheduledJob) -> float:
    """When the input (and the model, if uplinked) has reached the node according to the contact plan."""
    ends = [h.end_s for h in (*sj.input_route, *sj.model_route)]
    return max(ends) if ends else sj.start_s


def placement_of(sj: ScheduledJob, epoch: datetime) -> Placement:
    return Placement(sj.node, epoch + timedelta(seconds=sj.start_s), epoch + timedelta(seconds=sj.end_s),
                     epoch + timedelta(seconds=sj.arrival_s))


def reason_code(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def renamed_plan(plan: Plan, ids: Mapping[str, str]) -> Plan:
    """``plan`` with every job id ``k`` replaced by ``ids[k]`` (placements and reasons unchanged)."""
    return dataclasses.replace(
        plan, scheduled=tuple(dataclasses.replace(sj, job_id=ids[sj.job_id]) for sj in plan.scheduled),
        unschedulable=tuple(dataclasses.replace(u, job_id=ids[u.job_id]) for u in plan.unschedulable))


@dataclass(frozen=True, slots=True)
class StepResult:
    """What :meth:`PlanningLoop.step` did: the plan (in the problem's job ids) and the transitions it recorded."""

    plan: Plan
    transitions: tuple[TransitionRecord, ...]
    wall_s: float  # planner time (s, wall clock)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """A planner round's answer: the plan, and the rolled node profiles (battery carried to ``now_s``)."""

    plan: Plan
    profiles_by_node: dict[str, NodeProfile]
    now_s: float


def rolls_nothing(problem: Problem, previous: Plan, now_s: float) -> bool:
    """Whether ``planner.rolled_problem(problem, previous, now_s)`` would change nothing in ``problem``.

    True when ``problem`` is already at ``now_s`` (no battery to carry) and ``previous`` holds no placement
    that would roll: none down by ``now_s`` (it would be dropped) and none started before ``now_s`` that is
    not fixed already (it would become fixed).
    """
    if now_s != problem.now_s:
        return False
    fixed_ids = {f.job_id for f in problem.fixed}
    return all(sj.arrival_s > now_s and (sj.start_s >= now_s or sj.job_id in fixed_ids) for sj in previous.scheduled)


def plan_round(problem: Problem, previous: Plan, now_s: float, config: LoopConfig) -> RoundResult:
    """One re-plan: :func:`scheduler.planner.replan` plus the rolled problem's state to carry over.

    The problem is rolled once (``replan`` is ``plan`` of the rolled problem with ``previous`` as the hint),
    and not at all when the roll would change nothing: simulating every node's battery over its sunlight
    to carry a charge that does not move cost tens of ms per round on 188 nodes.
    """
    rolled = problem if rolls_nothing(problem, previous, now_s) else planner.rolled_problem(problem, previous, now_s)
    plan = planner.plan(rolled, policy=config.policy, time_limit_s=config.time_limit_s, workers=config.workers,
                        seed=config.seed, hint=previous, deterministic=config.deterministic)
    return RoundResult(plan, rolled.profiles_by_node, rolled.now_s)


_WORKER_BASE: Problem | None = None
_WORKER_LOADER: Callable[[], Problem] | None = None


def _exit_with_parent(parent_pid: int) -> None:
    # A SIGKILLed server cannot shut its pool down: the worker notices it was re-parented and exits.
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _worker_init(load_problem: Callable[[], Problem], parent_pid: int) -> None:
    global _WORKER_BASE, _WORKER_LOADER
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    # Planning is background work: under CPU pressure the gRPC server (accepting and acknowledging
    # jobs) goes first; the planner takes what is left. SCHED_IDLE (Linux) runs it only on otherwise idle
    # CPU: during a burst of submits a round is late (jobs stay PENDING a little longer), never an ack.
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    _WORKER_BASE, _WORKER_LOADER = load_problem(), load_problem


def _worker_round(load_problem: Callable[[], Problem], jobs: tuple[Job, ...], fixed: tuple[ScheduledJob, ...],
                  profiles: dict[str, NodeProfile], problem_now_s: float, previous: Plan, now_s: float,
                  config: LoopConfig) -> RoundResult:
    global _WORKER_BASE, _WORKER_LOADER
    if load_problem != _WORKER_LOADER:  # the server rolled its contact plan forward: follow it
        _WORKER_BASE, _WORKER_LOADER = load_problem(), load_problem
    assert _WORKER_BASE is not None, "planner worker not initialised"
    problem = dataclasses.replace(_WORKER_BASE, jobs=jobs, fixed=fixed, profiles_by_node=profiles,
                                  now_s=problem_now_s)
    return plan_round(problem, previous, now_s, config)


class PlannerProcess:
    """A one-worker process pool that plans rounds on its own copy of the base problem."""

    def __init__(self, load_problem: Callable[[], Problem]) -> None:
        self._load_problem = load_problem
        self._closed = False
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: the server process runs threads (gRPC, SQLite writer) that fork would not copy.
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
            initargs=(self._load_problem, os.getpid()))

    def round(self, problem: Problem, previous: Plan, now_s: float, config: LoopConfig,
              load_problem: Callable[[], Problem] | None = None) -> RoundResult:
        """Plan ``problem`` (whose base is what ``load_problem`` builds; default: the pool's own loader)."""
        args = (load_problem or self._load_problem, problem.jobs, problem.fixed, problem.profiles_by_node,
                problem.now_s, previous, now_s, config)
        try:
            return self._pool.submit(_worker_round, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            if self._closed:
                raise
            # The worker died (killed, out of memory): start a fresh one and try this round once more.
            log.warning("planner worker died; starting a new one")
            self._pool = self._new_pool()
            return self._pool.submit(_worker_round, *args).result()

    def close(self) -> None:
        """Stop now: a round in progress is abandoned (its caller gets BrokenProcessPool)."""
        self._closed = True
        processes = list(getattr(self._pool, "_processes", {}).values())  # no public handle on the workers
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(10)


class PlanningLoop:
    """Re-plans and dispatches in a background thread; :meth:`run_once` does one round synchronously.

    ``fleet`` is None when nothing is dispatched over gRPC (scenario replay: its engine moves the work and
    records the transitions); then no node is ever lost or connected and no message is sent.
    """

    def __init__(self, store: Store, service: JobService, clock: Clock, fleet: FleetRegistry | None,
                 config: LoopConfig) -> None:
        self._store = store
        self._service = service
        self._clock = clock
        self._fleet = fleet
        self.config = config
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._reasons: list[str] = []
        self._full_wanted = True  # a trigger other than job arrivals came: the next round re-plans everything
        self._last_full_mono_s = -math.inf
        self._cancelled: list[str] = []
        self._registered: set[str] = set()
        self._base: Problem | None = None
        self._loader: Callable[[], Problem] | None = None  # builds _base (rolled forward: see _roll_horizon)
        self._thread: threading.Thread | None = None
        self._worker: PlannerProcess | None = None
        self._last_plan_mono_s = 0.0
        self._last_plan_end_mono_s = 0.0
        self._next_due: datetime | None = None  # when the next job event (arrival, start, deadline) is due
        self._step_plan: Plan | None = None  # the last plan of step(), in its problems' job ids
        self.rounds = 0
        store.add_listener(self._on_events)

    # -- control --------------------------------------------------------------------------------------------
    def start(self, problem: Problem, *, background: bool = True,
              load_problem: Callable[[], Problem] | None = None) -> None:
        """Begin with the base ``problem`` (scenario + contact plan; its jobs are ignored).

        With ``config.planner_process``, ``load_problem`` (picklable) builds the worker's copy of it.
        """
        self._base = dataclasses.replace(problem, jobs=(), fixed=())
        self._loader = load_problem
        if self.config.planner_process:
            if load_problem is None:
                raise ValueError("planner_process needs load_problem")
            self._worker = PlannerProcess(load_problem)
        self.trigger("start")
        if background:
            self._thread = threading.Thread(target=self._run, name="planning-loop", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.close()  # first: a long planning round must not hold up the shutdown
        if self._thread is not None:
            self._thread.join()

    def trigger(self, reason: str, *, full: bool = True) -> None:
        """Ask for a re-plan. ``full=False`` (job arrivals) allows an incremental one (see :meth:`_replan`)."""
        with self._lock:
            self._reasons.append(reason)
            self._full_wanted = self._full_wanted or full
        self._wake.set()

    def node_registered(self, node_id: str) -> None:
        """An agent (re)connected: re-send its in-flight work (agents dedup by work id) and re-plan."""
        with self._lock:
            self._registered.add(node_id)
        self.trigger(f"node {node_id} registered")

    def _on_events(self, events: list[TransitionRecord]) -> None:
        # Runs in the store's writer thread: only note what happened.
        arrivals = sum(1 for e in events if e.from_state is None)
        cancelled = [e.job_id for e in events if e.to_state is JobState.CANCELLED and e.from_state in _IN_FLIGHT]
        cancels = any(e.to_state is JobState.CANCELLED for e in events)
        if cancelled:
            with self._lock:
                self._cancelled.extend(cancelled)
        if arrivals:
            self.trigger(f"{arrivals} job(s) arrived", full=bool(cancels))
        elif cancels:
            self.trigger("cancellation")

    # -- thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_wake_s = 0.0
        while not self._stopping.is_set():
            fired = self._clock.wait(self._wake, next_wake_s)
            if self._stopping.is_set():
                break
            if fired and self.config.debounce_s > 0:
                # Debounce: let a burst of triggers accumulate, then plan once. Real time, also under a
                # simulated clock: it is about how fast requests arrive, not about the scenario's time.
                since_s = time.monotonic() - self._last_plan_end_mono_s
                self._stopping.wait(max(self.config.debounce_s, self.config.min_interval_s - since_s))
            self._wake.clear()
            with self._lock:
                reasons, self._reasons = self._reasons, []
                full, self._full_wanted = self._full_wanted, False
            periodic = time.monotonic() - self._last_plan_mono_s >= self.config.period_s
            try:
                next_wake_s = self.run_once(replan=bool(reasons) or periodic,
                                            why=", ".join(reasons[:3]) or "periodic", full=full or periodic)
            except Exception:
                if self._stopping.is_set():
                    break
                log.exception("planning round failed; retrying in %.0f s", self.config.tick_s)
                next_wake_s = self.config.tick_s

    # -- one round ------------------------------------------------------------------------------------------
    def run_once(self, *, replan: bool = True, why: str = "", full: bool = True) -> float:
        """Bookkeeping, optionally a re-plan, then dispatch. Returns the seconds until the next round is due.

        ``full=False``: the re-plan may be incremental (only job arrivals since the last round, see
        :meth:`_replan`); lost nodes, a rolled contact plan and ``LoopConfig.period_s`` force a full one.
        """
        base = self._base
        if base is None:
            raise RuntimeError("PlanningLoop.start was not called")
        now = self._clock.now()
        if self._roll_horizon(now):
            base = self._base
            assert base is not None
            replan = full = True
        if self._handle_lost_nodes(now):
            replan = full = True
        self._send_cancels()
        with self._lock:
            registered = bool(self._registered)
        if not replan and not registered and self._next_due is not None and now < self._next_due:
            # Nothing is due (no input arrival or deadline) and nothing happened: skip the
            # scan of every active job, which is what costs on a large backlog.
            left_s = (self._next_due - now).total_seconds()
            return max(0.01, min(left_s, self.config.tick_s, self._period_left_s()))
        jobs = self._store.active_jobs()
        expired = self.expire(jobs, now)
        if expired:
            replan = True
            jobs = [j for j in jobs if j.job_id not in expired]
        if replan:
            self._replan(base, jobs, now, why, full=full)
            jobs = self._store.active_jobs()
        self._resend_registered(jobs)
        self._dispatch(jobs, now)
        return self._next_wake_s(jobs, now)

    def _roll_horizon(self, now: datetime) -> bool:
        """Move the contact plan forward once less than half of it is left: a new window of the same length
        from ``now`` (whole minutes), built by the loader's ``moved_to(start_utc)`` (loaders without it, such
        as a fixed problem in tests, never roll). Returns whether it rolled.

        The stored plan's contact indices belong to the old window, so work in flight at the roll cannot be
        carried into the new one as fixed placements: the roll waits for a moment with nothing in flight
        until only a quarter of the window is left, then goes ahead (work then in flight runs on and reports
        as usual, but its slot and downlink are not reserved in the first plans of the new window).
        Battery charge carries over (the rolled node profiles).
        """
        base, moved_to = self._base, getattr(self._loader, "moved_to", None)
        if base is None or moved_to is None:
            return False
        window_s = base.contact_plan.duration_s
        left_s = (base.contact_plan.end_utc - now).total_seconds()
        if left_s > window_s / 2:
            return False
        if left_s > window_s / 4 and any(j.state in _IN_FLIGHT for j in self._store.active_jobs()):
            return False
        loader = moved_to(now.replace(second=0, microsecond=0))
        fresh = loader()
        charged = {n: p for n, p in base.profiles_by_node.items() if n in fresh.profiles_by_node}
        self._base = dataclasses.replace(fresh, jobs=(), fixed=(),
                                         profiles_by_node={**fresh.profiles_by_node, **charged})
        self._loader = loader
        self._service.catalog = Catalog.from_problem(self._base)
        log.info("contact plan rolled forward: now %s .. %s (%d s were left of the old one)",
                 format_utc(fresh.contact_plan.start_utc), format_utc(fresh.contact_plan.end_utc), left_s)
        return True

    def _handle_lost_nodes(self, now: datetime) -> bool:
        if self._fleet is None:
            return False
        lost = self._fleet.collect_lost()
        if not lost:
            return False
        jobs = self._store.active_jobs()
        for node in lost:
            log.warning("fleet: node %s lost (no heartbeat for %.0f s)", node, self._fleet.lost_after_s)
            self._store.upsert_node(NodeRecord(node, "lost", now, (),
                                               f"no heartbeat for {self._fleet.lost_after_s:g} s"))
            changes = [NewTransition(j.job_id, JobState.PENDING,
                                     f"node-lost: {node} missed heartbeats for {self._fleet.lost_after_s:g} s; "
                                     "re-planning", expect=frozenset({j.state}), work_id="")
                       for j in jobs if j.node == node and j.state in (*_IN_FLIGHT, JobState.SCHEDULED)]
            if changes:
                self._store.transition(changes, now=now)
        return True

    def _send_cancels(self) -> None:
        with self._lock:
            job_ids, self._cancelled = self._cancelled, []
        if self._fleet is None:
            return
        for job in self._store.get_many(job_ids).values():
            if job.work_id and job.node:
                self._fleet.send(job.node, fleet_pb2.SchedulerMessage(cancel=fleet_pb2.Cancel(work_id=job.work_id)))

    def expire(self, jobs: Iterable[JobRecord], now: datetime) -> set[str]:
        """Active ``jobs`` whose deadline is at or before ``now`` become EXPIRED (their work is cancelled).

        Returns the ids of the jobs this call expired.
        """
        late = [j for j in jobs if j.spec.deadline_utc <= now]
        if not late:
            return set()
        changes = [NewTransition(j.job_id, JobState.EXPIRED,
                                 f"deadline: {format_utc(j.spec.deadline_utc)} passed before the result was delivered",
                                 node=j.node, expect=frozenset({j.state})) for j in late]
        done = self._store.transition(changes, now=now)
        for j, rec in zip(late, done, strict=True):
            if rec is not None and j.state in _IN_FLIGHT and j.work_id and self._fleet is not None:
                self._fleet.send(j.node, fleet_pb2.SchedulerMessage(cancel=fleet_pb2.Cancel(work_id=j.work_id)))
        return {rec.job_id for rec in done if rec is not None}

    def _replan(self, base: Problem, jobs: list[JobRecord], now: datetime, why: str, *, full: bool = True) -> None:
        """One round over the active ``jobs``.

        A *full* round re-plans every job, with the previous plan as the hint (in-flight work fixed). An
        *incremental* round (``full=False``, the previous plan of this window known and a full round less than
        ``period_s`` ago) places only jobs the previous plan did not cover (new ones, and scheduled ones whose
        start passed without a dispatch) around the previous placements, which it keeps as they are (fixed);
        jobs left unschedulable last time stay so, with their reason, until the next full round. Arrivals cost
        a round in proportion to themselves, not to the backlog: under a stream of submits a backlog of
        thousands of jobs was re-planned every second. The price: a new job cannot displace lower-priority
        scheduled work before the next full round (at most ``period_s`` later).
        """
        epoch = base.epoch_utc
        now_s = max((now - epoch).total_seconds(), base.now_s)
        stored = self._service.plan()
        prev_by_id: dict[str, ScheduledJob] = {}
        if stored is not None and stored.epoch_utc == epoch:
            prev_by_id = {sj.job_id: sj for sj in stored.plan.scheduled}
        incremental = (not full and stored is not None and stored.epoch_utc == epoch
                       and time.monotonic() - self._last_full_mono_s < self.config.period_s)
        waiting = {u.job_id: u for u in stored.plan.unschedulable} if incremental and stored is not None else {}
        lost = self._fleet.lost() if self._fleet is not None else set()
        fixed: list[ScheduledJob] = []
        hints: list[ScheduledJob] = []
        carried: list[Unschedulable] = []
        pjobs: list[Job] = []
        for j in jobs:
            prev = prev_by_id.get(j.job_id)
            if j.state in _IN_FLIGHT:
                if prev is None or prev.node != j.node or j.node in lost:
                    continue  # in flight without a known placement: wait for its result or deadline
                fixed.append(prev)
            elif prev is not None and prev.start_s >= now_s and prev.node not in lost:
                (fixed if incremental and j.state is JobState.SCHEDULED else hints).append(prev)
            elif incremental and j.job_id in waiting and j.state is JobState.PENDING:
                carried.append(waiting[j.job_id])
                continue
            pjobs.append(to_problem_job(j, epoch))
        profiles = {n: p for n, p in base.profiles_by_node.items() if n not in lost}
        problem = dataclasses.replace(base, jobs=tuple(pjobs), fixed=tuple(fixed), profiles_by_node=profiles)
        # The previous plan as the planner's hint: in-flight work (already fixed) and the placements of
        # jobs not yet started. Placements whose start passed without a dispatch (agent absent) are left
        # out so that those jobs are placed afresh instead of being fixed where they never ran.
        previous = Plan(policy=self.config.policy, scheduled=(*fixed, *hints), unschedulable=(), objective=0.0,
                        bound=0.0)
        started = time.perf_counter()
        if self._worker is not None:
            result = self._worker.round(problem, previous, now_s, self.config, self._loader)
        else:
            result = plan_round(problem, previous, now_s, self.config)
        plan = result.plan
        if incremental:
            plan = dataclasses.replace(plan, unschedulable=(*plan.unschedulable, *carried),
                                       notes=(*plan.notes, f"incremental: {len(pjobs) - len(fixed)} job(s) placed "
                                              f"around {len(fixed)} kept; {len(carried)} left unschedulable "
                                              "until the next full round"))
        else:
            self._last_full_mono_s = time.monotonic()
        # Battery charge carries over between rounds (lost nodes keep their last known profile).
        self._base = dataclasses.replace(base, now_s=result.now_s, jobs=(), fixed=(),
                                         profiles_by_node={**base.profiles_by_node, **result.profiles_by_node})
        # Carried entries change nothing (same job, state and reason): only the round's own answer is applied.
        self._record_round(plan, jobs, epoch, now, applied=result.plan)
        log.info("re-planned (%s%s) at %s: %d jobs, %d scheduled, %d unschedulable, objective %.0f/%.0f, %.2f s",
                 why, ", incremental" if incremental else "", format_utc(now), len(pjobs), len(plan.scheduled),
                 len(plan.unschedulable), plan.objective, plan.bound, time.perf_counter() - started)

    def step(self, problem: Problem, now: datetime, why: str = "", *,
             store_ids: Mapping[str, str] | None = None) -> StepResult:
        """One planning round on a problem the caller built, then what :meth:`run_once` does with its plan.

        For scenario replay, which knows more than the store: ``problem`` holds the jobs to place, the work
        in flight as ``problem.fixed``, the real charge of every node and the contacts still usable (faults
        removed, passes under way cut at ``now``); ``problem.now_s`` must be ``now`` in seconds after
        ``problem.epoch_utc``. The round is :func:`plan_round` (``planner.replan``) with the previous
        step's placements of jobs not started yet (start >= now) as the hint, the rule ``run_once`` uses;
        then the plan is saved (:meth:`Store.save_plan`), published (:meth:`JobService.set_plan`) and
        applied: SCHEDULED / PENDING / EXPIRED transitions with the ``EXPIRE_CODES`` rule.

        The previous plan given to ``replan`` holds only those hints, never the fixed jobs, and
        ``problem.now_s`` is ``now``: ``replan``'s roll-forward is then the identity (no job counts as
        finished from its planned arrival, none becomes fixed from its planned start, no battery is
        re-simulated from planned runs): the caller's fixed work and charge are the real ones.

        ``store_ids`` maps the problem's job ids to the store's (when the caller plans under its own ids,
        e.g. scenario ids, so that the planner's tie-breaks do not depend on random store ids); the stored
        plan and the transitions use the store's ids, the returned plan the problem's. The planner runs in
        this thread (``planner_process`` serves a fixed base problem, not a caller-built one).
        """
        epoch = problem.epoch_utc
        now_s = (now - epoch).total_seconds()
        if abs(now_s - problem.now_s) > 1e-3:
            raise ValueError(f"now: {format_utc(now)} is {now_s:.3f} s after the epoch but problem.now_s is "
                             f"{problem.now_s:.3f} s")
        fixed_ids = {f.job_id for f in problem.fixed}
        job_ids = {j.job_id for j in problem.jobs}
        last = self._step_plan
        hints = () if last is None else tuple(
            sj for sj in last.scheduled
            if sj.job_id in job_ids and sj.job_id not in fixed_ids and sj.start_s >= problem.now_s)
        previous = Plan(policy=self.config.policy, scheduled=hints, unschedulable=(), objective=0.0, bound=0.0)
        started = time.perf_counter()
        plan = plan_round(problem, previous, problem.now_s, self.config).plan
        wall_s = time.perf_counter() - started
        self._step_plan = plan
        ids = store_ids if store_ids is not None else {j: j for j in job_ids}
        stored_plan = renamed_plan(plan, ids) if store_ids is not None else plan
        records = self._store.get_many(ids[j.job_id] for j in problem.jobs)
        transitions = self._record_round(stored_plan, list(records.values()), epoch, now)
        log.info("planned (%s) at %s: %d jobs (%d fixed), %d scheduled, %d unschedulable, objective %.0f/%.0f, "
                 "%.2f s", why or "step", format_utc(now), len(problem.jobs), len(problem.fixed),
                 len(plan.scheduled), len(plan.unschedulable), plan.objective, plan.bound, wall_s)
        return StepResult(plan, tuple(transitions), wall_s)

    def _record_round(self, plan: Plan, jobs: list[JobRecord], epoch: datetime, now: datetime, *,
                      applied: Plan | None = None) -> list[TransitionRecord]:
        """Save and publish a round's plan (store job ids) and apply it (or ``applied``, the part of it that can
        change anything) to ``jobs``; the transitions made."""
        self._last_plan_mono_s = time.monotonic()
        self.rounds += 1
        stored_plan = StoredPlan(epoch_utc=epoch, planned_at_utc=now, plan=plan)
        self._store.save_plan(stored_plan)
        self._service.set_plan(stored_plan)
        done = self._apply(plan if applied is None else applied, jobs, epoch, now)
        self._last_plan_end_mono_s = time.monotonic()
        return done

    def _apply(self, plan: Plan, jobs: list[JobRecord], epoch: datetime, now: datetime) -> list[TransitionRecord]:
        by_id = {j.job_id: j for j in jobs}
        changes: list[NewTransition] = []
        placements: dict[str, Placement] = {}
        reasons: dict[str, str] = {}
        for sj in plan.scheduled:
            job = by_id.get(sj.job_id)
            if job is None or job.state in _IN_FLIGHT:
                continue
            where = placement_of(sj, epoch)
            text = (f"planned on {sj.node}: start {format_utc(where.start_utc)}, result on the ground by "
                    f"{format_utc(where.arrival_utc)}")
            if job.state is JobState.PENDING or job.node != sj.node:
                changes.append(NewTransition(job.job_id, JobState.SCHEDULED, text, node=sj.node, placement=where,
                                             expect=frozenset({job.state})))
            else:
                placements[job.job_id] = where
        for u in plan.unschedulable:
            job = by_id.get(u.job_id)
            if job is None or job.state in _IN_FLIGHT:
                continue
            if reason_code(u.reason) in EXPIRE_CODES:
                changes.append(NewTransition(job.job_id, JobState.EXPIRED, u.reason, expect=frozenset({job.state})))
            elif job.state is JobState.SCHEDULED:
                changes.append(NewTransition(job.job_id, JobState.PENDING, u.reason, expect=frozenset({job.state})))
            elif job.reason != u.reason:
                reasons[job.job_id] = u.reason
        done: list[TransitionRecord] = []
        if changes:
            done = [rec for rec in self._store.transition(changes, now=now) if rec is not None]
        if placements:
            self._store.update_placements(placements)
        if reasons:
            self._store.set_reasons(reasons)
        return done

    def _work_for(self, job: JobRecord, work_id: str, now: datetime) -> fleet_pb2.SchedulerMessage:
        start = job.placement.start_utc if job.placement is not None else now
        simulated = isinstance(self._clock, SimClock)
        not_before = 0.0 if simulated else time.time() + max(0.0, (start - now).total_seconds())
        return fleet_pb2.SchedulerMessage(work=fleet_pb2.Work(
            work_id=work_id, job_id=job.job_id, model_id=job.spec.model_id, tiles=job.spec.tiles,
            not_before_unix_s=not_before, simulated_clock=simulated, return_outputs=True))

    def _resend_registered(self, jobs: list[JobRecord]) -> None:
        with self._lock:
            nodes, self._registered = self._registered, set()
        if not nodes:
            return
        now = self._clock.now()
        for job in jobs:
            if job.state in _IN_FLIGHT and job.node in nodes and job.work_id and self._fleet is not None:
                self._fleet.send(job.node, self._work_for(job, job.work_id, now))

    def _dispatch(self, jobs: list[JobRecord], now: datetime) -> None:
        stored = self._service.plan()
        if stored is None:
            return
        epoch = stored.epoch_utc
        now_s = (now - epoch).total_seconds()
        by_id = {sj.job_id: sj for sj in stored.plan.scheduled}
        connected = self._fleet.connected() if self._fleet is not None else set()
        changes: list[NewTransition] = []
        outgoing: list[tuple[str, fleet_pb2.SchedulerMessage]] = []
        for job in jobs:
            sj = by_id.get(job.job_id)
            if sj is None or sj.node != job.node or job.node not in connected:
                continue
            if job.state is JobState.SCHEDULED and now_s >= ready_s(sj):
                # The contact plan says the input (and model) has reached the node: hand the work over.
                work_id = f"{job.job_id}.{round(now.timestamp() * 1000)}"
                changes.append(NewTransition(job.job_id, JobState.DISPATCHED,
                                             f"sent to {job.node} (input on board at "
                                             f"{format_utc(epoch + timedelta(seconds=ready_s(sj)))})",
                                             node=job.node, expect=frozenset({JobState.SCHEDULED}), work_id=work_id))
                outgoing.append((job.node, self._work_for(job, work_id, now)))
        if not changes:
            return
        # Commit first, then send: after a crash the DISPATCHED job is re-sent when its agent reconnects.
        done = self._store.transition(changes, now=now)
        sent = {rec.job_id for rec in done if rec is not None and rec.to_state is JobState.DISPATCHED}
        for node, msg in outgoing:
            if msg.work.job_id in sent and self._fleet is not None:
                self._fleet.send(node, msg)

    def _period_left_s(self) -> float:
        return self.config.period_s - (time.monotonic() - self._last_plan_mono_s)

    def _next_wake_s(self, jobs: list[JobRecord], now: datetime) -> float:
        """Seconds until something is due: a scheduled job's input arrives, a deadline, or the next tick.

        Also records when the next job event is due (:attr:`_next_due`), so that ticks before it are cheap.
        """
        due: list[float] = [math.inf]
        stored = self._service.plan()
        by_id = {sj.job_id: sj for sj in stored.plan.scheduled} if stored is not None else {}
        epoch = stored.epoch_utc if stored is not None else now
        # The earliest deadline by comparing datetimes (one subtraction, not one per job: a backlog of thousands
        # of jobs is scanned every round).
        deadline = min((j.spec.deadline_utc for j in jobs if j.state in ACTIVE_STATES), default=None)
        if deadline is not None:
            due.append((deadline - now).total_seconds())
        for job in jobs:
            sj = by_id.get(job.job_id) if job.state is JobState.SCHEDULED else None
            if sj is not None:
                # Dispatch is the only thing a plan's times trigger here (RUNNING comes from the agent).
                delta = (epoch + timedelta(seconds=ready_s(sj)) - now).total_seconds()
                if delta > 0:
                    due.append(delta)
        job_due_s = min(due)
        self._next_due = now + timedelta(seconds=job_due_s) if math.isfinite(job_due_s) else None
        return max(0.01, min(job_due_s, self.config.tick_s, self._period_left_s()))
