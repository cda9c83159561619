"""When each satellite is in sunlight, penumbra or umbra (conical Earth shadow).

Model. The Earth is a sphere of radius 6378.137 km (WGS84 equatorial; the
oblateness moves high-latitude shadow boundaries by up to ~21 km, ~3 s of
orbit, and refraction and the atmosphere are ignored), the Sun a sphere of
696,000 km. Seen from the satellite at ``r`` with the Sun at ``s`` (both
geocentric), the Earth's disc has angular radius ``θe = asin(Re/|r|)``, the
Sun's ``θs = asin(Rs/|s - r|)``, and their centres are ``θ`` apart. Then
(Montenbruck & Gill, *Satellite Orbits*, 3.4.2, with discs instead of the
exact overlap area):

* umbra when ``θ < θe - θs`` (the Sun is fully hidden; for any Earth orbit
  ``θe > θs``),
* penumbra when ``θe - θs <= θ < θe + θs`` (partly hidden),
* sunlit otherwise.

Frames. SGP4 positions are TEME; the Sun comes from JPL's DE421 (shipped with
skyfield-data, read offline) as seen from the geocentre, *apparent* direction
(light time and the ~20" annual aberration: light from the Sun reaches the
moving Earth from there), rotated into TEME with skyfield's
``frame_xyz(TEME)``. It is computed once for the whole ephemeris grid in one
vectorised skyfield call and interpolated linearly in between (the Sun moves
0.04° an hour around the Earth; linear interpolation over 60 s is exact to
metres at 1 AU).

Times are seconds after ``Ephemeris.start_utc``.
"""

from __future__ import annotations

import atexit
import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
from skyfield.api import Loader
from skyfield.sgp4lib import TEME
from skyfield_data import get_skyfield_data_path

from orbit.contact_plan import (
    SUNLIGHT_PENUMBRA,
    SUNLIGHT_SUNLIT,
    SUNLIGHT_UMBRA,
    SunlightIntervals,
)
from orbit.propagate import Ephemeris, timescale

EARTH_RADIUS_KM = 6378.137  # WGS84 equatorial radius
SUN_RADIUS_KM = 696_000.0
DEFAULT_REFINE_S = 0.1
# Satellite × sample evaluations held in memory at once.
_CHUNK_ELEMENTS = 2_000_000


@lru_cache(maxsize=1)
def _de421() -> Any:
    """JPL DE421 from skyfield-data (bundled file; never downloads)."""
    with warnings.catch_warnings():
        # skyfield-data warns about every expired file it ships; only Earth-orientation
        # tables expire, and we use skyfield's builtin timescale, not its finals2000A.all.
        warnings.filterwarnings("ignore", message=r"The file finals2000A\.all has expired",
                                category=RuntimeWarning)
        path = get_skyfield_data_path()
    kernel = Loader(path, verbose=False)("de421.bsp")
    # Cached for the process; close the file at exit so no ResourceWarning escapes.
    atexit.register(kernel.close)
    return kernel


def sun_teme_km(ephemeris: Ephemeris, t_s: np.ndarray) -> np.ndarray:
    """Apparent geocentric Sun position in TEME at ``t_s`` seconds after the ephemeris start.

    One vectorised skyfield call; shape (len(t_s), 3), km.
    """
    t_s = np.asarray(t_s, dtype=float)
    start = ephemeris.start_utc
    ts = timescale()
    t = ts.utc(start.year, start.month, start.day, start.hour, start.minute,
               start.second + start.microsecond / 1e6 + t_s)
    eph = _de421()
    apparent = eph["earth"].at(t).observe(eph["sun"]).apparent()
    return np.asarray(apparent.frame_xyz(TEME).km, dtype=float).T.reshape(len(t_s), 3)


