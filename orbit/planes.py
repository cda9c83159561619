"""Orbital planes of a catalog: which satellites share a plane, and their order in it.

A real catalog (CelesTrak TLEs) says nothing about planes, but the +Grid ISL
topology needs them. Satellites of one plane share inclination, altitude and
right ascension of the ascending node (RAAN). TLE epochs differ by hours to
days and J2 makes RAAN drift by several degrees a day at different rates per
altitude, so the elements printed in the TLEs cannot be compared directly:
every satellite is first propagated to one common instant and its plane is
read from the TEME state (``h = r × v``). TEME's equator is the true equator
of date, so inclination and RAAN are measured from it; that is the same for
every satellite, which is all clustering needs.

Clustering is three nested one-dimensional gap clusterings (a new group starts
where sorted values jump by more than a tolerance): inclination, then mean
altitude, then RAAN (from the common-instant state) on the circle. Inclination
and altitude come from the TLE *mean* elements (inclination has no secular J2
drift, so the epoch value holds at any instant): the osculating values from the
state oscillate with J2 by ~0.02° and ~10 km around the orbit, enough, with
satellites still raising their orbits in between, to bridge Starlink's 53.05° /
53.2° shells (measured on tests/data/starlink-2023-07-18.tle). The altitude
level keeps raising satellites (same inclination and RAAN as an operational
plane, tens to hundreds of km lower) out of operational planes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from orbit.propagate import Ephemeris, propagate
from orbit.types import Constellation

# WGS72 gravitational parameter, as SGP4 uses it.
MU_EARTH_KM3_S2 = 398600.8
EARTH_EQUATORIAL_RADIUS_KM = 6378.137

DEFAULT_INCLINATION_TOL_DEG = 0.05
DEFAULT_ALTITUDE_TOL_KM = 3.0
DEFAULT_RAAN_TOL_DEG = 1.0


@dataclass(frozen=True, slots=True, eq=False)
class OrbitAngles:
    """Plane orientation and in-plane position of satellites at one instant (TEME, degrees).

    Attributes
    ----------
    inclination_deg : ndarray, shape (N,)
        Angle between the orbit normal and the TEME z axis, in [0, 180].
    raan_deg : ndarray, shape (N,)
        Right ascension of the ascending node, in [0, 360).
    arg_latitude_deg : ndarray, shape (N,)
        Argument of latitude (angle from the ascending node to the satellite,
        along the motion), in [0, 360).
    normal : ndarray, shape (N, 3)
        Unit orbit normal ``h / |h|``.
    """

    inclination_deg: np.ndarray
    raan_deg: np.ndarray
    arg_latitude_deg: np.ndarray
    normal: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.inclination_deg)
        for name in ("raan_deg", "arg_latitude_deg", "normal"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"OrbitAngles.{name}: expected {n} rows, got {len(getattr(self, name))}")


def orbit_angles(r_teme_km: np.ndarray, v_teme_km_s: np.ndarray) -> OrbitAngles:
    """Inclination, RAAN and argument of latitude from TEME states.

    Parameters
    ----------
    r_teme_km, v_teme_km_s : ndarray, shape (N, 3)
        Position (km) and velocity (km/s) in TEME at one instant.
    """
    r = np.asarray(r_teme_km, dtype=float).reshape(-1, 3)
    v = np.asarray(v_teme_km_s, dtype=float).reshape(-1, 3)
    h = np.cross(r, v)
    h_hat = h / np.linalg.norm(h, axis=1, keepdims=True)
    inclination_deg = np.degrees(np.arccos(np.clip(h_hat[:, 2], -1.0, 1.0)))
    # Node vector z × h points to the ascending node.
    node = np.stack([-h_hat[:, 1], h_hat[:, 0], np.zeros(len(h_hat))], axis=1)
    node_norm = np.linalg.norm(node, axis=1, keepdims=True)
    # Equatorial orbits have no node: measure from the x axis instead.
    node = np.where(node_norm > 1e-12, node / np.where(node_norm > 0, node_norm, 1.0), [1.0, 0.0, 0.0])
    raan_deg = np.degrees(np.arctan2(node[:, 1], node[:, 0])) % 360.0
    in_plane = np.cross(h_hat, node)  # 90° ahead of the node along the motion
    arg_latitude_deg = np.degrees(np.arctan2(np.einsum("ij,ij->i", r, in_plane),
                                             np.einsum("ij,ij->i", r, node))) % 360.0
    return OrbitAngles(inclination_deg, raan_deg, arg_latitude_deg, h_hat)


def mean_inclination_deg(constellation: Constellation) -> np.ndarray:
    """Mean (SGP4) inclination of each satellite's elements, degrees."""
    return np.degrees(np.array([s.satrec.inclo for s in constellation.satellites], dtype=float))


