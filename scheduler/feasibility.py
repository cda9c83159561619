"""Candidate placements: for every job, the compute nodes that can still finish it on time.

For each job and each satellite with a node profile this computes when the
input can be there (contact-graph earliest arrival from the job's source), when
the model can be there (uplink from any station from ``now_s`` unless resident),
how long the run takes, what energy it costs, and the latest start that still
gets the result to the ground by the deadline (reverse search from the
stations). Whatever cannot finish is pruned; a job left without candidates gets
the reason of the most advanced check that failed on every node (memory <
input contact < model uplink < energy < deadline; codes in ``notes/scheduler.md``).

Scale (``benchmarks/bench_planner.py``: 2,000 jobs x 200 nodes well within
2 s, a fifth of it finding the capture passes; 10,000 x 1,000 well within the
30 s budget): the searches run through :class:`scheduler.routing.ForwardSearches`
/ :class:`~scheduler.routing.ReverseSearches` — exact all-pairs lookups over the
inter-satellite mesh when its links last the whole plan (+Grid), else batched
numpy Bellman-Ford — and are shared between jobs. A search
is keyed by the source, the start time rounded *up* to ``time_bucket_s``, the
size rounded *up* on a geometric grid and (for the reverse search) the deadline
rounded *down*; the chosen chain is then re-timed exactly for the job's own
start, size and deadline. Rounding in that direction only makes a shared search
conservative, so every route stays valid for the job; the price is that a node
reachable only within a bucket's margin may be missed. The stage checks run
over all nodes of many jobs at once; exact routes are built only for the
``max_nodes_per_job`` nodes the input reaches first (default 8), each with up
to ``max_output_options`` output options (the latest-departure chain, the first
direct downlink, the first downlink one ISL hop away; optionally the
multi-hop earliest-arrival route, which costs a Python search per node). A node
not kept is never proposed for that job: that cap is what keeps CP-SAT models
of big instances tractable.

What remains per kept node is plain Python over short lists (hop chains, a
node's downlinks), so the loop avoids per-node array calls: the nodes a job
tries come from one sort per chunk of jobs, their input and latest-departure
chains from one array pass per job (``paths``), output options stay unbuilt
tuples until picked, a relay neighbour whose fastest downlink cannot beat the
best arrival so far is not scanned, volume checks add each option to the
model's and input's bytes counted once, and the cyclic garbage collector is
paused while the (long-lived) candidates are built. Each shortcut computes
exactly what the plain version did (``tests/scheduler/test_feasibility_equivalence.py``).

Capture jobs search from at most ``max_capture_events`` passes over the
target after submit (default 4), earliest first among the satellites from
which a result could still reach the ground in time.

Jobs with a fixed placement (``Problem.fixed``) get no candidates: planners
keep them as given.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from orbit.contact_plan import SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT, ContactPlan
from scheduler.routing import (
    TIME_EPS_S,
    ContactTable,
    ForwardSearches,
    ReverseSearches,
    Route,
    contact_table,
    forward_search,
    gc_paused,
    hops_to,
    new_hop,
    slot_setters,
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


_SUNLIGHT_CACHE: dict[int, tuple[ContactPlan, dict[int, list[tuple[float, float, int]]]]] = {}


def _sunlight_by_sat(plan: ContactPlan) -> dict[int, list[tuple[float, float, int]]]:
    """Sunlight intervals ``(start_s, end_s, state)`` per satellite index, sorted by start (cached per plan).

    One sort for all satellites instead of a mask over every interval per node.
    """
    hit = _SUNLIGHT_CACHE.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    sun = plan.sunlight
    out: dict[int, list[tuple[float, float, int]]] = {}
    if sun is not None and len(sun):
        order = np.lexsort((sun.start_s, sun.sat))  # by satellite, then start (stable as the per-node sort)
        for sat, start, end, state in zip(sun.sat[order].tolist(), sun.start_s[order].tolist(),
                                          sun.end_s[order].tolist(), sun.state[order].tolist(), strict=True):
            out.setdefault(int(sat), []).append((float(start), float(end), int(state)))
    if len(_SUNLIGHT_CACHE) >= 8:
        _SUNLIGHT_CACHE.pop(next(iter(_SUNLIGHT_CACHE)))
    _SUNLIGHT_CACHE[id(plan)] = (plan, out)
    return out


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
        segments = _sunlight_by_sat(plan).get(plan.constellation.index_of(node), [])
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
    from orbit.passes import target_passes

    keys = sorted({(s.latitude_deg, s.longitude_deg, s.min_elevation_deg) for s in sources})
    out: dict[tuple[float, float, float], list[tuple[str, float]]] = {k: [] for k in keys}
    plan = problem.contact_plan
    if not keys or not problem.profiles_by_node:
        return out
    # The whole constellation, as the validator does, so both see identical pass times.
    memo = target_passes(plan.constellation, keys, plan.start_utc, plan.duration_s)
    for k in keys:
        out[k] = sorted(((sat, tca) for sat, tca in memo[k] if sat in problem.profiles_by_node),
                        key=lambda e: (e[1], e[0]))
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


def _overloaded(table: ContactTable, *routes: tuple[Hop, ...]) -> bool:
    """Whether these routes together put more bytes on some contact than it can carry.

    The plain statement of the volume check; candidate building uses its incremental form
    (:func:`_usage`, :func:`_overloaded_with`), which tests hold to this one.
    """
    cap = table.capacity_list
    used: dict[int, int] = {}
    for route in routes:
        for h in route:
            b = used.get(h.contact, 0) + h.bytes
            if b > cap[h.contact]:
                return True
            used[h.contact] = b
    return False


def _chain_hops(table: ContactTable, chain: Sequence[int], size: int, t0: float) -> tuple[Hop, ...] | None:
    """The chain of contacts sent as early as possible from ``t0`` with ``size`` bytes (None if it does not fit)."""
    hops: list[Hop] = []
    t = t0
    bits = 8.0 * size
    for ci in chain:
        start = table.start_list[ci]
        s = t if t > start else start
        e = s + bits / table.rate_list[ci]
        if e > table.end_list[ci] + TIME_EPS_S:
            return None
        hops.append(new_hop(table.src_name[ci], table.dst_name[ci], s, e, size, ci))
        t = e
    return tuple(hops)


@dataclass(frozen=True, slots=True)
class _NodeArrays:
    """Per compute node (K,) arrays of what the stage checks need."""

    index: np.ndarray  # (K,) int64 node index in the contact table
    index_list: list[int]  # the same as a list (indexed one element at a time)
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

    index = [table.node_index[n] for n in names]
    return _NodeArrays(
        index=np.array(index, dtype=np.int64),
        index_list=index,
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
    capture: tuple[np.ndarray, np.ndarray] | None = None  # capture passes in the job's window: (tca_s, node index)


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
    with gc_paused():
        return _build_candidates(problem, options or FeasibilityOptions())


def _build_candidates(problem: Problem, opts: FeasibilityOptions) -> Feasibility:
    table = contact_table(problem)
    nodes = _node_arrays(problem, table)
    stations = tuple(int(i) for i in np.flatnonzero(table.is_station))
    fixed_ids = {f.job_id for f in problem.fixed}
    capture_cache = capture_events_many(problem, [j.source for j in problem.jobs
                                                  if isinstance(j.source, CaptureSource) and j.job_id not in fixed_ids])
    # Per target: pass TCAs (sorted) and the capturing node, as arrays a job slices by its submit..deadline window.
    capture_index = {key: (np.array([t for _, t in ev], dtype=np.float64),
                           np.array([table.node_index[n] for n, _ in ev], dtype=np.int64))
                     for key, ev in capture_cache.items()}

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
        jp.events, got = _source_events(problem, table, job, capture_index)
        if isinstance(got, tuple):
            jp.capture = got
        elif not jp.events:
            jp.reason = got
            continue
        sb_out = _size_bucket(job.output_bytes, opts.size_bucket_ratio)
        jp.reverse_row = rev_keys.row((jp.targets, _bucket_down(job.deadline_s, opts.time_bucket_s), sb_out),
                                      _bucket_down(max(job.submit_s, problem.now_s), opts.time_bucket_s))

    def fcol(keys: _Keys, i: int) -> np.ndarray:
        return np.array([float(k[i]) for k in keys.values], dtype=np.float64)  # type: ignore[arg-type]

    rev_search = ReverseSearches(table, [k[0] for k in rev_keys.values], fcol(rev_keys, 1),  # type: ignore[misc]
                                 fcol(rev_keys, 2), np.array(rev_keys.extra, dtype=np.float64))
    reverse = rev_search.depart
    for jp in plans:
        if jp.reason:
            continue
        job = jp.job
        if jp.capture is not None:
            # Prefer captures from which a result could still reach the ground: a satellite whose whole
            # plane never meets a station in time would otherwise use up the event budget.
            tca, node_idx = jp.capture
            useful = np.flatnonzero(reverse[jp.reverse_row][node_idx] >= tca)
            pick = useful[:opts.max_capture_events] if len(useful) else range(min(len(tca), opts.max_capture_events))
            jp.events = [((int(node_idx[p]),), float(tca[p])) for p in pick]
        sb_in = _size_bucket(job.input_bytes, opts.size_bucket_ratio)
        horizon = _bucket_up(job.deadline_s, 3600.0)
        for sources, t0 in jp.events:
            jp.forward_rows.append(fwd_keys.row((sources, _bucket_up(t0, opts.time_bucket_s), sb_in, horizon), 0.0))
    fwd_search = ForwardSearches(table, [k[0] for k in fwd_keys.values], fcol(fwd_keys, 1),  # type: ignore[misc]
                                 fcol(fwd_keys, 2), fcol(fwd_keys, 3))

    # Models: uplinked from any station from now on, once per model (exact, not bucketed).
    model_ids = sorted(problem.models)
    model_rows = {m: i for i, m in enumerate(model_ids)}
    model_search = ForwardSearches(table, [stations] * len(model_ids) if stations else [],
                                   np.full(len(model_ids), problem.now_s),
                                   np.array([problem.models[m].size_bytes for m in model_ids], dtype=np.float64),
                                   np.full(len(model_ids), np.inf))
    model_arr = model_search.arrival if stations else np.full((len(model_ids), len(table.nodes)), np.inf)
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
            chain = model_search.path(model_rows[model_id], int(nodes.index[k]))
            hops = None if chain is None else _chain_hops(table, chain, size, problem.now_s)
            if hops is None:
                return None
            model_routes[key] = Route(node, hops[-1].end_s if hops else problem.now_s, hops)
        return model_routes[key].hops

    # Pass 2: per job, every compute node at once, then exact routes for the best few.
    profiles_named = {p.name: p for p in problem.profiles_by_node.values()}
    chain_cache: dict[tuple[int, int], list[int] | None] = {}
    downlinks = _Downlinks(table)
    model_usage: dict[tuple[str, str], tuple[dict[int, int], bool]] = {}
    candidates: list[Candidate] = []
    by_job: dict[str, tuple[Candidate, ...]] = {}
    unschedulable: list[Unschedulable] = []
    stages: dict[int, _Stage] = {}
    open_plans = [k for k, jp in enumerate(plans) if not jp.reason]
    for lo in range(0, len(open_plans), 256):
        chunk = open_plans[lo:lo + 256]
        for k, stage in zip(chunk, _stage_checks(problem, opts, [plans[k] for k in chunk], nodes, fwd_search,
                                                 rev_search, model_t, model_mem_ok, profiles_named), strict=True):
            stages[k] = stage
    for k, jp in enumerate(plans):
        job = jp.job
        cands: list[Candidate] = []
        reason = jp.reason
        if not reason:
            cands, reason = _job_candidates(problem, table, opts, jp, nodes, fwd_search, rev_search, stages.pop(k),
                                            model_route, chain_cache, downlinks, model_usage)
        if cands:
            candidates.extend(cands)
            by_job[job.job_id] = tuple(cands)
        else:
            unschedulable.append(Unschedulable(job.job_id, reason))
    return Feasibility(tuple(candidates), tuple(unschedulable), table.rate_bps.copy(), table.capacity_bytes.copy(),
                       model_routes, by_job)


def _source_events(problem: Problem, table: ContactTable, job: Job,
                   capture_index: dict[tuple[float, float, float], tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[list[tuple[tuple[int, ...], float]], str | tuple[np.ndarray, np.ndarray]]:
    """Where and when the job's input first exists: ``[(source node indices, t0_s)]``, or a reason.

    Capture jobs get no list but, in place of the reason, their passes ``(tca_s, node index)`` between submit
    and deadline (the caller picks among them once it knows where results can leave from).
    """
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
    tca, node_idx = capture_index[key]
    lo, hi = np.searchsorted(tca, t_submit, "left"), np.searchsorted(tca, job.deadline_s, "right")
    if lo >= hi:
        return [], (f"no-contact: no satellite with a node profile sees the capture target "
                    f"({src.latitude_deg:g}, {src.longitude_deg:g}) above {src.min_elevation_deg:g} deg "
                    f"between submit and deadline")
    return [], (tca[lo:hi], node_idx[lo:hi])


def _deadline_reason(job: Job) -> str:
    where = f"station {job.destination!r}" if job.destination else "a ground station"
    return f"deadline: the result cannot reach {where} by the deadline from any node that can run the job"


@dataclass(frozen=True, slots=True)
class _Stage:
    """One job's stage checks over every compute node, (K,) arrays (see :func:`_stage_checks`)."""

    best_event: np.ndarray  # index into the job's events of the earliest input arrival
    t_model: np.ndarray
    duration_s: np.ndarray
    energy_wh: np.ndarray
    release_s: np.ndarray
    mem_ok: np.ndarray
    ok_input: np.ndarray
    ok_model: np.ndarray
    ok_energy: np.ndarray
    ok_all: np.ndarray
    ranked: np.ndarray  # (H,) the first node positions of the order below (the rest is sorted when reached)
    n_ok: int  # how many nodes pass every check


