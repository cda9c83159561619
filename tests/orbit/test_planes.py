"""Clustering catalogs into orbital planes: Walker shells recovered, Starlink's real shells sensible."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orbit.catalog import load_tle
from orbit.planes import (
    assign_planes,
    gap_clusters,
    mean_altitude_km,
    mean_inclination_deg,
    orbit_angles,
    plane_successors,
)
from orbit.propagate import propagate
from orbit.types import Constellation, Satellite
from orbit.walker import WalkerSpec, walker_shell

DATA = Path(__file__).resolve().parents[1] / "data"
EPOCH = datetime(2023, 7, 18, 0, 0, tzinfo=UTC)
# Osculating (state) versus mean (SGP4 element) angles differ by J2 short-period terms,
# ~1.5·J2·(Re/a)² ≈ 1.4e-3 rad ≈ 0.08° at 550 km.
OSCULATING_TOL_DEG = 0.15


def _anonymous(constellation: Constellation, order: np.ndarray) -> Constellation:
    """The same satellites in another order, without plane/slot (as a catalog would have them)."""
    return Constellation(tuple(Satellite(s.name, s.norad_id, s.satrec, source="test")
                               for s in (constellation.satellites[i] for i in order)))


def _circular_spread_deg(angles_deg: np.ndarray) -> float:
    a = np.sort(np.mod(angles_deg, 360.0))
    gaps = np.diff(np.concatenate([a, [a[0] + 360.0]]))
    return float(360.0 - gaps.max())


@pytest.mark.parametrize(("notation", "kind", "altitude_km"), [
    ("53:220/10/1", "delta", 550.0),
    ("86.4:66/6/2", "star", 780.0),
    ("97.6:120/12/5", "delta", 600.0),
])
def test_walker_planes_and_slot_order_are_recovered(notation: str, kind: str, altitude_km: float) -> None:
    spec = WalkerSpec.parse(notation, altitude_km=altitude_km, kind=kind)
    shell = walker_shell(spec, EPOCH)
    order = np.random.default_rng(3).permutation(len(shell))
    catalog = _anonymous(shell, order)
    truth_plane, truth_slot = shell.planes[order], shell.slots[order]
    planes, slots = assign_planes(catalog, EPOCH + timedelta(hours=3))
    assert len(np.unique(planes)) == spec.planes
    plane_of_label = np.full(spec.planes, -1)
    for label in range(spec.planes):
        members = planes == label
        assert len(np.unique(truth_plane[members])) == 1  # no plane mixes Walker planes
        assert members.sum() == spec.per_plane
        plane_of_label[label] = truth_plane[members][0]
        # Slots follow the Walker slots around the orbit (up to where counting starts).
        walker_slots = truth_slot[members][np.argsort(slots[members])]
        assert (np.diff(walker_slots) % spec.per_plane == 1).all()
        assert sorted(slots[members]) == list(range(spec.per_plane))
    # Planes are numbered in RAAN order: consecutive labels are neighbouring Walker planes.
    assert (np.diff(plane_of_label) % spec.planes == 1).all()


def test_two_shells_at_one_inclination_stay_apart() -> None:
    low = walker_shell(WalkerSpec.parse("53:100/10/1", altitude_km=540.0, name_prefix="L"), EPOCH)
    high = walker_shell(WalkerSpec.parse("53:100/10/1", altitude_km=550.0, name_prefix="H"), EPOCH)
    both = Constellation(low.satellites + high.satellites)
    planes, _ = assign_planes(_anonymous(both, np.arange(len(both))), EPOCH)
    assert len(np.unique(planes)) == 20
    assert not set(planes[:100]) & set(planes[100:])


def test_assign_planes_from_an_ephemeris_matches_a_datetime() -> None:
    shell = walker_shell(WalkerSpec.parse("53:220/10/1", altitude_km=550.0), EPOCH)
    catalog = _anonymous(shell, np.arange(len(shell)))
    eph = propagate(catalog, EPOCH, 3600.0)
    from_eph = assign_planes(catalog, eph, t_s=1200.0)
    from_dt = assign_planes(catalog, EPOCH + timedelta(seconds=1200))
    np.testing.assert_array_equal(from_eph[0], from_dt[0])
    np.testing.assert_array_equal(from_eph[1], from_dt[1])


def test_orbit_angles_match_the_elements_at_epoch() -> None:
    shell = walker_shell(WalkerSpec.parse("53:220/10/1", altitude_km=550.0), EPOCH)
    eph = propagate(shell, EPOCH, 0.0)
    angles = orbit_angles(eph.r_teme_km[:, 0], eph.v_teme_km_s[:, 0])
    inclo = np.array([s.satrec.inclo for s in shell.satellites])
    nodeo = np.array([s.satrec.nodeo for s in shell.satellites])
    u = np.array([s.satrec.argpo + s.satrec.mo for s in shell.satellites])
    np.testing.assert_allclose(angles.inclination_deg, np.degrees(inclo), atol=OSCULATING_TOL_DEG)
    for got, want in ((angles.raan_deg, nodeo), (angles.arg_latitude_deg, u)):
        diff = (got - np.degrees(want) + 180.0) % 360.0 - 180.0
        assert np.abs(diff).max() < OSCULATING_TOL_DEG
    np.testing.assert_allclose(np.linalg.norm(angles.normal, axis=1), 1.0)


def test_plane_successors_wrap_a_delta_shell_but_not_a_star_seam() -> None:
    for kind, expected_last in (("delta", 0), ("star", -1)):
        shell = walker_shell(WalkerSpec.parse("86.4:66/6/2", altitude_km=780.0, kind=kind), EPOCH)
        eph = propagate(shell, EPOCH, 0.0)
        succ = plane_successors(shell.planes, eph.r_teme_km[:, 0], eph.v_teme_km_s[:, 0],
                                mean_inclination_deg(shell), mean_altitude_km(shell))
        assert succ.tolist() == [1, 2, 3, 4, 5, expected_last]


def test_gap_clusters_on_a_circle_join_across_zero() -> None:
    labels = gap_clusters(np.array([359.5, 0.2, 120.0, 120.4, 240.0]), 1.0, period=360.0)
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert len(set(labels.tolist())) == 3
    assert gap_clusters(np.array([]), 1.0).tolist() == []


def test_starlink_catalog_gives_sensible_planes() -> None:
    """Starlink 2023-07-18: shells 1 (53.05°, ~547 km) and 4 (53.2°, ~540 km) each have 72 planes 5° apart."""
    starlink, _ = load_tle(DATA / "starlink-2023-07-18.tle")
    at = datetime(2023, 7, 18, 12, 0, tzinfo=UTC)
    planes, slots = assign_planes(starlink, at)
    assert (planes >= 0).all() and (slots >= 0).all()
    eph = propagate(starlink, at, 0.0)
    angles = orbit_angles(eph.r_teme_km[:, 0], eph.v_teme_km_s[:, 0])
    inclination, altitude = mean_inclination_deg(starlink), mean_altitude_km(starlink)
    counts = np.bincount(planes)
    for shell_inc, shell_alt in ((53.05, 547.0), (53.22, 540.0)):
        labels = [p for p in range(len(counts)) if counts[p] >= 10
                  and abs(np.median(inclination[planes == p]) - shell_inc) < 0.05
                  and abs(np.median(altitude[planes == p]) - shell_alt) < 3.0]
        sizes = counts[labels]
        assert 68 <= len(labels) <= 76, f"shell {shell_inc}°: {len(labels)} planes, sizes {sizes.tolist()}"
        assert sizes.max() <= 30, f"shell {shell_inc}°: a plane of {sizes.max()} satellites (merged planes?)"
        spreads = [_circular_spread_deg(angles.raan_deg[planes == p]) for p in labels]
        assert max(spreads) < 1.5, f"shell {shell_inc}°: RAAN spreads {np.round(spreads, 2).tolist()}"
        centres = np.sort([np.degrees(np.angle(np.exp(1j * np.radians(angles.raan_deg[planes == p])).mean()))
                           % 360.0 for p in labels])
        spacing = np.diff(np.concatenate([centres, [centres[0] + 360.0]]))
        assert 4.5 < np.median(spacing) < 5.5, f"shell {shell_inc}°: RAAN spacing {np.round(spacing, 1).tolist()}"
        # Within a plane, slots order the satellites around the orbit.
        for p in labels[:5]:
            members = np.flatnonzero(planes == p)
            u = angles.arg_latitude_deg[members][np.argsort(slots[members])]
            assert (np.diff(u) > 0).all()
