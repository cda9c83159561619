"""Workloads for replay: an explicit job list and seeded generators.

A scenario's ``workload`` section lists jobs one by one (``jobs:``, the schema
of the top-level ``jobs`` section, which replay also plays) and/or
describes generators (``generators:``) that draw Poisson arrivals, capture
targets from the bundled list of real cities and regions (``cities.csv``),
priorities, deadlines and sizes from one seed. The same section and seed
always give the same jobs, in the same order (sorted by submit time, then id).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import numpy as np

from scheduler.types import CaptureSource, Job, JobSource, OnboardSource, UplinkSource
from skyinfer.config import Node
from skyinfer.errors import InputError
from skyinfer.replay.units import Range, offset_s, range_of

SOURCE_KINDS = ("capture", "uplink", "onboard")
DEFAULT_CAPTURE_MIN_ELEVATION_DEG = 30.0  # off-nadir limit of a typical EO imager (~60 deg from nadir)


@dataclass(frozen=True, slots=True)
class City:
    """A capture target from ``cities.csv`` (WGS84 degrees)."""

    name: str
    country: str
    region: str
    latitude_deg: float
    longitude_deg: float

    def __post_init__(self) -> None:
        if not -90.0 <= self.latitude_deg <= 90.0:
            raise InputError(f"city {self.name!r}: latitude_deg: out of [-90, 90]")
        if not -180.0 <= self.longitude_deg <= 180.0:
            raise InputError(f"city {self.name!r}: longitude_deg: out of [-180, 180]")


def load_cities() -> tuple[City, ...]:
    """The bundled list of real cities and regions (``skyinfer/replay/cities.csv``)."""
    text = resources.files("skyinfer.replay").joinpath("cities.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return tuple(
        City(r["name"], r["country"], r["region"], float(r["latitude_deg"]), float(r["longitude_deg"]))
        for r in rows
    )


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A share of a generator's jobs with one priority (and optionally its own deadline range)."""

    priority: int
    share: float
    deadline_s: Range | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.priority <= 1000:
            raise InputError(f"priority class: priority: must be in [1, 1000], got {self.priority}")
        if not self.share > 0:
            raise InputError(f"priority class: share: must be > 0, got {self.share}")


@dataclass(frozen=True, slots=True)
class Generator:
    """Poisson arrivals of one kind of job.

    ``rate_per_h`` is the mean number of arrivals per hour within
    ``[start_s, end_s)`` (seconds after the scenario start; ``end_s`` None:
    the scenario end). Each job draws its priority class by share, its
    deadline (relative to submit), sizes and tile count uniformly from the
    ranges, and for ``capture`` a target city from ``targets``.
    """

    name: str
    rate_per_h: float
    model_id: str
    source: str
    priorities: tuple[PriorityClass, ...]
    deadline_s: Range
    input_bytes: Range
    output_bytes: Range
    tiles: Range
    start_s: float = 0.0
    end_s: float | None = None
    targets: tuple[City, ...] = ()
    min_elevation_deg: float = DEFAULT_CAPTURE_MIN_ELEVATION_DEG
    station: str | None = None
    satellites: tuple[str, ...] = ()
    destination: str | None = None
    where: str = ""

    def __post_init__(self) -> None:
        where = self.where or f"generator {self.name!r}"
        if not self.rate_per_h >= 0 or not math.isfinite(self.rate_per_h):
            raise InputError(f"{where}: rate_per_h: must be a finite number >= 0")
        if self.source not in SOURCE_KINDS:
            raise InputError(f"{where}: source: expected one of {', '.join(SOURCE_KINDS)}, got {self.source!r}")
        if self.source == "capture" and not self.targets:
            raise InputError(f"{where}: targets: no capture target selected")
        if not self.priorities:
            raise InputError(f"{where}: priorities: give at least one class")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise InputError(f"{where}: end: must be after start")


