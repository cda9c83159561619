"""The one place replay meets the other packages: scenario, contact plan, problem, planner, validator, agents.

Everything the engine needs from the scheduler's planning core and the node
agent goes through the functions and classes here, so that an API change over
there is one edit here; the scheduler service (store, job service, planning
loop) is behind :mod:`skyinfer.replay.service`. The engine itself only sees
those two modules and the plain domain types of :mod:`scheduler.types` and
:mod:`scheduler.store`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from orbit.contact_plan import ContactPlan
from scheduler.types import CaptureSource, Hop, Job, ModelSpec, NodeProfile, Plan, Problem, gflop_per_inference
from skyinfer.errors import InputError, SkyinferError
from skyinfer.scenario import Scenario

log = logging.getLogger(__name__)
GROUND_NODE = "ground"
CSMASK_PATH = "csmask"
ProgressFn = Callable[[float, float, str], None]
# In-process agents alive at once (each holds onnxruntime sessions); the least recently used goes first.
MAX_INPROC_AGENTS = 16


# -- contact plan and problem ---------------------------------------------------------------------

def build_contact_plan_for(scenario: Scenario, step_s: float, progress: ProgressFn | None = None) -> ContactPlan:
    """The scenario's contact plan over its whole window (sunlight always on: replay needs the battery)."""
    from orbit.build import build_contact_plan

    if scenario.start_utc is None or scenario.duration_s is None:
        raise InputError(f"{scenario.path}: start, duration: a replay needs both")
    return build_contact_plan(scenario.constellation, scenario.stations, scenario.start_utc, scenario.duration_s,
                              isl=scenario.isl, sunlight=True, step_s=step_s, progress=progress)


def build_base_problem(scenario: Scenario, contact_plan: ContactPlan) -> tuple[Problem, tuple[Job, ...]]:
    """Node profiles and models from the scenario (``nodes``, ``models``) with no jobs, and its explicit ``jobs``."""
    from scheduler.problem import build_problem

    problem = build_problem(scenario, contact_plan)
    return replace(problem, jobs=(), fixed=(), now_s=0.0), problem.jobs


def link_rates_bps(problem: Problem) -> np.ndarray:
    """Rate of every contact of ``problem.contact_plan.contacts()`` (bits/s; 0 where unusable)."""
    from scheduler.routing import link_capacities

    rates, _ = link_capacities(problem)
    return rates


def capture_passes(problem: Problem, sources: list[CaptureSource]
                   ) -> dict[tuple[float, float, float], list[tuple[str, float]]]:
    """``(satellite, tca_s)`` of every pass that images each target, sorted by time.

    Keyed by ``(latitude_deg, longitude_deg, min_elevation_deg)``; one propagation for all targets.
    """
    from scheduler.feasibility import capture_events_many

    return capture_events_many(problem, sources)


def route_now(problem: Problem, src: str, t0_s: float, size_bytes: int, destination: str | None,
              deadline_s: float) -> tuple[Hop, ...] | None:
    """Earliest-arrival route of a result stranded on ``src`` to its destination (any station: None)."""
    from scheduler.routing import earliest_arrival, station_nodes

    targets = [f"gs:{destination}"] if destination else list(station_nodes(problem))
    if not targets or src not in problem.contact_plan.node_names():
        return None
    routes = earliest_arrival(problem, src, t0_s, size_bytes, targets=targets, horizon_s=max(deadline_s, t0_s)
                              if math.isfinite(deadline_s) else math.inf)
    best = min((r for r in routes.values() if r.node in targets), key=lambda r: (r.arrival_s, r.node), default=None)
    return best.hops if best is not None else None


# -- planner --------------------------------------------------------------------------------------
# Planning rounds go through serve's planning loop (skyinfer.replay.service); the validator checks each.

