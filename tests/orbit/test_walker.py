"""Tests of orbit.walker: Walker delta/star shells, checked by propagating them with SGP4."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbit.types import Constellation
from orbit.walker import WALKER_NORAD_ID_BASE, WGS72_RADIUS_KM, WalkerSpec, walker_shell
from skyinfer.errors import InputError

EPOCH = datetime(2023, 4, 20, tzinfo=UTC)
ALTITUDE_TOLERANCE_KM = 0.1  # the shell is calibrated to the requested orbit-averaged radius
ANGLE_TOLERANCE_DEG = 0.15  # osculating vs mean elements (J2 short-period terms) at the epoch


def states_at(constellation: Constellation, minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TEME position and velocity (N, T, 3) ``minutes`` after each satellite's epoch."""
    n = len(constellation)
    r_km = np.empty((n, len(minutes), 3))
    v_km_s = np.empty((n, len(minutes), 3))
    for i, sat in enumerate(constellation.satellites):
        e, r, v = sat.satrec.sgp4_array(np.full(len(minutes), sat.satrec.jdsatepoch),
                                        sat.satrec.jdsatepochF + minutes / 1440.0)
        assert not e.any()
        r_km[i], v_km_s[i] = r, v
    return r_km, v_km_s


def elements_deg(r_km: np.ndarray, v_km_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inclination, RAAN and argument of latitude (degrees) from TEME state vectors (..., 3)."""
    h = np.cross(r_km, v_km_s)
    inclination = np.degrees(np.arccos(h[..., 2] / np.linalg.norm(h, axis=-1)))
    raan = np.degrees(np.arctan2(h[..., 0], -h[..., 1])) % 360.0
    node = np.stack([np.cos(np.radians(raan)), np.sin(np.radians(raan)), np.zeros_like(raan)], axis=-1)
    cos_u = np.sum(node * r_km, axis=-1) / np.linalg.norm(r_km, axis=-1)
    u = np.degrees(np.arccos(np.clip(cos_u, -1.0, 1.0)))
    u = np.where(r_km[..., 2] < 0.0, 360.0 - u, u)
    return inclination, raan, u


def angle_diff_deg(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.asarray((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


def test_parse_and_derived_quantities() -> None:
    spec = WalkerSpec.parse("53:1584/72/1", 550.0)
    assert spec == WalkerSpec(53.0, 1584, 72, 1, 550.0, "delta", "")
    assert spec.per_plane == 22
    assert spec.raan_spacing_deg == pytest.approx(5.0)
    assert spec.phase_offset_deg == pytest.approx(360.0 / 1584)
    assert spec.notation == "53:1584/72/1"
    star = WalkerSpec.parse(" 86.4 : 66 / 6 / 2 ", 780.0, kind="STAR", name_prefix="iri-")
    assert star.kind == "star" and star.raan_spacing_deg == pytest.approx(30.0) and star.name_prefix == "iri-"


def test_delta_shell_geometry_by_propagation() -> None:
    spec = WalkerSpec.parse("53:72/6/2", 550.0)
    shell = walker_shell(spec, EPOCH)
    assert len(shell) == 72
    assert shell.names[:3] == ("P00S00", "P00S01", "P00S02")
    assert shell.names[-1] == "P05S11"
    assert list(shell.planes) == [p for p in range(6) for _ in range(12)]
    assert list(shell.slots) == list(range(12)) * 6
    assert shell.norad_ids[0] == WALKER_NORAD_ID_BASE and shell.norad_ids[-1] == WALKER_NORAD_ID_BASE + 71
    assert shell.satellites[0].source == "walker:53:72/6/2"

    # Mean altitude over one orbit (about 95.6 min at 550 km).
    minutes = np.linspace(0.0, 95.6, 240, endpoint=False)
    r_km, v_km_s = states_at(shell, minutes)
    mean_altitude_km = np.linalg.norm(r_km, axis=-1).mean(axis=1) - WGS72_RADIUS_KM
    assert np.abs(mean_altitude_km - 550.0).max() < ALTITUDE_TOLERANCE_KM
    # Circular: the radius varies only by J2 short-period terms (~10 km), not by an eccentricity.
    spread_km = np.ptp(np.linalg.norm(r_km, axis=-1), axis=1)
    assert spread_km.max() < 20.0

    inclination, raan, u = elements_deg(r_km[:, 0], v_km_s[:, 0])
    assert np.abs(inclination - 53.0).max() < ANGLE_TOLERANCE_DEG
    planes, slots = shell.planes, shell.slots
    assert np.abs(angle_diff_deg(raan, planes * 60.0)).max() < ANGLE_TOLERANCE_DEG
    expected_u = slots * 30.0 + planes * 2 * 360.0 / 72
    assert np.abs(angle_diff_deg(u, expected_u)).max() < ANGLE_TOLERANCE_DEG
    # The phase offset between adjacent planes, slot by slot: F·360/T = 10°.
    u_grid = u.reshape(6, 12)
    assert np.abs(angle_diff_deg(u_grid[1:], u_grid[:-1]) - 10.0).max() < ANGLE_TOLERANCE_DEG


def test_star_shell_spreads_nodes_over_180_degrees() -> None:
    shell = walker_shell(WalkerSpec.parse("86.4:66/6/2", 780.0, kind="star"), EPOCH)
    r_km, v_km_s = states_at(shell, np.array([0.0]))
    inclination, raan, _ = elements_deg(r_km[:, 0], v_km_s[:, 0])
    assert np.abs(inclination - 86.4).max() < ANGLE_TOLERANCE_DEG
    assert np.abs(angle_diff_deg(raan, shell.planes * 30.0)).max() < ANGLE_TOLERANCE_DEG


def test_epoch_is_the_requested_instant() -> None:
    shell = walker_shell(WalkerSpec.parse("53:4/1/0", 550.0), datetime(2023, 4, 20, 6, 30))  # naive = UTC
    sat = shell.satellites[0].satrec
    jd = sat.jdsatepoch + sat.jdsatepochF
    assert jd == pytest.approx(2460054.5 + 6.5 / 24.0, abs=1e-8)  # 1 ms


@settings(max_examples=15, deadline=None)
@given(altitude_km=st.floats(min_value=160.0, max_value=40_000.0), inclination_deg=st.floats(0.0, 180.0))
def test_mean_altitude_matches_request(altitude_km: float, inclination_deg: float) -> None:
    spec = WalkerSpec(inclination_deg, 1, 1, 0, altitude_km)
    shell = walker_shell(spec, EPOCH)
    period_min = 2.0 * np.pi / shell.satellites[0].satrec.no_kozai
    r_km, _ = states_at(shell, np.linspace(0.0, period_min, 200, endpoint=False))
    mean_altitude_km = np.linalg.norm(r_km, axis=-1).mean() - WGS72_RADIUS_KM
    assert abs(mean_altitude_km - altitude_km) < ALTITUDE_TOLERANCE_KM


def test_name_width_grows_and_prefix_applies() -> None:
    shell = walker_shell(WalkerSpec(53.0, 202, 101, 0, 550.0, name_prefix="A-"), EPOCH, first_norad_id=900_001_000)
    assert shell.names[0] == "A-P000S00" and shell.names[-1] == "A-P100S01"
    assert shell.norad_ids[0] == 900_001_000


@pytest.mark.parametrize(
    ("spec", "altitude_km", "kind", "pattern"),
    [
        ("53:1584/72", 550.0, "delta", r"^c\[0\]: '53:1584/72' is not a Walker spec"),
        ("x:10/2/0", 550.0, "delta", r"^c\[0\]: inclination_deg: 'x' is not a number"),
        ("53:10.5/2/0", 550.0, "delta", r"^c\[0\]: total: '10.5' is not an integer"),
        ("53:100/7/0", 550.0, "delta", r"^c\[0\]: planes: total 100 is not divisible by 7 planes"),
        ("53:100/10/10", 550.0, "delta", r"^c\[0\]: phasing: must be within \[0, planes - 1\] = \[0, 9\], got 10"),
        ("53:0/1/0", 550.0, "delta", r"^c\[0\]: total: must be >= 1"),
        ("53:10/0/0", 550.0, "delta", r"^c\[0\]: planes: must be >= 1"),
        ("190:10/2/0", 550.0, "delta", r"^c\[0\]: inclination_deg: must be within \[0, 180\]"),
        ("53:10/2/0", 150.0, "delta", r"^c\[0\]: altitude_km: must be within \[160, 40000\] km, got 150"),
        ("53:10/2/0", 45_000.0, "delta", r"^c\[0\]: altitude_km: "),
        ("53:10/2/0", 550.0, "rosette", r"^c\[0\]: kind: must be delta or star, got 'rosette'"),
    ],
)
def test_parse_errors_name_the_field(spec: str, altitude_km: float, kind: str, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        WalkerSpec.parse(spec, altitude_km, kind, where="c[0]")


def test_constructor_validates_too() -> None:
    with pytest.raises(InputError, match=r"^walker 53:10/3/0: planes: total 10 is not divisible by 3 planes"):
        WalkerSpec(53.0, 10, 3, 0, 550.0)
    spec = WalkerSpec(53.0, 10, 2, 0, 550.0)
    with pytest.raises(InputError, match="phasing"):
        dataclasses.replace(spec, phasing=2)
    with pytest.raises(InputError, match=r"first_norad_id: must be within \[900000000, 999999990\]"):
        walker_shell(spec, EPOCH, first_norad_id=5)


@pytest.mark.parametrize("inclination_deg", [0.0, 5e-324, 1e-12, 180.0])
@pytest.mark.parametrize("altitude_km", [160.0, 20_200.0, 40_000.0])
def test_edge_orbits_propagate_to_the_requested_altitude(inclination_deg: float, altitude_km: float) -> None:
    # Deep-space SDP4 divides by sin(i): subnormal inclinations once gave NaN positions.
    shell = walker_shell(WalkerSpec(inclination_deg, 2, 1, 0, altitude_km), EPOCH)
    period_min = 2.0 * np.pi / shell.satellites[0].satrec.no_kozai
    r_km, _ = states_at(shell, np.linspace(0.0, period_min, 100, endpoint=False))
    assert np.isfinite(r_km).all()
    assert abs(np.linalg.norm(r_km, axis=-1).mean() - WGS72_RADIUS_KM - altitude_km) < ALTITUDE_TOLERANCE_KM
