"""Inter-satellite links against brute force (all pairs, 1 s steps, SGP4 directly) and policy invariants."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sgp4.api import SatrecArray

from orbit import isl
from orbit.catalog import load_tle
from orbit.contact_plan import IslContacts
from orbit.isl import (
    EARTH_RADIUS_KM,
    find_isl_contacts,
    greedy_terminal_matching,
    grid_pairs,
    link_feasible,
    los_pairs,
    nearest_selection,
)
from orbit.planes import mean_altitude_km
from orbit.propagate import Ephemeris, julian_date_utc, propagate
from orbit.types import Constellation, IslConfig
from orbit.walker import WalkerSpec, walker_shell

DATA = Path(__file__).resolve().parents[1] / "data"
EPOCH = datetime(2023, 7, 18, 0, 0, tzinfo=UTC)
WINDOW_S = 7200.0
# Brute force samples every second; our boundaries are within 0.1 s of the geometric one.
BOUNDARY_TOL_S = 1.1
# Pairs this close to a threshold may legitimately fall either way in two implementations.
THRESHOLD_SLACK_KM = 1e-6


# --------------------------------------------------------------------------- brute force references


def _brute_positions(constellation: Constellation, duration_s: float, step_s: float = 1.0) -> np.ndarray:
    """SGP4 TEME positions (N, T, 3) every ``step_s``, straight from sgp4 (no interpolation)."""
    jd, fr = julian_date_utc(EPOCH)
    t = np.arange(0.0, duration_s + 0.5 * step_s, step_s)
    err, r, _ = SatrecArray([s.satrec for s in constellation.satellites]).sgp4(np.full(len(t), jd), fr + t / 86400.0)
    assert (err == 0).all()
    return r


def _brute_ok(ra: np.ndarray, rb: np.ndarray, max_range_km: float, grazing_km: float) -> tuple[np.ndarray, ...]:
    """Closest point of the segment by explicit projection; returns (ok, range, clearance)."""
    d = rb - ra
    s = np.clip(-np.sum(ra * d, axis=-1) / np.sum(d * d, axis=-1), 0.0, 1.0)
    p = ra + s[..., None] * d
    clearance = np.linalg.norm(p, axis=-1)
    rng = np.linalg.norm(d, axis=-1)
    return (rng <= max_range_km) & (clearance > EARTH_RADIUS_KM + grazing_km), rng, clearance


def _brute_intervals(r: np.ndarray, pairs: np.ndarray, config: IslConfig) -> dict[tuple[int, int], list[tuple]]:
    """Runs of 1 s samples where each pair's link holds."""
    out: dict[tuple[int, int], list[tuple]] = {}
    for a, b in pairs:
        ok, _, _ = _brute_ok(r[a], r[b], config.max_range_km, config.grazing_altitude_km)
        edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
        if len(starts):
            out[(int(a), int(b))] = [(float(s), float(e)) for s, e in zip(starts, ends, strict=True)]
    return out


def _as_dict(contacts: IslContacts) -> dict[tuple[int, int], list[tuple]]:
    out: dict[tuple[int, int], list[tuple]] = {}
    for row in contacts.rows():
        out.setdefault((row.a, row.b), []).append((row.start_s, row.end_s))
    return {k: sorted(v) for k, v in out.items()}


def _assert_same_intervals(ours: dict, brute: dict, tol_s: float = BOUNDARY_TOL_S) -> None:
    assert ours.keys() == brute.keys(), (sorted(set(ours) ^ set(brute)))[:10]
    for key, expected in brute.items():
        got = ours[key]
        assert len(got) == len(expected), (key, got, expected)
        np.testing.assert_allclose(np.array(got), np.array(expected), atol=tol_s, err_msg=str(key))


