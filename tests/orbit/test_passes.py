"""Ground-contact engine against independent references on real catalogs.

References: skyfield's ``EarthSatellite.find_events`` (brackets to half a second:
its ``epsilon`` is 0.5 s), a fine reference built here from skyfield altitudes
(full frame chain, no shortcuts) root-found to 1 ms, and orbit-predictor
(rounds AOS/LOS to whole seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from orbit_predictor.locations import Location
from orbit_predictor.sources import get_predictor_from_tle_lines
from sgp4.api import WGS72, Satrec
from skyfield.api import EarthSatellite, wgs84

from orbit.contact_plan import GroundContacts
from orbit.passes import find_ground_contacts, target_passes, visibility_half_angle_rad
from orbit.propagate import propagate, timescale
from orbit.types import Constellation, GroundStation, Satellite
from skyinfer.errors import InputError

DAY_S = 86400.0
# The Planet catalog epochs are 2023-04-19/20: the following day is well inside TLE validity.
PLANET_EPOCH_UTC = datetime(2023, 4, 20, tzinfo=UTC)
# find_events refines rises and sets until the bracket is 0.5 s wide.
FIND_EVENTS_TOLERANCE_S = 0.5
# Our refinement is to ~1 ms; the fine reference is bisected to 1 ms.
FINE_TIME_TOLERANCE_S = 0.05
FINE_ELEVATION_TOLERANCE_DEG = 0.01
# orbit-predictor rounds to whole seconds and refines with tolerance_s = 1 s.
ORBIT_PREDICTOR_TOLERANCE_S = 2.0
REFERENCE_BISECT_S = 1e-3


# ------------------------------------------------------------------ references
def _sky_sat(sat_index: int, constellation: Constellation) -> EarthSatellite:
    return EarthSatellite.from_satrec(constellation.satellites[sat_index].satrec, timescale())


def _topos(station: GroundStation):  # type: ignore[no-untyped-def]
    return wgs84.latlon(station.latitude_deg, station.longitude_deg, elevation_m=station.altitude_m)


def _altitude_fn(sky_sat: EarthSatellite, station: GroundStation, start_utc: datetime) -> Callable[[np.ndarray],
                                                                                                   np.ndarray]:
    """Skyfield topocentric altitude (degrees) at seconds after ``start_utc`` (full frame chain)."""
    ts = timescale()
    t0 = ts.from_datetime(start_utc)
    diff = sky_sat - _topos(station)

    def altitude(t_s: np.ndarray) -> np.ndarray:
        t = ts.tt_jd(t0.tt + np.asarray(t_s, dtype=float) / DAY_S)
        return np.asarray(diff.at(t).altaz()[0].degrees)

    return altitude


def _reference_crossing(altitude: Callable[[np.ndarray], np.ndarray], mask_deg: float, below_s: float,
                        above_s: float) -> float:
    """Bisect the mask crossing between a time below and a time above the mask to 1 ms."""
    assert altitude(np.array([below_s]))[0] < mask_deg < altitude(np.array([above_s]))[0]
    while abs(above_s - below_s) > REFERENCE_BISECT_S:
        mid = 0.5 * (below_s + above_s)
        if altitude(np.array([mid]))[0] > mask_deg:
            above_s = mid
        else:
            below_s = mid
    return 0.5 * (below_s + above_s)


def _reference_maximum(altitude: Callable[[np.ndarray], np.ndarray], lo_s: float, hi_s: float) -> tuple[float, float]:
    """Maximum altitude on [lo, hi]: a 0.5 s scan, then golden-section search to 0.1 ms around the best sample."""
    grid = np.arange(lo_s, hi_s + 0.5, 0.5)
    best = int(np.argmax(altitude(grid)))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    while b - a > 1e-4:
        c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
        fc, fd = altitude(np.array([c, d]))
        if fc >= fd:
            b = d
        else:
            a = c
    t = 0.5 * (a + b)
    return t, float(altitude(np.array([t]))[0])


def _find_events(constellation: Constellation, sat: int, station: GroundStation, start_utc: datetime,
                 duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """skyfield find_events as (seconds after start, event codes 0 rise / 1 culminate / 2 set)."""
    ts = timescale()
    t0 = ts.from_datetime(start_utc)
    t1 = ts.from_datetime(start_utc + timedelta(seconds=duration_s))
    t, events = _sky_sat(sat, constellation).find_events(_topos(station), t0, t1,
                                                         altitude_degrees=station.min_elevation_deg)
    return (t.tt - t0.tt) * DAY_S, events


def _pair(g: GroundContacts, sat: int, station: int) -> GroundContacts:
    return g.take(np.flatnonzero((g.sat == sat) & (g.station == station)))


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def planet_day(planet: Constellation, real_stations: tuple[GroundStation, ...]) -> GroundContacts:
    return find_ground_contacts(planet, real_stations, PLANET_EPOCH_UTC, DAY_S)


@pytest.fixture(scope="module")
def find_events_day(planet: Constellation,
                    real_stations: tuple[GroundStation, ...]) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """find_events for every (satellite, station) pair of the Planet catalog over the day (~5 s)."""
    return {(i, j): _find_events(planet, i, station, PLANET_EPOCH_UTC, DAY_S)
            for i in range(len(planet)) for j, station in enumerate(real_stations)}


# ------------------------------------------------------------------ tests
def test_result_is_sorted_and_well_formed(planet_day: GroundContacts, real_stations: tuple[GroundStation, ...]) -> None:
    g = planet_day
    assert len(g) > 1000
    keys = list(zip(g.aos_s, g.sat, g.station, strict=True))
    assert keys == sorted(keys)
    assert np.all((g.aos_s >= 0) & (g.aos_s <= g.tca_s) & (g.tca_s <= g.los_s) & (g.los_s <= DAY_S))
    masks = np.array([s.min_elevation_deg for s in real_stations])
    assert np.all(g.max_elevation_deg > masks[g.station])
    # Passes of one pair never overlap or touch.
    order = np.lexsort((g.aos_s, g.station, g.sat))
    s = g.take(order)
    same = (s.sat[1:] == s.sat[:-1]) & (s.station[1:] == s.station[:-1])
    assert np.all(s.aos_s[1:][same] > s.los_s[:-1][same])
    # Truncated exactly when clipped by a window edge.
    assert np.array_equal(g.truncated, (g.aos_s == 0.0) | (g.los_s == DAY_S))


def test_matches_skyfield_find_events_for_every_pass(
    planet_day: GroundContacts, find_events_day: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    planet: Constellation, real_stations: tuple[GroundStation, ...],
) -> None:
    """All 188 Planet satellites x 5 stations x 24 h: every rise and set found, nothing extra.

    find_events could in principle miss a pass that barely clears the mask; on this catalog none does, so the
    match is one-to-one (passes in progress at a window edge have no rise or no set on either side).
    """
    n_theirs = 0
    for (i, j), (t_s, events) in find_events_day.items():
        ours = _pair(planet_day, i, j)
        rises, sets = t_s[events == 0], t_s[events == 2]
        n_theirs += len(rises)
        ours_aos = ours.aos_s[ours.aos_s > 0.0]  # a pass in progress at the start has no rise
        ours_los = ours.los_s[ours.los_s < DAY_S]
        assert len(ours_aos) == len(rises), (i, j, ours_aos, rises)
        assert len(ours_los) == len(sets), (i, j, ours_los, sets)
        np.testing.assert_allclose(ours_aos, np.sort(rises), rtol=0, atol=FIND_EVENTS_TOLERANCE_S)
        np.testing.assert_allclose(ours_los, np.sort(sets), rtol=0, atol=FIND_EVENTS_TOLERANCE_S)
        # A pass in progress at the window edge: find_events has a set without a rise (or the reverse).
        if len(ours) and ours.aos_s[0] == 0.0:
            assert len(sets) and (not len(rises) or sets[0] < rises[0])
    assert n_theirs > 4000


def _sample_passes(g: GroundContacts, n: int) -> np.ndarray:
    whole = np.flatnonzero(~g.truncated)
    return whole[np.linspace(0, len(whole) - 1, n).astype(int)]


def test_matches_fine_reference_on_sampled_passes(
    planet_day: GroundContacts, find_events_day: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    planet: Constellation, real_stations: tuple[GroundStation, ...],
) -> None:
    """AOS/LOS/TCA within 0.05 s and max elevation within 0.01 deg of skyfield altitudes root-found to 1 ms.

    The reference brackets come from find_events (independent of our times): a rise is within 0.5 s.
    """
    for p in _sample_passes(planet_day, 40):
        i, j = int(planet_day.sat[p]), int(planet_day.station[p])
        station = real_stations[j]
        mask = station.min_elevation_deg
        altitude = _altitude_fn(_sky_sat(i, planet), station, PLANET_EPOCH_UTC)
        t_s, events = find_events_day[(i, j)]
        rise = t_s[events == 0][np.argmin(np.abs(t_s[events == 0] - planet_day.aos_s[p]))]
        fall = t_s[events == 2][np.argmin(np.abs(t_s[events == 2] - planet_day.los_s[p]))]
        ref_aos = _reference_crossing(altitude, mask, rise - 1.0, rise + 1.0)
        ref_los = _reference_crossing(altitude, mask, fall + 1.0, fall - 1.0)
        ref_tca, ref_max = _reference_maximum(altitude, ref_aos, ref_los)
        assert planet_day.aos_s[p] == pytest.approx(ref_aos, abs=FINE_TIME_TOLERANCE_S)
        assert planet_day.los_s[p] == pytest.approx(ref_los, abs=FINE_TIME_TOLERANCE_S)
        assert planet_day.max_elevation_deg[p] == pytest.approx(ref_max, abs=FINE_ELEVATION_TOLERANCE_DEG)
        assert planet_day.tca_s[p] == pytest.approx(ref_tca, abs=FINE_TIME_TOLERANCE_S)


def test_agrees_with_orbit_predictor(planet: Constellation, planet_day: GroundContacts,
                                     real_stations: tuple[GroundStation, ...]) -> None:
    """A second library, with its own SGP4 wrapper and Earth rotation, agrees to its whole-second rounding."""
    text = (Path(__file__).parent.parent / "data" / "planet-2023-04-20.tle").read_text().splitlines()
    tle_lines = {int(line1[2:7]): (line1, line2) for line1, line2 in zip(text[1::3], text[2::3], strict=True)}
    start = PLANET_EPOCH_UTC.replace(tzinfo=None)  # orbit-predictor works in naive UTC
    for p in _sample_passes(planet_day, 15):
        i, j = int(planet_day.sat[p]), int(planet_day.station[p])
        station = real_stations[j]
        predictor = get_predictor_from_tle_lines(tle_lines[planet.satellites[i].norad_id])
        location = Location(station.name, station.latitude_deg, station.longitude_deg, station.altitude_m)
        when = start + timedelta(seconds=float(planet_day.aos_s[p]) - 120.0)
        theirs = predictor.get_next_pass(location, when_utc=when, max_elevation_gt=station.min_elevation_deg,
                                         aos_at_dg=station.min_elevation_deg)
        assert (theirs.aos - start).total_seconds() == pytest.approx(planet_day.aos_s[p],
                                                                     abs=ORBIT_PREDICTOR_TOLERANCE_S)
        assert (theirs.los - start).total_seconds() == pytest.approx(planet_day.los_s[p],
                                                                     abs=ORBIT_PREDICTOR_TOLERANCE_S)
        # Its TCA is refined to 1 s: near zenith the elevation drops ~0.1 deg within half a second of TCA.
        assert theirs.max_elevation_deg == pytest.approx(planet_day.max_elevation_deg[p], abs=0.25)


def test_passes_truncated_at_both_window_edges(planet: Constellation, planet_day: GroundContacts,
                                               real_stations: tuple[GroundStation, ...]) -> None:
    """A window starting after a pass's TCA and ending before the next pass's TCA clips both."""
    p = _sample_passes(planet_day, 7)[3]
    i, j = int(planet_day.sat[p]), int(planet_day.station[p])
    station = real_stations[j]
    full = _pair(planet_day, i, j)
    k = int(np.flatnonzero(full.aos_s == planet_day.aos_s[p])[0])
    assert k + 1 < len(full)
    # Start 30 s after TCA of pass k; end 20 s before TCA of pass k + 1 (off the 60 s grid).
    start_s = float(full.tca_s[k]) + 30.0
    end_s = float(full.tca_s[k + 1]) - 20.0
    start_utc = PLANET_EPOCH_UTC + timedelta(seconds=start_s)
    g = find_ground_contacts(planet.subset([i]), [station], start_utc, end_s - start_s)
    altitude = _altitude_fn(_sky_sat(i, planet), station, start_utc)
    assert len(g) == 2 and g.truncated.all()
    first, second = g.take(np.array([0])), g.take(np.array([1]))
    assert first.aos_s[0] == 0.0 and first.tca_s[0] == 0.0
    assert first.los_s[0] == pytest.approx(full.los_s[k] - start_s, abs=FINE_TIME_TOLERANCE_S)
    assert first.max_elevation_deg[0] == pytest.approx(altitude(np.array([0.0]))[0],
                                                       abs=FINE_ELEVATION_TOLERANCE_DEG)
    duration = end_s - start_s
    assert second.los_s[0] == duration and second.tca_s[0] == duration
    assert second.aos_s[0] == pytest.approx(full.aos_s[k + 1] - start_s, abs=FINE_TIME_TOLERANCE_S)
    assert second.max_elevation_deg[0] == pytest.approx(altitude(np.array([duration]))[0],
                                                        abs=FINE_ELEVATION_TOLERANCE_DEG)


def test_pass_shorter_than_one_grid_step_is_found(planet: Constellation, planet_day: GroundContacts,
                                                  real_stations: tuple[GroundStation, ...]) -> None:
    """Mask set just under a real pass's maximum, with the TCA between grid samples: a ~10 s pass."""
    whole = np.flatnonzero(~planet_day.truncated & (np.abs(planet_day.tca_s % 60.0 - 30.0) < 5.0)
                           & (planet_day.max_elevation_deg > 20.0))
    p = int(whole[0])
    i, j = int(planet_day.sat[p]), int(planet_day.station[p])
    base = real_stations[j]
    mask = float(planet_day.max_elevation_deg[p]) - 0.01
    station = GroundStation(base.name, base.latitude_deg, base.longitude_deg, base.altitude_m, mask)
    altitude = _altitude_fn(_sky_sat(i, planet), station, PLANET_EPOCH_UTC)
    tca = float(planet_day.tca_s[p])
    # The pass is hidden between grid samples: the nearest samples are below the mask.
    grid = np.floor(tca / 60.0) * 60.0 + np.array([0.0, 60.0])
    assert np.all(altitude(grid) < mask)
    g = _pair(find_ground_contacts(planet.subset([i]), [station], PLANET_EPOCH_UTC, DAY_S), 0, 0)
    hit = np.flatnonzero(np.abs(g.tca_s - tca) < 1.0)
    assert len(hit) == 1
    q = int(hit[0])
    ref_aos = _reference_crossing(altitude, mask, tca - 30.0, tca)
    ref_los = _reference_crossing(altitude, mask, tca + 30.0, tca)
    assert ref_los - ref_aos < 60.0
    assert g.aos_s[q] == pytest.approx(ref_aos, abs=FINE_TIME_TOLERANCE_S)
    assert g.los_s[q] == pytest.approx(ref_los, abs=FINE_TIME_TOLERANCE_S)


