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
routes recovered with :func:`forward_path` / :func:`reverse_path`). Tests check
both against an independent fixed-point solution.

All times are seconds after ``Problem.epoch_utc``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from orbit.contact_plan import Contact
from scheduler.types import Hop, Problem

__all__ = [
    "ContactTable",
    "OutputOption",
    "Route",
    "chain_timing",
    "contact_table",
    "earliest_arrival",
    "forward_batch",
    "forward_path",
    "forward_search",
    "hops_to",
    "latest_departure",
    "link_capacities",
    "option_from_chain",
    "pick_options",
    "retime_hops",
    "reverse_batch",
    "reverse_path",
    "reverse_search",
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

    Arrays have shape ``(C,)`` aligned with ``contacts``; node indices refer to
    ``nodes`` (satellite names, then ``gs:<station>``). Adjacency lists hold
    only usable contacts (rate > 0), as ``(start_s, end_s, other_node, rate_bps,
    contact_index)`` sorted by start.
    """

    contacts: tuple[Contact, ...]
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


# One table per live Problem (keyed by id; the Problem is kept so the id cannot be reused).
_TABLE_CACHE: dict[int, tuple[Problem, ContactTable]] = {}
_TABLE_CACHE_SIZE = 8


def station_nodes(problem: Problem) -> tuple[str, ...]:
    """Graph node names of every ground station (``gs:<name>``)."""
    return tuple(f"gs:{s.name}" for s in problem.contact_plan.stations)


def _contact_rate_bps(problem: Problem, c: Contact, class_by_station: dict[str, str]) -> float:
    profiles = problem.profiles_by_node
    if c.kind == "ground_up":
        prof = profiles.get(c.dst)
        return prof.uplink_rate_bps(class_by_station[c.src]) if prof is not None else 0.0
    if c.kind == "ground_down":
        prof = profiles.get(c.src)
        return prof.downlink_rate_bps(class_by_station[c.dst]) if prof is not None else 0.0
    pa, pb = profiles.get(c.src), profiles.get(c.dst)
    if pa is None or pb is None:
        return 0.0
    return min(pa.isl_bps, pb.isl_bps)


def contact_table(problem: Problem) -> ContactTable:
    """The (cached) contact table of ``problem``."""
    key = id(problem)
    hit = _TABLE_CACHE.get(key)
    if hit is not None and hit[0] is problem:
        return hit[1]
    table = _build_table(problem)
    if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
        _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
    _TABLE_CACHE[key] = (problem, table)
    return table


def _build_table(problem: Problem) -> ContactTable:
    plan = problem.contact_plan
    contacts = tuple(plan.contacts())
    nodes = tuple(plan.node_names())
    node_index = {n: i for i, n in enumerate(nodes)}
    class_by_station = {f"gs:{s.name}": s.station_class for s in plan.stations}
    n_c = len(contacts)
    src = np.fromiter((node_index[c.src] for c in contacts), np.int64, n_c)
    dst = np.fromiter((node_index[c.dst] for c in contacts), np.int64, n_c)
    start = np.fromiter((c.start_s for c in contacts), np.float64, n_c)
    end = np.fromiter((c.end_s for c in contacts), np.float64, n_c)
    rate = np.fromiter((_contact_rate_bps(problem, c, class_by_station) for c in contacts), np.float64, n_c)
    capacity = np.floor(rate * np.maximum(end - start, 0.0) / 8.0).astype(np.int64)
    out_edges: list[list[tuple[float, float, int, float, int]]] = [[] for _ in nodes]
    in_edges: list[list[tuple[float, float, int, float, int]]] = [[] for _ in nodes]
    for i in np.flatnonzero(rate > 0.0):
        s, d = int(src[i]), int(dst[i])
        out_edges[s].append((float(start[i]), float(end[i]), d, float(rate[i]), int(i)))
        in_edges[d].append((float(start[i]), float(end[i]), s, float(rate[i]), int(i)))
    is_station = np.array([n.startswith("gs:") for n in nodes], dtype=bool)
    return ContactTable(contacts, nodes, node_index, is_station, src, dst, start, end, rate, capacity,
                        tuple(tuple(sorted(e)) for e in out_edges), tuple(tuple(sorted(e)) for e in in_edges))


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
    for ci, d in zip(contact_ids, durations_s, strict=True):
        cum += d
        end = float(table.end_s[ci])
        latest = min(latest, end - cum)
        k = max(k, float(table.start_s[ci])) + d
        if k > end + TIME_EPS_S:
            latest = -math.inf
    total = cum
    ready = k - total if contact_ids else -math.inf
    latest = min(latest, deadline_s - total)
    return latest, ready, total


def retime_hops(problem: Problem, hops: tuple[Hop, ...], ready_s: float) -> tuple[Hop, ...] | None:
    """The same hop chain sent as early as possible once the data is ready at ``ready_s``.

    Each hop keeps its transmission time (``end_s - start_s``). Returns None
    when a hop would no longer fit inside its contact.
    """
    table = contact_table(problem)
    out: list[Hop] = []
    t = ready_s
    for h in hops:
        d = h.end_s - h.start_s
        s = max(t, float(table.start_s[h.contact]))
        e = s + d
        if e > float(table.end_s[h.contact]) + TIME_EPS_S:
            return None
        out.append(Hop(h.src, h.dst, s, e, h.bytes, h.contact))
        t = e
    return tuple(out)


def option_from_chain(table: ContactTable, src: int, contact_ids: list[int], size_bytes: int,
                       deadline_s: float) -> OutputOption | None:
    """The output option of a fixed contact chain leaving node ``src``, timed exactly; None if it cannot work."""
    durations = [8.0 * size_bytes / float(table.rate_bps[ci]) for ci in contact_ids]
    latest, ready, total = chain_timing(table, contact_ids, durations, deadline_s)
    if not contact_ids or latest == -math.inf or max(latest, ready) + total > deadline_s + TIME_EPS_S:
        return None
    hops: list[Hop] = []
    t = latest
    for ci, d in zip(contact_ids, durations, strict=True):
        s = max(t, float(table.start_s[ci]))
        hops.append(Hop(table.nodes[int(table.src[ci])], table.nodes[int(table.dst[ci])], s, s + d, size_bytes,
                        ci))
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
            hop = np.maximum((size * 8.0)[:, None] / table.rate_bps[sel][None, :], MIN_HOP_S)
            limit = np.minimum(table.end_s[sel][None, :], horizon_s[rows][:, None])
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
                e[e > limit[cell] + MIN_HOP_S] = np.inf  # MIN_HOP_S: a zero-byte hop may end at the contact end
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
            hop = np.maximum((size * 8.0)[:, None] / table.rate_bps[sel][None, :], MIN_HOP_S)
            floor_s = np.broadcast_to(table.start_s[sel][None, :], hop.shape).copy()
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
                cand[cand < floor_s[cell] - MIN_HOP_S] = -np.inf  # MIN_HOP_S: as in forward_batch
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
