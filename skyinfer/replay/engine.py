"""The discrete-event replay: a simulated clock driving the planner, the links, the agents and the batteries.

The world model
---------------
* Time is seconds after the scenario start (the contact plan epoch); events
  are processed in (time, kind, sequence) order, so a run is deterministic.
* The scheduler is ``serve``'s (:mod:`skyinfer.replay.service`): jobs are
  submitted through its job service into its SQLite store, every planning
  round is its planning loop's :meth:`~scheduler.loop.PlanningLoop.step`,
  deadlines are its expiry rule, and the physical events below become the
  store transitions serve records (DISPATCHED when the work is committed,
  RUNNING when inference starts, SUCCEEDED when the result is on the ground,
  FAILED, back to PENDING when work is lost), one batch per simulated instant.
* Jobs arrive at their submit time; a planning round follows (rounds are at
  least ``min_replan_gap_s`` apart, and at most ``replan_interval_s`` apart
  while work is pending). Each round gives the planner the jobs not yet
  started (their input where it is now), the real state of charge of every
  node, the nodes that are up, the faults known so far (their contacts
  removed) and, as fixed placements, the committed jobs whose run has not
  ended. Every round's plan is checked with the scheduler's validator.
  A job the planner cannot place for a reason that only gets worse
  (``deadline``, ``no-contact``, ``model-uplink``) is EXPIRED at once, and at
  its deadline any job not yet delivered is EXPIRED and its work cancelled
  (serve's rules), so a result is never late.
* Each round sees the contacts from ``now`` on: a pass under way is cut to
  start at ``now`` (it can carry only ``rate x (end - now)`` more), except
  the contacts the fixed jobs' hops name, which stay whole.
* A planned job is *committed* when its first contact opens (or at the
  capture pass for a capture job, or at its run); until then a later round
  may move it. Its transfers then start as early as the links allow.
* Transfers move ``bytes`` over the planned contacts at the link rate. A
  directed link sends one transfer at a time (first come, first served), so
  transfers sharing a contact queue behind each other; a transfer that
  cannot finish inside its contact, or that a fault interrupts, fails and
  its data waits where it is for the next round (a stranded result is
  re-routed at once by earliest arrival).
* Runs occupy one of the node's slots; the node agent runs the model for
  real (onnxruntime) and its emulated duration for all tiles drives the
  clock. A run starts only if the battery stays above its minimum without
  any harvest over the run (a conservative guard; the planner's model
  already keeps it there).
* Batteries: ``+solar_w`` sunlit, ``+0.5 solar_w`` in penumbra, 0 in umbra,
  ``-idle_power_w`` always and ``-(active-idle)/slots`` per running job,
  clipped to ``[0, battery_wh]`` (the planner contract's model, simulated
  exactly piece by piece).
* Faults (see :mod:`skyinfer.replay.faults`) happen at their time; the
  planner learns of them then.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from orbit.contact_plan import SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT, Contact, ContactPlan
from scheduler.store import ACTIVE_STATES, JobResult, JobState, TransitionRecord
from scheduler.types import (
    CaptureSource,
    Job,
    NodeProfile,
    OnboardSource,
    Problem,
    ScheduledJob,
    UplinkSource,
)
from skyinfer.replay.adapter import (
    GROUND_NODE,
    AgentFailure,
    AgentPool,
    capture_passes,
    ground_profile,
    validate_round,
)
from skyinfer.replay.adapter import link_rates_bps as _link_rates_bps
from skyinfer.replay.adapter import route_now as _route_now
from skyinfer.replay.faults import Fault, clip_contact_plan, start_at_now, trim_contact_plan
from skyinfer.replay.service import IN_FLIGHT, ReplayScheduler
from skyinfer.replay.settings import ReplaySettings
from skyinfer.timefmt import format_offset_utc

TIME_EPS_S = 1e-6
ENERGY_RETRY_S = 60.0  # a run held back for energy is tried again this much later

# Event order at equal times: faults first (they change what is possible), then completions,
# commitments, arrivals, expiries, planning rounds and samples.
K_FAULT_END, K_FAULT, K_LEG, K_RUN, K_COMMIT, K_ARRIVE, K_EXPIRE, K_ROUND, K_SAMPLE, K_RETRY = range(10)

OUTCOMES = ("on_time", "late", "expired", "failed", "unfinished")


@dataclass(slots=True)
class Leg:
    """One hop as executed: ``bytes`` from ``src`` to ``dst`` inside contact ``contact`` at ``rate_bps``."""

    src: str
    dst: str
    contact: Contact
    rate_bps: float
    bytes: int


@dataclass(frozen=True, slots=True)
class TransferRecord:
    job_id: str
    what: str  # input | model | output
    kind: str  # ground_up | ground_down | isl
    src: str
    dst: str
    start_s: float
    end_s: float
    bytes: int
    contact_start_s: float
    contact_end_s: float
    ok: bool


@dataclass(frozen=True, slots=True)
class RunRecord:
    job_id: str
    node: str
    start_s: float
    end_s: float
    energy_wh: float
    real_ms: float
    ok: bool


@dataclass(frozen=True, slots=True)
class RoundRecord:
    t_s: float
    jobs: int
    fixed: int
    scheduled: int
    unschedulable: int
    objective: float
    bound: float
    status: str
    errors: tuple[str, ...]
    wall_s: float
    validate_wall_s: float


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job: Job
    outcome: str
    reason: str
    arrival_s: float | None
    node: str | None
    attempts: int
    state: str = ""  # the job's final state in the scheduler's store ("": never submitted to it)


@dataclass(slots=True)
class Chain:
    """A sequence of legs carrying one piece of data; ``alive`` turns False when its job is reset."""

    job_id: str
    what: str
    legs: list[Leg]
    on_done: Callable[[float], None]
    on_fail: Callable[[str, float, str], None]
    index: int = 0
    alive: bool = True


@dataclass(slots=True)
class JobRun:
    job: Job  # as submitted
    current: Job  # as last given to the planner (source = where the input is now)
    status: str = "waiting"  # waiting | pending | scheduled | committed | done
    outcome: str = ""
    reason: str = ""
    plan: ScheduledJob | None = None
    plan_contacts: tuple[tuple[Contact, ...], tuple[Contact, ...], tuple[Contact, ...]] = ((), (), ())
    plan_rates: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] = ((), (), ())
    version: int = 0
    phase: str = ""  # input | queued | running | output
    data_at: str | None = None
    node: str | None = None
    run_token: int = 0
    run_start_s: float = 0.0
    chains: list[Chain] = field(default_factory=list)
    arrival_s: float | None = None
    attempts: int = 0
    last_planned: tuple[str, float] | None = None
    planned_job: Job | None = None  # the job as given to the round whose plan was committed
    rerouted: bool = False  # its result left the planned output route
    result: JobResult | None = None  # what the agent produced (stored with the job when it is delivered)


class Battery:
    """Exact piecewise-linear battery of one node (Wh), advanced in time."""

    __slots__ = ("cap_wh", "harvest_wh", "idle_w", "idle_wh", "job_wh", "min_t_s", "min_wh", "per_slot_w",
                 "running", "seg_end", "seg_start", "seg_state", "soc_wh", "solar_w", "t_s")

    def __init__(self, profile: NodeProfile, seg_start: np.ndarray, seg_end: np.ndarray, seg_state: np.ndarray
                 ) -> None:
        self.cap_wh = profile.battery_wh
        self.soc_wh = profile.initial_soc * profile.battery_wh
        self.min_wh = self.soc_wh
        self.min_t_s = 0.0
        self.t_s = 0.0
        self.running = 0
        self.idle_w = profile.idle_power_w
        self.solar_w = profile.solar_w
        self.per_slot_w = (profile.active_power_w - profile.idle_power_w) / profile.slots
        self.seg_start = seg_start
        self.seg_end = seg_end
        self.seg_state = seg_state
        self.harvest_wh = 0.0
        self.idle_wh = 0.0
        self.job_wh = 0.0

    def _state(self, t_s: float) -> tuple[int, float]:
        """Sunlight state at ``t_s`` and when it next changes (gaps in the table count as sunlit)."""
        i = bisect.bisect_right(self.seg_start, t_s) - 1
        if i >= 0 and t_s < self.seg_end[i]:
            return int(self.seg_state[i]), float(self.seg_end[i])
        nxt = float(self.seg_start[i + 1]) if i + 1 < len(self.seg_start) else math.inf
        return SUNLIGHT_SUNLIT, nxt

    def advance(self, t_s: float) -> None:
        while self.t_s < t_s - 1e-9:
            state, nxt = self._state(self.t_s)
            b = min(t_s, nxt)
            if b <= self.t_s:  # a zero-length interval in the table
                b = min(t_s, self.t_s + 1e-3)
            dt_h = (b - self.t_s) / 3600.0
            gain_w = self.solar_w if state == SUNLIGHT_SUNLIT else 0.5 * self.solar_w if state == SUNLIGHT_PENUMBRA \
                else 0.0
            load_w = self.idle_w + self.running * self.per_slot_w
            self.harvest_wh += gain_w * dt_h
            self.idle_wh += self.idle_w * dt_h
            self.job_wh += self.running * self.per_slot_w * dt_h
            # Net power is constant over the piece, so the extremes are at its ends.
            self.soc_wh = min(self.cap_wh, max(0.0, self.soc_wh + (gain_w - load_w) * dt_h))
            if self.soc_wh < self.min_wh:
                self.min_wh = self.soc_wh
                self.min_t_s = b
            self.t_s = b


@dataclass(slots=True)
class NodeRun:
    name: str
    profile: NodeProfile
    battery: Battery | None
    up: bool = True
    agent_up: bool = True
    running: dict[str, float] = field(default_factory=dict)  # job id -> run end
    queue: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    incoming: dict[str, str] = field(default_factory=dict)  # model id -> job id whose chain brings it
    busy_slot_s: float = 0.0
    jobs_run: int = 0
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class ReplaySetup:
    """Everything a replay needs, assembled by :func:`skyinfer.replay.run.prepare`."""

    name: str
    contact_plan: ContactPlan
    base_problem: Problem  # profiles and models; no jobs
    jobs: tuple[Job, ...]
    faults: tuple[Fault, ...]
    settings: ReplaySettings
    seed: int


@dataclass(frozen=True, slots=True)
class ReplayResult:
    setup: ReplaySetup
    outcomes: tuple[JobOutcome, ...]
    transfers: tuple[TransferRecord, ...]
    runs: tuple[RunRecord, ...]
    rounds: tuple[RoundRecord, ...]
    nodes: dict[str, dict[str, float]]
    soc_curves: dict[str, tuple[np.ndarray, np.ndarray]]
    events: tuple[dict[str, Any], ...]
    wall_s: float
    inference_real_ms: float
    agents_started: int
    store_path: str = ""  # the scheduler's SQLite store of this run
    store_transition_calls: int = 0
    store_wall_s: float = 0.0  # wall time waiting for the store


class Engine:
    """Plays one :class:`ReplaySetup` with one policy. Call :meth:`run` once."""

    def __init__(self, setup: ReplaySetup, agents: AgentPool, scheduler: ReplayScheduler, *,
                 progress: Callable[[float, float, str], None] | None = None, speed: float | None = None) -> None:
        self.setup = setup
        self.sched = scheduler
        self.s = setup.settings
        self.cp = setup.contact_plan
        self.base = setup.base_problem
        self.agents = agents
        self.progress = progress
        self.speed = speed
        self.duration_s = float(self.cp.duration_s)
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.jobs: dict[str, JobRun] = {j.job_id: JobRun(j, j) for j in setup.jobs}
        self.events: list[dict[str, Any]] = []
        self.transfers: list[TransferRecord] = []
        self.runs: list[RunRecord] = []
        self.rounds: list[RoundRecord] = []
        self.link_busy: dict[tuple[str, str], float] = {}
        self.capture_cache: dict[tuple[float, float, float], list[tuple[str, float]]] | None = None
        self.known_faults: list[Fault] = []
        self.active_faults: list[Fault] = []
        self._plan_cache: dict[tuple[int, ...], tuple[ContactPlan, dict[Contact, int]]] = {}
        self._whole: tuple[dict[Contact, int], dict[tuple[str, str, float], Contact]] | None = None
        self.last_round_s = -math.inf
        self.next_round_s: float | None = None
        self.inference_real_ms = 0.0
        self.done_count = 0
        self.soc_samples: dict[str, list[tuple[float, float]]] = {}
        self.nodes: dict[str, NodeRun] = {}
        sat_index = {n: i for i, n in enumerate(self.cp.constellation.names)}
        sun = self.cp.sunlight
        for name, prof in sorted(self.base.profiles_by_node.items()):
            if sun is not None and name in sat_index:
                m = sun.sat == sat_index[name]
                order = np.argsort(sun.start_s[m], kind="stable")
                seg = (sun.start_s[m][order], sun.end_s[m][order], sun.state[m][order])
            else:
                seg = (np.zeros(0), np.zeros(0), np.zeros(0, np.int8))
            node = NodeRun(name, prof, Battery(prof, *seg))
            node.models.update(prof.resident_models)
            self.nodes[name] = node
            self.soc_samples[name] = [(0.0, prof.initial_soc)]
        self.ground = NodeRun(GROUND_NODE, ground_profile(self.base.ground_gflops), None)
        self.ground.models.update(self.base.models)

    # -- plumbing -----------------------------------------------------------------------------------
    def at(self, t_s: float, kind: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(t_s, self.now), kind, self._seq, fn, args))

    def log(self, type_: str, **fields: Any) -> None:
        rec: dict[str, Any] = {"t_s": round(self.now, 3), "utc": format_offset_utc(self.cp.start_utc, self.now),
                               "type": type_}
        for k, v in fields.items():
            rec[k] = round(v, 3) if isinstance(v, float) and math.isfinite(v) else v
        self.events.append(rec)

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> ReplayResult:
        wall0 = time.perf_counter()
        for jr in self.jobs.values():
            self.at(jr.job.submit_s, K_ARRIVE, self._arrive, jr.job.job_id)
            # At the deadline as the store holds it (whole ms): the loop's rule expires a job once its stored
            # deadline is not after now.
            self.at(self.sched.stored_deadline_s(jr.job), K_EXPIRE, self._expire, jr.job.job_id)
        for f in self.setup.faults:
            self.at(f.start_s, K_FAULT, self._fault_start, f)
            if math.isfinite(f.end_s):
                self.at(f.end_s, K_FAULT_END, self._fault_end, f)
        t = 0.0
        while t <= self.duration_s:
            self.at(t, K_SAMPLE, self._sample)
            t += self.s.soc_sample_s
        total = len(self.jobs)
        while self._heap:
            t_s, _, _, fn, args = heapq.heappop(self._heap)
            if t_s > self.duration_s + TIME_EPS_S:
                heapq.heappush(self._heap, (t_s, 0, 0, fn, args))
                break
            if t_s > self.now:
                self._flush()  # the instant that ended: its transitions in one store call
            if self.speed is not None:
                lag_s = wall0 + t_s / self.speed - time.perf_counter()
                if lag_s > 0:
                    time.sleep(lag_s)
            self.now = t_s
            fn(*args)
            if self.progress is not None:
                self.progress(self.now, self.duration_s,
                              f"{format_offset_utc(self.cp.start_utc, self.now)[:19]} jobs {self.done_count}/{total}")
        self._flush()
        self.now = self.duration_s
        return self._finish(time.perf_counter() - wall0)

    # -- the scheduler's store --------------------------------------------------------------------
    def _log_transitions(self, records: list[TransitionRecord]) -> None:
        for rec in records:
            self.log("job.state", job=self.sched.scenario_ids[rec.job_id], seq=rec.seq,
                     previous=rec.from_state.value if rec.from_state is not None else None,
                     state=rec.to_state.value, reason=rec.reason, node=rec.node or None)

    def _flush(self) -> None:
        self.sched.flush(self.now)
        self._log_transitions(self.sched.drain())

    # -- jobs ---------------------------------------------------------------------------------------
    def _arrive(self, job_id: str) -> None:
        jr = self.jobs[job_id]
        jr.status = "pending"
        src = jr.job.source
        self.log("job.submitted", job=job_id, priority=jr.job.priority, model=jr.job.model_id,
                 source=src.kind, deadline_s=jr.job.deadline_s)
        rejected = self.sched.submit(jr.job, self.now)
        if rejected is not None:
            self._close(jr, "failed", f"rejected: {rejected.reason}")
            return
        if isinstance(src, UplinkSource):
            jr.data_at = f"gs:{src.station}" if src.station else None
        elif isinstance(src, OnboardSource):
            jr.data_at = src.satellite
        self.request_round(self.now, "job arrived")

    def _expire(self, job_id: str) -> None:
        jr = self.jobs[job_id]
        if jr.status in ("done", "waiting"):
            return
        self._flush()
        expired = self.sched.expire([job_id], self.now)
        records = self.sched.drain()
        self._log_transitions(records)
        stored = records[0].reason if expired and records else "deadline: not delivered by the deadline"
        if jr.status == "committed":
            # Serve cancels the work of a job it expires: the run stops, its transfers are dropped.
            self._cancel_work(jr)
            self._close(jr, "expired", f"{stored}; its work was cancelled", recorded=bool(expired))
        else:
            self._close(jr, "expired", jr.reason or stored, recorded=bool(expired))

    def _cancel_work(self, jr: JobRun) -> None:
        jr.run_token += 1
        for node in (*self.nodes.values(), self.ground):
            if jr.job.job_id in node.running:
                self._stop_run(jr, node, False)
            if jr.job.job_id in node.queue:
                node.queue.remove(jr.job.job_id)

    def _close(self, jr: JobRun, outcome: str, reason: str = "", *, recorded: bool = False) -> None:
        """Finish ``jr`` with ``outcome`` and record the store state it means (unless ``recorded`` already)."""
        for c in jr.chains:
            c.alive = False
        jr.chains = []
        job_id = jr.job.job_id
        if recorded:
            pass
        elif outcome == "on_time":
            self.sched.record(job_id, JobState.SUCCEEDED, f"result of {jr.node} on the ground at "
                              f"{format_offset_utc(self.cp.start_utc, self.now)}", node=jr.node or "",
                              result=jr.result, expect=IN_FLIGHT)
        elif outcome in ("late", "expired"):
            self.sched.record(job_id, JobState.EXPIRED, reason, node=jr.node or "", expect=ACTIVE_STATES)
        elif outcome == "failed":
            self.sched.record(job_id, JobState.FAILED, reason, node=jr.node or "", expect=ACTIVE_STATES)
        jr.status = "done"
        jr.outcome = outcome
        jr.reason = reason
        self.done_count += 1
        self.log(f"job.{outcome}", job=jr.job.job_id, reason=reason or None,
                 arrival_s=jr.arrival_s, node=jr.node)

    def _reset(self, jr: JobRun, data_at: str | None, why: str) -> None:
        """Back to pending with the input at ``data_at`` (a satellite, ``gs:<station>``, or None: as submitted)."""
        for c in jr.chains:
            c.alive = False
        jr.chains = []
        jr.run_token += 1
        if jr.node and jr.node in self.nodes and jr.job.job_id in self.nodes[jr.node].queue:
            self.nodes[jr.node].queue.remove(jr.job.job_id)
        # Serve's answer to lost work: back to PENDING (no node, no work id) and re-planned.
        self.sched.record(jr.job.job_id, JobState.PENDING, why, expect=(JobState.SCHEDULED, *IN_FLIGHT), work_id="")
        jr.status = "pending"
        jr.phase = ""
        jr.rerouted = False
        jr.plan = None
        jr.node = None
        jr.version += 1
        if self.now >= jr.job.deadline_s:
            self._close(jr, "expired", f"deadline: {why}; the deadline passed")
            return
        job = jr.job
        if data_at is None:
            jr.current = job
        elif data_at.startswith("gs:"):
            jr.current = replace(job, source=UplinkSource(data_at[3:]), submit_s=max(job.submit_s, 0.0))
        else:
            jr.current = replace(job, source=OnboardSource(data_at), submit_s=self.now)
        jr.data_at = data_at
        self.log("job.requeued", job=job.job_id, reason=why, data_at=data_at)
        self.request_round(self.now, "work lost")

    def _lose(self, jr: JobRun, why: str) -> None:
        """The job's data is gone: an uplink job starts over from the ground copy; others fail."""
        if isinstance(jr.job.source, UplinkSource):
            self._reset(jr, None, why)
        else:
            jr.run_token += 1
            self._close(jr, "failed", why)

    # -- planning ------------------------------------------------------------------------------------
    def request_round(self, t_s: float, why: str) -> None:
        t = max(t_s, self.last_round_s + self.s.min_replan_gap_s)
        if self.next_round_s is not None and self.next_round_s <= t + TIME_EPS_S:
            return
        self.next_round_s = t
        self.at(t, K_ROUND, self._round, t, why)

    def _contact_plan_now(self) -> tuple[ContactPlan, dict[Contact, int]]:
        key = tuple(i for i, f in enumerate(self.setup.faults) if f in self.known_faults and f.kind != "agent_kill")
        hit = self._plan_cache.get(key)
        if hit is None:
            faults = tuple(self.setup.faults[i] for i in key)
            cp = clip_contact_plan(self.cp, faults) if faults else self.cp
            hit = (cp, {c: i for i, c in enumerate(cp.contacts())})
            self._plan_cache = {key: hit}
        return hit

    def _whole_by_end(self, index: dict[Contact, int]) -> dict[tuple[str, str, float], Contact]:
        """The contacts of the (fault-clipped) plan by (src, dst, end_s): a cut at ``now`` keeps the end."""
        if self._whole is None or self._whole[0] is not index:
            self._whole = (index, {(c.src, c.dst, c.end_s): c for c in index})
        return self._whole[1]

    def _profiles_now(self) -> dict[str, NodeProfile]:
        out: dict[str, NodeProfile] = {}
        for name, node in self.nodes.items():
            # A node that is down neither computes nor relays. A killed agent only stops compute until its
            # restart (the radio and the storage live on): its node keeps its profile, and work placed on it
            # waits in its queue for the restarted agent.
            if not node.up or node.battery is None:
                continue
            node.battery.advance(self.now)
            p = node.profile
            frac = min(1.0, max(p.min_soc, node.battery.soc_wh / p.battery_wh))
            out[name] = replace(p, initial_soc=frac)
        return out

    def _fixed_now(self, index: dict[Contact, int], profiles: dict[str, NodeProfile]
                   ) -> tuple[list[ScheduledJob], list[Job]]:
        fixed: list[ScheduledJob] = []
        jobs: list[Job] = []
        for jr in self.jobs.values():
            if jr.status != "committed" or jr.plan is None or jr.rerouted:
                continue
            sj = jr.plan
            if sj.node != GROUND_NODE and sj.node not in profiles:
                continue
            ends = {n for h in (*sj.input_route, *sj.output_route, *sj.model_route) for n in (h.src, h.dst)}
            if any(not n.startswith("gs:") and n not in profiles for n in ends):
                continue  # it relays through a node that is down now: its transfer there fails and is re-planned
            routes = []
            ok = True
            for hops, contacts in zip((sj.input_route, sj.output_route, sj.model_route), jr.plan_contacts,
                                      strict=True):
                new = []
                for h, c in zip(hops, contacts, strict=True):
                    ci = index.get(c)
                    if ci is None:
                        ok = False
                        break
                    new.append(replace(h, contact=ci))
                routes.append(tuple(new))
            if not ok:
                continue  # a fault took one of its contacts: it will fail there and be re-planned
            fixed.append(replace(sj, input_route=routes[0], output_route=routes[1], model_route=routes[2]))
            jobs.append(jr.planned_job or jr.current)
        return fixed, jobs

    def _round(self, t_s: float, why: str) -> None:
        if self.next_round_s is None or abs(self.next_round_s - t_s) > TIME_EPS_S:
            return  # superseded: an earlier round ran and scheduled its own successor
        self.next_round_s = None
        self.last_round_s = self.now
        open_jobs = [jr for jr in self.jobs.values() if jr.status in ("pending", "scheduled")]
        open_jobs = [jr for jr in open_jobs if jr.job.deadline_s > self.now + TIME_EPS_S]
        if not open_jobs:
            return
        full_cp, full_index = self._contact_plan_now()
        # This round's contacts may start at ``now`` (cut by start_at_now); jobs remember the whole ones.
        whole = self._whole_by_end(full_index)
        # Only contacts that a fixed job used or that end before the last deadline matter to this round.
        t0 = min([self.now] + [h.start_s for jr in self.jobs.values() if jr.status == "committed"
                               and jr.plan is not None for h in (*jr.plan.input_route, *jr.plan.model_route)])
        t1 = max(jr.job.deadline_s for jr in self.jobs.values() if jr.status in ("pending", "scheduled", "committed"))
        keep = {(c.src, c.dst, c.start_s, c.end_s) for jr in self.jobs.values()
                if jr.status == "committed" and not jr.rerouted for route in jr.plan_contacts for c in route}
        cp = start_at_now(trim_contact_plan(full_cp, t0, t1), self.now, keep)
        index = {c: i for i, c in enumerate(cp.contacts())}
        profiles = self._profiles_now()
        fixed, fixed_jobs = self._fixed_now(index, profiles)
        jobs = [jr.current for jr in sorted(open_jobs, key=lambda r: r.job.job_id)]
        problem = replace(self.base, contact_plan=cp, profiles_by_node=profiles, jobs=tuple(jobs + fixed_jobs),
                          now_s=self.now, fixed=tuple(fixed))
        self._flush()
        step = self.sched.step(problem, why)
        plan = step.plan
        errors, validate_wall_s = validate_round(problem, plan)
        fixed_ids = {f.job_id for f in fixed}
        self.rounds.append(RoundRecord(self.now, len(jobs), len(fixed), len(plan.scheduled) - len(fixed_ids),
                                       len(plan.unschedulable), plan.objective, plan.bound, plan.status,
                                       errors, step.wall_s, validate_wall_s))
        self.log("plan.round", policy=self.s.policy, jobs=len(jobs), fixed=len(fixed),
                 scheduled=len(plan.scheduled) - len(fixed_ids), unschedulable=len(plan.unschedulable),
                 objective=plan.objective, bound=plan.bound, validator_errors=len(errors))
        self._log_transitions(self.sched.drain())
        for rec in step.transitions:
            if rec.to_state is JobState.EXPIRED:  # the loop's rule: a reason that only gets worse with time
                gone = self.jobs[self.sched.scenario_ids[rec.job_id]]
                gone.reason = rec.reason
                gone.plan = None
                self._close(gone, "expired", rec.reason, recorded=True)
        contacts = list(index)  # insertion order = contact index
        rates = _link_rates_bps(problem)
        for sj in plan.scheduled:
            if sj.job_id in fixed_ids:
                continue
            jr = self.jobs[sj.job_id]
            if jr.status == "done":
                continue
            jr.version += 1
            jr.plan = sj
            jr.status = "scheduled"
            jr.plan_contacts = tuple(  # type: ignore[assignment]
                tuple(whole.get((contacts[h.contact].src, contacts[h.contact].dst, contacts[h.contact].end_s),
                                contacts[h.contact]) for h in r)
                for r in (sj.input_route, sj.output_route, sj.model_route))
            jr.plan_rates = tuple(tuple(float(rates[h.contact]) for h in r)  # type: ignore[assignment]
                                  for r in (sj.input_route, sj.output_route, sj.model_route))
            key = (sj.node, round(sj.arrival_s, 3))
            if jr.last_planned != key:
                jr.last_planned = key
                self.log("job.planned", job=sj.job_id, node=sj.node, start_s=sj.start_s, end_s=sj.end_s,
                         arrival_s=sj.arrival_s)
            self._schedule_commit(jr, problem)
        for u in plan.unschedulable:
            ur = self.jobs.get(u.job_id)
            if ur is None or ur.status not in ("pending", "scheduled"):
                continue
            if ur.status == "scheduled":
                ur.version += 1
            ur.status = "pending"
            ur.plan = None
            if ur.reason != u.reason:
                ur.reason = u.reason
                ur.last_planned = None
                self.log("job.unschedulable", job=u.job_id, reason=u.reason)
        if any(jr.status in ("pending", "scheduled") for jr in self.jobs.values()):
            self.request_round(self.now + self.s.replan_interval_s, "periodic")

    def _schedule_commit(self, jr: JobRun, problem: Problem) -> None:
        sj = jr.plan
        assert sj is not None
        first = min([sj.start_s] + [r[0].start_s for r in (sj.input_route, sj.model_route) if r])
        # Dispatch when the first contact opens, not at the planned hop time: the planner books volume, so
        # hops it placed side by side late in a pass must queue on the link, and starting early leaves room.
        opens = [max(c[0].start_s, jr.current.submit_s) for c in (jr.plan_contacts[0], jr.plan_contacts[2]) if c]
        t_commit = min([first, *opens])
        src = jr.current.source
        if isinstance(src, CaptureSource):
            sat = sj.input_route[0].src if sj.input_route else sj.node
            if self.capture_cache is None:
                sources = [j.job.source for j in self.jobs.values() if isinstance(j.job.source, CaptureSource)]
                self.capture_cache = capture_passes(self.base, sources)
            key = (src.latitude_deg, src.longitude_deg, src.min_elevation_deg)
            passes = [t for s, t in self.capture_cache.get(key, [])
                      if s == sat and jr.current.submit_s - TIME_EPS_S <= t <= first + TIME_EPS_S]
            if passes:
                t_commit = passes[-1]
        self.at(max(t_commit, self.now), K_COMMIT, self._commit, jr.job.job_id, jr.version)

    def _commit(self, job_id: str, version: int) -> None:
        jr = self.jobs[job_id]
        if jr.version != version or jr.status != "scheduled" or jr.plan is None:
            return
        sj = jr.plan
        src = jr.current.source
        if isinstance(src, CaptureSource):
            where = sj.input_route[0].src if sj.input_route else sj.node
        elif sj.input_route:
            where = sj.input_route[0].src
        else:
            where = sj.node if not isinstance(src, OnboardSource) else src.satellite
        node = self.nodes.get(where)
        if node is not None and not node.up:
            self._reset(jr, jr.data_at, f"capture satellite {where} is down")
            return
        if isinstance(src, CaptureSource):
            self.log("job.captured", job=job_id, satellite=where)
        jr.status = "committed"
        jr.planned_job = jr.current
        jr.attempts += 1
        jr.node = sj.node
        jr.data_at = where
        jr.phase = "input"
        self.sched.record(job_id, JobState.DISPATCHED, f"committed to {sj.node}: its transfers start from {where} "
                          f"(attempt {jr.attempts})", node=sj.node, expect=(JobState.SCHEDULED,),
                          work_id=self.sched.work_id(job_id, self.now))
        self.log("job.committed", job=job_id, node=sj.node, attempt=jr.attempts)
        if sj.model_route and sj.node in self.nodes:
            node_run = self.nodes[sj.node]
            mid = jr.job.model_id
            if mid not in node_run.models and mid not in node_run.incoming:
                legs = self._legs(sj.model_route, jr.plan_contacts[2], jr.plan_rates[2])
                node_run.incoming[mid] = job_id
                chain = Chain(job_id, "model", legs, partial(self._model_arrived, node_run, mid),
                              partial(self._model_failed, node_run, mid))
                self._start_leg(chain, self.now)
        legs = self._legs(sj.input_route, jr.plan_contacts[0], jr.plan_rates[0])
        if not legs:
            self._input_arrived(jr, self.now)
            return
        chain = Chain(job_id, "input", legs, partial(self._input_arrived, jr), partial(self._input_failed, jr))
        jr.chains.append(chain)
        self._start_leg(chain, self.now)

    @staticmethod
    def _legs(hops: tuple[Any, ...], contacts: tuple[Contact, ...], rates: tuple[float, ...]) -> list[Leg]:
        return [Leg(h.src, h.dst, c, r, h.bytes) for h, c, r in zip(hops, contacts, rates, strict=True)]

    # -- transfers ---------------------------------------------------------------------------------
    def _interrupt_s(self, leg: Leg, t0: float, t1: float) -> tuple[float, str] | None:
        """First fault that stops ``leg`` within ``[t0, t1]`` (time, reason)."""
        best: tuple[float, str] | None = None
        for f in self.setup.faults:
            if f.kind == "agent_kill" or f.end_s <= t0 or f.start_s > t1:
                continue
            hit = (
                (f.kind == "station_offline" and f"gs:{f.target}" in (leg.src, leg.dst))
                or (f.kind == "node_down" and f.target in (leg.src, leg.dst))
                or (f.kind == "isl_cut" and {f.target, f.other} == {leg.src, leg.dst})
            )
            if hit:
                t = max(t0, f.start_s)
                if best is None or t < best[0]:
                    best = (t, f.label())
        return best

    def _start_leg(self, chain: Chain, ready_s: float) -> None:
        leg = chain.legs[chain.index]
        link = (leg.src, leg.dst)
        c = leg.contact
        start = max(ready_s, c.start_s, self.link_busy.get(link, -math.inf), self.now)
        if leg.rate_bps <= 0:
            self.at(self.now, K_LEG, self._leg_failed, chain, self.now, start, "link has no rate")
            return
        end = start + leg.bytes * 8.0 / leg.rate_bps
        stop = self._interrupt_s(leg, start, end)
        if end > c.end_s + 1e-3:
            t_fail = max(self.now, min(c.end_s, start))
            if stop is None or stop[0] > t_fail:
                stop = (t_fail, "contact ended before the transfer finished (link busy or late)")
        if stop is not None:
            self.link_busy[link] = max(self.link_busy.get(link, -math.inf), stop[0])
            self.at(stop[0], K_LEG, self._leg_failed, chain, stop[0], start, stop[1])
            return
        self.link_busy[link] = end
        self.at(end, K_LEG, self._leg_done, chain, start)

    def _record(self, chain: Chain, leg: Leg, start: float, end: float, ok: bool) -> None:
        self.transfers.append(TransferRecord(chain.job_id, chain.what, leg.contact.kind, leg.src, leg.dst, start,
                                             end, leg.bytes, leg.contact.start_s, leg.contact.end_s, ok))

    def _leg_done(self, chain: Chain, start: float) -> None:
        if not chain.alive:
            return
        leg = chain.legs[chain.index]
        self._record(chain, leg, start, self.now, True)
        self.log("transfer.done", job=chain.job_id, what=chain.what, src=leg.src, dst=leg.dst, bytes=leg.bytes,
                 start_s=start, kind=leg.contact.kind)
        jr = self.jobs.get(chain.job_id)
        if jr is not None and chain.what != "model":
            jr.data_at = leg.dst
        chain.index += 1
        if chain.index >= len(chain.legs):
            chain.alive = False
            chain.on_done(self.now)
        else:
            self._start_leg(chain, self.now)

    def _leg_failed(self, chain: Chain, t_s: float, start: float, why: str) -> None:
        if not chain.alive:
            return
        chain.alive = False
        leg = chain.legs[chain.index]
        if start < t_s:
            self._record(chain, leg, start, t_s, False)
        self.log("transfer.failed", job=chain.job_id, what=chain.what, src=leg.src, dst=leg.dst, bytes=leg.bytes,
                 reason=why)
        chain.on_fail(leg.src, t_s, f"transfer {leg.src}->{leg.dst} failed: {why}")

    def _input_failed(self, jr: JobRun, at: str, t_s: float, why: str) -> None:
        self._reset(jr, at, why)

    def _model_arrived(self, node: NodeRun, model_id: str, t_s: float) -> None:
        node.incoming.pop(model_id, None)
        if node.up:
            node.models.add(model_id)
            self.log("model.loaded", node=node.name, model=model_id)
            self._try_start(node)

    def _model_failed(self, node: NodeRun, model_id: str, at: str, t_s: float, why: str) -> None:
        node.incoming.pop(model_id, None)
        for job_id in list(node.queue):
            jr = self.jobs[job_id]
            if jr.job.model_id == model_id:
                self._reset(jr, node.name, f"model {model_id} did not arrive: {why}")

    # -- compute ---------------------------------------------------------------------------------------
    def _input_arrived(self, jr: JobRun, t_s: float) -> None:
        assert jr.plan is not None
        node_name = jr.plan.node
        jr.chains = [c for c in jr.chains if c.alive]
        if node_name == GROUND_NODE:
            jr.phase = "queued"
            self._run(jr, self.ground)
            return
        node = self.nodes[node_name]
        if not node.up:
            self._lose(jr, f"node-down: {node_name}")
            return
        jr.phase = "queued"
        jr.data_at = node_name
        if jr.job.model_id not in node.models and jr.job.model_id not in node.incoming:
            self._reset(jr, node_name, f"model {jr.job.model_id} is not on {node_name} and none is on its way")
            return
        node.queue.append(jr.job.job_id)
        self._try_start(node)

    def _try_start(self, node: NodeRun) -> None:
        if not (node.up and node.agent_up):
            return
        ready = [self.jobs[j] for j in node.queue if self.jobs[j].job.model_id in node.models]
        ready.sort(key=lambda r: (-r.job.priority, r.job.deadline_s, r.job.job_id))
        for jr in ready:
            if len(node.running) >= node.profile.slots:
                return
            if not self._energy_ok(node, jr):
                if node.retry_at is None:
                    node.retry_at = self.now + ENERGY_RETRY_S
                    self.at(node.retry_at, K_RETRY, self._retry, node)
                return
            node.queue.remove(jr.job.job_id)
            self._run(jr, node)

    def _retry(self, node: NodeRun) -> None:
        node.retry_at = None
        self._try_start(node)

    def _duration_s(self, job: Job, node: NodeRun) -> float:
        model = self.base.models[job.model_id]
        return node.profile.seconds_for(model, job.tiles, self.base.profiles_by_node)

    def _energy_ok(self, node: NodeRun, jr: JobRun) -> bool:
        b = node.battery
        if b is None:
            return True
        b.advance(self.now)
        dur_h = self._duration_s(jr.job, node) / 3600.0
        need = (b.idle_w + (len(node.running) + 1) * b.per_slot_w) * dur_h
        return b.soc_wh - need >= node.profile.min_soc * b.cap_wh - 1e-9

    def _run(self, jr: JobRun, node: NodeRun) -> None:
        profiles = self.base.profiles_by_node
        try:
            result = self.agents.infer(node.name, node.profile, jr.job, profiles)
        except AgentFailure as exc:
            self._close(jr, "failed", f"agent: {exc}")
            return
        self.inference_real_ms += result.real_ms
        self.sched.record(jr.job.job_id, JobState.RUNNING, f"running on {node.name} ({jr.job.tiles} tiles, "
                          f"{result.emulated_s:.3f} s emulated)", node=node.name, expect=(JobState.DISPATCHED,))
        jr.result = JobResult(
            location=node.name, output_bytes=jr.job.output_bytes,
            detail=f"tiles_done={jr.job.tiles} real_tiles={result.tiles_run} real_ms={result.real_ms:.1f} "
                   f"emulated_ms={result.emulated_s * 1000.0:.1f} output_digest={result.output_digest or '-'}")
        if node.battery is not None:
            node.battery.advance(self.now)
            node.battery.running += 1
        jr.phase = "running"
        jr.run_token += 1
        jr.run_start_s = self.now
        end = self.now + result.emulated_s
        node.running[jr.job.job_id] = end
        self.log("job.running", job=jr.job.job_id, node=node.name, emulated_s=result.emulated_s,
                 tiles_run=result.tiles_run, output=result.output_digest or None)
        self.at(end, K_RUN, self._run_done, jr, node, jr.run_token, result.real_ms)

    def _stop_run(self, jr: JobRun, node: NodeRun, ok: bool, real_ms: float = 0.0) -> None:
        node.running.pop(jr.job.job_id, None)
        if node.battery is not None:
            node.battery.advance(self.now)
            node.battery.running -= 1
        dur = self.now - jr.run_start_s
        node.busy_slot_s += dur
        energy = dur * (node.battery.per_slot_w if node.battery is not None else 0.0) / 3600.0
        self.runs.append(RunRecord(jr.job.job_id, node.name, jr.run_start_s, self.now, energy, real_ms, ok))

    def _run_done(self, jr: JobRun, node: NodeRun, token: int, real_ms: float) -> None:
        if token != jr.run_token or jr.status != "committed":
            return
        self._stop_run(jr, node, True, real_ms)
        node.jobs_run += 1
        self.log("job.computed", job=jr.job.job_id, node=node.name)
        jr.phase = "output"
        if node is self.ground:
            self._deliver(jr, self.now)
        else:
            assert jr.plan is not None
            legs = self._legs(jr.plan.output_route, jr.plan_contacts[1], jr.plan_rates[1])
            if not legs:
                self._deliver(jr, self.now)
            else:
                chain = Chain(jr.job.job_id, "output", legs, partial(self._deliver, jr), partial(self._reroute, jr))
                jr.chains.append(chain)
                self._start_leg(chain, self.now)
        self._try_start(node)

    def _reroute(self, jr: JobRun, at: str, t_s: float, why: str) -> None:
        """A result stuck on ``at``: route it down by earliest arrival over what is left of the plan."""
        jr.data_at = at
        cp, index = self._contact_plan_now()
        problem = replace(self.base, contact_plan=cp, profiles_by_node={
            n: r.profile for n, r in self.nodes.items() if r.up}, jobs=(), now_s=self.now, fixed=())
        hops = _route_now(problem, at, self.now, jr.job.output_bytes, jr.job.destination, math.inf)
        if not hops:
            self._close(jr, "failed", f"result stranded on {at}: {why}; no route to the ground before the end")
            return
        contacts = list(index)
        rates = _link_rates_bps(problem)
        legs = [Leg(h.src, h.dst, contacts[h.contact], float(rates[h.contact]), h.bytes) for h in hops]
        jr.rerouted = True
        self.log("job.rerouted", job=jr.job.job_id, at=at, reason=why, hops=len(legs))
        chain = Chain(jr.job.job_id, "output", legs, partial(self._deliver, jr), partial(self._reroute, jr))
        jr.chains = [chain]
        self._start_leg(chain, self.now)

    def _deliver(self, jr: JobRun, t_s: float) -> None:
        jr.arrival_s = t_s
        if jr.result is not None and jr.data_at is not None and jr.data_at.startswith("gs:"):
            jr.result = replace(jr.result, location=jr.data_at)  # the station the result came down to
        jr.data_at = None
        on_time = t_s <= jr.job.deadline_s + 1e-3
        self._close(jr, "on_time" if on_time else "late")

    # -- faults ---------------------------------------------------------------------------------------
    def _fault_start(self, f: Fault) -> None:
        self.known_faults.append(f)
        self.active_faults.append(f)
        self.log("fault.start", fault=f.kind, target=f.target, other=f.other,
                 until_s=f.end_s if math.isfinite(f.end_s) else None)
        if f.kind in ("node_down", "agent_kill") and f.target in self.nodes:
            node = self.nodes[f.target]
            if f.kind == "node_down":
                node.up = False
            else:
                node.agent_up = False
                self.agents.kill(node.name)
            for job_id in sorted(node.running):
                jr = self.jobs[job_id]
                self._stop_run(jr, node, False)
                jr.run_token += 1
                if f.kind == "node_down":
                    self._lose(jr, f"node-down: {node.name} went down during the run")
                else:
                    self._reset(jr, node.name, f"agent on {node.name} was killed during the run")
            for job_id in list(node.queue):
                jr = self.jobs[job_id]
                node.queue.remove(job_id)
                if f.kind == "node_down":
                    self._lose(jr, f"node-down: {node.name} went down with the input")
                else:
                    self._reset(jr, node.name, f"agent on {node.name} was killed")
            if f.kind == "node_down":
                for jr in list(self.jobs.values()):
                    if jr.status in ("committed", "pending", "scheduled") and jr.data_at == node.name:
                        self._lose(jr, f"node-down: {node.name} went down holding the job's data")
                node.models = set(node.profile.resident_models)
        self.request_round(self.now, f"fault {f.label()}")

    def _fault_end(self, f: Fault) -> None:
        if f in self.active_faults:
            self.active_faults.remove(f)
        self.log("fault.end", fault=f.kind, target=f.target, other=f.other)
        if f.kind in ("node_down", "agent_kill") and f.target in self.nodes:
            node = self.nodes[f.target]
            if f.kind == "node_down":
                node.up = True
            else:
                node.agent_up = True
                self._try_start(node)
        self.request_round(self.now, f"fault {f.label()} over")

    # -- samples and the end ----------------------------------------------------------------------------
    def _sample(self) -> None:
        for name, node in self.nodes.items():
            if node.battery is not None:
                node.battery.advance(self.now)
                self.soc_samples[name].append((self.now, node.battery.soc_wh / node.battery.cap_wh))

    def _finish(self, wall_s: float) -> ReplayResult:
        for node in self.nodes.values():
            for job_id in sorted(node.running):
                self._stop_run(self.jobs[job_id], node, False)
            if node.battery is not None:
                node.battery.advance(self.duration_s)
        outcomes: list[JobOutcome] = []
        for jr in self.jobs.values():
            if jr.status != "done":
                if jr.status == "waiting":
                    self._close(jr, "unfinished", "submitted after the end of the window")
                elif jr.job.deadline_s <= self.duration_s + TIME_EPS_S:
                    self._close(jr, "expired", jr.reason or "deadline: not delivered by the deadline")
                else:
                    self._close(jr, "unfinished", "in progress when the window ended (deadline later)")
            outcomes.append(JobOutcome(jr.job, jr.outcome, jr.reason, jr.arrival_s, jr.node, jr.attempts))
        self._flush()
        states = self.sched.states()
        outcomes = [replace(o, state=states[o.job.job_id].value if o.job.job_id in states else "") for o in outcomes]
        outcomes.sort(key=lambda o: (o.job.submit_s, o.job.job_id))
        nodes: dict[str, dict[str, float]] = {}
        for name, node in sorted(self.nodes.items()):
            b = node.battery
            assert b is not None
            nodes[name] = {
                "profile": node.profile.name,  # type: ignore[dict-item]
                "jobs_run": node.jobs_run,
                "utilisation": node.busy_slot_s / (node.profile.slots * self.duration_s),
                "energy_jobs_wh": b.job_wh,
                "energy_idle_wh": b.idle_wh,
                "energy_harvested_wh": b.harvest_wh,
                "min_soc": b.min_wh / b.cap_wh,
                "min_soc_at_s": b.min_t_s,
                "final_soc": b.soc_wh / b.cap_wh,
                "min_soc_floor": node.profile.min_soc,
            }
        curves = {n: (np.array([t for t, _ in s]), np.array([v for _, v in s])) for n, s in self.soc_samples.items()}
        return ReplayResult(self.setup, tuple(outcomes), tuple(self.transfers), tuple(self.runs), tuple(self.rounds),
                            nodes, curves, tuple(self.events), wall_s, self.inference_real_ms, self.agents.started,
                            self.sched.store.path, self.sched.transition_calls, self.sched.store_wall_s)
