"""The replay-only sections of a scenario: ``policy``, ``solver``, ``agents`` and ``replay``.

Example::

    policy:
      name: cpsat                # cpsat | greedy | bentpipe
      replan_interval: 10m       # a planning round at least this often while work is pending
      min_replan_gap: 1m         # rounds triggered by arrivals and faults are at least this far apart
    solver: {time_limit_s: 5, workers: 1, seed: 1, deterministic: true}
    agents: {mode: inproc, real_tiles_per_job: 1, threads: 1}
    replay: {step_s: 60, soc_sample: 5m, czml_step: 2m, track_sats: 12}
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from skyinfer.config import Node
from skyinfer.errors import InputError
from skyinfer.replay.units import duration_s

POLICIES = ("cpsat", "greedy", "bentpipe")
AGENT_MODES = ("inproc", "process")


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """How a replay runs (all durations seconds of simulated time unless named ``_wall``)."""

    policy: str = "cpsat"
    replan_interval_s: float = 600.0
    min_replan_gap_s: float = 60.0
    time_limit_s: float = 5.0
    workers: int = 1
    solver_seed: int = 1
    # CP-SAT limits in deterministic time (same scenario and seed -> same plans whatever the machine's load).
    deterministic: bool = True
    agent_mode: str = "inproc"
    real_tiles_per_job: int = 1
    agent_threads: int = 1
    step_s: float = 60.0
    soc_sample_s: float = 300.0
    czml_step_s: float = 120.0
    track_sats: int = 12

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InputError(f"policy: expected one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.agent_mode not in AGENT_MODES:
            raise InputError(f"agents.mode: expected one of {', '.join(AGENT_MODES)}, got {self.agent_mode!r}")
        for name in ("replan_interval_s", "time_limit_s", "step_s", "soc_sample_s", "czml_step_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: must be positive, got {getattr(self, name)!r}")
        if self.min_replan_gap_s < 0:
            raise InputError(f"min_replan_gap_s: must be >= 0, got {self.min_replan_gap_s!r}")
        if not 1 <= self.workers <= 64:
            raise InputError(f"solver.workers: must be in [1, 64], got {self.workers!r}")
        if not 0 <= self.real_tiles_per_job <= 1024:
            raise InputError(f"agents.real_tiles_per_job: must be in [0, 1024], got {self.real_tiles_per_job!r}")

    def with_overrides(self, *, policy: str | None = None, agent_mode: str | None = None) -> ReplaySettings:
        return replace(self, policy=policy or self.policy, agent_mode=agent_mode or self.agent_mode)


def parse_settings(root: Node) -> ReplaySettings:
    """Read ``policy``, ``solver``, ``agents`` and ``replay`` from the scenario document (all optional)."""
    keys = root.value if isinstance(root.value, dict) else {}
    kw: dict[str, object] = {}
    pol = keys.get("policy")
    if pol is not None:
        if isinstance(pol.value, str):
            kw["policy"] = _policy_name(pol)
        else:
            m = pol.mapping(optional=("name", "replan_interval", "min_replan_gap"))
            if "name" in m:
                kw["policy"] = _policy_name(m["name"])
            if "replan_interval" in m:
                kw["replan_interval_s"] = duration_s(m["replan_interval"])
            if "min_replan_gap" in m:
                kw["min_replan_gap_s"] = duration_s(m["min_replan_gap"], allow_zero=True)
    sol = keys.get("solver")
    if sol is not None:
        m = sol.mapping(optional=("time_limit_s", "workers", "seed", "deterministic"))
        if "time_limit_s" in m:
            kw["time_limit_s"] = m["time_limit_s"].as_float(min_value=0.01, max_value=3600)
        if "workers" in m:
            kw["workers"] = m["workers"].as_int(min_value=1, max_value=64)
        if "seed" in m:
            kw["solver_seed"] = m["seed"].as_int(min_value=0)
        if "deterministic" in m:
            kw["deterministic"] = m["deterministic"].as_bool()
    ag = keys.get("agents")
    if ag is not None:
        m = ag.mapping(optional=("mode", "real_tiles_per_job", "threads"))
        if "mode" in m:
            mode = m["mode"].as_str()
            if mode not in AGENT_MODES:
                raise m["mode"].error(f"expected one of {', '.join(AGENT_MODES)}, got {mode!r}")
            kw["agent_mode"] = mode
        if "real_tiles_per_job" in m:
            kw["real_tiles_per_job"] = m["real_tiles_per_job"].as_int(min_value=0, max_value=1024)
        if "threads" in m:
            kw["agent_threads"] = m["threads"].as_int(min_value=1, max_value=64)
    rep = keys.get("replay")
    if rep is not None:
        m = rep.mapping(optional=("step_s", "soc_sample", "czml_step", "track_sats"))
        if "step_s" in m:
            kw["step_s"] = m["step_s"].as_float(min_value=1, max_value=600)
        if "soc_sample" in m:
            kw["soc_sample_s"] = duration_s(m["soc_sample"])
        if "czml_step" in m:
            kw["czml_step_s"] = duration_s(m["czml_step"])
        if "track_sats" in m:
            kw["track_sats"] = m["track_sats"].as_int(min_value=0, max_value=100_000)
    return ReplaySettings(**kw)  # type: ignore[arg-type]


def _policy_name(node: Node) -> str:
    name = node.as_str()
    if name not in POLICIES:
        raise node.error(f"expected one of {', '.join(POLICIES)}, got {name!r}")
    return name
