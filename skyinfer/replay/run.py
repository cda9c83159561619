"""Prepare a scenario for replay, play it with one or several policies, write the outputs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from skyinfer.errors import InputError
from skyinfer.replay.adapter import AgentPool, build_base_problem, build_contact_plan_for, model_files
from skyinfer.replay.engine import Engine, ReplayResult, ReplaySetup
from skyinfer.replay.faults import check_fault_targets, parse_faults
from skyinfer.replay.report import build_report, write_report
from skyinfer.replay.service import DB_NAME, ReplayScheduler
from skyinfer.replay.settings import ReplaySettings, parse_settings
from skyinfer.replay.workload import parse_workload
from skyinfer.scenario import Scenario, load_scenario

ProgressFn = Callable[[float, float, str], None]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A scenario ready to replay: its setup (shared by every policy) and the time spent building it."""

    scenario: Scenario
    setup: ReplaySetup
    contact_plan_wall_s: float


def prepare(path: str | Path, *, seed: int | None = None, policy: str | None = None, agent_mode: str | None = None,
            progress: ProgressFn | None = None) -> Prepared:
    """Load the scenario, build its contact plan and problem, draw its workload and read its faults."""
    from scheduler.problem import parse_jobs

    scenario = load_scenario(path)
    root = scenario.root
    sections = root.value if root.is_mapping() else {}
    settings = parse_settings(root).with_overrides(policy=policy, agent_mode=agent_mode)
    if scenario.start_utc is None or scenario.duration_s is None:
        raise root.error("start, duration: a replay needs both")
    t0 = time.perf_counter()
    cp = build_contact_plan_for(scenario, settings.step_s, progress)
    cp_wall_s = time.perf_counter() - t0
    base, explicit = build_base_problem(scenario, cp)
    stations = {s.name: s for s in cp.stations}
    sats = set(cp.constellation.names)
    workload = parse_workload(
        sections.get("workload"), scenario.start_utc,
        parse_jobs=partial(parse_jobs, epoch_utc=cp.start_utc, duration_s=cp.duration_s, models=base.models,
                           satellites=sats, stations=stations),
    )
    for gen in workload.generators:
        if gen.model_id not in base.models:
            raise InputError(f"{gen.where}: model: unknown model {gen.model_id!r}; define it under models")
        for st in (gen.station, gen.destination):
            if st is not None and st not in stations:
                raise InputError(f"{gen.where}: unknown ground station {st!r}")
        for sat in gen.satellites:
            if sat not in sats:
                raise InputError(f"{gen.where}: satellites: unknown satellite {sat!r}")
    use_seed = workload.seed if seed is None else seed
    profiled = tuple(n for n in cp.constellation.names if n in base.profiles_by_node)
    generated = workload.generate(cp.duration_s, seed=use_seed, satellites=profiled)
    jobs = tuple(sorted(explicit + generated, key=lambda j: (j.submit_s, j.job_id)))
    if len({j.job_id for j in jobs}) != len(jobs):
        raise InputError(f"{scenario.path}: jobs: the same job id appears in jobs and workload")
    faults = parse_faults(sections.get("faults"), scenario.start_utc)
    check_fault_targets(faults, cp.constellation.names, tuple(s.name for s in cp.stations))
    setup = ReplaySetup(scenario.name, cp, base, jobs, faults, settings, use_seed)
    return Prepared(scenario, setup, cp_wall_s)


def play(prepared: Prepared, out_dir: Path, *, policy: str | None = None, progress: ProgressFn | None = None,
         speed: float | None = None) -> tuple[ReplayResult, dict[str, Any]]:
    """Replay with ``policy`` (default: the scenario's); write report.json, events.jsonl and the scheduler's
    store (``replay.db``) into ``out_dir``."""
    setup = prepared.setup
    if policy is not None:
        setup = replace(setup, settings=replace(setup.settings, policy=policy))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings: ReplaySettings = setup.settings
    files = model_files(setup.base_problem.models, out_dir)
    agent_root = out_dir / "agents"
    if agent_root.exists():
        shutil.rmtree(agent_root)  # a fresh fleet each run: stores from an earlier run must not leak in
    if settings.agent_mode == "process":
        from skyinfer.replay.procagents import ProcessAgentPool

        pool: AgentPool = ProcessAgentPool(agent_root, setup.base_problem.models, files,
                                           setup.base_problem.profiles_by_node,
                                           real_tiles=settings.real_tiles_per_job, threads=settings.agent_threads)
    else:
        pool = AgentPool(agent_root, setup.base_problem.models, files, setup.base_problem.profiles_by_node,
                         real_tiles=settings.real_tiles_per_job, threads=settings.agent_threads)
    # The scheduler's store is kept in DIR: the same SQLite file serve keeps (``--db``), with every job's
    # transitions, results and the last plan, to inspect or audit after the run.
    scheduler = ReplayScheduler(setup.base_problem, out_dir / DB_NAME, settings)
    try:
        result = Engine(setup, pool, scheduler, progress=progress, speed=speed).run()
    finally:
        scheduler.close()
        close = getattr(pool, "close", None)
        if close is not None:
            close()
    report = build_report(result, contact_plan_wall_s=prepared.contact_plan_wall_s)
    write_report(out_dir, report, result)
    return result, report
