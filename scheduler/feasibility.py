"""Candidate placements: for every job, the compute nodes that can still finish it on time.

For each job and each satellite with a node profile this computes when the
input can be there (contact-graph earliest arrival from the job's source), when
the model can be there (uplink from any station from ``now_s`` unless resident),
how long the run takes, what energy it costs, and the latest start that still
gets the result to the ground by the deadline (reverse search from the
stations). Whatever cannot finish is pruned; a job left without candidates gets
the reason of the most advanced check that failed on every node (memory <
input contact < model uplink < energy < deadline; codes in ``notes/scheduler.md``).

Scale (2,000 jobs x 200 nodes in about 3 s of CPU here): all searches run
batched in numpy (:func:`scheduler.routing.forward_batch` /
:func:`~scheduler.routing.reverse_batch`) and are shared between jobs. A search
is keyed by the source, the start time rounded *up* to ``time_bucket_s``, the
size rounded *up* on a geometric grid and (for the reverse search) the deadline
rounded *down*; the chosen chain is then re-timed exactly for the job's own
start, size and deadline. Rounding in that direction only makes a shared search
conservative, so every route stays valid for the job; the price is that a node
reachable only within a bucket's margin may be missed. The stage checks run
over all nodes of a job at once; exact routes are built only for the
``max_nodes_per_job`` nodes the input reaches first (default 8), each with up
to ``max_output_options`` output options (the latest-departure chain, the first
direct downlink, the first downlink one ISL hop away; optionally the
multi-hop earliest-arrival route, which costs a Python search per node). A node
not kept is never proposed for that job: that cap is what keeps CP-SAT models
of big instances tractable.

Capture jobs search from at most ``max_capture_events`` passes over the
target after submit (default 4), earliest first among the satellites from
which a result could still reach the ground in time.

Jobs with a fixed placement (``Problem.fixed``) get no candidates: planners
keep them as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from orbit.contact_plan import SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT
from orbit.types import GroundStation
from scheduler.routing import (
    TIME_EPS_S,
    ContactTable,
    OutputOption,
    Route,
    contact_table,
    forward_batch,
    forward_path,
    forward_search,
    hops_to,
    option_from_chain,
    pick_options,
    retime_hops,
    reverse_batch,
    reverse_path,
)
from scheduler.types import (
    Candidate,
    CaptureSource,
    Hop,
    Job,
    NodeProfile,
    OnboardSource,
    Problem,
    Unschedulable,
    UplinkSource,
    gflop_per_inference,
)

__all__ = [
    "Feasibility",
    "FeasibilityOptions",
    "build_candidates",
    "capture_events",
    "capture_events_many",
    "idle_energy_ok",
]

# Reason stages, from least to most advanced: the reason of the most advanced failure is reported.
_STAGE_MEMORY, _STAGE_INPUT, _STAGE_MODEL, _STAGE_ENERGY, _STAGE_DEADLINE = range(5)


@dataclass(frozen=True, slots=True)
class FeasibilityOptions:
    """Knobs trading precision for speed (defaults suit 2,000 jobs x 200 nodes)."""

    max_nodes_per_job: int = 8
    max_output_options: int = 2
    max_capture_events: int = 4
    time_bucket_s: float = 60.0
    size_bucket_ratio: float = 1.25
    earliest_output_route: bool = False  # also offer the earliest-arrival (ISL-relayed) output route; slower

    def __post_init__(self) -> None:
        if self.max_nodes_per_job < 1:
            raise ValueError("max_nodes_per_job: must be >= 1")
        if not 1 <= self.max_output_options <= 3:
            raise ValueError("max_output_options: must be 1..3")
        if self.max_capture_events < 1:
            raise ValueError("max_capture_events: must be >= 1")
        if not self.time_bucket_s > 0:
            raise ValueError("time_bucket_s: must be > 0")
        if not self.size_bucket_ratio >= 1.0:
            raise ValueError("size_bucket_ratio: must be >= 1")


@dataclass(frozen=True, slots=True, eq=False)
class Feasibility:
    """Output of :func:`build_candidates`.

    ``candidates`` are grouped by job (in job order); ``rates_bps`` and
    ``capacity_bytes`` are aligned with ``problem.contact_plan.contacts()``;
    ``model_routes[(model_id, node)]`` is the earliest uplink of a non-resident
    model to a node (shared by every job of that model on that node: count its
    bytes once).
    """

    candidates: tuple[Candidate, ...]
    unschedulable: tuple[Unschedulable, ...]
    rates_bps: np.ndarray
    capacity_bytes: np.ndarray
    model_routes: dict[tuple[str, str], Route]
    by_job: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)


def _bucket_up(t: float, step: float) -> float:
    return math.ceil(t / step - 1e-9) * step


def _bucket_down(t: float, step: float) -> float:
    return math.floor(t / step + 1e-9) * step


def _size_bucket(size: int, ratio: float) -> int:
    if size <= 1024 or ratio == 1.0:
        return size
    k = math.ceil(math.log(size / 1024.0) / math.log(ratio) - 1e-12)
    return max(size, math.ceil(1024.0 * ratio**k))


def idle_energy_ok(problem: Problem, node: str, profile: NodeProfile) -> bool:
    """Whether the node's idle load alone keeps its battery above the minimum over the window."""
    plan = problem.contact_plan
    cap = profile.battery_wh
    soc = profile.initial_soc * cap
    floor_wh = profile.min_soc * cap - 1e-9
    t = problem.now_s
    end = plan.duration_s
    segments: list[tuple[float, float, int]] = []
    if plan.sunlight is not None and len(plan.sunlight):
        sat = plan.constellation.index_of(node)
        m = plan.sunlight.sat == sat
        order = np.argsort(plan.sunlight.start_s[m], kind="stable")
        for s, e, st in zip(plan.sunlight.start_s[m][order], plan.sunlight.end_s[m][order],
                            plan.sunlight.state[m][order], strict=True):
            segments.append((float(s), float(e), int(st)))
    for s, e, st in [*segments, (end, end, SUNLIGHT_SUNLIT)]:
        if s > t:  # gap: sunlit by convention
            soc = min(cap, soc + (profile.solar_w - profile.idle_power_w) * (s - t) / 3600.0)
            t = s
        lo, hi = max(s, t), min(e, end)
        if hi > lo:
            gain = {SUNLIGHT_SUNLIT: profile.solar_w, SUNLIGHT_PENUMBRA: 0.5 * profile.solar_w}.get(st, 0.0)
            soc = min(cap, soc + (gain - profile.idle_power_w) * (hi - lo) / 3600.0)
            t = hi
        if soc < floor_wh:
            return False
    return True