def mean_altitude_km(constellation: Constellation) -> np.ndarray:
    """Altitude (km above the equatorial radius) of the mean semi-major axis from each TLE's mean motion."""
    n_rad_s = np.array([s.satrec.no_kozai for s in constellation.satellites], dtype=float) / 60.0
    return np.asarray((MU_EARTH_KM3_S2 / n_rad_s**2) ** (1.0 / 3.0) - EARTH_EQUATORIAL_RADIUS_KM)


def gap_clusters(values: np.ndarray, tol: float, *, period: float | None = None) -> np.ndarray:
    """Label 1-D values so that a new cluster starts wherever sorted values jump by more than ``tol``.

    With ``period`` the values live on a circle (e.g. angles with period 360):
    the cut is made at the largest gap, so a cluster may straddle 0.
    Labels are 0.. in increasing order of the cluster's first value (after the cut).
    """
    x = np.asarray(values, dtype=float)
    labels = np.zeros(len(x), dtype=np.int64)
    if len(x) == 0:
        return labels
    if period is not None:
        x = np.mod(x, period)
        s = np.sort(x)
        gaps = np.diff(np.concatenate([s, [s[0] + period]]))
        widest = int(np.argmax(gaps))
        if gaps[widest] > tol:
            # Start the circle just after the widest gap so no cluster is split by the wrap.
            origin = s[(widest + 1) % len(s)]
            x = np.mod(x - origin, period)
    order = np.argsort(x, kind="stable")
    jumps = np.diff(x[order]) > tol
    labels[order] = np.concatenate([[0], np.cumsum(jumps)])
    return labels


