"""Scenario files: the YAML document that describes a whole run.

This module reads the sections that define the orbital set-up (``name``,
``description``, ``start``, ``duration``, ``constellation``,
``ground_stations``, ``isl``, ``sunlight``). The other top-level sections
(``nodes``, ``models``, ``jobs``, ``workload``, ``faults``, ``policy``,
``solver``, ``agents``, ``replay``) are allowed but left to the packages that
own them: they read ``scenario.root.value.get("nodes")`` and report their own
mistakes through the same :class:`~skyinfer.config.Node` tree, so every
message has the form ``FILE:LINE: key.path: what is wrong``. Any other key is
refused.

Example::

    name: demo
    start: 2023-04-20T00:00:00Z
    duration: 24h
    constellation:
      - tle: ../tests/data/planet-2023-04-20.tle   # relative to this file
        select: [FLOCK 4X 1]                       # optional, names to keep (in this order)
        limit: 20                                  # optional, first N (after select)
      - omm: catalog.json
      - walker: "53:1584/72/1"
        altitude_km: 550
        kind: delta                                # or star
        name_prefix: ""
    ground_stations:
      - {name: Svalbard, latitude_deg: 78.23, longitude_deg: 15.41, altitude_m: 500, min_elevation_deg: 5}
      - "Wallops:37.92:-75.48:10:5"                # NAME:LAT_DEG:LON_DEG[:ALT_M[:MIN_ELEV_DEG]]
      - csv: stations/ground-stations.csv
    isl: {policy: grid, max_range_km: 5000, grazing_altitude_km: 80}   # or nearest:4 / los / none
    sunlight: true
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from orbit.catalog import load_omm, load_tle
from orbit.stations import load_stations_csv, parse_station_spec
from orbit.types import DEFAULT_MIN_ELEVATION_DEG, Constellation, GroundStation, IslConfig, Satellite
from orbit.walker import WALKER_NORAD_ID_BASE, WalkerSpec, walker_shell
from skyinfer.config import Node, load_yaml
from skyinfer.errors import InputError
from skyinfer.timefmt import parse_duration_s, parse_utc

TOP_LEVEL_KEYS = (
    "name", "description", "start", "duration", "constellation", "ground_stations", "isl", "sunlight",
    "nodes", "models", "jobs", "workload", "faults", "policy", "solver", "agents", "replay",
)
CATALOG_SOURCE_KEYS = ("select", "limit")
WALKER_SOURCE_KEYS = ("altitude_km", "kind", "name_prefix")
STATION_KEYS_REQUIRED = ("name", "latitude_deg", "longitude_deg")
STATION_KEYS_OPTIONAL = ("altitude_m", "min_elevation_deg", "class")
ISL_KEYS = ("policy", "max_range_km", "grazing_altitude_km")


@dataclass(frozen=True, slots=True)
class Scenario:
    """The orbital part of a scenario file, plus the parsed document for the other sections.

    Attributes
    ----------
    path
        The YAML file.
    name
        ``name`` from the file, else the file's stem.
    start_utc, duration_s
        Window of the run (aware UTC datetime; seconds), ``None`` where the file leaves them out.
    constellation
        All satellites of all ``constellation`` sources, in file order.
    stations
        All ground stations, in file order (names unique).
    isl
        Inter-satellite link policy (``none`` when the section is absent).
    sunlight
        Whether sunlight intervals are wanted (default false).
    root
        The whole document as a :class:`~skyinfer.config.Node` mapping.
    warnings
        ``FILE:LINE: ...`` for skipped catalog records and renamed duplicate satellites.
    """

    path: Path
    name: str
    start_utc: datetime | None
    duration_s: float | None
    constellation: Constellation
    stations: tuple[GroundStation, ...]
    isl: IslConfig
    sunlight: bool
    root: Node
    warnings: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InputError(f"{self.path}: name: must not be empty")
        if len(self.constellation) == 0:
            raise InputError(f"{self.path}: constellation: must contain at least one satellite")
        if self.duration_s is not None and not self.duration_s > 0.0:
            raise InputError(f"{self.path}: duration: must be positive, got {self.duration_s!r}")
        if self.start_utc is not None and self.start_utc.tzinfo is None:
            raise InputError(f"{self.path}: start: must be an aware UTC datetime")


def _start_utc(node: Node) -> datetime:
    """``start``: YAML may already have turned an ISO timestamp into a datetime (or a date)."""
    value = node.value
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str):
        raise node.error("expected an ISO-8601 UTC time such as 2023-04-20T00:00:00Z")
    return parse_utc(value, where=node.where)


def _duration_s(node: Node) -> float:
    if isinstance(node.value, bool) or not isinstance(node.value, str | int | float):
        raise node.error("expected a duration such as 24h, 90m or 3600 (seconds)")
    return parse_duration_s(node.value, where=node.where)


def _select(constellation: Constellation, keys: dict[str, Node], source_file: Path) -> Constellation:
    """Apply the optional ``select`` (names, in the given order) and ``limit`` (first N) of a catalog source."""
    if "select" in keys:
        items = keys["select"].sequence_or_one()
        if not items:
            raise keys["select"].error("must name at least one satellite (leave it out to keep all)")
        indices: list[int] = []
        seen: dict[str, Node] = {}
        for item in items:
            name = item.as_str().strip()
            if name in seen:
                raise item.error(f"satellite {name!r} selected twice")
            seen[name] = item
            if name not in constellation.names:
                close = difflib.get_close_matches(name, constellation.names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise item.error(f"unknown satellite {name!r} in {source_file}{hint}")
            indices.append(constellation.names.index(name))
        constellation = constellation.subset(indices)
    if "limit" in keys:
        limit = keys["limit"].as_int(min_value=1)
        constellation = constellation.subset(list(range(min(limit, len(constellation)))))
    return constellation


def _constellation(node: Node, start_utc: datetime | None, skip_invalid: bool) -> tuple[Constellation, list[str]]:
    sources = node.sequence_or_one()
    if not sources:
        raise node.error("must list at least one source (tle, omm or walker)")
    satellites: list[Satellite] = []
    origin: dict[str, str] = {}
    warnings: list[str] = []
    next_walker_id = WALKER_NORAD_ID_BASE
    for source in sources:
        if not source.is_mapping():
            raise source.error("expected a mapping with one of the keys tle, omm or walker")
        kinds = [k for k in ("tle", "omm", "walker") if k in source.value]
        if len(kinds) != 1:
            what = "none" if not kinds else " and ".join(kinds)
            raise source.error(f"needs exactly one of the keys tle, omm or walker, got {what}")
        kind = kinds[0]
        if kind == "walker":
            keys = source.mapping(required=("walker", "altitude_km"), optional=("kind", "name_prefix"))
            spec_node = keys["walker"]
            altitude_km = keys["altitude_km"].as_float(min_value=160.0, max_value=40_000.0)
            walker_kind = keys["kind"].as_str().strip().lower() if "kind" in keys else "delta"
            if walker_kind not in ("delta", "star"):
                raise keys["kind"].error(f"must be delta or star, got {walker_kind!r}")
            prefix = keys["name_prefix"].as_str() if "name_prefix" in keys else ""
            spec = WalkerSpec.parse(spec_node.as_str(), altitude_km, walker_kind, where=spec_node.where,
                                    name_prefix=prefix)
            if start_utc is None:
                raise spec_node.error("a Walker shell needs the scenario's start (its element epoch); add start:")
            try:
                part = walker_shell(spec, start_utc, first_norad_id=next_walker_id)
            except InputError as exc:
                raise spec_node.error(str(exc)) from None
            next_walker_id += spec.total
            part_warnings: list[str] = []
        else:
            keys = source.mapping(required=(kind,), optional=CATALOG_SOURCE_KEYS)
            file_node = keys[kind]
            file_path = file_node.resolve_path()
            loader = load_tle if kind == "tle" else load_omm
            try:
                part, part_warnings = loader(file_path, skip_invalid=skip_invalid)
            except InputError as exc:
                raise file_node.error(str(exc)) from None
            part = _select(part, keys, file_path)
        warnings.extend(part_warnings)
        for sat in part.satellites:
            if sat.name in origin:
                hint = " (give the shells different name_prefix values)" if kind == "walker" else ""
                raise source.error(f"satellite name {sat.name!r} also comes from {origin[sat.name]}{hint}")
            origin[sat.name] = source.path
        satellites.extend(part.satellites)
    return Constellation(tuple(satellites)), warnings


def _station_from_mapping(item: Node) -> GroundStation:
    keys = item.mapping(required=STATION_KEYS_REQUIRED, optional=STATION_KEYS_OPTIONAL)
    name = keys["name"].as_str().strip()
    if not name:
        raise keys["name"].error("must not be empty")
    latitude_deg = keys["latitude_deg"].as_float(min_value=-90.0, max_value=90.0)
    longitude_deg = keys["longitude_deg"].as_float(min_value=-180.0, max_value=360.0)
    altitude_m = keys["altitude_m"].as_float(min_value=-500.0, max_value=9000.0) if "altitude_m" in keys else 0.0
    min_elevation_deg = (keys["min_elevation_deg"].as_float(min_value=-5.0, max_value=89.0)
                         if "min_elevation_deg" in keys else DEFAULT_MIN_ELEVATION_DEG)
    station_class = keys["class"].as_str().strip() if "class" in keys else "default"
    if not station_class:
        raise keys["class"].error("must not be empty")
    return GroundStation(name, latitude_deg, longitude_deg, altitude_m, min_elevation_deg, station_class)


def _stations(node: Node) -> tuple[GroundStation, ...]:
    stations: list[GroundStation] = []
    origin: dict[str, str] = {}
    for item in node.sequence_or_one():
        if isinstance(item.value, str):
            found: tuple[GroundStation, ...] = (parse_station_spec(item.value, where=item.where),)
        elif item.is_mapping() and "csv" in item.value:
            keys = item.mapping(required=("csv",))
            csv_path = keys["csv"].resolve_path()
            try:
                found = load_stations_csv(csv_path)
            except InputError as exc:
                raise keys["csv"].error(str(exc)) from None
        elif item.is_mapping():
            found = (_station_from_mapping(item),)
        else:
            raise item.error("expected a station mapping (name, latitude_deg, longitude_deg, ...), "
                             "a NAME:LAT_DEG:LON_DEG[:ALT_M[:MIN_ELEV_DEG]] string or {csv: FILE}")
        for station in found:
            if station.name in origin:
                raise item.error(f"ground station {station.name!r} is defined twice (also at {origin[station.name]})")
            origin[station.name] = item.path
        stations.extend(found)
    return tuple(stations)


def _isl(node: Node) -> IslConfig:
    if isinstance(node.value, str):
        keys = {"policy": node}
    else:
        keys = node.mapping(required=("policy",), optional=("max_range_km", "grazing_altitude_km"))
    max_range_km = keys["max_range_km"].as_float() if "max_range_km" in keys else 5000.0
    grazing_altitude_km = keys["grazing_altitude_km"].as_float() if "grazing_altitude_km" in keys else 80.0
    policy_node = keys["policy"]
    try:
        return IslConfig.parse(policy_node.as_str(), max_range_km=max_range_km,
                               grazing_altitude_km=grazing_altitude_km, where=policy_node.where)
    except InputError as exc:
        message = str(exc)
        if message.startswith(policy_node.file):
            raise
        # IslConfig names the field (isl.max_range_km: ...); add the place the value came from.
        field = message.split(":", 1)[0].removeprefix("isl.")
        place = keys.get(field, node)
        raise InputError(f"{place.file}:{place.line}: {message}") from None


def scenario_from_node(root: Node, path: str | Path, *, skip_invalid: bool = False) -> Scenario:
    """Build a :class:`Scenario` from a parsed document (see :func:`load_scenario`)."""
    keys = root.mapping(required=("constellation",), optional=TOP_LEVEL_KEYS)
    file_path = Path(path)
    name = keys["name"].as_str().strip() if "name" in keys else file_path.stem
    if not name:
        raise keys["name"].error("must not be empty")
    if "description" in keys:
        keys["description"].as_str()
    start_utc = _start_utc(keys["start"]) if "start" in keys else None
    duration_s = _duration_s(keys["duration"]) if "duration" in keys else None
    constellation, warnings = _constellation(keys["constellation"], start_utc, skip_invalid)
    stations = _stations(keys["ground_stations"]) if "ground_stations" in keys else ()
    isl = _isl(keys["isl"]) if "isl" in keys else IslConfig()
    sunlight = keys["sunlight"].as_bool() if "sunlight" in keys else False
    return Scenario(file_path, name, start_utc, duration_s, constellation, stations, isl, sunlight, root,
                    tuple(warnings))


def load_scenario(path: str | Path, *, skip_invalid: bool = False) -> Scenario:
    """Read a scenario YAML file.

    Parameters
    ----------
    path
        The file; catalog and station paths inside it are relative to its directory.
    skip_invalid
        Skip invalid TLE/OMM records (each becomes a warning) instead of failing on the first.

    Raises
    ------
    InputError
        ``FILE:LINE: key.path: what is wrong`` for the first mistake (unknown or missing key, wrong type,
        bad value, unreadable or invalid referenced file, empty constellation).
    """
    return scenario_from_node(load_yaml(path), path, skip_invalid=skip_invalid)
