"""Vectorised SGP4 propagation and the frames the contact plan is computed in.

Satellites are propagated once on a coarse, regular time grid with
``sgp4.api.SatrecArray`` (C++; no Python loop over satellites or times). Any
instant in between is recovered by cubic Hermite interpolation of the TEME
position and velocity: with a 60 s grid the interpolation error for a LEO orbit
is below a metre (error ~ h^4 w^4 r / 384), far under the ~1 km accuracy of a TLE.

Frames follow skyfield exactly so that results can be compared with it: SGP4 is
fed UTC Julian dates, TEME is rotated to the Earth-fixed frame (ITRS without
polar motion) by GMST 1982 evaluated in UT1 (skyfield's ``theta_GMST1982``),
and stations sit on the WGS84 ellipsoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from sgp4.api import SatrecArray
from skyfield.api import load
from skyfield.sgp4lib import theta_GMST1982

from orbit.types import Constellation, GroundStation

DAY_S = 86400.0
UNIX_EPOCH_JD = 2440587.5
WGS84_A_KM = 6378.137
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
EARTH_MEAN_RADIUS_KM = 6371.0088
DEFAULT_STEP_S = 60.0


@lru_cache(maxsize=1)
def timescale():  # type: ignore[no-untyped-def]
    """skyfield's built-in timescale (never downloads, never warns about expiry)."""
    return load.timescale(builtin=True)


def to_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def julian_date_utc(dt: datetime) -> tuple[float, float]:
    """(whole, fraction) UTC Julian date of ``dt``; the whole part ends in .5 (midnight)."""
    dt = to_utc(dt)
    midnight = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    whole = UNIX_EPOCH_JD + midnight.timestamp() / DAY_S
    fraction = (dt - midnight).total_seconds() / DAY_S
    return whole, fraction


def dut1_s(dt: datetime) -> float:
    """UT1 - UTC at ``dt`` in seconds, from skyfield's built-in tables."""
    return float(timescale().from_datetime(to_utc(dt)).dut1)


def geodetic_to_ecef_km(lat_deg: np.ndarray, lon_deg: np.ndarray, alt_m: np.ndarray) -> np.ndarray:
    """WGS84 geodetic coordinates to Earth-fixed cartesian, shape (..., 3) km."""
    lat = np.radians(np.asarray(lat_deg, dtype=float))
    lon = np.radians(np.asarray(lon_deg, dtype=float))
    h_km = np.asarray(alt_m, dtype=float) / 1000.0
    sin_lat = np.sin(lat)
    n = WGS84_A_KM / np.sqrt(1.0 - WGS84_E2 * sin_lat**2)
    x = (n + h_km) * np.cos(lat) * np.cos(lon)
    y = (n + h_km) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - WGS84_E2) + h_km) * sin_lat
    return np.stack([x, y, z], axis=-1)


