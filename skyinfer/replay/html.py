"""``report.html``: one self-contained page (inline SVG and CSS, no script, no network) per replay or comparison.

Sections: the summary (policies side by side), the latency CDF, a Gantt
chart per node (runs, and the transfers each node sends), a map of ground
tracks, stations, capture targets and the contacts that carried data, and
state-of-charge curves.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from orbit.propagate import propagate
from skyinfer.fileio import write_atomic
from skyinfer.replay.engine import ReplayResult
from skyinfer.replay.workload import load_cities
from skyinfer.timefmt import format_offset_utc

POLICY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
PRIORITY_COLOURS = ("#9ecae1", "#4292c6", "#08519c", "#fd8d3c", "#d94801", "#7f2704")
MAX_GANTT_ROWS = 40
MAX_SOC_CURVES = 12
MAX_MAP_LINKS = 3000
MAP_STEP_S = 120.0

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}svg{background:#fff}
.note{color:#666;font-size:12px}.swatch{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
text{font:11px system-ui,sans-serif}
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: Any, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) or scale != 1.0:
        return f"{v / scale:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


def _summary(reports: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        rows.append((label, [fn(r) for r in reports]))

    row("jobs submitted", lambda r: _fmt(r["jobs"]["total"]["submitted"]))
    for k in ("on_time", "late", "expired", "failed", "unfinished"):
        row(f"… {k.replace('_', ' ')}", lambda r, k=k: _fmt(r["jobs"]["total"][k]))
    row("deadline-hit rate", lambda r: _fmt(r["deadline_hit_rate"] * 100 if r["deadline_hit_rate"] is not None
                                            else None, " %"))
    for p in ("p50", "p90", "p99"):
        row(f"latency {p}", lambda r, p=p: _fmt(r["latency_s"][p], " min", 60.0))
    row("uplinked", lambda r: _fmt(r["bytes"]["uplinked"], " MB", 1e6))
    row("downlinked", lambda r: _fmt(r["bytes"]["downlinked"], " MB", 1e6))
    row("bent-pipe downlink equivalent", lambda r: _fmt(r["bytes"]["bentpipe_downlink_equivalent"], " MB", 1e6))
    row("ISL", lambda r: _fmt(r["bytes"]["isl"], " MB", 1e6))
    row("failed transfers", lambda r: _fmt(r["bytes"]["failed_transfers"]))
    row("energy for jobs", lambda r: _fmt(r["energy"]["jobs_wh"], " Wh"))
    row("minimum state of charge", lambda r: _fmt(r["energy"]["min_soc"] * 100 if r["energy"]["min_soc"]
                                                  is not None else None, " %"))
    row("planning rounds", lambda r: _fmt(r["planner"]["rounds"]))
    row("plan validator errors", lambda r: _fmt(r["planner"]["validator_errors"]))
    row("planner time per round (mean)", lambda r: _fmt(r["wall"]["planner_s_per_round"]["mean"], " s", 1.0, 3))
    row("wall time", lambda r: _fmt(r["wall"]["wall_s"], " s"))
    row("simulated s per wall s", lambda r: _fmt(r["wall"]["sim_s_per_wall_s"], "", 1.0, 0))
    head = "".join(f"<th style='color:{POLICY_COLOURS[i % 5]}'>{_e(r['policy'])}</th>"
                   for i, r in enumerate(reports))
    body = "".join(f"<tr><td>{_e(label)}</td>{''.join(f'<td>{_e(v)}</td>' for v in vals)}</tr>"
                   for label, vals in rows)
    by_p = []
    for i, r in enumerate(reports):
        cells = "".join(f"<td>{p}: {c['on_time']}/{c['submitted']}</td>" for p, c in r["jobs"]["by_priority"].items())
        by_p.append(f"<tr><td style='color:{POLICY_COLOURS[i % 5]}'>{_e(r['policy'])} on time by priority</td>"
                    f"{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{body}</table><table style='margin-top:8px'>{''.join(by_p)}</table>"


def _axis_time(x0: float, width: float, duration_s: float, y: float, epoch: Any) -> str:
    out = []
    step_h = max(1, math.ceil(duration_s / 3600.0 / 12))
    t = 0.0
    while t <= duration_s + 1e-9:
        x = x0 + width * t / duration_s
        out.append(f"<line x1='{x:.1f}' y1='{y}' x2='{x:.1f}' y2='{y + 4}' stroke='#888'/>"
                   f"<text x='{x:.1f}' y='{y + 15}' text-anchor='middle'>"
                   f"{_e(format_offset_utc(epoch, t)[11:16])}</text>")
        t += step_h * 3600.0
    return "".join(out)


def _cdf(results: list[tuple[ReplayResult, dict[str, Any]]]) -> str:
    w, h, x0, y0 = 700, 300, 50, 20
    lat = [np.sort([(o.arrival_s - o.job.submit_s) / 60.0 for o in r.outcomes if o.arrival_s is not None])
           for r, _ in results]
    n_total = [len(r.outcomes) for r, _ in results]
    xmax = max([float(a[-1]) for a in lat if len(a)] + [1.0])
    parts = [f"<svg width='{w + x0 + 20}' height='{h + y0 + 40}' role='img' aria-label='latency CDF'>"]
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y0 + h * (1 - f)
        parts.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{x0 + w}' y2='{y:.1f}' stroke='#eee'/>"
                     f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end'>{f:.2f}</text>")
    for k in range(6):
        v = xmax * k / 5
        x = x0 + w * k / 5
        parts.append(f"<text x='{x:.1f}' y='{y0 + h + 15}' text-anchor='middle'>{v:.0f}</text>")
    parts.append(f"<text x='{x0 + w / 2}' y='{y0 + h + 32}' text-anchor='middle'>minutes from submit to result "
                 f"on the ground (share of all submitted jobs)</text>")
    for i, a in enumerate(lat):
        if not len(a) or not n_total[i]:
            continue
        pts = [f"{x0:.1f},{y0 + h:.1f}"]
        for k, v in enumerate(a):
            x = x0 + w * v / xmax
            pts.append(f"{x:.1f},{y0 + h * (1 - k / n_total[i]):.1f}")
            pts.append(f"{x:.1f},{y0 + h * (1 - (k + 1) / n_total[i]):.1f}")
        parts.append(f"<polyline fill='none' stroke='{POLICY_COLOURS[i % 5]}' stroke-width='2' "
                     f"points='{' '.join(pts)}'/>")
    parts.append("</svg>")
    legend = "".join(f"<span class='swatch' style='background:{POLICY_COLOURS[i % 5]}'></span>{_e(rep['policy'])}"
                     for i, (_, rep) in enumerate(results))
    return "".join(parts) + f"<div>{legend}</div>"


def _gantt(result: ReplayResult) -> str:
    cp = result.setup.contact_plan
    dur = cp.duration_s
    busy: dict[str, float] = {}
    for r in result.runs:
        busy[r.node] = busy.get(r.node, 0.0) + (r.end_s - r.start_s)
    for t in result.transfers:
        if t.ok and not t.src.startswith("gs:"):
            busy.setdefault(t.src, 0.0)
    rows = sorted(busy, key=lambda n: (-busy[n], n))[:MAX_GANTT_ROWS]
    if not rows:
        return "<p class='note'>No node ran a job.</p>"
    row_h, x0, w = 18, 150, 1000
    prio = {o.job.job_id: o.job.priority for o in result.outcomes}
    levels = sorted({p for p in prio.values()})
    colour = {p: PRIORITY_COLOURS[min(i, len(PRIORITY_COLOURS) - 1)] for i, p in enumerate(levels)}
    h = row_h * len(rows)
    parts = [f"<svg width='{x0 + w + 20}' height='{h + 40}' role='img' aria-label='Gantt chart'>"]
    index = {n: i for i, n in enumerate(rows)}
    for n, i in index.items():
        y = i * row_h
        parts.append(f"<text x='{x0 - 6}' y='{y + 13}' text-anchor='end'>{_e(n)}</text>"
                     f"<line x1='{x0}' y1='{y + row_h}' x2='{x0 + w}' y2='{y + row_h}' stroke='#f2f2f2'/>")
    for t in result.transfers:
        if t.src in index and t.ok:
            y = index[t.src] * row_h + row_h - 5
            x = x0 + w * t.start_s / dur
            tw = max(1.0, w * (t.end_s - t.start_s) / dur)
            col = "#2ca02c" if t.kind == "ground_down" else "#ff7f0e"
            parts.append(f"<rect x='{x:.1f}' y='{y}' width='{tw:.1f}' height='3' fill='{col}'>"
                         f"<title>{_e(t.job_id)} {_e(t.what)} {_e(t.src)}→{_e(t.dst)} {t.bytes:,} B</title></rect>")
    for r in result.runs:
        if r.node not in index:
            continue
        y = index[r.node] * row_h + 2
        x = x0 + w * r.start_s / dur
        rw = max(1.5, w * (r.end_s - r.start_s) / dur)
        fill = colour.get(prio.get(r.job_id, 1), "#888") if r.ok else "#bbb"
        parts.append(f"<rect x='{x:.1f}' y='{y}' width='{rw:.1f}' height='{row_h - 8}' fill='{fill}'>"
                     f"<title>{_e(r.job_id)} on {_e(r.node)} {r.end_s - r.start_s:.1f} s"
                     f"{'' if r.ok else ' (aborted)'}</title></rect>")
    parts.append(_axis_time(x0, w, dur, h + 4, cp.start_utc))
    parts.append("</svg>")
    legend = "".join(f"<span class='swatch' style='background:{colour[p]}'></span>priority {p}" for p in levels)
    legend += ("<span class='swatch' style='background:#ff7f0e'></span>ISL send"
               "<span class='swatch' style='background:#2ca02c'></span>downlink")
    return "".join(parts) + f"<div>{legend}</div>"


def _map(result: ReplayResult, track_sats: int) -> str:
    cp = result.setup.contact_plan
    w, h = 1000, 500

    def xy(lat: np.ndarray | float, lon: np.ndarray | float) -> tuple[Any, Any]:
        return (np.asarray(lon) + 180.0) / 360.0 * w, (90.0 - np.asarray(lat)) / 180.0 * h

    parts = [f"<svg width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img' aria-label='map' "
             f"style='background:#f4f8fb'>"]
    for lon in range(-180, 181, 30):
        x, _ = xy(0.0, float(lon))
        parts.append(f"<line x1='{x:.1f}' y1='0' x2='{x:.1f}' y2='{h}' stroke='#dde6ee'/>")
    for lat in range(-90, 91, 30):
        _, y = xy(float(lat), 0.0)
        parts.append(f"<line x1='0' y1='{y:.1f}' x2='{w}' y2='{y:.1f}' stroke='#dde6ee'/>")
    for c in load_cities():
        x, y = xy(c.latitude_deg, c.longitude_deg)
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='1.5' fill='#b0b8c0'><title>{_e(c.name)}</title></circle>")
    names = cp.constellation.names
    used = sorted({t.src for t in result.transfers if t.ok and not t.src.startswith("gs:")}
                  | {r.node for r in result.runs if r.node != "ground"})
    chosen = (used + [n for n in names if n not in used])[:max(track_sats, 0)]
    idx = np.array([names.index(n) for n in chosen], dtype=np.int64)
    link_sats = sorted({t.src if not t.src.startswith("gs:") else t.dst for t in result.transfers
                        if t.ok and t.kind != "isl"})
    all_idx = np.unique(np.concatenate([idx, np.array([names.index(n) for n in link_sats], dtype=np.int64)]))
    if len(all_idx):
        eph = propagate(cp.constellation, cp.start_utc, cp.duration_s, step_s=MAP_STEP_S, sat_index=all_idx)
        pos = {int(s): k for k, s in enumerate(all_idx)}
        grid = eph.grid_ecef_km()
        lat_all = np.degrees(np.arctan2(grid[..., 2], np.hypot(grid[..., 0], grid[..., 1])))
        lon_all = np.degrees(np.arctan2(grid[..., 1], grid[..., 0]))
        for k, s in enumerate(idx):
            row = pos[int(s)]
            x, y = xy(lat_all[row], lon_all[row])
            col = POLICY_COLOURS[k % 5]
            seg: list[str] = []
            for i in range(len(x)):
                if i and abs(x[i] - x[i - 1]) > w / 2:  # wrapped around the date line
                    parts.append(f"<polyline fill='none' stroke='{col}' stroke-opacity='0.5' "
                                 f"points='{' '.join(seg)}'/>")
                    seg = []
                if math.isfinite(x[i]) and math.isfinite(y[i]):
                    seg.append(f"{x[i]:.1f},{y[i]:.1f}")
            if seg:
                parts.append(f"<polyline fill='none' stroke='{col}' stroke-opacity='0.5' points='{' '.join(seg)}'>"
                             f"<title>{_e(names[int(s)])}</title></polyline>")
        station_xy = {f"gs:{s.name}": xy(s.latitude_deg, s.longitude_deg) for s in cp.stations}
        drawn = 0
        for t in result.transfers:
            if not t.ok or t.kind == "isl" or drawn >= MAX_MAP_LINKS:
                continue
            sat, gs = (t.dst, t.src) if t.src.startswith("gs:") else (t.src, t.dst)
            sidx = names.index(sat)
            mid = 0.5 * (t.start_s + t.end_s)
            r = eph.ecef_at(np.array([pos[sidx]]), np.array([mid]))[0]
            sx, sy = xy(math.degrees(math.atan2(r[2], math.hypot(r[0], r[1]))), math.degrees(math.atan2(r[1], r[0])))
            gx, gy = station_xy[gs]
            if abs(float(sx) - float(gx)) > w / 2:
                continue
            col = "#2ca02c" if t.kind == "ground_down" else "#ff7f0e"
            parts.append(f"<line x1='{float(sx):.1f}' y1='{float(sy):.1f}' x2='{float(gx):.1f}' y2='{float(gy):.1f}' "
                         f"stroke='{col}' stroke-width='1.2'><title>{_e(t.what)} {_e(t.src)}→{_e(t.dst)} "
                         f"{t.bytes:,} B at {_e(format_offset_utc(cp.start_utc, mid))}</title></line>")
            drawn += 1
    for o in result.outcomes:
        src = o.job.source
        if src.kind == "capture":
            x, y = xy(src.latitude_deg, src.longitude_deg)
            fill = "#2ca02c" if o.outcome == "on_time" else "#d62728"
            parts.append(f"<circle cx='{float(x):.1f}' cy='{float(y):.1f}' r='3' fill='none' stroke='{fill}'>"
                         f"<title>{_e(o.job.job_id)}: {_e(o.outcome)}</title></circle>")
    for s in cp.stations:
        x, y = xy(s.latitude_deg, s.longitude_deg)
        parts.append(f"<path d='M{float(x):.1f},{float(y) - 6:.1f} l5,9 h-10 z' fill='#222'>"
                     f"<title>{_e(s.name)}</title></path>")
    parts.append("</svg>")
    return "".join(parts) + ("<p class='note'>Equirectangular map: ground tracks of up to "
                             f"{track_sats} satellites (those that worked first), ground stations (▲), capture "
                             "targets (○ green on time, red not), and the ground contacts that carried data "
                             "(orange uplink, green downlink) drawn at mid-transfer. Grey dots: the bundled "
                             "cities.</p>")


def _soc(result: ReplayResult) -> str:
    curves = result.soc_curves
    if not curves:
        return ""
    by_use = sorted(result.nodes, key=lambda n: (-result.nodes[n]["energy_jobs_wh"], result.nodes[n]["min_soc"], n))
    chosen = by_use[:MAX_SOC_CURVES]
    w, h, x0, y0 = 1000, 260, 50, 10
    dur = result.setup.contact_plan.duration_s
    parts = [f"<svg width='{w + x0 + 20}' height='{h + y0 + 30}' role='img' aria-label='state of charge'>"]
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y0 + h * (1 - f)
        parts.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{x0 + w}' y2='{y:.1f}' stroke='#eee'/>"
                     f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end'>{f * 100:.0f}%</text>")
    floors = sorted({result.nodes[n]["min_soc_floor"] for n in chosen})
    for fl in floors:
        y = y0 + h * (1 - fl)
        parts.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{x0 + w}' y2='{y:.1f}' stroke='#d62728' "
                     f"stroke-dasharray='4 3'><title>minimum state of charge {fl:.0%}</title></line>")
    for k, n in enumerate(chosen):
        t, v = curves[n]
        pts = " ".join(f"{x0 + w * ti / dur:.1f},{y0 + h * (1 - vi):.1f}" for ti, vi in zip(t, v, strict=True))
        parts.append(f"<polyline fill='none' stroke='{POLICY_COLOURS[k % 5]}' stroke-opacity='0.8' points='{pts}'>"
                     f"<title>{_e(n)} (min {result.nodes[n]['min_soc']:.1%})</title></polyline>")
    parts.append(_axis_time(x0, w, dur, y0 + h + 2, result.setup.contact_plan.start_utc))
    parts.append("</svg>")
    return "".join(parts) + (f"<p class='note'>The {len(chosen)} nodes that spent the most energy on jobs; dashed: "
                             "the profiles' minimum state of charge.</p>")


def render_html(results: list[tuple[ReplayResult, dict[str, Any]]]) -> str:
    """The page for one replay, or several (a comparison) of the same scenario."""
    first, rep0 = results[0]
    cp = first.setup.contact_plan
    track = first.setup.settings.track_sats
    title = f"skyinfer replay: {rep0['scenario']}" + (" (compare)" if len(results) > 1 else "")
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>{_e(format_offset_utc(cp.start_utc, 0))} + {cp.duration_s / 3600:.1f} h · "
            f"{len(cp.constellation)} satellites ({rep0['compute_nodes']} compute nodes) · "
            f"{len(cp.stations)} stations · "
            f"{rep0['jobs']['total']['submitted']} jobs · seed {rep0['seed']} · {len(first.setup.faults)} faults</p>",
            "<h2>Summary</h2>", _summary([r for _, r in results]),
            "<h2>Latency (cumulative distribution)</h2>", _cdf(results),
            "<h2>Map: ground tracks and contacts</h2>", _map(first, track)]
    for result, rep in results:
        label = f" — {_e(rep['policy'])}" if len(results) > 1 else ""
        body += [f"<h2>Gantt per node{label}</h2>", _gantt(result),
                 f"<h2>State of charge{label}</h2>", _soc(result)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'/>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_html(path: Path, results: list[tuple[ReplayResult, dict[str, Any]]]) -> None:
    write_atomic(path, render_html(results))