def capture_events_many(problem: Problem, sources: list[CaptureSource]
                        ) -> dict[tuple[float, float, float], list[tuple[str, float]]]:
    """Every ``(satellite, tca_s)`` at which a profiled satellite sees each capture target, sorted by time.

    Keyed by ``(latitude_deg, longitude_deg, min_elevation_deg)``. Visibility uses
    :func:`orbit.passes.find_ground_contacts` with every distinct target as a
    ground station whose mask is the source's ``min_elevation_deg``, in one call
    (one propagation of the constellation for all targets).
    """
    from orbit.passes import find_ground_contacts

    keys = sorted({(s.latitude_deg, s.longitude_deg, s.min_elevation_deg) for s in sources})
    out: dict[tuple[float, float, float], list[tuple[str, float]]] = {k: [] for k in keys}
    plan = problem.contact_plan
    if not keys or not problem.profiles_by_node:
        return out
    # The whole constellation, as the validator does, so both see identical pass times.
    targets = [GroundStation(f"target {k}", k[0], k[1], 0.0, k[2]) for k in keys]
    passes = find_ground_contacts(plan.constellation, targets, plan.start_utc, plan.duration_s)
    names = plan.constellation.names
    for sat, station, tca in zip(passes.sat, passes.station, passes.tca_s, strict=True):
        if names[int(sat)] in problem.profiles_by_node:
            out[keys[int(station)]].append((names[int(sat)], float(tca)))
    for events in out.values():
        events.sort(key=lambda e: (e[1], e[0]))
    return out


