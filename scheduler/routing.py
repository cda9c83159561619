"""Contact-graph routing over the contact plan: earliest arrival and latest departure.

Data moves over one-way contacts (``problem.contact_plan.contacts()``); a hop of
``B`` bytes over contact ``c`` takes ``B*8/rate`` seconds and must lie inside
``[c.start_s, c.end_s]``. Light time (< 20 ms at 5,000 km) is ignored: it is
three orders of magnitude below pass and transmission times. Data may wait on a
node for any time (store and forward). Ground stations are sources or sinks,
never relays. Satellites without a node profile neither compute nor relay
(every contact touching them has rate 0).

Transmission is FIFO (a later start never arrives earlier), so a
time-dependent Dijkstra over nodes gives exact earliest arrivals, and the
mirror-image search from the ground gives exact latest departures (as in
Contact Graph Routing, with capacity = rate x duration).

Two implementations answer the same questions: Python Dijkstras
(:func:`earliest_arrival`, :func:`latest_departure`; one query, routes
directly) and numpy batches (:func:`forward_batch`, :func:`reverse_batch`;
hundreds of queries at once as a vectorised Bellman-Ford over the contacts,
routes recovered with :func:`forward_path` / :func:`reverse_path`). When every
inter-satellite link lasts the whole plan (+Grid), :class:`ForwardSearches` /
:class:`ReverseSearches` answer the batch questions exactly from all-pairs
fastest mesh routes (:func:`static_isl`) plus the one time-dependent hop
(uplink or downlink), and fall back to the batches otherwise. Tests check all
of them against an independent fixed-point solution. Their ``paths`` methods
recover the routes of one query to many nodes in one array pass (the same
routes as ``path`` node by node), and :func:`contact_columns` gives the columns
of ``ContactPlan.contacts()`` without building its records.

All times are seconds after ``Problem.epoch_utc``.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from orbit.contact_plan import Contact, ContactPlan
from scheduler.types import Hop, Problem

__all__ = [
    "ContactTable",
    "ForwardSearches",
    "OutputOption",
    "ReverseSearches",
    "Route",
    "StaticIsl",
    "chain_timing",
    "contact_columns",
    "contact_table",
    "earliest_arrival",
    "forward_batch",
    "forward_path",
    "forward_search",
    "gc_paused",
    "hops_to",
    "isl_path",
    "latest_departure",
    "link_capacities",
    "new_hop",
    "option_from_chain",
    "pick_options",
    "retime_hops",
    "reverse_batch",
    "reverse_path",
    "reverse_search",
    "static_isl",
    "station_nodes",
]

# Slack for float comparisons of times built from sums (seconds).
TIME_EPS_S = 1e-6


@dataclass(frozen=True, slots=True)
class Route:
    """Earliest arrival of some data at ``node``: ``hops`` in order (empty when it starts there)."""

    node: str
    arrival_s: float
    hops: tuple[Hop, ...]


@dataclass(frozen=True, slots=True)
class OutputOption:
    """One way for a result to leave a compute node and reach the ground.

    The hop chain is fixed; its timing depends on when the job ends. Leaving at
    ``t`` (the job end), the result arrives at ``max(t, ready_s) + transfer_s``;
    the chain fits its contacts (and the deadline) iff ``t <= latest_start_s``.
    ``hops`` are timed for ``t = latest_start_s``; re-time them with
    :func:`retime_hops` for the actual end.
    """

    hops: tuple[Hop, ...]
    latest_start_s: float
    ready_s: float
    transfer_s: float

    def arrival_s(self, depart_s: float) -> float:
        """Arrival on the ground when the result is ready to leave at ``depart_s``."""
        return max(depart_s, self.ready_s) + self.transfer_s

    @property
    def station(self) -> str:
        return self.hops[-1].dst if self.hops else ""


@dataclass(frozen=True, slots=True, eq=False)
class ContactTable:
    """The contacts of a problem with link rates, as arrays and per-node adjacency.

    Arrays have shape ``(C,)`` aligned with ``plan.contacts()``; node indices refer to
    ``nodes`` (satellite names, then ``gs:<station>``). Adjacency lists hold
    only usable contacts (rate > 0), as ``(start_s, end_s, other_node, rate_bps,
    contact_index)`` sorted by start.
    """

    plan: ContactPlan
    nodes: tuple[str, ...]
    node_index: dict[str, int]
    is_station: np.ndarray  # (V,) bool
    src: np.ndarray  # (C,) int64
    dst: np.ndarray  # (C,) int64
    start_s: np.ndarray  # (C,) float64
    end_s: np.ndarray  # (C,) float64
    rate_bps: np.ndarray  # (C,) float64
    capacity_bytes: np.ndarray  # (C,) int64
    out_edges: tuple[tuple[tuple[float, float, int, float, int], ...], ...]
    in_edges: tuple[tuple[tuple[float, float, int, float, int], ...], ...]
    # The same columns as Python lists: per-hop code indexes them one element at a time, where numpy
    # scalar access costs far more than the arithmetic.
    start_list: list[float] = field(default_factory=list)
    end_list: list[float] = field(default_factory=list)
    rate_list: list[float] = field(default_factory=list)
    capacity_list: list[int] = field(default_factory=list)
    src_name: list[str] = field(default_factory=list)
    dst_name: list[str] = field(default_factory=list)

    @property
    def contacts(self) -> tuple[Contact, ...]:
        """The contacts as records, ``plan.contacts()`` (built on first use: the table itself never needs them)."""
        return tuple(self.plan.contacts())


# A table depends only on the contact plan and the nodes' link rates, so re-plans that build a new Problem
# every round (replay, the service loop) share it. The contact plan is kept so its id cannot be reused.
_RatesKey = tuple[tuple[str, tuple[tuple[str, float], ...], tuple[tuple[str, float], ...], float], ...]
_TABLE_CACHE: dict[tuple[int, _RatesKey], tuple[ContactPlan, ContactTable]] = {}
_TABLE_CACHE_SIZE = 8


def slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...] | None:
    """The slot setters of a frozen slots dataclass with exactly the fields ``names`` (in order) and no
    ``__post_init__``; None for any other class (its constructor must then be called).

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (a lookup and a
    call per field): for the hundred thousand hops and candidates of a big instance that is a real share
    of candidate building. Setting the slots directly on ``object.__new__(cls)`` makes the same object,
    and only applies while the class has nothing to validate.
    """
    if "__slots__" not in vars(cls) or hasattr(cls, "__post_init__"):
        return None
    if tuple(f.name for f in fields(cls)) != names:
        return None
    return tuple(getattr(cls, n).__set__ for n in names)


_HOP_SETTERS = slot_setters(Hop, ("src", "dst", "start_s", "end_s", "bytes", "contact"))


def new_hop(src: str, dst: str, start_s: float, end_s: float, size_bytes: int, contact: int) -> Hop:
    """``Hop(src, dst, start_s, end_s, size_bytes, contact)``, made without the frozen ``__init__`` when allowed."""
    if _HOP_SETTERS is None:
        return Hop(src, dst, start_s, end_s, size_bytes, contact)
    hop = _new_object(Hop)
    set_src, set_dst, set_start, set_end, set_bytes, set_contact = _HOP_SETTERS
    set_src(hop, src)
    set_dst(hop, dst)
    set_start(hop, start_s)
    set_end(hop, end_s)
    set_bytes(hop, size_bytes)
    set_contact(hop, contact)
    return hop


_new_object = object.__new__


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend Python's cyclic garbage collector for a block that builds many long-lived objects.

    Candidate building and the greedy create a few hundred thousand small objects (hops, candidates,
    tuples) that all stay alive; each collection triggered by that stream re-scans the growing heap for
    cycles and finds none (about a tenth of their run time on 2,000 jobs). Nothing computed depends on it.
    The previous state is restored afterwards (nested and concurrent uses at worst re-enable it early).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def station_nodes(problem: Problem) -> tuple[str, ...]:
    """Graph node names of every ground station (``gs:<name>``)."""
    return tuple(f"gs:{s.name}" for s in problem.contact_plan.stations)


def contact_table(problem: Problem) -> ContactTable:
    """The (cached) contact table of ``problem``."""
    rates: _RatesKey = tuple(sorted((name, p.uplink_bps, p.downlink_bps, p.isl_bps)
                                    for name, p in problem.profiles_by_node.items()))
    key = (id(problem.contact_plan), rates)
    hit = _TABLE_CACHE.get(key)
    if hit is not None and hit[0] is problem.contact_plan:
        return hit[1]
    table = _build_table(problem)
    if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
        _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
    _TABLE_CACHE[key] = (problem.contact_plan, table)
    return table


def contact_columns(plan: ContactPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The columns of ``plan.contacts()`` without building its records: ``(kind, src, dst, start_s, end_s)``.

    Returns ``(C,)`` arrays: ``kind`` 0 ground up, 1 ground down, 2 ISL; ``src``/``dst`` index
    ``plan.node_names()``; times in seconds after ``plan.start_utc``. Rows come in the order of
    :meth:`orbit.contact_plan.ContactPlan.contacts` (each pass up then down, each ISL interval a->b then b->a,
    then a stable sort by ``(start_s, end_s, src name, dst name)``), so row ``c`` is contact ``c``. Building
    the records and sorting them with a Python key was most of the cost of a contact table; numpy's stable
    lexsort over the same keys (names compare by code point in both) gives the same order.
    """
    n_sat = len(plan.constellation.names)
    g, isl = plan.ground, plan.isl
    n_g, n_i = len(g), len(isl)
    st_node = n_sat + np.asarray(g.station, dtype=np.int64)
    sat_g = np.asarray(g.sat, dtype=np.int64)
    a, b = np.asarray(isl.a, dtype=np.int64), np.asarray(isl.b, dtype=np.int64)
    # Interleaved as contacts() appends them: (up, down) per pass, then (a->b, b->a) per ISL interval.
    src = np.concatenate([np.stack([st_node, sat_g], axis=1).reshape(2 * n_g),
                          np.stack([a, b], axis=1).reshape(2 * n_i)])
    dst = np.concatenate([np.stack([sat_g, st_node], axis=1).reshape(2 * n_g),
                          np.stack([b, a], axis=1).reshape(2 * n_i)])
    start = np.concatenate([np.repeat(np.asarray(g.aos_s, dtype=np.float64), 2),
                            np.repeat(np.asarray(isl.start_s, dtype=np.float64), 2)])
    end = np.concatenate([np.repeat(np.asarray(g.los_s, dtype=np.float64), 2),
                          np.repeat(np.asarray(isl.end_s, dtype=np.float64), 2)])
    kind = np.concatenate([np.tile(np.array([0, 1], dtype=np.int64), n_g), np.full(2 * n_i, 2, dtype=np.int64)])
    if not len(src):
        return kind, src, dst, start, end
    names = np.array(plan.node_names())
    order = np.lexsort((names[dst], names[src], end, start))
    return kind[order], src[order], dst[order], start[order], end[order]


