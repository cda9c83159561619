"""Greedy list scheduler: the first valid plan, and CP-SAT's full hint.

Jobs are taken by priority (descending), then earliest deadline; each goes into
the first feasible slot among its candidates, earliest arrival first. Every
resource of the shared semantics (``notes/scheduler.md``) is tracked exactly:
node slots, residual contact volumes, node memory (distinct models), model
uplinks counted once per (model, node, route), and the battery, simulated
piecewise-linearly with clipping.

This module also holds the pieces every planner shares (:func:`materialize`,
:class:`EnergyModel`, :class:`Ledger`, :func:`make_plan`) so that greedy,
CP-SAT and the decomposition agree on what a placement costs.

All times are seconds after ``Problem.epoch_utc``; energy is watt-hours.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from orbit.contact_plan import SUNLIGHT_PENUMBRA, SUNLIGHT_UMBRA, ContactPlan
from scheduler.routing import ContactTable, contact_table, gc_paused, retime_hops
from scheduler.types import Candidate, Hop, Job, NodeProfile, Plan, Problem, ScheduledJob, Unschedulable

# Float noise allowed on time comparisons (s); the validator allows 1 ms, plans are printed to the ms.
TIME_EPS_S = 1e-6
ON_TIME_TOL_S = 1e-3
ENERGY_EPS_WH = 1e-9
# Greedy tries at most this many start times per candidate (slot ends, sunrise times) before moving on.
MAX_START_TRIES = 48

ModelKey = tuple[str, str, tuple[Hop, ...]]  # (model_id, node, model_route)


class FeasibilityLike(Protocol):
    """What the planners read from ``scheduler.feasibility.Feasibility``."""

    @property
    def candidates(self) -> Any: ...  # Sequence[Candidate] (or job_id -> Sequence[Candidate])

    @property
    def unschedulable(self) -> Any: ...  # Sequence[Unschedulable]

    @property
    def capacity_bytes(self) -> Any: ...  # indexable by contact index -> bytes


@dataclass(frozen=True, slots=True)
class Placement:
    """A candidate chosen at a start time (seconds after the epoch)."""

    candidate: Candidate
    start_s: float


# --------------------------------------------------------------------------------------------------
# Shared helpers


def candidate_list(feasibility: FeasibilityLike) -> list[Candidate]:
    """The candidates as one list in a deterministic order (job, node, release)."""
    raw = feasibility.candidates
    cands: list[Candidate] = []
    if isinstance(raw, Mapping):
        for key in sorted(raw):
            cands.extend(raw[key])
    else:
        cands.extend(raw)
    return cands


def capacity_of(feasibility: FeasibilityLike, contact: int) -> int:
    """Volume of contact ``contact`` in bytes."""
    return int(feasibility.capacity_bytes[contact])


def ceil_to(t_s: float, step_s: float) -> float:
    """Smallest multiple of ``step_s`` >= ``t_s`` (robust to float noise)."""
    return math.ceil(t_s / step_s - 1e-9) * step_s


def floor_to(t_s: float, step_s: float) -> float:
    """Largest multiple of ``step_s`` <= ``t_s`` (robust to float noise)."""
    return math.floor(t_s / step_s + 1e-9) * step_s


def arrival_of(cand: Candidate, start_s: float) -> float:
    """When the result of ``cand`` started at ``start_s`` reaches the ground."""
    return max(start_s + cand.duration_s, cand.output_ready_s) + cand.output_transfer_s


def latest_start_of(cand: Candidate, job: Job) -> float:
    """Latest start keeping the window, the output route and the deadline (``-inf`` when none)."""
    if cand.output_ready_s + cand.output_transfer_s > job.deadline_s + TIME_EPS_S:
        return -math.inf
    return min(cand.latest_start_s, cand.latest_end_s - cand.duration_s,
               job.deadline_s - cand.output_transfer_s - cand.duration_s)


def earliest_start_of(cand: Candidate, job: Job, now_s: float) -> float:
    return max(cand.release_s, job.submit_s, now_s)


def materialize(problem: Problem, cand: Candidate, start_s: float, *,
                table: ContactTable | None = None) -> ScheduledJob:
    """The scheduled job of ``cand`` started at ``start_s``.

    The candidate's output hop chain is re-timed (``scheduler.routing.retime_hops``)
    to leave as soon as the job ends; arrival is the end of its last hop, which
    equals ``max(end, output_ready_s) + output_transfer_s``. ``table``: the
    problem's contact table, when the caller holds it.
    """
    end_s = start_s + cand.duration_s
    out = cand.output_route
    if out:
        timed = retime_hops(problem, out, end_s, table=table)
        if timed is None:  # the caller kept end <= latest_end_s, so the chain fits; never silently invent one
            raise ValueError(f"job {cand.job_id!r}: output route does not fit when the job ends at {end_s:.3f} s")
        out = timed
    arrival_s = out[-1].end_s if out else arrival_of(cand, start_s)
    return ScheduledJob(
        job_id=cand.job_id, node=cand.node, start_s=start_s, end_s=end_s, arrival_s=arrival_s,
        input_route=cand.input_route, output_route=out, model_route=cand.model_route, energy_wh=cand.energy_wh,
    )


def route_bytes(hops: Iterable[Hop]) -> dict[int, int]:
    """Bytes per contact index of a route."""
    out: dict[int, int] = {}
    for h in hops:
        out[h.contact] = out.get(h.contact, 0) + int(h.bytes)
    return out


def model_key(job: Job, node: str, model_route: tuple[Hop, ...]) -> ModelKey | None:
    """Identity of a model upload (counted once): None when nothing is uplinked."""
    return (job.model_id, node, model_route) if model_route else None


def plan_objective(problem: Problem, scheduled: Iterable[ScheduledJob]) -> tuple[float, float]:
    """(Σ priority of on-time jobs, Σ priority × latency_s of on-time jobs)."""
    jobs = {j.job_id: j for j in problem.jobs}
    on_time = 0.0
    latency = 0.0
    for sj in scheduled:
        job = jobs.get(sj.job_id)
        if job is not None and sj.arrival_s <= job.deadline_s + ON_TIME_TOL_S:
            on_time += job.priority
            latency += job.priority * (sj.arrival_s - job.submit_s)
    return on_time, latency


def make_plan(problem: Problem, policy: str, scheduled: Iterable[ScheduledJob],
              unschedulable: Iterable[Unschedulable], bound: float, *, started: float, status: str,
              notes: Sequence[str] = ()) -> Plan:
    """A :class:`Plan` listing every job of ``problem`` exactly once (deterministic order)."""
    sched = sorted(scheduled, key=lambda s: (s.start_s, s.job_id))
    have = {s.job_id for s in sched}
    unsched: dict[str, Unschedulable] = {}
    for u in unschedulable:
        if u.job_id not in have and u.job_id not in unsched:
            unsched[u.job_id] = u
    for job in problem.jobs:
        if job.job_id not in have and job.job_id not in unsched:
            unsched[job.job_id] = Unschedulable(job.job_id, "no-compute-node: no candidate node for this job")
    objective, latency = plan_objective(problem, sched)
    energy = sum(s.energy_wh for s in sched)
    all_notes = (f"weighted_latency_s={latency:.3f}", f"energy_wh={energy:.6f}", *notes)
    return Plan(policy=policy, scheduled=tuple(sched), unschedulable=tuple(sorted(unsched.values(),
                key=lambda u: u.job_id)), objective=objective, bound=max(bound, objective),
                wall_s=time.perf_counter() - started, status=status, notes=all_notes)


def weighted_latency_s(plan: Plan) -> float:
    """The ``weighted_latency_s`` note of a plan (the secondary objective term)."""
    for note in plan.notes:
        if note.startswith("weighted_latency_s="):
            return float(note.split("=", 1)[1])
    return math.inf


def reachable_bound(problem: Problem, cands: Iterable[Candidate]) -> float:
    """Σ priority of jobs with at least one candidate or a fixed placement (a trivial upper bound)."""
    ids = {c.job_id for c in cands} | {f.job_id for f in problem.fixed}
    return float(sum(j.priority for j in problem.jobs if j.job_id in ids))


# --------------------------------------------------------------------------------------------------
# Energy


@dataclass(frozen=True, slots=True)
class SunSegment:
    """A stretch of constant illumination: ``factor`` of ``solar_w`` is harvested (1, 0.5 or 0)."""

    start_s: float
    end_s: float
    factor: float


def _factor(state: int) -> float:
    if state == SUNLIGHT_UMBRA:
        return 0.0
    if state == SUNLIGHT_PENUMBRA:
        return 0.5
    return 1.0


_SUN_ROWS_CACHE: dict[int, tuple[ContactPlan, dict[int, list[tuple[float, float, float]]]]] = {}


def _sun_rows(cp: ContactPlan) -> dict[int, list[tuple[float, float, float]]]:
    """Sunlight rows ``(start_s, end_s, factor)`` per satellite index, by start (stable), cached per plan.

    One stable sort by (satellite, start) for the whole table gives every satellite's rows in the order a
    per-satellite stable sort of its own rows (taken in table order) would: a mask per node cost more.
    """
    hit = _SUN_ROWS_CACHE.get(id(cp))
    if hit is not None and hit[0] is cp:
        return hit[1]
    out: dict[int, list[tuple[float, float, float]]] = {}
    sl = cp.sunlight
    if sl is not None and len(sl):
        order = np.lexsort((sl.start_s, sl.sat))
        for sat, start, end, state in zip(sl.sat[order].tolist(), sl.start_s[order].tolist(),
                                          sl.end_s[order].tolist(), sl.state[order].tolist(), strict=True):
            out.setdefault(int(sat), []).append((float(start), float(end), _factor(int(state))))
    if len(_SUN_ROWS_CACHE) >= 8:
        _SUN_ROWS_CACHE.pop(next(iter(_SUN_ROWS_CACHE)))
    _SUN_ROWS_CACHE[id(cp)] = (cp, out)
    return out


def sun_segments(problem: Problem, node: str) -> list[SunSegment]:
    """Illumination of ``node`` over ``[now_s, horizon end]``, gaps counted as sunlit (contact-plan rule)."""
    cp = problem.contact_plan
    t0, t1 = problem.now_s, max(problem.now_s, cp.duration_s)
    sl = cp.sunlight
    rows: list[tuple[float, float, float]] = []
    if sl is not None and len(sl) and node in cp.constellation.names:
        rows = _sun_rows(cp).get(cp.constellation.names.index(node), [])
    out: list[SunSegment] = []
    t = t0
    for s, e, f in rows:
        s, e = max(s, t0), min(e, t1)
        if e <= t:
            continue
        if s > t:
            out.append(SunSegment(t, s, 1.0))
        s = max(s, t)
        out.append(SunSegment(s, e, f))
        t = e
    if t < t1:
        out.append(SunSegment(t, t1, 1.0))
    merged: list[SunSegment] = []
    for seg in out:
        if merged and merged[-1].factor == seg.factor and merged[-1].end_s >= seg.start_s:
            merged[-1] = SunSegment(merged[-1].start_s, seg.end_s, seg.factor)
        else:
            merged.append(seg)
    return merged


def per_slot_w(profile: NodeProfile) -> float:
    """Extra power of one running job above idle."""
    return (profile.active_power_w - profile.idle_power_w) / profile.slots


def simulate_min_soc_wh(profile: NodeProfile, segments: Sequence[SunSegment], runs: Iterable[tuple[float, float]],
                        *, constant_jobs: int = 0) -> float:
    """Minimum state of charge (Wh) over the segments' span (see :func:`simulate_soc`)."""
    return simulate_soc(profile, segments, runs, constant_jobs=constant_jobs)[0]