def _stage_checks(problem: Problem, opts: FeasibilityOptions, jps: list[_JobPlan], nodes: _NodeArrays,
                  fwd_search: ForwardSearches, rev_search: ReverseSearches, model_t: dict[str, np.ndarray],
                  model_mem_ok: dict[str, np.ndarray], profiles_named: dict[str, NodeProfile]) -> list[_Stage]:
    """Stage checks of many jobs over every compute node at once: (J, K) arrays, one :class:`_Stage` per job.

    Memory, input arrival (bucketed searches: conservative), model arrival, energy and the deadline via the
    shared reverse search (with one time bucket of slack: the exact check is done on the routes).
    """
    n_ev = max(len(jp.forward_rows) for jp in jps)
    rows = np.array([jp.forward_rows + [jp.forward_rows[0]] * (n_ev - len(jp.forward_rows)) for jp in jps])
    arrivals = fwd_search.arrival[rows][:, :, nodes.index]  # (J, events, K)
    for j, jp in enumerate(jps):
        arrivals[j, len(jp.forward_rows):] = np.inf  # padding
    best_event = np.argmin(arrivals, axis=1)
    t_in = np.take_along_axis(arrivals, best_event[:, None, :], axis=1)[:, 0, :]
    work = np.array([jp.job.tiles * gflop_per_inference(problem.models[jp.job.model_id], profiles_named)
                     for jp in jps])
    duration = work[:, None] / nodes.compute_gflops[None, :]
    energy = duration / 3600.0 * nodes.extra_power_w / nodes.slots
    depart = rev_search.depart[np.array([jp.reverse_row for jp in jps])][:, nodes.index]
    t_model = np.stack([model_t[jp.job.model_id] for jp in jps])
    mem_ok = np.stack([model_mem_ok[jp.job.model_id] for jp in jps])
    t_submit = np.array([max(jp.job.submit_s, problem.now_s) for jp in jps])
    deadline = np.array([jp.job.deadline_s for jp in jps])[:, None]
    release = np.maximum(np.maximum(t_submit[:, None], t_in), t_model)
    ok_input = mem_ok & (t_in <= deadline)
    ok_model = ok_input & (t_model + duration <= deadline)
    ok_energy = ok_model & nodes.idle_ok & (energy <= nodes.headroom_wh + duration / 3600.0 * nodes.surplus_w)
    ok_all = ok_energy & (release + duration <= depart + opts.time_bucket_s)
    # The nodes a job tries: those passing every check in stable order of release (a passing node's release
    # is finite: it meets a finite departure), from one stable sort per chunk with the others pushed last,
    # not one sort per job. Only the head is kept (jobs rarely go further; see _ranked).
    ranked = np.argsort(np.where(ok_all, release, np.inf), axis=1, kind="stable")[:, :_ranked_head(opts)].copy()
    n_ok = ok_all.sum(axis=1).tolist()
    return [_Stage(best_event[j], t_model[j], duration[j], energy[j], release[j], mem_ok[j], ok_input[j],
                   ok_model[j], ok_energy[j], ok_all[j], ranked[j], n_ok[j]) for j in range(len(jps))]