def _walker_grid_reference(constellation: Constellation, spec: WalkerSpec) -> np.ndarray:
    """+Grid pairs from Walker arithmetic: slot±1, same slot in plane±1, delta seam to the nearest phase."""
    index = {(int(p), int(s)): i for i, (p, s) in enumerate(zip(constellation.planes, constellation.slots,
                                                                   strict=True))}
    per_plane = spec.per_plane
    pairs = set()
    for p in range(spec.planes):
        for s in range(per_plane):
            pairs.add(tuple(sorted((index[p, s], index[p, (s + 1) % per_plane]))))
            if p + 1 < spec.planes:
                pairs.add(tuple(sorted((index[p, s], index[p + 1, s]))))
            elif spec.kind == "delta":
                u = s * 360.0 / per_plane + p * spec.phase_offset_deg
                u0 = np.arange(per_plane) * 360.0 / per_plane
                gap = np.abs((u0 - u + 180.0) % 360.0 - 180.0)
                pairs.add(tuple(sorted((index[p, s], index[0, int(np.argmin(gap))]))))
    return np.array(sorted(pairs), dtype=np.int64)


def _degree_at(contacts: IslContacts, n: int, t_s: float) -> np.ndarray:
    alive = (contacts.start_s <= t_s) & (t_s <= contacts.end_s)
    return np.bincount(np.concatenate([contacts.a[alive], contacts.b[alive]]), minlength=n)


# --------------------------------------------------------------------------- los_pairs


def test_los_pairs_matches_brute_force_on_300_starlink() -> None:
    starlink, _ = load_tle(DATA / "starlink-2023-07-18.tle")
    sub = starlink.subset(np.arange(0, len(starlink), 14)[:300])
    r = _brute_positions(sub, 0.0)[:, 0]
    pairs, rng = los_pairs(r, max_range_km=5000.0, grazing_altitude_km=80.0)
    i, j = np.triu_indices(len(r), k=1)
    ok, brute_rng, clearance = _brute_ok(r[i], r[j], 5000.0, 80.0)
    borderline = (np.abs(clearance - EARTH_RADIUS_KM - 80.0) < THRESHOLD_SLACK_KM) | (
        np.abs(brute_rng - 5000.0) < THRESHOLD_SLACK_KM)
    ours = set(map(tuple, pairs.tolist()))
    expected = {(int(a), int(b)) for a, b in zip(i[ok], j[ok], strict=True)}
    fuzzy = {(int(a), int(b)) for a, b in zip(i[borderline], j[borderline], strict=True)}
    assert ours - fuzzy == expected - fuzzy
    assert len(expected) > 5000  # a dense shell: thousands of visible pairs, some refused by the Earth
    assert (~ok & (brute_rng <= 5000.0)).sum() > 100
    np.testing.assert_allclose(rng, np.linalg.norm(r[pairs[:, 1]] - r[pairs[:, 0]], axis=1), atol=1e-6)  # 1 mm
    assert (pairs[:, 0] < pairs[:, 1]).all()


def test_link_grazing_the_earth_is_refused() -> None:
    limit_km = EARTH_RADIUS_KM + 80.0
    for rho_km, expected in ((limit_km - 0.5, False), (limit_km + 0.5, True)):
        r = np.array([[rho_km, -1500.0, 0.0], [rho_km, 1500.0, 0.0]])  # closest point of the segment at rho
        pairs, _ = los_pairs(r, max_range_km=5000.0, grazing_altitude_km=80.0)
        assert (len(pairs) == 1) is expected, rho_km
    # The *segment* matters, not the infinite line: the line through these dips into the Earth, the segment not.
    r = np.array([[6000.0, 3000.0, 0.0], [6000.0, 4500.0, 0.0]])
    pairs, rng = los_pairs(r, max_range_km=5000.0, grazing_altitude_km=80.0)
    assert pairs.tolist() == [[0, 1]] and rng[0] == pytest.approx(1500.0)
    # Out of range is refused even with a clear view; NaN positions take part in nothing.
    r = np.array([[7000.0, 0.0, 0.0], [7000.0, 0.0, 5001.0], [np.nan, 0.0, 0.0]])
    assert len(los_pairs(r, max_range_km=5000.0, grazing_altitude_km=80.0)[0]) == 0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    max_range_km=st.floats(min_value=500.0, max_value=15000.0),
    grazing_km=st.floats(min_value=0.0, max_value=300.0),
)
def test_los_pairs_geometry_random_points(n: int, seed: int, max_range_km: float, grazing_km: float) -> None:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r = direction * rng.uniform(EARTH_RADIUS_KM + 100.0, EARTH_RADIUS_KM + 3000.0, size=(n, 1))
    pairs, ranges = los_pairs(r, max_range_km=max_range_km, grazing_altitude_km=grazing_km)
    i, j = np.triu_indices(n, k=1)
    ok, brute_rng, clearance = _brute_ok(r[i], r[j], max_range_km, grazing_km)
    borderline = (np.abs(clearance - EARTH_RADIUS_KM - grazing_km) < THRESHOLD_SLACK_KM) | (
        np.abs(brute_rng - max_range_km) < THRESHOLD_SLACK_KM)
    ours = set(map(tuple, pairs.tolist()))
    fuzzy = {(int(a), int(b)) for a, b in zip(i[borderline], j[borderline], strict=True)}
    expected = {(int(a), int(b)) for a, b in zip(i[ok], j[ok], strict=True)}
    assert ours - fuzzy == expected - fuzzy
    assert len(ours) == len(pairs)  # no duplicates
    assert (ranges <= max_range_km).all()
    # The test is frame independent: rotating every point changes nothing.
    rotated, _ = los_pairs(r @ _random_rotation(rng).T, max_range_km=max_range_km, grazing_altitude_km=grazing_km)
    assert set(map(tuple, rotated.tolist())) - fuzzy == ours - fuzzy


