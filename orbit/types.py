"""Domain types of the orbit package: satellites, constellations, ground stations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sgp4.api import Satrec

from skyinfer.errors import InputError

DEFAULT_MIN_ELEVATION_DEG = 10.0


@dataclass(frozen=True, slots=True, eq=False)
class Satellite:
    """One satellite: its SGP4 elements and identity.

    ``plane`` and ``slot`` are known for generated Walker shells (and can be
    assigned by clustering a catalog); they drive the +Grid ISL topology.
    ``source`` says where it came from (``file:line`` of the TLE, or ``walker``).
    """

    name: str
    norad_id: int
    satrec: Satrec
    plane: int | None = None
    slot: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise InputError(f"{self.source or 'satellite'}: name: must not be empty")
        if self.norad_id < 0:
            raise InputError(f"{self.source or self.name}: norad_id: must be >= 0, got {self.norad_id}")


@dataclass(frozen=True, slots=True, eq=False)
class Constellation:
    """An ordered set of satellites; every array in the orbit package is indexed like ``satellites``."""

    satellites: tuple[Satellite, ...]
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(s.name for s in self.satellites)
        seen: dict[str, Satellite] = {}
        for s in self.satellites:
            if s.name in seen:
                raise InputError(
                    f"{s.source or s.name}: satellite name {s.name!r} appears twice "
                    f"(also at {seen[s.name].source or 'another entry'})"
                )
            seen[s.name] = s
        object.__setattr__(self, "names", names)

    def __len__(self) -> int:
        return len(self.satellites)

    @property
    def norad_ids(self) -> np.ndarray:
        return np.array([s.norad_id for s in self.satellites], dtype=np.int64)

    @property
    def planes(self) -> np.ndarray:
        """Plane index per satellite, -1 where unknown."""
        return np.array([-1 if s.plane is None else s.plane for s in self.satellites], dtype=np.int64)

    @property
    def slots(self) -> np.ndarray:
        """Slot index within the plane per satellite, -1 where unknown."""
        return np.array([-1 if s.slot is None else s.slot for s in self.satellites], dtype=np.int64)

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"unknown satellite {name!r}") from None

    def subset(self, indices: np.ndarray | list[int]) -> Constellation:
        return Constellation(tuple(self.satellites[int(i)] for i in indices))


@dataclass(frozen=True, slots=True)
class GroundStation:
    """A ground station on the WGS84 ellipsoid with its own elevation mask.

    ``station_class`` groups stations with the same radio (e.g. ``x-band``,
    ``s-band``); node profiles give link rates per class.
    """

    name: str
    latitude_deg: float
    longitude_deg: float
    altitude_m: float = 0.0
    min_elevation_deg: float = DEFAULT_MIN_ELEVATION_DEG
    station_class: str = "default"

    def __post_init__(self) -> None:
        where = f"station {self.name!r}" if self.name else "station"
        if not self.name or not self.name.strip():
            raise InputError(f"{where}: name: must not be empty")
        for fname, v, lo, hi in (
            ("latitude_deg", self.latitude_deg, -90.0, 90.0),
            ("longitude_deg", self.longitude_deg, -180.0, 360.0),
            ("altitude_m", self.altitude_m, -500.0, 9000.0),
            ("min_elevation_deg", self.min_elevation_deg, -5.0, 89.0),
        ):
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise InputError(f"{where}: {fname}: expected a number, got {v!r}")
            if not lo <= v <= hi:
                raise InputError(f"{where}: {fname}: must be within [{lo:g}, {hi:g}], got {v!r}")


ISL_POLICIES = ("none", "grid", "los", "nearest")


@dataclass(frozen=True, slots=True)
class IslConfig:
    """How inter-satellite links are chosen and when they are geometrically possible.

    ``policy``: ``none``; ``grid`` (+Grid: two intra-plane and two cross-plane
    neighbours); ``nearest`` with ``k`` terminals per satellite (re-chosen as
    geometry changes); ``los`` (every pair with line of sight, for analysis).
    A link needs the line of sight to clear the Earth plus ``grazing_altitude_km``
    and the range to stay within ``max_range_km``.
    """

    policy: str = "none"
    k: int = 0
    max_range_km: float = 5000.0
    grazing_altitude_km: float = 80.0

    def __post_init__(self) -> None:
        if self.policy not in ISL_POLICIES:
            raise InputError(f"isl.policy: unknown policy {self.policy!r}; expected grid, los, nearest:K or none")
        if self.policy == "nearest" and not 1 <= self.k <= 16:
            raise InputError(f"isl.policy: nearest:K needs 1 <= K <= 16, got {self.k}")
        if not 0.0 < self.max_range_km <= 100_000.0:
            raise InputError(f"isl.max_range_km: must be within (0, 100000], got {self.max_range_km!r}")
        if not 0.0 <= self.grazing_altitude_km <= 2000.0:
            raise InputError(
                f"isl.grazing_altitude_km: must be within [0, 2000], got {self.grazing_altitude_km!r}"
            )

    @classmethod
    def parse(cls, spec: str, *, max_range_km: float = 5000.0, grazing_altitude_km: float = 80.0,
              where: str = "isl.policy") -> IslConfig:
        """Parse ``grid``, ``los``, ``none`` or ``nearest:K``."""
        text = spec.strip().lower()
        if text.startswith("nearest"):
            _, _, k_text = text.partition(":")
            try:
                k = int(k_text)
            except ValueError:
                raise InputError(f"{where}: expected nearest:K with an integer K, got {spec!r}") from None
            return cls("nearest", k, max_range_km, grazing_altitude_km)
        if text not in ISL_POLICIES:
            raise InputError(f"{where}: unknown policy {spec!r}; expected grid, los, nearest:K or none")
        return cls(text, 0, max_range_km, grazing_altitude_km)

    @property
    def label(self) -> str:
        return f"nearest:{self.k}" if self.policy == "nearest" else self.policy
