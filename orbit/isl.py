"""Inter-satellite links (ISL): which pairs can hold a link, and when.

Geometry. A link between satellites at ``r_a`` and ``r_b`` needs

* range ``|r_b - r_a| <= max_range_km`` (terminal reach; Starlink's lasers
  reach >5,000 km, docs/domain.md), and
* a line of sight that clears the Earth plus a grazing altitude (80 km by
  default, the norm shared by Hypatia, Celestial and PASEOS): the closest point
  of the *segment* ``r_a → r_b`` to the Earth's centre must lie farther than
  ``6378.137 km + grazing_altitude_km`` (a sphere of the WGS84 equatorial radius,
  the conservative choice: the polar radius is 21 km smaller).

Both conditions depend only on the relative geometry of the two position
vectors, which a rotation of the frame does not change, so everything here is
computed in TEME straight from the SGP4 ephemeris.

Policies (:class:`~orbit.types.IslConfig`):

* ``grid`` (+Grid): each satellite links to its two intra-plane neighbours
  (slot ± 1, wrapping) and to one satellite in each adjacent plane (plane ± 1)
  of its shell; a link exists only while the geometry allows it. Degree <= 4.
* ``nearest:K``: K terminals per satellite, re-chosen at every selection
  instant by greedy matching on range; interval ends are selection instants.
* ``los``: every geometrically possible pair (analysis; memory grows with the
  number of visible pairs × instants).

Times are seconds after ``Ephemeris.start_utc``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from orbit.contact_plan import IslContacts
from orbit.planes import assign_planes, mean_altitude_km, mean_inclination_deg, orbit_angles, plane_successors
from orbit.propagate import Ephemeris
from orbit.types import Constellation, IslConfig

EARTH_RADIUS_KM = 6378.137  # WGS84 equatorial radius (conservative for grazing)
BOUNDARY_TOL_S = 0.1
NEAREST_DEFAULT_STEP_S = 30.0
# Upper bound on pair × instant evaluations held in memory at once (float64 (…, 3) temporaries).
_CHUNK_ELEMENTS = 2_000_000
# nearest:K first matches among each satellite's (this × K) nearest neighbours, then proves the result
# equals the matching over all pairs (see nearest_selection).
_NEAREST_CANDIDATES_PER_TERMINAL = 4
_NEAREST_MAX_ROUNDS = 4


# --------------------------------------------------------------------------- geometry


def _feasible_from_dots(a2: np.ndarray, b2: np.ndarray, ab: np.ndarray, max_range_km: float,
                        grazing_altitude_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Link test from ``|a|²``, ``|b|²`` and ``a·b`` (km²), any matching shapes.

    The closest point of the segment ``a + s (b - a)`` to the origin has
    ``s = (|a|² - a·b) / |b - a|²``; inside ``(0, 1)`` its squared distance is
    ``|a|² - (|a|² - a·b)² / |b - a|²``, otherwise it is the nearer end point
    (``s <= 0`` implies ``|a| <= |b|`` and ``s >= 1`` the reverse, so that is
    ``min(|a|², |b|²)``). Working with dot products avoids gathering (K, 3)
    temporaries, which dominates the cost for a million pairs.
    """
    d2 = a2 + b2 - 2.0 * ab
    num = a2 - ab
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = (num > 0.0) & (num < d2)
        clear2 = np.where(inside, a2 - num * num / np.where(d2 > 0.0, d2, 1.0), np.minimum(a2, b2))
        rng = np.sqrt(np.maximum(d2, 0.0))
        ok = (rng <= max_range_km) & (clear2 > (EARTH_RADIUS_KM + grazing_altitude_km) ** 2)
    return ok, rng


