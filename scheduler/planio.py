"""Plans as JSON (for machines) and as a table (for humans).

JSON schema (``notes/scheduler.md``), times as UTC ISO strings with milliseconds::

    {"policy": "cpsat", "objective": 12.0, "bound": 14.0, "gap": 0.1428, "status": "FEASIBLE",
     "wall_s": 3.2, "notes": ["..."],
     "jobs": [
       {"job_id": "j1", "status": "scheduled", "node": "FLOCK 4X-2",
        "start": "2023-04-20T00:10:00.000Z", "end": "...", "arrival": "...", "energy_wh": 0.12,
        "input_route": [{"from": "gs:Svalbard", "to": "FLOCK 4X-2", "start": "...", "end": "...",
                         "bytes": 20000000, "contact": 17}],
        "output_route": [...], "model_route": [...]},
       {"job_id": "j2", "status": "unschedulable", "reason": "deadline: ..."}]}

``contact`` (the index into ``contact_plan.contacts()``) is optional on input:
without it the hop is matched to the contact between the same nodes that
contains its time span. Times are rounded to the millisecond on output.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from scheduler.types import Hop, Plan, Problem, ScheduledJob, Unschedulable
from skyinfer.errors import InputError
from skyinfer.timefmt import format_offset_utc, parse_utc

__all__ = ["plan_from_json", "plan_table", "plan_to_json"]


def _hop_json(problem: Problem, h: Hop) -> dict[str, Any]:
    e = problem.epoch_utc
    return {"from": h.src, "to": h.dst, "start": format_offset_utc(e, h.start_s), "end": format_offset_utc(e, h.end_s),
            "bytes": int(h.bytes), "contact": int(h.contact)}


def plan_to_json(problem: Problem, plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-ready dict; jobs in problem order (scheduled or not)."""
    e = problem.epoch_utc
    entries: dict[str, dict[str, Any]] = {}
    for sj in plan.scheduled:
        entries[sj.job_id] = {
            "job_id": sj.job_id, "status": "scheduled", "node": sj.node,
            "start": format_offset_utc(e, sj.start_s), "end": format_offset_utc(e, sj.end_s),
            "arrival": format_offset_utc(e, sj.arrival_s), "energy_wh": round(float(sj.energy_wh), 9),
            "input_route": [_hop_json(problem, h) for h in sj.input_route],
            "output_route": [_hop_json(problem, h) for h in sj.output_route],
            "model_route": [_hop_json(problem, h) for h in sj.model_route],
        }
    for u in plan.unschedulable:
        entries[u.job_id] = {"job_id": u.job_id, "status": "unschedulable", "reason": u.reason}
    order = [j.job_id for j in problem.jobs if j.job_id in entries]
    order += [k for k in entries if k not in set(order)]
    return {
        "policy": plan.policy, "objective": float(plan.objective), "bound": float(plan.bound),
        "gap": float(plan.gap), "status": plan.status, "wall_s": float(plan.wall_s), "notes": list(plan.notes),
        "jobs": [entries[k] for k in order],
    }


class _Reader:
    def __init__(self, problem: Problem, source: str) -> None:
        self.problem = problem
        self.source = source
        self._contacts = problem.contact_plan.contacts()

    def error(self, path: str, message: str) -> InputError:
        return InputError(f"{self.source}: {path}: {message}")

    def field(self, obj: dict[str, Any], key: str, path: str) -> Any:
        if key not in obj:
            raise self.error(path, f"missing required key {key!r}")
        return obj[key]

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected an object, got {type(value).__name__}")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(path, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(path, f"expected a finite number, got {value!r}")
        return float(value)

    def time_s(self, value: Any, path: str) -> float:
        if not isinstance(value, str):
            raise self.error(path, f"expected a UTC time string such as 2023-04-20T00:10:00.000Z, got {value!r}")
        dt: datetime = parse_utc(value, where=f"{self.source}: {path}")
        return (dt - self.problem.epoch_utc).total_seconds()

    def hop(self, value: Any, path: str) -> Hop:
        obj = self.mapping(value, path)
        unknown = set(obj) - {"from", "to", "start", "end", "bytes", "contact"}
        if unknown:
            raise self.error(f"{path}.{sorted(unknown)[0]}", "unknown key")
        src = self.string(self.field(obj, "from", path), f"{path}.from")
        dst = self.string(self.field(obj, "to", path), f"{path}.to")
        start = self.time_s(self.field(obj, "start", path), f"{path}.start")
        end = self.time_s(self.field(obj, "end", path), f"{path}.end")
        if end < start:
            raise self.error(f"{path}.end", "before start")
        size = self.field(obj, "bytes", path)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise self.error(f"{path}.bytes", f"expected a non-negative integer, got {size!r}")
        if "contact" in obj:
            ci = obj["contact"]
            if isinstance(ci, bool) or not isinstance(ci, int) or not 0 <= ci < len(self._contacts):
                raise self.error(f"{path}.contact", f"expected a contact index in [0, {len(self._contacts)}), "
                                                    f"got {ci!r}")
        else:
            matches = [i for i, c in enumerate(self._contacts)
                       if c.src == src and c.dst == dst and c.start_s - 1e-3 <= start and end <= c.end_s + 1e-3]
            if not matches:
                raise self.error(path, f"no contact {src}->{dst} contains this hop")
            ci = matches[0]
        return Hop(src, dst, start, end, size, ci)

    def route(self, obj: dict[str, Any], key: str, path: str) -> tuple[Hop, ...]:
        value = obj.get(key, [])
        if not isinstance(value, list):
            raise self.error(f"{path}.{key}", "expected a list of hops")
        return tuple(self.hop(v, f"{path}.{key}[{i}]") for i, v in enumerate(value))