def simulate_soc_wh(profile: NodeProfile, segments: Sequence[SunSegment], runs: Iterable[tuple[float, float]]
                    ) -> float:
    """State of charge (Wh) at the end of the segments' span (see :func:`simulate_soc`)."""
    return simulate_soc(profile, segments, runs)[1]


def simulate_soc(profile: NodeProfile, segments: Sequence[SunSegment], runs: Iterable[tuple[float, float]],
                 *, constant_jobs: int = 0) -> tuple[float, float]:
    """(minimum, final) state of charge (Wh) over the segments' span, exact for the shared battery model.

    Battery starts at ``initial_soc × battery_wh`` at the first segment start, harvests
    ``factor × solar_w``, always draws ``idle_power_w`` plus ``per_slot_w`` per running job
    (``runs`` are ``(start_s, end_s)``; ``constant_jobs`` adds that many jobs running
    throughout) and clips at ``battery_wh``. Between events the power is constant, so
    the minimum is reached at an event.
    """
    cap = profile.battery_wh
    x = profile.initial_soc * cap
    if not segments:
        return x, x
    t0, t1 = segments[0].start_s, segments[-1].end_s
    delta: dict[float, int] = {}
    running = constant_jobs
    for s, e in runs:
        s, e = max(s, t0), min(e, t1)
        if e <= s:
            continue
        if s <= t0:
            running += 1
        else:
            delta[s] = delta.get(s, 0) + 1
        delta[e] = delta.get(e, 0) - 1
    points = sorted({*delta, *(seg.start_s for seg in segments), t1})
    load_w = per_slot_w(profile)
    solar_w, idle_w = profile.solar_w, profile.idle_power_w
    last = len(segments) - 1
    lowest = x
    k = 0
    seg = segments[0]
    # The same arithmetic as min()/max() over each step, written out: this runs for every placement tried
    # on a node whose battery is critical.
    for a, b in itertools.pairwise(points):
        if a > t0:
            running += delta.get(a, 0)
        while k < last and seg.end_s <= a:
            k += 1
            seg = segments[k]
        power_w = seg.factor * solar_w - idle_w - running * load_w
        step = x + power_w * (b - a) / 3600.0
        x = step if step < cap else cap
        if x < lowest:
            lowest = x
    return lowest, x


