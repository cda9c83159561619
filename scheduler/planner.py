"""Planner front door: one call from a problem to a plan, for every policy.

``plan`` always builds the greedy plan first, so a valid plan exists from the
first moment; CP-SAT then improves it within the time limit. Large instances
(more options than ``decompose_above``, or than the limit can handle) are
decomposed into pieces of jobs by deadline, solved one after the other as
large-neighbourhood moves, the pieces with the most priority left out by
greedy first: every other job stays at its current placement (consuming its
resources), the piece is re-optimised from its current placements as a full
hint, and the result is accepted only if it is better and passes the
independent replay check. The current plan is therefore valid after every
piece and the time limit can cut the sequence at any point.

``replan`` is the rolling horizon: at ``now_s`` jobs already started stay
fixed, jobs whose results are down are gone, new jobs come in, batteries carry
their simulated charge over, and the previous plan is the first hint.
"""

from __future__ import annotations

import dataclasses
import math
import time

from scheduler.bentpipe import bentpipe_plan
from scheduler.cpsat import CpSatParams, SolveReport, plan_from_placements, resolve_step_s, solve_placements
from scheduler.greedy import (
    EnergyModel,
    FeasibilityLike,
    GreedyResult,
    Placement,
    candidate_list,
    check_placements,
    materialize,
    simulate_soc_wh,
    sun_segments,
)
from scheduler.types import NodeProfile, Plan, Problem, ScheduledJob
from skyinfer.errors import InputError

POLICIES = ("cpsat", "greedy", "bentpipe")
DECOMPOSE_ABOVE_OPTIONS = 25_000
# What CP-SAT can chew within the limit, measured on 2 shared cores (1,000 jobs x 200 nodes, 10 s): one model
# of 7k options +9.2 % over greedy, 3 pieces of ~2.4k +9.5 %; one model of 16k options (2,000 jobs) improved
# nothing (model building and loading ate the limit). So the threshold and piece size also scale with the limit.
OPTIONS_PER_LIMIT_S = 800
PIECE_OPTIONS_PER_LIMIT_S = 400
PIECE_OPTIONS = 4_000  # cap: 10k-option pieces (10,000 jobs, 25 s) improved nothing in their ~2.7 s each
MIN_PIECE_TIME_S = 0.2  # a piece is not started with less time than this


def finish_margin_s(time_limit_s: float, n_jobs: int = 0) -> float:
    """Time kept back from the solver for the replay check and plan assembly (s; 0.2 ms per job measured)."""
    return min(0.5 * time_limit_s, 0.08 * time_limit_s + 0.05 + 2e-4 * n_jobs)


