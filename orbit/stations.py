"""Ground stations from a command-line spec or a CSV file.

``parse_station_spec`` takes ``NAME:LAT_DEG:LON_DEG[:ALT_M[:MIN_ELEV_DEG]]``;
``parse_stations_csv`` takes a CSV with a header row (``name, latitude_deg,
longitude_deg`` required; ``altitude_m, min_elevation_deg, class`` optional,
in any order). Each mistake is reported with its place: the spec part, or
``FILE:LINE: column: ...``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from orbit.types import DEFAULT_MIN_ELEVATION_DEG, GroundStation
from skyinfer.errors import InputError

STATION_SPEC_FORMAT = "NAME:LAT_DEG:LON_DEG[:ALT_M[:MIN_ELEV_DEG]]"
CSV_REQUIRED = ("name", "latitude_deg", "longitude_deg")
CSV_OPTIONAL = ("altitude_m", "min_elevation_deg", "class")
DEFAULT_STATION_CLASS = "default"

# (field, lowest, highest) as GroundStation accepts them; checked here too so messages name the column.
_RANGES = {
    "latitude_deg": (-90.0, 90.0),
    "longitude_deg": (-180.0, 360.0),
    "altitude_m": (-500.0, 9000.0),
    "min_elevation_deg": (-5.0, 89.0),
}


def _number(text: str, field: str) -> float:
    """``text`` as a finite number within the field's range; ValueError with a message otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    lo, hi = _RANGES[field]
    if not lo <= value <= hi:
        raise ValueError(f"must be within [{lo:g}, {hi:g}], got {text.strip()}")
    return value


def parse_station_spec(spec: str, *, default_min_elevation_deg: float = DEFAULT_MIN_ELEVATION_DEG,
                       where: str = "station") -> GroundStation:
    """Parse ``NAME:LAT_DEG:LON_DEG[:ALT_M[:MIN_ELEV_DEG]]`` (e.g. ``Svalbard:78.23:15.41:500:5``).

    Latitude and longitude are WGS84 geodetic degrees (east positive), altitude metres above the
    ellipsoid (default 0), the elevation mask in degrees (default ``default_min_elevation_deg``).
    The station class is ``default``. Errors read ``WHERE 'SPEC': part: what is wrong``.
    """
    parts = [p.strip() for p in str(spec).split(":")]
    prefix = f"{where} {spec!r}"
    if not 3 <= len(parts) <= 5:
        raise InputError(f"{prefix}: expected {STATION_SPEC_FORMAT}, got {len(parts)} part(s)")
    name = parts[0]
    if not name:
        raise InputError(f"{prefix}: name: must not be empty")
    fields = ("latitude_deg", "longitude_deg", "altitude_m", "min_elevation_deg")
    values: dict[str, float] = {"altitude_m": 0.0, "min_elevation_deg": float(default_min_elevation_deg)}
    for field, text in zip(fields, parts[1:], strict=False):
        if not text and field in ("altitude_m", "min_elevation_deg"):
            continue  # "Name:1:2::5" leaves the altitude at its default
        try:
            values[field] = _number(text, field)
        except ValueError as exc:
            raise InputError(f"{prefix}: {field}: {exc}") from None
    return GroundStation(name, values["latitude_deg"], values["longitude_deg"], values["altitude_m"],
                         values["min_elevation_deg"], DEFAULT_STATION_CLASS)


def parse_stations_csv(text: str, source: str, *,
                       default_min_elevation_deg: float = DEFAULT_MIN_ELEVATION_DEG) -> tuple[GroundStation, ...]:
    """Parse a ground-station CSV (header row first) into stations, in file order.

    Columns: ``name``, ``latitude_deg``, ``longitude_deg`` (required), ``altitude_m`` (default 0),
    ``min_elevation_deg`` (default ``default_min_elevation_deg``), ``class`` (default ``default``).
    Blank lines are skipped. Errors read ``FILE:LINE: column: what is wrong``; unknown columns,
    duplicate names and a file without stations are refused.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    stations: list[GroundStation] = []
    first_line: dict[str, int] = {}
    line_before = 0
    for row in reader:
        line = line_before + 1
        line_before = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            allowed = CSV_REQUIRED + CSV_OPTIONAL
            for column in header:
                if column not in allowed:
                    raise InputError(f"{source}:{line}: unknown column {column!r}; allowed: {', '.join(allowed)}")
            for column in CSV_REQUIRED:
                if column not in header:
                    raise InputError(f"{source}:{line}: header lacks required column {column!r}")
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if duplicated:
                raise InputError(f"{source}:{line}: column {duplicated[0]!r} appears twice in the header")
            continue
        if len(row) != len(header):
            raise InputError(f"{source}:{line}: expected {len(header)} cells like the header, got {len(row)}")
        cells = {column: cell.strip() for column, cell in zip(header, row, strict=True)}
        name = cells["name"]
        if not name:
            raise InputError(f"{source}:{line}: name: must not be empty")
        if name in first_line:
            raise InputError(f"{source}:{line}: name: station {name!r} already defined at line {first_line[name]}")
        values: dict[str, float] = {"altitude_m": 0.0, "min_elevation_deg": float(default_min_elevation_deg)}
        for column in ("latitude_deg", "longitude_deg", "altitude_m", "min_elevation_deg"):
            raw = cells.get(column, "")
            if not raw:
                if column in CSV_REQUIRED:
                    raise InputError(f"{source}:{line}: {column}: missing value")
                continue
            try:
                values[column] = _number(raw, column)
            except ValueError as exc:
                raise InputError(f"{source}:{line}: {column}: {exc}") from None
        station_class = cells.get("class", "") or DEFAULT_STATION_CLASS
        stations.append(GroundStation(name, values["latitude_deg"], values["longitude_deg"], values["altitude_m"],
                                      values["min_elevation_deg"], station_class))
        first_line[name] = line
    if header is None:
        raise InputError(f"{source}: empty file; expected a header row ({', '.join(CSV_REQUIRED)}, ...)")
    if not stations:
        raise InputError(f"{source}: no stations after the header")
    return tuple(stations)


def load_stations_csv(path: str | Path, *,
                      default_min_elevation_deg: float = DEFAULT_MIN_ELEVATION_DEG) -> tuple[GroundStation, ...]:
    """Read a ground-station CSV file; see :func:`parse_stations_csv`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of a name
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    return parse_stations_csv(text, str(p), default_min_elevation_deg=default_min_elevation_deg)