def test_decayed_satellites_have_no_passes_and_do_not_disturb_others(
    planet: Constellation, real_stations: tuple[GroundStation, ...],
) -> None:
    """Two years past the catalog epoch SGP4 declares many Planet satellites decayed (NaN states)."""
    start = datetime(2025, 4, 20, tzinfo=UTC)
    duration = 6 * 3600.0
    eph = propagate(planet, start, duration)
    failed = (eph.error != 0).any(axis=1)
    assert 10 < failed.sum() < len(planet)
    g = find_ground_contacts(planet, real_stations, start, duration, chunk_satellites=50)
    assert not np.isin(g.sat, np.flatnonzero(failed)).any()
    good = np.flatnonzero(~failed)
    alone = find_ground_contacts(planet.subset(good), real_stations, start, duration)
    assert len(alone) == len(g) > 0
    np.testing.assert_array_equal(good[alone.sat], g.sat)
    np.testing.assert_allclose(alone.aos_s, g.aos_s, atol=1e-6)


def test_chunking_and_progress_do_not_change_the_result(planet: Constellation, planet_day: GroundContacts,
                                                        real_stations: tuple[GroundStation, ...]) -> None:
    calls: list[tuple[int, int]] = []
    g = find_ground_contacts(planet, real_stations, PLANET_EPOCH_UTC, DAY_S, chunk_satellites=37,
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(min(n, 188), 188) for n in range(37, 188 + 37, 37)]
    assert np.array_equal(g.sat, planet_day.sat) and np.array_equal(g.station, planet_day.station)
    np.testing.assert_allclose(g.aos_s, planet_day.aos_s, atol=1e-6)
    np.testing.assert_allclose(g.los_s, planet_day.los_s, atol=1e-6)