def _build_table(problem: Problem) -> ContactTable:
    plan = problem.contact_plan
    nodes = tuple(plan.node_names())
    node_index = {n: i for i, n in enumerate(nodes)}
    n_v = len(nodes)
    kind, src, dst, start, end = contact_columns(plan)
    # Positions to node indices by name, as the records were (duplicate names resolve to the same node).
    canonical = np.array([node_index[n] for n in nodes], dtype=np.int64)
    src, dst = canonical[src], canonical[dst]
    # Rates by lookup: (satellite, station) tables for ground links, per node for ISLs.
    stations = [f"gs:{s.name}" for s in plan.stations]
    column = np.zeros(n_v, dtype=np.int64)  # station node -> its column (0 elsewhere: masked out below)
    column[[node_index[st] for st in stations]] = np.arange(len(stations))
    up = np.zeros((n_v, max(len(stations), 1)))
    down = np.zeros((n_v, max(len(stations), 1)))
    isl_bps = np.zeros(n_v)
    for name, prof in problem.profiles_by_node.items():
        i = node_index.get(name)
        if i is None:
            continue
        isl_bps[i] = prof.isl_bps
        for k, st in enumerate(plan.stations):
            up[i, k] = prof.uplink_rate_bps(st.station_class)
            down[i, k] = prof.downlink_rate_bps(st.station_class)
    rate = np.where(kind == 0, up[dst, column[src]], np.where(kind == 1, down[src, column[dst]],
                                                               np.minimum(isl_bps[src], isl_bps[dst])))
    capacity = np.floor(rate * np.maximum(end - start, 0.0) / 8.0).astype(np.int64)
    # Adjacency of usable contacts as (start_s, end_s, other, rate_bps, contact), sorted like the tuples.
    usable = np.flatnonzero(rate > 0.0)
    out_edges: list[tuple[tuple[float, float, int, float, int], ...]] = []
    in_edges: list[tuple[tuple[float, float, int, float, int], ...]] = []
    for own, other, edges in ((src, dst, out_edges), (dst, src, in_edges)):
        sel = usable[np.lexsort((usable, rate[usable], other[usable], end[usable], start[usable], own[usable]))]
        rows = list(zip(start[sel].tolist(), end[sel].tolist(), other[sel].tolist(), rate[sel].tolist(),
                        sel.tolist(), strict=True))
        bounds = np.searchsorted(own[sel], np.arange(n_v + 1)).tolist()
        edges.extend(tuple(rows[bounds[v]:bounds[v + 1]]) for v in range(n_v))
    is_station = np.array([n.startswith("gs:") for n in nodes], dtype=bool)
    src_name = [nodes[i] for i in src.tolist()]
    dst_name = [nodes[i] for i in dst.tolist()]
    return ContactTable(plan, nodes, node_index, is_station, src, dst, start, end, rate, capacity,
                        tuple(out_edges), tuple(in_edges),
                        start.tolist(), end.tolist(), rate.tolist(), capacity.tolist(), src_name, dst_name)


