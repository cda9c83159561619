"""``skyinfer windows``: compute and export a contact plan."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from orbit.types import DEFAULT_MIN_ELEVATION_DEG
from skyinfer.errors import InputError

if TYPE_CHECKING:
    from orbit.contact_plan import ContactPlan
    from orbit.types import Constellation

# The computation modules are imported inside the functions: every `skyinfer` subcommand builds
# this parser, and an agent process should not pay for skyfield and networkx it never uses.

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "windows",
        help="compute a contact plan: ground passes, inter-satellite links, sunlight",
        description="Compute when each satellite sees each ground station, when inter-satellite links are "
        "possible and when each satellite is in sunlight.",
    )
    src = p.add_argument_group("constellation (one of)")
    src.add_argument("--tle", nargs="+", metavar="FILE", help="TLE/3LE catalog file(s), CelesTrak format")
    src.add_argument("--omm", nargs="+", metavar="FILE", help="CelesTrak OMM/GP file(s), JSON or CSV")
    src.add_argument("--walker", metavar="I:T/P/F", help="Walker shell, e.g. 53:1584/72/1 (needs --altitude-km)")
    src.add_argument("--altitude-km", type=float, help="Walker shell altitude")
    src.add_argument("--walker-kind", choices=("delta", "star"), default="delta")
    src.add_argument("--scenario", metavar="FILE", help="scenario YAML (constellation, stations, window, ISL)")
    st = p.add_argument_group("ground stations")
    st.add_argument("--station", action="append", default=[], metavar="NAME:LAT_DEG:LON_DEG[:ALT_M[:MIN_ELEV_DEG]]")
    st.add_argument("--stations", metavar="CSV", help="CSV of stations (name,latitude_deg,longitude_deg,...)")
    st.add_argument("--min-elevation-deg", type=float, default=DEFAULT_MIN_ELEVATION_DEG,
                    help="mask for stations that do not give their own (default 10)")
    p.add_argument("--start", help="window start, UTC ISO-8601 (e.g. 2023-04-20T00:00:00Z)")
    p.add_argument("--duration", help="window length (e.g. 24h, 90m)")
    p.add_argument("--isl", metavar="POLICY", help="grid | los | nearest:K | none")
    p.add_argument("--isl-max-range-km", type=float, default=None)
    p.add_argument("--grazing-altitude-km", type=float, default=None)
    p.add_argument("--sunlight", action="store_true", help="also compute sunlit/penumbra/umbra intervals")
    p.add_argument("--step-s", type=float, default=60.0, help="propagation grid step (default 60 s)")
    p.add_argument("--format", choices=("table", "json", "csv", "ion"), default="table")
    p.add_argument("--ground-rate-mbps", type=float, default=160.0,
                   help="ION export: ground link rate (default 160 Mb/s, Planet Dove X-band average)")
    p.add_argument("--isl-rate-mbps", type=float, default=100_000.0,
                   help="ION export: ISL rate (default 100 Gb/s laser)")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of standard output")
    p.add_argument("--skip-invalid", action="store_true", help="skip bad catalog records with a warning")
    p.set_defaults(func=run)


def _constellation(args: argparse.Namespace, warnings: list[str], scenario_constellation: Constellation | None,
                   start_utc: Any) -> Constellation:
    from orbit.catalog import load_omm, load_tle
    from orbit.types import Constellation, Satellite
    from orbit.walker import WalkerSpec, walker_shell

    sources = [bool(args.tle), bool(args.omm), bool(args.walker)]
    if sum(sources) > 1:
        raise InputError("give only one of --tle, --omm, --walker (or a --scenario)")
    sats: list[Satellite] = []
    if args.tle:
        for path in args.tle:
            c, w = load_tle(path, skip_invalid=args.skip_invalid)
            sats.extend(c.satellites)
            warnings.extend(w)
    elif args.omm:
        for path in args.omm:
            c, w = load_omm(path, skip_invalid=args.skip_invalid)
            sats.extend(c.satellites)
            warnings.extend(w)
    elif args.walker:
        if args.altitude_km is None:
            raise InputError("--walker needs --altitude-km")
        spec = WalkerSpec.parse(args.walker, altitude_km=args.altitude_km, kind=args.walker_kind,
                                where="--walker")
        return walker_shell(spec, start_utc)
    elif scenario_constellation is not None:
        return scenario_constellation
    else:
        raise InputError("no constellation: give --tle, --omm, --walker or --scenario")
    return Constellation(tuple(sats))


def run(args: argparse.Namespace) -> int:
    from orbit.build import build_contact_plan
    from orbit.export import contact_plan_to_csv, contact_plan_to_ion, contact_plan_to_json
    from orbit.stations import load_stations_csv, parse_station_spec
    from orbit.types import GroundStation, IslConfig
    from skyinfer.fileio import write_atomic
    from skyinfer.progress import Progress
    from skyinfer.scenario import load_scenario
    from skyinfer.timefmt import parse_duration_s, parse_utc

    warnings: list[str] = []
    scenario = load_scenario(args.scenario, skip_invalid=args.skip_invalid) if args.scenario else None
    if scenario is not None:
        warnings.extend(scenario.warnings)
    start_utc = parse_utc(args.start, where="--start") if args.start else (scenario.start_utc if scenario else None)
    if start_utc is None:
        raise InputError("--start is required (or a scenario with a start)")
    duration_s = (parse_duration_s(args.duration, where="--duration") if args.duration
                  else (scenario.duration_s if scenario else None))
    if duration_s is None:
        raise InputError("--duration is required (or a scenario with a duration)")
    if duration_s > 31 * 86400:
        raise InputError(f"--duration: at most 31 days, got {duration_s / 86400:.1f} days")
    if not 1.0 <= args.step_s <= 120.0:
        # Hermite interpolation error grows as step^4: 0.3 m at 60 s, 5 m at 120 s, kilometres beyond.
        raise InputError(f"--step-s: must be within [1, 120], got {args.step_s:g}")
    constellation = _constellation(args, warnings, scenario.constellation if scenario else None, start_utc)
    if len(constellation) == 0:
        raise InputError("the constellation is empty (no valid satellites)")

    stations: list[GroundStation] = [
        parse_station_spec(s, default_min_elevation_deg=args.min_elevation_deg) for s in args.station
    ]
    if args.stations:
        stations.extend(load_stations_csv(args.stations, default_min_elevation_deg=args.min_elevation_deg))
    if not stations and scenario is not None:
        stations = list(scenario.stations)
    names = [s.name for s in stations]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"station name given twice: {sorted(dup)[0]!r}")

    base_isl = scenario.isl if scenario is not None else IslConfig()
    max_range_km = args.isl_max_range_km if args.isl_max_range_km is not None else base_isl.max_range_km
    grazing_km = args.grazing_altitude_km if args.grazing_altitude_km is not None else base_isl.grazing_altitude_km
    if args.isl:
        isl = IslConfig.parse(args.isl, max_range_km=max_range_km, grazing_altitude_km=grazing_km, where="--isl")
    else:
        isl = IslConfig(base_isl.policy, base_isl.k, max_range_km, grazing_km)
    sunlight = args.sunlight or bool(scenario is not None and scenario.sunlight)
    if not stations and isl.policy == "none" and not sunlight:
        raise InputError("nothing to compute: give ground stations (--station/--stations), --isl or --sunlight")

    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    bar = Progress("contact plan")
    try:
        plan = build_contact_plan(constellation, stations, start_utc, duration_s, isl=isl, sunlight=sunlight,
                                  step_s=args.step_s, progress=bar)
    finally:
        bar.close()

    if args.format == "json":
        text = json.dumps(contact_plan_to_json(plan), indent=1) + "\n"
    elif args.format == "csv":
        text = contact_plan_to_csv(plan)
    elif args.format == "ion":
        text = contact_plan_to_ion(plan, ground_rate_bps=args.ground_rate_mbps * 1e6,
                                   isl_rate_bps=args.isl_rate_mbps * 1e6)
    else:
        text = render_table(plan)
    if args.out:
        write_atomic(args.out, text)
        print(f"wrote {args.out}: {len(plan.ground)} ground contacts, {len(plan.isl)} ISL intervals, "
              f"{len(plan.sunlight) if plan.sunlight is not None else 0} sunlight intervals", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _dur(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60:3d}m{s % 60:02d}s"


def render_table(plan: ContactPlan) -> str:
    """A person-readable contact plan."""
    from skyinfer.timefmt import format_offset_utc, format_utc

    names = plan.constellation.names
    epoch = plan.start_utc
    lines = [
        f"Contact plan {format_utc(plan.start_utc)} .. {format_utc(plan.end_utc)}: "
        f"{len(names)} satellites, {len(plan.stations)} stations, ISL policy {plan.isl_policy}",
        "",
    ]
    g = plan.ground
    if plan.stations:
        n_trunc = int(g.truncated.sum())
        lines.append(f"Ground contacts: {len(g)} passes ({n_trunc} truncated at the window edges, marked *)")
        w_sat = max([len("SATELLITE")] + [len(n) for n in names])
        w_sta = max([len("STATION")] + [len(s.name) for s in plan.stations])
        lines.append(f"  {'SATELLITE':<{w_sat}}  {'STATION':<{w_sta}}  {'AOS':<24}  {'LOS':<24}  "
                     f"{'DURATION':>8}  {'MAX EL':>7}")
        for p in g.rows():
            mark = "*" if p.truncated else " "
            lines.append(
                f"  {names[p.sat]:<{w_sat}}  {plan.stations[p.station].name:<{w_sta}}  "
                f"{format_offset_utc(epoch, p.aos_s):<24}  {format_offset_utc(epoch, p.los_s):<24}  "
                f"{_dur(p.los_s - p.aos_s):>8}  {p.max_elevation_deg:6.2f}°{mark}"
            )
        lines.append("")
    if plan.isl_policy != "none":
        k = plan.isl
        lines.append(f"Inter-satellite links: {len(k)} intervals")
        for r in k.rows():
            lines.append(f"  {names[r.a]} <-> {names[r.b]}  {format_offset_utc(epoch, r.start_s)} .. "
                         f"{format_offset_utc(epoch, r.end_s)}  range {r.min_range_km:.0f}-{r.max_range_km:.0f} km")
        lines.append("")
    if plan.sunlight is not None:
        s = plan.sunlight
        lines.append("Sunlight (per satellite, share of the window):")
        for i, name in enumerate(names):
            m = s.sat == i
            dur = (s.end_s[m] - s.start_s[m])
            shares = [float(dur[s.state[m] == k].sum()) / plan.duration_s for k in range(3)]
            eclipses = int((s.state[m] == 0).sum())
            lines.append(f"  {name}: sunlit {shares[2] * 100:5.1f}%  penumbra {shares[1] * 100:4.1f}%  "
                         f"umbra {shares[0] * 100:5.1f}% ({eclipses} eclipses)")
        lines.append("")
    return "\n".join(lines)
