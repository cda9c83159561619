"""Tests of orbit.catalog: TLE and OMM catalogs, as CelesTrak serves them and as users break them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sgp4.api import WGS72, Satrec
from sgp4.exporter import export_omm, export_tle

from orbit.catalog import (
    decode_catalog_number,
    load_omm,
    load_tle,
    parse_omm_text,
    parse_tle_text,
    tle_checksum,
)
from skyinfer.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data"
PLANET = DATA / "planet-2023-04-20.tle"
STARLINK = DATA / "starlink-2023-07-18.tle"

ONE_METRE_KM = 1e-3

# Two real records (Starlink, 2023-07-18) used to build bad files.
L0 = "STARLINK-1007"
L1 = "1 44713U 19074A   23198.31707558  .00000584  00000+0  58057-4 0  9994"
L2 = "2 44713  53.0547 204.8335 0000977  90.1304 269.9797 15.06399147203267"
M0 = "STARLINK-1008"
M1 = "1 44714U 19074B   23199.29111362  .00001226  00000+0  10120-3 0  9997"
M2 = "2 44714  53.0539 200.4639 0000996  78.6811 281.4290 15.06396840203414"


def with_checksum(line: str) -> str:
    """``line`` (68+ characters) with a correct checksum in column 69."""
    return line[:68] + str(tle_checksum(line))


def propagate_all(sats: list[Satrec], minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TEME positions (N, T, 3) km and error codes (N, T) ``minutes`` after each satrec's own epoch."""
    r_km = np.empty((len(sats), len(minutes), 3))
    err = np.empty((len(sats), len(minutes)), dtype=np.int64)
    for i, sat in enumerate(sats):
        jd = np.full(len(minutes), sat.jdsatepoch)
        fr = sat.jdsatepochF + minutes / 1440.0
        e, r, _ = sat.sgp4_array(jd, fr)
        r_km[i], err[i] = r, e
    return r_km, err


# ---------------------------------------------------------------------------------------------------
# Real catalogs
# ---------------------------------------------------------------------------------------------------
def test_planet_catalog_loads_every_satellite_and_propagates() -> None:
    constellation, warnings = load_tle(PLANET)
    assert len(constellation) == 188
    assert warnings == []
    assert constellation.names[0] == "SKYSAT-A"
    assert constellation.satellites[0].norad_id == 39418
    assert constellation.satellites[0].source == f"{PLANET}:1"
    assert constellation.satellites[1].source == f"{PLANET}:4"
    assert all(name == name.strip() and name for name in constellation.names)
    r_km, err = propagate_all([s.satrec for s in constellation.satellites], np.array([0.0, 90.0]))
    assert not err.any()
    altitude_km = np.linalg.norm(r_km, axis=-1) - 6378.135
    assert altitude_km.min() > 200.0 and altitude_km.max() < 700.0  # Flocks and SkySats are all LEO


def test_starlink_catalog_crlf_padded_names_and_duplicates() -> None:
    constellation, warnings = load_tle(STARLINK)
    assert len(constellation) == 4428
    assert constellation.names[:2] == ("STARLINK-1007", "STARLINK-1008")
    assert all(name == name.strip() for name in constellation.names)
    assert not any("\r" in name for name in constellation.names)
    # The catalog lists 16 objects named 'FALCON 9 DEB': the first keeps its name, the rest get their number.
    assert "FALCON 9 DEB" in constellation.names
    renamed = [n for n in constellation.names if n.startswith("FALCON 9 DEB [")]
    assert len(renamed) == 15 and len(warnings) == 15
    assert "FALCON 9 DEB [48608]" in renamed
    assert all("duplicate satellite name 'FALCON 9 DEB'" in w for w in warnings)
    assert re.match(rf"^{re.escape(str(STARLINK))}:\d+: ", warnings[0])
    _, err = propagate_all([s.satrec for s in constellation.satellites], np.array([0.0]))
    assert not err.any()


def test_bare_2le_named_by_catalog_number_and_3le_zero_prefix() -> None:
    text = f"{L1}\n{L2}\n\n0 {M0}   \n{M1}\n{M2}\n"
    constellation, warnings = parse_tle_text(text, "mixed.tle")
    assert constellation.names == ("44713", "STARLINK-1008")
    assert [s.source for s in constellation.satellites] == ["mixed.tle:1", "mixed.tle:4"]
    assert warnings == []


