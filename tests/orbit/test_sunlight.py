"""Sunlight intervals against skyfield's independent shadow test, and orbit-level plausibility."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sgp4.api import WGS72, Satrec
from skyfield.api import EarthSatellite, Loader
from skyfield_data import get_skyfield_data_path

from orbit.catalog import load_tle
from orbit.contact_plan import SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT, SUNLIGHT_UMBRA, SunlightIntervals
from orbit.propagate import propagate, timescale
from orbit.sunlight import find_sunlight
from orbit.types import Constellation, Satellite

DATA = Path(__file__).resolve().parents[1] / "data"
PLANET_EPOCH = datetime(2023, 4, 20, 0, 0, tzinfo=UTC)
DAY_S = 86400.0
# skyfield's boundary (Sun centre on the Earth's limb) sits inside our penumbra;
# disagreements are tolerated only this close to one of our boundaries.
BOUNDARY_SLACK_S = 1.0
SGP4_EPOCH0 = datetime(1949, 12, 31, tzinfo=UTC)
MU_WGS72_KM3_S2 = 398600.8
WGS72_RADIUS_KM = 6378.135


@lru_cache(maxsize=1)
def _de421() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The file finals2000A\.all has expired", category=RuntimeWarning)
        path = get_skyfield_data_path()
    return Loader(path, verbose=False)("de421.bsp")


def _circular(name: str, epoch: datetime, altitude_km: float, inclination_deg: float, raan_deg: float,
              anomaly_deg: float = 0.0) -> Satellite:
    """A circular orbit built directly with sgp4init (WGS72), independent of orbit.walker."""
    a_km = WGS72_RADIUS_KM + altitude_km
    no_rad_min = math.sqrt(MU_WGS72_KM3_S2 / a_km**3) * 60.0
    sat = Satrec()
    sat.sgp4init(WGS72, "i", 99999, (epoch - SGP4_EPOCH0).total_seconds() / DAY_S, 0.0, 0.0, 0.0, 1e-7, 0.0,
                 math.radians(inclination_deg), math.radians(anomaly_deg), no_rad_min, math.radians(raan_deg))
    return Satellite(name, 99999, sat)


def _sso_inclination_deg(altitude_km: float) -> float:
    """Inclination whose J2 nodal drift matches the mean Sun (0.9856°/day)."""
    j2, re = 1.08263e-3, 6378.137
    a = re + altitude_km
    n = math.sqrt(398600.4418 / a**3)
    drift = math.radians(360.0 / 365.2422) / DAY_S
    return math.degrees(math.acos(-drift / (1.5 * j2 * (re / a) ** 2 * n)))


def _sun_ra_deg(epoch: datetime) -> float:
    eph = _de421()
    t = timescale().from_datetime(epoch)
    ra, _, _ = eph["earth"].at(t).observe(eph["sun"]).radec(epoch="date")
    return float(ra.degrees)


def _state_at(sun: SunlightIntervals, sat: int, t_s: np.ndarray) -> np.ndarray:
    m = sun.sat == sat
    starts, states = sun.start_s[m], sun.state[m]
    return states[np.searchsorted(starts, t_s, side="right") - 1]


def _distance_to_boundary_s(sun: SunlightIntervals, sat: int, t_s: np.ndarray) -> np.ndarray:
    m = sun.sat == sat
    bounds = np.concatenate([sun.start_s[m][1:]])
    if len(bounds) == 0:
        return np.full(len(t_s), np.inf)
    return np.abs(t_s[:, None] - bounds[None, :]).min(axis=1)


def _assert_partition(sun: SunlightIntervals, n_sats: int, duration_s: float) -> None:
    for sat in range(n_sats):
        m = sun.sat == sat
        start, end, state = sun.start_s[m], sun.end_s[m], sun.state[m]
        assert start[0] == 0.0 and end[-1] == pytest.approx(duration_s, abs=1e-9)
        np.testing.assert_array_equal(start[1:], end[:-1])  # no gap, no overlap
        assert (end > start).all()
        assert (state[1:] != state[:-1]).all()  # neighbours differ (merged)
        # The umbra is never entered or left without passing the penumbra.
        jumps = np.abs(state[1:].astype(int) - state[:-1].astype(int))
        assert (jumps == 1).all(), f"sat {sat}: umbra next to sunlit"


@pytest.fixture(scope="module")
def planet() -> tuple[Constellation, SunlightIntervals]:
    constellation, _ = load_tle(DATA / "planet-2023-04-20.tle")
    eph = propagate(constellation, PLANET_EPOCH, DAY_S)
    return constellation, find_sunlight(eph, duration_s=DAY_S)


def test_planet_partition_covers_the_window(planet: tuple[Constellation, SunlightIntervals]) -> None:
    constellation, sun = planet
    _assert_partition(sun, len(constellation), DAY_S)
    assert set(np.unique(sun.state)) == {SUNLIGHT_UMBRA, SUNLIGHT_PENUMBRA, SUNLIGHT_SUNLIT}


def test_planet_agrees_with_skyfield_is_sunlit(planet: tuple[Constellation, SunlightIntervals]) -> None:
    """skyfield's is_sunlit: is the line from the satellite to the Sun's *centre* blocked by the Earth.

    That boundary lies inside our penumbra, so: our umbra must be not-sunlit,
    our sunlit must be sunlit, except within BOUNDARY_SLACK_S of a boundary;
    and skyfield must flip between the two ends of each of our penumbras.
    """
    constellation, sun = planet
    ts = timescale()
    eph = _de421()
    rng = np.random.default_rng(7)
    sats = rng.choice(len(constellation), size=25, replace=False)
    n_compared = 0
    for sat in sats:
        es = EarthSatellite.from_satrec(constellation.satellites[sat].satrec, ts)
        t_s = np.sort(rng.uniform(0.0, DAY_S, 400))
        t = ts.utc(PLANET_EPOCH.year, PLANET_EPOCH.month, PLANET_EPOCH.day, 0, 0, t_s)
        lit = es.at(t).is_sunlit(eph)
        ours = _state_at(sun, int(sat), t_s)
        decided = ours != SUNLIGHT_PENUMBRA
        disagree = decided & (lit != (ours == SUNLIGHT_SUNLIT))
        near = _distance_to_boundary_s(sun, int(sat), t_s) < BOUNDARY_SLACK_S
        assert not (disagree & ~near).any(), f"sat {sat}: disagreement at {t_s[disagree & ~near]}"
        n_compared += int(decided.sum())
        # Every penumbra of this satellite contains skyfield's switch.
        m = (sun.sat == sat) & (sun.state == SUNLIGHT_PENUMBRA) & (sun.start_s > 2.0) & (sun.end_s < DAY_S - 2.0)
        before = ts.utc(PLANET_EPOCH.year, PLANET_EPOCH.month, PLANET_EPOCH.day, 0, 0,
                        sun.start_s[m] - BOUNDARY_SLACK_S)
        after = ts.utc(PLANET_EPOCH.year, PLANET_EPOCH.month, PLANET_EPOCH.day, 0, 0,
                       sun.end_s[m] + BOUNDARY_SLACK_S)
        assert len(sun.start_s[m]) > 20
        assert (es.at(before).is_sunlit(eph) != es.at(after).is_sunlit(eph)).all()
    assert n_compared > 9000


def _umbra_per_orbit_s(sun: SunlightIntervals, sat: int, duration_s: float) -> tuple[np.ndarray, float]:
    m = (sun.sat == sat) & (sun.state == SUNLIGHT_UMBRA)
    full = m & (sun.start_s > 0.0) & (sun.end_s < duration_s)
    return sun.end_s[full] - sun.start_s[full], float((sun.end_s[m] - sun.start_s[m]).sum())


def test_sso_800km_umbra_is_plausible() -> None:
    """An ~800 km SSO (Sentinel-2 at 786 km, 10:30 descending node) sees up to ~35 min of umbra per orbit."""
    epoch = datetime(2023, 6, 1, tzinfo=UTC)
    altitude_km = 786.0
    inc = _sso_inclination_deg(altitude_km)
    # Descending node at 10:30 local time = ascending node at 22:30: RAAN = Sun RA + 157.5°.
    sat = _circular("S2-LIKE", epoch, altitude_km, inc, _sun_ra_deg(epoch) + 157.5)
    eph = propagate(Constellation((sat,)), epoch, DAY_S)
    sun = find_sunlight(eph, duration_s=DAY_S)
    _assert_partition(sun, 1, DAY_S)
    umbra_s, _ = _umbra_per_orbit_s(sun, 0, DAY_S)
    assert 13 <= len(umbra_s) <= 15  # one eclipse per ~101 min orbit
    assert (umbra_s <= 35 * 60).all() and (umbra_s >= 25 * 60).all(), umbra_s / 60


def test_dawn_dusk_orbit_sees_almost_no_umbra() -> None:
    epoch = datetime(2023, 3, 20, tzinfo=UTC)  # equinox: the Sun in the equator, no eclipse season
    altitude_km = 786.0
    inc = _sso_inclination_deg(altitude_km)
    sat = _circular("DAWN-DUSK", epoch, altitude_km, inc, _sun_ra_deg(epoch) + 90.0)
    eph = propagate(Constellation((sat,)), epoch, DAY_S)
    sun = find_sunlight(eph, duration_s=DAY_S)
    _assert_partition(sun, 1, DAY_S)
    _, total_umbra_s = _umbra_per_orbit_s(sun, 0, DAY_S)
    assert total_umbra_s == 0.0


def test_boundaries_are_refined_to_a_tenth_of_a_second() -> None:
    """Sampling every 10 s instead of every 60 s moves no boundary by more than the refinement."""
    constellation, _ = load_tle(DATA / "planet-2023-04-20.tle")
    few = constellation.subset([0, 50, 100])
    coarse = find_sunlight(propagate(few, PLANET_EPOCH, 21600.0, step_s=60.0), duration_s=21600.0)
    fine = find_sunlight(propagate(few, PLANET_EPOCH, 21600.0, step_s=10.0), duration_s=21600.0)
    np.testing.assert_array_equal(coarse.sat, fine.sat)
    np.testing.assert_array_equal(coarse.state, fine.state)
    # Both are within 0.05 s of the truth (midpoint of a 0.1 s bracket) plus sub-metre interpolation.
    np.testing.assert_allclose(coarse.start_s, fine.start_s, atol=0.1)
    np.testing.assert_allclose(coarse.end_s, fine.end_s, atol=0.1)


def test_refine_s_must_be_positive(planet: tuple[Constellation, SunlightIntervals]) -> None:
    constellation, _ = planet
    eph = propagate(constellation.subset([0]), PLANET_EPOCH, 600.0)
    with pytest.raises(ValueError, match="refine_s"):
        find_sunlight(eph, refine_s=0.0)


def test_failed_states_are_left_out_of_the_partition(planet: tuple[Constellation, SunlightIntervals]) -> None:
    """Where SGP4 failed (NaN, e.g. a decayed satellite) no state is claimed; the rest is unchanged."""
    constellation, _ = planet
    few = constellation.subset([0, 1])
    eph = propagate(few, PLANET_EPOCH, 7200.0)
    r = eph.r_teme_km.copy()
    v = eph.v_teme_km_s.copy()
    r[1, 60:] = np.nan  # satellite 1 fails from t = 3600 s on
    v[1, 60:] = np.nan
    broken = dataclasses.replace(eph, r_teme_km=r, v_teme_km_s=v)
    full = find_sunlight(eph, duration_s=7200.0)
    sun = find_sunlight(broken, duration_s=7200.0)
    m0, f0 = sun.sat == 0, full.sat == 0
    np.testing.assert_array_equal(sun.start_s[m0], full.start_s[f0])
    np.testing.assert_array_equal(sun.state[m0], full.state[f0])
    m1, f1 = sun.sat == 1, (full.sat == 1) & (full.start_s < 3540.0)
    # Known up to the last finite grid state (t = 3540 s): the same intervals, the last one clipped there.
    assert sun.end_s[m1].max() == 3540.0
    np.testing.assert_array_equal(sun.start_s[m1], full.start_s[f1])
    np.testing.assert_array_equal(sun.state[m1], full.state[f1])