def test_geostationary_satellite_stays_visible_all_window() -> None:
    """A geostationary orbit (elements set here) seen from under it: one pass over the whole window."""
    epoch = PLANET_EPOCH_UTC
    satrec = Satrec()
    sidereal_day_min = 1436.0682
    satrec.sgp4init(WGS72, "i", 99001, (epoch - datetime(1949, 12, 31, tzinfo=UTC)).total_seconds() / DAY_S,
                    0.0, 0.0, 0.0, 0.0002, 0.0, 0.0001, 0.0, 2.0 * math.pi / sidereal_day_min, 0.0)
    geo = Constellation((Satellite("GEO-TEST", 99001, satrec),))
    r = propagate(geo, epoch, 60.0).grid_ecef_km()[0, 0]
    lon = math.degrees(math.atan2(r[1], r[0]))
    station = GroundStation("under", 0.0, lon, 0.0, 10.0)
    g = find_ground_contacts(geo, [station], epoch, DAY_S)
    assert len(g) == 1 and g.truncated[0]
    assert (g.aos_s[0], g.los_s[0]) == (0.0, DAY_S)
    assert g.max_elevation_deg[0] > 80.0
    # Seen from the antipode it never rises.
    far = GroundStation("antipode", 0.0, lon - 180.0 if lon > 0 else lon + 180.0, 0.0, 0.0)
    assert len(find_ground_contacts(geo, [far], epoch, DAY_S)) == 0