def plan(problem: Problem, *, policy: str = "cpsat", time_limit_s: float = 10.0, workers: int = 0, seed: int = 0,
         hint: Plan | None = None, feasibility: FeasibilityLike | None = None,
         decompose_above: int = DECOMPOSE_ABOVE_OPTIONS, piece_options: int = PIECE_OPTIONS,
         max_candidates_per_job: int = 8, dump_path: str | None = None, deterministic: bool = False) -> Plan:
    """Plan ``problem`` with ``policy`` (``cpsat``, ``greedy`` or ``bentpipe``).

    Parameters
    ----------
    time_limit_s
        Wall-clock budget (s) for the whole call after candidates are built (CP-SAT only).
    workers
        CP-SAT workers; 0 = one per CPU.
    seed
        CP-SAT random seed.
    hint
        A previous plan: its placements are tried first by the greedy (and so hinted to CP-SAT).
    feasibility
        Precomputed candidates (``scheduler.feasibility.build_candidates(problem)``).
    decompose_above
        Decompose when the model would have more options than this (or than
        ``OPTIONS_PER_LIMIT_S × time_limit_s``, whichever is smaller).
    piece_options
        Options per piece when decomposing (at most ``PIECE_OPTIONS_PER_LIMIT_S × time_limit_s``).
    deterministic
        Same input, seed and worker count give the same plan whatever the machine's load: CP-SAT's
        interleaved search with ``time_limit_s`` read as deterministic time (CP-SAT's work unit, close to a
        second of one core), split without looking at the clock. The wall clock only caps a run at
        ``DETERMINISTIC_WALL_FACTOR`` times the limit (the plan's notes say when that happened).

    Returns
    -------
    Plan
        Every job listed once, scheduled or unschedulable with a reason.
    """
    if policy not in POLICIES:
        raise InputError(f"policy: unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if policy == "bentpipe":
        return bentpipe_plan(problem)
    if feasibility is None:
        from scheduler.feasibility import build_candidates

        feasibility = build_candidates(problem)
    started = time.perf_counter()
    params = CpSatParams(time_limit_s=time_limit_s, workers=workers, seed=seed, dump_path=dump_path,
                         max_candidates_per_job=max_candidates_per_job, deterministic=deterministic)
    step = resolve_step_s(problem, params)
    preferred = None
    if hint is not None:
        fixed_ids = {f.job_id for f in problem.fixed}
        preferred = {sj.job_id: (sj.node, sj.start_s) for sj in hint.scheduled if sj.job_id not in fixed_ids}
    from scheduler.greedy import greedy_assign

    base = greedy_assign(problem, feasibility, step_s=step, preferred=preferred, policy=policy)
    if policy == "greedy":
        return base.plan
    options = _option_count(feasibility, max_candidates_per_job)
    left = time_limit_s - finish_margin_s(time_limit_s, len(problem.jobs))
    if not deterministic:
        left -= time.perf_counter() - started
    threshold = min(decompose_above, max(1000, round(OPTIONS_PER_LIMIT_S * time_limit_s)))
    piece = min(piece_options, decompose_above, max(500, round(PIECE_OPTIONS_PER_LIMIT_S * time_limit_s)))
    if options <= threshold:
        report = solve_placements(problem, feasibility, params, base.placements, time_limit_s=max(0.05, left))
        return plan_from_placements(problem, feasibility, base, report, started=started, step_s=step)
    return _decomposed(problem, feasibility, params, base, started, step, piece)


def _option_count(feasibility: FeasibilityLike, per_job: int) -> int:
    count: dict[str, int] = {}
    for c in candidate_list(feasibility):
        count[c.job_id] = count.get(c.job_id, 0) + 1
    return sum(min(n, per_job) for n in count.values())


def deadline_pieces(problem: Problem, feasibility: FeasibilityLike, max_options: int, per_job: int) -> list[list[str]]:
    """Jobs with candidates, by deadline, cut into pieces of at most ``max_options`` options."""
    count: dict[str, int] = {}
    for c in candidate_list(feasibility):
        count[c.job_id] = count.get(c.job_id, 0) + 1
    fixed_ids = {f.job_id for f in problem.fixed}
    jobs = sorted((j for j in problem.jobs if j.job_id in count and j.job_id not in fixed_ids),
                  key=lambda j: (j.deadline_s, j.job_id))
    pieces: list[list[str]] = []
    size = 0
    for j in jobs:
        n = min(count[j.job_id], per_job)
        if pieces and size + n <= max_options:
            pieces[-1].append(j.job_id)
            size += n
        else:
            pieces.append([j.job_id])
            size = n
    return pieces


def _decomposed(problem: Problem, feasibility: FeasibilityLike, params: CpSatParams, base: GreedyResult,
                started: float, step: float, max_options: int) -> Plan:
    current: dict[str, Placement] = dict(base.placements)
    # Pieces search without presolve: their bounds are not global bounds anyway, and measured on 1,000 jobs x
    # 200 nodes (3 pieces, 10 s) presolving pieces improved greedy by 0.4 %, not presolving by 9.5 %.
    if params.presolve is None:
        params = dataclasses.replace(params, presolve=False)
    energy = EnergyModel(problem, {c.node for c in candidate_list(feasibility)} | {f.node for f in problem.fixed})
    pieces = deadline_pieces(problem, feasibility, max_options, params.max_candidates_per_job)
    # Most to gain first (priority of jobs with candidates that greedy left out): the limit may cut the tail.
    priority = {j.job_id: j.priority for j in problem.jobs}
    pieces.sort(key=lambda piece: -sum(priority[j] for j in piece if j not in current))
    solved = improved = 0
    notes: list[str] = [f"decomposed into {len(pieces)} deadline pieces"]
    budget = params.time_limit_s - finish_margin_s(params.time_limit_s, len(problem.jobs))
    for k, piece in enumerate(pieces):
        # Deterministic runs split the budget evenly without looking at the clock.
        left = budget * (len(pieces) - k) / len(pieces) if params.deterministic else (
            budget - (time.perf_counter() - started))
        share = left / (len(pieces) - k)
        if share < MIN_PIECE_TIME_S:
            notes.append(f"time limit reached after {solved} pieces")
            break
        members = set(piece)
        fixed = [materialize(problem, p.candidate, p.start_s) for j, p in sorted(current.items())
                 if j not in members]
        hint = {j: current[j] for j in piece if j in current}
        report = solve_placements(problem, feasibility, params, hint, jobs=members, fixed=fixed,
                                  time_limit_s=share, energy=energy)
        solved += 1
        if not report.improved:
            continue
        trial = {j: p for j, p in current.items() if j not in members} | report.placements
        if check_placements(problem, feasibility, trial.values(), step_s=step):
            notes.append(f"piece {k}: solver answer failed the replay check; kept")
            continue
        current = trial
        improved += 1
    notes.append(f"pieces solved {solved}, improved {improved}")
    value = float(sum(j.priority for j in problem.jobs if j.job_id in current))
    final = SolveReport(current, "FEASIBLE", value, base.plan.bound, time.perf_counter() - started,
                        improved > 0, tuple(notes))
    out = plan_from_placements(problem, feasibility, base, final, started=started, step_s=step)
    return dataclasses.replace(out, status="FEASIBLE (decomposed)")


# --------------------------------------------------------------------------------------------------
# Rolling horizon


def carried_profiles(problem: Problem, previous: Plan, now_s: float) -> dict[str, NodeProfile]:
    """Node profiles whose ``initial_soc`` is the charge at ``now_s`` simulated under ``previous``.

    The state of charge never drops below the profile's minimum in a valid plan; it is
    clamped to it anyway (float noise) because profiles require ``initial_soc >= min_soc``.
    """
    runs: dict[str, list[tuple[float, float]]] = {}
    for sj in previous.scheduled:
        runs.setdefault(sj.node, []).append((sj.start_s, sj.end_s))
    out: dict[str, NodeProfile] = {}
    for node, profile in problem.profiles_by_node.items():
        segs = [s for s in sun_segments(problem, node) if s.start_s < now_s]
        if not segs or now_s <= problem.now_s:
            out[node] = profile
            continue
        segs[-1] = dataclasses.replace(segs[-1], end_s=min(segs[-1].end_s, now_s))
        soc_wh = simulate_soc_wh(profile, segs, runs.get(node, ()))
        frac = min(1.0, max(profile.min_soc, soc_wh / profile.battery_wh))
        out[node] = dataclasses.replace(profile, initial_soc=frac)
    return out


def rolled_problem(problem: Problem, previous: Plan, now_s: float) -> Problem:
    """``problem`` as seen at ``now_s`` (s after the epoch) after following ``previous`` until then.

    Jobs of ``previous`` that started before ``now_s`` and whose result is not yet
    down become fixed (running, or their result in transit); jobs whose result
    arrived by ``now_s`` are dropped; batteries carry their simulated charge.
    """
    if not math.isfinite(now_s) or now_s < problem.now_s:
        raise InputError(f"now_s: must be >= the problem's now ({problem.now_s:g} s), got {now_s!r}")
    finished = {sj.job_id for sj in previous.scheduled if sj.arrival_s <= now_s}
    prior_fixed = {f.job_id for f in problem.fixed}
    fixed: list[ScheduledJob] = [f for f in problem.fixed if f.job_id not in finished]
    fixed += [sj for sj in previous.scheduled
              if sj.job_id not in finished and sj.job_id not in prior_fixed and sj.start_s < now_s]
    jobs = tuple(j for j in problem.jobs if j.job_id not in finished)
    profiles = carried_profiles(problem, previous, now_s)
    return dataclasses.replace(problem, now_s=now_s, jobs=jobs, fixed=tuple(fixed), profiles_by_node=profiles)


def replan(problem: Problem, previous: Plan, now_s: float, *, policy: str = "cpsat", time_limit_s: float = 10.0,
           workers: int = 0, seed: int = 0, feasibility: FeasibilityLike | None = None,
           deterministic: bool = False) -> Plan:
    """Rolling re-plan at ``now_s``: :func:`plan` of :func:`rolled_problem`, ``previous`` as the hint.

    New jobs are simply part of ``problem.jobs``. Validate the result against
    ``rolled_problem(problem, previous, now_s)`` (``feasibility``, when given,
    must have been built for that rolled problem).
    """
    rolled = rolled_problem(problem, previous, now_s)
    return plan(rolled, policy=policy, time_limit_s=time_limit_s, workers=workers, seed=seed, hint=previous,
                feasibility=feasibility, deterministic=deterministic)


__all__ = ["DECOMPOSE_ABOVE_OPTIONS", "POLICIES", "carried_profiles", "deadline_pieces", "plan", "replan",
           "rolled_problem"]
