"""``skyinfer replay`` and ``skyinfer compare``: play a scenario in simulated time and report what happened."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skyinfer.errors import InputError
from skyinfer.progress import Progress
from skyinfer.replay.settings import AGENT_MODES, POLICIES


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="play a scenario end to end in simulated time (planner, links, agents, batteries, faults)",
        description="Replay a scenario: jobs arrive, the scheduler plans them, data moves over contacts, node "
        "agents run the models for real, batteries charge and drain, faults happen. Writes report.json, "
        "events.jsonl, report.html, scenario.czml and replay.db (the scheduler's job store) into --out.",
    )
    p.add_argument("scenario", metavar="SCENARIO", help="scenario YAML file")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default: replay-<name>)")
    p.add_argument("--policy", choices=POLICIES, default=None, help="planning policy (default: the scenario's)")
    p.add_argument("--agents", choices=AGENT_MODES, default=None,
                   help="node agents in this process (inproc, default) or one process each (process)")
    p.add_argument("--speed", default="max", metavar="max|FACTOR",
                   help="max (as fast as possible, default) or simulated seconds per wall second")
    p.add_argument("--seed", type=int, default=None, help="workload seed (default: the scenario's)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="summary format on stdout")
    p.add_argument("--no-html", action="store_true", help="skip report.html and scenario.czml")
    p.set_defaults(func=run_replay)

    c = sub.add_parser(
        "compare",
        help="replay a scenario once per policy and put the results side by side",
        description="Replay the same scenario and workload with several policies; each gets a sub-directory "
        "of --out, and --out/report.html compares them.",
    )
    c.add_argument("scenario", metavar="SCENARIO", help="scenario YAML file")
    c.add_argument("--policies", default="cpsat,greedy,bentpipe", help="comma-separated policies")
    c.add_argument("--out", metavar="DIR", default=None, help="output directory (default: compare-<name>)")
    c.add_argument("--agents", choices=AGENT_MODES, default=None)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.set_defaults(func=run_compare)


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"--speed: expected max or a positive number, got {text!r}") from None
    if not v > 0:
        raise InputError(f"--speed: must be positive, got {text!r}")
    return v


def _progress(label: str) -> Progress:
    return Progress(label)


def _summary_line(report: dict[str, Any]) -> str:
    jobs = report["jobs"]["total"]
    lat = report["latency_s"]
    hit = report["deadline_hit_rate"]
    p50 = f"{lat['p50'] / 60:.1f} min" if lat["p50"] is not None else "-"
    p90 = f"{lat['p90'] / 60:.1f} min" if lat["p90"] is not None else "-"
    return (f"{report['policy']:>8}: {jobs['submitted']} jobs, {jobs['on_time']} on time, {jobs['late']} late, "
            f"{jobs['expired']} expired, {jobs['failed']} failed, {jobs['unfinished']} unfinished; "
            f"deadline hit {hit * 100 if hit is not None else 0:.1f}%; latency p50 {p50}, p90 {p90}; "
            f"downlinked {report['bytes']['downlinked'] / 1e9:.2f} GB "
            f"(bent-pipe {report['bytes']['bentpipe_downlink_equivalent'] / 1e9:.2f} GB); "
            f"wall {report['wall']['wall_s']:.1f} s")


def run_replay(args: argparse.Namespace) -> int:
    from skyinfer.replay.run import play, prepare

    speed = _speed(args.speed)
    bar = _progress("contact plan")
    try:
        prepared = prepare(args.scenario, seed=args.seed, policy=args.policy, agent_mode=args.agents, progress=bar)
    finally:
        bar.close()
    for w in prepared.scenario.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out or f"replay-{prepared.setup.name}")
    bar = _progress(f"replay {prepared.setup.settings.policy}")
    try:
        result, report = play(prepared, out, progress=bar, speed=speed)
    finally:
        bar.close()
    if not args.no_html:
        from skyinfer.replay.czml import write_czml
        from skyinfer.replay.html import write_html

        write_html(out / "report.html", [(result, report)])
        write_czml(out / "scenario.czml", prepared.setup)
    if args.format == "json":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary_line(report))
        html = "" if args.no_html else " report.html scenario.czml"
        print(f"outputs in {out}/: report.json events.jsonl{html} replay.db")
        if report["planner"]["validator_errors"]:
            print(f"warning: {report['planner']['validator_errors']} plan validator errors (see report.json)",
                  file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from skyinfer.fileio import write_atomic
    from skyinfer.replay.czml import write_czml
    from skyinfer.replay.html import write_html
    from skyinfer.replay.run import play, prepare

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise InputError("--policies: give at least one policy")
    for p in policies:
        if p not in POLICIES:
            raise InputError(f"--policies: unknown policy {p!r}; expected some of {', '.join(POLICIES)}")
    if len(set(policies)) != len(policies):
        raise InputError("--policies: a policy is listed twice")
    bar = _progress("contact plan")
    try:
        prepared = prepare(args.scenario, seed=args.seed, agent_mode=args.agents, progress=bar)
    finally:
        bar.close()
    for w in prepared.scenario.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out or f"compare-{prepared.setup.name}")
    results = []
    for policy in policies:
        bar = _progress(f"replay {policy}")
        try:
            result, report = play(prepared, out / policy, policy=policy, progress=bar)
        finally:
            bar.close()
        write_html(out / policy / "report.html", [(result, report)])
        results.append((result, report))
    write_html(out / "report.html", results)
    write_czml(out / "scenario.czml", prepared.setup)
    summary = {r["policy"]: {k: r[k] for k in ("jobs", "deadline_hit_rate", "latency_s", "bytes", "energy")}
               for _, r in results}
    write_atomic(out / "compare.json", json.dumps(summary, indent=2) + "\n")
    if args.format == "json":
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for _, r in results:
            print(_summary_line(r))
        print(f"outputs in {out}/: report.html compare.json scenario.czml and one directory per policy")
    return 0