def test_grid_step_does_not_change_the_passes(planet: Constellation, planet_day: GroundContacts,
                                              real_stations: tuple[GroundStation, ...]) -> None:
    """30 s, 60 s and 120 s grids give the same passes to within the refinement tolerance."""
    sats = [3, 60, 120, 187]
    reference = find_ground_contacts(planet.subset(sats), real_stations, PLANET_EPOCH_UTC, DAY_S, step_s=60.0)
    assert len(reference) > 20
    for step_s in (30.0, 120.0):
        g = find_ground_contacts(planet.subset(sats), real_stations, PLANET_EPOCH_UTC, DAY_S, step_s=step_s)
        assert np.array_equal(g.sat, reference.sat) and np.array_equal(g.station, reference.station)
        for column in ("aos_s", "los_s", "tca_s"):
            np.testing.assert_allclose(getattr(g, column), getattr(reference, column), rtol=0,
                                       atol=FINE_TIME_TOLERANCE_S, err_msg=f"step {step_s}: {column}")
        np.testing.assert_allclose(g.max_elevation_deg, reference.max_elevation_deg, rtol=0,
                                   atol=FINE_ELEVATION_TOLERANCE_DEG)


@settings(max_examples=50, deadline=None)
@given(station_radius_km=st.floats(6350.0, 6390.0), satellite_radius_km=st.floats(6500.0, 50000.0),
       elevation=st.floats(-5.0, 89.0))