def capture_events(problem: Problem, source: CaptureSource,
                   cache: dict[tuple[float, float, float], list[tuple[str, float]]] | None = None
                   ) -> list[tuple[str, float]]:
    """Every ``(satellite, tca_s)`` at which a profiled satellite sees the capture target, sorted by time.

    ``cache`` (keyed like :func:`capture_events_many`) is consulted and filled.
    """
    key = (source.latitude_deg, source.longitude_deg, source.min_elevation_deg)
    if cache is not None and key in cache:
        return cache[key]
    events = capture_events_many(problem, [source])[key]
    if cache is not None:
        cache[key] = events
    return events


def _overloaded(table: ContactTable, hops: tuple[Hop, ...]) -> bool:
    """Whether these hops alone put more bytes on some contact than it can carry."""
    used: dict[int, int] = {}
    for h in hops:
        used[h.contact] = used.get(h.contact, 0) + h.bytes
    return any(b > int(table.capacity_bytes[c]) for c, b in used.items())


def _chain_hops(table: ContactTable, chain: list[int], size: int, t0: float) -> tuple[Hop, ...] | None:
    """The chain of contacts sent as early as possible from ``t0`` with ``size`` bytes (None if it does not fit)."""
    hops: list[Hop] = []
    t = t0
    for ci in chain:
        s = max(t, float(table.start_s[ci]))
        e = s + 8.0 * size / float(table.rate_bps[ci])
        if e > float(table.end_s[ci]) + TIME_EPS_S:
            return None
        hops.append(Hop(table.nodes[int(table.src[ci])], table.nodes[int(table.dst[ci])], s, e, size, ci))
        t = e
    return tuple(hops)


@dataclass(frozen=True, slots=True)
class _NodeArrays:
    """Per compute node (K,) arrays of what the stage checks need."""

    index: np.ndarray  # (K,) int64 node index in the contact table
    names: tuple[str, ...]
    compute_gflops: np.ndarray
    memory_bytes: np.ndarray
    slots: np.ndarray
    extra_power_w: np.ndarray  # active - idle
    headroom_wh: np.ndarray  # battery x (1 - min_soc)
    surplus_w: np.ndarray  # max(0, solar - idle)
    idle_ok: np.ndarray  # (K,) bool


def _node_arrays(problem: Problem, table: ContactTable) -> _NodeArrays:
    profiles = problem.profiles_by_node
    names = tuple(n for n in problem.contact_plan.satellite_names if n in profiles)
    profs = [profiles[n] for n in names]

    def col(values: list[float]) -> np.ndarray:
        return np.array(values, dtype=np.float64)

    return _NodeArrays(
        index=np.array([table.node_index[n] for n in names], dtype=np.int64),
        names=names,
        compute_gflops=col([p.compute_gflops for p in profs]),
        memory_bytes=col([p.memory_bytes for p in profs]),
        slots=col([p.slots for p in profs]),
        extra_power_w=col([p.active_power_w - p.idle_power_w for p in profs]),
        headroom_wh=col([p.battery_wh * (1.0 - p.min_soc) for p in profs]),
        surplus_w=col([max(0.0, p.solar_w - p.idle_power_w) for p in profs]),
        idle_ok=np.array([idle_energy_ok(problem, n, p) for n, p in zip(names, profs, strict=True)], dtype=bool),
    )


@dataclass(slots=True)
class _JobPlan:
    """What pass 1 learned about a job: its search rows, or why it has no candidates."""

    job: Job
    reason: str = ""
    targets: frozenset[int] = frozenset()
    events: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    forward_rows: list[int] = field(default_factory=list)
    reverse_row: int = -1