_CANDIDATE_FIELDS = ("job_id", "node", "release_s", "latest_start_s", "duration_s", "latest_end_s", "energy_wh",
                     "input_route", "output_route", "model_route", "output_ready_s", "output_transfer_s")
_CANDIDATE_SETTERS = slot_setters(Candidate, _CANDIDATE_FIELDS)


def _new_candidate(job_id: str, node: str, release_s: float, latest_start_s: float, duration_s: float,
                   latest_end_s: float, energy_wh: float, input_route: tuple[Hop, ...], output_route: tuple[Hop, ...],
                   model_route: tuple[Hop, ...], output_ready_s: float, output_transfer_s: float) -> Candidate:
    """``Candidate(...)`` with the fields in declaration order, made as :func:`scheduler.routing.new_hop` makes hops."""
    if _CANDIDATE_SETTERS is None:
        return Candidate(job_id=job_id, node=node, release_s=release_s, latest_start_s=latest_start_s,
                         duration_s=duration_s, latest_end_s=latest_end_s, energy_wh=energy_wh,
                         input_route=input_route, output_route=output_route, model_route=model_route,
                         output_ready_s=output_ready_s, output_transfer_s=output_transfer_s)
    cand = _new_object(Candidate)
    s_job, s_node, s_rel, s_latest, s_dur, s_end, s_energy, s_in, s_out, s_model, s_ready, s_transfer = \
        _CANDIDATE_SETTERS
    s_job(cand, job_id)
    s_node(cand, node)
    s_rel(cand, release_s)
    s_latest(cand, latest_start_s)
    s_dur(cand, duration_s)
    s_end(cand, latest_end_s)
    s_energy(cand, energy_wh)
    s_in(cand, input_route)
    s_out(cand, output_route)
    s_model(cand, model_route)
    s_ready(cand, output_ready_s)
    s_transfer(cand, output_transfer_s)
    return cand