def shadow_margins_rad(r_km: np.ndarray, sun_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed angular margins of the umbra and penumbra cones.

    Parameters
    ----------
    r_km, sun_km : ndarray, shape (..., 3)
        Geocentric satellite and Sun positions, same frame (broadcast together).

    Returns
    -------
    umbra_margin_rad, penumbra_margin_rad : ndarray, shape (...)
        ``θ - (θe - θs)`` and ``θ - (θe + θs)``: negative inside the umbra and
        inside the penumbra cone (umbra included) respectively. NaN for NaN input.
    """
    d = sun_km - r_km
    r_norm = np.sqrt(np.einsum("...i,...i->...", r_km, r_km))
    d_norm = np.sqrt(np.einsum("...i,...i->...", d, d))
    with np.errstate(invalid="ignore"):
        theta_e = np.arcsin(np.clip(EARTH_RADIUS_KM / r_norm, -1.0, 1.0))
        theta_s = np.arcsin(np.clip(SUN_RADIUS_KM / d_norm, -1.0, 1.0))
        cos_theta = -np.einsum("...i,...i->...", r_km, d) / (r_norm * d_norm)
        theta = np.arccos(np.clip(cos_theta, -1.0, 1.0))
    return theta - (theta_e - theta_s), theta - (theta_e + theta_s)


def sunlight_state(r_km: np.ndarray, sun_km: np.ndarray) -> np.ndarray:
    """``SUNLIGHT_UMBRA`` / ``_PENUMBRA`` / ``_SUNLIT`` per position (int8; sunlit where NaN)."""
    umbra, penumbra = shadow_margins_rad(r_km, sun_km)
    with np.errstate(invalid="ignore"):
        return np.where(umbra < 0.0, SUNLIGHT_UMBRA,
                        np.where(penumbra < 0.0, SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT)).astype(np.int8)


class _SunTrack:
    """The Sun on the ephemeris grid, linearly interpolated."""

    def __init__(self, ephemeris: Ephemeris) -> None:
        self.step_s = ephemeris.step_s
        self.t_s = ephemeris.t_s
        self.sun_km = sun_teme_km(ephemeris, ephemeris.t_s)

    def at(self, t_s: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(t_s, dtype=float), 0.0, self.t_s[-1])
        k = np.minimum((t // self.step_s).astype(np.int64), len(self.t_s) - 2)
        w = ((t - self.t_s[k]) / self.step_s)[..., None]
        return (1.0 - w) * self.sun_km[k] + w * self.sun_km[k + 1]


def _bisect_crossings(ephemeris: Ephemeris, sun: _SunTrack, sat: np.ndarray, t_lo: np.ndarray,
                      t_hi: np.ndarray, which: int, refine_s: float) -> np.ndarray:
    """Instant where margin ``which`` (0 umbra, 1 penumbra) changes sign in ``[t_lo, t_hi]``, to ``refine_s``."""
    lo = t_lo.astype(float).copy()
    hi = t_hi.astype(float).copy()
    if len(lo) == 0:
        return lo
    r_lo, _ = ephemeris.teme_at(sat, lo)
    sign_lo = np.signbit(shadow_margins_rad(r_lo, sun.at(lo))[which])
    width = float(np.max(hi - lo))
    n_iter = max(0, math.ceil(math.log2(max(width, refine_s) / refine_s)))
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        r_mid, _ = ephemeris.teme_at(sat, mid)
        same = np.signbit(shadow_margins_rad(r_mid, sun.at(mid))[which]) == sign_lo
        lo = np.where(same, mid, lo)
        hi = np.where(same, hi, mid)
    return 0.5 * (lo + hi)


def find_sunlight(ephemeris: Ephemeris, *, refine_s: float = DEFAULT_REFINE_S,
                  duration_s: float | None = None) -> SunlightIntervals:
    """Partition the window of every satellite into umbra, penumbra and sunlit intervals.

    Both margins of :func:`shadow_margins_rad` are sampled on the ephemeris
    grid (vectorised over satellites × times); every sign change between two
    samples is bisected on interpolated positions to within ``refine_s``. A
    shadow entered and left within one grid step (only at grazing geometry,
    when the orbit barely touches the shadow) can be missed.

    Parameters
    ----------
    ephemeris : Ephemeris
        TEME states on a grid.
    refine_s : float
        Boundary accuracy, seconds (> 0).
    duration_s : float, optional
        Window ``[0, duration_s]`` (default the whole ephemeris grid).

    Returns
    -------
    SunlightIntervals
        Sorted by (sat, start_s); for each satellite consecutive intervals of
        different states tile the window. Stretches where SGP4 failed (NaN
        states, decayed satellites) are left out.
    """
    if not refine_s > 0.0:
        raise ValueError(f"refine_s: must be > 0, got {refine_s!r}")
    end_s = ephemeris.end_s if duration_s is None else float(duration_s)
    if not 0.0 < end_s <= ephemeris.end_s + 1e-9:
        raise ValueError(f"duration_s: must be within (0, {ephemeris.end_s:g}], got {duration_s!r}")
    n = ephemeris.n_satellites
    if n == 0:
        return SunlightIntervals.empty()
    sun = _SunTrack(ephemeris)
    # Samples: grid nodes inside the window, then the window end.
    n_grid = int(np.searchsorted(ephemeris.t_s, end_s - 1e-9, side="left"))
    t_samples = np.append(ephemeris.t_s[:n_grid], end_s)
    sun_samples = np.concatenate([sun.sun_km[:n_grid], sun.at(np.array([end_s]))])

    cross_sat: list[np.ndarray] = []
    cross_t: list[np.ndarray] = []
    chunk = max(1, _CHUNK_ELEMENTS // len(t_samples))
    for first in range(0, n, chunk):
        idx = np.arange(first, min(first + chunk, n))
        r_end, _ = ephemeris.teme_at(idx, np.full(len(idx), end_s))
        r = np.concatenate([ephemeris.r_teme_km[idx, :n_grid], r_end[:, None, :]], axis=1)
        margins = shadow_margins_rad(r, sun_samples[None, :, :])
        # Where states turn NaN (or back), the known stretch ends (starts) at the last (first) finite sample.
        known = np.isfinite(r).all(axis=2)
        s_loc, k = np.nonzero(known[:, 1:] != known[:, :-1])
        cross_sat.append(idx[s_loc])
        cross_t.append(np.where(known[s_loc, k], t_samples[k], t_samples[k + 1]))
        for which, margin in enumerate(margins):
            neg = np.signbit(margin)
            finite = np.isfinite(margin)
            change = (neg[:, 1:] != neg[:, :-1]) & finite[:, 1:] & finite[:, :-1]
            s_loc, k = np.nonzero(change)
            sat = idx[s_loc]
            cross_sat.append(sat)
            cross_t.append(_bisect_crossings(ephemeris, sun, sat, t_samples[k], t_samples[k + 1], which,
                                             refine_s))
    # Boundaries per satellite: window start, crossings, window end.
    sats = np.concatenate([*cross_sat, np.arange(n), np.arange(n)])
    times = np.concatenate([*cross_t, np.zeros(n), np.full(n, end_s)])
    order = np.lexsort((times, sats))
    sats, times = sats[order], times[order]
    seg = (sats[1:] == sats[:-1]) & (times[1:] > times[:-1])
    seg_sat = sats[:-1][seg]
    seg_start = times[:-1][seg]
    seg_end = times[1:][seg]
    mid = 0.5 * (seg_start + seg_end)
    r_mid, _ = ephemeris.teme_at(seg_sat, mid)
    known = np.isfinite(r_mid).all(axis=1)
    seg_sat, seg_start, seg_end = seg_sat[known], seg_start[known], seg_end[known]
    state = sunlight_state(r_mid[known], sun.at(mid[known]))
    # Merge neighbours in the same state (two boundaries bisected into one bracket, or an unknown gap).
    new = np.ones(len(seg_sat), dtype=bool)
    new[1:] = (seg_sat[1:] != seg_sat[:-1]) | (state[1:] != state[:-1]) | (seg_start[1:] != seg_end[:-1])
    first_i = np.flatnonzero(new)
    last_i = np.append(first_i[1:], len(seg_sat)) - 1
    return SunlightIntervals(seg_sat[first_i].astype(np.int64), seg_start[first_i], seg_end[last_i],
                             state[first_i].astype(np.int8))