def link_feasible(r_a_km: np.ndarray, r_b_km: np.ndarray, *, max_range_km: float,
                  grazing_altitude_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Whether each segment can carry a link, and its range.

    Parameters
    ----------
    r_a_km, r_b_km : ndarray, shape (..., 3)
        Positions (km) of both ends in one Earth-centred frame.

    Returns
    -------
    ok : ndarray of bool, shape (...)
        Range within ``max_range_km`` and the segment ``r_a → r_b`` clears
        ``EARTH_RADIUS_KM + grazing_altitude_km`` (exact closest point of the
        segment). NaN positions are not ok.
    range_km : ndarray, shape (...)
    """
    a2 = np.einsum("...i,...i->...", r_a_km, r_a_km)
    b2 = np.einsum("...i,...i->...", r_b_km, r_b_km)
    ab = np.einsum("...i,...i->...", r_a_km, r_b_km)
    return _feasible_from_dots(a2, b2, ab, max_range_km, grazing_altitude_km)


def los_pairs(r_km: np.ndarray, *, max_range_km: float, grazing_altitude_km: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs that can hold a link at one instant.

    Candidates within ``max_range_km`` come from a k-d tree
    (``cKDTree.query_pairs``); each is then kept only if its segment clears the
    Earth (exact closest point of the segment, see the module docstring).

    Parameters
    ----------
    r_km : ndarray, shape (N, 3)
        Positions in any Earth-centred frame (km). Rows with NaN (failed SGP4
        states) take part in no pair.

    Returns
    -------
    pairs : ndarray, shape (K, 2), int64
        Satellite indices ``i < j``, sorted lexicographically.
    range_km : ndarray, shape (K,)
    """
    r = np.asarray(r_km, dtype=float).reshape(-1, 3)
    n = len(r)
    finite = np.flatnonzero(np.isfinite(r).all(axis=1))
    if len(finite) < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    tree = cKDTree(r[finite])
    local = tree.query_pairs(max_range_km, output_type="ndarray")
    if len(local) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    i = finite[local[:, 0]].astype(np.int64)
    j = finite[local[:, 1]].astype(np.int64)
    x, y, z = (np.ascontiguousarray(r[:, c]) for c in range(3))
    norm2 = x * x + y * y + z * z
    ab = x[i] * x[j] + y[i] * y[j] + z[i] * z[j]
    ok, rng = _feasible_from_dots(norm2[i], norm2[j], ab, max_range_km, grazing_altitude_km)
    key = np.minimum(i, j)[ok] * n + np.maximum(i, j)[ok]
    order = np.argsort(key)
    key = key[order]
    return np.stack([key // n, key % n], axis=1), rng[ok][order]


# --------------------------------------------------------------------------- time sampling


def _sample_times(end_s: float, step_s: float) -> np.ndarray:
    t = np.arange(0.0, end_s, step_s)
    if len(t) == 0 or end_s - t[-1] > 1e-9:
        t = np.append(t, end_s)
    return t


def _positions(ephemeris: Ephemeris, t_s: np.ndarray) -> np.ndarray:
    """TEME positions of every satellite at ``t_s``, shape (N, len(t_s), 3).

    Grid instants are read straight from the ephemeris; others are interpolated.
    """
    k = t_s / ephemeris.step_s
    k_int = np.rint(k).astype(np.int64)
    if np.all(np.abs(k - k_int) < 1e-9) and k_int.max(initial=0) < len(ephemeris.t_s):
        return ephemeris.r_teme_km[:, k_int]
    n = ephemeris.n_satellites
    r, _ = ephemeris.teme_at(np.arange(n)[:, None], t_s[None, :])
    return r


def _time_chunks(n_per_instant: int, n_times: int) -> list[slice]:
    size = max(1, _CHUNK_ELEMENTS // max(1, n_per_instant))
    return [slice(i, min(i + size, n_times)) for i in range(0, n_times, size)]


# --------------------------------------------------------------------------- runs and refinement


def _runs(key: np.ndarray, k: np.ndarray, range_km: np.ndarray) -> tuple[np.ndarray, ...]:
    """Runs of consecutive sample indices per key.

    Parameters
    ----------
    key, k, range_km : ndarray, shape (E,)
        One entry per (pair, sample) where the link holds.

    Returns
    -------
    key, k_first, k_last, min_range_km, max_range_km : ndarray, shape (R,)
    """
    if len(key) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy(), np.zeros(0), np.zeros(0)
    order = np.lexsort((k, key))
    key, k, range_km = key[order], k[order], range_km[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | (k[1:] != k[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(key)) - 1
    return (key[first], k[first], k[last], np.minimum.reduceat(range_km, first),
            np.maximum.reduceat(range_km, first))


def _bisect_boundaries(ephemeris: Ephemeris, a: np.ndarray, b: np.ndarray, t_ok_s: np.ndarray,
                       t_bad_s: np.ndarray, config: IslConfig) -> tuple[np.ndarray, np.ndarray]:
    """Refine, for each pair, the instant the link switches between ``t_ok_s`` (holds) and ``t_bad_s``.

    Vectorised bisection on interpolated positions until the bracket is at most
    :data:`BOUNDARY_TOL_S`; returns the last instant known to hold (so intervals
    never include a time the geometry refuses) and the range there.
    """
    ok_t = np.asarray(t_ok_s, dtype=float).copy()
    bad_t = np.asarray(t_bad_s, dtype=float).copy()
    if len(ok_t):
        n_iter = max(0, math.ceil(math.log2(max(np.abs(bad_t - ok_t).max(), BOUNDARY_TOL_S) / BOUNDARY_TOL_S)))
        for _ in range(n_iter):
            mid = 0.5 * (ok_t + bad_t)
            ra, _ = ephemeris.teme_at(a, mid)
            rb, _ = ephemeris.teme_at(b, mid)
            holds, _ = link_feasible(ra, rb, max_range_km=config.max_range_km,
                                     grazing_altitude_km=config.grazing_altitude_km)
            ok_t = np.where(holds, mid, ok_t)
            bad_t = np.where(holds, bad_t, mid)
    ra, _ = ephemeris.teme_at(a, ok_t)
    rb, _ = ephemeris.teme_at(b, ok_t)
    return ok_t, np.sqrt(np.einsum("...i,...i->...", rb - ra, rb - ra))


def _geometric_contacts(ephemeris: Ephemeris, a: np.ndarray, b: np.ndarray, k_first: np.ndarray,
                        k_last: np.ndarray, min_range_km: np.ndarray, max_range_km: np.ndarray,
                        t_s: np.ndarray, config: IslConfig) -> IslContacts:
    """Turn sampled runs into intervals whose ends are bisected to the geometric boundary."""
    start = t_s[k_first].copy()
    end = t_s[k_last].copy()
    lo = k_first > 0
    if lo.any():
        start[lo], r_lo = _bisect_boundaries(ephemeris, a[lo], b[lo], t_s[k_first[lo]], t_s[k_first[lo] - 1],
                                             config)
        min_range_km[lo] = np.minimum(min_range_km[lo], r_lo)
        max_range_km[lo] = np.maximum(max_range_km[lo], r_lo)
    hi = k_last < len(t_s) - 1
    if hi.any():
        end[hi], r_hi = _bisect_boundaries(ephemeris, a[hi], b[hi], t_s[k_last[hi]], t_s[k_last[hi] + 1], config)
        min_range_km[hi] = np.minimum(min_range_km[hi], r_hi)
        max_range_km[hi] = np.maximum(max_range_km[hi], r_hi)
    return IslContacts(a.astype(np.int64), b.astype(np.int64), start, end, min_range_km, max_range_km).sorted()


# --------------------------------------------------------------------------- +Grid topology


def grid_pairs(ephemeris: Ephemeris, constellation: Constellation, *,
               planes: np.ndarray | None = None) -> np.ndarray:
    """The +Grid neighbour pairs (topology only, geometry not checked), shape (K, 2), ``a < b``.

    Planes and slots come from ``planes`` (shape (N,): planes, slots are then
    the rank by argument of latitude at the ephemeris start; shape (2, N):
    planes and slots), else from ``Satellite.plane``/``slot`` when every
    satellite has them (Walker shells), else from
    :func:`orbit.planes.assign_planes` at the ephemeris start.

    Intra-plane: consecutive slots, wrapping. Cross-plane: each satellite links
    to one satellite of the successor plane of its shell
    (:func:`orbit.planes.plane_successors`; a Walker-star seam has none): the
    same slot for Walker planes p → p + 1, otherwise (the Walker-delta seam
    P-1 → 0, whose slots are shifted by the phasing, and clustered catalogs) the
    satellites nearest in argument of latitude at the ephemeris start, chosen
    by a greedy matching on the difference in argument of latitude so that
    planes with unequal numbers of satellites still pair up as much as
    possible. Each satellite has at most one link to its successor plane and
    one from its predecessor plane, so no satellite has more than 4 neighbours.
    """
    n = len(constellation)
    if ephemeris.n_satellites != n:
        raise ValueError(f"ephemeris has {ephemeris.n_satellites} satellites, constellation {n}")
    r0, v0 = ephemeris.teme_at(np.arange(n), np.zeros(n))
    finite = np.isfinite(r0).all(axis=1) & np.isfinite(v0).all(axis=1)
    u_deg = np.full(n, np.nan)
    if finite.any():
        u_deg[finite] = orbit_angles(r0[finite], v0[finite]).arg_latitude_deg
    own = n > 0 and bool((constellation.planes >= 0).all() and (constellation.slots >= 0).all())
    given_slots = False
    if planes is not None:
        given = np.asarray(planes, dtype=np.int64)
        if given.shape == (n,):
            plane, slot = given.copy(), np.full(n, -1, dtype=np.int64)
        elif given.shape == (2, n):
            plane, slot, given_slots = given[0].copy(), given[1].copy(), True
        else:
            raise ValueError(f"planes: expected shape ({n},) or (2, {n}), got {given.shape}")
        walker = own and given_slots and bool((plane == constellation.planes).all()
                                              and (slot == constellation.slots).all())
    elif own:
        plane, slot, walker, given_slots = constellation.planes, constellation.slots, True, True
    else:
        plane, slot = assign_planes(constellation, ephemeris)
        walker, given_slots = False, True
    plane = np.where(finite, plane, -1)
    if not given_slots:
        # Slots by argument of latitude at the start.
        order = np.lexsort((u_deg, plane))
        sp = plane[order]
        slot = np.empty(n, dtype=np.int64)
        slot[order] = np.arange(n) - np.searchsorted(sp, sp, side="left")
    member = np.flatnonzero(plane >= 0)
    if len(member) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # Sort members by (plane, slot); neighbours are consecutive entries, wrapping within a plane.
    m_order = member[np.lexsort((slot[member], plane[member]))]
    mp = plane[m_order]
    group_start = np.searchsorted(mp, mp, side="left")
    group_end = np.searchsorted(mp, mp, side="right")
    pos = np.arange(len(m_order))
    nxt = np.where(pos + 1 < group_end, pos + 1, group_start)
    intra = np.stack([m_order, m_order[nxt]], axis=1)
    intra = intra[intra[:, 0] != intra[:, 1]]

    succ = plane_successors(plane, r0, v0, mean_inclination_deg(constellation), mean_altitude_km(constellation))
    src = m_order[succ[mp] >= 0]
    cross = np.zeros((0, 2), dtype=np.int64)
    if len(src):
        q = succ[plane[src]]
        cand_src: list[np.ndarray] = []
        cand_dst: list[np.ndarray] = []
        cand_cost: list[np.ndarray] = []
        has_same = np.zeros(len(src), dtype=bool)
        if walker:
            # Same slot for Walker planes p -> p + 1 (preferred: cost -1 sorts first).
            width = int(slot.max()) + 1
            key_all = plane[m_order] * width + slot[m_order]
            key_order = np.argsort(key_all, kind="stable")
            same = q == plane[src] + 1
            want = q * width + slot[src]
            at = np.clip(np.searchsorted(key_all[key_order], want), 0, len(key_all) - 1)
            has_same = same & (key_all[key_order][at] == want)
            cand_src.append(src[has_same])
            cand_dst.append(m_order[key_order][at][has_same])
            cand_cost.append(np.full(int(has_same.sum()), -1.0))
        # Elsewhere (Walker-delta seam, clustered catalogs): the satellites of the successor plane nearest
        # in argument of latitude, the two on either side of it.
        rest = ~has_same
        if rest.any():
            by_u = member[np.lexsort((u_deg[member], plane[member]))]
            bp, bu = plane[by_u], u_deg[by_u]
            qs, rs = q[rest], src[rest]
            lo_i = np.searchsorted(bp, qs, side="left")
            size = np.searchsorted(bp, qs, side="right") - lo_i  # plane qs occupies [lo_i, lo_i + size)
            ins = np.searchsorted(bp.astype(float) * 1000.0 + bu, qs.astype(float) * 1000.0 + u_deg[rs])
            for offset in (-2, -1, 0, 1):
                c = lo_i + np.mod(ins + offset - lo_i, np.maximum(size, 1))
                ok = size > 0
                cand_src.append(rs[ok])
                cand_dst.append(by_u[c[ok]])
                cand_cost.append(np.abs((bu[c[ok]] - u_deg[rs[ok]] + 180.0) % 360.0 - 180.0))
        c_src, c_dst, c_cost = np.concatenate(cand_src), np.concatenate(cand_dst), np.concatenate(cand_cost)
        keep = c_src != c_dst
        c_src, c_dst, c_cost = c_src[keep], c_dst[keep], c_cost[keep]
        # One link out to the successor plane and one in from the predecessor plane per satellite:
        # a greedy matching on |Δu| between "out" ends (src) and "in" ends (n + dst).
        order = np.lexsort((c_dst, c_src, c_cost))
        c_src, c_dst = c_src[order], c_dst[order]
        take = greedy_terminal_matching(c_src, n + c_dst, 1, 2 * n)
        cross = np.stack([c_src[take], c_dst[take]], axis=1)
    pairs = np.concatenate([intra, cross])
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


# --------------------------------------------------------------------------- nearest:K selection


def greedy_terminal_matching(u: np.ndarray, v: np.ndarray, capacity: int, n_nodes: int) -> np.ndarray:
    """Greedy b-matching: accept edges in the given order while both ends have a free terminal.

    Equivalent to the sequential loop ``for e in edges: if free[u] and free[v]:
    accept`` but vectorised: an edge that is among the ``free[x]`` most
    preferred remaining edges at both of its ends would be accepted by the
    sequential loop whatever happens elsewhere (fewer than ``free[x]`` earlier
    edges can take a terminal of ``x``), so every round accepts all such edges
    at once, then drops edges touching a full node. Each round accepts at least
    the first remaining edge; in practice a handful of rounds suffice.

    Parameters
    ----------
    u, v : ndarray, shape (E,), int
        Edge ends in ``[0, n_nodes)``, in order of preference (first = best).
    capacity : int
        Terminals per node.

    Returns
    -------
    ndarray of bool, shape (E,)
        Accepted edges.
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    accepted = np.zeros(len(u), dtype=bool)
    free = np.full(n_nodes, capacity, dtype=np.int64)
    alive = np.arange(len(u))
    while len(alive):
        eu, ev = u[alive], v[alive]
        m = len(alive)
        # Interleave both ends of each edge so that a stable sort by node keeps, within every node,
        # the edges in preference order (alive stays in preference order).
        ends = np.stack([eu, ev], axis=1).ravel()
        order = np.argsort(ends, kind="stable")
        sorted_ends = ends[order]
        new_node = np.ones(2 * m, dtype=bool)
        new_node[1:] = sorted_ends[1:] != sorted_ends[:-1]
        group_start = np.maximum.accumulate(np.where(new_node, np.arange(2 * m), 0))
        rank = np.empty(2 * m, dtype=np.int64)
        rank[order] = np.arange(2 * m) - group_start
        rank_u, rank_v = rank[0::2], rank[1::2]
        take = (rank_u < free[eu]) & (rank_v < free[ev])
        accepted[alive[take]] = True
        np.subtract.at(free, eu[take], 1)
        np.subtract.at(free, ev[take], 1)
        alive = alive[~take & (free[eu] > 0) & (free[ev] > 0)]
    return accepted


# --------------------------------------------------------------------------- public entry point


def _los_entries(ephemeris: Ephemeris, t_s: np.ndarray, config: IslConfig) -> tuple[np.ndarray, ...]:
    """(a, b, sample index, range) of every pair with line of sight at every sample; loops over time only."""
    n = ephemeris.n_satellites
    a_parts, b_parts, k_parts, r_parts = [], [], [], []
    for chunk in _time_chunks(n * 8, len(t_s)):
        pos = _positions(ephemeris, t_s[chunk])
        for j in range(pos.shape[1]):
            pairs, rng = los_pairs(pos[:, j], max_range_km=config.max_range_km,
                                   grazing_altitude_km=config.grazing_altitude_km)
            a_parts.append(pairs[:, 0])
            b_parts.append(pairs[:, 1])
            k_parts.append(np.full(len(pairs), chunk.start + j, dtype=np.int64))
            r_parts.append(rng)
    if not a_parts:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy(), np.zeros(0)
    return np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(k_parts), np.concatenate(r_parts)


def _greedy_over_instants(a: np.ndarray, b: np.ndarray, k: np.ndarray, rng: np.ndarray, n: int, n_times: int,
                          capacity: int) -> np.ndarray:
    """Greedy terminal matching of (instant, pair) entries, instants independent; returns the accepted mask.

    Entries must come in (instant, a, b) order: a stable sort on range then breaks ties by index.
    """
    pref = np.argsort(rng, kind="stable")
    take = np.zeros(len(a), dtype=bool)
    take[pref] = greedy_terminal_matching(k[pref] * n + a[pref], k[pref] * n + b[pref], capacity, n * n_times)
    return take


def nearest_selection(ephemeris: Ephemeris, t_s: np.ndarray, config: IslConfig, *,
                      k_offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The nearest:K links chosen at each instant ``t_s``: (a, b, instant index + k_offset, range_km).

    At each instant, pairs with line of sight are taken by increasing range
    (ties by (a, b)) while both ends have a free terminal. Exactly that, but
    cheaper than matching over all ~10^5-10^6 visible pairs:

    1. Candidates are the pairs between each satellite and its ``M + 1``
       nearest neighbours (``M = 4K``, k-d tree); ``d_next`` is the distance of
       the farthest neighbour returned, so a left-out pair is at least
       ``d_next`` away for *both* of its ends.
    2. Match the candidates. A satellite is *settled* when it has fewer than
       ``M + 1`` neighbours within range (all its pairs are candidates) or
       filled its last terminal with a pair shorter than its ``d_next`` (every
       left-out pair at it comes later in the greedy order and meets a full
       terminal).
    3. Add every visible pair between two unsettled satellites to the
       candidates and match again, until no such pair is missing. Then every
       left-out pair has a settled end, and by induction along the greedy
       order the matching equals the one over all pairs. (Dense shells need
       this: greedy matchings are maximal, so leftover satellites link up
       with whatever free satellite is in range, however far.)

    After a few rounds without convergence the remaining instants are matched
    over all visible pairs.

    Parameters
    ----------
    t_s : ndarray, shape (T,)
        Selection instants, seconds after the ephemeris start.

    Returns
    -------
    a, b, k, range_km : ndarray
        Chosen pairs (``a < b``), the index of their instant plus ``k_offset``,
        and their range.
    """
    n = ephemeris.n_satellites
    m = _NEAREST_CANDIDATES_PER_TERMINAL * config.k
    t_s = np.asarray(t_s, dtype=float)
    pos = _positions(ephemeris, t_s)
    n_times = pos.shape[1]
    finite = np.isfinite(pos).all(axis=2)  # (N, T)
    d_next = np.full((n_times, n), np.inf)
    keys: list[np.ndarray] = []
    for j in range(n_times):  # loop over instants only
        alive = np.flatnonzero(finite[:, j])
        if len(alive) < 2:
            keys.append(np.zeros(0, dtype=np.int64))
            continue
        n_query = min(m + 2, len(alive))  # self, M neighbours, the (M+1)-th neighbour
        dist, idx = cKDTree(pos[alive, j]).query(pos[alive, j], k=n_query,
                                                 distance_upper_bound=config.max_range_km)
        if n_query == m + 2:
            d_next[j, alive] = dist[:, m + 1]
        # Missing neighbours come back as index len(alive); self is dropped wherever it appears.
        valid = (idx < len(alive)) & (idx != np.arange(len(alive))[:, None])
        u = np.repeat(alive, idx.shape[1]).reshape(idx.shape)[valid]
        v = alive[idx[valid]]
        keys.append(np.unique(np.minimum(u, v) * n + np.maximum(u, v)))

    def feasible_entries(keys_by_instant: list[np.ndarray], instants: np.ndarray) -> tuple[np.ndarray, ...]:
        a_l, b_l, k_l, r_l = [], [], [], []
        for j in instants:
            key = keys_by_instant[j]
            pa, pb = key // n, key % n
            ok, rng = link_feasible(pos[pa, j], pos[pb, j], max_range_km=config.max_range_km,
                                    grazing_altitude_km=config.grazing_altitude_km)
            a_l.append(pa[ok])
            b_l.append(pb[ok])
            k_l.append(np.full(int(ok.sum()), j, dtype=np.int64))
            r_l.append(rng[ok])
        if not a_l:
            z = np.zeros(0, dtype=np.int64)
            return z, z.copy(), z.copy(), np.zeros(0)
        return tuple(np.concatenate(x) for x in (a_l, b_l, k_l, r_l))

    pending = np.arange(n_times)
    for _ in range(_NEAREST_MAX_ROUNDS):
        a, b, k, rng = feasible_entries(keys, np.arange(n_times))
        take = _greedy_over_instants(a, b, k, rng, n, n_times, config.k)
        ends = np.concatenate([k[take] * n + a[take], k[take] * n + b[take]])
        used = np.bincount(ends, minlength=n * n_times).reshape(n_times, n)
        last_range = np.full(n * n_times, -np.inf)
        np.maximum.at(last_range, ends, np.concatenate([rng[take], rng[take]]))
        last_range = last_range.reshape(n_times, n)
        settled = np.isinf(d_next) | ((used >= config.k) & (last_range < d_next))
        pending_list: list[int] = []
        for j in map(int, np.flatnonzero(~settled.all(axis=1))):  # loop over instants only
            loose = np.flatnonzero(~settled[j] & finite[:, j])
            if len(loose) < 2:
                continue
            local = cKDTree(pos[loose, j]).query_pairs(config.max_range_km, output_type="ndarray")
            key = np.minimum(loose[local[:, 0]], loose[local[:, 1]]) * n + np.maximum(loose[local[:, 0]],
                                                                                       loose[local[:, 1]])
            missing = np.setdiff1d(key, keys[j])
            if len(missing):
                keys[j] = np.union1d(keys[j], missing)
                pending_list.append(j)
        pending = np.asarray(pending_list, dtype=np.int64)
        if len(pending) == 0:
            break
    if len(pending):
        # No convergence: match those instants over every visible pair.
        keep = ~np.isin(k, pending)
        a, b, k, rng, take = a[keep], b[keep], k[keep], rng[keep], take[keep]
        fa, fb, fk, fr = _los_entries(ephemeris, t_s[pending], config)
        ftake = _greedy_over_instants(fa, fb, fk, fr, n, len(pending), config.k)
        a = np.concatenate([a[take], fa[ftake]])
        b = np.concatenate([b[take], fb[ftake]])
        k = np.concatenate([k[take], pending[fk[ftake]]])
        rng = np.concatenate([rng[take], fr[ftake]])
        return a, b, k + k_offset, rng
    return a[take], b[take], k[take] + k_offset, rng[take]


def find_isl_contacts(
    ephemeris: Ephemeris,
    constellation: Constellation,
    config: IslConfig,
    *,
    planes: np.ndarray | None = None,
    step_s: float | None = None,
    duration_s: float | None = None,
) -> IslContacts:
    """Intervals during which each pair can hold a link under ``config.policy``.

    Parameters
    ----------
    ephemeris : Ephemeris
        States of ``constellation`` (same order) over the window.
    constellation : Constellation
    config : IslConfig
        Policy, ``max_range_km`` and ``grazing_altitude_km``.
    planes : ndarray, shape (N,) or (2, N), optional
        Plane (and slot) per satellite for ``grid`` (see :func:`grid_pairs`).
    step_s : float, optional
        Sampling step. ``grid``/``los``: geometry is sampled every ``step_s``
        (default the ephemeris grid step) and each change between samples is
        bisected on interpolated positions to within 0.1 s; an interval shorter
        than one step can be missed. ``nearest:K``: the selection instants
        (default the ephemeris step, at most 30 s).
    duration_s : float, optional
        Window ``[0, duration_s]`` (default the whole ephemeris grid).

    Returns
    -------
    IslContacts
        One row per interval, ``a < b``, sorted by (start_s, a, b), with the
        minimum and maximum range over the samples and ends of the interval.

        * ``grid``/``los``: ends are geometric boundaries (last instant the link
          holds, to 0.1 s) or the window ends.
        * ``nearest:K``: a link chosen at consecutive selection instants
          ``t_i .. t_j`` gives the interval ``[t_i, t_j]``: both ends are
          selection instants (so at any instant no satellite has more than K
          links, even counting closed intervals); a link chosen at a single
          instant only has no duration and is dropped. At each instant pairs
          with line of sight are taken by increasing range (ties by index)
          while both ends have a free terminal (:func:`nearest_selection`;
          exact, without matching over every visible pair).
    """
    n = len(constellation)
    if ephemeris.n_satellites != n:
        raise ValueError(f"ephemeris has {ephemeris.n_satellites} satellites, constellation {n}")
    if config.policy == "none" or n < 2:
        return IslContacts.empty()
    end_s = ephemeris.end_s if duration_s is None else float(duration_s)
    if not 0.0 < end_s <= ephemeris.end_s + 1e-9:
        raise ValueError(f"duration_s: must be within (0, {ephemeris.end_s:g}], got {duration_s!r}")
    if config.policy == "nearest":
        step = min(ephemeris.step_s, NEAREST_DEFAULT_STEP_S) if step_s is None else float(step_s)
    else:
        step = ephemeris.step_s if step_s is None else float(step_s)
    if not step > 0.0:
        raise ValueError(f"step_s: must be > 0, got {step_s!r}")
    t_s = _sample_times(end_s, step)

    if config.policy == "grid":
        pairs = grid_pairs(ephemeris, constellation, planes=planes)
        if len(pairs) == 0:
            return IslContacts.empty()
        keys, ks, rngs = [], [], []
        for chunk in _time_chunks(len(pairs) + n, len(t_s)):
            pos = _positions(ephemeris, t_s[chunk])
            ok, rng = link_feasible(pos[pairs[:, 0]], pos[pairs[:, 1]], max_range_km=config.max_range_km,
                                    grazing_altitude_km=config.grazing_altitude_km)
            p_idx, k_idx = np.nonzero(ok)
            keys.append(p_idx)
            ks.append(k_idx + chunk.start)
            rngs.append(rng[p_idx, k_idx])
        key, k_first, k_last, rmin, rmax = _runs(np.concatenate(keys), np.concatenate(ks), np.concatenate(rngs))
        return _geometric_contacts(ephemeris, pairs[key, 0], pairs[key, 1], k_first, k_last, rmin, rmax, t_s,
                                   config)

    if config.policy == "los":
        a, b, k, rng = _los_entries(ephemeris, t_s, config)
    else:
        # Selection a few instants at a time, so only the chosen links (<= K N / 2 per instant) are kept.
        parts = [nearest_selection(ephemeris, t_s[chunk], config, k_offset=chunk.start)
                 for chunk in _time_chunks(n * _NEAREST_CANDIDATES_PER_TERMINAL * config.k * 4, len(t_s))]
        a, b, k, rng = (np.concatenate([p[i] for p in parts]) for i in range(4))
    key, k_first, k_last, rmin, rmax = _runs(a * n + b, k, rng)
    ra, rb = key // n, key % n
    if config.policy == "los":
        return _geometric_contacts(ephemeris, ra, rb, k_first, k_last, rmin, rmax, t_s, config)
    held = k_last > k_first
    return IslContacts(ra[held], rb[held], t_s[k_first[held]], t_s[k_last[held]], rmin[held],
                       rmax[held]).sorted()