_new_object = object.__new__


def _ranked_head(opts: FeasibilityOptions) -> int:
    """How many of a job's nodes :func:`_stage_checks` ranks up front (a job that drops nodes goes on further)."""
    return 4 * opts.max_nodes_per_job


def _ranked(stage: _Stage) -> Iterator[int]:
    """The positions of the nodes passing every check, by release (ties by position).

    Usually only the first few are used (``max_nodes_per_job``): beyond the head ranked up front, the same
    stable sort is redone for this job only when reached.
    """
    head = len(stage.ranked)
    yield from stage.ranked[:min(head, stage.n_ok)].tolist()
    if stage.n_ok > head:
        order = np.argsort(np.where(stage.ok_all, stage.release_s, np.inf), kind="stable")
        yield from order[head:stage.n_ok].tolist()


def _input_chains(jp: _JobPlan, ks: list[int], index: list[int], best_event: np.ndarray,
                  fwd_search: ForwardSearches) -> dict[int, list[int] | None]:
    """``fwd_search.path`` of the job's best event for each node position in ``ks`` (grouped by search row)."""
    by_row: dict[int, list[int]] = {}
    for k in ks:
        by_row.setdefault(jp.forward_rows[int(best_event[k])], []).append(k)
    out: dict[int, list[int] | None] = {}
    for row, group in by_row.items():
        out.update(zip(group, fwd_search.paths(row, [index[k] for k in group]), strict=True))
    return out


