"""``scenario.czml``: satellites, ground stations and contact links over time, for any Cesium viewer.

Satellite positions are sampled in the Earth-fixed frame (``FIXED``, metres)
every ``czml_step_s`` and interpolated by Cesium (Lagrange, degree 5).
Ground contacts (and ISLs, when the scenario has them) are polylines between
the two ends, shown only during their intervals. Large constellations are
cut to ``MAX_CZML_SATELLITES`` (compute nodes first) to keep the file small.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from orbit.propagate import propagate
from skyinfer.fileio import write_atomic
from skyinfer.replay.engine import ReplaySetup
from skyinfer.timefmt import format_utc

MAX_CZML_SATELLITES = 200
MAX_CZML_LINKS = 20_000


def _interval(setup: ReplaySetup, t0_s: float, t1_s: float) -> str:
    e = setup.contact_plan.start_utc
    return f"{format_utc(e + timedelta(seconds=t0_s))}/{format_utc(e + timedelta(seconds=t1_s))}"


def _sat_id(name: str) -> str:
    return f"sat/{name}"


def _gs_id(name: str) -> str:
    return f"gs/{name}"


def build_czml(setup: ReplaySetup) -> list[dict[str, Any]]:
    """The CZML packets (a list of JSON objects; the first is the document packet)."""
    cp = setup.contact_plan
    names = cp.constellation.names
    profiled = [n for n in names if n in setup.base_problem.profiles_by_node]
    chosen = (profiled + [n for n in names if n not in set(profiled)])[:MAX_CZML_SATELLITES]
    chosen_set = set(chosen)
    epoch = format_utc(cp.start_utc)
    whole = _interval(setup, 0.0, cp.duration_s)
    packets: list[dict[str, Any]] = [{
        "id": "document", "name": setup.name, "version": "1.0",
        "clock": {"interval": whole, "currentTime": epoch, "multiplier": 60, "range": "LOOP_STOP",
                  "step": "SYSTEM_CLOCK_MULTIPLIER"},
    }]
    idx = np.array([names.index(n) for n in chosen], dtype=np.int64)
    step = setup.settings.czml_step_s
    eph = propagate(cp.constellation, cp.start_utc, cp.duration_s, step_s=step, sat_index=idx)
    grid_m = eph.grid_ecef_km() * 1000.0
    t = eph.t_s
    keep = t <= cp.duration_s + step
    for k, name in enumerate(chosen):
        samples = np.column_stack([t[keep], grid_m[k][keep]])
        samples = samples[np.isfinite(samples).all(axis=1)]
        compute = name in setup.base_problem.profiles_by_node
        packets.append({
            "id": _sat_id(name), "name": name, "availability": whole,
            "description": f"{name}: " + (setup.base_problem.profiles_by_node[name].name if compute else "no compute"),
            "position": {"epoch": epoch, "referenceFrame": "FIXED", "interpolationAlgorithm": "LAGRANGE",
                         "interpolationDegree": 5, "cartesian": [round(float(v), 1) for v in samples.reshape(-1)]},
            "point": {"pixelSize": 6 if compute else 4,
                      "color": {"rgba": [255, 140, 0, 255] if compute else [180, 180, 180, 255]}},
            "label": {"text": name, "font": "10px sans-serif", "show": False},
            "path": {"leadTime": 0, "trailTime": 1800, "width": 1,
                     "material": {"solidColor": {"color": {"rgba": [255, 255, 255, 90]}}}},
        })
    for s in cp.stations:
        packets.append({
            "id": _gs_id(s.name), "name": s.name,
            "position": {"cartographicDegrees": [s.longitude_deg, s.latitude_deg, s.altitude_m]},
            "point": {"pixelSize": 8, "color": {"rgba": [40, 160, 40, 255]}},
            "label": {"text": s.name, "font": "11px sans-serif", "pixelOffset": {"cartesian2": [0, -14]}},
        })
    n_links = 0
    for p in cp.ground.rows():
        sat = names[p.sat]
        if sat not in chosen_set or n_links >= MAX_CZML_LINKS:
            continue
        gs = cp.stations[p.station].name
        n_links += 1
        packets.append({
            "id": f"link/{gs}/{sat}/{p.aos_s:.0f}", "availability": _interval(setup, p.aos_s, p.los_s),
            "polyline": {"positions": {"references": [f"{_gs_id(gs)}#position", f"{_sat_id(sat)}#position"]},
                         "width": 2, "material": {"solidColor": {"color": {"rgba": [50, 205, 50, 200]}}}},
        })
    for link in cp.isl.rows():
        a, b = names[link.a], names[link.b]
        if a not in chosen_set or b not in chosen_set or n_links >= MAX_CZML_LINKS:
            continue
        n_links += 1
        packets.append({
            "id": f"isl/{a}/{b}/{link.start_s:.0f}", "availability": _interval(setup, link.start_s, link.end_s),
            "polyline": {"positions": {"references": [f"{_sat_id(a)}#position", f"{_sat_id(b)}#position"]},
                         "width": 1, "material": {"solidColor": {"color": {"rgba": [255, 99, 71, 160]}}}},
        })
    return packets


def write_czml(path: Path, setup: ReplaySetup) -> None:
    write_atomic(path, json.dumps(build_czml(setup), separators=(",", ":")) + "\n")
