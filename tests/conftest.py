"""Shared fixtures: real satellite catalogs and real ground stations."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import pytest

from orbit.catalog import load_tle
from orbit.types import Constellation, GroundStation

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def planet() -> Constellation:
    """The 188 real Planet satellites of 2023-04-20 (Doves, SuperDoves, SkySats)."""
    constellation, _warnings = load_tle(DATA_DIR / "planet-2023-04-20.tle")
    return constellation


@pytest.fixture(scope="session")
def real_stations() -> tuple[GroundStation, ...]:
    """Five real ground-station sites (approximate antenna coordinates), with a mix of masks."""
    return (
        GroundStation("svalbard", 78.23, 15.41, 500.0, 5.0, "x-band"),
        GroundStation("fairbanks", 64.97, -147.50, 300.0, 10.0, "x-band"),
        GroundStation("wallops", 37.94, -75.46, 10.0, 10.0, "s-band"),
        GroundStation("hartebeesthoek", -25.89, 27.69, 1540.0, 7.5, "x-band"),
        GroundStation("awarua", -46.53, 168.38, 10.0, 0.0, "x-band"),
    )


# Property tests draw from a fixed seed: the suite gives the same answer on every run and in CI
# (set HYPOTHESIS_PROFILE=explore to search with fresh random seeds).
hypothesis.settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