# --------------------------------------------------------------------------- +Grid


@pytest.mark.parametrize(("notation", "kind", "max_range_km"), [
    ("53:60/6/1", "delta", 5000.0),
    ("86.4:66/6/2", "star", 3000.0),
])
def test_grid_matches_brute_force_on_walker(notation: str, kind: str, max_range_km: float) -> None:
    spec = WalkerSpec.parse(notation, altitude_km=550.0, kind=kind)
    shell = walker_shell(spec, EPOCH)
    config = IslConfig.parse("grid", max_range_km=max_range_km)
    topology = grid_pairs(propagate(shell, EPOCH, 60.0), shell)
    expected_topology = _walker_grid_reference(shell, spec)
    np.testing.assert_array_equal(topology, expected_topology)
    contacts = find_isl_contacts(propagate(shell, EPOCH, WINDOW_S), shell, config, duration_s=WINDOW_S)
    brute = _brute_intervals(_brute_positions(shell, WINDOW_S), expected_topology, config)
    assert len(brute) > 20 and sum(len(v) for v in brute.values()) > len(brute)  # links come and go
    _assert_same_intervals(_as_dict(contacts), brute)
    for t_s in np.arange(0.0, WINDOW_S, 37.0):
        assert _degree_at(contacts, len(shell), float(t_s)).max() <= 4


def test_grid_walker_star_seam_has_no_cross_links() -> None:
    spec = WalkerSpec.parse("86.4:66/6/2", altitude_km=780.0, kind="star")
    shell = walker_shell(spec, EPOCH)
    pairs = grid_pairs(propagate(shell, EPOCH, 60.0), shell)
    planes = shell.planes[pairs]
    assert not ((planes.min(axis=1) == 0) & (planes.max(axis=1) == spec.planes - 1)).any()
    delta = walker_shell(WalkerSpec.parse("86.4:66/6/2", altitude_km=780.0, kind="delta"), EPOCH)
    planes = delta.planes[grid_pairs(propagate(delta, EPOCH, 60.0), delta)]
    assert ((planes.min(axis=1) == 0) & (planes.max(axis=1) == 5)).sum() == 11  # the delta seam wraps


def test_grid_full_walker_shell_has_degree_four() -> None:
    shell = walker_shell(WalkerSpec.parse("53:1584/72/1", altitude_km=550.0), EPOCH)
    pairs = grid_pairs(propagate(shell, EPOCH, 60.0), shell)
    degree = np.bincount(pairs.ravel(), minlength=len(shell))
    assert (degree == 4).all() and len(pairs) == 2 * len(shell)