def _group_labels(*keys: np.ndarray) -> np.ndarray:
    """Dense labels 0.. of the distinct rows of ``keys``, ordered lexicographically by the keys."""
    stacked = np.stack(keys, axis=1)
    _, inverse = np.unique(stacked, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


def _states_at(constellation: Constellation, at: Ephemeris | datetime, t_s: float) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(at, Ephemeris):
        if at.n_satellites != len(constellation):
            raise ValueError(f"ephemeris has {at.n_satellites} satellites, constellation {len(constellation)}")
        return at.teme_at(np.arange(at.n_satellites), np.full(at.n_satellites, float(t_s)))
    eph = propagate(constellation, at, 0.0)
    return eph.r_teme_km[:, 0], eph.v_teme_km_s[:, 0]


def assign_planes(
    constellation: Constellation,
    at: Ephemeris | datetime,
    *,
    t_s: float = 0.0,
    inclination_tol_deg: float = DEFAULT_INCLINATION_TOL_DEG,
    altitude_tol_km: float = DEFAULT_ALTITUDE_TOL_KM,
    raan_tol_deg: float = DEFAULT_RAAN_TOL_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster a catalog into orbital planes and order each plane by argument of latitude.

    Parameters
    ----------
    constellation : Constellation
        Any set of satellites (TLE epochs may differ).
    at : Ephemeris or datetime
        The common instant: an ephemeris of this constellation (its state at
        ``t_s`` seconds after its start is used) or a UTC datetime to propagate to.
    inclination_tol_deg, altitude_tol_km, raan_tol_deg : float
        Gap tolerances of the nested clusterings (see the module docstring).
        Starlink's shells differ by >= 0.15° in mean inclination (with a gap of
        0.09° even counting raising satellites) and 7 km in altitude, its planes
        by 5° in RAAN, while one plane's members agree to ~0.5° in RAAN.

    Returns
    -------
    planes : ndarray, shape (N,), int64
        Plane index per satellite, 0..P-1, numbered by (inclination, altitude,
        RAAN) so that the planes of one shell are consecutive in RAAN order.
        Satellites whose state cannot be computed (decayed) get -1.
    slots : ndarray, shape (N,), int64
        Rank within the plane by argument of latitude at the common instant
        (0 nearest the ascending node), -1 where the plane is -1.
    """
    n = len(constellation)
    planes = np.full(n, -1, dtype=np.int64)
    slots = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return planes, slots
    r, v = _states_at(constellation, at, t_s)
    ok = np.isfinite(r).all(axis=1) & np.isfinite(v).all(axis=1)
    if not ok.any():
        return planes, slots
    angles = orbit_angles(r[ok], v[ok])
    inc_group = gap_clusters(mean_inclination_deg(constellation)[ok], inclination_tol_deg)
    alt = mean_altitude_km(constellation)[ok]
    alt_group = np.zeros(len(alt), dtype=np.int64)
    for g in np.unique(inc_group):  # a handful of shells: not a hot loop
        m = inc_group == g
        alt_group[m] = gap_clusters(alt[m], altitude_tol_km)
    shell = _group_labels(inc_group, alt_group)
    raan_group = np.zeros(len(alt), dtype=np.int64)
    for g in np.unique(shell):
        m = shell == g
        raan_group[m] = gap_clusters(angles.raan_deg[m], raan_tol_deg, period=360.0)
    plane_ok = _group_labels(shell, raan_group)
    # Slots: rank by argument of latitude within the plane.
    order = np.lexsort((angles.arg_latitude_deg, plane_ok))
    sorted_planes = plane_ok[order]
    first = np.searchsorted(sorted_planes, sorted_planes, side="left")
    slot_ok = np.empty(len(order), dtype=np.int64)
    slot_ok[order] = np.arange(len(order)) - first
    planes[ok] = plane_ok
    slots[ok] = slot_ok
    return planes, slots


def plane_successors(
    planes: np.ndarray,
    r_teme_km: np.ndarray,
    v_teme_km_s: np.ndarray,
    inclination_deg: np.ndarray,
    altitude_km: np.ndarray,
    *,
    inclination_tol_deg: float = DEFAULT_INCLINATION_TOL_DEG,
    altitude_tol_km: float = DEFAULT_ALTITUDE_TOL_KM,
) -> np.ndarray:
    """For each plane, the next plane of its shell that may carry cross-plane links (or -1).

    Planes are grouped into shells by the median mean inclination and mean
    altitude of their satellites (the same gap clustering as
    :func:`assign_planes`, so Starlink's 547 km / 53.05° and 540 km / 53.2°
    shells stay apart; medians ignore a stray raising satellite); in a shell,
    the successor of a plane is the next plane index (wrapping from the last
    back to the first). A successor is refused when the two orbit normals
    are more than 90° apart: the planes then counter-rotate, which is the seam
    of a Walker-star constellation (satellites pass each other at ~15 km/s and
    no terminal can track across it). The wrap of a Walker-delta shell keeps
    its successor since its normals are one plane spacing apart.

    Parameters
    ----------
    planes : ndarray, shape (N,), int
        Plane per satellite, -1 for none.
    r_teme_km, v_teme_km_s : ndarray, shape (N, 3)
        States at one instant (TEME); they give each plane's orbit normal.
    inclination_deg, altitude_km : ndarray, shape (N,)
        Mean inclination and altitude per satellite (:func:`mean_inclination_deg`,
        :func:`mean_altitude_km`).

    Returns
    -------
    ndarray, shape (max(planes) + 1,), int64
        Successor plane index per plane index, -1 for none.
    """
    planes = np.asarray(planes, dtype=np.int64)
    n_planes = int(planes.max()) + 1 if len(planes) and planes.max() >= 0 else 0
    succ = np.full(n_planes, -1, dtype=np.int64)
    ok = (planes >= 0) & np.isfinite(r_teme_km).all(axis=1) & np.isfinite(v_teme_km_s).all(axis=1)
    if n_planes == 0 or not ok.any():
        return succ
    angles = orbit_angles(r_teme_km[ok], v_teme_km_s[ok])
    p = planes[ok]
    counts = np.bincount(p, minlength=n_planes).astype(float)
    present = counts > 0
    normal_sum = np.stack([np.bincount(p, angles.normal[:, i], minlength=n_planes) for i in range(3)], axis=1)
    normal = normal_sum / np.maximum(np.linalg.norm(normal_sum, axis=1, keepdims=True), 1e-300)
    inc = np.full(n_planes, np.nan)
    alt = np.full(n_planes, np.nan)
    inc_ok = np.asarray(inclination_deg, dtype=float)[ok]
    alt_ok = np.asarray(altitude_km, dtype=float)[ok]
    for q in np.flatnonzero(present):  # one iteration per plane (hundreds at most)
        members = p == q
        inc[q] = np.median(inc_ok[members])
        alt[q] = np.median(alt_ok[members])
    ids = np.flatnonzero(present)
    inc_group = gap_clusters(inc[ids], inclination_tol_deg)
    alt_group = np.zeros(len(ids), dtype=np.int64)
    for g in np.unique(inc_group):
        m = inc_group == g
        alt_group[m] = gap_clusters(alt[ids][m], altitude_tol_km)
    shell = _group_labels(inc_group, alt_group)
    for g in np.unique(shell):  # one iteration per shell
        members = ids[shell == g]  # ascending plane index
        if len(members) < 2:
            continue
        nxt = np.roll(members, -1)
        co_rotating = np.einsum("ij,ij->i", normal[members], normal[nxt]) > 0.0
        succ[members] = np.where(co_rotating, nxt, -1)
    return succ