@dataclass(frozen=True, slots=True)
class Workload:
    """Explicit jobs plus generators, and the seed the generators draw from."""

    jobs: tuple[Job, ...] = ()
    generators: tuple[Generator, ...] = ()
    seed: int = 0

    def generate(self, duration_s: float, *, seed: int | None = None, satellites: tuple[str, ...] = ()
                 ) -> tuple[Job, ...]:
        """All jobs of the scenario, sorted by (submit_s, job_id).

        ``seed`` overrides the workload's seed; ``satellites`` are the
        candidates of ``onboard`` generators that name none.
        """
        s = self.seed if seed is None else seed
        out = list(self.jobs)
        for index, gen in enumerate(self.generators):
            rng = np.random.default_rng([s, index])
            out.extend(generate_jobs(gen, rng, duration_s, satellites))
        ids: dict[str, Job] = {}
        for job in out:
            if job.job_id in ids:
                raise InputError(f"workload: job id {job.job_id!r} appears twice")
            ids[job.job_id] = job
        out.sort(key=lambda j: (j.submit_s, j.job_id))
        return tuple(out)


def generate_jobs(gen: Generator, rng: np.random.Generator, duration_s: float,
                  satellites: tuple[str, ...] = ()) -> list[Job]:
    """Jobs of one generator: Poisson arrivals (exponential gaps) over its window."""
    end_s = min(gen.end_s if gen.end_s is not None else duration_s, duration_s)
    if gen.rate_per_h <= 0 or end_s <= gen.start_s:
        return []
    mean_gap_s = 3600.0 / gen.rate_per_h
    shares = np.array([c.share for c in gen.priorities], dtype=float)
    shares /= shares.sum()
    sats = gen.satellites or satellites
    if gen.source == "onboard" and not sats:
        raise InputError(f"{gen.where or gen.name}: satellites: no satellite to hold onboard input")
    jobs: list[Job] = []
    t_s = gen.start_s
    while True:
        t_s += float(rng.exponential(mean_gap_s))
        if t_s >= end_s:
            break
        cls = gen.priorities[int(rng.choice(len(shares), p=shares))]
        deadline = cls.deadline_s or gen.deadline_s
        rel_deadline_s = _draw(rng, deadline)
        source: JobSource
        if gen.source == "capture":
            city = gen.targets[int(rng.integers(len(gen.targets)))]
            source = CaptureSource(city.latitude_deg, city.longitude_deg, gen.min_elevation_deg)
        elif gen.source == "uplink":
            source = UplinkSource(gen.station)
        else:
            source = OnboardSource(sats[int(rng.integers(len(sats)))])
        submit_s = round(t_s, 3)
        jobs.append(Job(
            job_id=f"{gen.name}-{len(jobs):05d}",
            model_id=gen.model_id,
            priority=cls.priority,
            submit_s=submit_s,
            deadline_s=round(submit_s + max(rel_deadline_s, 1.0), 3),
            input_bytes=int(_draw(rng, gen.input_bytes)),
            output_bytes=int(_draw(rng, gen.output_bytes)),
            tiles=max(1, round(_draw(rng, gen.tiles))),
            source=source,
            destination=gen.destination,
        ))
    return jobs


def _draw(rng: np.random.Generator, r: Range) -> float:
    # Always draw, even for a constant, so that changing one range does not shift every later draw.
    u = float(rng.random())
    return r.low + u * (r.high - r.low)


# -- parsing -------------------------------------------------------------------------------------

_GEN_KEYS_REQUIRED = ("name", "rate_per_h", "model")
_GEN_KEYS_OPTIONAL = ("source", "start", "end", "priorities", "priority", "deadline", "input_bytes",
                      "output_bytes", "tiles", "targets", "min_elevation_deg", "station", "satellites",
                      "destination")


def parse_workload(node: Node | None, epoch_utc: datetime, *, cities: tuple[City, ...] | None = None,
                   parse_jobs: Callable[[Node], tuple[Job, ...]] | None = None) -> Workload:
    """Parse a scenario's ``workload`` section (None: an empty workload).

    ``workload.jobs`` has the schema of the top-level ``jobs`` section
    (:func:`scheduler.problem.parse_jobs`); ``parse_jobs`` reads it.
    """
    if node is None:
        return Workload()
    m = node.mapping(optional=("seed", "jobs", "generators"))
    seed = m["seed"].as_int(min_value=0) if "seed" in m else 0
    jobs: tuple[Job, ...] = ()
    if "jobs" in m:
        if parse_jobs is None:
            raise m["jobs"].error("explicit jobs need the scenario's models and stations (internal error)")
        jobs = parse_jobs(m["jobs"])
    gens: tuple[Generator, ...] = ()
    if "generators" in m:
        all_cities = cities if cities is not None else load_cities()
        gens = tuple(parse_generator(n, epoch_utc, all_cities) for n in m["generators"].sequence())
        seen: set[str] = set()
        for n, g in zip(m["generators"].sequence(), gens, strict=True):
            if g.name in seen:
                raise n.error(f"generator name {g.name!r} appears twice")
            seen.add(g.name)
    return Workload(jobs, gens, seed)