def test_grid_on_the_starlink_catalog_uses_clustered_planes() -> None:
    starlink, _ = load_tle(DATA / "starlink-2023-07-18.tle")
    config = IslConfig.parse("grid")
    eph = propagate(starlink, EPOCH, 1800.0)
    contacts = find_isl_contacts(eph, starlink, config, duration_s=1800.0)
    # The two operational 53° shells (547 km and 540 km mean altitude), without raising satellites or debris.
    inclination = np.degrees([s.satrec.inclo for s in starlink.satellites])
    altitude = mean_altitude_km(starlink)
    operational = (np.abs(inclination - 53.1) < 0.2) & (altitude > 535.0) & (altitude < 550.0)
    assert operational.sum() > 2800
    for t_s in (0.0, 611.0, 1800.0):
        degree = _degree_at(contacts, len(starlink), t_s)
        assert degree.max() <= 4
        # Planes hold 16-28 satellites (failures, spares), so some cross links find no partner.
        assert (degree[operational] == 4).mean() > 0.7, np.bincount(degree[operational])
        assert (degree[operational] >= 3).mean() > 0.95, np.bincount(degree[operational])
    assert (contacts.max_range_km <= config.max_range_km).all()
    # Planes pair up within a shell: no +Grid link joins the 53.05° shell to the 53.2° one.
    pairs = grid_pairs(eph, starlink)
    in_shell = np.where(operational, np.where(inclination < 53.12, 1, 4), 0)  # 53.05° vs 53.2°
    ends = in_shell[pairs]
    assert not (ends[:, 0] * ends[:, 1] == 4).any()


# --------------------------------------------------------------------------- los


def test_los_matches_brute_force_on_planet_satellites() -> None:
    planet, _ = load_tle(DATA / "planet-2023-04-20.tle")
    sub = planet.subset(np.arange(0, len(planet), 6)[:30])
    epoch = datetime(2023, 4, 20, tzinfo=UTC)
    config = IslConfig.parse("los", max_range_km=3000.0)
    contacts = find_isl_contacts(propagate(sub, epoch, 3600.0), sub, config, step_s=20.0, duration_s=3600.0)
    jd, fr = julian_date_utc(epoch)
    t = np.arange(0.0, 3600.5, 1.0)
    _, r, _ = SatrecArray([s.satrec for s in sub.satellites]).sgp4(np.full(len(t), jd), fr + t / 86400.0)
    i, j = np.triu_indices(len(sub), k=1)
    brute = _brute_intervals(r, np.stack([i, j], axis=1), config)
    # Intervals shorter than the 20 s sampling may be missed by design; none such appear here.
    assert min(e - s for v in brute.values() for s, e in v) > 20.0
    _assert_same_intervals(_as_dict(contacts), brute)
    assert len(contacts) > 20
    assert (contacts.min_range_km <= contacts.max_range_km).all()


# --------------------------------------------------------------------------- nearest:K


def _sequential_greedy(pairs: np.ndarray, ranges: np.ndarray, k: int, n: int) -> set[tuple[int, int]]:
    free = np.full(n, k)
    chosen = set()
    for idx in np.lexsort((pairs[:, 1], pairs[:, 0], ranges)):
        a, b = pairs[idx]
        if free[a] and free[b]:
            free[a] -= 1
            free[b] -= 1
            chosen.add((int(a), int(b)))
    return chosen