def validate_round(problem: Problem, plan: Plan) -> tuple[tuple[str, ...], float]:
    """The scheduler's plan validator on one round's plan: its errors (none for a valid plan) and wall time (s)."""
    from scheduler.validator import validate_plan

    t0 = time.perf_counter()
    errors = tuple(validate_plan(problem, plan))
    return errors, time.perf_counter() - t0


# -- models and agents ----------------------------------------------------------------------------

def build_tiny_cnn(path: Path, model_id: str, *, channels: int = 3, size_px: int = 64, classes: int = 4) -> None:
    """Write a small real CNN (conv 3x3 -> relu -> global average pool -> dense -> softmax) as ONNX.

    Weights are drawn from a generator seeded by ``model_id``, so the same id
    always gives the same bytes. Input ``tile``: float32 (N, channels, size_px, size_px).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    seed = int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    hidden = 8
    w1 = rng.normal(0, 0.2, (hidden, channels, 3, 3)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.normal(0, 0.2, (hidden, classes)).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("Conv", ["tile", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g1"]),
        helper.make_node("Flatten", ["g1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, model_id.replace("@", "_"),
        [helper.make_tensor_value_info("tile", TensorProto.FLOAT, ["N", channels, size_px, size_px])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="skyinfer-replay")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def model_files(models: dict[str, ModelSpec], out_dir: Path) -> dict[str, Path]:
    """The ONNX file of every model: its ``path`` when given, else a small CNN built into ``out_dir/models``.

    ``path: csmask`` names DLR's cloud mask from the installed ``ukis-csmask`` package (the built CNN
    stands in, with a warning, when it is not installed).
    """
    out: dict[str, Path] = {}
    for model_id, spec in sorted(models.items()):
        if spec.path and Path(spec.path).name == CSMASK_PATH and not Path(spec.path).exists():
            from node_agent.models import find_csmask_model

            found = find_csmask_model()
            if found is not None:
                out[model_id] = found
                continue
            log.warning("model %s: ukis-csmask is not installed (pip install 'skyinfer[models]'); "
                        "running a built CNN with the declared cost instead", model_id)
        elif spec.path:
            p = Path(spec.path)
            if not p.is_file():
                raise InputError(f"model {model_id!r}: path: {p}: no such file")
            out[model_id] = p
            continue
        p = out_dir / "models" / f"{model_id.replace('@', '_')}.onnx"
        if not p.is_file():
            build_tiny_cnn(p, model_id)
        out[model_id] = p
    return out


@dataclass(frozen=True, slots=True)
class InferenceRun:
    """One job's inference on an agent: emulated duration (drives the clock) and real time spent here."""

    emulated_s: float
    real_ms: float
    tiles_run: int
    output_digest: str