class _Keys:
    """Deduplicated search keys (bucketed so that shared searches stay conservative)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[object, ...], int] = {}
        self.values: list[tuple[object, ...]] = []
        self.extra: list[float] = []

    def row(self, key: tuple[object, ...], extra: float) -> int:
        r = self.rows.get(key)
        if r is None:
            r = self.rows[key] = len(self.values)
            self.values.append(key)
            self.extra.append(extra)
        else:
            self.extra[r] = min(self.extra[r], extra)
        return r


def build_candidates(problem: Problem, options: FeasibilityOptions | None = None) -> Feasibility:
    """Candidates (job, node, output option) that can finish on time, and reasons for jobs with none.

    Candidates of a job are ordered by release time. Routes in a candidate are
    computed against full link capacity (plus the candidate's own model and
    input sharing a contact); planners account for volume shared between jobs.
    """
    opts = options or FeasibilityOptions()
    table = contact_table(problem)
    nodes = _node_arrays(problem, table)
    stations = tuple(int(i) for i in np.flatnonzero(table.is_station))
    fixed_ids = {f.job_id for f in problem.fixed}
    capture_cache = capture_events_many(problem, [j.source for j in problem.jobs
                                                  if isinstance(j.source, CaptureSource) and j.job_id not in fixed_ids])

    # Pass 1: sources, targets and the (deduplicated, bucketed) searches every job needs.
    fwd_keys, rev_keys = _Keys(), _Keys()
    plans: list[_JobPlan] = []
    for job in problem.jobs:
        if job.job_id in fixed_ids:
            continue
        jp = _JobPlan(job)
        plans.append(jp)
        if job.model_id not in problem.models:
            jp.reason = f"unknown-model: model {job.model_id!r} is not in the problem's models"
            continue
        if not nodes.names:
            jp.reason = "no-compute-node: no satellite has a node profile"
            continue
        if job.destination is not None:
            dest = job.destination if job.destination.startswith("gs:") else f"gs:{job.destination}"
            if dest not in table.node_index:
                jp.reason = f"no-contact: destination station {job.destination!r} is not in the contact plan"
                continue
            jp.targets = frozenset({table.node_index[dest]})
        else:
            if not stations:
                jp.reason = "no-contact: the contact plan has no ground station to receive the result"
                continue
            jp.targets = frozenset(stations)
        jp.events, reason = _source_events(problem, table, opts, job, capture_cache)
        if not jp.events:
            jp.reason = reason
            continue
        sb_out = _size_bucket(job.output_bytes, opts.size_bucket_ratio)
        jp.reverse_row = rev_keys.row((jp.targets, _bucket_down(job.deadline_s, opts.time_bucket_s), sb_out),
                                      _bucket_down(max(job.submit_s, problem.now_s), opts.time_bucket_s))

    def fcol(keys: _Keys, i: int) -> np.ndarray:
        return np.array([float(k[i]) for k in keys.values], dtype=np.float64)  # type: ignore[arg-type]

    reverse = reverse_batch(table, [k[0] for k in rev_keys.values], fcol(rev_keys, 1),  # type: ignore[misc]
                            fcol(rev_keys, 2), np.array(rev_keys.extra, dtype=np.float64))
    for jp in plans:
        if jp.reason:
            continue
        job = jp.job
        if isinstance(job.source, CaptureSource):
            # Prefer captures from which a result could still reach the ground: a satellite whose whole
            # plane never meets a station in time would otherwise use up the event budget.
            depart = reverse[jp.reverse_row]
            useful = [e for e in jp.events if depart[e[0][0]] >= e[1]]
            jp.events = (useful or jp.events)[:opts.max_capture_events]
        sb_in = _size_bucket(job.input_bytes, opts.size_bucket_ratio)
        horizon = _bucket_up(job.deadline_s, 3600.0)
        for sources, t0 in jp.events:
            jp.forward_rows.append(fwd_keys.row((sources, _bucket_up(t0, opts.time_bucket_s), sb_in, horizon), 0.0))
    forward = forward_batch(table, [k[0] for k in fwd_keys.values], fcol(fwd_keys, 1),  # type: ignore[misc]
                            fcol(fwd_keys, 2), fcol(fwd_keys, 3))

    # Models: uplinked from any station from now on, once per model (exact, not bucketed).
    model_ids = sorted(problem.models)
    model_rows = {m: i for i, m in enumerate(model_ids)}
    model_arr = forward_batch(table, [stations] * len(model_ids), np.full(len(model_ids), problem.now_s),
                              np.array([problem.models[m].size_bytes for m in model_ids], dtype=np.float64),
                              np.full(len(model_ids), np.inf)) if stations else np.full(
                                  (len(model_ids), len(table.nodes)), np.inf)
    model_t: dict[str, np.ndarray] = {}  # (K,) model arrival per compute node, -inf when resident
    model_mem_ok: dict[str, np.ndarray] = {}
    for m in model_ids:
        t = model_arr[model_rows[m]][nodes.index].copy()
        mem = np.zeros(len(nodes.names))
        for k, n in enumerate(nodes.names):
            resident = problem.profiles_by_node[n].resident_models
            if m in resident:
                t[k] = -np.inf
            mem[k] = sum(problem.models[r].memory_bytes for r in set(resident) | {m} if r in problem.models)
        model_t[m] = t
        model_mem_ok[m] = mem <= nodes.memory_bytes
    model_routes: dict[tuple[str, str], Route] = {}

    def model_route(model_id: str, k: int) -> tuple[Hop, ...] | None:
        node = nodes.names[k]
        key = (model_id, node)
        if key not in model_routes:
            size = problem.models[model_id].size_bytes
            row = model_arr[model_rows[model_id]]
            chain = forward_path(table, row, int(nodes.index[k]), size, stations)
            hops = None if chain is None else _chain_hops(table, chain, size, problem.now_s)
            if hops is None:
                return None
            model_routes[key] = Route(node, hops[-1].end_s if hops else problem.now_s, hops)
        return model_routes[key].hops

    # Pass 2: per job, every compute node at once, then exact routes for the best few.
    profiles_named = {p.name: p for p in problem.profiles_by_node.values()}
    chain_cache: dict[tuple[int, int], list[int] | None] = {}
    candidates: list[Candidate] = []
    by_job: dict[str, tuple[Candidate, ...]] = {}
    unschedulable: list[Unschedulable] = []
    for jp in plans:
        job = jp.job
        cands: list[Candidate] = []
        reason = jp.reason
        if not reason:
            cands, reason = _job_candidates(problem, table, opts, jp, nodes, forward, fwd_keys, reverse,
                                            model_t[job.model_id], model_mem_ok[job.model_id], model_route,
                                            profiles_named, chain_cache)
        if cands:
            candidates.extend(cands)
            by_job[job.job_id] = tuple(cands)
        else:
            unschedulable.append(Unschedulable(job.job_id, reason))
    return Feasibility(tuple(candidates), tuple(unschedulable), table.rate_bps.copy(), table.capacity_bytes.copy(),
                       model_routes, by_job)


def _source_events(problem: Problem, table: ContactTable, opts: FeasibilityOptions, job: Job,
                   capture_cache: dict[tuple[float, float, float], list[tuple[str, float]]]
                   ) -> tuple[list[tuple[tuple[int, ...], float]], str]:
    """Where and when the job's input first exists: ``[(source node indices, t0_s)]``, or a reason."""
    src = job.source
    t_submit = max(job.submit_s, problem.now_s)
    if isinstance(src, UplinkSource):
        if src.station is None:
            st = tuple(int(i) for i in np.flatnonzero(table.is_station))
            if not st:
                return [], "no-contact: the contact plan has no ground station to uplink the input from"
            return [(st, t_submit)], ""
        name = src.station if src.station.startswith("gs:") else f"gs:{src.station}"
        if name not in table.node_index:
            return [], f"no-contact: source station {src.station!r} is not in the contact plan"
        return [((table.node_index[name],), t_submit)], ""
    if isinstance(src, OnboardSource):
        if src.satellite not in table.node_index or table.is_station[table.node_index[src.satellite]]:
            return [], f"no-contact: source satellite {src.satellite!r} is not in the contact plan"
        if src.satellite not in problem.profiles_by_node:
            return [], f"no-contact: source satellite {src.satellite!r} has no node profile (cannot compute or relay)"
        return [((table.node_index[src.satellite],), t_submit)], ""
    assert isinstance(src, CaptureSource)
    key = (src.latitude_deg, src.longitude_deg, src.min_elevation_deg)
    events = [e for e in capture_cache[key] if t_submit <= e[1] <= job.deadline_s]
    if not events:
        return [], (f"no-contact: no satellite with a node profile sees the capture target "
                    f"({src.latitude_deg:g}, {src.longitude_deg:g}) above {src.min_elevation_deg:g} deg "
                    f"between submit and deadline")
    return [((table.node_index[sat],), tca) for sat, tca in events], ""  # capped by the caller