def _latest_chains(jp: _JobPlan, ks: list[int], index: list[int], rev_search: ReverseSearches,
                   chain_cache: dict[tuple[int, int], list[int] | None]) -> None:
    """Fill ``chain_cache`` with ``rev_search.path`` of the job's reverse row for the nodes ``ks`` (one pass)."""
    row = jp.reverse_row
    missing = [index[k] for k in ks if (row, index[k]) not in chain_cache]
    if missing:
        chain_cache.update(zip(((row, i) for i in missing), rev_search.paths(row, missing), strict=True))


def _usage(table: ContactTable, route: tuple[Hop, ...], *, base: tuple[dict[int, int], bool] | None = None
           ) -> tuple[dict[int, int], bool]:
    """Bytes per contact of ``route`` on top of ``base``, and whether some contact got more than its capacity.

    Hop sizes are >= 0, so a running total that once exceeds a capacity stays above it: the flag of routes
    taken one after the other, then :func:`_overloaded_with` on one more, is :func:`_overloaded` on them all.
    """
    cap = table.capacity_list
    used, over = (dict(base[0]), base[1]) if base is not None else ({}, False)
    for h in route:
        b = used.get(h.contact, 0) + h.bytes
        if b > cap[h.contact]:
            over = True
        used[h.contact] = b
    return used, over


