"""CP-SAT placement: improve the greedy plan and prove how far from optimal it is.

Steps kept apart (house style): :func:`build_model` (variables and constraints),
:func:`solve_placements` (two solver phases from a full greedy hint),
:func:`solve` (a :class:`~scheduler.types.Plan`), reporting in
:func:`report_lines`.

Model (time in integer units of ``step_s`` seconds after the epoch):

- one *option* per candidate (per sunlight segment on energy-critical nodes):
  presence literal ``x_{job}_{node}_{k}``, start ``s_{job}_{node}_{k}`` within
  [release, latest start keeping window and deadline], optional interval of
  ``ceil(duration / step_s)`` units; ``add_at_most_one`` per job;
- ``add_no_overlap`` (one slot) or ``add_cumulative`` (several) per node;
- model-on-node booleans ``m_{model}_{node}`` for memory, and upload booleans
  ``u_{model}_{node}`` so a model's uplink bytes count once per (model, node);
- per contact: Σ hop bytes of chosen options + uploads <= capacity (minus
  bytes of fixed jobs);
- energy on *critical* nodes only (see :class:`scheduler.greedy.EnergyModel`;
  on other nodes no schedule can break the battery): the sound linear form of
  ``notes/scheduler.md`` over sunlight segments, each option attributed to
  every segment it may overlap (options are split per segment so that this
  stays tight);
- ``a_{job}_{node}_{k} = max(end, output_ready)`` (AddMaxEquality), arrival
  ``a + output_transfer``; the deadline is enforced exactly (in seconds) on
  the start domain, which is the same constraint and propagates best.

Rounding is conservative: starts are multiples of ``step_s`` inside the exact
window, slots are held for the duration rounded up, energy is rounded up,
harvest down, capacities are exact integers.

Objective, solved lexicographically in two phases rather than with one big
weight (a weight large enough to dominate Σ priority × latency over a day
would be ~1e9 and ruins the LP relaxation and the bound): phase 1 maximises
Σ priority of on-time jobs (every placed job is on time: the deadline is a
hard constraint of an option), giving the proven bound; phase 2 fixes that
sum and minimises 1000 × Σ priority × latency (in ``step_s`` units) + energy
in mWh, so one second of priority-1 latency weighs as much as 1 Wh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from scheduler.greedy import (
    ENERGY_EPS_WH,
    EnergyModel,
    FeasibilityLike,
    GreedyResult,
    Placement,
    arrival_of,
    candidate_list,
    capacity_of,
    check_placements,
    earliest_start_of,
    greedy_assign,
    latest_start_of,
    make_plan,
    materialize,
    per_slot_w,
    route_bytes,
    weighted_latency_s,
)
from scheduler.types import Candidate, Plan, Problem, ScheduledJob, Unschedulable

MICRO_WH_PER_WH = 1_000_000
LATENCY_WEIGHT = 1000  # per priority x time unit, against energy in mWh
MAX_SEGMENT_SPLITS = 4  # an option on a critical node is split over at most this many sunlight segments
# Presolve is what gives CP-SAT a useful bound (8.5k options: bound 3,531 vs 47,290 without), but its probing
# step alone took 23 s there (2 shared cores): presolve runs without probing, and above this many options not
# at all (16.5k options: ~7 s of presolve left no time; without it the complete hint loads at once and LNS
# improved it by 4 % in 10 s).
PRESOLVE_MAX_OPTIONS = 10_000
# A deterministic run (CpSatParams.deterministic) is stopped by the wall clock only at this multiple of its limit.
DETERMINISTIC_WALL_FACTOR = 4.0


@dataclass(frozen=True, slots=True)
class CpSatParams:
    """Solver settings. ``workers=0`` means one per CPU; ``step_s=None`` picks 1 s up to a 4-day horizon."""

    time_limit_s: float = 10.0
    workers: int = 0
    seed: int = 0
    step_s: float | None = None
    max_candidates_per_job: int = 8
    phase1_share: float = 0.7
    dump_path: str | None = None
    log_search: bool = False
    presolve: bool | None = None  # None: only for models up to PRESOLVE_MAX_OPTIONS options
    # Reproducible with any worker count: CP-SAT's interleaved search, limits in deterministic time (CP-SAT's
    # work unit, "as close as possible to a second"), budgets split without looking at the wall clock. The wall
    # clock only caps a run at DETERMINISTIC_WALL_FACTOR x the limit; a capped run says so in its notes.
    deterministic: bool = False

    def __post_init__(self) -> None:
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s: must be > 0, got {self.time_limit_s!r}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0, got {self.workers!r}")
        if self.step_s is not None and not self.step_s > 0:
            raise ValueError(f"step_s: must be > 0, got {self.step_s!r}")
        if self.max_candidates_per_job < 1:
            raise ValueError("max_candidates_per_job: must be >= 1")
        if not 0 < self.phase1_share <= 1:
            raise ValueError("phase1_share: must be in (0, 1]")

    def resolved_workers(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


def resolve_step_s(problem: Problem, params: CpSatParams) -> float:
    """Time resolution: 1 s for horizons up to 4 days, coarser beyond (keeps domains below ~350k units)."""
    if params.step_s is not None:
        return params.step_s
    return float(max(1, math.ceil(problem.contact_plan.duration_s / 345_600.0)))


@dataclass(frozen=True, slots=True)
class Option:
    """One placement choice in the model: a candidate with a start window in whole time units."""

    candidate: Candidate
    lo: int  # start window, time units
    hi: int
    segments: tuple[int, ...]  # energy segments it may overlap (critical nodes only)
    name: str


@dataclass(slots=True)
class EnergyChain:
    """The battery chain of one critical node (µWh), kept to write complete hints."""

    soc0_u: int
    cap_u: int
    harvest_u: list[int]
    fixed_use_u: list[int]
    use_by_segment: dict[int, list[tuple[int, int]]]  # segment -> [(option index, µWh)]
    top_vars: list[cp_model.IntVar] = field(default_factory=list)
    soc_vars: list[cp_model.IntVar] = field(default_factory=list)


@dataclass(slots=True)
class CpSatVars:
    """Variables of the model, with lookups named ``x_by_y``."""

    step_s: float
    options: list[Option] = field(default_factory=list)
    presence_by_option: list[cp_model.IntVar] = field(default_factory=list)
    start_by_option: list[cp_model.IntVar] = field(default_factory=list)
    arrival_by_option: list[cp_model.IntVar | None] = field(default_factory=list)  # only when output waits
    options_by_job: dict[str, list[int]] = field(default_factory=dict)
    model_on_node: dict[tuple[str, str], cp_model.IntVar] = field(default_factory=dict)
    upload_by_model_node: dict[tuple[str, str], cp_model.IntVar] = field(default_factory=dict)
    soc_by_node: dict[str, list[cp_model.IntVar]] = field(default_factory=dict)
    priority_terms: list[tuple[cp_model.IntVar, int]] = field(default_factory=list)
    latency_terms: list[tuple[cp_model.LinearExprT, int]] = field(default_factory=list)
    latency_by_option: list[cp_model.IntVar | None] = field(default_factory=list)
    dur_ready_by_option: list[tuple[int, int]] = field(default_factory=list)  # (duration, output ready) units
    model_key_by_option: list[tuple[str, str] | None] = field(default_factory=list)
    upload_key_by_option: list[tuple[str, str] | None] = field(default_factory=list)
    chain_by_node: dict[str, EnergyChain] = field(default_factory=dict)
    dropped_options: int = 0


@functools.lru_cache(maxsize=65_536)
def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in text)


def _fixed_model_ids(problem: Problem, fixed: Iterable[ScheduledJob]) -> list[tuple[ScheduledJob, str | None]]:
    jobs = {j.job_id: j for j in problem.jobs}
    return [(f, jobs[f.job_id].model_id if f.job_id in jobs else None) for f in fixed]


def build_model(problem: Problem, feasibility: FeasibilityLike, params: CpSatParams, *,
                jobs: Iterable[str] | None = None, fixed: Sequence[ScheduledJob] = (),
                keep: Mapping[str, Placement] | None = None, energy: EnergyModel | None = None
                ) -> tuple[cp_model.CpModel, CpSatVars]:
    """The CP-SAT model of placing ``jobs`` (default: all not fixed) around ``fixed`` jobs.

    Parameters
    ----------
    fixed
        Placements whose resources are consumed as constants (``problem.fixed`` is always added).
    keep
        Placements whose candidate must stay among the options (the hint's), even when
        ``max_candidates_per_job`` prunes the others.
    energy
        A prebuilt battery model covering the nodes involved (reused across decomposition pieces).

    Returns
    -------
    (model, vars)
    """
    step = resolve_step_s(problem, params)
    model = cp_model.CpModel()
    v = CpSatVars(step_s=step)
    job_by_id = {j.job_id: j for j in problem.jobs}
    all_fixed = [*problem.fixed, *(f for f in fixed if f.job_id not in {g.job_id for g in problem.fixed})]
    fixed_ids = {f.job_id for f in all_fixed}
    wanted = set(job_by_id) - fixed_ids if jobs is None else set(jobs) - fixed_ids
    keep = keep or {}

    cands_by_job: dict[str, list[Candidate]] = {}
    for c in candidate_list(feasibility):
        if c.job_id in wanted:
            cands_by_job.setdefault(c.job_id, []).append(c)
    nodes = sorted({c.node for cs in cands_by_job.values() for c in cs} | {f.node for f in all_fixed})
    if energy is None or not set(nodes) <= set(energy.profiles) | energy.unprofiled:
        energy = EnergyModel(problem, nodes)

    # ---- options ---------------------------------------------------------------------------------
    for job_id in sorted(cands_by_job):
        job = job_by_id[job_id]
        cands = cands_by_job[job_id]
        ranked = sorted(range(len(cands)), key=lambda i: (
            arrival_of(cands[i], earliest_start_of(cands[i], job, problem.now_s)), cands[i].node, i))
        chosen = ranked[:params.max_candidates_per_job]
        hinted = keep.get(job_id)
        if hinted is not None:
            for i, c in enumerate(cands):
                if c is hinted.candidate or c == hinted.candidate:
                    if i not in chosen:
                        chosen.append(i)
                    break
        v.dropped_options += len(cands) - len(chosen)
        per_node: dict[str, int] = {}
        for i in sorted(chosen):
            c = cands[i]
            if c.node in energy.dead:
                continue
            lo = math.ceil(earliest_start_of(c, job, problem.now_s) / step - 1e-9)
            late = latest_start_of(c, job)
            if not math.isfinite(late):
                continue
            hi = math.floor(late / step + 1e-9)
            if lo > hi:
                continue
            must = None
            if hinted is not None and (hinted.candidate is c or hinted.candidate == c):
                must = math.ceil(hinted.start_s / step - 1e-9)
            for seg_lo, seg_hi, segs in _split_by_segment(energy, c, lo, hi, step, must):
                k = per_node.get(c.node, 0)
                per_node[c.node] = k + 1
                name = f"{_safe(job_id)}_{_safe(c.node)}_{k}"
                v.options_by_job.setdefault(job_id, []).append(len(v.options))
                v.options.append(Option(c, seg_lo, seg_hi, segs, name))

    intervals_by_node: dict[str, list[cp_model.IntervalVar]] = {}
    for opt in v.options:
        c = opt.candidate
        job = job_by_id[c.job_id]
        dur_u = math.ceil(c.duration_s / step - 1e-9)
        x = model.new_bool_var(f"x_{opt.name}")
        s = model.new_int_var(opt.lo, opt.hi, f"s_{opt.name}")
        iv = model.new_optional_fixed_size_interval_var(s, dur_u, x, f"i_{opt.name}")
        ready_u = max(0, math.ceil(c.output_ready_s / step - 1e-9) if math.isfinite(c.output_ready_s) else 0)
        v.presence_by_option.append(x)
        v.start_by_option.append(s)
        intervals_by_node.setdefault(c.node, []).append(iv)
        v.priority_terms.append((x, job.priority))
        transfer_u = math.ceil(c.output_transfer_s / step - 1e-9)
        submit_u = math.floor(job.submit_s / step + 1e-9)
        if ready_u > opt.lo + dur_u:
            # The result may wait for its first contact: arrival = max(end, output ready) + transfer.
            top = max(opt.hi + dur_u, ready_u)
            arrival = model.new_int_var(ready_u, top, f"a_{opt.name}")
            model.add_max_equality(arrival, [s + dur_u, ready_u])
            latency = model.new_int_var(0, top, f"l_{opt.name}")
            model.add(latency >= arrival).only_enforce_if(x)
            v.latency_terms.append((latency + (transfer_u - submit_u) * x, job.priority))
            a: cp_model.IntVar | None = arrival
            lat: cp_model.IntVar | None = latency
        else:
            # arrival = start + duration + transfer for every start: (s - lo) is free (0) when absent.
            a = lat = None
            v.latency_terms.append((s - opt.lo + (opt.lo + dur_u + transfer_u - submit_u) * x, job.priority))
        v.arrival_by_option.append(a)
        v.latency_by_option.append(lat)
        v.dur_ready_by_option.append((dur_u, ready_u))
        v.model_key_by_option.append(None)
        v.upload_key_by_option.append(None)

    for job_id in sorted(v.options_by_job):
        model.add_at_most_one(v.presence_by_option[i] for i in v.options_by_job[job_id])

    # ---- slots -----------------------------------------------------------------------------------
    fixed_models = _fixed_model_ids(problem, all_fixed)
    for f, _ in fixed_models:
        s_u = max(0, math.floor(f.start_s / step + 1e-9))
        e_u = max(s_u, math.ceil((f.start_s + math.ceil((f.end_s - f.start_s) / step - 1e-9) * step) / step - 1e-9))
        if e_u > math.floor(problem.now_s / step) and e_u > s_u:
            intervals_by_node.setdefault(f.node, []).append(
                model.new_fixed_size_interval_var(s_u, e_u - s_u, f"fixed_{_safe(f.job_id)}_{_safe(f.node)}"))
    for node in sorted(intervals_by_node):
        profile = problem.profiles_by_node.get(node)
        slots = profile.slots if profile else 1
        ivs = intervals_by_node[node]
        if slots == 1:
            model.add_no_overlap(ivs)
        else:
            model.add_cumulative(ivs, [1] * len(ivs), slots)

    # ---- memory and model uploads ------------------------------------------------------------------
    paid_uploads: set[tuple[str, str]] = set()
    models_on: dict[str, set[str]] = {}
    used_bytes: dict[int, int] = {}
    for f, mid in fixed_models:
        for r in (f.input_route, f.output_route):
            for ci, b in route_bytes(r).items():
                used_bytes[ci] = used_bytes.get(ci, 0) + b
        if mid is not None:
            models_on.setdefault(f.node, set()).add(mid)
            if f.model_route and (mid, f.node) not in paid_uploads:
                paid_uploads.add((mid, f.node))
                for ci, b in route_bytes(f.model_route).items():
                    used_bytes[ci] = used_bytes.get(ci, 0) + b
    for node in nodes:
        profile = problem.profiles_by_node.get(node)
        if profile is not None:
            models_on.setdefault(node, set()).update(profile.resident_models)
    upload_route: dict[tuple[str, str], dict[int, int]] = {}
    for i, opt in enumerate(v.options):
        c = opt.candidate
        mid = job_by_id[c.job_id].model_id
        key = (mid, c.node)
        x = v.presence_by_option[i]
        if mid not in models_on.get(c.node, set()):
            m = v.model_on_node.get(key)
            if m is None:
                m = model.new_bool_var(f"m_{_safe(mid)}_{_safe(c.node)}")
                v.model_on_node[key] = m
            model.add_implication(x, m)
            v.model_key_by_option[i] = key
        if c.model_route and key not in paid_uploads:
            u = v.upload_by_model_node.get(key)
            if u is None:
                u = model.new_bool_var(f"u_{_safe(mid)}_{_safe(c.node)}")
                v.upload_by_model_node[key] = u
                upload_route[key] = route_bytes(c.model_route)
            model.add_implication(x, u)
            v.upload_key_by_option[i] = key
    for node in nodes:
        profile = problem.profiles_by_node.get(node)
        terms = [(m, problem.models[mid].memory_bytes) for (mid, n), m in sorted(v.model_on_node.items())
                 if n == node and mid in problem.models]
        if profile is None or not terms:
            continue
        used = sum(problem.models[mid].memory_bytes for mid in models_on.get(node, set()) if mid in problem.models)
        free = profile.memory_bytes - used
        if sum(w for _, w in terms) > free:
            model.add(sum(m * w for m, w in terms) <= max(free, 0))

    # ---- contact volumes ---------------------------------------------------------------------------
    demand_by_contact: dict[int, list[tuple[cp_model.IntVar, int]]] = {}
    for i, opt in enumerate(v.options):
        c = opt.candidate
        need: dict[int, int] = {}
        for r in (c.input_route, c.output_route):
            for ci, b in route_bytes(r).items():
                need[ci] = need.get(ci, 0) + b
        for ci in sorted(need):
            demand_by_contact.setdefault(ci, []).append((v.presence_by_option[i], need[ci]))
    for key in sorted(upload_route):
        for ci, b in sorted(upload_route[key].items()):
            demand_by_contact.setdefault(ci, []).append((v.upload_by_model_node[key], b))
    for ci in sorted(demand_by_contact):
        terms = demand_by_contact[ci]
        free = capacity_of(feasibility, ci) - used_bytes.get(ci, 0)
        if sum(b for _, b in terms) > free:
            model.add(sum(x * b for x, b in terms) <= max(free, 0))

    # ---- energy on critical nodes ------------------------------------------------------------------
    _add_energy(model, v, problem, energy, all_fixed, step)

    return model, v


def _split_by_segment(energy: EnergyModel, c: Candidate, lo: int, hi: int, step: float,
                      must_unit: int | None = None) -> list[tuple[int, int, tuple[int, ...]]]:
    """Start windows (units) of an option, split per sunlight segment on critical nodes.

    At most ``MAX_SEGMENT_SPLITS`` segments are kept (the earliest), plus the one holding
    ``must_unit`` (the hinted start) so that the hint stays representable.
    """
    if c.node in energy.safe or c.node not in energy.segments:
        return [(lo, hi, ())]
    segs = energy.segments[c.node]
    out: list[tuple[int, int, tuple[int, ...]]] = []
    for k, seg in enumerate(segs):
        a = max(lo, math.ceil(seg.start_s / step - 1e-9))
        b = min(hi, math.ceil(seg.end_s / step - 1e-9) - 1)
        if a > b:
            continue
        holds_hint = must_unit is not None and a <= must_unit <= b
        if len(out) >= MAX_SEGMENT_SPLITS and not holds_hint:
            continue
        run_lo, run_hi = a * step, b * step + c.duration_s
        touched = tuple(j for j in range(k, len(segs)) if segs[j].start_s < run_hi and segs[j].end_s > run_lo)
        out.append((a, b, touched or (k,)))
    return out


def _add_energy(model: cp_model.CpModel, v: CpSatVars, problem: Problem, energy: EnergyModel,
                fixed: Sequence[ScheduledJob], step: float) -> None:
    """Battery chain per critical node: soc_{k+1} = min(cap, soc_k + H_k) - U_k, all >= minimum."""
    use_by_node_seg: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for i, opt in enumerate(v.options):
        node = opt.candidate.node
        if not opt.segments:
            continue
        profile = energy.profiles[node]
        e_wh = max(opt.candidate.energy_wh, opt.candidate.duration_s / 3600.0 * per_slot_w(profile))
        e_u = math.ceil(e_wh * MICRO_WH_PER_WH)
        for k in opt.segments:
            use_by_node_seg.setdefault(node, {}).setdefault(k, []).append((i, e_u))
    fixed_use: dict[str, dict[int, int]] = {}
    for f in fixed:
        if f.node not in use_by_node_seg:
            continue
        profile = energy.profiles[f.node]
        # A fixed run's position is known: charge each segment exactly its overlap (rounded up).
        for k, seg in enumerate(energy.segments[f.node]):
            overlap_s = min(seg.end_s, f.end_s) - max(seg.start_s, f.start_s)
            if overlap_s > 0:
                e_u = math.ceil(overlap_s / 3600.0 * per_slot_w(profile) * MICRO_WH_PER_WH)
                fixed_use.setdefault(f.node, {})[k] = fixed_use.get(f.node, {}).get(k, 0) + e_u
    for node in sorted(use_by_node_seg):
        profile = energy.profiles[node]
        segs = energy.segments[node]
        cap_u = math.floor(profile.battery_wh * MICRO_WH_PER_WH)
        min_u = math.ceil((energy.min_wh(node) - ENERGY_EPS_WH) * MICRO_WH_PER_WH)
        harvest_u = [math.floor((seg.factor * profile.solar_w - profile.idle_power_w) * (seg.end_s - seg.start_s)
                                / 3600.0 * MICRO_WH_PER_WH) for seg in segs]
        soc0 = math.floor(profile.initial_soc * profile.battery_wh * MICRO_WH_PER_WH)
        # Without new jobs the chain must hold, or the model would be infeasible: then keep the node out.
        s = soc0
        ok = True
        for k, h in enumerate(harvest_u):
            fu = fixed_use.get(node, {}).get(k, 0)
            if s - fu < min_u and h >= 0:
                ok = False
            s = min(cap_u, s + h) - fu
            if s < min_u:
                ok = False
        if not ok:
            for ks in use_by_node_seg[node].values():
                for i, _ in ks:
                    model.add(v.presence_by_option[i] == 0)
            continue
        uses = use_by_node_seg[node]
        chain = EnergyChain(soc0, cap_u, harvest_u, [fixed_use.get(node, {}).get(k, 0) for k in range(len(segs))],
                            uses)
        soc: list[cp_model.IntVar] = [model.new_constant(soc0)]
        for k, h in enumerate(harvest_u):
            terms = uses.get(k, [])
            fu = chain.fixed_use_u[k]
            use = (cp_model.LinearExpr.weighted_sum([v.presence_by_option[i] for i, _ in terms],
                                                    [e for _, e in terms]) + fu) if terms else fu
            top = model.new_int_var(-(10**15), cap_u, f"h_{_safe(node)}_{k}")
            model.add_min_equality(top, [cap_u, soc[k] + h])
            nxt = model.new_int_var(min_u, cap_u, f"soc_{_safe(node)}_{k + 1}")
            model.add(nxt == top - use)
            if h >= 0:
                model.add(soc[k] - use >= min_u)
            soc.append(nxt)
            chain.top_vars.append(top)
            chain.soc_vars.append(nxt)
        v.soc_by_node[node] = soc
        v.chain_by_node[node] = chain


# --------------------------------------------------------------------------------------------------
# Solving


@dataclass(frozen=True, slots=True)
class SolveReport:
    """Outcome of one CP-SAT solve over some jobs: the placements to use (never worse than the hint)."""

    placements: dict[str, Placement]
    status: str
    objective: float  # Σ priority of the placed jobs (primary term)
    bound: float  # CP-SAT's proven bound on the primary term (inf when the solver proved nothing)
    wall_s: float
    improved: bool
    notes: tuple[str, ...] = ()


def _solver(params: CpSatParams, time_limit_s: float, n_options: int) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    presolve = params.presolve if params.presolve is not None else n_options <= PRESOLVE_MAX_OPTIONS
    solver.parameters.cp_model_presolve = presolve
    solver.parameters.cp_model_probing_level = 0
    if params.deterministic:
        # One worker searches deterministically on its own; several need the interleaved (batched) search.
        solver.parameters.interleave_search = params.resolved_workers() > 1
        solver.parameters.max_deterministic_time = max(0.05, time_limit_s)
        solver.parameters.max_time_in_seconds = DETERMINISTIC_WALL_FACTOR * max(0.05, time_limit_s)
    else:
        solver.parameters.max_time_in_seconds = max(0.05, time_limit_s)
    solver.parameters.random_seed = params.seed
    solver.parameters.num_workers = params.resolved_workers()
    solver.parameters.log_search_progress = params.log_search
    return solver


def _note_wall_cap(params: CpSatParams, solver: cp_model.CpSolver, limit: float, notes: list[str]) -> None:
    if params.deterministic and solver.wall_time >= 0.99 * DETERMINISTIC_WALL_FACTOR * max(0.05, limit):
        notes.append("deterministic run stopped by its wall-clock cap: this plan may not be reproducible")


def _add_hints(model: cp_model.CpModel, v: CpSatVars, chosen: Mapping[int, int]) -> None:
    """A complete hint: presence and start of every option and every auxiliary variable's implied value.

    A complete, feasible hint is taken by CP-SAT as its first solution at once; a partial one
    (presence and starts only) was measured not to be completed within 10 s at 16k options.
    Written to the proto in bulk (``add_hint`` per variable cost 1.5 s at 16k options).
    """
    model.clear_hints()
    idx: list[int] = []
    val: list[int] = []
    present_models: set[tuple[str, str] | None] = set()
    present_uploads: set[tuple[str, str] | None] = set()
    for i in range(len(v.options)):
        on = i in chosen
        start = chosen.get(i, v.options[i].lo)
        idx.append(v.presence_by_option[i].index)
        val.append(int(on))
        idx.append(v.start_by_option[i].index)
        val.append(start)
        a, lat = v.arrival_by_option[i], v.latency_by_option[i]
        if a is not None and lat is not None:
            dur_u, ready_u = v.dur_ready_by_option[i]
            arrival = max(start + dur_u, ready_u)
            idx.extend((a.index, lat.index))
            val.extend((arrival, arrival if on else 0))
        if on:
            present_models.add(v.model_key_by_option[i])
            present_uploads.add(v.upload_key_by_option[i])
    for key, m in v.model_on_node.items():
        idx.append(m.index)
        val.append(int(key in present_models))
    for key, u in v.upload_by_model_node.items():
        idx.append(u.index)
        val.append(int(key in present_uploads))
    for chain in v.chain_by_node.values():
        soc = chain.soc0_u
        for k, h in enumerate(chain.harvest_u):
            use = chain.fixed_use_u[k] + sum(e for i, e in chain.use_by_segment.get(k, []) if i in chosen)
            top = min(chain.cap_u, soc + h)
            soc = top - use
            idx.extend((chain.top_vars[k].index, chain.soc_vars[k].index))
            val.extend((top, soc))
    hint = model.proto.solution_hint
    hint.vars.extend(idx)
    hint.values.extend(val)


def _hint_options(v: CpSatVars, hint: Mapping[str, Placement]) -> dict[int, int]:
    """Option index -> start unit for each hinted placement that the model can represent."""
    chosen: dict[int, int] = {}
    for job_id, p in hint.items():
        unit = math.ceil(p.start_s / v.step_s - 1e-9)
        for i in v.options_by_job.get(job_id, []):
            opt = v.options[i]
            if (opt.candidate is p.candidate or opt.candidate == p.candidate) and opt.lo <= unit <= opt.hi:
                chosen[i] = unit
                break
    return chosen


def solve_placements(problem: Problem, feasibility: FeasibilityLike, params: CpSatParams,
                     hint: Mapping[str, Placement], *, jobs: Iterable[str] | None = None,
                     fixed: Sequence[ScheduledJob] = (), time_limit_s: float | None = None,
                     energy: EnergyModel | None = None) -> SolveReport:
    """Improve the hinted placements of ``jobs`` with CP-SAT, the ``fixed`` ones staying as they are.

    Never returns worse than ``hint`` (restricted to ``jobs``) on the primary term, nor on
    the weighted latency when the primary ties. Values are read only after OPTIMAL/FEASIBLE.
    """
    started = time.perf_counter()
    # 5 % kept back: the solver overshoots its limit slightly and the answer still has to be read.
    limit = 0.95 * (params.time_limit_s if time_limit_s is None else time_limit_s)
    job_by_id = {j.job_id: j for j in problem.jobs}
    wanted = set(job_by_id) if jobs is None else set(jobs)
    hint = {k: p for k, p in hint.items() if k in wanted}
    hint_value = float(sum(job_by_id[k].priority for k in hint))
    model, v = build_model(problem, feasibility, params, jobs=wanted, fixed=fixed, keep=hint, energy=energy)
    if params.dump_path:
        model.export_to_file(params.dump_path)
    chosen = _hint_options(v, hint)
    notes = [f"options={len(v.options)}", f"hint_options={len(chosen)}/{len(hint)}"]
    if params.deterministic:
        notes.append("deterministic search")
    if v.dropped_options:
        notes.append(f"pruned_candidates={v.dropped_options}")
    if not v.options:
        return SolveReport(dict(hint), "OPTIMAL", hint_value, hint_value, time.perf_counter() - started, False,
                           tuple(notes))
    # Deterministic runs do not look at the clock: the whole limit goes to the solver, split between phases.
    left = limit if params.deterministic else limit - (time.perf_counter() - started)
    if left < 0.05:
        notes.append(f"no time left after building the model ({time.perf_counter() - started:.2f} s)")
        return SolveReport(dict(hint), "NOT_SOLVED", hint_value, math.inf, time.perf_counter() - started, False,
                           tuple(notes))
    _add_hints(model, v, chosen)
    primary = cp_model.LinearExpr.weighted_sum([x for x, _ in v.priority_terms], [w for _, w in v.priority_terms])
    model.maximize(primary)
    solver = _solver(params, left * params.phase1_share, len(v.options))
    status = solver.solve(model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        notes.append(f"phase1={name}")
        # UNKNOWN still carries a valid bound; INFEASIBLE/MODEL_INVALID carry none (the hint stays).
        # A bound below the hint means the hint breaks the (conservative) model: the bound says nothing then.
        model_bound = float(solver.best_objective_bound)
        bound = model_bound if status == cp_model.UNKNOWN and model_bound >= hint_value else math.inf
        return SolveReport(dict(hint), name, hint_value, bound, time.perf_counter() - started, False, tuple(notes))
    value1 = round(solver.objective_value)
    bound1 = float(solver.best_objective_bound) if status == cp_model.FEASIBLE else float(value1)
    sol1 = {i: solver.value(v.start_by_option[i]) for i in range(len(v.options))
            if solver.boolean_value(v.presence_by_option[i])}
    notes.append(f"phase1={name}")
    _note_wall_cap(params, solver, left * params.phase1_share, notes)
    final = sol1
    final_status = name
    remaining = (left * (1.0 - params.phase1_share) if params.deterministic
                 else limit - (time.perf_counter() - started))
    if remaining > 0.05 and v.latency_terms:
        model.add(primary >= value1)
        model.clear_objective()
        energy_terms = []
        for i, opt in enumerate(v.options):
            mwh = math.ceil(opt.candidate.energy_wh * 1000.0)
            if mwh:
                energy_terms.append(v.presence_by_option[i] * mwh)
        model.minimize(cp_model.LinearExpr.weighted_sum([e for e, _ in v.latency_terms],
                                                        [LATENCY_WEIGHT * w for _, w in v.latency_terms])
                       + cp_model.LinearExpr.sum(energy_terms))
        _add_hints(model, v, sol1)
        # Phase 2 starts from a complete feasible hint and only trades latency: no presolve needed.
        # Deterministic runs trade latency with one worker: the interleaved search's deterministic clock barely
        # moves on this phase (measured: 0.04 units in 2 s of wall clock), one worker's moves with the work.
        params2 = dataclasses.replace(params, presolve=False, workers=1 if params.deterministic else params.workers)
        solver2 = _solver(params2, remaining, len(v.options))
        status2 = solver2.solve(model)
        notes.append(f"phase2={solver2.status_name(status2)}")
        _note_wall_cap(params, solver2, remaining, notes)
        if status2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            final = {i: solver2.value(v.start_by_option[i]) for i in range(len(v.options))
                     if solver2.boolean_value(v.presence_by_option[i])}
    placements = {v.options[i].candidate.job_id: Placement(v.options[i].candidate, u * v.step_s)
                  for i, u in sorted(final.items())}
    value = float(sum(job_by_id[k].priority for k in placements))
    improved = value > hint_value or (value == hint_value and _latency(problem, placements) + 1e-6
                                      < _latency(problem, hint))
    if not improved:
        return SolveReport(dict(hint), final_status, hint_value, max(bound1, hint_value),
                           time.perf_counter() - started, False, (*notes, "kept hint (solver found nothing better)"))
    return SolveReport(placements, final_status, value, max(bound1, value), time.perf_counter() - started, True,
                       tuple(notes))


def _latency(problem: Problem, placements: Mapping[str, Placement]) -> float:
    jobs = {j.job_id: j for j in problem.jobs}
    return sum(jobs[k].priority * (arrival_of(p.candidate, p.start_s) - jobs[k].submit_s)
               for k, p in placements.items())


def solve(problem: Problem, feasibility: FeasibilityLike, params: CpSatParams | None = None, *,
          greedy: GreedyResult | None = None) -> Plan:
    """CP-SAT plan of the whole problem, hinted with the greedy plan (computed here when not given).

    ``bound`` is CP-SAT's proven bound on Σ priority of on-time jobs; the plan
    is the greedy one whenever the solver does not find better or its answer
    fails the independent replay check (:func:`scheduler.greedy.check_placements`).
    """
    started = time.perf_counter()
    params = params or CpSatParams()
    step = resolve_step_s(problem, params)
    base = greedy or greedy_assign(problem, feasibility, step_s=step)
    report = solve_placements(problem, feasibility, params, base.placements,
                              time_limit_s=max(0.05, params.time_limit_s - (time.perf_counter() - started)))
    return plan_from_placements(problem, feasibility, base, report, started=started, step_s=step)


def plan_from_placements(problem: Problem, feasibility: FeasibilityLike, base: GreedyResult, report: SolveReport,
                         *, started: float, step_s: float, policy: str = "cpsat") -> Plan:
    """The plan of solver placements, falling back to ``base`` (greedy) if they fail the replay check."""
    notes = list(report.notes)
    placements = report.placements
    if report.improved:
        problems = check_placements(problem, feasibility, placements.values(), step_s=step_s)
        if problems:
            notes.append(f"solver plan rejected by replay check ({problems[0]}); kept greedy")
            placements = base.placements
    scheduled = [*problem.fixed, *(materialize(problem, p.candidate, p.start_s) for p in placements.values())]
    placed = set(placements) | {f.job_id for f in problem.fixed}
    unsched = [u for u in base.plan.unschedulable if u.job_id not in placed]
    unsched += [Unschedulable(job_id, "capacity: no slot free / lost to higher priority jobs")
                for job_id in base.placements if job_id not in placed]
    fixed_value = float(sum(j.priority for j in problem.jobs if j.job_id in {f.job_id for f in problem.fixed}))
    bound = min(report.bound + fixed_value, base.plan.bound)
    plan = make_plan(problem, policy, scheduled, unsched, bound, started=started, status=report.status, notes=notes)
    if (plan.objective, -weighted_latency_s(plan)) < (base.plan.objective, -weighted_latency_s(base.plan)):
        return make_plan(problem, policy, base.plan.scheduled, base.plan.unschedulable,
                         bound, started=started, status=report.status,
                         notes=(*notes, "kept greedy plan (better)"))
    return plan


def report_lines(plan: Plan) -> list[str]:
    """Human summary: status, objective, proven bound and gap."""
    return [
        f"policy {plan.policy}: status {plan.status or '-'}",
        f"on-time priority {plan.objective:g} (bound {plan.bound:g}, gap {100.0 * plan.gap:.2f} %)",
        f"scheduled {len(plan.scheduled)}, unschedulable {len(plan.unschedulable)}, wall {plan.wall_s:.2f} s",
        *plan.notes,
    ]


__all__ = ["CpSatParams", "CpSatVars", "Option", "SolveReport", "build_model", "plan_from_placements",
           "report_lines", "solve", "solve_placements"]
