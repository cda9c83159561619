"""Contact plan exports: JSON, CSV and a NASA ION contact plan (``ionrc`` syntax).

These functions build text or plain data; writing files is the caller's job.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import timedelta
from typing import Any

from orbit.contact_plan import (
    SPEED_OF_LIGHT_KM_S,
    SUNLIGHT_STATE_NAMES,
    ContactPlan,
)
from skyinfer.timefmt import format_offset_utc, format_utc

# Slant range of a LEO ground contact is at most a few thousand km: one-way light time < 10 ms.
# ION counts light time in whole seconds, so ground ranges are written as 1 s.
_GROUND_OWLT_S = 1


def contact_plan_to_json(plan: ContactPlan) -> dict[str, Any]:
    """The contact plan as one JSON-ready object (times UTC ISO-8601 with milliseconds)."""
    names = plan.constellation.names
    norad = [s.norad_id for s in plan.constellation.satellites]
    epoch = plan.start_utc
    g = plan.ground
    ground = [
        {
            "satellite": names[g.sat[i]],
            "norad_id": norad[g.sat[i]],
            "station": plan.stations[g.station[i]].name,
            "aos": format_offset_utc(epoch, g.aos_s[i]),
            "los": format_offset_utc(epoch, g.los_s[i]),
            "tca": format_offset_utc(epoch, g.tca_s[i]),
            "max_elevation_deg": round(float(g.max_elevation_deg[i]), 3),
            "truncated": bool(g.truncated[i]),
        }
        for i in range(len(g))
    ]
    k = plan.isl
    isl = [
        {
            "a": names[k.a[i]],
            "b": names[k.b[i]],
            "start": format_offset_utc(epoch, k.start_s[i]),
            "end": format_offset_utc(epoch, k.end_s[i]),
            "min_range_km": round(float(k.min_range_km[i]), 3),
            "max_range_km": round(float(k.max_range_km[i]), 3),
        }
        for i in range(len(k))
    ]
    sun: list[dict[str, Any]] = []
    if plan.sunlight is not None:
        s = plan.sunlight
        sun = [
            {
                "satellite": names[s.sat[i]],
                "start": format_offset_utc(epoch, s.start_s[i]),
                "end": format_offset_utc(epoch, s.end_s[i]),
                "state": SUNLIGHT_STATE_NAMES[int(s.state[i])],
            }
            for i in range(len(s))
        ]
    return {
        "start": format_utc(plan.start_utc),
        "end": format_utc(plan.end_utc),
        "isl_policy": plan.isl_policy,
        "ground_contacts": ground,
        "isl_contacts": isl,
        "sunlight": sun,
    }


def contact_plan_to_csv(plan: ContactPlan) -> str:
    """One CSV table with a ``kind`` column: ``ground``, ``isl`` or ``sunlight`` rows."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["kind", "a", "b", "start", "end", "tca", "max_elevation_deg", "min_range_km", "max_range_km",
                "truncated", "state"])
    data = contact_plan_to_json(plan)
    for r in data["ground_contacts"]:
        w.writerow(["ground", r["satellite"], r["station"], r["aos"], r["los"], r["tca"], r["max_elevation_deg"],
                    "", "", str(r["truncated"]).lower(), ""])
    for r in data["isl_contacts"]:
        w.writerow(["isl", r["a"], r["b"], r["start"], r["end"], "", "", r["min_range_km"], r["max_range_km"],
                    "", ""])
    for r in data["sunlight"]:
        w.writerow(["sunlight", r["satellite"], "", r["start"], r["end"], "", "", "", "", "", r["state"]])
    return out.getvalue()


def _ion_time(plan: ContactPlan, t_s: float) -> str:
    # ION takes whole seconds; round the start up and the end down so the contact never grows.
    return (plan.start_utc + timedelta(seconds=t_s)).strftime("%Y/%m/%d-%H:%M:%S")


def contact_plan_to_ion(plan: ContactPlan, *, ground_rate_bps: float, isl_rate_bps: float) -> str:
    """A NASA ION contact plan (``a contact`` / ``a range`` lines) with a node-number map in comments.

    Nodes are numbered 1..N for satellites in catalog order, then N+1.. for
    stations. Rates are converted from bits to **bytes** per second as ION
    expects; every link is written in both directions. Contact times are
    rounded inward to whole seconds.
    """
    names = plan.constellation.names
    n = len(names)
    lines = [
        "# skyinfer contact plan for NASA ION (ionrc syntax)",
        f"# window {format_utc(plan.start_utc)} .. {format_utc(plan.end_utc)}",
        "# node numbers:",
    ]
    lines += [f"#   {i + 1} = {name}" for i, name in enumerate(names)]
    lines += [f"#   {n + j + 1} = gs:{st.name}" for j, st in enumerate(plan.stations)]
    ground_rate = max(1, int(ground_rate_bps // 8))
    isl_rate = max(1, int(isl_rate_bps // 8))

    def emit(a: int, b: int, start_s: float, end_s: float, rate: int, owlt_s: int) -> None:
        t0 = math.ceil(start_s)
        t1 = math.floor(end_s)
        if t1 <= t0:
            return
        ts, te = _ion_time(plan, t0), _ion_time(plan, t1)
        for src, dst in ((a, b), (b, a)):
            lines.append(f"a contact {ts} {te} {src} {dst} {rate}")
        lines.append(f"a range {ts} {te} {a} {b} {owlt_s}")

    g = plan.ground
    for i in range(len(g)):
        emit(int(g.sat[i]) + 1, n + int(g.station[i]) + 1, float(g.aos_s[i]), float(g.los_s[i]), ground_rate,
             _GROUND_OWLT_S)
    k = plan.isl
    for i in range(len(k)):
        owlt = max(1, math.ceil(float(k.max_range_km[i]) / SPEED_OF_LIGHT_KM_S))
        emit(int(k.a[i]) + 1, int(k.b[i]) + 1, float(k.start_s[i]), float(k.end_s[i]), isl_rate, owlt)
    return "\n".join(lines) + "\n"