def _targets(node: Node | None, cities: tuple[City, ...]) -> tuple[City, ...]:
    """``all`` | a region name | ``{regions: [...], names: [...]}``."""
    if node is None or node.value == "all":
        return cities
    if isinstance(node.value, str):
        picked = tuple(c for c in cities if c.region == node.value)
        if not picked:
            known_regions = sorted({c.region for c in cities})
            raise node.error(f"unknown region {node.value!r}; known: all, {', '.join(known_regions)}")
        return picked
    m = node.mapping(optional=("regions", "names"))
    out: list[City] = []
    by_name = {c.name: c for c in cities}
    regions = {c.region for c in cities}
    if "regions" in m:
        for r in m["regions"].sequence():
            if r.as_str() not in regions:
                raise r.error(f"unknown region {r.value!r}; known: {', '.join(sorted(regions))}")
            out.extend(c for c in cities if c.region == r.value)
    if "names" in m:
        for n in m["names"].sequence():
            if n.as_str() not in by_name:
                raise n.error(f"unknown city {n.value!r} (see skyinfer/replay/cities.csv)")
            out.append(by_name[n.value])
    if not out:
        raise node.error("no target selected")
    seen: dict[str, City] = {}
    for c in out:
        seen.setdefault(c.name, c)
    return tuple(seen.values())


def parse_generator(node: Node, epoch_utc: datetime, cities: tuple[City, ...]) -> Generator:
    m = node.mapping(required=_GEN_KEYS_REQUIRED, optional=_GEN_KEYS_OPTIONAL)
    source = m["source"].as_str() if "source" in m else "capture"
    if source not in SOURCE_KINDS:
        raise m["source"].error(f"expected one of {', '.join(SOURCE_KINDS)}, got {source!r}")
    if "priorities" in m and "priority" in m:
        raise m["priority"].error("give either priority or priorities, not both")
    classes: list[PriorityClass] = []
    if "priorities" in m:
        for c in m["priorities"].sequence():
            cm = c.mapping(required=("priority", "share"), optional=("deadline",))
            classes.append(PriorityClass(
                cm["priority"].as_int(min_value=1, max_value=1000),
                cm["share"].as_float(min_value=1e-9),
                range_of(cm["deadline"], "duration") if "deadline" in cm else None,
            ))
    else:
        classes.append(PriorityClass(m["priority"].as_int(min_value=1, max_value=1000) if "priority" in m else 1,
                                     1.0))
    start_s = offset_s(m["start"], epoch_utc) if "start" in m else 0.0
    end_s = offset_s(m["end"], epoch_utc) if "end" in m else None
    if end_s is not None and end_s <= start_s:
        raise m["end"].error("must be after start")
    sats = tuple(n.as_str() for n in m["satellites"].sequence()) if "satellites" in m else ()
    targets = _targets(m.get("targets"), cities) if source == "capture" else ()
    return Generator(
        name=m["name"].as_str(),
        rate_per_h=m["rate_per_h"].as_float(min_value=0, max_value=1e6),
        model_id=m["model"].as_str(),
        source=source,
        priorities=tuple(classes),
        deadline_s=range_of(m["deadline"], "duration") if "deadline" in m else Range(3600.0 * 6, 3600.0 * 6),
        input_bytes=range_of(m["input_bytes"], "size") if "input_bytes" in m else Range(0, 0),
        output_bytes=range_of(m["output_bytes"], "size") if "output_bytes" in m else Range(0, 0),
        tiles=range_of(m["tiles"], "int") if "tiles" in m else Range(1, 1),
        start_s=start_s,
        end_s=end_s,
        targets=targets,
        min_elevation_deg=m["min_elevation_deg"].as_float(min_value=0, max_value=90)
        if "min_elevation_deg" in m else DEFAULT_CAPTURE_MIN_ELEVATION_DEG,
        station=m["station"].as_str() if "station" in m else None,
        satellites=sats,
        destination=m["destination"].as_str() if "destination" in m else None,
        where=f"{node.where}",
    )