def test_names_with_spaces_blank_lines_and_trailing_whitespace() -> None:
    text = f"\n\n  FLOCK 4X 1   \t\r\n{L1}   \r\n{L2}\t\r\n\r\n\r\n"
    constellation, _ = parse_tle_text(text, "x.tle")
    assert constellation.names == ("FLOCK 4X 1",)
    assert constellation.satellites[0].source == "x.tle:3"


def test_alpha5_catalog_number() -> None:
    a1 = with_checksum(L1.replace("44713U", "A4713U"))
    a2 = with_checksum(L2.replace("2 44713", "2 A4713"))
    constellation, _ = parse_tle_text(f"ALPHA\n{a1}\n{a2}\n", "a.tle")
    assert constellation.satellites[0].norad_id == 104713
    assert decode_catalog_number("Z9999") == 339999
    assert decode_catalog_number("00005") == 5
    assert decode_catalog_number("J0000") == 180000  # Alpha-5 skips I and O ...
    assert decode_catalog_number("I0000") == 180000  # ... but python-sgp4 writes them: read them like sgp4
    assert decode_catalog_number("P1234") == decode_catalog_number("O1234") == 231234
    for bad in ("", "   ", "A12", "4471X", "a4713"):
        with pytest.raises(ValueError):
            decode_catalog_number(bad)


def test_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = tmp_path / "bom.tle"
    path.write_text(f"{L0}\r\n{L1}\r\n{L2}\r\n", encoding="utf-8-sig")
    constellation, _ = load_tle(path)
    assert constellation.names == ("STARLINK-1007",)


def test_load_tle_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.tle: file not found"):
        load_tle(tmp_path / "nope.tle")