def link_capacities(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Rate (bits/s) and capacity (bytes) of every contact, aligned with ``contact_plan.contacts()``.

    Returns
    -------
    rates_bps : (C,) float64, 0 where the link is unusable (an end without a node profile).
    capacity_bytes : (C,) int64, ``floor(rate_bps * (end_s - start_s) / 8)``.
    """
    t = contact_table(problem)
    return t.rate_bps.copy(), t.capacity_bytes.copy()


def _node(table: ContactTable, name: str, what: str) -> int:
    try:
        return table.node_index[name]
    except KeyError:
        raise ValueError(f"{what}: unknown node {name!r}") from None


def forward_search(
    table: ContactTable,
    sources: list[tuple[int, float]],
    size_bytes: int,
    residual_capacity: np.ndarray | None = None,
    *,
    horizon_s: float = math.inf,
    stop_at: frozenset[int] | None = None,
) -> tuple[dict[int, float], dict[int, tuple[int, int, float, float]]]:
    """Time-dependent Dijkstra from ``(node, t0_s)`` sources.

    Returns earliest arrival per reached node index and the predecessor hop
    ``(prev_node, contact, start_s, end_s)``. Arrivals later than ``horizon_s``
    are not explored. With ``stop_at``, stops as soon as any of those nodes is
    settled (its arrival is then the earliest over the set). Stations are expanded only when they are sources.
    """
    bits = 8.0 * size_bytes
    cap = table.capacity_bytes if residual_capacity is None else residual_capacity
    arrival: dict[int, float] = {}
    pred: dict[int, tuple[int, int, float, float]] = {}
    heap: list[tuple[float, int]] = []
    source_nodes = set()
    for node, t0 in sources:
        if t0 < arrival.get(node, math.inf):
            arrival[node] = t0
            heapq.heappush(heap, (t0, node))
        source_nodes.add(node)
    done: set[int] = set()
    is_station = table.is_station
    out_edges = table.out_edges
    while heap:
        t, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if stop_at is not None and u in stop_at:
            break
        if is_station[u] and u not in source_nodes:
            continue
        for start, end, v, rate, ci in out_edges[u]:
            if start > horizon_s:
                break
            if end < t or v in done:
                continue
            s = t if t > start else start
            e = s + bits / rate
            if e > end or e > horizon_s or e >= arrival.get(v, math.inf) or size_bytes > cap[ci]:
                continue
            arrival[v] = e
            pred[v] = (u, ci, s, e)
            heapq.heappush(heap, (e, v))
    return {n: arrival[n] for n in done}, pred


def hops_to(table: ContactTable, pred: dict[int, tuple[int, int, float, float]], node: int,
             size_bytes: int) -> tuple[Hop, ...]:
    """The hops of the :func:`forward_search` route to ``node`` (predecessors walked back), in order."""
    hops: list[Hop] = []
    while node in pred:
        prev, ci, s, e = pred[node]
        hops.append(Hop(table.nodes[prev], table.nodes[node], s, e, size_bytes, ci))
        node = prev
    hops.reverse()
    return tuple(hops)


def earliest_arrival(
    problem: Problem,
    src_node: str | list[str],
    t0_s: float,
    size_bytes: int,
    residual_capacity: np.ndarray | None = None,
    *,
    targets: list[str] | None = None,
    horizon_s: float = math.inf,
) -> dict[str, Route]:
    """Earliest arrival of ``size_bytes`` available at ``src_node`` from ``t0_s``, at every reachable node.

    Parameters
    ----------
    src_node : node name, or a list of names (data available at all of them).
    residual_capacity : (C,) bytes still free per contact; default the full capacity.
    targets : when given, only these nodes are returned and the search stops at
        the first one settled if it is the only target.
    horizon_s : arrivals later than this are not explored.

    Returns
    -------
    dict of node name -> :class:`Route` (the source itself with no hops).
    """
    table = contact_table(problem)
    names = [src_node] if isinstance(src_node, str) else list(src_node)
    sources = [(_node(table, n, "src_node"), float(t0_s)) for n in names]
    target_idx = None if targets is None else frozenset(_node(table, n, "targets") for n in targets)
    stop = target_idx if target_idx is not None and len(target_idx) == 1 else None
    arrival, pred = forward_search(table, sources, int(size_bytes), residual_capacity, horizon_s=horizon_s,
                                   stop_at=stop)
    out: dict[str, Route] = {}
    for n, t in arrival.items():
        if target_idx is not None and n not in target_idx:
            continue
        out[table.nodes[n]] = Route(table.nodes[n], t, hops_to(table, pred, n, int(size_bytes)))
    return out


def reverse_search(
    table: ContactTable,
    targets: frozenset[int],
    size_bytes: int,
    deadline_s: float,
    residual_capacity: np.ndarray | None = None,
    *,
    not_before_s: float = -math.inf,
) -> tuple[dict[int, float], dict[int, tuple[int, int, float, float]]]:
    """Latest departure from every node so that ``size_bytes`` reach a target node by ``deadline_s``.

    Returns the latest departure per node index and the successor hop
    ``(next_node, contact, start_s, end_s)`` (timed for that departure).
    Contacts ending before ``not_before_s`` are ignored.
    """
    bits = 8.0 * size_bytes
    cap = table.capacity_bytes if residual_capacity is None else residual_capacity
    depart: dict[int, float] = {}
    succ: dict[int, tuple[int, int, float, float]] = {}
    heap: list[tuple[float, int]] = []
    for node in targets:
        depart[node] = deadline_s
        heapq.heappush(heap, (-deadline_s, node))
    done: set[int] = set()
    is_station = table.is_station
    in_edges = table.in_edges
    while heap:
        neg_t, v = heapq.heappop(heap)
        if v in done:
            continue
        done.add(v)
        t = -neg_t
        if is_station[v] and v not in targets:
            continue
        for start, end, u, rate, ci in in_edges[v]:
            if start > t:
                break
            if end < not_before_s or u in done or (is_station[u] and u not in targets):
                continue
            d = bits / rate
            e = end if end < t else t
            s = e - d
            if s < start or s <= depart.get(u, -math.inf) or size_bytes > cap[ci]:
                continue
            depart[u] = s
            succ[u] = (v, ci, s, e)
            heapq.heappush(heap, (-s, u))
    return {n: depart[n] for n in done}, succ


def chain_timing(
    table: ContactTable, contact_ids: list[int], durations_s: list[float], deadline_s: float = math.inf
) -> tuple[float, float, float]:
    """Timing of a fixed hop chain: ``(latest_start_s, ready_s, transfer_s)``.

    Leaving at ``t``, hop ``i`` ends at ``max(t + D_1..i, K_i)`` where ``D`` sums
    transmission times and ``K_i`` is the end of hop ``i`` when data is ready at
    once. The chain fits iff ``t <= min_i(end_i - D_1..i)`` and every
    ``K_i <= end_i`` (else ``latest_start_s`` is -inf); it arrives at
    ``max(t, ready_s) + transfer_s`` with ``transfer_s = D_1..n`` and
    ``ready_s = K_n - transfer_s`` (exact).
    """
    latest = math.inf
    k = -math.inf
    cum = 0.0
    starts, ends = table.start_list, table.end_list
    for ci, d in zip(contact_ids, durations_s, strict=True):
        cum += d
        end = ends[ci]
        if end - cum < latest:
            latest = end - cum
        start = starts[ci]
        k = (k if k > start else start) + d
        if k > end + TIME_EPS_S:
            latest = -math.inf
    total = cum
    ready = k - total if contact_ids else -math.inf
    latest = min(latest, deadline_s - total)
    return latest, ready, total


def retime_hops(problem: Problem, hops: tuple[Hop, ...], ready_s: float, *,
                table: ContactTable | None = None) -> tuple[Hop, ...] | None:
    """The same hop chain sent as early as possible once the data is ready at ``ready_s``.

    Each hop keeps its transmission time (``end_s - start_s``). Returns None
    when a hop would no longer fit inside its contact. ``table`` is
    ``contact_table(problem)`` when the caller already holds it (its cache key
    costs more than a short chain).
    """
    if table is None:
        table = contact_table(problem)
    starts, ends = table.start_list, table.end_list
    out: list[Hop] = []
    t = ready_s
    for h in hops:
        d = h.end_s - h.start_s
        start = starts[h.contact]
        s = t if t > start else start
        e = s + d
        if e > ends[h.contact] + TIME_EPS_S:
            return None
        out.append(new_hop(h.src, h.dst, s, e, h.bytes, h.contact))
        t = e
    return tuple(out)


def option_from_chain(table: ContactTable, src: int, contact_ids: list[int], size_bytes: int,
                       deadline_s: float) -> OutputOption | None:
    """The output option of a fixed contact chain leaving node ``src``, timed exactly; None if it cannot work."""
    bits = 8.0 * size_bytes
    rates = table.rate_list
    durations = [bits / rates[ci] for ci in contact_ids]
    latest, ready, total = chain_timing(table, contact_ids, durations, deadline_s)
    if not contact_ids or latest == -math.inf or max(latest, ready) + total > deadline_s + TIME_EPS_S:
        return None
    hops: list[Hop] = []
    t = latest
    starts, src_name, dst_name = table.start_list, table.src_name, table.dst_name
    for ci, d in zip(contact_ids, durations, strict=True):
        start = starts[ci]
        s = t if t > start else start
        hops.append(Hop(src_name[ci], dst_name[ci], s, s + d, size_bytes, ci))
        t = s + d
    if hops[0].src != table.nodes[src]:
        return None
    return OutputOption(tuple(hops), latest, ready, total)


def _targets(table: ContactTable, problem: Problem, destination: str | None) -> frozenset[int]:
    if destination is None:
        return frozenset(int(i) for i in np.flatnonzero(table.is_station))
    name = destination if destination.startswith("gs:") else f"gs:{destination}"
    return frozenset({_node(table, name, "destination")})


def output_options_from_reverse(
    problem: Problem,
    node: str,
    size_bytes: int,
    deadline_s: float,
    destination: str | None,
    reverse: tuple[dict[int, float], dict[int, tuple[int, int, float, float]]] | None = None,
    *,
    ready_s: float | None = None,
    max_options: int = 3,
) -> list[OutputOption]:
    """Output options of ``node``, reusing a precomputed :func:`reverse_search` result when given."""
    table = contact_table(problem)
    targets = _targets(table, problem, destination)
    if reverse is None:
        reverse = reverse_search(table, targets, size_bytes, deadline_s)
    depart, succ = reverse
    u = _node(table, node, "node")
    options: list[OutputOption] = []
    if u in depart and u in succ:
        chain: list[int] = []
        v = u
        while v in succ and v not in targets:
            nxt, ci, _, _ = succ[v]
            chain.append(ci)
            v = nxt
        opt = option_from_chain(table, u, chain, size_bytes, deadline_s)
        if opt is not None:
            options.append(opt)
    # Direct downlinks give cheap alternatives that leave earlier (less latency).
    bits = 8.0 * size_bytes
    for start, end, v, rate, ci in table.out_edges[u]:
        if start > deadline_s or len(options) >= 16:
            break
        if v in targets and start + bits / rate <= min(end, deadline_s):
            opt = option_from_chain(table, u, [ci], size_bytes, deadline_s)
            if opt is not None:
                options.append(opt)
    if ready_s is not None:
        fwd, pred = forward_search(table, [(u, ready_s)], size_bytes, horizon_s=deadline_s, stop_at=targets)
        reached = [n for n in targets if n in fwd]
        if reached:
            best = min(reached, key=lambda n: fwd[n])
            chain = [h.contact for h in hops_to(table, pred, best, size_bytes)]
            opt = option_from_chain(table, u, chain, size_bytes, deadline_s)
            if opt is not None:
                options.append(opt)
    return pick_options(options, ready_s, max_options)


def pick_options(options: list[OutputOption], ready_s: float | None, max_options: int) -> list[OutputOption]:
    """Keep up to ``max_options`` distinct options: latest start, earliest arrival, then the rest by arrival."""
    unique: dict[tuple[int, ...], OutputOption] = {}
    for o in options:
        unique.setdefault(tuple(h.contact for h in o.hops), o)
    opts = list(unique.values())
    if not opts:
        return []
    t = ready_s if ready_s is not None else -math.inf
    usable = [o for o in opts if o.latest_start_s >= t] or opts
    chosen = [max(usable, key=lambda o: (o.latest_start_s, -o.transfer_s))]
    for o in sorted(usable, key=lambda o: (o.arrival_s(t), o.transfer_s)):
        if len(chosen) >= max_options:
            break
        if o not in chosen:
            chosen.append(o)
    return chosen


def latest_departure(
    problem: Problem,
    node: str,
    size_bytes: int,
    deadline_s: float,
    destination: str | None = None,
    *,
    ready_s: float | None = None,
    max_options: int = 3,
) -> list[OutputOption]:
    """Ways for ``size_bytes`` leaving ``node`` to reach a ground station by ``deadline_s``.

    Parameters
    ----------
    destination : station name (``Svalbard`` or ``gs:Svalbard``); None for any station.
    ready_s : when given, also offer the earliest-arrival route from ``node`` at that time.
    max_options : at most this many options.

    Returns
    -------
    Options (possibly empty), the first being the one that may leave latest;
    the others arrive earlier. Each option is a distinct hop chain.
    """
    return output_options_from_reverse(problem, node, int(size_bytes), float(deadline_s), destination,
                                       ready_s=ready_s, max_options=max_options)


# -- batched searches (numpy) -------------------------------------------------------------------
# Many jobs need one search each; a vectorised Bellman-Ford over the contacts runs hundreds of them
# at once far faster than as many Python Dijkstras. Each hop lasts at least MIN_HOP_S so arrival
# strictly grows along a route, which makes the route recoverable from the arrival times alone.
MIN_HOP_S = 1e-6
_BATCH_ROWS = 256


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order by ``keys``, start offset of each run and the key of each run."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(keys) else np.zeros(0, int)
    return order, starts, sorted_keys[starts] if len(keys) else np.zeros(0, np.int64)


def forward_batch(
    table: ContactTable,
    sources: list[tuple[int, ...]],
    t0_s: np.ndarray,
    size_bytes: np.ndarray,
    horizon_s: np.ndarray,
) -> np.ndarray:
    """Earliest arrival of many queries at once.

    Query ``q`` has data of ``size_bytes[q]`` at every node of ``sources[q]``
    from ``t0_s[q]``; arrivals later than ``horizon_s[q]`` are dropped. Stations
    relay nothing: only satellites are reached.

    Returns
    -------
    (Q, V) float64 earliest arrival per query and node (inf: unreachable). Use
    :func:`forward_path` to recover a route.
    """
    n_q, n_v = len(sources), len(table.nodes)
    out = np.full((n_q, n_v), np.inf)
    if n_q == 0:
        return out
    sat = ~table.is_station
    usable = np.flatnonzero((table.rate_bps > 0.0) & sat[table.dst])
    order_q = np.argsort(t0_s, kind="stable")
    for lo in range(0, n_q, _BATCH_ROWS):
        rows = order_q[lo:lo + _BATCH_ROWS]
        t_lo, t_hi = float(t0_s[rows].min()), float(horizon_s[rows].max())
        sel = usable[(table.end_s[usable] >= t_lo) & (table.start_s[usable] <= t_hi)]
        arr = np.full((len(rows), n_v), np.inf)
        for k, q in enumerate(rows):
            arr[k, list(sources[q])] = t0_s[q]
        if len(sel):
            order, _, _ = _groups(table.dst[sel])
            sel = sel[order]
            src = table.src[sel]
            start = table.start_s[sel]
            size = size_bytes[rows].astype(np.float64)
            raw = (size * 8.0)[:, None] / table.rate_bps[sel][None, :]
            hop = np.maximum(raw, MIN_HOP_S)
            # A hop may overrun its contact only by the padding MIN_HOP_S added to it (0-byte hops), no more.
            limit = np.minimum(table.end_s[sel][None, :], horizon_s[rows][:, None]) + (hop - raw)
            limit[size[:, None] > table.capacity_bytes[sel][None, :]] = -np.inf
            dst = table.dst[sel]
            active = np.arange(len(rows))
            frontier = np.isfinite(arr).any(axis=0)  # nodes whose arrival changed: only their contacts can improve
            while len(active):
                idx = np.flatnonzero(frontier[src])
                if not len(idx):
                    break
                d = dst[idx]
                starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
                grp = d[starts]
                sub = arr[active]
                cell = np.ix_(active, idx)
                e = np.maximum(sub[:, src[idx]], start[idx])
                e += hop[cell]
                e[e > limit[cell]] = np.inf
                best = np.minimum.reduceat(e, starts, axis=1)
                cur = sub[:, grp]
                better = best < cur
                changed = better.any(axis=1)
                if not changed.any():
                    break
                sub[:, grp] = np.where(better, best, cur)
                arr[active] = sub
                frontier = np.zeros(n_v, dtype=bool)
                frontier[grp[better.any(axis=0)]] = True
                active = active[changed]
        out[rows] = arr
    return out


def forward_path(table: ContactTable, arrival: np.ndarray, node: int, size_bytes: int,
                 sources: tuple[int, ...]) -> list[int] | None:
    """Contacts of a route achieving ``arrival[node]`` (a row of :func:`forward_batch`), in order."""
    chain: list[int] = []
    v = node
    bits = size_bytes * 8.0
    src_set = set(sources)
    while v not in src_set:
        t_v = float(arrival[v])
        found = -1
        best_gap = math.inf
        for start, end, u, rate, ci in table.in_edges[v]:
            t_u = float(arrival[u])
            if t_u == math.inf or (table.is_station[u] and u not in src_set):
                continue
            d = bits / rate
            e = (t_u if t_u > start else start) + (d if d > MIN_HOP_S else MIN_HOP_S)
            gap = abs(e - t_v)
            if gap < best_gap and e <= end + TIME_EPS_S:
                best_gap, found = gap, ci
        if found < 0 or best_gap > 1e-6:
            return None
        chain.append(found)
        v = int(table.src[found])
        if len(chain) > len(table.nodes):
            return None
    chain.reverse()
    return chain


def reverse_batch(
    table: ContactTable,
    targets: list[frozenset[int]],
    deadline_s: np.ndarray,
    size_bytes: np.ndarray,
    not_before_s: np.ndarray,
) -> np.ndarray:
    """Latest departure of many queries at once.

    Query ``q`` must bring ``size_bytes[q]`` to one of ``targets[q]`` (station
    node indices) by ``deadline_s[q]``; departures before ``not_before_s[q]``
    are not needed (and may be missing).

    Returns
    -------
    (Q, V) float64 latest departure per query and node (-inf: impossible); the
    targets hold the deadline. Use :func:`reverse_path` to recover a route.
    """
    n_q, n_v = len(targets), len(table.nodes)
    out = np.full((n_q, n_v), -np.inf)
    if n_q == 0:
        return out
    sat = ~table.is_station
    usable = np.flatnonzero((table.rate_bps > 0.0) & sat[table.src])
    order_q = np.argsort(deadline_s, kind="stable")
    for lo in range(0, n_q, _BATCH_ROWS):
        rows = order_q[lo:lo + _BATCH_ROWS]
        t_lo, t_hi = float(not_before_s[rows].min()), float(deadline_s[rows].max())
        sel = usable[(table.end_s[usable] >= t_lo) & (table.start_s[usable] <= t_hi)]
        dep = np.full((len(rows), n_v), -np.inf)
        for k, q in enumerate(rows):
            dep[k, list(targets[q])] = deadline_s[q]
        if len(sel):
            order, _, _ = _groups(table.src[sel])
            sel = sel[order]
            dst = table.dst[sel]
            end = table.end_s[sel]
            size = size_bytes[rows].astype(np.float64)
            raw = (size * 8.0)[:, None] / table.rate_bps[sel][None, :]
            hop = np.maximum(raw, MIN_HOP_S)
            floor_s = table.start_s[sel][None, :] - (hop - raw)  # as in forward_batch: only the padding
            floor_s[size[:, None] > table.capacity_bytes[sel][None, :]] = np.inf
            src = table.src[sel]
            active = np.arange(len(rows))
            frontier = np.isfinite(dep).any(axis=0)  # nodes whose departure changed: only their contacts can improve
            while len(active):
                idx = np.flatnonzero(frontier[dst])
                if not len(idx):
                    break
                u = src[idx]
                starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
                grp = u[starts]
                sub = dep[active]
                cell = np.ix_(active, idx)
                cand = np.minimum(sub[:, dst[idx]], end[idx])
                cand -= hop[cell]
                cand[cand < floor_s[cell]] = -np.inf
                best = np.maximum.reduceat(cand, starts, axis=1)
                cur = sub[:, grp]
                better = best > cur
                changed = better.any(axis=1)
                if not changed.any():
                    break
                sub[:, grp] = np.where(better, best, cur)
                frontier = np.zeros(n_v, dtype=bool)
                frontier[grp[better.any(axis=0)]] = True
                dep[active] = sub
                active = active[changed]
        out[rows] = dep
    return out


def reverse_path(table: ContactTable, depart: np.ndarray, node: int, size_bytes: int,
                 targets: frozenset[int]) -> list[int] | None:
    """Contacts of a route achieving ``depart[node]`` (a row of :func:`reverse_batch`), in order."""
    chain: list[int] = []
    u = node
    bits = size_bytes * 8.0
    while u not in targets:
        t_u = float(depart[u])
        found, best_gap = -1, math.inf
        for start, end, v, rate, ci in table.out_edges[u]:
            t_v = float(depart[v])
            if t_v == -math.inf or (table.is_station[v] and v not in targets):
                continue
            d = bits / rate
            s = (t_v if t_v < end else end) - (d if d > MIN_HOP_S else MIN_HOP_S)
            gap = abs(s - t_u)
            if gap < best_gap and s >= start - TIME_EPS_S:
                best_gap, found = gap, ci
        if found < 0 or best_gap > 1e-6:
            return None
        chain.append(found)
        u = int(table.dst[found])
        if len(chain) > len(table.nodes):
            return None
    return chain


# -- static inter-satellite links (fast path) ------------------------------------------------------
# Permanent ISLs (+Grid keeps every link up for the whole plan) make the satellite mesh a static
# graph: a hop of B bytes over link (u, v) always takes B*8/rate and never waits. The fastest mesh
# route of any size is then the shortest path under weights 1/rate (seconds per bit), computed once
# for all pairs; a search reduces to the time-dependent first hop (an uplink) or last hop (a
# downlink) plus a lookup. Both answers are exact (no MIN_HOP_S padding); plans whose ISLs come and
# go (los, nearest) use the batched searches above.
_STATIC_MAX_NODES = 4000  # (V, V) float64 distances: 128 MB at this size
_STATIC_CACHE: dict[int, tuple[ContactTable, StaticIsl | None]] = {}


@dataclass(frozen=True, slots=True, eq=False)
class StaticIsl:
    """All-pairs fastest routes over permanent ISLs of a :class:`ContactTable`.

    ``s_per_bit[u, v]`` is the sum of ``1/rate_bps`` along the fastest ISL route
    from node ``u`` to ``v`` (0 on the diagonal, inf when unreachable; stations are
    isolated); a transfer of ``B`` bytes takes ``8 * B * s_per_bit[u, v]`` seconds.
    Every ISL lasts over ``[window_lo_s, window_hi_s]``, which covers every usable
    contact of the plan, so no hop ever waits or falls outside its contact.
    """

    s_per_bit: np.ndarray  # (V, V) float64
    pred: np.ndarray  # (V, V) int32, scipy predecessors (-9999: none)
    pair_contact: dict[tuple[int, int], int]
    window_lo_s: float
    window_hi_s: float
    min_capacity_bytes: float  # smallest ISL capacity: larger transfers use the batched searches
    diameter_s_per_bit: float  # largest finite entry of s_per_bit
    component: np.ndarray  # (V,) int64 strongly connected component of each node
    n_components: int
    # The mesh reversed (u <- v for each link u -> v) in CSR form over V + 1 nodes, the last one a free slot
    # for a per-search super source: (indptr without its last entry, indices, weights in s/bit).
    reverse_csr: tuple[np.ndarray, np.ndarray, np.ndarray]
    # Per station set: earliest end of a downlink to it from each component (inf: none), filled on first use.
    first_exit_end_s: dict[frozenset[int], np.ndarray] = field(default_factory=dict)
    # Per station set: which components receive any uplink from it, filled on first use.
    uplinked_components: dict[frozenset[int], np.ndarray] = field(default_factory=dict)
    # Rows of ``pred`` as lists, filled on first use: a route walk indexes them one element at a time.
    pred_rows: dict[int, list[int]] = field(default_factory=dict)


def static_isl(table: ContactTable) -> StaticIsl | None:
    """The static ISL routes of ``table``, or None when some usable ISL does not last the whole plan (cached)."""
    hit = _STATIC_CACHE.get(id(table))
    if hit is not None and hit[0] is table:
        return hit[1]
    result = _build_static(table)
    if len(_STATIC_CACHE) >= _TABLE_CACHE_SIZE:
        _STATIC_CACHE.pop(next(iter(_STATIC_CACHE)))
    _STATIC_CACHE[id(table)] = (table, result)
    return result


def _build_static(table: ContactTable) -> StaticIsl | None:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components, dijkstra

    n_v = len(table.nodes)
    usable = table.rate_bps > 0.0
    if n_v > _STATIC_MAX_NODES or not usable.any():
        return None
    isl = np.flatnonzero(usable & ~table.is_station[table.src] & ~table.is_station[table.dst])
    lo_all, hi_all = float(table.start_s[usable].min()), float(table.end_s[usable].max())
    if len(isl) and (table.start_s[isl].max() > lo_all or table.end_s[isl].min() < hi_all):
        return None
    lo, hi = (float(table.start_s[isl].max()), float(table.end_s[isl].min())) if len(isl) else (-math.inf, math.inf)
    # One edge per ordered pair: the fastest of any parallel contacts (csr_matrix would add them up).
    weight = 1.0 / table.rate_bps[isl]
    order = np.lexsort((weight, table.dst[isl], table.src[isl]))
    isl, weight = isl[order], weight[order]
    first = np.r_[True, (np.diff(table.src[isl]) != 0) | (np.diff(table.dst[isl]) != 0)] if len(isl) else \
        np.zeros(0, dtype=bool)
    isl, weight = isl[first], weight[first]
    graph = csr_matrix((weight, (table.src[isl], table.dst[isl])), shape=(n_v, n_v))
    dist, pred = dijkstra(graph, directed=True, return_predecessors=True)
    finite = dist[np.isfinite(dist)]
    n_comp, labels = connected_components(graph, directed=True, connection="strong")
    rev = csr_matrix((weight, (table.dst[isl], table.src[isl])), shape=(n_v + 1, n_v + 1))
    return StaticIsl(
        s_per_bit=dist, pred=pred,
        pair_contact={(int(table.src[c]), int(table.dst[c])): int(c) for c in isl},
        window_lo_s=lo, window_hi_s=hi,
        min_capacity_bytes=float(table.capacity_bytes[isl].min()) if len(isl) else math.inf,
        diameter_s_per_bit=float(finite.max()) if len(finite) else 0.0,
        component=labels.astype(np.int64), n_components=int(n_comp),
        reverse_csr=(rev.indptr[:-1].copy(), rev.indices.copy(), rev.data.copy()),
    )


def isl_path(static: StaticIsl, u: int, w: int) -> list[int] | None:
    """Contacts of the fastest static ISL route from node ``u`` to ``w`` (empty when equal; None if unreachable)."""
    if u == w:
        return []
    if not math.isfinite(static.s_per_bit[u, w]):
        return None
    row = static.pred_rows.get(u)
    if row is None:
        row = static.pred_rows[u] = static.pred[u].tolist()
    pair_contact = static.pair_contact
    chain: list[int] = []
    v = w
    while v != u:
        p = row[v]
        chain.append(pair_contact[(p, v)])
        v = p
    chain.reverse()
    return chain


def _transfer_s(s_per_bit: np.ndarray, bits: float) -> np.ndarray:
    """``bits * s_per_bit`` with unreachable (inf) entries kept inf even for 0 bits."""
    out = s_per_bit * bits if bits > 0 else np.zeros_like(s_per_bit)
    out[~np.isfinite(s_per_bit)] = np.inf
    return out


@dataclass(frozen=True, slots=True)
class _Links:
    """Usable contacts from or to a set of stations, sorted (uplinks by start, downlinks by end)."""

    start_s: np.ndarray
    end_s: np.ndarray
    rate_bps: np.ndarray
    capacity_bytes: np.ndarray
    sat: np.ndarray  # the satellite end
    contact: np.ndarray
    max_duration_s: float


_LINKS_CACHE: dict[tuple[int, str, frozenset[int]], tuple[ContactTable, _Links]] = {}


def _links(table: ContactTable, kind: str, stations: frozenset[int]) -> _Links:
    key = (id(table), kind, stations)
    hit = _LINKS_CACHE.get(key)
    if hit is not None and hit[0] is table:
        return hit[1]
    st = np.zeros(len(table.nodes), dtype=bool)
    st[list(stations)] = True
    sat = ~table.is_station
    if kind == "up":
        sel = np.flatnonzero((table.rate_bps > 0.0) & st[table.src] & sat[table.dst])
        sel = sel[np.argsort(table.start_s[sel], kind="stable")]
        sat_end = table.dst[sel]
    else:
        sel = np.flatnonzero((table.rate_bps > 0.0) & st[table.dst] & sat[table.src])
        sel = sel[np.argsort(table.end_s[sel], kind="stable")]
        sat_end = table.src[sel]
    dur = table.end_s[sel] - table.start_s[sel]
    links = _Links(table.start_s[sel], table.end_s[sel], table.rate_bps[sel], table.capacity_bytes[sel], sat_end,
                   sel, float(dur.max()) if len(sel) else 0.0)
    if len(_LINKS_CACHE) >= 64:
        _LINKS_CACHE.pop(next(iter(_LINKS_CACHE)))
    _LINKS_CACHE[key] = (table, links)
    return links


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one static search's data enters (forward) or leaves (reverse) the mesh.

    ``nodes[k]`` is reached at (forward) / must leave by (reverse) ``times_s[k]``
    over ``contact[k]`` (-1: the data starts there, no hop).
    """

    nodes: np.ndarray
    times_s: np.ndarray
    contact: np.ndarray
    bits: float


def _forward_static_row(table: ContactTable, static: StaticIsl, sources: tuple[int, ...], t0_s: float,
                        size_bytes: float, horizon_s: float) -> tuple[np.ndarray, _Entry]:
    """Earliest arrival at every node (one :func:`forward_batch` row) over static ISLs, and its entry points."""
    n_v = len(table.nodes)
    bits = 8.0 * size_bytes
    stations = frozenset(s for s in sources if table.is_station[s])
    nodes: list[np.ndarray] = [np.array([s for s in sources if s not in stations], dtype=np.int64)]
    times: list[np.ndarray] = [np.full(len(nodes[0]), t0_s)]
    contacts: list[np.ndarray] = [np.full(len(nodes[0]), -1, dtype=np.int64)]
    if stations:
        up = _links(table, "up", stations)
        lo = int(np.searchsorted(up.start_s, t0_s - up.max_duration_s, "left"))
        hi_all = int(np.searchsorted(up.start_s, horizon_s, "right"))
        # An uplink ending later than the first one of its component plus the mesh's largest transfer time is
        # dominated (the mesh gets there first): widen the look-ahead only until no component can gain.
        margin = bits * static.diameter_s_per_bit
        comp = static.component
        served = static.uplinked_components.get(stations)
        if served is None:
            served = np.zeros(static.n_components, dtype=bool)
            served[comp[up.sat]] = True
            static.uplinked_components[stations] = served
        look = 2.0 * up.max_duration_s + margin + 60.0
        while True:
            hi = min(hi_all, int(np.searchsorted(up.start_s, t0_s + look, "right")))
            start, end, rate = up.start_s[lo:hi], up.end_s[lo:hi], up.rate_bps[lo:hi]
            e = np.maximum(start, t0_s) + bits / rate
            ok = (e <= np.minimum(end, horizon_s)) & (up.capacity_bytes[lo:hi] >= size_bytes)
            if hi == hi_all:
                break
            first = np.full(static.n_components, np.inf)
            np.minimum.at(first, comp[up.sat[lo:hi][ok]], e[ok])
            if bool(np.all(~served | (first + margin <= t0_s + look))):
                break
            look *= 4.0
        idx = np.flatnonzero(ok)
        if len(idx):
            # First uplink per satellite: sort by (satellite, arrival) and keep each satellite's first.
            sat, e_ok = up.sat[lo:hi][idx], e[idx]
            order = np.lexsort((e_ok, sat))
            keep = order[np.r_[True, sat[order][1:] != sat[order][:-1]]]
            nodes.append(sat[keep])
            times.append(e_ok[keep])
            contacts.append(up.contact[lo:hi][idx][keep])
    entry_nodes = np.concatenate(nodes)
    entry_t = np.concatenate(times)
    entry_c = np.concatenate(contacts)
    arrival = np.full(n_v, np.inf)
    arrival[list(sources)] = t0_s
    if len(entry_nodes):
        np.minimum.at(arrival, entry_nodes, entry_t)
        # Relay from the entry points in order of arrival; an entry already reached no later through the mesh is
        # dominated (triangle inequality) and skipped, so usually only the first few are expanded.
        order = np.argsort(entry_t, kind="stable")
        entry_nodes, entry_t, entry_c = entry_nodes[order], entry_t[order], entry_c[order]
        relay = np.full(n_v, np.inf)
        used = np.zeros(len(entry_nodes), dtype=bool)
        for lo in range(0, len(entry_nodes), 16):
            chunk = np.arange(lo, min(lo + 16, len(entry_nodes)))
            chunk = chunk[entry_t[chunk] < relay[entry_nodes[chunk]]]
            if not len(chunk):
                continue
            used[chunk] = True
            t_leave = np.maximum(entry_t[chunk], static.window_lo_s)
            cand = (t_leave[:, None] + _transfer_s(static.s_per_bit[entry_nodes[chunk]], bits)).min(axis=0)
            np.minimum(relay, cand, out=relay)
        relay[(relay > min(horizon_s, static.window_hi_s)) | table.is_station] = np.inf
        np.minimum(arrival, relay, out=arrival)
        entry_nodes, entry_t, entry_c = entry_nodes[used], entry_t[used], entry_c[used]
    return arrival, _Entry(entry_nodes, entry_t, entry_c, bits)


def _exits_row(table: ContactTable, static: StaticIsl, targets: frozenset[int], deadline_s: float,
               size_bytes: float) -> _Entry:
    """Where data may leave the mesh for a target (satellite, latest downlink start) in one static reverse search.

    Only the exits that can give some node its latest departure are kept (see below), each satellite once.
    """
    bits = 8.0 * size_bytes
    down = _links(table, "down", targets)
    empty = _Entry(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), bits)
    if not len(down.end_s):
        return empty
    # Only exits within the mesh's largest transfer time of the latest one of their component (nodes of other
    # components cannot reach it) can matter: widen the look-back until it covers them in every component.
    margin = bits * static.diameter_s_per_bit
    comp = static.component
    first_end = static.first_exit_end_s.get(targets)
    if first_end is None:
        first_end = np.full(static.n_components, np.inf)
        np.minimum.at(first_end, comp[down.sat], down.end_s)
        static.first_exit_end_s[targets] = first_end
    hi = int(np.searchsorted(down.end_s, deadline_s + down.max_duration_s, "right"))
    look = 2.0 * down.max_duration_s + margin + 60.0
    while True:
        lo = int(np.searchsorted(down.end_s, deadline_s - look, "left"))
        start, end, rate = down.start_s[lo:hi], down.end_s[lo:hi], down.rate_bps[lo:hi]
        s = np.minimum(end, deadline_s) - bits / rate
        ok = (s >= start) & (down.capacity_bytes[lo:hi] >= size_bytes)
        best = np.full(static.n_components, -np.inf)
        np.maximum.at(best, comp[down.sat[lo:hi][ok]], s[ok])
        if lo == 0 or bool(np.all((best - margin >= deadline_s - look) | (first_end >= deadline_s - look))):
            break
        look *= 4.0
    idx = np.flatnonzero(ok & (s >= best[comp[down.sat[lo:hi]]] - margin))
    if not len(idx):
        return empty
    sat, s_ok = down.sat[lo:hi][idx], s[idx]
    order = np.lexsort((-s_ok, sat))
    keep = order[np.r_[True, sat[order][1:] != sat[order][:-1]]]
    return _Entry(sat[keep], s_ok[keep], down.contact[lo:hi][idx][keep], bits)