def local_up_east_north(lat_deg: np.ndarray, lon_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (..., 3) of the geodetic up, east and north directions, Earth-fixed."""
    lat = np.radians(np.asarray(lat_deg, dtype=float))
    lon = np.radians(np.asarray(lon_deg, dtype=float))
    up = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
    east = np.stack([-np.sin(lon), np.cos(lon), np.zeros_like(lon)], axis=-1)
    north = np.stack([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)], axis=-1)
    return up, east, north


@dataclass(frozen=True, slots=True)
class StationGeometry:
    """Ground stations as arrays: Earth-fixed positions, up vectors and masks."""

    r_ecef_km: np.ndarray  # (S, 3)
    up: np.ndarray  # (S, 3)
    min_elevation_deg: np.ndarray  # (S,)

    @classmethod
    def of(cls, stations: tuple[GroundStation, ...] | list[GroundStation]) -> StationGeometry:
        lat = np.array([s.latitude_deg for s in stations], dtype=float)
        lon = np.array([s.longitude_deg for s in stations], dtype=float)
        alt = np.array([s.altitude_m for s in stations], dtype=float)
        up, _, _ = local_up_east_north(lat, lon)
        mask = np.array([s.min_elevation_deg for s in stations], dtype=float)
        return cls(geodetic_to_ecef_km(lat, lon, alt).reshape(-1, 3), up.reshape(-1, 3), mask)


def elevation_deg(r_sat_ecef_km: np.ndarray, r_sta_ecef_km: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Elevation of a satellite above a station's geodetic horizon, broadcasting over leading axes."""
    d = r_sat_ecef_km - r_sta_ecef_km
    rng = np.sqrt(np.einsum("...i,...i->...", d, d))
    sin_el = np.einsum("...i,...i->...", d, up) / rng
    return np.degrees(np.arcsin(np.clip(sin_el, -1.0, 1.0)))


@dataclass(frozen=True, slots=True)
class Ephemeris:
    """Satellite states on a regular grid, and interpolation to any instant.

    Attributes
    ----------
    start_utc : datetime
        The epoch; every ``*_s`` time is seconds after it.
    step_s : float
        Grid spacing.
    t_s : ndarray, shape (T,)
        Grid times, ``0, step_s, ...`` up to and including the window end.
    r_teme_km, v_teme_km_s : ndarray, shape (N, T, 3)
        SGP4 output in the TEME frame.
    error : ndarray, shape (N, T), int
        SGP4 error code per state (0 = fine); failed states are NaN.
    """

    start_utc: datetime
    step_s: float
    t_s: np.ndarray
    r_teme_km: np.ndarray
    v_teme_km_s: np.ndarray
    error: np.ndarray
    jd_whole: float
    jd_fraction: float
    dut1_s: float

    @property
    def n_satellites(self) -> int:
        return int(self.r_teme_km.shape[0])

    @property
    def end_s(self) -> float:
        return float(self.t_s[-1])

    def gmst_rad(self, t_s: np.ndarray) -> np.ndarray:
        """Greenwich mean sidereal angle (GMST 1982, UT1) at ``t_s`` seconds after the epoch."""
        frac = self.jd_fraction + (np.asarray(t_s, dtype=float) + self.dut1_s) / DAY_S
        theta, _ = theta_GMST1982(self.jd_whole, frac)
        return np.asarray(theta)

    def teme_to_ecef(self, r_teme_km: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Rotate TEME vectors (..., 3) at times ``t_s`` (broadcast to ``...``) into the Earth-fixed frame."""
        theta = self.gmst_rad(t_s)
        c, s = np.cos(theta), np.sin(theta)
        x, y, z = r_teme_km[..., 0], r_teme_km[..., 1], r_teme_km[..., 2]
        return np.stack([c * x + s * y, -s * x + c * y, z], axis=-1)

    def grid_ecef_km(self, sat_index: np.ndarray | slice | None = None) -> np.ndarray:
        """Earth-fixed positions on the grid, shape (n, T, 3)."""
        r = self.r_teme_km if sat_index is None else self.r_teme_km[sat_index]
        return self.teme_to_ecef(r, self.t_s[None, :])

    def teme_at(self, sat_index: np.ndarray, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated TEME position and velocity of satellite ``sat_index[i]`` at ``t_s[i]``.

        Both inputs broadcast together; times are clipped to the grid. Returns
        arrays of shape (..., 3) in km and km/s.
        """
        sat_index, t_s = np.broadcast_arrays(np.asarray(sat_index, dtype=np.int64), np.asarray(t_s, float))
        h = self.step_s
        t = np.clip(t_s, 0.0, self.t_s[-1])
        k = np.minimum((t // h).astype(np.int64), len(self.t_s) - 2)
        s = ((t - self.t_s[k]) / h)[..., None]
        p0 = self.r_teme_km[sat_index, k]
        p1 = self.r_teme_km[sat_index, k + 1]
        m0 = self.v_teme_km_s[sat_index, k] * h
        m1 = self.v_teme_km_s[sat_index, k + 1] * h
        s2 = s * s
        s3 = s2 * s
        r = (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * m1
        dr = (6 * s2 - 6 * s) * p0 + (3 * s2 - 4 * s + 1) * m0 + (-6 * s2 + 6 * s) * p1 + (3 * s2 - 2 * s) * m1
        return r, dr / h

    def ecef_at(self, sat_index: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Interpolated Earth-fixed position (..., 3) km of ``sat_index[i]`` at ``t_s[i]``."""
        r, _ = self.teme_at(sat_index, t_s)
        return self.teme_to_ecef(r, np.broadcast_to(np.asarray(t_s, float), r.shape[:-1]))


def propagate(
    constellation: Constellation,
    start_utc: datetime,
    duration_s: float,
    *,
    step_s: float = DEFAULT_STEP_S,
    sat_index: np.ndarray | None = None,
) -> Ephemeris:
    """Propagate (a subset of) a constellation over ``[start, start + duration]`` on a regular grid.

    The grid always reaches one step past the window end so that interpolation
    covers the whole window. States where SGP4 fails (decayed orbits) are NaN
    with their error code kept.
    """
    start_utc = to_utc(start_utc)
    n_steps = int(np.ceil(duration_s / step_s)) + 1
    t_s = np.arange(n_steps + 1, dtype=float) * step_s
    jd_whole, jd_fraction = julian_date_utc(start_utc)
    sats = constellation.satellites
    idx = np.arange(len(sats)) if sat_index is None else np.asarray(sat_index)
    if len(idx) == 0:
        empty = np.zeros((0, len(t_s), 3))
        return Ephemeris(start_utc, step_s, t_s, empty, empty.copy(), np.zeros((0, len(t_s)), np.uint8),
                         jd_whole, jd_fraction, dut1_s(start_utc))
    arr = SatrecArray([sats[int(i)].satrec for i in idx])
    jd = np.full(len(t_s), jd_whole)
    fr = jd_fraction + t_s / DAY_S
    err, r, v = arr.sgp4(jd, fr)
    bad = err != 0
    if bad.any():
        r[bad] = np.nan
        v[bad] = np.nan
    return Ephemeris(start_utc, step_s, t_s, r, v, err, jd_whole, jd_fraction, dut1_s(start_utc))
