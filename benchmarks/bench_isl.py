"""Benchmark: inter-satellite links and sunlight at constellation scale, with baselines from the same run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_isl.py [--repeats 3]

Figures (medians over ``--repeats`` where quick):

1. +Grid ISL windows for a 72 × 22 Walker-delta shell (550 km, 53°, the Starlink
   shell used by Hypatia/Celestial) over 24 h (target <= 10 s). Baseline: dense
   1 s sampling of the same pairs with SGP4 (the tests' brute force) over 1 h,
   scaled × 24. Also nearest:4 on the same shell over 1 h (no target).
2. ``los`` pairs among the 4,428 Starlink satellites of tests/data at one instant
   (target <= 0.5 s), against an O(N²) numpy brute force over all 9.8 M pairs.
3. Sunlight (umbra / penumbra / sunlit) for the 4,428 satellites over 24 h.
   Baseline: skyfield ``is_sunlit`` on the 60 s grid (no refinement) for 100
   satellites, scaled to 4,428.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgp4.api import SatrecArray  # noqa: E402
from skyfield.api import EarthSatellite, Loader  # noqa: E402
from skyfield_data import get_skyfield_data_path  # noqa: E402

from orbit.catalog import load_tle  # noqa: E402
from orbit.isl import EARTH_RADIUS_KM, find_isl_contacts, grid_pairs, los_pairs  # noqa: E402
from orbit.propagate import julian_date_utc, propagate, timescale  # noqa: E402
from orbit.sunlight import find_sunlight  # noqa: E402
from orbit.types import IslConfig  # noqa: E402
from orbit.walker import WalkerSpec, walker_shell  # noqa: E402

DAY_S = 86400.0
EPOCH = datetime(2023, 7, 18, 0, 0, tzinfo=UTC)
STARLINK_TLE = ROOT / "tests" / "data" / "starlink-2023-07-18.tle"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (s) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_grid(repeats: int) -> None:
    shell = walker_shell(WalkerSpec.parse("53:1584/72/1", altitude_km=550.0), EPOCH)
    config = IslConfig.parse("grid")
    t_prop, eph = timed(lambda: propagate(shell, EPOCH, DAY_S), 1)
    t_isl, contacts = timed(lambda: find_isl_contacts(eph, shell, config, duration_s=DAY_S), repeats)
    print(f"[grid] 72x22 Walker 550 km 53deg, 24 h, 60 s grid: propagate {t_prop:.2f} s; "
          f"find_isl_contacts {t_isl:.2f} s (median of {repeats}, target <= 10 s); "
          f"{len(contacts)} intervals over {len(np.unique(contacts.a * len(shell) + contacts.b))} pairs")
    pairs = grid_pairs(eph, shell)

    def dense_hour() -> int:
        jd, fr = julian_date_utc(EPOCH)
        t = np.arange(0.0, 3600.0 + 0.5, 1.0)
        _, r, _ = SatrecArray([s.satrec for s in shell.satellites]).sgp4(np.full(len(t), jd), fr + t / DAY_S)
        changes = 0
        for chunk in np.array_split(np.arange(len(pairs)), 16):
            ra, rb = r[pairs[chunk, 0]], r[pairs[chunk, 1]]
            d = rb - ra
            s = np.clip(-np.sum(ra * d, axis=-1) / np.sum(d * d, axis=-1), 0.0, 1.0)
            clear = np.linalg.norm(ra + s[..., None] * d, axis=-1)
            ok = (np.linalg.norm(d, axis=-1) <= config.max_range_km) & (
                clear > EARTH_RADIUS_KM + config.grazing_altitude_km)
            changes += int(np.count_nonzero(np.diff(ok, axis=1)))
        return changes

    hour = propagate(shell, EPOCH, 3600.0)
    t_near, near = timed(lambda: find_isl_contacts(hour, shell, IslConfig.parse("nearest:4"), duration_s=3600.0), 1)
    print(f"[nearest:4] same shell, 1 h, selection every 30 s: {t_near:.2f} s; {len(near)} intervals")
    t_dense, _ = timed(dense_hour, 1)
    print(f"[grid] baseline dense 1 s SGP4 sampling of the same {len(pairs)} pairs: {t_dense:.2f} s per hour, "
          f"~{24 * t_dense:.1f} s for 24 h (x{24 * t_dense / t_isl:.0f} slower)")


def bench_los(repeats: int) -> None:
    starlink, _ = load_tle(STARLINK_TLE)
    r = propagate(starlink, EPOCH, 0.0).r_teme_km[:, 0]
    t_los, (pairs, _) = timed(lambda: los_pairs(r, max_range_km=5000.0, grazing_altitude_km=80.0), max(repeats, 5))

    def brute() -> int:
        n = len(r)
        count = 0
        for i0 in range(0, n, 256):  # rows in blocks: all i < j pairs, O(N²)
            rows = np.arange(i0, min(i0 + 256, n))
            ra = r[rows][:, None, :]
            d = r[None, :, :] - ra
            dd = np.sum(d * d, axis=-1)
            s = np.clip(-np.sum(ra * d, axis=-1) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
            clear = np.linalg.norm(ra + s[..., None] * d, axis=-1)
            ok = (np.sqrt(dd) <= 5000.0) & (clear > EARTH_RADIUS_KM + 80.0)
            ok &= np.arange(n)[None, :] > rows[:, None]
            count += int(ok.sum())
        return count

    t_brute, n_brute = timed(brute, 1)
    print(f"[los] {len(r)} Starlink sats, one instant: los_pairs {t_los * 1e3:.0f} ms (median of {max(repeats, 5)}, "
          f"target <= 500 ms), {len(pairs)} pairs; O(N^2) brute force {t_brute:.2f} s, {n_brute} pairs "
          f"(x{t_brute / t_los:.0f} slower)")


def bench_sunlight(repeats: int) -> None:
    starlink, _ = load_tle(STARLINK_TLE)
    t_prop, eph = timed(lambda: propagate(starlink, EPOCH, DAY_S), 1)
    t_sun, sun = timed(lambda: find_sunlight(eph, duration_s=DAY_S), repeats)
    print(f"[sunlight] {len(starlink)} Starlink sats x 24 h: propagate {t_prop:.2f} s; find_sunlight {t_sun:.2f} s "
          f"(median of {repeats}); {len(sun)} intervals, boundaries to 0.1 s")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The file finals2000A\.all has expired", category=RuntimeWarning)
        de421 = Loader(get_skyfield_data_path(), verbose=False)("de421.bsp")
    ts = timescale()
    t = ts.utc(EPOCH.year, EPOCH.month, EPOCH.day, 0, 0, np.arange(0.0, DAY_S + 1.0, 60.0))
    subset = starlink.satellites[:100]

    def skyfield_grid() -> int:
        lit = 0
        for s in subset:
            lit += int(EarthSatellite.from_satrec(s.satrec, ts).at(t).is_sunlit(de421).sum())
        return lit

    t_sky, _ = timed(skyfield_grid, 1)
    de421.close()
    scaled_s = t_sky * len(starlink) / len(subset)
    print(f"[sunlight] baseline skyfield is_sunlit on the 60 s grid, {len(subset)} sats: {t_sky:.2f} s, "
          f"~{scaled_s:.0f} s for {len(starlink)} (x{scaled_s / t_sun:.0f} slower)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("grid", "los", "sunlight"))
    args = parser.parse_args(argv)
    for name, fn in (("grid", bench_grid), ("los", bench_los), ("sunlight", bench_sunlight)):
        if args.only in (None, name):
            fn(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