def _overloaded_with(table: ContactTable, used: dict[int, int], route: tuple[Hop, ...]) -> bool:
    """Whether ``route`` on top of ``used`` (bytes per contact) puts more bytes on some contact than it carries."""
    cap = table.capacity_list
    if len(route) == 1:
        h = route[0]
        return used.get(h.contact, 0) + h.bytes > cap[h.contact]
    extra: dict[int, int] = {}
    for h in route:
        b = used.get(h.contact, 0) + extra.get(h.contact, 0) + h.bytes
        if b > cap[h.contact]:
            return True
        extra[h.contact] = extra.get(h.contact, 0) + h.bytes
    return False


def _job_candidates(
    problem: Problem,
    table: ContactTable,
    opts: FeasibilityOptions,
    jp: _JobPlan,
    nodes: _NodeArrays,
    fwd_search: ForwardSearches,
    rev_search: ReverseSearches,
    stage: _Stage,
    model_route: Callable[[str, int], tuple[Hop, ...] | None],
    chain_cache: dict[tuple[int, int], list[int] | None],
    downlinks: _Downlinks,
    model_usage: dict[tuple[str, str], tuple[dict[int, int], bool]],
) -> tuple[list[Candidate], str]:
    job = jp.job
    model = problem.models[job.model_id]
    best_event, t_model, duration, energy = stage.best_event, stage.t_model, stage.duration_s, stage.energy_wh
    mem_ok, ok_input, ok_model, ok_energy = stage.mem_ok, stage.ok_input, stage.ok_model, stage.ok_energy
    if not stage.n_ok:
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
    index = nodes.index_list
    # Routes of the nodes the job will most likely keep (the first max_nodes_per_job by release), looked up
    # for all of them at once; a node beyond them (when some are dropped) asks on its own, same answers.
    likely = stage.ranked[:min(stage.n_ok, opts.max_nodes_per_job)].tolist()
    input_chains = _input_chains(jp, likely, index, best_event, fwd_search)
    _latest_chains(jp, likely, index, rev_search, chain_cache)
    for k in _ranked(stage):
        if kept >= opts.max_nodes_per_job:
            break
        node, i = nodes.names[k], index[k]
        ev = int(best_event[k])
        sources, t0 = jp.events[ev]
        chain = input_chains[k] if k in input_chains else fwd_search.path(jp.forward_rows[ev], i)
        input_route = None if chain is None else _chain_hops(table, chain, job.input_bytes, t0)
        if input_route is None:
            continue
        m_route: tuple[Hop, ...] = ()
        if t_model[k] != -np.inf:
            got = model_route(job.model_id, k)
            if got is None:
                continue
            m_route = got
        # Bytes the model and input put on each contact (and whether that overloads one), for the volume
        # checks; the model's part is shared by every job of that model on the node.
        if m_route:
            base = model_usage.get((job.model_id, node))
            if base is None:
                base = model_usage[(job.model_id, node)] = _usage(table, m_route)
            used, over = _usage(table, input_route, base=base)
            if over:
                # The model and the input compete for one contact: route the input around the model's bytes.
                residual = table.capacity_bytes.copy()
                for h in m_route:
                    residual[h.contact] -= h.bytes
                fwd, pred = forward_search(table, [(s, t0) for s in sources], job.input_bytes, residual,
                                           horizon_s=job.deadline_s)
                if i not in fwd:
                    continue
                input_route = hops_to(table, pred, i, job.input_bytes)
                used, over = _usage(table, input_route, base=base)
        else:
            used, over = _usage(table, input_route)
        t_arrive = input_route[-1].end_s if input_route else t0
        t_m = m_route[-1].end_s if m_route else -math.inf
        rel = max(job.submit_s, problem.now_s, t_arrive, t_m)
        dur = float(duration[k])
        ready = rel + dur
        added = False
        for chain_out, latest, out_ready, transfer in _output_options(table, jp, k, nodes, rev_search, ready, opts,
                                                                     chain_cache, downlinks):
            if ready > latest:
                continue
            timed = _chain_hops(table, chain_out, job.output_bytes, ready)
            if timed is None or over or _overloaded_with(table, used, timed):
                continue
            out.append(_new_candidate(job.job_id, node, rel, latest - dur, dur, latest, float(energy[k]),
                                      input_route, timed, m_route, out_ready, transfer))
            added = True
        kept += added
    if out:
        return out, ""
    return [], _deadline_reason(job)


