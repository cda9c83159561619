"""Benchmark of the ground-contact engine (issue 2): real Starlink catalog x 100 stations x 24 h.

Run:  .venv/bin/python benchmarks/bench_contacts.py [--quick] [--repeat N] [--baseline-pairs N]

What it measures, and how:
- ``orbit.passes.find_ground_contacts`` on the real 4,428-satellite Starlink catalog of 2023-07-18
  (tests/data/starlink-2023-07-18.tle) x 100 stations x 24 h from 2023-07-18T00:00Z, 10 deg mask, 60 s
  grid, at 1/4, 1/2 and the full catalog (every 4th / every 2nd / every satellite, so each subset
  samples all shells). Each size runs in a fresh subprocess; the child reports the wall and CPU
  time of the call and its own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) together with the peak RSS
  before the call (interpreter, numpy, skyfield and the catalog), so the engine's own share is visible.
  With ``--repeat N`` each size runs N times (fresh process each) and medians are printed.
- Stations: a deterministic Fibonacci lattice of 100 points over the latitude band 56 S - 72 N (where
  nearly all land and ground stations are), sea level, 10 deg mask.
- Baseline, measured in the same run: skyfield ``EarthSatellite.find_events`` (the per-pair way) on a
  seeded random sample of (satellite, station) pairs, timed per pair and extrapolated to all
  4,428 x 100 pairs with the mean per-pair time. The sampled pairs are also checked against the
  engine (every rise/set within 0.5 s, find_events' own resolution).

Targets (issue 2): <= 30 s wall, <= 4 GB peak, >= 50x faster than find_events per pair.
The figures depend on the machine and on its load; run on a quiet machine for numbers to quote.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orbit.catalog import load_tle  # noqa: E402
from orbit.passes import find_ground_contacts  # noqa: E402
from orbit.propagate import timescale  # noqa: E402
from orbit.types import Constellation, GroundStation  # noqa: E402

CATALOG = ROOT / "tests" / "data" / "starlink-2023-07-18.tle"
START_UTC = datetime(2023, 7, 18, tzinfo=UTC)
DURATION_S = 86400.0
MASK_DEG = 10.0
N_STATIONS = 100
SOUTH_LIMIT_DEG = -56.0
NORTH_LIMIT_DEG = 72.0
TARGET_WALL_S = 30.0
TARGET_PEAK_BYTES = 4 * 1024**3
TARGET_SPEEDUP = 50.0
FIND_EVENTS_RESOLUTION_S = 0.5


def lattice_stations(n: int = N_STATIONS, mask_deg: float = MASK_DEG) -> tuple[GroundStation, ...]:
    """``n`` stations on a Fibonacci lattice over the band [SOUTH_LIMIT_DEG, NORTH_LIMIT_DEG] of latitude.

    Equal-area: sin(latitude) is evenly spaced over the band, longitudes advance by the golden angle.
    """
    z_lo, z_hi = math.sin(math.radians(SOUTH_LIMIT_DEG)), math.sin(math.radians(NORTH_LIMIT_DEG))
    i = np.arange(n) + 0.5
    lat = np.degrees(np.arcsin(z_lo + (z_hi - z_lo) * i / n))
    golden_angle_deg = 180.0 * (3.0 - math.sqrt(5.0))
    lon = (i * golden_angle_deg + 180.0) % 360.0 - 180.0
    return tuple(GroundStation(f"lattice-{k:03d}", round(float(lat[k]), 4), round(float(lon[k]), 4), 0.0, mask_deg)
                 for k in range(n))


def load_catalog() -> Constellation:
    constellation, _warnings = load_tle(CATALOG)
    return constellation


def subset(constellation: Constellation, stride: int) -> Constellation:
    return constellation.subset(np.arange(0, len(constellation), stride))


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------- child
def run_child(stride: int, n_stations: int) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    constellation = subset(load_catalog(), stride)
    stations = lattice_stations(n_stations)
    rss_before = peak_rss_bytes()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    contacts = find_ground_contacts(constellation, stations, START_UTC, DURATION_S)
    wall_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    print(json.dumps({"satellites": len(constellation), "stations": n_stations, "wall_s": wall_s, "cpu_s": cpu_s,
                      "passes": len(contacts), "peak_rss_bytes": peak_rss_bytes(),
                      "rss_before_bytes": rss_before}))


def measure(stride: int, n_stations: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(stride), "--stations", str(n_stations)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------- baseline
def baseline(constellation: Constellation, stations: tuple[GroundStation, ...], n_pairs: int,
             seed: int = 20230718) -> tuple[list[float], list[float], dict[tuple[int, int], np.ndarray]]:
    """find_events per sampled pair: per-pair wall and CPU seconds, and each pair's (time_s, event) arrays."""
    from skyfield.api import EarthSatellite, wgs84

    rng = np.random.default_rng(seed)
    flat = rng.choice(len(constellation) * len(stations), size=n_pairs, replace=False)
    pairs = [(int(f) // len(stations), int(f) % len(stations)) for f in flat]
    ts = timescale()
    t0 = ts.from_datetime(START_UTC)
    t1 = ts.from_datetime(START_UTC + timedelta(seconds=DURATION_S))
    topos = [wgs84.latlon(s.latitude_deg, s.longitude_deg, elevation_m=s.altitude_m) for s in stations]
    wall: list[float] = []
    cpu: list[float] = []
    events: dict[tuple[int, int], np.ndarray] = {}
    for sat, sta in pairs:
        sky_sat = EarthSatellite.from_satrec(constellation.satellites[sat].satrec, ts)
        tic, cpu_tic = time.perf_counter(), time.process_time()
        t, ev = sky_sat.find_events(topos[sta], t0, t1, altitude_degrees=stations[sta].min_elevation_deg)
        wall.append(time.perf_counter() - tic)
        cpu.append(time.process_time() - cpu_tic)
        events[(sat, sta)] = np.stack([(t.tt - t0.tt) * 86400.0, ev.astype(float)])
    return wall, cpu, events


def check_sample(constellation: Constellation, stations: tuple[GroundStation, ...],
                 events: dict[tuple[int, int], np.ndarray]) -> tuple[int, int, float]:
    """Run the engine on the sampled satellites and compare rises/sets: (matched, total, worst |dt| s)."""
    sats = sorted({sat for sat, _ in events})
    local = {sat: i for i, sat in enumerate(sats)}
    ours = find_ground_contacts(constellation.subset(sats), stations, START_UTC, DURATION_S)
    matched = total = 0
    worst = 0.0
    for (sat, sta), arr in events.items():
        m = (ours.sat == local[sat]) & (ours.station == sta)
        for code, column, edge in ((0.0, ours.aos_s[m], 0.0), (2.0, ours.los_s[m], DURATION_S)):
            theirs = np.sort(arr[0][arr[1] == code])
            mine = np.sort(column[column != edge])
            total += len(theirs)
            if len(mine) == len(theirs):
                diff = np.abs(mine - theirs) if len(theirs) else np.zeros(0)
                matched += int(np.sum(diff <= FIND_EVENTS_RESOLUTION_S))
                worst = max(worst, float(diff.max()) if len(diff) else 0.0)
    return matched, total, worst


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1/16, 1/8, 1/4 of the catalog x 25 stations, 50 baseline pairs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (fresh process each); medians")
    parser.add_argument("--baseline-pairs", type=int, default=None, help="find_events pairs (default 200)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stations", type=int, default=N_STATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_child(args.child, args.stations)
        return 0

    n_stations = 25 if args.quick else N_STATIONS
    strides = (16, 8, 4) if args.quick else (4, 2, 1)
    n_pairs = args.baseline_pairs or (50 if args.quick else 200)
    constellation = load_catalog()
    stations = lattice_stations(n_stations)
    print(f"catalog {CATALOG.name}: {len(constellation)} satellites; {n_stations} stations (Fibonacci lattice "
          f"{SOUTH_LIMIT_DEG:g}..{NORTH_LIMIT_DEG:g} deg latitude), mask {MASK_DEG:g} deg, 24 h from "
          f"{START_UTC:%Y-%m-%dT%H:%MZ}, step 60 s; machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'satellites':>10} {'pairs':>9} {'passes':>9} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} "
          f"{'RSS before MB':>14} {'us/pair':>8}")
    largest: dict[str, float] = {}
    for stride in strides:
        runs = [measure(stride, n_stations) for _ in range(args.repeat)]
        wall = statistics.median(r["wall_s"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        peak = statistics.median(r["peak_rss_bytes"] for r in runs)
        before = statistics.median(r["rss_before_bytes"] for r in runs)
        n_sat = int(runs[0]["satellites"])
        pairs = n_sat * n_stations
        print(f"{n_sat:>10} {pairs:>9} {int(runs[0]['passes']):>9} {wall:>8.2f} {cpu:>8.2f} {peak / 2**20:>12.0f} "
              f"{before / 2**20:>14.0f} {wall / pairs * 1e6:>8.1f}")
        largest = {"wall_s": wall, "cpu_s": cpu, "peak": peak, "pairs": pairs}
    if args.repeat > 1:
        print(f"(medians of {args.repeat} runs, each in a fresh process)")

    wall_times, cpu_times, events = baseline(constellation, stations, n_pairs)
    per_pair_s = statistics.fmean(wall_times)
    per_pair_cpu_s = statistics.fmean(cpu_times)
    all_pairs = len(constellation) * n_stations
    print(f"baseline skyfield find_events: {n_pairs} random pairs, mean {per_pair_s * 1e3:.2f} ms/pair wall, "
          f"{per_pair_cpu_s * 1e3:.2f} ms/pair CPU (median {statistics.median(wall_times) * 1e3:.2f} ms wall) -> "
          f"{per_pair_s * all_pairs:.0f} s for all {all_pairs} pairs")
    matched, total, worst = check_sample(constellation, stations, events)
    print(f"sample check: {matched}/{total} find_events rises/sets matched by the engine within "
          f"{FIND_EVENTS_RESOLUTION_S} s (worst {worst:.3f} s)")
    # Like with like: per pair, at the largest size measured. CPU time is less sensitive to a shared machine.
    speedup = per_pair_s / (largest["wall_s"] / largest["pairs"])
    speedup_cpu = per_pair_cpu_s / (largest["cpu_s"] / largest["pairs"])
    print(f"speed-up vs find_events per pair: {speedup:.0f}x wall, {speedup_cpu:.0f}x CPU")
    if not args.quick:
        print(f"targets: wall {largest['wall_s']:.1f} s <= {TARGET_WALL_S:g} s: {largest['wall_s'] <= TARGET_WALL_S}; "
              f"peak {largest['peak'] / 2**30:.2f} GiB <= 4 GiB: {largest['peak'] <= TARGET_PEAK_BYTES}; "
              f"speed-up {speedup:.0f}x >= {TARGET_SPEEDUP:g}x: {speedup >= TARGET_SPEEDUP}")
    print(f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores: wall figures are noisy when "
          "the machine is shared; CPU time (process, all threads) is steadier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