class EnergyModel:
    """Per-node battery checks shared by the planners.

    A node is *safe* when even all slots busy for the whole horizon keeps the
    battery above the minimum: load only ever lowers the state of charge, so no
    schedule on a safe node can break the battery and no energy check is needed.
    A node whose idle load alone breaks the minimum gets no jobs (reason
    ``energy``). Other nodes are *critical* and every placement is simulated.
    """

    def __init__(self, problem: Problem, nodes: Iterable[str]) -> None:
        self.profiles: dict[str, NodeProfile] = {}
        self.segments: dict[str, list[SunSegment]] = {}
        self.safe: set[str] = set()
        self.dead: set[str] = set()
        self.unprofiled: set[str] = set()
        for node in sorted(set(nodes)):
            profile = problem.profiles_by_node.get(node)
            if profile is None:
                self.unprofiled.add(node)
                continue
            segs = sun_segments(problem, node)
            self.profiles[node] = profile
            self.segments[node] = segs
            floor_wh = self.min_wh(node)
            if simulate_min_soc_wh(profile, segs, (), constant_jobs=profile.slots) >= floor_wh - ENERGY_EPS_WH:
                self.safe.add(node)
            elif simulate_min_soc_wh(profile, segs, ()) < floor_wh - ENERGY_EPS_WH:
                self.dead.add(node)

    def min_wh(self, node: str) -> float:
        p = self.profiles[node]
        return p.min_soc * p.battery_wh

    def ok(self, node: str, runs: Iterable[tuple[float, float]]) -> bool:
        """Whether the node's battery stays above the minimum with these jobs running."""
        if node in self.safe:
            return True
        if node in self.dead or node not in self.profiles:
            return False
        low = simulate_min_soc_wh(self.profiles[node], self.segments[node], runs)
        return low >= self.min_wh(node) - ENERGY_EPS_WH

    def sunrise_times(self, node: str, lo_s: float, hi_s: float) -> list[float]:
        """Starts of illuminated segments in ``[lo_s, hi_s]`` (waiting for the Sun may save a job)."""
        return [s.start_s for s in self.segments.get(node, ()) if s.factor > 0 and lo_s < s.start_s <= hi_s]


