"""Shared scheduler fixtures: a hand-made contact plan with known answers and small real problems.

- ``tiny_plan`` (+ ``tiny_problem``, ``tiny_job``, ``TINY_MODEL``, ``SAT_A/B/C``):
  real satellites (names and elements) with contact windows written by hand,
  so routes and timings can be checked with a pencil; ``make_plan`` builds
  such plans from explicit windows.
- ``real_problem``: six real Planet satellites, real ground passes over four
  real stations for 12 h (orbit.passes), no ISLs, one job of each source kind.
- ``walker_problem``: a Walker 53:60/5/1 shell with +Grid ISLs and sunlight
  from orbit.build, three real stations, 4 h, jobs of each source kind.

The real problems are session-scoped because propagation dominates their cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from orbit.catalog import load_tle
from orbit.contact_plan import (
    SUNLIGHT_SUNLIT,
    SUNLIGHT_UMBRA,
    ContactPlan,
    GroundContacts,
    IslContacts,
    SunlightIntervals,
)
from orbit.types import Constellation, GroundStation
from scheduler.types import (
    BUILTIN_PROFILES,
    CaptureSource,
    Job,
    ModelSpec,
    OnboardSource,
    Problem,
    UplinkSource,
)

DATA_DIR = Path(__file__).parent.parent / "data"
EPOCH = datetime(2023, 4, 20, tzinfo=UTC)

# Hand-made plan: satellites A, B, C; stations S1, S2 (see tiny_plan).
SAT_A, SAT_B, SAT_C = "FLOCK 4X-2", "FLOCK 4X-3", "FLOCK 4X-5"


def planet_catalog() -> Constellation:
    constellation, _ = load_tle(DATA_DIR / "planet-2023-04-20.tle")
    return constellation


def make_plan(
    constellation: Constellation,
    stations: Sequence[GroundStation],
    ground: Sequence[tuple[int, int, float, float]],
    isl: Sequence[tuple[int, int, float, float]] = (),
    sunlight: Sequence[tuple[int, float, float, int]] | None = None,
    duration_s: float = 10_000.0,
) -> ContactPlan:
    """A contact plan from explicit windows: ground (sat, station, aos_s, los_s), isl (a, b, start_s, end_s)."""
    g = GroundContacts(
        sat=np.array([r[0] for r in ground], np.int64), station=np.array([r[1] for r in ground], np.int64),
        aos_s=np.array([r[2] for r in ground], float), los_s=np.array([r[3] for r in ground], float),
        tca_s=np.array([(r[2] + r[3]) / 2 for r in ground], float), max_elevation_deg=np.full(len(ground), 45.0),
        truncated=np.zeros(len(ground), bool)).sorted()
    i = IslContacts(
        a=np.array([r[0] for r in isl], np.int64), b=np.array([r[1] for r in isl], np.int64),
        start_s=np.array([r[2] for r in isl], float), end_s=np.array([r[3] for r in isl], float),
        min_range_km=np.full(len(isl), 1000.0), max_range_km=np.full(len(isl), 2000.0)).sorted()
    sun = None
    if sunlight is not None:
        sun = SunlightIntervals(sat=np.array([r[0] for r in sunlight], np.int64),
                                start_s=np.array([r[1] for r in sunlight], float),
                                end_s=np.array([r[2] for r in sunlight], float),
                                state=np.array([r[3] for r in sunlight], np.int8))
    return ContactPlan(EPOCH, duration_s, constellation, tuple(stations), g, i, sun,
                       "grid" if len(isl) else "none")


@pytest.fixture(scope="session")
def planet_catalog_fixture() -> Constellation:
    return planet_catalog()


@pytest.fixture(scope="session")
def tiny_plan(planet_catalog_fixture: Constellation) -> ContactPlan:
    return build_tiny_plan(planet_catalog_fixture)


def build_tiny_plan(cat: Constellation) -> ContactPlan:
    """Three satellites, two stations, hand-written windows (seconds after 2023-04-20T00:00Z).

    - A-S1 [100, 700], B-S2 [3000, 3600], C-S1 [5000, 5600], A-S2 [7000, 7600]
    - ISL A-B [0, 10000], B-C [2000, 4000]
    - A in umbra [1000, 3000], sunlit otherwise; B, C always sunlit.
    """
    constellation = cat.subset([cat.index_of(SAT_A), cat.index_of(SAT_B), cat.index_of(SAT_C)])
    stations = (GroundStation("S1", 78.23, 15.41, 0.0, 5.0), GroundStation("S2", 64.97, -147.5, 0.0, 10.0))
    return make_plan(
        constellation, stations,
        ground=[(0, 0, 100.0, 700.0), (1, 1, 3000.0, 3600.0), (2, 0, 5000.0, 5600.0), (0, 1, 7000.0, 7600.0)],
        isl=[(0, 1, 0.0, 10_000.0), (1, 2, 2000.0, 4000.0)],
        sunlight=[(0, 0.0, 1000.0, SUNLIGHT_SUNLIT), (0, 1000.0, 3000.0, SUNLIGHT_UMBRA),
                  (0, 3000.0, 10_000.0, SUNLIGHT_SUNLIT)],
    )


TINY_MODEL = ModelSpec("cloudmask@1", size_bytes=40_000_000, sha256="", memory_bytes=200_000_000,
                       gflop_per_inference=12.5)


def tiny_problem(plan: ContactPlan, jobs: Sequence[Job], *, resident: bool = True) -> Problem:
    """A, B run jetson-orin (model resident unless told otherwise); C runs cubesat (no ISL terminal)."""
    from dataclasses import replace

    orin = BUILTIN_PROFILES["jetson-orin"]
    if resident:
        orin = replace(orin, resident_models=(TINY_MODEL.model_id,))
    profiles = {SAT_A: orin, SAT_B: orin, SAT_C: BUILTIN_PROFILES["cubesat"]}
    return Problem(plan.start_utc, plan, profiles, {TINY_MODEL.model_id: TINY_MODEL}, tuple(jobs))


def tiny_job(job_id: str = "j1", **kw: object) -> Job:
    base: dict[str, object] = dict(job_id=job_id, model_id=TINY_MODEL.model_id, priority=1, submit_s=0.0,
                                   deadline_s=9000.0, input_bytes=100_000, output_bytes=1_000_000, tiles=160,
                                   source=OnboardSource(SAT_B))
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def real_problem(planet_catalog_fixture: Constellation) -> Problem:
    return build_real_problem(planet_catalog_fixture)


def build_real_problem(cat: Constellation) -> Problem:
    from dataclasses import replace

    from orbit.passes import find_ground_contacts

    names = ["FLOCK 4X-2", "FLOCK 4X-3", "FLOCK 4X-5", "FLOCK 4S-1", "FLOCK 4V-1", "SKYSAT-C1"]
    constellation = cat.subset([cat.index_of(n) for n in names])
    stations = (GroundStation("Svalbard", 78.23, 15.41, 500.0, 5.0, "x-band"),
                GroundStation("Fairbanks", 64.97, -147.50, 300.0, 10.0, "x-band"),
                GroundStation("Hartebeesthoek", -25.89, 27.69, 1540.0, 7.5, "x-band"),
                GroundStation("Awarua", -46.53, 168.38, 10.0, 5.0, "x-band"))
    duration_s = 12 * 3600.0
    ground = find_ground_contacts(constellation, stations, EPOCH, duration_s)
    plan = ContactPlan(EPOCH, duration_s, constellation, stations, ground, IslContacts.empty(), None, "none")
    model = ModelSpec("cloudmask@1", size_bytes=40_000_000, sha256="", memory_bytes=200_000_000,
                      gflop_per_inference=12.5)
    orin = BUILTIN_PROFILES["jetson-orin"]
    profiles = {n: orin for n in names[:3]}
    profiles.update({n: replace(orin, resident_models=(model.model_id,)) for n in names[3:5]})
    profiles[names[5]] = BUILTIN_PROFILES["three-body-744tops"]
    jobs = (
        Job("up-any", model.model_id, 3, 0.0, 8 * 3600.0, 50_000_000, 1_000_000, 2000, UplinkSource()),
        Job("up-sval", model.model_id, 2, 600.0, 12 * 3600.0, 20_000_000, 5_000_000, 500,
            UplinkSource("Svalbard"), "Fairbanks"),
        Job("onboard", model.model_id, 1, 1200.0, 8 * 3600.0, 200_000_000, 2_000_000, 2809,
            OnboardSource(names[3])),
        Job("capture", model.model_id, 5, 0.0, 12 * 3600.0, 300_000_000, 1_000_000, 2809,
            CaptureSource(48.1, 11.6, 20.0)),
        Job("too-soon", model.model_id, 4, 0.0, 600.0, 1_000_000, 1_000_000, 10, UplinkSource()),
    )
    return Problem(EPOCH, plan, profiles, {model.model_id: model}, jobs)


@pytest.fixture(scope="session")
def walker_problem() -> Problem:
    """A Walker 53:60/5/1 shell at 550 km with +Grid ISLs and sunlight, three real stations, 4 h.

    Twelve satellites per plane are 30 deg apart (3,600 km): the in-plane links
    fit the 5,000 km ISL range (a 24/4 shell's 60 deg spacing, 6,900 km, would not).

    Contacts, ISL intervals and sunlight come from orbit.build; every satellite
    runs jetson-orin (model resident on half of them); jobs of every source kind.
    """
    return build_walker_problem()


def build_walker_problem() -> Problem:
    from dataclasses import replace

    from orbit.build import build_contact_plan
    from orbit.types import IslConfig
    from orbit.walker import WalkerSpec, walker_shell

    shell = walker_shell(WalkerSpec(53.0, 60, 5, 1, 550.0), EPOCH)
    stations = (GroundStation("Fairbanks", 64.97, -147.50, 300.0, 10.0, "x-band"),
                GroundStation("Wallops", 37.94, -75.46, 10.0, 10.0, "s-band"),
                GroundStation("Hartebeesthoek", -25.89, 27.69, 1540.0, 7.5, "x-band"))
    plan = build_contact_plan(shell, stations, EPOCH, 4 * 3600.0, isl=IslConfig("grid"), sunlight=True)
    model = ModelSpec("cloudmask@1", size_bytes=40_000_000, sha256="", memory_bytes=200_000_000,
                      gflop_per_inference=12.5)
    orin = BUILTIN_PROFILES["jetson-orin"]
    profiles = {n: (replace(orin, resident_models=(model.model_id,)) if i % 2 else orin)
                for i, n in enumerate(shell.names)}
    jobs = (
        Job("w-up", model.model_id, 3, 0.0, 2 * 3600.0, 20_000_000, 1_000_000, 2000, UplinkSource()),
        Job("w-up-wallops", model.model_id, 2, 300.0, 3 * 3600.0, 5_000_000, 2_000_000, 500,
            UplinkSource("Wallops"), "Fairbanks"),
        Job("w-onboard", model.model_id, 4, 600.0, 3600.0, 100_000_000, 5_000_000, 2809,
            OnboardSource(shell.names[5])),
        Job("w-capture", model.model_id, 5, 0.0, 4 * 3600.0, 300_000_000, 1_000_000, 2809,
            CaptureSource(35.7, 139.7, 20.0)),
    )
    return Problem(EPOCH, plan, profiles, {model.model_id: model}, jobs)