def plan_from_json(problem: Problem, data: Any, *, source: str) -> Plan:
    """Read a plan written by :func:`plan_to_json` (``source`` names the file in messages).

    Raises
    ------
    InputError
        Naming the field path, e.g. ``plan.json: jobs[3].input_route[0].start: ...``.
    """
    r = _Reader(problem, source)
    top = r.mapping(data, "<document>")
    policy = r.string(r.field(top, "policy", "<document>"), "policy")
    objective = r.number(top.get("objective", 0.0), "objective")
    bound = r.number(top.get("bound", 0.0), "bound")
    wall_s = r.number(top.get("wall_s", 0.0), "wall_s")
    status = top.get("status", "")
    if not isinstance(status, str):
        raise r.error("status", f"expected a string, got {status!r}")
    notes = top.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise r.error("notes", "expected a list of strings")
    jobs = r.field(top, "jobs", "<document>")
    if not isinstance(jobs, list):
        raise r.error("jobs", "expected a list")
    scheduled: list[ScheduledJob] = []
    unschedulable: list[Unschedulable] = []
    for i, value in enumerate(jobs):
        path = f"jobs[{i}]"
        obj = r.mapping(value, path)
        job_id = r.string(r.field(obj, "job_id", path), f"{path}.job_id")
        st = r.field(obj, "status", path)
        if st == "unschedulable":
            unschedulable.append(Unschedulable(job_id, r.string(r.field(obj, "reason", path), f"{path}.reason")))
            continue
        if st != "scheduled":
            raise r.error(f"{path}.status", f"expected 'scheduled' or 'unschedulable', got {st!r}")
        node = r.string(r.field(obj, "node", path), f"{path}.node")
        start = r.time_s(r.field(obj, "start", path), f"{path}.start")
        end = r.time_s(r.field(obj, "end", path), f"{path}.end")
        if end < start:
            raise r.error(f"{path}.end", "before start")
        arrival = r.time_s(r.field(obj, "arrival", path), f"{path}.arrival")
        energy = r.number(obj["energy_wh"], f"{path}.energy_wh") if "energy_wh" in obj else _energy_wh(
            problem, node, end - start)
        scheduled.append(ScheduledJob(job_id, node, start, end, arrival, r.route(obj, "input_route", path),
                                      r.route(obj, "output_route", path), r.route(obj, "model_route", path),
                                      energy))
    return Plan(policy, tuple(scheduled), tuple(unschedulable), objective, bound, wall_s, status, tuple(notes))


def _energy_wh(problem: Problem, node: str, duration_s: float) -> float:
    prof = problem.profiles_by_node.get(node)
    if prof is None:
        return 0.0
    return duration_s / 3600.0 * (prof.active_power_w - prof.idle_power_w) / prof.slots


def _hms(problem: Problem, t_s: float) -> str:
    return format_offset_utc(problem.epoch_utc, t_s)[11:19]


def plan_table(problem: Problem, plan: Plan) -> str:
    """A fixed-width table of the plan, one line per job, jobs in problem order."""
    jobs = {j.job_id: j for j in problem.jobs}
    by_id: dict[str, ScheduledJob | Unschedulable] = {u.job_id: u for u in plan.unschedulable}
    by_id.update({s.job_id: s for s in plan.scheduled})
    header = (f"policy {plan.policy}  objective {plan.objective:g}  bound {plan.bound:g}  gap {plan.gap:.2%}"
              f"  scheduled {len(plan.scheduled)}/{len(by_id)}" + (f"  status {plan.status}" if plan.status else "")
              + f"  (times UTC, epoch {problem.epoch_utc:%Y-%m-%d %H:%M:%S})")
    cols = ("job", "prio", "node", "start", "end", "arrival", "deadline", "slack", "hops in/out/model")
    rows: list[tuple[str, ...]] = []
    reasons: list[str] = []
    order = [j.job_id for j in problem.jobs if j.job_id in by_id] + [k for k in by_id if k not in jobs]
    for job_id in order:
        entry = by_id[job_id]
        job = jobs.get(job_id)
        prio = str(job.priority) if job else "?"
        deadline = _hms(problem, job.deadline_s) if job else "?"
        if isinstance(entry, ScheduledJob):
            slack = f"{(job.deadline_s - entry.arrival_s) / 60.0:.1f} min" if job else "?"
            rows.append((job_id, prio, entry.node, _hms(problem, entry.start_s), _hms(problem, entry.end_s),
                         _hms(problem, entry.arrival_s), deadline, slack,
                         f"{len(entry.input_route)}/{len(entry.output_route)}/{len(entry.model_route)}"))
        else:
            rows.append((job_id, prio, "-", "-", "-", "-", deadline, "-", "-"))
            reasons.append(f"  {job_id}: {entry.reason}")
    widths = [max(len(c), *(len(r[k]) for r in rows)) if rows else len(c) for k, c in enumerate(cols)]
    lines = [header, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if reasons:
        lines.append("unschedulable:")
        lines += reasons
    return "\n".join(lines)