# ---------------------------------------------------------------------------------------------------
# Bad records: message names FILE:LINE, skip_invalid skips with a warning
# ---------------------------------------------------------------------------------------------------
BAD_CASES: dict[str, tuple[list[str], int, str]] = {
    # case: (bad record lines, line number of the offending line within the file, message pattern)
    "bad checksum": ([M0, M1[:68] + str((int(M1[68]) + 1) % 10), M2], 5, r"checksum mismatch"),
    "wrong line number on line 1": ([M0, "3" + M1[1:], M2], 5, r"expected TLE line 1"),
    "wrong line number on line 2": ([M0, M1, "3" + M2[1:]], 6, r"expected TLE line 2"),
    "mismatched catalog numbers": ([M0, M1, with_checksum(M2.replace("44714", "44715"))], 6,
                                   r"catalog number '44715' differs from line 1's '44714'"),
    "short line": ([M0, M1[:60], M2], 5, r"TLE line 1 is 60 characters long, expected 69"),
    "inclination out of range": ([M0, M1, with_checksum(M2.replace(" 53.0539", "193.0539"))], 6,
                                 r"inclination: 193.054 is outside \[0, 180\]"),
    "raan out of range": ([M0, M1, with_checksum(M2.replace("200.4639", "400.4639"))], 6,
                          r"right ascension of the ascending node: 400.464 is outside"),
    "mean motion too high": ([M0, M1, with_checksum(M2.replace("15.06396840", "25.06396840"))], 6,
                             r"mean motion \(rev/day\): 25.064 is outside \(0, 20\)"),
    "zero mean motion": ([M0, M1, with_checksum(M2.replace("15.06396840", " 0.00000000"))], 6,
                         r"mean motion \(rev/day\): 0 is outside \(0, 20\)"),
    "non-numeric field": ([M0, M1, with_checksum(M2.replace(" 78.6811", " 78.6x11"))], 6,
                          r"argument of perigee \(columns 35-42\): not a number: ' 78.6x11'"),
    "bad epoch day": ([M0, with_checksum(M1.replace("23199.29111362", "23399.29111362")), M2], 5,
                      r"epoch day of year: 399.291 is outside \[1, 366\)"),
    "garbage": (["this is not a TLE", "neither is this"], 5, r"expected TLE line 1 .*after name line 4"),
    "line 2 alone": ([M2], 4, r"TLE line 2 without a preceding line 1"),
    "line 1 at end of file": ([M0, M1], 5, r"TLE line 1 is not followed by line 2 \(file ends\)"),
    "name at end of file": ([M0], 4, r"name line 'STARLINK-1008' is not followed by TLE lines 1 and 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_is_reported_with_file_and_line(case: str, tmp_path: Path) -> None:
    bad_lines, bad_line_no, pattern = BAD_CASES[case]
    path = tmp_path / "cat.tle"
    path.write_text("\r\n".join([L0, L1, L2, *bad_lines]) + "\r\n")
    with pytest.raises(InputError) as info:
        load_tle(path)
    assert str(info.value).startswith(f"{path}:{bad_line_no}: ")
    assert re.search(pattern, str(info.value)), str(info.value)

    constellation, warnings = load_tle(path, skip_invalid=True)
    assert constellation.names == ("STARLINK-1007",)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}:{bad_line_no}: ") and warnings[0].endswith("(record skipped)")


def test_error_says_how_many_more_and_good_records_after_bad_ones_survive(tmp_path: Path) -> None:
    bad1 = M1[:68] + str((int(M1[68]) + 1) % 10)
    text = "\n".join([M0, bad1, M2, "JUNK", M0, M1, "9 nonsense", L0, L1, L2]) + "\n"
    with pytest.raises(InputError, match=r"^t\.tle:2: checksum mismatch.*\(and 2 more invalid records\)$"):
        parse_tle_text(text, "t.tle")
    constellation, warnings = parse_tle_text(text, "t.tle", skip_invalid=True)
    assert constellation.names == ("STARLINK-1007",)
    assert constellation.satellites[0].source == "t.tle:8"
    assert [w.split(":")[1] for w in warnings] == ["2", "5", "7"]


def test_sgp4_initialisation_error_is_reported() -> None:
    # Eccentricity 0.9999999 with perigee inside the Earth: every range check passes, SGP4 refuses it.
    bad2 = with_checksum(M2.replace("0000996", "9999999"))
    with pytest.raises(InputError, match=r"^s\.tle:2: SGP4 initialisation failed \(error \d: "):
        parse_tle_text(f"{M0}\n{M1}\n{bad2}\n", "s.tle")


@pytest.mark.parametrize("text", ["", "\n\n  \r\n"])
def test_empty_file_is_an_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.tle"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: no valid TLE records found$"):
        load_tle(path)
    with pytest.raises(InputError, match="no valid TLE records found"):
        load_tle(path, skip_invalid=True)


def test_all_invalid_with_skip_is_still_an_error() -> None:
    with pytest.raises(InputError, match=r"^g\.tle: no valid TLE records found; 1 invalid record\(s\) skipped"):
        parse_tle_text("garbage\nmore garbage\n", "g.tle", skip_invalid=True)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=2, max_value=67), st.sampled_from("0123456789-"))
def test_checksum_detects_any_single_changed_digit(position: int, replacement: str) -> None:
    original = M1[position]
    if original == replacement or not (original.isdigit() or original == "-"):
        return
    changed = M1[:position] + replacement + M1[position + 1:]
    value = lambda ch: 1 if ch == "-" else int(ch)  # noqa: E731
    if value(original) % 10 == value(replacement) % 10:
        return  # '-' and '1' weigh the same: the checksum cannot tell them apart
    with pytest.raises(InputError, match=r"^h\.tle:2: "):
        parse_tle_text(f"{M0}\n{changed}\n{M2}\n", "h.tle")