@settings(max_examples=80, deadline=None)
@given(n=st.integers(min_value=2, max_value=25), k=st.integers(min_value=1, max_value=4),
       seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_vectorised_greedy_matches_the_sequential_loop(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(n, k=1)
    keep = rng.random(len(i)) < rng.uniform(0.1, 1.0)
    pairs = np.stack([i[keep], j[keep]], axis=1)
    ranges = rng.integers(0, 5, size=len(pairs)).astype(float)  # many ties: order by (range, a, b)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], ranges))
    take = greedy_terminal_matching(pairs[order, 0], pairs[order, 1], k, n)
    ours = set(map(tuple, pairs[order][take].tolist()))
    assert ours == _sequential_greedy(pairs, ranges, k, n)


def _static_ephemeris(r_km: np.ndarray) -> Ephemeris:
    """Satellites frozen at ``r_km`` (N, 3): a real Ephemeris whose two grid states coincide."""
    n = len(r_km)
    jd_whole, jd_fraction = julian_date_utc(EPOCH)
    return Ephemeris(EPOCH, 60.0, np.array([0.0, 60.0]), np.stack([r_km, r_km], axis=1), np.zeros((n, 2, 3)),
                     np.zeros((n, 2), np.uint8), jd_whole, jd_fraction, 0.0)


@pytest.mark.parametrize("max_rounds", [1, isl._NEAREST_MAX_ROUNDS])
def test_nearest_selection_equals_greedy_over_all_pairs(max_rounds: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pruned matching (k-d tree candidates, settling rounds, fallback) equals the plain greedy."""
    monkeypatch.setattr(isl, "_NEAREST_MAX_ROUNDS", max_rounds)  # 1 round forces the all-pairs fallback
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(3, 120))
        k = int(rng.integers(1, 5))
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        r = direction * rng.uniform(6900.0, 7300.0, size=(n, 1))
        config = IslConfig("nearest", k, float(rng.uniform(1500.0, 9000.0)), 80.0)
        a, b, idx, ranges = nearest_selection(_static_ephemeris(r), np.array([0.0, 30.0]), config)
        pairs, all_ranges = los_pairs(r, max_range_km=config.max_range_km, grazing_altitude_km=80.0)
        expected = _sequential_greedy(pairs, all_ranges, k, n)
        for instant in (0, 1):
            chosen = {(int(x), int(y)) for x, y in zip(a[idx == instant], b[idx == instant], strict=True)}
            assert chosen == expected
        assert (ranges <= config.max_range_km).all()


def test_nearest_k_degree_and_selection() -> None:
    planet, _ = load_tle(DATA / "planet-2023-04-20.tle")
    sub = planet.subset(np.arange(0, len(planet), 3))
    epoch = datetime(2023, 4, 20, tzinfo=UTC)
    k = 2
    config = IslConfig.parse(f"nearest:{k}", max_range_km=4000.0)
    eph = propagate(sub, epoch, 3600.0)
    contacts = find_isl_contacts(eph, sub, config, duration_s=3600.0)
    step_s = 30.0  # default selection step for a 60 s ephemeris
    instants = np.arange(0.0, 3600.0 + 1e-9, step_s)
    assert len(contacts) > 10
    # Ends are selection instants.
    assert np.all(np.isin(contacts.start_s, instants)) and np.all(np.isin(contacts.end_s, instants))

    def selected(t_s: float) -> set[tuple[int, int]]:
        r, _ = eph.teme_at(np.arange(len(sub)), np.full(len(sub), t_s))
        pairs, ranges = los_pairs(r, max_range_km=config.max_range_km, grazing_altitude_km=80.0)
        return _sequential_greedy(pairs, ranges, k, len(sub))

    previous = selected(0.0)
    for t_s in instants[1:40]:
        current = selected(float(t_s))
        alive_now = {(int(a), int(b)) for a, b, s, e in zip(contacts.a, contacts.b, contacts.start_s,
                                                            contacts.end_s, strict=True) if s <= t_s <= e}
        assert alive_now <= current
        assert previous & current <= {(int(a), int(b)) for a, b, s, e in zip(
            contacts.a, contacts.b, contacts.start_s, contacts.end_s, strict=True) if s <= t_s - step_s and e >= t_s}
        assert _degree_at(contacts, len(sub), float(t_s)).max() <= k
        assert _degree_at(contacts, len(sub), float(t_s) + 0.5 * step_s).max() <= k
        previous = current


def test_policy_none_and_bad_duration() -> None:
    shell = walker_shell(WalkerSpec.parse("53:60/6/1", altitude_km=550.0), EPOCH)
    eph = propagate(shell, EPOCH, 600.0)
    assert len(find_isl_contacts(eph, shell, IslConfig.parse("none"))) == 0
    with pytest.raises(ValueError, match="duration_s"):
        find_isl_contacts(eph, shell, IslConfig.parse("grid"), duration_s=1e6)
    # A quarter orbit apart: the chord's midpoint sits at r/√2, inside the Earth at 7000 km, clear at 12000 km.
    for r_km, expected in ((7000.0, False), (12000.0, True)):
        ok, rng = link_feasible(np.array([r_km, 0, 0]), np.array([0, r_km, 0]), max_range_km=20000.0,
                                grazing_altitude_km=80.0)
        assert bool(ok) is expected and float(rng) == pytest.approx(r_km * np.sqrt(2.0))