class AgentPool:
    """In-process node agents (:class:`node_agent.agent.Agent`), created when first needed.

    Each job runs ``real_tiles`` real inferences on random tiles (seeded by
    the job id) and reports the emulated duration of all of the job's tiles:
    the agent's emulated time per tile x ``tiles``. The clock never sleeps.

    Nodes of one profile share one in-process agent: with a simulated clock
    an agent keeps no per-node state a run depends on, and one onnxruntime
    session per (profile, model) instead of one per satellite keeps a
    188-satellite replay of a 40 MB model within memory. A node whose agent
    is killed gets an agent of its own from then on (its restart), so a kill
    never touches the other nodes.
    """

    def __init__(self, root: Path, models: dict[str, ModelSpec], files: dict[str, Path],
                 profiles: dict[str, NodeProfile], *, real_tiles: int, threads: int) -> None:
        self.root = root
        self.models = models
        self.files = files
        self.profiles = profiles
        self.real_tiles = real_tiles
        self.threads = threads
        self._agents: dict[str, object] = {}
        self._own: set[str] = set()
        self.started = 0
        self.killed = 0

    def _key(self, node: str, profile: NodeProfile) -> str:
        return node if node in self._own or node == GROUND_NODE else f"profile:{profile.name}"

    def _agent(self, node: str, profile: NodeProfile) -> object:
        key = self._key(node, profile)
        agent = self._agents.pop(key, None)
        if agent is None:
            from node_agent.agent import Agent
            from node_agent.config import AgentConfig

            while len(self._agents) >= MAX_INPROC_AGENTS:
                self._agents.pop(next(iter(self._agents)))  # least recently used: its sessions are freed
            # Agent ids allow letters, digits and ._-() and spaces; catalog names may hold more (FLOCK 3P'-4).
            agent_id = "".join(ch if ch.isalnum() or ch in "._-() " else "_" for ch in key.removeprefix("profile:"))
            agent_id = agent_id or "node"
            # One model store on disk for every in-process agent (one machine): a 40 MB model is not copied
            # once per satellite. It survives agent restarts as a node's own store would.
            config = AgentConfig(node_id=agent_id, profile=profile, models_dir=self.root / "store",
                                 simulated_clock=True, intra_op_threads=self.threads, memory_limit_bytes=None)
            agent = Agent(config)
            agent.load_store()
            agent.serving = True
            self.started += 1
        self._agents[key] = agent  # re-inserted: the dict's order is least recently used first
        return agent

    def kill(self, node: str) -> None:
        """The node's agent process dies: its sessions go; the model store on disk stays."""
        self._agents.pop(node, None)
        self._own.add(node)  # restarted, it is the node's own agent
        self.killed += 1

    def infer(self, node: str, profile: NodeProfile, job: Job, profiles: dict[str, NodeProfile]) -> InferenceRun:
        spec = self.models[job.model_id]
        gflop = gflop_per_inference(spec, profiles)
        if self.real_tiles == 0:
            return InferenceRun(job.tiles * gflop / profile.compute_gflops, 0.0, 0, "")
        agent = self._agent(node, profile)
        try:
            loaded = {m.model_id for m in agent.list_models()}  # type: ignore[attr-defined]
            if job.model_id not in loaded:
                agent.load_model_file(job.model_id, self.files[job.model_id],  # type: ignore[attr-defined]
                                      memory_bytes=spec.memory_bytes, gflop_per_inference=gflop)
            feeds = agent.zero_inputs(job.model_id)  # type: ignore[attr-defined]
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(job.job_id.encode()).digest()[:8], "little"))
            n = min(self.real_tiles, job.tiles)
            real_ms = 0.0
            per_tile_ms = 0.0
            digest = hashlib.sha256()
            for _ in range(n):
                tile = {k: (rng.random(v.shape, dtype=np.float32).astype(v.dtype) if v.dtype.kind == "f" else v)
                        for k, v in feeds.items()}
                outcome = agent.infer(job.model_id, tile, simulated_clock=True)  # type: ignore[attr-defined]
                real_ms += outcome.real_ms
                per_tile_ms = outcome.emulated_ms
                for name in sorted(outcome.outputs):
                    digest.update(np.argmax(outcome.outputs[name].reshape(-1)).tobytes())
        except SkyinferError as exc:
            raise AgentFailure(f"agent {node!r}: {exc}") from exc
        return InferenceRun(job.tiles * per_tile_ms / 1000.0, real_ms, n, digest.hexdigest()[:16])


class AgentFailure(SkyinferError):
    """An agent refused or failed a job (the job fails with this reason)."""


def ground_profile(ground_gflops: float) -> NodeProfile:
    """A profile for the bent-pipe ground processing node (a cloud region: many slots, no battery limit)."""
    return NodeProfile(name="ground", compute_gflops=ground_gflops, memory_bytes=10**12, slots=64,
                       active_power_w=0.0, idle_power_w=0.0, battery_wh=1.0, solar_w=0.0, min_soc=0.0,
                       uplink_bps=(("default", 1.0),), downlink_bps=(("default", 1.0),), isl_bps=0.0)