def _deadline_reason(job: Job) -> str:
    where = f"station {job.destination!r}" if job.destination else "a ground station"
    return f"deadline: the result cannot reach {where} by the deadline from any node that can run the job"


def _job_candidates(
    problem: Problem,
    table: ContactTable,
    opts: FeasibilityOptions,
    jp: _JobPlan,
    nodes: _NodeArrays,
    forward: np.ndarray,
    fwd_keys: _Keys,
    reverse: np.ndarray,
    t_model: np.ndarray,
    mem_ok: np.ndarray,
    model_route: Callable[[str, int], tuple[Hop, ...] | None],
    profiles_named: dict[str, NodeProfile],
    chain_cache: dict[tuple[int, int], list[int] | None],
) -> tuple[list[Candidate], str]:
    job = jp.job
    model = problem.models[job.model_id]
    gflop = gflop_per_inference(model, profiles_named)
    # Stage checks over every compute node at once (K,).
    arrivals = forward[np.array(jp.forward_rows)][:, nodes.index]  # (events, K), bucketed (conservative)
    best_event = np.argmin(arrivals, axis=0)
    t_in = arrivals[best_event, np.arange(len(nodes.names))]
    duration = job.tiles * gflop / nodes.compute_gflops
    energy = duration / 3600.0 * nodes.extra_power_w / nodes.slots
    depart = reverse[jp.reverse_row][nodes.index]
    release = np.maximum(np.maximum(max(job.submit_s, problem.now_s), t_in), t_model)
    ok_input = mem_ok & (t_in <= job.deadline_s)
    ok_model = ok_input & (t_model + duration <= job.deadline_s)
    ok_energy = ok_model & nodes.idle_ok & (energy <= nodes.headroom_wh + duration / 3600.0 * nodes.surplus_w)
    ok_all = ok_energy & (release + duration <= depart + opts.time_bucket_s)
    if not ok_all.any():
        if ok_energy.any():
            return [], _deadline_reason(job)
        if ok_model.any():
            k = int(np.flatnonzero(ok_model)[0])
            why = ("idle load alone drains the battery below its minimum" if not nodes.idle_ok[k] else
                   f"the run needs {energy[k]:.3g} Wh above idle, more than the battery can give")
            return [], f"energy: on every node that could run it, {why}"
        if ok_input.any():
            return [], (f"model-uplink: model {job.model_id!r} cannot be uplinked in time to any node the "
                        f"input reaches")
        if mem_ok.any():
            return [], "no-contact: no contact reaches a compute node before the deadline"
        return [], (f"no-compute-node: no node has memory for model {job.model_id!r} "
                    f"({model.memory_bytes} bytes besides its resident models)")

    out: list[Candidate] = []
    kept = 0
    for k in np.flatnonzero(ok_all)[np.argsort(release[ok_all], kind="stable")]:
        if kept >= opts.max_nodes_per_job:
            break
        k = int(k)
        node, i = nodes.names[k], int(nodes.index[k])
        ev = int(best_event[k])
        sources, t0 = jp.events[ev]
        key = fwd_keys.values[jp.forward_rows[ev]]
        chain = forward_path(table, forward[jp.forward_rows[ev]], i, int(key[2]), sources)  # type: ignore[call-overload]
        input_route = None if chain is None else _chain_hops(table, chain, job.input_bytes, t0)
        if input_route is None:
            continue
        m_route: tuple[Hop, ...] = ()
        if t_model[k] != -np.inf:
            got = model_route(job.model_id, k)
            if got is None:
                continue
            m_route = got
        if m_route and _overloaded(table, (*m_route, *input_route)):
            # The model and the input compete for one contact: route the input around the model's bytes.
            residual = table.capacity_bytes.copy()
            for h in m_route:
                residual[h.contact] -= h.bytes
            fwd, pred = forward_search(table, [(s, t0) for s in sources], job.input_bytes, residual,
                                       horizon_s=job.deadline_s)
            if i not in fwd:
                continue
            input_route = hops_to(table, pred, i, job.input_bytes)
        t_arrive = input_route[-1].end_s if input_route else t0
        t_m = m_route[-1].end_s if m_route else -math.inf
        rel = max(job.submit_s, problem.now_s, t_arrive, t_m)
        dur = float(duration[k])
        ready = rel + dur
        options = _output_options(problem, table, jp, k, nodes, reverse, ready, opts, chain_cache)
        added = False
        for opt in options:
            if ready > opt.latest_start_s or _overloaded(table, (*m_route, *input_route, *opt.hops)):
                continue
            timed = retime_hops(problem, opt.hops, ready)
            if timed is None:
                continue
            out.append(Candidate(
                job_id=job.job_id, node=node, release_s=rel, latest_start_s=opt.latest_start_s - dur,
                duration_s=dur, latest_end_s=opt.latest_start_s, energy_wh=float(energy[k]),
                input_route=input_route, output_route=timed, model_route=m_route,
                output_ready_s=opt.ready_s, output_transfer_s=opt.transfer_s))
            added = True
        kept += added
    if out:
        return out, ""
    return [], _deadline_reason(job)


