"""Ground-station passes: when each satellite is above each station's elevation mask.

Algorithm (vectorised; no Python loop over satellite x station pairs or time steps):

1. Satellites are propagated a chunk at a time on the regular grid of
   :func:`orbit.propagate.propagate`. The samples are the grid times inside the
   window plus the window end itself (interpolated), so both window edges are
   sampled exactly.
2. Coarse screening: one batched matrix product of unit vectors gives the cosine
   of the central angle between every satellite and every station at every
   sample. A pass is only possible where that angle is below the geometric
   visibility limit of the station's mask for the satellite's highest radius
   (spherical geometry, mask lowered by the largest deflection of the vertical,
   0.19 deg, because stations use the geodetic up). The limit is widened by the
   satellite's largest Earth-fixed angular rate times half a step: any instant
   above the mask then has a *candidate* sample within half a step, so no pass,
   even one shorter than a step, can fall between samples unseen.
3. Candidate samples (plus one neighbour on each side, which is provably below
   the mask) form runs per (satellite, station). Exact elevations are computed
   there. Every sampled local maximum is refined on the cubic Hermite
   interpolation of the ephemeris: the sign of the elevation rate at the peak
   sample picks the grid cell holding the true maximum, and the rate's root in
   that cell is the maximum.
4. Refined maxima above the mask are merged into the sampled sequence; each
   maximal stretch above the mask is a pass. AOS and LOS are the mask crossings
   between the last point below and the first above (always within one grid
   cell), TCA is the highest point of the stretch. Roots are found for all
   passes at once by the Illinois method (superlinear; bisection backs it up)
   to better than 2 ms. Passes in progress at the window start or end get
   AOS = 0 or LOS = duration and ``truncated=True``; their TCA and maximum
   elevation are those within the window.

Limitations, stated: within one pass the elevation must not dip below the mask
and rise again within a single grid step (true for LEO/MEO/GEO with a 60 s
step; a dip that short would be missed and the two passes merged). A satellite
whose SGP4 propagation fails anywhere in the window (decayed elements) gets no
passes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from orbit.contact_plan import GroundContacts
from orbit.propagate import (
    DEFAULT_STEP_S,
    Ephemeris,
    StationGeometry,
    elevation_deg,
    propagate,
)
from orbit.types import Constellation, GroundStation
from skyinfer.errors import InputError

EARTH_ROTATION_RAD_S = 7.2921159e-5
# Angle between the geodetic up and the geocentric radial on WGS84 (largest at 45 deg latitude: 0.1924 deg).
MAX_VERTICAL_DEFLECTION_DEG = 0.2
# Extra central angle added to the screening cone: float32 rounding of the cosines and slack.
SCREEN_SLACK_DEG = 0.05
# Safety factor on the sampled angular rate and radius bounds (variation between samples).
RATE_SAFETY = 1.05
RADIUS_SAFETY = 1.002
RADIUS_SLACK_KM = 5.0
# Root finding for AOS, LOS and TCA stops once a step or the bracket is below this.
TIME_TOLERANCE_S = 2e-3
# Screening cells (satellites x stations x samples) per chunk: bounds peak memory (16 MB per float32 array);
# smaller chunks stay in cache better, larger ones pay less per-chunk overhead (measured flat from 2M to 16M).
DEFAULT_CHUNK_CELLS = 4_000_000
# Accepted like the CLI's --step-s; the refinement interpolates the grid (cubic Hermite), whose LEO error grows
# as step^4 (measured on Starlink: 0.3 m at 60 s, 5 m at 120 s, 0.2 km at 300 s, 3.4 km at 600 s).
MAX_STEP_S = 600.0

ProgressCallback = Callable[[int, int], None]


def find_ground_contacts(
    constellation: Constellation,
    stations: Sequence[GroundStation],
    start_utc: datetime,
    duration_s: float,
    *,
    step_s: float = DEFAULT_STEP_S,
    chunk_satellites: int | None = None,
    progress: ProgressCallback | None = None,
) -> GroundContacts:
    """Every pass of every satellite above every station's elevation mask in a window.

    Parameters
    ----------
    constellation : Constellation
        Satellites; ``GroundContacts.sat`` indexes it.
    stations : sequence of GroundStation
        Stations with their own ``min_elevation_deg``; ``GroundContacts.station`` indexes it.
    start_utc : datetime
        Window start (naive datetimes are taken as UTC). All times returned are seconds after it.
    duration_s : float
        Window length, seconds (> 0).
    step_s : float
        Propagation grid step, seconds, in (0, 600]. Passes shorter than a step are still found;
        the step trades screening work against refinement work and interpolation accuracy (keep
        it <= 120 s for LEO timing to 0.01 s).
    chunk_satellites : int, optional
        Satellites propagated and screened together; by default chosen so that each screening
        array holds about 4 million cells (16 MB of float32), which bounds peak memory.
    progress : callable(done_sats, total_sats), optional
        Called after each chunk.

    Returns
    -------
    GroundContacts
        Sorted by (aos_s, sat, station). ``aos_s``/``los_s``: elevation crosses the mask (to ~1 ms);
        ``tca_s``/``max_elevation_deg``: highest elevation within the window. Passes in progress at
        the window start or end are clipped to it and flagged ``truncated``.

    Raises
    ------
    InputError
        ``duration_s``, ``step_s`` or ``chunk_satellites`` out of range.
    """
    if not isinstance(start_utc, datetime):
        raise InputError(f"find_ground_contacts: start_utc: expected a datetime, got {start_utc!r}")
    if not (_is_real(duration_s) and math.isfinite(duration_s) and duration_s > 0):
        raise InputError(f"find_ground_contacts: duration_s: must be a finite number > 0, got {duration_s!r}")
    if not (_is_real(step_s) and math.isfinite(step_s) and 0 < step_s <= MAX_STEP_S):
        raise InputError(f"find_ground_contacts: step_s: must be within (0, {MAX_STEP_S:g}], got {step_s!r}")
    if chunk_satellites is not None and (isinstance(chunk_satellites, bool)
                                         or not isinstance(chunk_satellites, numbers.Integral) or chunk_satellites < 1):
        raise InputError(f"find_ground_contacts: chunk_satellites: must be an integer >= 1, got {chunk_satellites!r}")
    stations = tuple(stations)
    n_sat = len(constellation)
    if n_sat == 0 or not stations:
        return GroundContacts.empty()
    duration_s = float(duration_s)
    step_s = float(step_s)
    geometry = StationGeometry.of(stations)
    n_samples = math.ceil(duration_s / step_s) + 1
    chunk = int(chunk_satellites) if chunk_satellites else max(1, DEFAULT_CHUNK_CELLS // (len(stations) * n_samples))
    parts: list[GroundContacts] = []
    for lo in range(0, n_sat, chunk):
        sat_ids = np.arange(lo, min(lo + chunk, n_sat))
        eph = propagate(constellation, start_utc, duration_s, step_s=step_s, sat_index=sat_ids)
        parts.append(_chunk_passes(eph, sat_ids, geometry, duration_s))
        if progress is not None:
            progress(int(sat_ids[-1]) + 1, n_sat)
    return _concat(parts).sorted()


TargetKey = tuple[float, float, float]  # (latitude_deg, longitude_deg, min_elevation_deg)
TargetPasses = dict[TargetKey, tuple[tuple[str, float], ...]]
# The passes found so far, for the latest (constellation object, window) only.
_TARGET_PASSES: dict[tuple[int, datetime, float], tuple[Constellation, TargetPasses]] = {}


def target_passes(constellation: Constellation, targets: Sequence[TargetKey], start_utc: datetime,
                  duration_s: float) -> TargetPasses:
    """``(satellite name, tca_s)`` of every pass of every satellite over each target, a target being a point on
    the ground with its own elevation mask (:func:`find_ground_contacts`, all new targets in one call).

    Memoised per target for the latest constellation object and window: a rolling re-plan (replay, the service
    loop) and the plan validator ask for the same targets round after round, and passes over one target do not
    depend on which others are asked for with it.
    """
    memo_key = (id(constellation), start_utc, duration_s)
    hit = _TARGET_PASSES.get(memo_key)
    if hit is None or hit[0] is not constellation:  # a new window, or an id reused by another object
        hit = (constellation, {})
        _TARGET_PASSES.clear()
        _TARGET_PASSES[memo_key] = hit
    memo = hit[1]
    missing = sorted({k for k in targets if k not in memo})
    if missing:
        stations = [GroundStation(f"target {k}", k[0], k[1], 0.0, k[2]) for k in missing]
        passes = find_ground_contacts(constellation, stations, start_utc, duration_s)
        found: dict[TargetKey, list[tuple[str, float]]] = {k: [] for k in missing}
        names = constellation.names
        for sat, station, tca in zip(passes.sat, passes.station, passes.tca_s, strict=True):
            found[missing[int(station)]].append((names[int(sat)], float(tca)))
        memo.update((k, tuple(v)) for k, v in found.items())
    return {k: memo[k] for k in targets}


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _concat(parts: list[GroundContacts]) -> GroundContacts:
    parts = [p for p in parts if len(p)]
    if not parts:
        return GroundContacts.empty()
    return GroundContacts(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("sat", "station", "aos_s", "los_s", "tca_s", "max_elevation_deg", "truncated")))


def visibility_half_angle_rad(station_radius_km: np.ndarray, satellite_radius_km: np.ndarray,
                              min_elevation_deg: np.ndarray) -> np.ndarray:
    """Geocentric angle between station and satellite at which the satellite sits at ``min_elevation_deg``.

    Spherical geometry (station radius, geocentric elevation): ``arccos(R cos(e) / r) - e`` radians; the
    satellite is above that elevation exactly when the angle is smaller. The angle grows with the satellite
    radius, so the highest radius gives an upper bound. Arrays broadcast together.
    """
    e = np.radians(min_elevation_deg)
    ratio = np.clip(station_radius_km * np.cos(e) / satellite_radius_km, -1.0, 1.0)
    return np.arccos(ratio) - e


def _chunk_passes(eph: Ephemeris, sat_ids: np.ndarray, geometry: StationGeometry, duration_s: float) -> GroundContacts:
    h = eph.step_s
    n_in = math.ceil(duration_s / h)  # grid points strictly before the window end
    tau = np.append(eph.t_s[:n_in], duration_s)  # sample times (K,), both window edges included
    n_local = eph.n_satellites
    n_k = len(tau)
    n_sta = len(geometry.min_elevation_deg)

    # A satellite with any failed SGP4 state gets no passes (its interpolated positions are unusable).
    valid = np.isfinite(eph.r_teme_km).all(axis=(1, 2))
    r_end = eph.ecef_at(np.arange(n_local), np.full(n_local, duration_s))
    r_ecef = np.concatenate([eph.grid_ecef_km()[:, :n_in], r_end[:, None, :]], axis=1)  # (n, K, 3)
    radius_km = np.linalg.norm(r_ecef, axis=-1)  # (n, K)
    r_ecef[~valid] = 0.0
    radius_km[~valid] = 1.0

    # Screening cone per (satellite, station).
    speed = np.linalg.norm(eph.v_teme_km_s, axis=-1)
    inertial_rate = np.where(valid[:, None], speed / np.linalg.norm(eph.r_teme_km, axis=-1), 0.0)
    rate_rad_s = np.nanmax(inertial_rate, axis=1) * RATE_SAFETY + EARTH_ROTATION_RAD_S  # (n,)
    r_max_km = radius_km.max(axis=1) * RADIUS_SAFETY + RADIUS_SLACK_KM
    sta_radius_km = np.linalg.norm(geometry.r_ecef_km, axis=1)
    half_angle = visibility_half_angle_rad(sta_radius_km[None, :], r_max_km[:, None],
                                           geometry.min_elevation_deg[None, :] - MAX_VERTICAL_DEFLECTION_DEG)
    cone = half_angle + rate_rad_s[:, None] * (h / 2.0) + math.radians(SCREEN_SLACK_DEG)
    cos_limit = np.where(cone >= math.pi, -2.0, np.cos(np.minimum(cone, math.pi))).astype(np.float32)

    u_sat = (r_ecef / radius_km[..., None]).astype(np.float32)  # (n, K, 3)
    u_sta = (geometry.r_ecef_km / sta_radius_km[:, None]).astype(np.float32)  # (S, 3)
    cos_angle = np.matmul(u_sta[None], u_sat.transpose(0, 2, 1))  # (n, S, K)
    candidate = cos_angle >= cos_limit[:, :, None]
    del cos_angle
    candidate[~valid] = False
    # One neighbour each side: those samples are below the mask and bound every pass.
    dilated = candidate.copy()
    dilated[:, :, 1:] |= candidate[:, :, :-1]
    dilated[:, :, :-1] |= candidate[:, :, 1:]
    del candidate
    flat = np.flatnonzero(dilated)  # ordered by (satellite, station, sample); faster than a 3-D nonzero
    del dilated
    pair, k = np.divmod(flat, n_k)
    sat_l, sta = np.divmod(pair, n_sta)
    if len(k) == 0:
        return GroundContacts.empty()

    mask_deg = geometry.min_elevation_deg
    t = tau[k]
    e = elevation_deg(r_ecef.reshape(-1, 3).take(sat_l * n_k + k, axis=0), geometry.r_ecef_km.take(sta, axis=0),
                      geometry.up.take(sta, axis=0))
    theta0_rad, theta_rate_rad_s = _sidereal_angle_linear(eph)

    def cells(q_sat: np.ndarray, q_sta: np.ndarray, t_lo_s: np.ndarray) -> _Cells:
        return _Cells.build(eph, q_sat, q_sta, t_lo_s, geometry, theta0_rad, theta_rate_rad_s)

    # Runs of consecutive samples of one (satellite, station) pair.
    first = np.ones(len(k), bool)
    first[1:] = (pair[1:] != pair[:-1]) | (k[1:] != k[:-1] + 1)
    last = np.append(first[1:], True)
    run = np.cumsum(first) - 1

    # Sampled local maxima (a missing neighbour counts as -inf). The elevation rate at the peak sample says
    # on which side the true maximum lies (elevation is unimodal over two steps); the rate's root is then
    # found within that one grid cell.
    left = np.where(first, -np.inf, np.roll(e, 1))
    right = np.where(last, -np.inf, np.roll(e, -1))
    peak = np.flatnonzero((e >= left) & (e > right))
    p_sat, p_sta, p_k = sat_l[peak], sta[peak], k[peak]
    k_next = np.minimum(p_k + 1, n_k - 1)
    right_cells = cells(p_sat, p_sta, tau[p_k])
    rate_at_peak = right_cells.rate_sign(tau[p_k])
    rising = rate_at_peak > 0.0
    k_a = np.where(rising, p_k, np.maximum(p_k - 1, 0))
    k_b = np.where(rising, k_next, p_k)
    t_peak = t[peak].copy()
    e_peak = e[peak].copy()
    # Rising peaks reuse the cells built for the rate test; falling ones need the cell before the sample.
    go_right = np.flatnonzero(rising)
    go_left = np.flatnonzero(~rising)
    for chosen, chosen_cells, f_at_peak_is_lo in (
        (go_right, right_cells.take(go_right), True),
        (go_left, cells(p_sat[go_left], p_sta[go_left], tau[k_a[go_left]]), False),
    ):
        known = -rate_at_peak[chosen]  # the function is "falling": -rate
        root = _find_root(_Falling(chosen_cells), tau[k_a[chosen]], tau[k_b[chosen]],
                          f_lo=known if f_at_peak_is_lo else None, f_hi=None if f_at_peak_is_lo else known)
        e_root = chosen_cells.elevation_deg(root)
        better = e_root > e_peak[chosen]
        t_peak[chosen] = np.where(better, root, t_peak[chosen])
        e_peak[chosen] = np.where(better, e_root, e_peak[chosen])
    keep = e_peak > mask_deg[p_sta]

    # Merge refined maxima above the mask into the sampled sequence, which stays ordered by (run, time): a
    # maximum lies between its peak sample's neighbours, so it goes just before or just after that sample.
    kept = peak[keep]
    at = kept + (t_peak[keep] > t[kept])
    all_run = np.insert(run, at, run[kept])
    all_t = np.insert(t, at, t_peak[keep])
    all_e = np.insert(e, at, e_peak[keep])
    all_sat = np.insert(sat_l, at, p_sat[keep])
    all_sta = np.insert(sta, at, p_sta[keep])
    first = np.ones(len(all_t), bool)
    first[1:] = all_run[1:] != all_run[:-1]
    last = np.append(first[1:], True)

    above = all_e > mask_deg[all_sta]
    above_prev = np.append(False, above[:-1])
    above_next = np.append(above[1:], False)
    is_start = above & (first | ~above_prev)
    starts = np.flatnonzero(is_start)
    ends = np.flatnonzero(above & (last | ~above_next))
    if len(starts) == 0:
        return GroundContacts.empty()
    s_sat = all_sat[starts]
    s_sta = all_sta[starts]

    # TCA: the highest point of each stretch. Segments from each stretch start to the next cover the stretch
    # and then points below the mask only, which are masked out.
    height = np.where(above, all_e, -np.inf)
    max_el = np.maximum.reduceat(height, starts)
    segment = np.cumsum(is_start) - 1
    at_top = np.flatnonzero(above & (height == max_el[segment]))
    top = at_top[np.unique(segment[at_top], return_index=True)[1]]
    tca = all_t[top]

    # AOS / LOS: the mask crossing between the neighbouring point below the mask and the stretch's end point; the two
    # are always within one grid cell (neighbouring samples, or a sample and a refined maximum).
    aos_open = first[starts]  # the stretch begins its run: only possible at the window start
    los_open = last[ends]
    need_aos = ~aos_open
    need_los = ~los_open
    below_t = np.concatenate([all_t[starts[need_aos] - 1], all_t[ends[need_los] + 1]])
    above_t = np.concatenate([all_t[starts[need_aos]], all_t[ends[need_los]]])
    b_sat = np.concatenate([s_sat[need_aos], s_sat[need_los]])
    b_sta = np.concatenate([s_sta[need_aos], s_sta[need_los]])
    crossing_cells = cells(b_sat, b_sta, np.minimum(below_t, above_t))
    sin_mask = np.sin(np.radians(mask_deg[b_sta]))
    e_below = np.concatenate([all_e[starts[need_aos] - 1], all_e[ends[need_los] + 1]])
    e_above = np.concatenate([all_e[starts[need_aos]], all_e[ends[need_los]]])
    crossing = _find_root(_AboveMask(crossing_cells, sin_mask), below_t, above_t,
                          f_lo=np.sin(np.radians(e_below)) - sin_mask, f_hi=np.sin(np.radians(e_above)) - sin_mask)
    n_aos = int(need_aos.sum())
    aos = all_t[starts].copy()
    los = all_t[ends].copy()
    aos[need_aos] = crossing[:n_aos]
    los[need_los] = crossing[n_aos:]
    truncated = (aos_open & (aos <= 0.0)) | (los_open & (los >= duration_s))
    return GroundContacts(sat_ids[s_sat].astype(np.int64), s_sta.astype(np.int64), aos, los, tca, max_el,
                          truncated)


def _sidereal_angle_linear(eph: Ephemeris) -> tuple[float, float]:
    """GMST as ``theta0 + rate * t_s``: over days the quadratic term of GMST 1982 is below 1e-12 rad."""
    span_s = 3600.0  # short enough that the angle advances < 2 pi, so the difference needs no unwrapping
    theta = eph.gmst_rad(np.array([0.0, span_s]))
    return float(theta[0]), float((theta[1] - theta[0]) % (2.0 * math.pi)) / span_s


@dataclass(frozen=True, slots=True)
class _Cells:
    """Per query, the cubic Hermite polynomial of one grid cell (TEME) and the station it is seen from.

    Gathering the coefficients once makes each evaluation a few elementwise passes over (M,) arrays,
    which is what the refinement loops repeat.
    """

    t0_s: np.ndarray  # (M,) start of the cell
    step_s: float
    coef: np.ndarray  # (4, 3, M): r(s) = c0 + c1 s + c2 s^2 + c3 s^3 with s = (t - t0) / step, km
    r_sta_km: np.ndarray  # (3, M) Earth-fixed
    up: np.ndarray  # (3, M)
    theta0_rad: float
    theta_rate_rad_s: float

    @classmethod
    def build(cls, eph: Ephemeris, sat: np.ndarray, sta: np.ndarray, t_lo_s: np.ndarray, geometry: StationGeometry,
              theta0_rad: float, theta_rate_rad_s: float) -> _Cells:
        h = eph.step_s
        n_t = len(eph.t_s)
        cell = np.clip(np.floor(t_lo_s / h).astype(np.int64), 0, n_t - 2)
        # Flat row indices into (N*T, 3) views: one take per array is cheaper than 2-D fancy indexing.
        row = sat * n_t + cell
        r = eph.r_teme_km.reshape(-1, 3)
        v = eph.v_teme_km_s.reshape(-1, 3)
        p0 = r.take(row, axis=0).T
        p1 = r.take(row + 1, axis=0).T
        m0 = v.take(row, axis=0).T * h
        m1 = v.take(row + 1, axis=0).T * h
        coef = np.empty((4, 3, len(row)))
        coef[0] = p0
        coef[1] = m0
        coef[2] = 3.0 * (p1 - p0) - 2.0 * m0 - m1
        coef[3] = 2.0 * (p0 - p1) + m0 + m1
        return cls(eph.t_s[cell], h, coef, geometry.r_ecef_km.T.take(sta, axis=1), geometry.up.T.take(sta, axis=1),
                   theta0_rad, theta_rate_rad_s)

    def take(self, index: np.ndarray) -> _Cells:
        return _Cells(self.t0_s[index], self.step_s, self.coef[:, :, index], self.r_sta_km[:, index],
                      self.up[:, index], self.theta0_rad, self.theta_rate_rad_s)

    def _state(self, t_s: np.ndarray, with_velocity: bool) -> tuple[np.ndarray, ...]:
        """Station-to-satellite vector (3, M) in the Earth-fixed frame, and its rate if asked."""
        s = (t_s - self.t0_s) / self.step_s
        c0, c1, c2, c3 = self.coef
        r = ((c3 * s + c2) * s + c1) * s + c0  # (3, M) TEME
        theta = self.theta0_rad + self.theta_rate_rad_s * t_s
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        d = np.empty_like(r)
        d[0] = cos_t * r[0] + sin_t * r[1]
        d[1] = cos_t * r[1] - sin_t * r[0]
        d[2] = r[2]
        if not with_velocity:
            d -= self.r_sta_km
            return (d,)
        v = ((3.0 * c3 * s + 2.0 * c2) * s + c1) / self.step_s  # TEME velocity, km/s
        # d/dt of the rotation: v_ecef = R v_teme + theta_rate * (y, -x, 0).
        w = np.empty_like(v)
        w[0] = cos_t * v[0] + sin_t * v[1] + self.theta_rate_rad_s * d[1]
        w[1] = cos_t * v[1] - sin_t * v[0] - self.theta_rate_rad_s * d[0]
        w[2] = v[2]
        d -= self.r_sta_km
        return d, w

    def sin_elevation(self, t_s: np.ndarray) -> np.ndarray:
        (d,) = self._state(t_s, False)
        return _dot(d, self.up) / np.sqrt(_dot(d, d))

    def elevation_deg(self, t_s: np.ndarray) -> np.ndarray:
        return np.degrees(np.arcsin(np.clip(self.sin_elevation(t_s), -1.0, 1.0)))

    def rate_sign(self, t_s: np.ndarray) -> np.ndarray:
        """A quantity with the sign of d(elevation)/dt: (v.up) |d|^2 - (d.up)(d.v)."""
        d, v = self._state(t_s, True)
        return _dot(v, self.up) * _dot(d, d) - _dot(d, self.up) * _dot(d, v)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (3, M) arrays."""
    out: np.ndarray = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return out