# (starts, [(start_s, end_s, rate_bps, contact)], longest duration_s, fastest rate_bps), sorted by start.
_DownlinkList = tuple[list[float], list[tuple[float, float, float, int]], float, float]


class _Downlinks:
    """Per node, its usable downlinks to a target set sorted by start (lists, for bisect), built on first use.

    Scanning a node's whole contact list for every candidate was the hot spot of
    candidate building; with contacts sorted by start, the first delivery after
    ``ready_s`` only needs the contacts that can still be open then.
    """

    def __init__(self, table: ContactTable) -> None:
        self.table = table
        self.by_key: dict[tuple[int, frozenset[int]], _DownlinkList] = {}
        # ISL neighbours per node: (start_s, end_s, other, rate_bps, contact), sorted by start.
        self.isl_out: dict[int, list[tuple[float, float, int, float, int]]] = {}

    def of(self, node: int, targets: frozenset[int]) -> _DownlinkList:
        key = (node, targets)
        got = self.by_key.get(key)
        if got is None:
            edges = [(start, end, rate, ci) for start, end, v, rate, ci in self.table.out_edges[node] if v in targets]
            longest = max((e[1] - e[0] for e in edges), default=0.0)
            fastest = max((e[2] for e in edges), default=0.0)
            got = self.by_key[key] = ([e[0] for e in edges], edges, longest, fastest)
        return got

    def isl(self, node: int) -> list[tuple[float, float, int, float, int]]:
        got = self.isl_out.get(node)
        if got is None:
            is_station = self.table.is_station
            got = self.isl_out[node] = [e for e in self.table.out_edges[node] if not is_station[e[2]]]
        return got

    def first(self, node: int, ready_s: float, bits: float, deadline_s: float, targets: frozenset[int]
              ) -> tuple[int | None, float]:
        """The downlink of ``node`` to a target that delivers ``bits`` first (leaving at ``ready_s`` or later)."""
        got = self.by_key.get((node, targets))
        return _first_delivery(got if got is not None else self.of(node, targets), ready_s, bits, deadline_s)


def _first_delivery(downlinks: _DownlinkList, ready_s: float, bits: float, deadline_s: float
                    ) -> tuple[int | None, float]:
    """:meth:`_Downlinks.first` on one node's list: ``(contact, arrival_s)``, ``(None, inf)`` when none delivers."""
    starts, edges, longest, _ = downlinks
    best, best_t = None, math.inf
    # Contacts starting more than the longest duration before ready_s are closed by then.
    for j in range(bisect.bisect_left(starts, ready_s - longest), len(edges)):
        start, end, rate, ci = edges[j]
        if start > deadline_s or start > best_t:
            break
        if end >= ready_s:
            t = (start if start > ready_s else ready_s) + bits / rate
            if t <= end and t <= deadline_s and t < best_t:
                best, best_t = ci, t
    return best, best_t


_MISSING: list[int] = []  # chain_cache default: a cached None means "no chain"

# An output option before any Hop is built: (contacts, latest_start_s, ready_s, transfer_s) with the meaning of
# :class:`scheduler.routing.OutputOption`. Most options are dropped by the pick; only kept ones become hops.
_Option = tuple[tuple[int, ...], float, float, float]


def _option(table: ContactTable, src: int, chain: list[int], size_bytes: int, deadline_s: float) -> _Option | None:
    """:func:`scheduler.routing.option_from_chain` without building its hops."""
    if not chain or table.src_name[chain[0]] != table.nodes[src]:
        return None
    # chain_timing inlined (this runs for every option of every kept node).
    bits = 8.0 * size_bytes
    rates, starts, ends = table.rate_list, table.start_list, table.end_list
    latest = math.inf
    k = -math.inf
    total = 0.0
    for ci in chain:
        d = bits / rates[ci]
        total += d
        end = ends[ci]
        if end - total < latest:
            latest = end - total
        start = starts[ci]
        k = (k if k > start else start) + d
        if k > end + TIME_EPS_S:
            return None
    ready = k - total
    if deadline_s - total < latest:
        latest = deadline_s - total
    if max(latest, ready) + total > deadline_s + TIME_EPS_S:
        return None
    return tuple(chain), latest, ready, total


