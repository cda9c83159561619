"""Tests of orbit.stations: station specs, station CSV files, and the shipped station list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orbit.stations import load_stations_csv, parse_station_spec, parse_stations_csv
from orbit.types import GroundStation
from skyinfer.errors import InputError

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios" / "stations" / "ground-stations.csv"
HEADER = "name,latitude_deg,longitude_deg,altitude_m,min_elevation_deg,class"


def test_spec_full_and_defaults() -> None:
    assert parse_station_spec("Svalbard:78.23:15.41:500:5") == GroundStation("Svalbard", 78.23, 15.41, 500.0, 5.0)
    minimal = parse_station_spec(" Wallops : 37.92 : -75.48 ", default_min_elevation_deg=7.5)
    assert minimal == GroundStation("Wallops", 37.92, -75.48, 0.0, 7.5, "default")
    assert parse_station_spec("X:1:2::15").altitude_m == 0.0
    assert parse_station_spec("X:1:2::15").min_elevation_deg == 15.0
    assert parse_station_spec("X:1:2:30").min_elevation_deg == 10.0


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("Svalbard:78.23", r"expected NAME:LAT_DEG:LON_DEG\[:ALT_M\[:MIN_ELEV_DEG\]\], got 2 part\(s\)"),
        ("A:1:2:3:4:5", r"expected NAME.*, got 6 part\(s\)"),
        (":1:2", r"name: must not be empty"),
        ("A:north:2", r"latitude_deg: not a number: 'north'"),
        ("A:91:2", r"latitude_deg: must be within \[-90, 90\], got 91"),
        ("A:1:east", r"longitude_deg: not a number: 'east'"),
        ("A:1:400", r"longitude_deg: must be within \[-180, 360\], got 400"),
        ("A:1:2:high", r"altitude_m: not a number: 'high'"),
        ("A:1:2:10000", r"altitude_m: must be within \[-500, 9000\], got 10000"),
        ("A:1:2:0:95", r"min_elevation_deg: must be within \[-5, 89\], got 95"),
        ("A:1:2:0:nan", r"min_elevation_deg: not a finite number: 'nan'"),
        ("A::2", r"latitude_deg: not a number: ''"),
    ],
)
def test_spec_errors_name_the_part(spec: str, pattern: str) -> None:
    with pytest.raises(InputError, match=rf"^--station {re.escape(repr(spec))}: {pattern}"):
        parse_station_spec(spec, where="--station")


def test_shipped_station_list() -> None:
    stations = load_stations_csv(SHIPPED)
    assert len(stations) >= 12
    names = [s.name for s in stations]
    assert len(set(names)) == len(names)
    assert {"Svalbard", "Troll", "Inuvik", "Wallops", "Hartebeesthoek"} <= set(names)
    assert all(s.station_class == "x-band" for s in stations)
    assert all(5.0 <= s.min_elevation_deg <= 10.0 for s in stations)
    # Svalbard and Troll: the polar sites that see every sun-synchronous orbit.
    by_name = {s.name: s for s in stations}
    assert by_name["Svalbard"].latitude_deg > 78.0 and by_name["Troll"].latitude_deg < -72.0
    assert SHIPPED.read_text().splitlines()[0] == HEADER


def test_csv_optional_columns_any_order_and_blank_lines() -> None:
    text = "\nlongitude_deg,name,latitude_deg\n\n15.41,Svalbard,78.23\n-75.48, Wallops ,37.92\n"
    stations = parse_stations_csv(text, "s.csv", default_min_elevation_deg=6.0)
    assert stations == (GroundStation("Svalbard", 78.23, 15.41, 0.0, 6.0, "default"),
                        GroundStation("Wallops", 37.92, -75.48, 0.0, 6.0, "default"))


def test_csv_empty_optional_cells_take_defaults() -> None:
    stations = parse_stations_csv(f"{HEADER}\nA,1,2,,,\n", "s.csv")
    assert stations == (GroundStation("A", 1.0, 2.0, 0.0, 10.0, "default"),)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (f"{HEADER}\nA,1,2,0,5,x\nA,3,4,0,5,x\n", r"^s\.csv:3: name: station 'A' already defined at line 2$"),
        (f"{HEADER}\nA,91,2,0,5,x\n", r"^s\.csv:2: latitude_deg: must be within \[-90, 90\], got 91$"),
        (f"{HEADER}\nA,1,2,0,abc,x\n", r"^s\.csv:2: min_elevation_deg: not a number: 'abc'$"),
        (f"{HEADER}\nA,,2,0,5,x\n", r"^s\.csv:2: latitude_deg: missing value$"),
        (f"{HEADER}\n,1,2,0,5,x\n", r"^s\.csv:2: name: must not be empty$"),
        (f"{HEADER}\n\nA,1,2,0,5\n", r"^s\.csv:3: expected 6 cells like the header, got 5$"),
        ("name,latitude_deg,longitude_deg,height\nA,1,2,3\n", r"^s\.csv:1: unknown column 'height'"),
        ("name,latitude_deg\nA,1\n", r"^s\.csv:1: header lacks required column 'longitude_deg'$"),
        ("name,name,latitude_deg,longitude_deg\nA,A,1,2\n", r"^s\.csv:1: column 'name' appears twice"),
        ("", r"^s\.csv: empty file; expected a header row"),
        (f"{HEADER}\n", r"^s\.csv: no stations after the header$"),
    ],
)
def test_csv_errors_name_file_line_and_column(text: str, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        parse_stations_csv(text, "s.csv")


def test_load_stations_csv_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "gs.csv"
    path.write_text(f"{HEADER}\r\nA,1,2,0,5,x\r\nB,1,2,0,99,x\r\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}:3: min_elevation_deg: "):
        load_stations_csv(path)
    with pytest.raises(InputError, match=r"missing\.csv: file not found"):
        load_stations_csv(tmp_path / "missing.csv")
