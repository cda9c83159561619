"""Domain types of the planner: models, node profiles, jobs, candidates and plans.

All times inside the planner are seconds (float) after ``Problem.epoch_utc``;
sizes are bytes, rates bits per second, power watts, energy watt-hours.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from orbit.contact_plan import ContactPlan
from skyinfer.errors import InputError

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*@[A-Za-z0-9][A-Za-z0-9_.\-]*$")
MAX_BYTES = 10**15  # 1 PB: anything larger is a unit mistake


def _finite(where: str, name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: {name}: expected a finite number, got {value!r}")
    if lo is not None and value < lo:
        raise InputError(f"{where}: {name}: must be >= {lo:g}, got {value!r}")
    if hi is not None and value > hi:
        raise InputError(f"{where}: {name}: must be <= {hi:g}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """An ONNX model the nodes can run.

    Compute per inference is ``gflop_per_inference``; when only a measurement is
    known, ``reference_ms`` on ``reference_profile`` is converted by the planner
    with that profile's ``compute_gflops``.
    """

    model_id: str  # name@version
    size_bytes: int
    sha256: str
    memory_bytes: int
    gflop_per_inference: float | None = None
    reference_ms: float | None = None
    reference_profile: str | None = None
    path: str | None = None  # ONNX file, when the agents are to load it

    def __post_init__(self) -> None:
        where = f"model {self.model_id!r}"
        if not MODEL_ID_RE.match(self.model_id):
            raise InputError(f"{where}: id: expected name@version (letters, digits, ._-), got {self.model_id!r}")
        _finite(where, "size_bytes", self.size_bytes, 1, MAX_BYTES)
        _finite(where, "memory_bytes", self.memory_bytes, 1, MAX_BYTES)
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise InputError(f"{where}: sha256: expected 64 lowercase hex digits")
        if self.gflop_per_inference is None and self.reference_ms is None:
            raise InputError(f"{where}: give gflop_per_inference or reference_ms with reference_profile")
        if self.gflop_per_inference is not None:
            _finite(where, "gflop_per_inference", self.gflop_per_inference, 1e-9, 1e9)
        if self.reference_ms is not None:
            _finite(where, "reference_ms", self.reference_ms, 1e-6, 1e9)
            if not self.reference_profile:
                raise InputError(f"{where}: reference_profile: required with reference_ms")

    @property
    def name(self) -> str:
        return self.model_id.split("@", 1)[0]


@dataclass(frozen=True, slots=True)
class NodeProfile:
    """What a satellite's computer can do: compute, memory, power and links.

    Rates are bits per second. ``uplink_bps``/``downlink_bps`` map a ground
    station class to a rate (key ``"default"`` for any class not listed).
    """

    name: str
    compute_gflops: float  # effective sustained GFLOP/s for inference
    memory_bytes: int
    slots: int
    active_power_w: float
    idle_power_w: float
    battery_wh: float
    solar_w: float
    min_soc: float  # fraction of battery_wh, 0..1
    uplink_bps: tuple[tuple[str, float], ...]
    downlink_bps: tuple[tuple[str, float], ...]
    isl_bps: float
    resident_models: tuple[str, ...] = ()
    initial_soc: float = 1.0
    storage_bytes: int = 10**12

    def __post_init__(self) -> None:
        where = f"node profile {self.name!r}"
        if not self.name:
            raise InputError("node profile: name: must not be empty")
        _finite(where, "compute_gflops", self.compute_gflops, 1e-6, 1e9)
        _finite(where, "memory_bytes", self.memory_bytes, 1, MAX_BYTES)
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or not 1 <= self.slots <= 1024:
            raise InputError(f"{where}: slots: must be an integer in [1, 1024], got {self.slots!r}")
        _finite(where, "idle_power_w", self.idle_power_w, 0, 1e6)
        _finite(where, "active_power_w", self.active_power_w, self.idle_power_w, 1e6)
        _finite(where, "battery_wh", self.battery_wh, 1e-3, 1e7)
        _finite(where, "solar_w", self.solar_w, 0, 1e6)
        _finite(where, "min_soc", self.min_soc, 0, 1)
        _finite(where, "initial_soc", self.initial_soc, self.min_soc, 1)
        _finite(where, "isl_bps", self.isl_bps, 0, 1e13)
        for label, rates in (("uplink_bps", self.uplink_bps), ("downlink_bps", self.downlink_bps)):
            if not rates:
                raise InputError(f"{where}: {label}: give at least one station class (e.g. default)")
            for cls, rate in rates:
                _finite(where, f"{label}.{cls}", rate, 1, 1e13)

    def uplink_rate_bps(self, station_class: str) -> float:
        return _rate_for(self.uplink_bps, station_class)

    def downlink_rate_bps(self, station_class: str) -> float:
        return _rate_for(self.downlink_bps, station_class)

    def seconds_for(self, model: ModelSpec, tiles: int, profiles: dict[str, NodeProfile] | None = None) -> float:
        """Emulated compute time of ``tiles`` inferences of ``model`` on this profile."""
        return tiles * gflop_per_inference(model, profiles) / self.compute_gflops


def _rate_for(rates: tuple[tuple[str, float], ...], station_class: str) -> float:
    table = dict(rates)
    if station_class in table:
        return table[station_class]
    return table.get("default", 0.0)


def gflop_per_inference(model: ModelSpec, profiles: dict[str, NodeProfile] | None = None) -> float:
    """GFLOP per inference, converting a reference measurement when needed."""
    if model.gflop_per_inference is not None:
        return model.gflop_per_inference
    assert model.reference_ms is not None and model.reference_profile is not None
    ref = (profiles or {}).get(model.reference_profile) or BUILTIN_PROFILES.get(model.reference_profile)
    if ref is None:
        raise InputError(f"model {model.model_id!r}: reference_profile: unknown profile {model.reference_profile!r}")
    return model.reference_ms / 1000.0 * ref.compute_gflops


# Built-in profiles, figures from shared domain notes (see docs/profiles.md for sources).
# Effective GFLOP/s are sustained fp32/int8 figures for CNN inference, well below marketing TOPS.
BUILTIN_PROFILES: dict[str, NodeProfile] = {
    # CubeSat-class node (OEC nanosatellite: 2-8 W budget, 7.1 W peak; ASPLOS 2020).
    "cubesat": NodeProfile(
        name="cubesat", compute_gflops=20.0, memory_bytes=2 * 1024**3, slots=1, active_power_w=7.1,
        idle_power_w=2.0, battery_wh=40.0, solar_w=8.0, min_soc=0.7,
        uplink_bps=(("default", 1e6),), downlink_bps=(("default", 160e6), ("s-band", 2e6)), isl_bps=0.0,
    ),
    # Jetson AGX Orin-class node: up to 275 TOPS (sparse int8) at 15-60 W.
    "jetson-orin": NodeProfile(
        name="jetson-orin", compute_gflops=2_000.0, memory_bytes=32 * 1024**3, slots=2, active_power_w=40.0,
        idle_power_w=15.0, battery_wh=200.0, solar_w=60.0, min_soc=0.7,
        uplink_bps=(("default", 2e6),), downlink_bps=(("default", 220e6), ("s-band", 2e6)), isl_bps=1e9,
    ),
    # Three-Body Computing Constellation node (ADA Space): 744 TOPS, 100 Gb/s laser ISL.
    "three-body-744tops": NodeProfile(
        name="three-body-744tops", compute_gflops=100_000.0, memory_bytes=128 * 1024**3, slots=4,
        active_power_w=600.0, idle_power_w=150.0, battery_wh=2_000.0, solar_w=1_200.0, min_soc=0.7,
        uplink_bps=(("default", 10e6),), downlink_bps=(("default", 1e9), ("s-band", 2e6)), isl_bps=100e9,
        storage_bytes=30 * 10**12,
    ),
}


@dataclass(frozen=True, slots=True)
class CaptureSource:
    """Input imaged by whichever satellite passes over a ground target."""

    latitude_deg: float
    longitude_deg: float
    min_elevation_deg: float = 30.0
    kind: Literal["capture"] = "capture"


@dataclass(frozen=True, slots=True)
class UplinkSource:
    """Input sent from a ground station (``station`` None: any station)."""

    station: str | None = None
    kind: Literal["uplink"] = "uplink"


@dataclass(frozen=True, slots=True)
class OnboardSource:
    """Input already stored on a named satellite at submit time."""

    satellite: str
    kind: Literal["onboard"] = "onboard"


JobSource = CaptureSource | UplinkSource | OnboardSource


@dataclass(frozen=True, slots=True)
class Job:
    """One inference job: ``tiles`` inferences of ``model_id`` on ``input_bytes`` of data.

    ``submit_s`` and ``deadline_s`` are seconds after the problem epoch; the
    result (``output_bytes``) must reach ``destination`` (None: any station) by
    the deadline. ``priority`` is the objective weight (>= 1).
    """

    job_id: str
    model_id: str
    priority: int
    submit_s: float
    deadline_s: float
    input_bytes: int
    output_bytes: int
    tiles: int
    source: JobSource
    destination: str | None = None

    def __post_init__(self) -> None:
        where = f"job {self.job_id!r}"
        if not self.job_id:
            raise InputError("job: job_id: must not be empty")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not 1 <= self.priority <= 1000:
            raise InputError(f"{where}: priority: must be an integer in [1, 1000], got {self.priority!r}")
        _finite(where, "submit_s", self.submit_s)
        _finite(where, "deadline_s", self.deadline_s)
        if self.deadline_s <= self.submit_s:
            raise InputError(f"{where}: deadline: before (or at) submit time")
        _finite(where, "input_bytes", self.input_bytes, 0, MAX_BYTES)
        _finite(where, "output_bytes", self.output_bytes, 0, MAX_BYTES)
        if isinstance(self.tiles, bool) or not isinstance(self.tiles, int) or not 1 <= self.tiles <= 10**7:
            raise InputError(f"{where}: tiles: must be an integer in [1, 10000000], got {self.tiles!r}")


@dataclass(frozen=True, slots=True)
class Hop:
    """One transmission of ``bytes`` from ``src`` to ``dst`` during ``[start_s, end_s]`` of contact ``contact``."""

    src: str
    dst: str
    start_s: float
    end_s: float
    bytes: int
    contact: int  # index into Problem.contacts


@dataclass(frozen=True, slots=True)
class Candidate:
    """A feasible way to run ``job`` on ``node``: start in [release_s, latest_start_s].

    ``input_route`` brings input (and ``model_route`` the model, when not
    resident) to the node by ``release_s``; the result leaves on
    ``output_route``, which is usable if the job ends by ``latest_end_s``, and
    reaches the ground at ``max(end, output_ready_s) + output_transfer_s``.
    ``energy_wh`` is the extra energy above idle the run costs.
    """

    job_id: str
    node: str
    release_s: float
    latest_start_s: float
    duration_s: float
    latest_end_s: float
    energy_wh: float
    input_route: tuple[Hop, ...]
    output_route: tuple[Hop, ...]
    model_route: tuple[Hop, ...] = ()
    output_ready_s: float = 0.0  # earliest the first output hop can start
    output_transfer_s: float = 0.0  # time from output start to arrival on the ground


@dataclass(frozen=True, slots=True)
class Unschedulable:
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Problem:
    """Everything a planner needs.

    ``profiles_by_node`` maps a satellite name to its node profile; satellites
    without one carry no compute (they may still relay). ``fixed`` lists
    placements that must be kept (running jobs in a re-plan).
    """

    epoch_utc: datetime
    contact_plan: ContactPlan
    profiles_by_node: dict[str, NodeProfile]
    models: dict[str, ModelSpec]
    jobs: tuple[Job, ...]
    ground_gflops: float = 50_000.0  # ground processing for the bent-pipe baseline
    now_s: float = 0.0
    fixed: tuple[ScheduledJob, ...] = ()


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    job_id: str
    node: str  # satellite name, or "ground" for bent-pipe
    start_s: float
    end_s: float
    arrival_s: float  # result on the ground
    input_route: tuple[Hop, ...]
    output_route: tuple[Hop, ...]
    model_route: tuple[Hop, ...] = ()
    energy_wh: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """A planner's answer: every job either scheduled or unschedulable with a reason."""

    policy: str
    scheduled: tuple[ScheduledJob, ...]
    unschedulable: tuple[Unschedulable, ...]
    objective: float
    bound: float
    wall_s: float = 0.0
    status: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gap(self) -> float:
        """Relative gap between objective and proven bound (0 when proven optimal)."""
        if self.bound == 0:
            return 0.0
        return abs(self.bound - self.objective) / max(abs(self.bound), 1e-9)
