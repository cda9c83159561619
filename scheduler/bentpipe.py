"""Bent-pipe baseline: no compute in orbit, raw data goes down and is processed on the ground.

This is what an Earth-observation operator does today and what in-orbit
inference must beat. Each job's raw input (``input_bytes``) travels to a ground
station by earliest-arrival contact-graph routing (capture: from the imaging
satellite at the pass TCA; onboard: from its satellite at submit; uplink: it is
already on the ground at submit, no hops), then runs on the ground node
``"ground"`` at ``problem.ground_gflops``; the result is on the ground when the
run ends. The ground is elastic (a cloud region): runs do not queue for each
other. Contact volumes are shared greedily, jobs in the greedy order (priority,
then deadline). All times are seconds after ``Problem.epoch_utc``.
"""

from __future__ import annotations

import time

import numpy as np

from scheduler.feasibility import capture_events
from scheduler.greedy import job_order, make_plan, route_bytes
from scheduler.routing import ContactTable, contact_table, forward_search, hops_to
from scheduler.types import (
    CaptureSource,
    Hop,
    Job,
    OnboardSource,
    Plan,
    Problem,
    ScheduledJob,
    Unschedulable,
    UplinkSource,
    gflop_per_inference,
)

GROUND_NODE = "ground"
MAX_CAPTURE_EVENTS = 8  # passes over the target tried per capture job, earliest first


def _downlink(table: ContactTable, sources: list[tuple[int, float]], size_bytes: int, residual: np.ndarray,
              deadline_s: float) -> tuple[float, tuple[Hop, ...]] | None:
    """Earliest arrival of ``size_bytes`` at any station from ``(node, t0)`` sources, with its hops."""
    stations = frozenset(int(i) for i in np.flatnonzero(table.is_station))
    if not stations:
        return None
    arrival, pred = forward_search(table, sources, size_bytes, residual, horizon_s=deadline_s, stop_at=stations)
    reached = [(t, n) for n, t in arrival.items() if n in stations]
    if not reached:
        return None
    t, n = min(reached)
    return t, hops_to(table, pred, n, size_bytes)


def _input_on_ground(problem: Problem, table: ContactTable, job: Job, residual: np.ndarray,
                     cache: dict[tuple[float, float, float], list[tuple[str, float]]]
                     ) -> tuple[float, tuple[Hop, ...]] | str:
    """(time the raw input is on the ground, hops) or a reason string."""
    t_submit = max(job.submit_s, problem.now_s)
    src = job.source
    if isinstance(src, UplinkSource):
        if src.station is not None and f"gs:{src.station.removeprefix('gs:')}" not in table.node_index:
            return f"no-contact: source station {src.station!r} is not in the contact plan"
        return t_submit, ()
    if isinstance(src, OnboardSource):
        if src.satellite not in problem.profiles_by_node or src.satellite not in table.node_index:
            return f"no-contact: source satellite {src.satellite!r} has no node profile (cannot downlink)"
        got = _downlink(table, [(table.node_index[src.satellite], t_submit)], job.input_bytes, residual,
                        job.deadline_s)
        return got if got is not None else "no-contact: the raw input cannot reach a ground station by the deadline"
    assert isinstance(src, CaptureSource)
    events = [e for e in capture_events(problem, src, cache) if t_submit <= e[1] <= job.deadline_s]
    if not events:
        return "no-contact: no satellite images the capture target between submit and deadline"
    best: tuple[float, tuple[Hop, ...]] | None = None
    for sat, tca in events[:MAX_CAPTURE_EVENTS]:
        if best is not None and tca >= best[0]:
            break
        got = _downlink(table, [(table.node_index[sat], tca)], job.input_bytes, residual, job.deadline_s)
        if got is not None and got[1] and (best is None or got[0] < best[0]):
            best = got
    return best if best is not None else "no-contact: the raw input cannot reach a ground station by the deadline"


def bentpipe_plan(problem: Problem) -> Plan:
    """Plan every job as downlink-then-process-on-the-ground.

    Returns
    -------
    Plan
        Policy ``bentpipe``; scheduled jobs run on node ``"ground"`` with no output
        route (arrival = end of the ground run). ``bound`` is Σ priority of jobs that
        could be delivered with the contacts to themselves.
    """
    started = time.perf_counter()
    table = contact_table(problem)
    residual = table.capacity_bytes.astype(np.int64).copy()
    fixed_ids = {f.job_id for f in problem.fixed}
    for f in problem.fixed:
        for r in (f.input_route, f.output_route, f.model_route):
            for ci, b in route_bytes(r).items():
                residual[ci] -= b
    profiles_by_name = {p.name: p for p in problem.profiles_by_node.values()}
    cache: dict[tuple[float, float, float], list[tuple[str, float]]] = {}
    scheduled: list[ScheduledJob] = list(problem.fixed)
    unsched: list[Unschedulable] = []
    bound = float(sum(j.priority for j in problem.jobs if j.job_id in fixed_ids))
    for job in job_order(j for j in problem.jobs if j.job_id not in fixed_ids):
        model = problem.models.get(job.model_id)
        if model is None:
            unsched.append(Unschedulable(job.job_id, f"unknown-model: model {job.model_id!r} is not in the "
                                                     "problem's models"))
            continue
        duration_s = job.tiles * gflop_per_inference(model, profiles_by_name) / problem.ground_gflops
        got = _input_on_ground(problem, table, job, residual, cache)
        if isinstance(got, str):
            # Distinguish contention from impossibility: retry on empty contacts.
            alone = _input_on_ground(problem, table, job, table.capacity_bytes, cache)
            if not isinstance(alone, str) and alone[0] + duration_s <= job.deadline_s:
                bound += job.priority
                unsched.append(Unschedulable(job.job_id, "capacity: contact volume to the ground used up / lost to "
                                                         "higher priority jobs"))
            else:
                unsched.append(Unschedulable(job.job_id, got))
            continue
        t_ground, hops = got
        end_s = t_ground + duration_s
        if end_s > job.deadline_s:
            unsched.append(Unschedulable(job.job_id, f"deadline: raw input is on the ground at {t_ground:.1f} s, "
                                                     f"processing ends after the deadline {job.deadline_s:.1f} s"))
            continue
        for ci, b in route_bytes(hops).items():
            residual[ci] -= b
        bound += job.priority
        scheduled.append(ScheduledJob(job_id=job.job_id, node=GROUND_NODE, start_s=t_ground, end_s=end_s,
                                      arrival_s=end_s, input_route=hops, output_route=()))
    return make_plan(problem, "bentpipe", scheduled, unsched, bound, started=started, status="FEASIBLE",
                     notes=(f"ground_gflops={problem.ground_gflops:g}",))


__all__ = ["GROUND_NODE", "bentpipe_plan"]
