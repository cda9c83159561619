"""Faults a replay injects: a node down, a ground station offline, an ISL cut, an agent process killed.

Faults are not known in advance: the planner learns about each one when it
happens (a planning round follows at once) and from then on plans around it
for the announced interval. :func:`clip_contact_plan` removes the affected
ground passes and links from a contact plan for the faults known at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from orbit.contact_plan import ContactPlan, GroundContacts, IslContacts
from skyinfer.config import Node
from skyinfer.errors import InputError
from skyinfer.replay.units import duration_s, offset_s

FaultKind = Literal["node_down", "station_offline", "isl_cut", "agent_kill"]
FAULT_KINDS: tuple[str, ...] = ("node_down", "station_offline", "isl_cut", "agent_kill")
# Contact pieces shorter than this after clipping carry nothing useful (a few frames of a pass).
MIN_CONTACT_PIECE_S = 1.0
DEFAULT_AGENT_RESTART_S = 60.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault over ``[start_s, end_s)`` (seconds after the scenario start; ``end_s`` inf: never repaired).

    ``node_down``: satellite ``target`` stops computing, relaying and holding data (its stored inputs and
    results are lost). ``station_offline``: station ``target`` neither sends nor receives.
    ``isl_cut``: the link between satellites ``target`` and ``other`` is unusable. ``agent_kill``: the
    agent process of satellite ``target`` dies; running inferences are lost, stored data survives, and
    the agent is back after the interval (a restart).
    """

    kind: FaultKind
    target: str
    start_s: float
    end_s: float = math.inf
    other: str | None = None
    where: str = ""

    def __post_init__(self) -> None:
        where = self.where or f"fault {self.kind}"
        if self.kind not in FAULT_KINDS:
            raise InputError(f"{where}: kind: expected one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        if not self.target:
            raise InputError(f"{where}: target: must not be empty")
        if not math.isfinite(self.start_s):
            raise InputError(f"{where}: at: must be finite")
        if not self.end_s > self.start_s:
            raise InputError(f"{where}: end: must be after the start")
        if self.kind == "isl_cut" and not self.other:
            raise InputError(f"{where}: isl_cut needs both satellites (a and b)")

    def active_at(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s

    def label(self) -> str:
        return f"{self.kind} {self.target}" + (f"-{self.other}" if self.other else "")


def parse_faults(node: Node | None, epoch_utc: datetime) -> tuple[Fault, ...]:
    """Parse the ``faults`` section: a list of mappings, each with ``kind`` and its fields.

    ``node_down``: node, at, [duration]; ``station_offline``: station, from, to (or duration);
    ``isl_cut``: a, b, from, [to | duration]; ``agent_kill``: node, at, [restart_after] (default 60 s).
    """
    if node is None:
        return ()
    out: list[Fault] = []
    for item in node.sequence():
        kind_node = item.mapping(required=("kind",), optional=_ALL_KEYS)["kind"]
        kind = kind_node.as_str()
        if kind not in FAULT_KINDS:
            raise kind_node.error(f"expected one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        req, opt = _KEYS[kind]
        m = item.mapping(required=("kind", *req), optional=opt)
        if kind == "node_down":
            start = offset_s(m["at"], epoch_utc)
            end = start + duration_s(m["duration"]) if "duration" in m else math.inf
            out.append(Fault("node_down", m["node"].as_str(), start, end, where=item.where))
        elif kind == "agent_kill":
            start = offset_s(m["at"], epoch_utc)
            restart = duration_s(m["restart_after"]) if "restart_after" in m else DEFAULT_AGENT_RESTART_S
            out.append(Fault("agent_kill", m["node"].as_str(), start, start + restart, where=item.where))
        else:
            start = offset_s(m["from"], epoch_utc)
            end = _end(m, start, epoch_utc, required=kind == "station_offline")
            if end <= start:
                raise (m.get("to") or m["from"]).error("must be after 'from'")
            if kind == "station_offline":
                out.append(Fault("station_offline", m["station"].as_str(), start, end, where=item.where))
            else:
                a, b = m["a"].as_str(), m["b"].as_str()
                if a == b:
                    raise m["b"].error("an ISL joins two different satellites")
                out.append(Fault("isl_cut", min(a, b), start, end, other=max(a, b), where=item.where))
    return tuple(out)


_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "node_down": (("node", "at"), ("duration",)),
    "station_offline": (("station", "from"), ("to", "duration")),
    "isl_cut": (("a", "b", "from"), ("to", "duration")),
    "agent_kill": (("node", "at"), ("restart_after",)),
}
_ALL_KEYS = tuple(sorted({k for req, opt in _KEYS.values() for k in (*req, *opt)}))


def _end(m: dict[str, Node], start: float, epoch_utc: datetime, *, required: bool) -> float:
    if "to" in m and "duration" in m:
        raise m["duration"].error("give either 'to' or 'duration', not both")
    if "to" in m:
        return offset_s(m["to"], epoch_utc)
    if "duration" in m:
        return start + duration_s(m["duration"])
    if required:
        raise m["from"].error("give 'to' or 'duration' as well (when the outage ends)")
    return math.inf


def check_fault_targets(faults: tuple[Fault, ...], satellites: tuple[str, ...], stations: tuple[str, ...]) -> None:
    """Every fault names a satellite or station of the scenario."""
    sats, gss = set(satellites), set(stations)
    for f in faults:
        names = (f.target,) if f.kind == "station_offline" else (f.target, *((f.other,) if f.other else ()))
        pool = gss if f.kind == "station_offline" else sats
        for n in names:
            if n not in pool:
                what = "ground station" if f.kind == "station_offline" else "satellite"
                raise InputError(f"{f.where}: unknown {what} {n!r}")


def _cut(start: np.ndarray, end: np.ndarray, mask: np.ndarray, t0_s: float, t1_s: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove ``[t0_s, t1_s)`` from the masked intervals: (row index, new start, new end) of what remains."""
    rows, starts, ends = [], [], []
    for i in range(len(start)):
        s, e = float(start[i]), float(end[i])
        if not mask[i] or e <= t0_s or s >= t1_s:
            rows.append(i)
            starts.append(s)
            ends.append(e)
            continue
        if t0_s - s >= MIN_CONTACT_PIECE_S:
            rows.append(i)
            starts.append(s)
            ends.append(t0_s)
        if e - t1_s >= MIN_CONTACT_PIECE_S:
            rows.append(i)
            starts.append(t1_s)
            ends.append(e)
    return np.array(rows, dtype=np.int64), np.array(starts, dtype=float), np.array(ends, dtype=float)


def clip_contact_plan(plan: ContactPlan, faults: tuple[Fault, ...]) -> ContactPlan:
    """``plan`` without the ground passes and ISLs that ``faults`` make unusable.

    ``station_offline`` clips the station's passes, ``isl_cut`` the link
    intervals of the pair, ``node_down`` every pass and link of the node over
    the fault's interval. ``agent_kill`` leaves links alone (the radio and the
    storage survive an agent restart). Sunlight is unchanged.
    """
    names = plan.constellation.names
    index = {n: i for i, n in enumerate(names)}
    station_index = {s.name: i for i, s in enumerate(plan.stations)}
    ground, isl = plan.ground, plan.isl
    for f in faults:
        if f.kind == "station_offline" and f.target in station_index:
            mask = ground.station == station_index[f.target]
        elif f.kind == "node_down" and f.target in index:
            mask = ground.sat == index[f.target]
        else:
            mask = None
        if mask is not None and mask.any():
            rows, s, e = _cut(ground.aos_s, ground.los_s, mask, f.start_s, f.end_s)
            g = ground.take(rows)
            ground = GroundContacts(g.sat, g.station, s, e, np.clip(g.tca_s, s, e), g.max_elevation_deg,
                                    g.truncated).sorted()
        if f.kind == "isl_cut" and f.target in index and f.other in index:
            a, b = index[f.target], index[f.other]
            lo, hi = min(a, b), max(a, b)
            imask = (isl.a == lo) & (isl.b == hi)
        elif f.kind == "node_down" and f.target in index:
            imask = (isl.a == index[f.target]) | (isl.b == index[f.target])
        else:
            imask = None
        if imask is not None and imask.any():
            rows, s, e = _cut(isl.start_s, isl.end_s, imask, f.start_s, f.end_s)
            k = isl.take(rows)
            isl = IslContacts(k.a, k.b, s, e, k.min_range_km, k.max_range_km).sorted()
    return ContactPlan(plan.start_utc, plan.duration_s, plan.constellation, plan.stations, ground, isl,
                       plan.sunlight, plan.isl_policy)


def trim_contact_plan(plan: ContactPlan, t0_s: float, t1_s: float) -> ContactPlan:
    """``plan`` with only the passes and links that overlap ``[t0_s, t1_s]`` (same window, same sunlight).

    A planning round needs nothing that ended before the earliest hop it must
    account for, nor anything that starts after the last deadline; the
    planner's per-round cost grows with the number of contacts.
    """
    g, k = plan.ground, plan.isl
    gm = (g.los_s >= t0_s) & (g.aos_s <= t1_s)
    km = (k.end_s >= t0_s) & (k.start_s <= t1_s)
    if gm.all() and km.all():
        return plan
    return ContactPlan(plan.start_utc, plan.duration_s, plan.constellation, plan.stations,
                       g.take(np.flatnonzero(gm)), k.take(np.flatnonzero(km)), plan.sunlight, plan.isl_policy)


def start_at_now(plan: ContactPlan, now_s: float, keep: set[tuple[str, str, float, float]]) -> ContactPlan:
    """``plan`` as a round at ``now_s`` should see it: what is past is gone, what is under way starts now.

    A pass or link that started before ``now_s`` can only carry ``rate x (end - now_s)`` from now on, so
    it is cut to start at ``now_s``; one that ended is dropped. Rows in ``keep`` (``(src, dst, start_s,
    end_s)`` of either direction, the contacts fixed jobs' hops use) stay whole so that those hops still
    name them.
    """
    names = plan.constellation.names
    g, k = plan.ground, plan.isl
    g_keep = np.array([(names[s], f"gs:{plan.stations[st].name}", a, b) in keep
                       or (f"gs:{plan.stations[st].name}", names[s], a, b) in keep
                       for s, st, a, b in zip(g.sat, g.station, g.aos_s, g.los_s, strict=True)], dtype=bool)
    k_keep = np.array([(names[a], names[b], s, e) in keep or (names[b], names[a], s, e) in keep
                       for a, b, s, e in zip(k.a, k.b, k.start_s, k.end_s, strict=True)], dtype=bool)
    g_rows = np.flatnonzero(g_keep | (g.los_s > now_s + MIN_CONTACT_PIECE_S))
    k_rows = np.flatnonzero(k_keep | (k.end_s > now_s + MIN_CONTACT_PIECE_S))
    gt, kt = g.take(g_rows), k.take(k_rows)
    g_start = np.where(g_keep[g_rows], gt.aos_s, np.maximum(gt.aos_s, now_s))
    k_start = np.where(k_keep[k_rows], kt.start_s, np.maximum(kt.start_s, now_s))
    ground = GroundContacts(gt.sat, gt.station, g_start, gt.los_s, np.maximum(gt.tca_s, g_start),
                            gt.max_elevation_deg, gt.truncated).sorted()
    isl = IslContacts(kt.a, kt.b, k_start, kt.end_s, kt.min_range_km, kt.max_range_km).sorted()
    return ContactPlan(plan.start_utc, plan.duration_s, plan.constellation, plan.stations, ground, isl,
                       plan.sunlight, plan.isl_policy)
