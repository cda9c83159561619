"""Replay speed of every shipped scenario: ``python benchmarks/bench_replay.py [SCENARIO ...] [--policy P]``.

For each scenario (default: every replay scenario in ``scenarios/``), in a fresh subprocess so that one
scenario's caches and memory do not help or hurt the next: the contact plan build, the replay itself
(planner rounds, transfers, real inference on in-process agents, batteries, faults) and the outputs,
timed with ``time.perf_counter``. Printed per scenario: satellites, jobs, planning rounds, wall time of
the contact plan and of the replay, the planner's and the plan validator's shares (every round is
validated), simulated seconds per wall second, peak RSS, and the job outcome counts (so that a fast run
that schedules nothing shows). Targets (issue 6): ``demo.yaml`` <= 60 s, ``planet-eo.yaml``
(24 h) <= 5 min, on this 2-core machine.

``--json FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("demo.yaml", "planet-eo.yaml", "computing-constellation.yaml", "starlink-shell.yaml",
             "stress.yaml")
TARGETS_S = {"demo.yaml": 60.0, "planet-eo.yaml": 300.0}


def child(scenario: str, policy: str | None) -> dict[str, object]:
    sys.path.insert(0, str(REPO))
    from skyinfer.replay.run import play, prepare

    t0 = time.perf_counter()
    prepared = prepare(scenario, policy=policy)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        _, report = play(prepared, Path(out))
    t2 = time.perf_counter()
    wall = report["wall"]
    return {
        "scenario": Path(scenario).name,
        "policy": report["policy"],
        "satellites": report["satellites"],
        "jobs": report["jobs"]["total"],
        "rounds": report["planner"]["rounds"],
        "validator_errors": report["planner"]["validator_errors"],
        "prepare_s": round(t1 - t0, 2),
        "contact_plan_s": wall["contact_plan_s"],
        "replay_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "planner_s": wall["planner_s_total"],
        "validator_s": wall["validator_s_total"],
        "sim_s_per_wall_s": round(prepared.setup.contact_plan.duration_s / (t2 - t0), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help="scenario files (default: the shipped ones)")
    ap.add_argument("--policy", default=None, help="override the scenarios' policy")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.policy)))
        return 0
    paths = args.scenarios or [str(REPO / "scenarios" / s) for s in SCENARIOS]
    rows = []
    print(f"{'scenario':32} {'policy':8} {'sats':>5} {'jobs':>6} {'on time':>7} {'rounds':>6} {'cp s':>6} "
          f"{'replay s':>8} {'total s':>8} {'planner s':>9} {'valid. s':>8} {'sim s/wall s':>12} {'RSS MB':>7}  target")
    for path in paths:
        cmd = [sys.executable, __file__, "--child", path] + (["--policy", args.policy] if args.policy else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        if proc.returncode != 0:
            print(f"{Path(path).name:32} FAILED: {proc.stderr.strip()[-400:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        target = TARGETS_S.get(r["scenario"])
        verdict = "" if target is None else f"<= {target:g} s: {'met' if r['total_s'] <= target else 'MISSED'}"
        if r["validator_errors"]:
            verdict += f" ({r['validator_errors']} plan validator errors)"
        print(f"{r['scenario']:32} {r['policy']:8} {r['satellites']:>5} {r['jobs']['submitted']:>6} "
              f"{r['jobs']['on_time']:>7} {r['rounds']:>6} {r['contact_plan_s']:>6.1f} {r['replay_s']:>8.1f} "
              f"{r['total_s']:>8.1f} {r['planner_s']:>9.1f} {r['validator_s']:>8.1f} {r['sim_s_per_wall_s']:>12.0f} "
              f"{r['peak_rss_mb']:>7.0f}"
              f"  {verdict}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