class _RootFunction(Protocol):
    """A vectorised function of time (one element per query) that can be restricted to some queries."""

    def __call__(self, t_s: np.ndarray) -> np.ndarray: ...

    def take(self, index: np.ndarray) -> _RootFunction: ...


@dataclass(frozen=True, slots=True)
class _AboveMask:
    """sin(elevation) - sin(mask): positive above the mask."""

    cells: _Cells
    sin_mask: np.ndarray

    def __call__(self, t_s: np.ndarray) -> np.ndarray:
        return self.cells.sin_elevation(t_s) - self.sin_mask

    def take(self, index: np.ndarray) -> _AboveMask:
        return _AboveMask(self.cells.take(index), self.sin_mask[index])


@dataclass(frozen=True, slots=True)
class _Falling:
    """Positive where the elevation decreases: its root between a rising and a falling time is the maximum."""

    cells: _Cells

    def __call__(self, t_s: np.ndarray) -> np.ndarray:
        return -self.cells.rate_sign(t_s)

    def take(self, index: np.ndarray) -> _Falling:
        return _Falling(self.cells.take(index))


def _find_root(f: _RootFunction, lo_s: np.ndarray, hi_s: np.ndarray, *, f_lo: np.ndarray | None = None,
               f_hi: np.ndarray | None = None, tol_s: float = TIME_TOLERANCE_S,
               max_secant_steps: int = 12) -> np.ndarray:
    """Vectorised root of ``f`` between ``lo_s`` (f <= 0) and ``hi_s`` (f > 0), either order in time.

    Regula falsi with the Anderson-Bjorck correction converges superlinearly on these smooth functions
    (three or four evaluations here). ``f_lo``/``f_hi``, when known, save evaluations. An element is done
    when the secant through its last two iterates predicts a next step below ``tol_s / 2`` (the distance to
    the root, to first order) or its bracket is below ``tol_s``; any left after ``max_secant_steps`` is
    finished by bisection to ``tol_s``. Where
    ``f`` has no sign change the end on the expected side is returned (``lo_s`` if f > 0 there, else
    ``hi_s``). Only unfinished elements are evaluated (``f`` is restricted as they finish).
    """
    lo = np.asarray(lo_s, dtype=float).copy()
    hi = np.asarray(hi_s, dtype=float).copy()
    if len(lo) == 0:
        return lo
    f_lo = f(lo) if f_lo is None else np.asarray(f_lo, dtype=float).copy()
    f_hi = f(hi) if f_hi is None else np.asarray(f_hi, dtype=float).copy()
    x = np.where(f_lo > 0.0, lo, hi)
    f_x = np.where(f_lo > 0.0, f_lo, f_hi)
    active = np.flatnonzero(~((f_lo > 0.0) | (f_hi <= 0.0) | (lo == hi)))
    rows = np.arange(len(lo))  # the elements ``f`` currently covers
    for _ in range(max_secant_steps):
        if len(active) == 0:
            return x
        if len(active) < len(rows) // 2:
            f = f.take(np.searchsorted(rows, active))
            rows = active
        a = active
        pos = np.searchsorted(rows, a)
        la, ha, fla, fha = lo[a], hi[a], f_lo[a], f_hi[a]
        denom = np.where(fha != fla, fha - fla, 1.0)
        xa = np.clip((la * fha - ha * fla) / denom, np.minimum(la, ha), np.maximum(la, ha))
        fa = f(xa) if len(rows) == len(a) else _evaluate_subset(f, rows, pos, xa, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            next_step = np.abs(fa * (xa - x[a]) / (fa - f_x[a]))
        next_step = np.where(fa == 0.0, 0.0, next_step)  # nan/inf (no slope) compare as not converged
        x[a] = xa
        f_x[a] = fa
        to_hi = fa > 0.0
        # Anderson-Bjorck: the end kept has its value scaled by 1 - f(new)/f(replaced end) (0.5 if that is not
        # positive), which keeps plain regula falsi from creeping up on the root from one side.
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(to_hi, 1.0 - fa / fha, 1.0 - fa / fla)
        scale = np.where(scale > 0.0, scale, 0.5)
        f_lo[a] = np.where(to_hi, scale * fla, fa)
        f_hi[a] = np.where(to_hi, fa, scale * fha)
        lo[a] = np.where(to_hi, la, xa)
        hi[a] = np.where(to_hi, xa, ha)
        active = a[~(next_step < tol_s / 2.0) & (np.abs(hi[a] - lo[a]) >= tol_s)]
    if len(active) == 0:
        return x
    # Stragglers: plain bisection to ``tol_s``.
    g = f.take(np.searchsorted(rows, active))
    x[active] = _bisect(lambda t: g(t) > 0.0, lo[active], hi[active], tol_s)
    return x


def _evaluate_subset(f: _RootFunction, rows: np.ndarray, pos: np.ndarray, t_sub: np.ndarray,
                     x: np.ndarray) -> np.ndarray:
    """Evaluate ``f`` (covering ``rows``) at ``t_sub`` for rows ``pos`` and at the current ``x`` elsewhere."""
    t_all = x[rows].copy()
    t_all[pos] = t_sub
    return f(t_all)[pos]


def _bisect(is_hi_side: Callable[[np.ndarray], np.ndarray], lo_s: np.ndarray, hi_s: np.ndarray,
            tol_s: float = TIME_TOLERANCE_S) -> np.ndarray:
    """Vectorised bisection for where ``is_hi_side(t)`` switches from False (at ``lo_s``) to True (at ``hi_s``).

    ``lo_s`` may be later than ``hi_s``. Each element is halved until its own bracket is below ``tol_s`` (so
    its answer does not depend on the other elements) and the bracket midpoint is returned.
    """
    lo = np.asarray(lo_s, dtype=float).copy()
    hi = np.asarray(hi_s, dtype=float).copy()
    if len(lo) == 0:
        return lo
    width = np.abs(hi - lo)
    with np.errstate(divide="ignore"):
        n_halvings = np.where(width > tol_s, np.ceil(np.log2(width / tol_s)), 0.0)
    for i in range(int(n_halvings.max())):
        mid = 0.5 * (lo + hi)
        up = is_hi_side(mid)
        moving = i < n_halvings
        hi = np.where(up & moving, mid, hi)
        lo = np.where(~up & moving, mid, lo)
    return 0.5 * (lo + hi)