def _pick(options: list[_Option], ready_s: float, max_options: int) -> list[_Option]:
    """:func:`scheduler.routing.pick_options` on unbuilt options (same choice, same order).

    Written out for the handful of options a node has (this runs for every node of every job): the first
    option of each chain; among the usable ones the first with the largest ``(latest, -transfer)``; then the
    others by ``(arrival, transfer)``, ties in list order as a stable sort keeps them.
    """
    opts: list[_Option] = []
    for o in options:
        chain = o[0]
        for p in opts:
            if p[0] == chain:
                break
        else:
            opts.append(o)
    if not opts:
        return []
    usable = [o for o in opts if o[1] >= ready_s] or opts
    best = usable[0]
    for o in usable[1:]:
        if o[1] > best[1] or (o[1] == best[1] and -o[3] > -best[3]):
            best = o
    chosen = [best]
    if max_options <= 1 or len(usable) == 1:
        return chosen
    ranked = sorted([((o[2] if o[2] > ready_s else ready_s) + o[3], o[3], n) for n, o in enumerate(usable)])
    for _, _, n in ranked:
        if len(chosen) >= max_options:
            break
        if usable[n] is not best and usable[n] not in chosen:
            chosen.append(usable[n])
    return chosen


def _output_options(table: ContactTable, jp: _JobPlan, k: int, nodes: _NodeArrays,
                    rev_search: ReverseSearches, ready_s: float, opts: FeasibilityOptions,
                    chain_cache: dict[tuple[int, int], list[int] | None], downlinks: _Downlinks
                    ) -> list[_Option]:
    """Latest-departure chain (from the shared reverse search) plus direct downlinks, timed exactly."""
    job = jp.job
    i = nodes.index_list[k]
    key = (jp.reverse_row, i)
    latest_chain = chain_cache.get(key, _MISSING)
    if latest_chain is _MISSING:  # jobs sharing a reverse search share its chains
        latest_chain = chain_cache[key] = rev_search.path(jp.reverse_row, i)
    chains: list[list[int]] = [latest_chain] if latest_chain else []
    # Early alternatives: the first direct downlink, and the first downlink of each neighbour one ISL hop away.
    bits = 8.0 * job.output_bytes
    deadline_s, targets = job.deadline_s, jp.targets
    by_key = downlinks.by_key
    got = by_key.get((i, targets))
    direct, t_direct = _first_delivery(got if got is not None else downlinks.of(i, targets), ready_s, bits,
                                       deadline_s)
    if direct is not None:
        chains.append([direct])
    best_relay: tuple[float, list[int]] | None = None
    stop = min(deadline_s, t_direct)
    to_beat = t_direct  # a relay is kept only if it arrives before the direct downlink and every relay so far
    isl = downlinks.isl_out.get(i)
    for start, end, w, rate, ci in isl if isl is not None else downlinks.isl(i):
        if start > stop:
            break
        if end < ready_s:
            continue
        t_w = max(start, ready_s) + bits / rate
        if t_w > end:
            continue
        got = by_key.get((w, targets))
        w_links = got if got is not None else downlinks.of(w, targets)
        if not w_links[1]:
            continue
        # No downlink of w delivers before t_w + bits / (its fastest rate) (rounding is monotone): when that
        # cannot beat what we have (or the deadline), the scan would find nothing to keep.
        bound = t_w + bits / w_links[3]
        if bound >= to_beat or bound > deadline_s:
            continue
        relay, t_relay = _first_delivery(w_links, t_w, bits, deadline_s)
        if relay is not None and t_relay < t_direct and (best_relay is None or t_relay < best_relay[0]):
            best_relay = (t_relay, [ci, relay])
            to_beat = t_relay
    if best_relay is not None:
        chains.append(best_relay[1])
    if opts.earliest_output_route:
        fwd, pred = forward_search(table, [(i, ready_s)], job.output_bytes, horizon_s=job.deadline_s,
                                   stop_at=jp.targets)
        reached = [n for n in jp.targets if n in fwd]
        if reached:
            best = min(reached, key=lambda n: fwd[n])
            chains.append([h.contact for h in hops_to(table, pred, best, job.output_bytes)])
    options: list[_Option] = []
    for c in chains:
        o = _option(table, i, c, job.output_bytes, deadline_s)
        if o is not None:
            options.append(o)
    return _pick(options, ready_s, opts.max_output_options) if len(options) > 1 else options