@settings(max_examples=60, deadline=None)
@given(
    norad_id=st.integers(min_value=1, max_value=339_999),
    inclination_deg=st.floats(0.0, 180.0),
    raan_deg=st.floats(0.0, 359.9999),
    eccentricity=st.floats(0.0, 0.2),
    argp_deg=st.floats(0.0, 359.9999),
    mean_anomaly_deg=st.floats(0.0, 359.9999),
    mean_motion_rev_day=st.floats(1.0, 16.5),
    epoch_days=st.floats(18_000.0, 30_000.0),  # days from 1949-12-31: years 1999 to 2032
)
def test_any_exported_tle_parses_back_to_the_same_elements(
    norad_id: int, inclination_deg: float, raan_deg: float, eccentricity: float, argp_deg: float,
    mean_anomaly_deg: float, mean_motion_rev_day: float, epoch_days: float,
) -> None:
    # Keep the perigee above ground: SGP4 reports such orbits as decayed (and so do we).
    a_km = (398600.8 / (mean_motion_rev_day * 2.0 * np.pi / 86400.0) ** 2) ** (1.0 / 3.0)
    assume(a_km * (1.0 - eccentricity) > 6378.135 + 100.0)
    original = Satrec()
    original.sgp4init(WGS72, "i", norad_id, epoch_days, 1e-4, 0.0, 0.0, eccentricity, np.radians(argp_deg),
                      np.radians(inclination_deg), np.radians(mean_anomaly_deg),
                      mean_motion_rev_day * 2.0 * np.pi / 1440.0, np.radians(raan_deg))
    original.intldesg = "99001A"
    line1, line2 = export_tle(original)
    constellation, warnings = parse_tle_text(f"SAT\n{line1}\n{line2}\n", "rt.tle")
    assert warnings == []
    sat = constellation.satellites[0]
    assert sat.norad_id == norad_id
    # TLE precision: 1e-4 degrees, 1e-7 eccentricity, 1e-8 rev/day.
    assert np.degrees(sat.satrec.inclo) == pytest.approx(inclination_deg, abs=1e-4)
    assert sat.satrec.ecco == pytest.approx(eccentricity, abs=1e-7)
    assert sat.satrec.no_kozai * 1440.0 / (2.0 * np.pi) == pytest.approx(mean_motion_rev_day, abs=1e-8)


def test_starlink_as_bare_2le() -> None:
    lines = STARLINK.read_text().splitlines()
    two_line = "\n".join(line for line in lines if line.startswith(("1 ", "2 "))) + "\n"
    constellation, warnings = parse_tle_text(two_line, "starlink.2le")
    assert len(constellation) == 4428 and warnings == []
    assert constellation.names[0] == "44713"
    assert constellation.satellites[1].source == "starlink.2le:3"


# ---------------------------------------------------------------------------------------------------
# OMM
# ---------------------------------------------------------------------------------------------------
def omm_records(count: int) -> tuple[list[Satrec], list[dict[str, object]]]:
    """The first ``count`` Planet satellites as TLE satrecs and as OMM field dicts computed from them."""
    constellation, _ = load_tle(PLANET)
    sats = constellation.satellites[:count]
    return [s.satrec for s in sats], [export_omm(s.satrec, s.name) for s in sats]


def assert_same_trajectory(a: list[Satrec], b: list[Satrec]) -> None:
    minutes = np.linspace(0.0, 1440.0, 7)
    ra, ea = propagate_all(a, minutes)
    rb, eb = propagate_all(b, minutes)
    assert not ea.any() and not eb.any()
    assert np.abs(ra - rb).max() < ONE_METRE_KM


def test_omm_json_matches_tle_propagation(tmp_path: Path) -> None:
    tle_sats, records = omm_records(40)
    path = tmp_path / "planet.json"
    path.write_text(json.dumps(records))
    constellation, warnings = load_omm(path)
    assert warnings == []
    assert constellation.names == tuple(r["OBJECT_NAME"] for r in records)
    assert constellation.satellites[2].source == f"{path}:[2]"
    assert_same_trajectory(tle_sats, [s.satrec for s in constellation.satellites])


def test_omm_csv_matches_tle_propagation(tmp_path: Path) -> None:
    tle_sats, records = omm_records(40)
    path = tmp_path / "planet.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in records)
    constellation, _ = load_omm(path)
    assert len(constellation) == 40
    assert constellation.satellites[0].source == f"{path}:2"
    assert_same_trajectory(tle_sats, [s.satrec for s in constellation.satellites])


def test_omm_format_from_content_and_nine_digit_catalog_number() -> None:
    _, records = omm_records(1)
    record = dict(records[0], NORAD_CAT_ID=270000123)
    constellation, _ = parse_omm_text(json.dumps(record), "feed")  # a single object, no extension
    sat = constellation.satellites[0]
    assert sat.norad_id == 270000123
    assert sat.satrec.satnum == 0  # a Satrec cannot hold it; our Satellite keeps the true number
    assert sat.satrec.error == 0


