"""``report.json`` and ``events.jsonl`` from a :class:`~skyinfer.replay.engine.ReplayResult`.

Everything in ``report.json`` except the ``wall`` section depends only on the
scenario and the seed (the determinism test compares it byte for byte); the
``wall`` section holds wall-clock figures (wall time, planner time per round,
real inference time, simulated seconds per wall second). The ``store`` section
is the scheduler's own record: the final state of every job in its store, and
how many disagree with the outcomes (:func:`store_disagreements`; none in a
sound run).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.types import CaptureSource, OnboardSource
from skyinfer.fileio import write_atomic
from skyinfer.replay.engine import OUTCOMES, ReplayResult
from skyinfer.replay.service import STATE_OF_OUTCOME
from skyinfer.timefmt import format_utc

REPORT_VERSION = 1
WALL_KEY = "wall"


def _r(x: float, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    a = np.array(sorted(values))
    return {"count": len(values), "p50": _r(float(np.percentile(a, 50))), "p90": _r(float(np.percentile(a, 90))),
            "p99": _r(float(np.percentile(a, 99))), "mean": _r(float(a.mean())), "max": _r(float(a.max()))}


def store_disagreements(result: ReplayResult) -> list[str]:
    """Jobs whose final state in the scheduler's store does not match their outcome (none in a sound run).

    Every job submitted to the store must end in the state of its outcome (``STATE_OF_OUTCOME``); only a
    job submitted after the window or rejected by the service's validation is absent from the store.
    """
    out: list[str] = []
    for o in result.outcomes:
        if not o.state:
            never = (o.outcome == "unfinished" and o.job.submit_s > result.setup.contact_plan.duration_s) or (
                o.outcome == "failed" and o.reason.startswith("rejected:"))
            if not never:
                out.append(f"{o.job.job_id}: {o.outcome} but not in the store")
        elif o.state not in STATE_OF_OUTCOME[o.outcome]:
            out.append(f"{o.job.job_id}: {o.outcome} but {o.state} in the store")
    return out


def _counts() -> dict[str, int]:
    return {"submitted": 0, **{k: 0 for k in OUTCOMES}}


def build_report(result: ReplayResult, *, contact_plan_wall_s: float = 0.0) -> dict[str, Any]:
    """The ``report.json`` document of one replay."""
    setup = result.setup
    cp = setup.contact_plan
    total = _counts()
    by_priority: dict[int, dict[str, int]] = defaultdict(_counts)
    latencies: list[float] = []
    latency_by_priority: dict[int, list[float]] = defaultdict(list)
    for o in result.outcomes:
        for bucket in (total, by_priority[o.job.priority]):
            bucket["submitted"] += 1
            bucket[o.outcome] += 1
        if o.arrival_s is not None:
            latencies.append(o.arrival_s - o.job.submit_s)
            latency_by_priority[o.job.priority].append(o.arrival_s - o.job.submit_s)
    sent: dict[str, int] = defaultdict(int)
    for t in result.transfers:
        if t.ok:
            sent[f"{t.what}:{t.kind}"] += t.bytes
    up = sum(v for k, v in sent.items() if k.endswith(":ground_up"))
    down = sum(v for k, v in sent.items() if k.endswith(":ground_down"))
    isl = sum(v for k, v in sent.items() if k.endswith(":isl"))
    bentpipe_down = sum(o.job.input_bytes for o in result.outcomes
                        if isinstance(o.job.source, CaptureSource | OnboardSource))
    nodes = {n: {k: (_r(v) if isinstance(v, float) else v) for k, v in d.items()} for n, d in result.nodes.items()}
    used = {n: d for n, d in nodes.items() if d["jobs_run"]}
    min_soc_node = min(result.nodes, key=lambda n: (result.nodes[n]["min_soc"], n), default=None)
    errors = [f"{r.t_s:.3f}: {e}" for r in result.rounds for e in r.errors]
    disagree = store_disagreements(result)
    wall_rounds = [r.wall_s for r in result.rounds]
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "scenario": setup.name,
        "policy": setup.settings.policy,
        "seed": setup.seed,
        "start_utc": format_utc(cp.start_utc),
        "duration_s": cp.duration_s,
        "satellites": len(cp.constellation),
        "compute_nodes": len(setup.base_problem.profiles_by_node),
        "stations": len(cp.stations),
        "jobs": {
            "total": total,
            "by_priority": {str(p): by_priority[p] for p in sorted(by_priority)},
        },
        "deadline_hit_rate": _r(total["on_time"] / total["submitted"]) if total["submitted"] else None,
        "deadline_hit_rate_by_priority": {
            str(p): _r(c["on_time"] / c["submitted"]) for p, c in sorted(by_priority.items()) if c["submitted"]
        },
        "latency_s": _percentiles(latencies),
        "latency_s_by_priority": {str(p): _percentiles(v) for p, v in sorted(latency_by_priority.items())},
        "bytes": {
            "uplinked": up,
            "downlinked": down,
            "isl": isl,
            "model_uplinked": sent.get("model:ground_up", 0),
            "by_kind": dict(sorted(sent.items())),
            "failed_transfers": sum(1 for t in result.transfers if not t.ok),
            "bentpipe_downlink_equivalent": bentpipe_down,
            "bentpipe_uplink_equivalent": 0,
            "downlink_saved_vs_bentpipe": _r(1.0 - down / bentpipe_down) if bentpipe_down else None,
        },
        "energy": {
            "min_soc": _r(result.nodes[min_soc_node]["min_soc"]) if min_soc_node else None,
            "min_soc_node": min_soc_node,
            "jobs_wh": _r(sum(d["energy_jobs_wh"] for d in result.nodes.values())),
            "idle_wh": _r(sum(d["energy_idle_wh"] for d in result.nodes.values())),
        },
        "nodes_used": used,
        "nodes": nodes,
        "planner": {
            "rounds": len(result.rounds),
            "validator_errors": len(errors),
            "first_validator_errors": errors[:20],
            "scheduled_per_round_mean": _r(float(np.mean([r.scheduled for r in result.rounds])))
            if result.rounds else None,
        },
        "runs": {"count": sum(1 for r in result.runs if r.ok), "aborted": sum(1 for r in result.runs if not r.ok)},
        # The scheduler's own record (serve's store): final job states, and that they agree with the outcomes.
        "store": {
            "jobs": sum(1 for o in result.outcomes if o.state),
            "states": dict(sorted(Counter(o.state for o in result.outcomes if o.state).items())),
            "transition_batches": result.store_transition_calls,
            "disagreements": len(disagree),
            "first_disagreements": disagree[:20],
        },
        "faults": [{"kind": f.kind, "target": f.target, "other": f.other, "start_s": f.start_s,
                    "end_s": f.end_s if math.isfinite(f.end_s) else None} for f in setup.faults],
        "agents": {"mode": setup.settings.agent_mode, "started": result.agents_started,
                   "real_tiles_per_job": setup.settings.real_tiles_per_job},
        WALL_KEY: {
            "wall_s": _r(result.wall_s, 3),
            "contact_plan_s": _r(contact_plan_wall_s, 3),
            "sim_s_per_wall_s": _r(cp.duration_s / result.wall_s, 1) if result.wall_s > 0 else None,
            "planner_s_total": _r(sum(wall_rounds), 3),
            "planner_s_per_round": _percentiles(wall_rounds),
            "planner_s_each_round": [_r(w, 4) for w in wall_rounds],
            "validator_s_total": _r(sum(r.validate_wall_s for r in result.rounds), 3),
            "store_s_total": _r(result.store_wall_s, 3),
            "inference_real_ms_total": _r(result.inference_real_ms, 1),
        },
    }
    return report


def deterministic_part(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its wall-clock section (what must be identical across runs)."""
    return {k: v for k, v in report.items() if k != WALL_KEY}


def write_report(out_dir: Path, report: dict[str, Any], result: ReplayResult) -> None:
    """Write ``report.json`` and ``events.jsonl`` atomically into ``out_dir``."""
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2, sort_keys=False) + "\n")
    lines = [json.dumps(e, separators=(",", ":")) for e in result.events]
    write_atomic(out_dir / "events.jsonl", "\n".join(lines) + ("\n" if lines else ""))
