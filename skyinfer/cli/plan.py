"""``skyinfer plan`` and ``skyinfer validate-plan``: place a scenario's jobs, check a plan.

``plan`` loads the scenario, computes its contact plan, builds the planning
problem and runs a policy (CP-SAT by default, hinted by the greedy plan;
``greedy``; or the ``bentpipe`` baseline). ``validate-plan`` re-reads a plan
JSON against the same scenario and lists every rule it breaks (exit 1) or
exits 0 when it is valid. Input mistakes exit 2 with one line naming them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from scheduler.types import Problem
from skyinfer.errors import InputError
from skyinfer.fileio import write_atomic
from skyinfer.progress import Progress
from skyinfer.scenario import load_scenario

POLICIES = ("cpsat", "greedy", "bentpipe")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="place a scenario's inference jobs on satellites (CP-SAT, greedy or bent-pipe)",
        description="Compute the scenario's contact plan, then place every job: scheduled on a node with its "
        "input, model and output routes, or unschedulable with a reason.",
    )
    p.add_argument("--scenario", required=True, metavar="FILE", help="scenario YAML (orbit, nodes, models, jobs)")
    p.add_argument("--policy", choices=POLICIES, default="cpsat", help="planner (default cpsat)")
    p.add_argument("--time-limit-s", type=float, default=10.0, help="CP-SAT wall-clock limit (default 10)")
    p.add_argument("--workers", type=int, default=0, help="CP-SAT workers (default 0: one per CPU)")
    p.add_argument("--seed", type=int, default=0, help="CP-SAT random seed (default 0)")
    p.add_argument("--deterministic", action="store_true",
                   help="same plan for the same input, seed and workers whatever the load: CP-SAT's interleaved "
                        "search with --time-limit-s read as deterministic time (capped at 4x on the wall clock)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the plan JSON here (atomically)")
    p.set_defaults(func=run_plan)

    v = sub.add_parser(
        "validate-plan",
        help="check a plan JSON against its scenario (exit 0 valid, 1 violations, 2 input errors)",
        description="Re-check every rule of a plan: routes inside real contacts, capacities, slots, memory, "
        "battery, deadlines, every job listed once.",
    )
    v.add_argument("--scenario", required=True, metavar="FILE", help="the scenario the plan was made for")
    v.add_argument("--plan", required=True, metavar="FILE", help="plan JSON (skyinfer plan --format json)")
    v.set_defaults(func=run_validate)


def load_problem(path: str) -> Problem:
    """Scenario file -> contact plan -> planning problem (InputError on any mistake)."""
    from orbit.build import build_contact_plan
    from scheduler.problem import build_problem

    if not Path(path).is_file():
        raise InputError(f"{path}: scenario file not found")
    scenario = load_scenario(path)
    for w in scenario.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if scenario.start_utc is None:
        raise InputError(f"{path}: start: required to plan (the window's first instant, UTC)")
    if scenario.duration_s is None:
        raise InputError(f"{path}: duration: required to plan (e.g. 24h)")
    bar = Progress("contact plan")
    try:
        sections = scenario.root.value if scenario.root.is_mapping() else {}
        if "workload" in sections:
            # Generated jobs are drawn exactly as `skyinfer replay` draws them (same seed, same jobs), so a
            # scenario plans the same workload here, in replay and in validate-plan.
            from skyinfer.replay.run import prepare

            setup = prepare(path, progress=bar).setup
            return dataclasses.replace(setup.base_problem, jobs=setup.jobs)
        contact_plan = build_contact_plan(scenario.constellation, scenario.stations, scenario.start_utc,
                                          scenario.duration_s, isl=scenario.isl, sunlight=scenario.sunlight,
                                          progress=bar)
    finally:
        bar.close()
    return build_problem(scenario, contact_plan)


def run_plan(args: argparse.Namespace) -> int:
    from scheduler.planio import plan_table, plan_to_json
    from scheduler.planner import plan

    if not args.time_limit_s > 0:
        raise InputError(f"--time-limit-s: must be positive, got {args.time_limit_s:g}")
    if args.workers < 0:
        raise InputError(f"--workers: must be >= 0, got {args.workers}")
    problem = load_problem(args.scenario)
    result = plan(problem, policy=args.policy, time_limit_s=args.time_limit_s, workers=args.workers, seed=args.seed,
                  deterministic=args.deterministic)
    text_json = json.dumps(plan_to_json(problem, result), indent=1) + "\n"
    if args.out:
        write_atomic(args.out, text_json)
        print(f"wrote {args.out}: {len(result.scheduled)} scheduled, {len(result.unschedulable)} unschedulable",
              file=sys.stderr)
    if args.format == "json":
        if not args.out:
            sys.stdout.write(text_json)
    else:
        sys.stdout.write(plan_table(problem, result))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from scheduler.planio import plan_from_json
    from scheduler.validator import validate_plan

    problem = load_problem(args.scenario)
    try:
        text = Path(args.plan).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{args.plan}: cannot read the plan: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{args.plan}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    result = plan_from_json(problem, data, source=args.plan)
    violations = validate_plan(problem, result)
    if violations:
        for line in violations:
            print(line)
        print(f"{args.plan}: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print(f"{args.plan}: valid ({len(result.scheduled)} scheduled, {len(result.unschedulable)} unschedulable)")
    return 0