_EXITS_CHUNK_CELLS = 500_000  # (rows x window) cells per array pass of _exits_rows: bounds its memory


def _exits_rows(table: ContactTable, static: StaticIsl, targets: list[frozenset[int]], deadline_s: np.ndarray,
                size_bytes: np.ndarray) -> list[_Entry]:
    """:func:`_exits_row` of many searches: the same entries, the first look-back of all rows in array passes.

    Rows are grouped by target set; each group scans its rows' first look-back windows as one padded
    ``(rows, window)`` array with :func:`_exits_row`'s arithmetic element by element, and rows whose window
    was not wide enough (rare) run :func:`_exits_row` itself. Per-satellite selection is one stable lexsort
    over ``(row, satellite, -start)``, which orders each row's elements as its own lexsort does.
    """
    out: list[_Entry | None] = [None] * len(targets)
    by_targets: dict[frozenset[int], list[int]] = {}
    for r, t in enumerate(targets):
        by_targets.setdefault(t, []).append(r)
    for tset, rows_all in by_targets.items():
        down = _links(table, "down", tset)
        if not len(down.end_s) or len(rows_all) < 2:
            for r in rows_all:
                out[r] = _exits_row(table, static, tset, float(deadline_s[r]), float(size_bytes[r]))
            continue
        comp = static.component
        first_end = static.first_exit_end_s.get(tset)
        if first_end is None:
            first_end = np.full(static.n_components, np.inf)
            np.minimum.at(first_end, comp[down.sat], down.end_s)
            static.first_exit_end_s[tset] = first_end
        n_comp = static.n_components
        rows_arr = np.array(rows_all, dtype=np.int64)
        deadline_all = deadline_s[rows_arr].astype(np.float64)
        size_all = size_bytes[rows_arr].astype(np.float64)
        bits_all = 8.0 * size_all
        margin_all = bits_all * static.diameter_s_per_bit
        look_all = 2.0 * down.max_duration_s + margin_all + 60.0
        hi_all = np.searchsorted(down.end_s, deadline_all + down.max_duration_s, "right")
        lo_all = np.searchsorted(down.end_s, deadline_all - look_all, "left")
        width_all = hi_all - lo_all
        # Chunks of rows from the widest window down keep the padding (and memory) small: a chunk is as
        # wide as its first row.
        by_width = np.argsort(-width_all, kind="stable")
        pos = 0
        while pos < len(by_width):
            w_max = max(1, int(width_all[by_width[pos]]))
            take = max(1, _EXITS_CHUNK_CELLS // w_max)
            chunk = by_width[pos:pos + take]
            pos += take
            _exits_chunk(static, down, first_end, n_comp, rows_arr[chunk], deadline_all[chunk], size_all[chunk],
                         bits_all[chunk], margin_all[chunk], look_all[chunk], lo_all[chunk], hi_all[chunk], out,
                         table, tset)
    assert all(e is not None for e in out)
    return [e for e in out if e is not None]


def _exits_chunk(static: StaticIsl, down: _Links, first_end: np.ndarray, n_comp: int, rows: np.ndarray,
                 deadline: np.ndarray, size: np.ndarray, bits: np.ndarray, margin: np.ndarray, look: np.ndarray,
                 lo: np.ndarray, hi: np.ndarray, out: list[_Entry | None], table: ContactTable,
                 tset: frozenset[int]) -> None:
    """One array pass of :func:`_exits_rows` over rows sharing a target set; fills ``out[row]``."""
    n = len(rows)
    width = hi - lo
    w = max(1, int(width.max()))
    col = np.arange(w)
    valid = col[None, :] < width[:, None]
    at = np.minimum(lo[:, None] + col[None, :], len(down.end_s) - 1)
    start, end, rate = down.start_s[at], down.end_s[at], down.rate_bps[at]
    s = np.minimum(end, deadline[:, None]) - bits[:, None] / rate
    ok = (s >= start) & (down.capacity_bytes[at] >= size[:, None]) & valid
    comp = static.component[down.sat[at]]
    best = np.full((n, n_comp), -np.inf)
    cell = np.arange(n)[:, None] * n_comp + comp
    np.maximum.at(best.reshape(-1), cell[ok], s[ok])
    wide = (lo == 0) | np.all((best - margin[:, None] >= (deadline - look)[:, None])
                              | (first_end[None, :] >= (deadline - look)[:, None]), axis=1)
    for j in np.flatnonzero(~wide).tolist():  # look-back too short: widen it row by row, as _exits_row does
        out[int(rows[j])] = _exits_row(table, static, tset, float(deadline[j]), float(size[j]))
    keep = ok & wide[:, None] & (s >= best.reshape(-1)[cell] - margin[:, None])
    r_idx, c_idx = np.nonzero(keep)  # row-major: each row's elements in window order
    sat = down.sat[at[r_idx, c_idx]]
    s_ok = s[r_idx, c_idx]
    order = np.lexsort((-s_ok, sat, r_idx))
    r_o, sat_o = r_idx[order], sat[order]
    first = np.r_[True, (r_o[1:] != r_o[:-1]) | (sat_o[1:] != sat_o[:-1])] if len(order) else np.zeros(0, bool)
    sel = order[first]
    r_sel = r_idx[sel]
    bounds = np.searchsorted(r_sel, np.arange(n + 1))
    sat_sel, s_sel, contact_sel = sat[sel], s_ok[sel], down.contact[at[r_idx[sel], c_idx[sel]]]
    for j in np.flatnonzero(wide).tolist():
        a, b = int(bounds[j]), int(bounds[j + 1])
        if a == b:
            out[int(rows[j])] = _Entry(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), float(bits[j]))
        else:
            out[int(rows[j])] = _Entry(sat_sel[a:b], s_sel[a:b], contact_sel[a:b], float(bits[j]))


