"""The contact plan: when data can move, and when each satellite has sunlight.

Tables are columnar (numpy arrays, one row per interval) because a real
constellation produces millions of passes; :meth:`rows` gives frozen records
for code that prefers them. All times are seconds after ``ContactPlan.start_utc``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from orbit.types import Constellation, GroundStation

if TYPE_CHECKING:
    import networkx as nx

SPEED_OF_LIGHT_KM_S = 299_792.458

SUNLIGHT_UMBRA = 0
SUNLIGHT_PENUMBRA = 1
SUNLIGHT_SUNLIT = 2
SUNLIGHT_STATE_NAMES = ("umbra", "penumbra", "sunlit")


def _check_columns(name: str, **cols: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name}: columns differ in length: {lengths}")


@dataclass(frozen=True, slots=True)
class GroundPass:
    """One pass of a satellite over a ground station (a row of :class:`GroundContacts`)."""

    sat: int
    station: int
    aos_s: float
    los_s: float
    tca_s: float
    max_elevation_deg: float
    truncated: bool


@dataclass(frozen=True, slots=True, eq=False)
class GroundContacts:
    """Passes above each station's elevation mask, sorted by (aos_s, sat, station).

    ``truncated`` marks passes in progress at the window start or end (clipped to it).
    """

    sat: np.ndarray  # (M,) int64, index into the constellation
    station: np.ndarray  # (M,) int64, index into ContactPlan.stations
    aos_s: np.ndarray  # (M,) float64
    los_s: np.ndarray  # (M,) float64
    tca_s: np.ndarray  # (M,) float64
    max_elevation_deg: np.ndarray  # (M,) float64
    truncated: np.ndarray  # (M,) bool

    def __post_init__(self) -> None:
        _check_columns("GroundContacts", sat=self.sat, station=self.station, aos_s=self.aos_s,
                       los_s=self.los_s, tca_s=self.tca_s, max_elevation_deg=self.max_elevation_deg,
                       truncated=self.truncated)

    def __len__(self) -> int:
        return len(self.sat)

    @classmethod
    def empty(cls) -> GroundContacts:
        f = np.zeros(0)
        i = np.zeros(0, np.int64)
        return cls(i, i.copy(), f, f.copy(), f.copy(), f.copy(), np.zeros(0, bool))

    def sorted(self) -> GroundContacts:
        order = np.lexsort((self.station, self.sat, self.aos_s))
        return self.take(order)

    def take(self, index: np.ndarray) -> GroundContacts:
        return GroundContacts(self.sat[index], self.station[index], self.aos_s[index], self.los_s[index],
                              self.tca_s[index], self.max_elevation_deg[index], self.truncated[index])

    def rows(self) -> Iterator[GroundPass]:
        for i in range(len(self)):
            yield GroundPass(int(self.sat[i]), int(self.station[i]), float(self.aos_s[i]),
                             float(self.los_s[i]), float(self.tca_s[i]), float(self.max_elevation_deg[i]),
                             bool(self.truncated[i]))


@dataclass(frozen=True, slots=True)
class IslInterval:
    """One interval during which satellites ``a < b`` can hold a link."""

    a: int
    b: int
    start_s: float
    end_s: float
    min_range_km: float
    max_range_km: float

    @property
    def max_light_time_s(self) -> float:
        return self.max_range_km / SPEED_OF_LIGHT_KM_S


@dataclass(frozen=True, slots=True, eq=False)
class IslContacts:
    """Inter-satellite link intervals (``a < b``; links are symmetric), sorted by (start_s, a, b)."""

    a: np.ndarray  # (K,) int64
    b: np.ndarray  # (K,) int64
    start_s: np.ndarray  # (K,) float64
    end_s: np.ndarray  # (K,) float64
    min_range_km: np.ndarray  # (K,) float64
    max_range_km: np.ndarray  # (K,) float64

    def __post_init__(self) -> None:
        _check_columns("IslContacts", a=self.a, b=self.b, start_s=self.start_s, end_s=self.end_s,
                       min_range_km=self.min_range_km, max_range_km=self.max_range_km)

    def __len__(self) -> int:
        return len(self.a)

    @classmethod
    def empty(cls) -> IslContacts:
        f = np.zeros(0)
        i = np.zeros(0, np.int64)
        return cls(i, i.copy(), f, f.copy(), f.copy(), f.copy())

    def sorted(self) -> IslContacts:
        order = np.lexsort((self.b, self.a, self.start_s))
        return self.take(order)

    def take(self, index: np.ndarray) -> IslContacts:
        return IslContacts(self.a[index], self.b[index], self.start_s[index], self.end_s[index],
                           self.min_range_km[index], self.max_range_km[index])

    def rows(self) -> Iterator[IslInterval]:
        for i in range(len(self)):
            yield IslInterval(int(self.a[i]), int(self.b[i]), float(self.start_s[i]), float(self.end_s[i]),
                              float(self.min_range_km[i]), float(self.max_range_km[i]))


@dataclass(frozen=True, slots=True)
class SunlightInterval:
    sat: int
    start_s: float
    end_s: float
    state: int  # SUNLIGHT_UMBRA / _PENUMBRA / _SUNLIT

    @property
    def state_name(self) -> str:
        return SUNLIGHT_STATE_NAMES[self.state]


@dataclass(frozen=True, slots=True, eq=False)
class SunlightIntervals:
    """Per satellite, a partition of the window into umbra / penumbra / sunlit intervals."""

    sat: np.ndarray  # (L,) int64
    start_s: np.ndarray  # (L,) float64
    end_s: np.ndarray  # (L,) float64
    state: np.ndarray  # (L,) int8

    def __post_init__(self) -> None:
        _check_columns("SunlightIntervals", sat=self.sat, start_s=self.start_s, end_s=self.end_s,
                       state=self.state)

    def __len__(self) -> int:
        return len(self.sat)

    @classmethod
    def empty(cls) -> SunlightIntervals:
        f = np.zeros(0)
        return cls(np.zeros(0, np.int64), f, f.copy(), np.zeros(0, np.int8))

    def rows(self) -> Iterator[SunlightInterval]:
        for i in range(len(self)):
            yield SunlightInterval(int(self.sat[i]), float(self.start_s[i]), float(self.end_s[i]),
                                   int(self.state[i]))


@dataclass(frozen=True, slots=True)
class Contact:
    """A one-way opportunity to send data from node ``src`` to node ``dst`` (graph node names)."""

    kind: str  # "ground_up" | "ground_down" | "isl"
    src: str
    dst: str
    start_s: float
    end_s: float
    range_km: float  # minimum range over the contact (for light time)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def station_node(name: str) -> str:
    """Graph node name of a ground station (satellites use their own names)."""
    return f"gs:{name}"


@dataclass(frozen=True, slots=True, eq=False)
class ContactPlan:
    """Everything later stages route over, for one time window.

    Graph nodes are satellite names and ``gs:<station name>``.
    """

    start_utc: datetime
    duration_s: float
    constellation: Constellation
    stations: tuple[GroundStation, ...]
    ground: GroundContacts
    isl: IslContacts
    sunlight: SunlightIntervals | None
    isl_policy: str = "none"
    # contacts() is asked for by routing, the validator, plan I/O and every replay round; build it once.
    _contacts: list[Contact] = field(default_factory=list, init=False, repr=False)

    @property
    def end_utc(self) -> datetime:
        return self.start_utc + timedelta(seconds=self.duration_s)

    @property
    def satellite_names(self) -> tuple[str, ...]:
        return self.constellation.names

    def node_names(self) -> list[str]:
        return list(self.constellation.names) + [station_node(s.name) for s in self.stations]

    def graph_at(self, t_s: float) -> nx.Graph:
        """Undirected graph of the links alive at ``t_s``; edges carry ``kind`` and ``range_km``.

        Ground edges carry ``elevation``-independent attributes only (``kind="ground"``).
        """
        import networkx as nx  # imported here: processes that never route (agents) skip its import cost

        g = nx.Graph()
        g.add_nodes_from(self.constellation.names, kind="satellite")
        g.add_nodes_from((station_node(s.name) for s in self.stations), kind="station")
        names = self.constellation.names
        gm = (self.ground.aos_s <= t_s) & (t_s <= self.ground.los_s)
        for i in np.flatnonzero(gm):
            g.add_edge(names[self.ground.sat[i]], station_node(self.stations[self.ground.station[i]].name),
                       kind="ground", start_s=float(self.ground.aos_s[i]), end_s=float(self.ground.los_s[i]))
        im = (self.isl.start_s <= t_s) & (t_s <= self.isl.end_s)
        for i in np.flatnonzero(im):
            g.add_edge(names[self.isl.a[i]], names[self.isl.b[i]], kind="isl",
                       start_s=float(self.isl.start_s[i]), end_s=float(self.isl.end_s[i]),
                       range_km=float(self.isl.min_range_km[i]))
        return g

    def contacts(self) -> list[Contact]:
        """Every one-way contact (both directions of each link), sorted by (start_s, end_s, src, dst).

        This is the time-expanded view that contact-graph routing works on:
        a route is a sequence of contacts with non-decreasing times.
        """
        if self._contacts or (len(self.ground) == 0 and len(self.isl) == 0):
            return list(self._contacts)
        names = self.constellation.names
        out: list[Contact] = []
        for p in self.ground.rows():
            sat = names[p.sat]
            gs = station_node(self.stations[p.station].name)
            out.append(Contact("ground_up", gs, sat, p.aos_s, p.los_s, 0.0))
            out.append(Contact("ground_down", sat, gs, p.aos_s, p.los_s, 0.0))
        for link in self.isl.rows():
            a, b = names[link.a], names[link.b]
            out.append(Contact("isl", a, b, link.start_s, link.end_s, link.min_range_km))
            out.append(Contact("isl", b, a, link.start_s, link.end_s, link.min_range_km))
        out.sort(key=lambda c: (c.start_s, c.end_s, c.src, c.dst))
        self._contacts.extend(out)
        return list(out)

    def time_expanded_graph(self) -> nx.MultiDiGraph:
        """A time-expanded multigraph: nodes are ``(node, t_s)`` events.

        Each node has a ``wait`` edge chain along its event times (data may be
        stored), and each contact contributes a ``contact`` edge from
        ``(src, start_s)`` to ``(dst, start_s)`` carrying ``end_s`` and ``kind``
        (transmission may begin any time within the contact, so routing code
        must use ``end_s`` as the latest usable time).
        """
        import networkx as nx

        g = nx.MultiDiGraph()
        times: dict[str, set[float]] = {n: {0.0, self.duration_s} for n in self.node_names()}
        contacts = self.contacts()
        for c in contacts:
            times[c.src].add(c.start_s)
            times[c.dst].add(c.start_s)
        for node, ts in times.items():
            ordered = sorted(ts)
            for t in ordered:
                g.add_node((node, t))
            for t0, t1 in itertools.pairwise(ordered):
                g.add_edge((node, t0), (node, t1), kind="wait", duration_s=t1 - t0)
        for c in contacts:
            g.add_edge((c.src, c.start_s), (c.dst, c.start_s), kind=c.kind, end_s=c.end_s,
                       range_km=c.range_km)
        return g