def test_visibility_half_angle_puts_the_satellite_at_that_elevation(
    station_radius_km: float, satellite_radius_km: float, elevation: float,
) -> None:
    """Place the satellite at the returned central angle and measure its elevation above the radial horizon."""
    angle = float(visibility_half_angle_rad(np.array(station_radius_km), np.array(satellite_radius_km),
                                            np.array(elevation)))
    station = np.array([station_radius_km, 0.0, 0.0])
    satellite = satellite_radius_km * np.array([math.cos(angle), math.sin(angle), 0.0])
    d = satellite - station
    measured = math.degrees(math.asin(d[0] / np.linalg.norm(d)))
    assert measured == pytest.approx(elevation, abs=1e-7)


def test_rejects_bad_arguments(planet: Constellation, real_stations: tuple[GroundStation, ...]) -> None:
    with pytest.raises(InputError, match="duration_s"):
        find_ground_contacts(planet, real_stations, PLANET_EPOCH_UTC, 0.0)
    with pytest.raises(InputError, match="step_s"):
        find_ground_contacts(planet, real_stations, PLANET_EPOCH_UTC, 60.0, step_s=-1.0)
    with pytest.raises(InputError, match="chunk_satellites"):
        find_ground_contacts(planet, real_stations, PLANET_EPOCH_UTC, 60.0, chunk_satellites=0)
    assert len(find_ground_contacts(planet, [], PLANET_EPOCH_UTC, 60.0)) == 0