# --------------------------------------------------------------------------------------------------
# Resource ledger


@dataclass(slots=True)
class _NodeState:
    slots: int
    busy: list[tuple[float, float]] = field(default_factory=list)  # padded occupancy, sorted
    # The longest padded occupancy in ``busy``: an interval ending after t starts after t - max_span_s, so
    # the intervals that can overlap a window are found by bisection (see Ledger.busy_near).
    max_span_s: float = 0.0
    # Answers of the start search (_try_candidate) since the node last changed, by (lo, hi, pad, duration,
    # preferred start): with the node's occupancy and runs unchanged the same question has the same answer.
    # A large backlog asks it thousands of times (jobs alike in model, source and release time).
    starts_memo: dict[tuple[float, float, float, float, float | None], tuple[float | None, str]] = field(
        default_factory=dict)
    runs: list[tuple[float, float]] = field(default_factory=list)  # exact [start, end] for the battery
    models: set[str] = field(default_factory=set)
    memory_used_bytes: int = 0


@dataclass(frozen=True, slots=True)
class _CapacityView:
    """``capacity_of(feasibility, c)`` as ``view[c]``."""

    feasibility: FeasibilityLike

    def __getitem__(self, contact: int) -> int:
        return capacity_of(self.feasibility, contact)


class Ledger:
    """Residual resources while placements are added one by one (slots, volumes, memory, uploads, energy)."""

    def __init__(self, problem: Problem, feasibility: FeasibilityLike, energy: EnergyModel,
                 step_s: float = 1.0) -> None:
        self.problem = problem
        self.feasibility = feasibility
        self.energy = energy
        self.step_s = step_s
        self.jobs = {j.job_id: j for j in problem.jobs}
        self.used_bytes: dict[int, int] = {}
        self.paid_models: set[ModelKey] = set()
        self.nodes: dict[str, _NodeState] = {}
        self.memory_cap: dict[str, int] = {}
        # Contact volumes as Python ints when they come as an array (capacity_of per lookup is a numpy scalar
        # access); anything else indexable is asked through capacity_of.
        raw = feasibility.capacity_bytes
        self.capacity: Any = ([int(b) for b in raw.tolist()] if isinstance(raw, np.ndarray)
                              else _CapacityView(feasibility))

    def node(self, name: str) -> _NodeState:
        state = self.nodes.get(name)
        if state is None:
            profile = self.problem.profiles_by_node.get(name)
            state = _NodeState(slots=profile.slots if profile else 1)
            if profile is not None:
                self.memory_cap[name] = profile.memory_bytes
                for mid in sorted(set(profile.resident_models)):
                    state.models.add(mid)
                    spec = self.problem.models.get(mid)
                    state.memory_used_bytes += spec.memory_bytes if spec else 0
            self.nodes[name] = state
        return state

    def residual(self, contact: int) -> int:
        return self.capacity[contact] - self.used_bytes.get(contact, 0)

    def padded_end(self, start_s: float, duration_s: float) -> float:
        return start_s + ceil_to(duration_s, self.step_s)

    # -- checks -----------------------------------------------------------------------------------
    def demand(self, job: Job, node: str, routes: Sequence[tuple[Hop, ...]],
               model_route: tuple[Hop, ...]) -> dict[int, int]:
        # Summed hop by hop: the same totals, in the same key order, as adding up route_bytes of each route.
        need: dict[int, int] = {}
        for r in routes:
            for h in r:
                need[h.contact] = need.get(h.contact, 0) + int(h.bytes)
        key = model_key(job, node, model_route)
        if key is not None and key not in self.paid_models:
            for h in model_route:
                need[h.contact] = need.get(h.contact, 0) + int(h.bytes)
        return need

    def links_ok(self, need: Mapping[int, int]) -> bool:
        capacity, used = self.capacity, self.used_bytes
        return all(capacity[c] - used.get(c, 0) >= b for c, b in need.items())

    def memory_ok(self, job: Job, node: str) -> bool:
        state = self.node(node)
        if job.model_id in state.models:
            return True
        spec = self.problem.models.get(job.model_id)
        need = spec.memory_bytes if spec else 0
        return state.memory_used_bytes + need <= self.memory_cap.get(node, 0)

    @staticmethod
    def busy_near(state: _NodeState, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """The part of ``state.busy`` (in order) that holds every interval ending after ``start_s`` and starting
        before ``end_s``, and a few more: callers filter it with their exact condition. Bisection, not a scan:
        on a saturated node of a large backlog the scans were most of a greedy round."""
        busy = state.busy
        # 1 s of slack below the bound keeps float rounding of start + span from dropping an interval.
        lo = bisect.bisect_left(busy, (start_s - state.max_span_s - 1.0, -math.inf))
        hi = bisect.bisect_left(busy, (end_s, math.inf))
        return busy[lo:hi]

    def slot_free(self, node: str, start_s: float, end_s: float) -> bool:
        state = self.node(node)
        overlapping = [(s, e) for s, e in self.busy_near(state, start_s, end_s) if s < end_s and e > start_s]
        if len(overlapping) < state.slots:
            return True
        # Peak concurrency inside [start, end): evaluated at the window start and each overlapping start.
        for t in {start_s, *(s for s, _ in overlapping if s > start_s)}:
            if sum(1 for s, e in overlapping if s <= t < e) >= state.slots:
                return False
        return True

    # -- commits ----------------------------------------------------------------------------------
    def add(self, sj: ScheduledJob, model_id: str | None) -> None:
        """Consume the resources of a placed (or fixed) job."""
        state = self.node(sj.node)
        end_s = self.padded_end(sj.start_s, sj.end_s - sj.start_s)
        bisect.insort(state.busy, (sj.start_s, end_s))
        state.starts_memo.clear()
        state.max_span_s = max(state.max_span_s, end_s - sj.start_s)
        state.runs.append((sj.start_s, sj.end_s))
        for r in (sj.input_route, sj.output_route):
            for c, b in route_bytes(r).items():
                self.used_bytes[c] = self.used_bytes.get(c, 0) + b
        if model_id is not None:
            key = (model_id, sj.node, sj.model_route) if sj.model_route else None
            if key is not None and key not in self.paid_models:
                self.paid_models.add(key)
                for c, b in route_bytes(sj.model_route).items():
                    self.used_bytes[c] = self.used_bytes.get(c, 0) + b
            if model_id not in state.models:
                state.models.add(model_id)
                spec = self.problem.models.get(model_id)
                state.memory_used_bytes += spec.memory_bytes if spec else 0


# --------------------------------------------------------------------------------------------------
# Greedy


@dataclass(frozen=True, slots=True)
class GreedyResult:
    """The greedy plan and the placement behind each scheduled (non-fixed) job."""

    plan: Plan
    placements: dict[str, Placement]


def _try_candidate(ledger: Ledger, job: Job, cand: Candidate, now_s: float,
                   preferred_start_s: float | None = None) -> tuple[float | None, str]:
    """Earliest feasible start of ``cand`` given the ledger, or (None, failure code)."""
    step = ledger.step_s
    lo = ceil_to(earliest_start_of(cand, job, now_s), step)
    hi = floor_to(latest_start_of(cand, job), step) if math.isfinite(latest_start_of(cand, job)) else -math.inf
    if lo > hi:
        return None, "deadline"
    node = cand.node
    if node in ledger.energy.dead:
        return None, "energy"
    if not ledger.memory_ok(job, node):
        return None, "memory"
    need = ledger.demand(job, node, (cand.input_route, cand.output_route), cand.model_route)
    if not ledger.links_ok(need):
        return None, "link"
    state = ledger.node(node)
    pad = ceil_to(cand.duration_s, step)
    p = ceil_to(preferred_start_s, step) if preferred_start_s is not None else None
    key = (lo, hi, pad, cand.duration_s, p if p is not None and lo <= p <= hi else None)
    known = state.starts_memo.get(key)
    if known is None:
        known = state.starts_memo[key] = _first_start(ledger, state, node, lo, hi, pad, cand.duration_s, key[4])
    return known


def _first_start(ledger: Ledger, state: _NodeState, node: str, lo: float, hi: float, pad: float, duration_s: float,
                 preferred_s: float | None) -> tuple[float | None, str]:
    """The start search of :func:`_try_candidate` on ``node``: a pure function of its arguments and of the
    node's occupancy and runs (the energy model is fixed for a round)."""
    step = ledger.step_s
    starts = [lo] if preferred_s is None else [preferred_s, lo]
    starts.extend(ceil_to(e, step) for _, e in Ledger.busy_near(state, lo, hi + 1.0) if lo < e <= hi)
    critical = node not in ledger.energy.safe
    if critical:
        starts.extend(ceil_to(t, step) for t in ledger.energy.sunrise_times(node, lo, hi))
    head, tail = starts[:1], sorted(set(starts[1:]) - set(starts[:1]))
    failure = "slot"
    for t in (head + tail)[:MAX_START_TRIES]:
        if not ledger.slot_free(node, t, t + pad):
            continue
        if critical and not ledger.energy.ok(node, [*state.runs, (t, t + duration_s)]):
            failure = "energy"
            continue
        return t, ""
    return None, failure


def _reason(failures: set[str]) -> str:
    if failures <= {"energy"} and failures:
        return "energy: the battery would fall below min_soc on every candidate node"
    if failures <= {"deadline"} and failures:
        return "deadline: no candidate can start early enough to deliver by the deadline"
    parts = []
    if "slot" in failures:
        parts.append("no slot free")
    if "link" in failures:
        parts.append("contact volume used up")
    if "memory" in failures:
        parts.append("node memory full")
    if "energy" in failures:
        parts.append("battery")
    return f"capacity: {', '.join(parts) or 'no slot free'} / lost to higher priority jobs"


def job_order(jobs: Iterable[Job]) -> list[Job]:
    """Priority descending, then earliest deadline, then id (the greedy's and decomposition's order)."""
    return sorted(jobs, key=lambda j: (-j.priority, j.deadline_s, j.submit_s, j.job_id))


def greedy_assign(problem: Problem, feasibility: FeasibilityLike, *, step_s: float = 1.0,
                  preferred: Mapping[str, tuple[str, float]] | None = None,
                  policy: str = "greedy") -> GreedyResult:
    """Greedy placement with the details the other planners need.

    Parameters
    ----------
    step_s
        Starts are multiples of this (s) and slots are held for the duration rounded up to it,
        so that the plan is also a solution of the CP-SAT model at that resolution.
    preferred
        job_id -> (node, start_s) tried first (a previous plan, for re-planning).
    """
    started = time.perf_counter()
    with gc_paused():  # every placement adds long-lived objects: see scheduler.routing.gc_paused
        return _greedy_assign(problem, feasibility, step_s, preferred, policy, started)


def _greedy_assign(problem: Problem, feasibility: FeasibilityLike, step_s: float,
                   preferred: Mapping[str, tuple[str, float]] | None, policy: str, started: float) -> GreedyResult:
    cands = candidate_list(feasibility)
    by_job: dict[str, list[Candidate]] = {}
    for c in cands:
        by_job.setdefault(c.job_id, []).append(c)
    jobs = {j.job_id: j for j in problem.jobs}
    energy = EnergyModel(problem, {c.node for c in cands} | {f.node for f in problem.fixed})
    ledger = Ledger(problem, feasibility, energy, step_s)
    table = contact_table(problem)
    fixed_ids = {f.job_id for f in problem.fixed}
    for f in problem.fixed:
        job = jobs.get(f.job_id)
        ledger.add(f, job.model_id if job else None)

    placements: dict[str, Placement] = {}
    scheduled: list[ScheduledJob] = list(problem.fixed)
    unsched: list[Unschedulable] = [u for u in feasibility.unschedulable if u.job_id not in fixed_ids]
    listed = {u.job_id for u in unsched}
    now_s = problem.now_s
    pref = preferred or {}
    for job in job_order(j for j in problem.jobs if j.job_id not in fixed_ids):
        options = by_job.get(job.job_id, [])
        if not options:
            if job.job_id not in listed:
                unsched.append(Unschedulable(job.job_id, "no-contact: no contact reaches a compute node "
                                                         "before the deadline"))
            continue
        # arrival_of(c, earliest_start_of(c, job, now_s)) written out (same arithmetic): this key runs per candidate.
        submit_s = job.submit_s
        ordered = sorted(options, key=lambda c: (
            max(max(c.release_s, submit_s, now_s) + c.duration_s, c.output_ready_s) + c.output_transfer_s,
            c.node, c.release_s))
        hint = pref.get(job.job_id)
        if hint is not None:
            ordered.sort(key=lambda c: c.node != hint[0])  # stable: hinted node first
        failures: set[str] = set()
        for cand in ordered:
            t, failure = _try_candidate(ledger, job, cand, now_s,
                                        hint[1] if hint is not None and hint[0] == cand.node else None)
            if t is None:
                failures.add(failure)
                continue
            sj = materialize(problem, cand, t, table=table)
            ledger.add(sj, job.model_id)
            scheduled.append(sj)
            placements[job.job_id] = Placement(cand, t)
            break
        else:
            unsched.append(Unschedulable(job.job_id, _reason(failures)))
    dead = sorted(energy.dead)
    notes = (f"energy-dead nodes: {', '.join(dead)}",) if dead else ()
    plan = make_plan(problem, policy, scheduled, unsched, reachable_bound(problem, cands), started=started,
                     status="FEASIBLE", notes=notes)
    return GreedyResult(plan, placements)


def check_placements(problem: Problem, feasibility: FeasibilityLike, placements: Iterable[Placement], *,
                     step_s: float = 1.0) -> list[str]:
    """Replay placements through the ledger: what each would break (empty when all fit).

    An independent guard for solver output (slots at ``step_s`` padding, volumes,
    memory, uploads and the exact battery simulation), used before a CP-SAT plan
    replaces the greedy one.
    """
    jobs = {j.job_id: j for j in problem.jobs}
    items = sorted(placements, key=lambda p: (p.start_s, p.candidate.job_id))
    energy = EnergyModel(problem, {p.candidate.node for p in items} | {f.node for f in problem.fixed})
    ledger = Ledger(problem, feasibility, energy, step_s)
    for f in problem.fixed:
        job = jobs.get(f.job_id)
        ledger.add(f, job.model_id if job else None)
    problems: list[str] = []
    for p in items:
        cand, job = p.candidate, jobs[p.candidate.job_id]
        lo = earliest_start_of(cand, job, problem.now_s)
        hi = latest_start_of(cand, job)
        if not lo - TIME_EPS_S <= p.start_s <= hi + TIME_EPS_S:
            problems.append(f"{job.job_id}: start {p.start_s} outside [{lo}, {hi}]")
        if not ledger.memory_ok(job, cand.node):
            problems.append(f"{job.job_id}: memory on {cand.node}")
        if not ledger.links_ok(ledger.demand(job, cand.node, (cand.input_route, cand.output_route),
                                             cand.model_route)):
            problems.append(f"{job.job_id}: contact volume")
        if not ledger.slot_free(cand.node, p.start_s, ledger.padded_end(p.start_s, cand.duration_s)):
            problems.append(f"{job.job_id}: no slot on {cand.node}")
        ledger.add(materialize(problem, cand, p.start_s), job.model_id)
    for node, state in sorted(ledger.nodes.items()):
        if node in energy.profiles and not energy.ok(node, state.runs):
            problems.append(f"{node}: battery below min_soc")
    return problems


def greedy_plan(problem: Problem, feasibility: FeasibilityLike, *, step_s: float = 1.0,
                preferred: Mapping[str, tuple[str, float]] | None = None) -> Plan:
    """Greedy plan: priority, then earliest deadline, each job at its earliest feasible arrival.

    Parameters
    ----------
    problem
        The planning problem (times in seconds after ``problem.epoch_utc``).
    feasibility
        Candidates and per-contact capacities (``scheduler.feasibility.build_candidates``).
    step_s
        Time resolution of starts (s); 1 s matches the CP-SAT model.
    preferred
        Optional job_id -> (node, start_s) placements tried first.

    Returns
    -------
    Plan
        Valid on its own; ``bound`` is Σ priority of jobs with at least one candidate.
    """
    return greedy_assign(problem, feasibility, step_s=step_s, preferred=preferred).plan