def _first_downlink(table: ContactTable, node: int, ready_s: float, bits: float, deadline_s: float,
                    targets: frozenset[int]) -> tuple[int | None, float]:
    """The downlink of ``node`` to a target that delivers ``bits`` first (leaving at ``ready_s`` or later) and when."""
    best, best_t = None, math.inf
    for start, end, v, rate, ci in table.out_edges[node]:
        if start > min(deadline_s, best_t):
            break
        if v in targets and end >= ready_s:
            t = max(start, ready_s) + bits / rate
            if t <= min(end, deadline_s) and t < best_t:
                best, best_t = ci, t
    return best, best_t


def _output_options(problem: Problem, table: ContactTable, jp: _JobPlan, k: int, nodes: _NodeArrays,
                    reverse: np.ndarray, ready_s: float, opts: FeasibilityOptions,
                    chain_cache: dict[tuple[int, int], list[int] | None]) -> list[OutputOption]:
    """Latest-departure chain (from the shared reverse search) plus direct downlinks, timed exactly."""
    job = jp.job
    i = int(nodes.index[k])
    options: list[OutputOption] = []
    sb = _size_bucket(job.output_bytes, opts.size_bucket_ratio)
    key = (jp.reverse_row, i)
    if key not in chain_cache:  # jobs sharing a reverse search share its chains
        chain_cache[key] = reverse_path(table, reverse[jp.reverse_row], i, sb, jp.targets)
    chain = chain_cache[key]
    if chain:
        opt = option_from_chain(table, i, chain, job.output_bytes, job.deadline_s)
        if opt is not None:
            options.append(opt)
    # Early alternatives: the first direct downlink, and the first downlink of each neighbour one ISL hop away.
    bits = 8.0 * job.output_bytes
    chains: list[list[int]] = []
    direct, t_direct = _first_downlink(table, i, ready_s, bits, job.deadline_s, jp.targets)
    if direct is not None:
        chains.append([direct])
    best_relay: tuple[float, list[int]] | None = None
    for start, end, w, rate, ci in table.out_edges[i]:
        if start > min(job.deadline_s, t_direct):
            break
        if table.is_station[w] or end < ready_s:
            continue
        t_w = max(start, ready_s) + bits / rate
        if t_w > end:
            continue
        relay, t_relay = _first_downlink(table, w, t_w, bits, job.deadline_s, jp.targets)
        if relay is not None and t_relay < t_direct and (best_relay is None or t_relay < best_relay[0]):
            best_relay = (t_relay, [ci, relay])
    if best_relay is not None:
        chains.append(best_relay[1])
    for chain_ in chains:
        opt = option_from_chain(table, i, chain_, job.output_bytes, job.deadline_s)
        if opt is not None:
            options.append(opt)
    if opts.earliest_output_route:
        fwd, pred = forward_search(table, [(i, ready_s)], job.output_bytes, horizon_s=job.deadline_s,
                                   stop_at=jp.targets)
        reached = [n for n in jp.targets if n in fwd]
        if reached:
            best = min(reached, key=lambda n: fwd[n])
            opt = option_from_chain(table, i, [h.contact for h in hops_to(table, pred, best, job.output_bytes)],
                                    job.output_bytes, job.deadline_s)
            if opt is not None:
                options.append(opt)
    return pick_options(options, ready_s, opts.max_output_options)