@settings(max_examples=12, deadline=None)
@given(
    latitude_deg=st.floats(-85.0, 85.0),
    longitude_deg=st.floats(-180.0, 180.0),
    altitude_m=st.floats(0.0, 3000.0),
    mask_deg=st.floats(0.0, 30.0),
    offset_s=st.floats(0.0, DAY_S - 6 * 3600.0),
)
def test_random_stations_and_masks_match_find_events(
    planet: Constellation, latitude_deg: float, longitude_deg: float, altitude_m: float, mask_deg: float,
    offset_s: float,
) -> None:
    """Random sites, masks and window starts on four satellites over 6 h: same rises and sets as find_events."""
    station = GroundStation("random", latitude_deg, longitude_deg, altitude_m, mask_deg)
    start = PLANET_EPOCH_UTC + timedelta(seconds=offset_s)
    duration = 6 * 3600.0
    sats = [0, 47, 101, 170]
    g = find_ground_contacts(planet.subset(sats), [station], start, duration)
    for local, i in enumerate(sats):
        ours = _pair(g, local, 0)
        t_s, events = _find_events(planet, i, station, start, duration)
        rises, sets = np.sort(t_s[events == 0]), np.sort(t_s[events == 2])
        ours_aos = ours.aos_s[ours.aos_s > 0.0]
        ours_los = ours.los_s[ours.los_s < duration]
        assert len(ours_aos) == len(rises) and len(ours_los) == len(sets), (i, ours_aos, rises, ours_los, sets)
        np.testing.assert_allclose(ours_aos, rises, rtol=0, atol=FIND_EVENTS_TOLERANCE_S)
        np.testing.assert_allclose(ours_los, sets, rtol=0, atol=FIND_EVENTS_TOLERANCE_S)


def test_target_passes_match_one_direct_search_whatever_was_asked_before(planet: Constellation) -> None:
    """The memo answers per target exactly what one call of find_ground_contacts over all targets finds, whether
    the targets come together, one by one, or after others; a new constellation object starts afresh."""
    start = datetime(2023, 4, 20, tzinfo=UTC)
    small = planet.subset(list(range(12)))
    targets = [(48.14, 11.58, 30.0), (-33.9, 18.4, 20.0), (64.1, -21.9, 10.0)]
    stations = [GroundStation(f"t{i}", k[0], k[1], 0.0, k[2]) for i, k in enumerate(targets)]
    direct = find_ground_contacts(small, stations, start, 6 * 3600.0)
    expected = {k: [(small.names[int(s)], float(t)) for s, st_, t in zip(direct.sat, direct.station, direct.tca_s,
                                                                         strict=True) if int(st_) == i]
                for i, k in enumerate(targets)}
    assert sum(map(len, expected.values())) > 0
    one_by_one = {k: list(target_passes(small, [k], start, 6 * 3600.0)[k]) for k in reversed(targets)}
    assert one_by_one == expected
    assert {k: list(v) for k, v in target_passes(small, targets, start, 6 * 3600.0).items()} == expected
    other = planet.subset(list(range(12, 24)))  # another constellation: another answer, not the memo's
    assert target_passes(other, targets[:1], start, 6 * 3600.0)[targets[0]] != tuple(expected[targets[0]])