def _depart_rows(table: ContactTable, static: StaticIsl, exits: list[_Entry], targets: list[frozenset[int]],
                 deadline_s: list[float]) -> np.ndarray:
    """Latest departure from every node for each search given its exits: ``(R, V)`` (rows of :func:`reverse_batch`).

    ``depart[u] = max_w (t_w - bits * s_per_bit[u, w])`` over the exits ``w``: a max-plus product of V x W
    (W is often hundreds: every satellite then in view of a station). It is computed as shortest paths on the
    reversed mesh from one super source per search, linked to each exit ``w`` with weight
    ``offset + (latest - t_w) / bits`` (one scipy Dijkstra call for all searches of the batch); ``offset``
    keeps those weights positive (scipy ignores explicit zeros) and is subtracted again. Searches of 0 bytes
    or few exits take the product directly.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    n_v = len(table.nodes)
    out = np.full((len(exits), n_v), -np.inf)
    indptr, indices, data = static.reverse_csr
    offset = float(data.min()) if len(data) else 1e-12
    via_graph = [r for r, e in enumerate(exits) if e.bits > 0 and len(e.nodes) > 8]
    by_graph = set(via_graph)
    for r, e in enumerate(exits):
        if len(e.nodes) and r not in by_graph:
            via = e.times_s[None, :] - _transfer_s(static.s_per_bit[:, e.nodes], e.bits)
            out[r] = via.max(axis=1)
    for lo in range(0, len(via_graph), 256):
        rows = via_graph[lo:lo + 256]
        n = n_v + len(rows)
        latest = np.array([float(exits[r].times_s.max()) for r in rows])
        weights = [offset + (latest[k] - exits[r].times_s) / exits[r].bits for k, r in enumerate(rows)]
        ends = np.cumsum([len(exits[r].nodes) for r in rows]) + len(data)
        graph = csr_matrix((np.concatenate([data, *weights]),
                            np.concatenate([indices, *(exits[r].nodes for r in rows)]),
                            np.r_[indptr[:n_v], len(data), ends]), shape=(n, n))
        dist = dijkstra(graph, directed=True, indices=np.arange(n_v, n))[:, :n_v]
        bits = np.array([exits[r].bits for r in rows])
        out[rows] = latest[:, None] - bits[:, None] * (dist - offset)
    # Leaving before the ISLs exist would wait: conservatively impossible (never happens when ISLs span the plan).
    out[out < static.window_lo_s] = -np.inf
    out[:, table.is_station] = -np.inf
    for r, e in enumerate(exits):
        out[r, e.nodes] = np.maximum(out[r, e.nodes], e.times_s)  # leaving by the exit's own downlink: no ISL
        out[r, list(targets[r])] = deadline_s[r]
    return out


class ForwardSearches:
    """Earliest arrivals of many queries (:func:`forward_batch` semantics) with route recovery.

    Uses the static ISL fast path where it applies (exact), else the batched
    Bellman-Ford. ``arrival`` is ``(Q, V)``; :meth:`path` gives the contacts of a
    route achieving ``arrival[q, node]``.
    """

    def __init__(self, table: ContactTable, sources: list[tuple[int, ...]], t0_s: np.ndarray,
                 size_bytes: np.ndarray, horizon_s: np.ndarray) -> None:
        self.table = table
        self.sources = sources
        self.size_bytes = size_bytes
        self.static = static_isl(table)
        self.entries: dict[int, _Entry] = {}  # static rows with station sources: where data enters the mesh
        self.single: dict[int, int] = {}  # static rows whose data starts on one satellite: that satellite
        n_q = len(sources)
        self.arrival = np.full((n_q, len(table.nodes)), np.inf)
        static = self.static
        batch = [q for q in range(n_q) if static is None or size_bytes[q] > static.min_capacity_bytes]
        if static is not None:
            single: list[int] = []
            for q in range(n_q):
                if size_bytes[q] > static.min_capacity_bytes:
                    continue
                if len(sources[q]) == 1 and not table.is_station[sources[q][0]]:
                    single.append(q)
                else:
                    self.arrival[q], self.entries[q] = _forward_static_row(
                        table, static, sources[q], float(t0_s[q]), float(size_bytes[q]), float(horizon_s[q]))
            self._single_source_rows(np.array(single, dtype=np.int64), t0_s, horizon_s)
        if batch:
            rows = np.array(batch)
            self.arrival[rows] = forward_batch(table, [sources[q] for q in batch], t0_s[rows], size_bytes[rows],
                                               horizon_s[rows])

    @property
    def static_rows(self) -> set[int]:
        """The queries answered by the static ISL fast path (the others ran batched)."""
        return set(self.entries) | set(self.single)

    def _single_source_rows(self, rows: np.ndarray, t0_s: np.ndarray, horizon_s: np.ndarray) -> None:
        """Rows whose data starts on one satellite (onboard, capture): one vectorised mesh lookup for all."""
        static = self.static
        assert static is not None
        table = self.table
        for lo in range(0, len(rows), 512):
            qs = rows[lo:lo + 512]
            src = np.array([self.sources[q][0] for q in qs], dtype=np.int64)
            bits = 8.0 * self.size_bytes[qs]
            per_bit = static.s_per_bit[src]
            with np.errstate(invalid="ignore"):  # 0 bits x inf (unreachable): reset to inf below
                arr = np.maximum(t0_s[qs], static.window_lo_s)[:, None] + bits[:, None] * per_bit
            arr[~np.isfinite(per_bit)] = np.inf
            arr[arr > np.minimum(horizon_s[qs], static.window_hi_s)[:, None]] = np.inf
            arr[:, table.is_station] = np.inf
            arr[np.arange(len(qs)), src] = t0_s[qs]
            self.arrival[qs] = arr
            self.single.update(zip(qs.tolist(), src.tolist(), strict=True))

    def path(self, q: int, node: int) -> list[int] | None:
        """Contacts (in order) of a route reaching ``node`` at ``arrival[q, node]``; None if unreachable."""
        if not math.isfinite(self.arrival[q, node]):
            return None
        if self.static is not None and q in self.single:
            return isl_path(self.static, self.single[q], node)
        entry = self.entries.get(q)
        if entry is None or self.static is None:
            return forward_path(self.table, self.arrival[q], node, int(self.size_bytes[q]), self.sources[q])
        if node in self.sources[q]:
            return []
        if not len(entry.nodes):
            return None
        via = np.maximum(entry.times_s, self.static.window_lo_s) + _transfer_s(
            self.static.s_per_bit[entry.nodes, node], entry.bits)
        direct = entry.nodes == node
        via[direct] = entry.times_s[direct]
        k = int(np.argmin(via))
        mesh = isl_path(self.static, int(entry.nodes[k]), node)
        if mesh is None or not math.isfinite(via[k]):
            return None
        return ([int(entry.contact[k])] if entry.contact[k] >= 0 else []) + mesh

    def paths(self, q: int, nodes: list[int]) -> list[list[int] | None]:
        """:meth:`path` of query ``q`` for each of ``nodes`` (the same answers; one array pass for all nodes).

        A query whose data enters the mesh over uplinks picks, per node, the entry point that gets there
        first: one ``(entries, nodes)`` array instead of a few small array operations per node.
        """
        entry = self.entries.get(q)
        static = self.static
        if entry is None or static is None or len(nodes) < 2 or not len(entry.nodes):
            return [self.path(q, n) for n in nodes]
        out: list[list[int] | None] = [None] * len(nodes)
        arrival = self.arrival[q]
        sources = self.sources[q]
        live: list[int] = []
        for j, n in enumerate(nodes):
            if not math.isfinite(arrival[n]):
                continue
            if n in sources:
                out[j] = []
            else:
                live.append(j)
        if not live:
            return out
        idx = np.array([nodes[j] for j in live], dtype=np.int64)
        # Column j is path()'s ``via`` for node idx[j], element by element the same arithmetic.
        via = np.maximum(entry.times_s, static.window_lo_s)[:, None] + _transfer_s(
            static.s_per_bit[entry.nodes[:, None], idx[None, :]], entry.bits)
        direct = entry.nodes[:, None] == idx[None, :]
        via[direct] = np.broadcast_to(entry.times_s[:, None], via.shape)[direct]
        ks = np.argmin(via, axis=0)
        best = via[ks, np.arange(len(idx))]
        entry_nodes, entry_contact = entry.nodes.tolist(), entry.contact.tolist()
        for j, n, k, t in zip(live, idx.tolist(), ks.tolist(), best.tolist(), strict=True):
            mesh = isl_path(static, entry_nodes[k], n)
            if mesh is None or not math.isfinite(t):
                continue
            out[j] = ([entry_contact[k]] if entry_contact[k] >= 0 else []) + mesh
        return out


class ReverseSearches:
    """Latest departures of many queries (:func:`reverse_batch` semantics) with route recovery.

    Uses the static ISL fast path where it applies (exact), else the batched
    search. ``depart`` is ``(Q, V)``; :meth:`path` gives the contacts of a route
    achieving ``depart[q, node]``.
    """

    def __init__(self, table: ContactTable, targets: list[frozenset[int]], deadline_s: np.ndarray,
                 size_bytes: np.ndarray, not_before_s: np.ndarray) -> None:
        self.table = table
        self.targets = targets
        self.size_bytes = size_bytes
        self.static = static_isl(table)
        self.exits: dict[int, _Entry] = {}
        n_q = len(targets)
        self.depart = np.full((n_q, len(table.nodes)), -np.inf)
        static = self.static
        batch = [q for q in range(n_q) if static is None or size_bytes[q] > static.min_capacity_bytes]
        if static is not None:
            fast = [q for q in range(n_q) if size_bytes[q] <= static.min_capacity_bytes]
            self.exits.update(zip(fast, _exits_rows(table, static, [targets[q] for q in fast], deadline_s[fast],
                                                    size_bytes[fast]), strict=True))
            if fast:
                self.depart[fast] = _depart_rows(table, static, [self.exits[q] for q in fast],
                                                 [targets[q] for q in fast], [float(deadline_s[q]) for q in fast])
        if batch:
            rows = np.array(batch)
            self.depart[rows] = reverse_batch(table, [targets[q] for q in batch], deadline_s[rows],
                                              size_bytes[rows], not_before_s[rows])

    @property
    def static_rows(self) -> set[int]:
        """The queries answered by the static ISL fast path (the others ran batched)."""
        return set(self.exits)

    def path(self, q: int, node: int) -> list[int] | None:
        """Contacts (in order) of a route leaving ``node`` at ``depart[q, node]`` to a target; None if none."""
        if not math.isfinite(self.depart[q, node]):
            return None
        exits = self.exits.get(q)
        if exits is None or self.static is None:
            return reverse_path(self.table, self.depart[q], node, int(self.size_bytes[q]), self.targets[q])
        if node in self.targets[q] or not len(exits.nodes):
            return None
        per_bit = self.static.s_per_bit[node, exits.nodes]
        # inf (no route) gives -inf; with 0 bits only reachability counts.
        via = exits.times_s - exits.bits * per_bit if exits.bits > 0 else np.where(
            np.isfinite(per_bit), exits.times_s, -np.inf)
        k = int(np.argmax(via))
        mesh = isl_path(self.static, node, int(exits.nodes[k]))
        if mesh is None or not math.isfinite(via[k]):
            return None
        return [*mesh, int(exits.contact[k])]

    def paths(self, q: int, nodes: list[int]) -> list[list[int] | None]:
        """:meth:`path` of query ``q`` for each of ``nodes`` (the same answers; one array pass for all nodes)."""
        exits = self.exits.get(q)
        static = self.static
        if exits is None or static is None or len(nodes) < 2:
            return [self.path(q, n) for n in nodes]
        out: list[list[int] | None] = [None] * len(nodes)
        depart = self.depart[q]
        targets = self.targets[q]
        live = [j for j, n in enumerate(nodes) if math.isfinite(depart[n]) and n not in targets]
        if not live or not len(exits.nodes):
            return out
        idx = np.array([nodes[j] for j in live], dtype=np.int64)
        # Row j is path()'s ``via`` for node idx[j], element by element the same arithmetic.
        per_bit = static.s_per_bit[idx[:, None], exits.nodes[None, :]]
        via = exits.times_s[None, :] - exits.bits * per_bit if exits.bits > 0 else np.where(
            np.isfinite(per_bit), exits.times_s[None, :], -np.inf)
        ks = np.argmax(via, axis=1)
        best = via[np.arange(len(idx)), ks]
        exit_nodes, exit_contact = exits.nodes.tolist(), exits.contact.tolist()
        for j, n, k, t in zip(live, idx.tolist(), ks.tolist(), best.tolist(), strict=True):
            mesh = isl_path(static, n, exit_nodes[k])
            if mesh is None or not math.isfinite(t):
                continue
            out[j] = [*mesh, exit_contact[k]]
        return out