def test_omm_optional_fields_default_and_name_falls_back_to_number() -> None:
    _, records = omm_records(1)
    required = ("NORAD_CAT_ID", "EPOCH", "MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE",
                "ARG_OF_PERICENTER", "MEAN_ANOMALY")
    minimal = {k: records[0][k] for k in required}
    minimal["EPOCH"] = str(minimal["EPOCH"])[:19] + "Z"  # no fraction, a zone suffix
    constellation, _ = parse_omm_text(json.dumps([minimal]), "min.json")
    assert constellation.names == (str(records[0]["NORAD_CAT_ID"]),)


JSON_BAD: dict[str, tuple[dict[str, object], str]] = {
    "missing field": ({"drop": "MEAN_MOTION"}, r"\[1\]\.MEAN_MOTION: missing required field"),
    "non-numeric": ({"set": ("ECCENTRICITY", "abc")}, r"\[1\]\.ECCENTRICITY: not a number: 'abc'"),
    "out of range": ({"set": ("INCLINATION", 200.0)}, r"\[1\]\.INCLINATION: 200 is outside \[0, 180\]"),
    "bad epoch": ({"set": ("EPOCH", "yesterday")}, r"\[1\]\.EPOCH: not an ISO-8601 time: 'yesterday'"),
    "bad id": ({"set": ("NORAD_CAT_ID", -4)}, r"\[1\]\.NORAD_CAT_ID: must be within \[1, 999999999\]"),
    "mean motion": ({"set": ("MEAN_MOTION", 0.0)}, r"\[1\]\.MEAN_MOTION: 0 is outside \(0, 20\)"),
    "classification": ({"set": ("CLASSIFICATION_TYPE", "SECRET")},
                       r"\[1\]\.CLASSIFICATION_TYPE: expected one letter \(U, C or S\), got 'SECRET'"),
    "bstar": ({"set": ("BSTAR", "q")}, r"\[1\]\.BSTAR: not a number: 'q'"),
    "element set number": ({"set": ("ELEMENT_SET_NO", "x")}, r"\[1\]\.ELEMENT_SET_NO: expected an integer"),
}


def _broken(records: list[dict[str, object]], change: dict[str, object]) -> list[dict[str, object]]:
    out = [dict(r) for r in records]
    if "drop" in change:
        del out[1][str(change["drop"])]
    else:
        setting = change["set"]
        assert isinstance(setting, tuple)
        out[1][str(setting[0])] = setting[1]
    return out


@pytest.mark.parametrize("case", sorted(JSON_BAD))
def test_omm_json_bad_record(case: str, tmp_path: Path) -> None:
    change, pattern = JSON_BAD[case]
    _, records = omm_records(3)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_broken(records, change)))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: {pattern}"):
        load_omm(path)
    constellation, warnings = load_omm(path, skip_invalid=True)
    assert len(constellation) == 2 and len(warnings) == 1
    assert warnings[0].startswith(f"{path}: [1].")


@pytest.mark.parametrize("case", sorted(JSON_BAD))
def test_omm_csv_bad_record(case: str, tmp_path: Path) -> None:
    change, pattern = JSON_BAD[case]
    _, records = omm_records(3)
    rows = _broken(records, change)
    path = tmp_path / "bad.csv"
    fields = list(records[0])
    if "drop" in change:
        rows[1][str(change["drop"])] = ""  # a CSV row cannot lack a column; an empty cell is "missing"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    csv_pattern = pattern.replace(r"\[1\]\.", "")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}:3: {csv_pattern}"):
        load_omm(path)
    constellation, warnings = load_omm(path, skip_invalid=True)
    assert len(constellation) == 2 and len(warnings) == 1
    assert warnings[0].startswith(f"{path}:3: ")


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("e.json", "", r"no valid OMM records found"),
        ("e.json", "[]", r"no valid OMM records found"),
        ("g.json", "{not json", r"^.*g\.json:1: invalid JSON: "),
        ("n.json", "42", r"expected a list of OMM objects"),
        ("o.json", "[42]", r"\[0\]: expected an object"),
        ("h.csv", "A,B\n1,2\n", r"h\.csv:1: header lacks required column"),
    ],
)
def test_omm_structural_errors(name: str, text: str, pattern: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=pattern):
        load_omm(path)
