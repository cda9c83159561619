"""Tests of skyinfer.scenario: the scenario YAML loader (orbital sections)."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sgp4.exporter import export_omm

from orbit.catalog import load_tle
from orbit.types import IslConfig
from orbit.walker import WALKER_NORAD_ID_BASE
from skyinfer.errors import InputError
from skyinfer.scenario import TOP_LEVEL_KEYS, load_scenario

ROOT = Path(__file__).resolve().parents[1]
PLANET = ROOT / "tests" / "data" / "planet-2023-04-20.tle"
SHIPPED_STATIONS = ROOT / "scenarios" / "stations" / "ground-stations.csv"


def first_records(count: int) -> str:
    """The first ``count`` 3-line records of the Planet catalog, as text."""
    return "\n".join(PLANET.read_text().splitlines()[: 3 * count]) + "\n"


def write_scenario(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


@pytest.fixture
def catalogs(tmp_path: Path) -> Path:
    """A catalog directory next to the scenario: 5 TLE records and 3 OMM records (JSON)."""
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "planet.tle").write_text(first_records(5))
    constellation, _ = load_tle(PLANET)
    records = [export_omm(s.satrec, s.name) for s in constellation.satellites[10:13]]
    (cat / "planet.json").write_text(json.dumps(records))
    (cat / "gs.csv").write_text("name,latitude_deg,longitude_deg\nTromso,69.66,18.94\n")
    return cat


def test_full_scenario(tmp_path: Path, catalogs: Path) -> None:
    path = write_scenario(tmp_path, f"""
        name: demo
        description: everything issue 2 defines
        start: 2023-04-20T00:00:00Z
        duration: 24h
        constellation:
          - tle: cat/planet.tle
            select: [SKYSAT-C1, SKYSAT-A]
          - tle: cat/planet.tle
            limit: 1
            select: SKYSAT-B
          - omm: cat/planet.json
          - walker: "53:12/3/1"
            altitude_km: 550
            name_prefix: "S1-"
          - walker: "86.4:6/2/1"
            altitude_km: 780
            kind: star
            name_prefix: "S2-"
        ground_stations:
          - {{name: Longyearbyen, latitude_deg: 78.23, longitude_deg: 15.41, altitude_m: 500, min_elevation_deg: 5,
              class: x-band}}
          - "WFF-2:37.92:-75.48:10"
          - csv: cat/gs.csv
          - csv: {SHIPPED_STATIONS}
        isl: {{policy: "nearest:4", max_range_km: 4000, grazing_altitude_km: 100}}
        sunlight: true
        nodes: {{anything: [goes, here]}}
        jobs: []
    """)
    sc = load_scenario(path)
    assert sc.path == path and sc.name == "demo"
    assert sc.start_utc == datetime(2023, 4, 20, tzinfo=UTC)
    assert sc.duration_s == 86400.0
    names = sc.constellation.names
    assert names[:3] == ("SKYSAT-C1", "SKYSAT-A", "SKYSAT-B")
    assert len(names) == 3 + 3 + 12 + 6
    assert names[6] == "S1-P00S00" and names[-1] == "S2-P01S02"
    sats = sc.constellation.satellites
    assert sats[0].source == f"{catalogs / 'planet.tle'}:7"
    assert sats[3].source == f"{catalogs / 'planet.json'}:[0]"
    # Two shells get consecutive synthetic catalog numbers.
    assert sats[6].norad_id == WALKER_NORAD_ID_BASE and sats[18].norad_id == WALKER_NORAD_ID_BASE + 12
    assert sats[6].satrec.jdsatepoch + sats[6].satrec.jdsatepochF == pytest.approx(2460054.5)
    assert [s.name for s in sc.stations[:3]] == ["Longyearbyen", "WFF-2", "Tromso"]
    assert sc.stations[0].station_class == "x-band" and sc.stations[0].min_elevation_deg == 5.0
    assert sc.stations[1].altitude_m == 10.0 and sc.stations[1].min_elevation_deg == 10.0
    assert len(sc.stations) == 3 + 13
    assert sc.isl == IslConfig("nearest", 4, 4000.0, 100.0)
    assert sc.sunlight is True
    assert sc.root.value["nodes"].plain() == {"anything": ["goes", "here"]}
    assert sc.warnings == ()


def test_minimal_scenario_defaults(tmp_path: Path, catalogs: Path) -> None:
    path = write_scenario(tmp_path, """
        constellation:
          tle: cat/planet.tle
    """)
    sc = load_scenario(path)
    assert sc.name == "scenario" and sc.start_utc is None and sc.duration_s is None
    assert len(sc.constellation) == 5 and sc.stations == ()
    assert sc.isl == IslConfig() and sc.sunlight is False


def test_isl_shorthand_and_start_as_string(tmp_path: Path, catalogs: Path) -> None:
    path = write_scenario(tmp_path, """
        start: "2023-04-20 06:00:00+02:00"
        duration: 5400
        constellation: [{tle: cat/planet.tle}]
        isl: grid
    """)
    sc = load_scenario(path)
    assert sc.start_utc == datetime(2023, 4, 20, 4, tzinfo=UTC)
    assert sc.duration_s == 5400.0 and sc.isl.policy == "grid"


def test_skip_invalid_collects_warnings(tmp_path: Path, catalogs: Path) -> None:
    lines = first_records(2).splitlines()
    lines[1] = lines[1][:68] + str((int(lines[1][68]) + 1) % 10)  # break the first checksum
    (catalogs / "bad.tle").write_text("\n".join(lines) + "\n")
    path = write_scenario(tmp_path, """
        constellation:
          - tle: cat/bad.tle
    """)
    with pytest.raises(InputError, match=r"scenario\.yaml:2: constellation\[0\]\.tle: .*bad\.tle:2: checksum"):
        load_scenario(path)
    sc = load_scenario(path, skip_invalid=True)
    assert sc.constellation.names == ("SKYSAT-B",)
    assert len(sc.warnings) == 1 and "bad.tle:2: checksum mismatch" in sc.warnings[0]


def test_every_allowed_top_level_key_is_accepted(tmp_path: Path, catalogs: Path) -> None:
    others = [k for k in TOP_LEVEL_KEYS if k not in (
        "name", "description", "start", "duration", "constellation", "ground_stations", "isl", "sunlight")]
    assert others == ["nodes", "models", "jobs", "workload", "faults", "policy", "solver", "agents", "replay"]
    body = "constellation: {tle: cat/planet.tle}\n" + "".join(f"{k}: {{}}\n" for k in others)
    sc = load_scenario(write_scenario(tmp_path, body))
    assert set(sc.root.value) == {"constellation", *others}


WALKER = 'constellation:\n  - walker: "53:12/3/1"\n    altitude_km: 550\n'
START = "start: 2023-04-20T00:00:00Z\n"

# (yaml body, expected "LINE: key.path: message" pattern after the file name)
ERROR_CASES = {
    "unknown top-level key": (START + "constelation: []\n",
                              r"2: constelation: unknown key \(did you mean 'constellation'\?\)"),
    "missing constellation": (START, r"1: <document>: missing required key 'constellation'"),
    "document not a mapping": ("- a\n- b\n", r"1: <document>: expected a mapping, got a list"),
    "invalid yaml": ("constellation: [\n", r"2: invalid YAML"),
    "empty constellation": (START + "constellation: []\n", r"2: constellation: must list at least one source"),
    "source not a mapping": (START + "constellation:\n  - planet.tle\n",
                             r"3: constellation\[0\]: expected a mapping with one of the keys tle, omm or walker"),
    "two kinds in a source": (START + "constellation:\n  - tle: cat/planet.tle\n    walker: '53:12/3/1'\n",
                              r"3: constellation\[0\]: needs exactly one of the keys tle, omm or walker, "
                              r"got tle and walker"),
    "unknown source key": (START + "constellation:\n  - tle: cat/planet.tle\n    limt: 2\n",
                           r"4: constellation\[0\]\.limt: unknown key \(did you mean 'limit'\?\)"),
    "missing tle file": (START + "constellation:\n  - tle: cat/nope.tle\n",
                         r"3: constellation\[0\]\.tle: file not found: .*nope\.tle"),
    "tle not a string": (START + "constellation:\n  - tle: [a]\n",
                         r"3: constellation\[0\]\.tle: expected a string, got a list"),
    "unknown selected satellite": (START + "constellation:\n  - tle: cat/planet.tle\n    select: [SKYSAT-A, SKY-Z]\n",
                                   r"4: constellation\[0\]\.select\[1\]: unknown satellite 'SKY-Z' in .*planet\.tle"
                                   r" \(did you mean 'SKYSAT-.'\?\)"),
    "selected twice": (START + "constellation:\n  - tle: cat/planet.tle\n    select:\n      - SKYSAT-A\n"
                               "      - SKYSAT-A\n",
                       r"6: constellation\[0\]\.select\[1\]: satellite 'SKYSAT-A' selected twice"),
    "empty select": (START + "constellation:\n  - tle: cat/planet.tle\n    select: []\n",
                     r"4: constellation\[0\]\.select: must name at least one satellite"),
    "zero limit": (START + "constellation:\n  - tle: cat/planet.tle\n    limit: 0\n",
                   r"4: constellation\[0\]\.limit: must be >= 1, got 0"),
    "limit not an integer": (START + "constellation:\n  - tle: cat/planet.tle\n    limit: five\n",
                             r"4: constellation\[0\]\.limit: expected an integer, got str 'five'"),
    "bad omm": (START + "constellation:\n  - omm: cat/planet.tle\n",
                r"3: constellation\[0\]\.omm: .*planet\.tle:1: header lacks required column"),
    "walker altitude too low": (START + WALKER.replace("550", "100"),
                                r"4: constellation\[0\]\.altitude_km: must be >= 160, got 100"),
    "walker altitude not a number": (START + WALKER.replace("550", "low"),
                                     r"4: constellation\[0\]\.altitude_km: expected a number, got str 'low'"),
    "walker missing altitude": (START + 'constellation:\n  - walker: "53:12/3/1"\n',
                                r"3: constellation\[0\]: missing required key 'altitude_km'"),
    "walker bad spec": (START + WALKER.replace("53:12/3/1", "53:12/5/1"),
                        r"3: constellation\[0\]\.walker: planes: total 12 is not divisible by 5 planes"),
    "walker bad phasing": (START + WALKER.replace("53:12/3/1", "53:12/3/3"),
                           r"3: constellation\[0\]\.walker: phasing: must be within \[0, planes - 1\]"),
    "walker garbage spec": (START + WALKER.replace('"53:12/3/1"', "polar"),
                            r"3: constellation\[0\]\.walker: 'polar' is not a Walker spec"),
    "walker bad kind": (START + WALKER + "    kind: rosette\n",
                        r"5: constellation\[0\]\.kind: must be delta or star, got 'rosette'"),
    "walker without start": (WALKER, r"2: constellation\[0\]\.walker: a Walker shell needs the scenario's start"),
    "duplicate satellite across sources": (START + WALKER + '  - walker: "53:6/3/1"\n    altitude_km: 600\n',
                                           r"5: constellation\[1\]: satellite name 'P00S00' also comes from "
                                           r"constellation\[0\] \(give the shells different name_prefix values\)"),
    "bad start": ("start: yesterday\n" + WALKER, r"1: start: 'yesterday' is not an ISO-8601 UTC time"),
    "start a number": ("start: 2023\n" + WALKER, r"1: start: expected an ISO-8601 UTC time"),
    "bad duration": (START + "duration: forever\n" + WALKER, r"2: duration: 'forever' is not a duration"),
    "negative duration": (START + "duration: -5\n" + WALKER, r"2: duration: must be positive"),
    "boolean duration": (START + "duration: true\n" + WALKER, r"2: duration: expected a duration"),
    "name not a string": (START + "name: [a]\n" + WALKER, r"2: name: expected a string, got a list"),
    "station latitude": (START + WALKER + "ground_stations:\n  - {name: A, latitude_deg: 95, longitude_deg: 0}\n",
                         r"6: ground_stations\[0\]\.latitude_deg: must be <= 90, got 95"),
    "station missing longitude": (START + WALKER + "ground_stations:\n  - {name: A, latitude_deg: 5}\n",
                                  r"6: ground_stations\[0\]: missing required key 'longitude_deg'"),
    "station unknown key": (START + WALKER + "ground_stations:\n  - {name: A, latitude_deg: 5, longitude_deg: 1, "
                                             "mask: 5}\n",
                            r"6: ground_stations\[0\]\.mask: unknown key"),
    "station mask type": (START + WALKER + "ground_stations:\n  - {name: A, latitude_deg: 5, longitude_deg: 1,"
                                           " min_elevation_deg: high}\n",
                          r"6: ground_stations\[0\]\.min_elevation_deg: expected a number"),
    "station duplicate": (START + WALKER + "ground_stations:\n  - A:1:2\n  - {name: A, latitude_deg: 5, "
                                           "longitude_deg: 1}\n",
                          r"7: ground_stations\[1\]: ground station 'A' is defined twice \(also at "
                          r"ground_stations\[0\]\)"),
    "station spec": (START + WALKER + "ground_stations:\n  - A:north:2\n",
                     r"6: ground_stations\[0\] 'A:north:2': latitude_deg: not a number: 'north'"),
    "station wrong type": (START + WALKER + "ground_stations:\n  - 42\n",
                           r"6: ground_stations\[0\]: expected a station mapping"),
    "station csv": (START + WALKER + "ground_stations:\n  - csv: cat/bad.csv\n",
                    r"6: ground_stations\[0\]\.csv: .*bad\.csv:2: latitude_deg: must be within \[-90, 90\]"),
    "station csv extra key": (START + WALKER + "ground_stations:\n  - {csv: cat/gs.csv, name: x}\n",
                              r"6: ground_stations\[0\]\.name: unknown key"),
    "isl policy": (START + WALKER + "isl: {policy: mesh}\n", r"5: isl\.policy: unknown policy 'mesh'"),
    "isl nearest k": (START + WALKER + "isl:\n  policy: nearest:20\n",
                      r"6: isl\.policy: nearest:K needs 1 <= K <= 16, got 20"),
    "isl range": (START + WALKER + "isl:\n  policy: grid\n  max_range_km: -1\n",
                  r"7: isl\.max_range_km: must be within \(0, 100000\], got -1"),
    "isl grazing type": (START + WALKER + "isl: {policy: grid, grazing_altitude_km: low}\n",
                         r"5: isl\.grazing_altitude_km: expected a number"),
    "isl unknown key": (START + WALKER + "isl: {policy: grid, range_km: 5}\n",
                        r"5: isl\.range_km: unknown key"),
    "sunlight not boolean": (START + WALKER + "sunlight: 1\n", r"5: sunlight: expected true or false"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_carry_file_line_and_key_path(case: str, tmp_path: Path, catalogs: Path) -> None:
    body, pattern = ERROR_CASES[case]
    (catalogs / "bad.csv").write_text("name,latitude_deg,longitude_deg\nX,99,0\n")
    path = write_scenario(tmp_path, body)
    with pytest.raises(InputError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    assert re.match(rf"^{re.escape(str(path))}:{pattern}", message), message


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.yaml: file not found"):
        load_scenario(tmp_path / "nope.yaml")
