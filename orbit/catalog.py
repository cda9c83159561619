"""Satellite catalogs as CelesTrak serves them: TLE (2LE/3LE) and OMM (JSON, CSV).

Every record is validated before it becomes a :class:`~orbit.types.Satellite`:
line numbers, line length, checksum, matching catalog numbers, element ranges
and the SGP4 initialisation error code. A bad record is reported as
``FILE:LINE: what is wrong``. By default the first bad record raises
:class:`~skyinfer.errors.InputError` (saying how many more follow); with
``skip_invalid=True`` bad records are skipped and each one becomes a warning.

The ``parse_*`` functions take text and are pure; ``load_*`` read a file and
call them. Catalog numbers above 339999 (the Alpha-5 limit, reached by 9-digit
OMM-only catalog numbers) cannot be stored in an SGP4 ``Satrec``: such a satrec
gets ``satnum`` 0 and the true number is kept in ``Satellite.norad_id``.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sgp4 import omm
from sgp4.api import Satrec

from orbit.types import Constellation, Satellite
from skyinfer.errors import InputError

TLE_LINE_LENGTH = 69
MAX_MEAN_MOTION_REV_PER_DAY = 20.0
# Largest catalog number a Satrec (and a TLE, via Alpha-5) can carry.
MAX_SATREC_NORAD_ID = 339_999
# The 9-digit catalog numbers announced by the 18th Space Defense Squadron.
MAX_NORAD_ID = 999_999_999

# sgp4's initialisation error codes (SGP4.cpp, Vallado 2006).
SGP4_ERRORS = {
    1: "mean eccentricity is outside [0, 1)",
    2: "mean motion is not positive",
    3: "perturbed eccentricity is outside [0, 1]",
    4: "semi-latus rectum is negative",
    5: "epoch elements are sub-orbital",
    6: "satellite has decayed",
}

# Alpha-5: the leading digit of a 6-digit catalog number becomes a letter (I and O skipped).
_ALPHA5_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
# python-sgp4 2.x writes 18xxxx and 23xxxx as I and O (its exporter does not skip them) and reads I like J,
# O like P; accept those too so that files exported by sgp4 load.
_ALPHA5_LENIENT = {"I": 18, "O": 23}


class _RecordError(Exception):
    """One bad TLE record: ``line`` is the 1-based line the message is about."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class _Line:
    number: int  # 1-based line number in the file
    text: str  # without trailing whitespace or line terminator


# ---------------------------------------------------------------------------------------------------
# TLE
# ---------------------------------------------------------------------------------------------------
def tle_checksum(line: str) -> int:
    """The TLE checksum of the first 68 characters of ``line``: digits summed, ``-`` counts 1, mod 10."""
    total = 0
    for ch in line[:68]:
        if ch.isdigit():
            total += int(ch)
        elif ch == "-":
            total += 1
    return total % 10


def decode_catalog_number(field: str) -> int:
    """Decode the 5-character catalog-number field of a TLE, including Alpha-5 (``A0000`` = 100000).

    Alpha-5 skips the letters I and O (``J0000`` = 180000); ``I`` and ``O`` are read as ``J`` and ``P``
    as python-sgp4 does, since its exporter writes them.

    Raises ``ValueError`` when the field is neither 5 digits (leading blanks allowed) nor Alpha-5.
    """
    text = field.strip()
    if not text:
        raise ValueError("catalog number is blank")
    if text.isdigit():
        return int(text)
    if len(field) == 5 and field[0] in _ALPHA5_LETTERS and field[1:].isdigit():
        return (10 + _ALPHA5_LETTERS.index(field[0])) * 10_000 + int(field[1:])
    if len(field) == 5 and field[0] in _ALPHA5_LENIENT and field[1:].isdigit():
        return _ALPHA5_LENIENT[field[0]] * 10_000 + int(field[1:])
    raise ValueError(f"catalog number {field!r} is neither 5 digits nor Alpha-5")


def _is_line1(text: str) -> bool:
    return text.startswith("1 ")


def _is_line2(text: str) -> bool:
    return text.startswith("2 ")


def _float_field(line: _Line, start: int, end: int, what: str) -> float:
    raw = line.text[start:end]
    try:
        value = float(raw)
    except ValueError:
        raise _RecordError(line.number, f"{what} (columns {start + 1}-{end}): not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise _RecordError(line.number, f"{what} (columns {start + 1}-{end}): not a finite number: {raw!r}")
    return value


def _check_range(line: _Line, what: str, value: float, lo: float, hi: float, *, open_lo: bool = False,
                 open_hi: bool = False) -> None:
    too_low = value <= lo if open_lo else value < lo
    too_high = value >= hi if open_hi else value > hi
    if too_low or too_high:
        bounds = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        raise _RecordError(line.number, f"{what}: {value:g} is outside {bounds}")


def _validate_tle_line(line: _Line, expected_number: str) -> None:
    text = line.text
    if not text.startswith(expected_number + " "):
        raise _RecordError(line.number, f"expected TLE line {expected_number} (starting with "
                                        f"'{expected_number} '), got {text[:20]!r}")
    if len(text) != TLE_LINE_LENGTH:
        raise _RecordError(line.number, f"TLE line {expected_number} is {len(text)} characters long, "
                                        f"expected {TLE_LINE_LENGTH}")
    if not text[68].isdigit():
        raise _RecordError(line.number, f"checksum (column 69): expected a digit, got {text[68]!r}")
    expected = tle_checksum(text)
    if int(text[68]) != expected:
        raise _RecordError(line.number, f"checksum mismatch: line says {text[68]}, computed {expected}")


def _validate_tle_record(l1: _Line, l2: _Line) -> tuple[int, Satrec]:
    """Check one pair of lines; return (catalog number, initialised satrec) or raise _RecordError."""
    _validate_tle_line(l1, "1")
    _validate_tle_line(l2, "2")
    try:
        norad1 = decode_catalog_number(l1.text[2:7])
    except ValueError as exc:
        raise _RecordError(l1.number, str(exc)) from None
    try:
        norad2 = decode_catalog_number(l2.text[2:7])
    except ValueError as exc:
        raise _RecordError(l2.number, str(exc)) from None
    if norad1 != norad2:
        raise _RecordError(l2.number, f"catalog number {l2.text[2:7].strip()!r} differs from line 1's "
                                      f"{l1.text[2:7].strip()!r}")
    # Epoch: two-digit year (57-99 -> 19xx) and fractional day of year, 1-based.
    year_raw = l1.text[18:20]
    if not year_raw.isdigit():
        raise _RecordError(l1.number, f"epoch year (columns 19-20): not a 2-digit year: {year_raw!r}")
    year2 = int(year_raw)
    year = 1900 + year2 if year2 >= 57 else 2000 + year2
    day = _float_field(l1, 20, 32, "epoch day of year")
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    _check_range(l1, "epoch day of year", day, 1.0, 367.0 if leap else 366.0, open_hi=True)

    inclination_deg = _float_field(l2, 8, 16, "inclination")
    _check_range(l2, "inclination", inclination_deg, 0.0, 180.0)
    raan_deg = _float_field(l2, 17, 25, "right ascension of the ascending node")
    _check_range(l2, "right ascension of the ascending node", raan_deg, 0.0, 360.0)
    ecc_raw = l2.text[26:33]
    if not ecc_raw.strip().isdigit():
        raise _RecordError(l2.number, f"eccentricity (columns 27-33): expected 7 digits (implied "
                                      f"leading '0.'), got {ecc_raw!r}")
    argp_deg = _float_field(l2, 34, 42, "argument of perigee")
    _check_range(l2, "argument of perigee", argp_deg, 0.0, 360.0)
    mean_anomaly_deg = _float_field(l2, 43, 51, "mean anomaly")
    _check_range(l2, "mean anomaly", mean_anomaly_deg, 0.0, 360.0)
    mean_motion = _float_field(l2, 52, 63, "mean motion")
    _check_range(l2, "mean motion (rev/day)", mean_motion, 0.0, MAX_MEAN_MOTION_REV_PER_DAY,
                 open_lo=True, open_hi=True)

    try:
        satrec = Satrec.twoline2rv(l1.text, l2.text)
    except (ValueError, RuntimeError) as exc:
        raise _RecordError(l1.number, f"SGP4 cannot read the element set: {exc}") from None
    if satrec.error != 0:
        what = SGP4_ERRORS.get(satrec.error, "unknown error")
        raise _RecordError(l1.number, f"SGP4 initialisation failed (error {satrec.error}: {what})")
    return norad1, satrec


def _significant_lines(text: str) -> list[_Line]:
    # str.splitlines handles LF, CRLF and CR; rstrip drops the blank padding CelesTrak puts after names.
    out = []
    for i, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.rstrip()
        if stripped.strip():
            out.append(_Line(i, stripped))
    return out


def _starts_record(lines: list[_Line], j: int) -> bool:
    """Whether a record can start at ``lines[j]`` (a line 1, or a name line followed by a line 1)."""
    if _is_line1(lines[j].text):
        return True
    return not _is_line2(lines[j].text) and j + 1 < len(lines) and _is_line1(lines[j + 1].text)


def _resync(lines: list[_Line], j: int) -> int:
    """Index of the first line at or after ``j`` where a record can start (or len(lines))."""
    while j < len(lines) and not _starts_record(lines, j):
        j += 1
    return j


@dataclass(frozen=True, slots=True)
class _Parsed:
    name: str
    norad_id: int
    satrec: Satrec
    where: str  # FILE:LINE (TLE, CSV) or FILE:[index] (JSON)


def _split_tle_records(lines: list[_Line], source: str) -> Iterator[_Parsed | str]:
    """Records of a TLE file in order: a parsed satellite or an error message ``FILE:LINE: ...``."""
    i = 0
    n = len(lines)
    while i < n:
        first = lines[i]
        name: str | None = None
        if _is_line2(first.text):
            yield f"{source}:{first.number}: TLE line 2 without a preceding line 1"
            i = _resync(lines, i + 1)
            continue
        if not _is_line1(first.text):
            name = first.text.strip()
            if name.startswith("0 "):  # 3LE as served with FORMAT=3le
                name = name[2:].strip()
            i += 1
            if i >= n:
                yield f"{source}:{first.number}: name line {first.text.strip()!r} is not followed by TLE lines 1 and 2"
                return
        l1 = lines[i]
        if not _is_line1(l1.text):
            after = f" after name line {first.number}" if name is not None else ""
            yield f"{source}:{l1.number}: expected TLE line 1 (starting with '1 '){after}, got {l1.text[:24]!r}"
            i = _resync(lines, i)
            continue
        if i + 1 >= n:
            yield f"{source}:{l1.number}: TLE line 1 is not followed by line 2 (file ends)"
            return
        l2 = lines[i + 1]
        if not _is_line2(l2.text):
            yield f"{source}:{l2.number}: expected TLE line 2 (starting with '2 '), got {l2.text[:24]!r}"
            i = _resync(lines, i + 1)
            continue
        i += 2
        try:
            norad_id, satrec = _validate_tle_record(l1, l2)
        except _RecordError as exc:
            yield f"{source}:{exc.line}: {exc.message}"
            continue
        yield _Parsed(name if name else str(norad_id), norad_id, satrec, f"{source}:{first.number}")


def _build_constellation(parsed: list[_Parsed], warnings: list[str]) -> Constellation:
    """Satellites in file order; later duplicates of a name get `` [NORAD]`` appended (with a warning)."""
    first_at: dict[str, str] = {}
    taken: set[str] = {p.name for p in parsed}
    satellites = []
    for p in parsed:
        name = p.name
        if name in first_at:
            candidate = f"{p.name} [{p.norad_id}]"
            k = 2
            while candidate in taken:
                candidate = f"{p.name} [{p.norad_id}] #{k}"
                k += 1
            warnings.append(f"{p.where}: duplicate satellite name {p.name!r} (first at {first_at[p.name]}); "
                            f"renamed to {candidate!r}")
            name = candidate
            taken.add(name)
        else:
            first_at[name] = p.where
        satellites.append(Satellite(name=name, norad_id=p.norad_id, satrec=p.satrec, source=p.where))
    return Constellation(tuple(satellites))


def _finish(results: list[_Parsed | str], source: str, skip_invalid: bool,
            what: str) -> tuple[Constellation, list[str]]:
    errors = [r for r in results if isinstance(r, str)]
    parsed = [r for r in results if isinstance(r, _Parsed)]
    if errors and not skip_invalid:
        more = ""
        if len(errors) > 1:
            more = f" (and {len(errors) - 1} more invalid record{'s' if len(errors) > 2 else ''})"
        raise InputError(errors[0] + more)
    warnings = [f"{e} (record skipped)" for e in errors]
    if not parsed:
        skipped = f"; {len(errors)} invalid record(s) skipped, first: {errors[0]}" if errors else ""
        raise InputError(f"{source}: no valid {what} records found{skipped}")
    return _build_constellation(parsed, warnings), warnings


def parse_tle_text(text: str, source: str, *, skip_invalid: bool = False) -> tuple[Constellation, list[str]]:
    """Parse a TLE catalog (3LE with name lines, or bare 2LE) into a constellation.

    Parameters
    ----------
    text
        The file content: LF or CRLF line ends, blank lines and trailing blanks allowed, name lines
        optionally prefixed ``0 ``. Without a name line a satellite is named by its catalog number.
    source
        File name used in messages and in ``Satellite.source`` (``FILE:LINE`` of the record's first line).
    skip_invalid
        Skip bad records (each becomes a warning) instead of raising on the first one.

    Returns
    -------
    (constellation, warnings)
        Satellites in file order; warnings (``FILE:LINE: ...``) for skipped records and renamed duplicates.

    Raises
    ------
    InputError
        On the first bad record (unless ``skip_invalid``), or when no valid record remains.
    """
    results = list(_split_tle_records(_significant_lines(text), source))
    return _finish(results, source, skip_invalid, "TLE")


def _read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of a name
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a catalog file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None


def load_tle(path: str | Path, *, skip_invalid: bool = False) -> tuple[Constellation, list[str]]:
    """Read a TLE catalog file; see :func:`parse_tle_text`."""
    return parse_tle_text(_read_text(path), str(path), skip_invalid=skip_invalid)


# ---------------------------------------------------------------------------------------------------
# OMM (CCSDS Orbit Mean-Elements Message) as CelesTrak GP data: JSON list of objects or CSV with header
# ---------------------------------------------------------------------------------------------------
OMM_REQUIRED = (
    "NORAD_CAT_ID", "EPOCH", "MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE",
    "ARG_OF_PERICENTER", "MEAN_ANOMALY",
)
# Fields sgp4.omm.initialize reads that a minimal OMM may lack, with neutral defaults.
OMM_DEFAULTS: dict[str, str] = {
    "CLASSIFICATION_TYPE": "U",
    "OBJECT_ID": "",
    "EPHEMERIS_TYPE": "0",
    "ELEMENT_SET_NO": "999",
    "REV_AT_EPOCH": "0",
    "BSTAR": "0",
    "MEAN_MOTION_DOT": "0",
    "MEAN_MOTION_DDOT": "0",
}
# (field, low, high, open_low, open_high)
_OMM_RANGES = (
    ("INCLINATION", 0.0, 180.0, False, False),
    ("RA_OF_ASC_NODE", 0.0, 360.0, False, False),
    ("ARG_OF_PERICENTER", 0.0, 360.0, False, False),
    ("MEAN_ANOMALY", 0.0, 360.0, False, False),
    ("ECCENTRICITY", 0.0, 1.0, False, True),
    ("MEAN_MOTION", 0.0, MAX_MEAN_MOTION_REV_PER_DAY, True, True),
)


class _FieldError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _omm_value(fields: Mapping[str, Any], key: str) -> Any:
    value = fields.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _omm_number(fields: Mapping[str, Any], key: str) -> float:
    value = _omm_value(fields, key)
    if value is None:
        raise _FieldError(key, "missing required field")
    if isinstance(value, bool):
        raise _FieldError(key, f"not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _FieldError(key, f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise _FieldError(key, f"not a finite number: {value!r}")
    return number


def _omm_epoch(value: Any) -> datetime:
    if value is None:
        raise _FieldError("EPOCH", "missing required field")
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1]
    # Python's fromisoformat takes at most 6 fractional digits; OMM producers sometimes give more.
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?([+-]\d\d:\d\d)?", text)
    if match:
        frac = (match.group(2) or ".0")[:7]
        text = match.group(1) + frac + (match.group(3) or "")
    try:
        epoch = datetime.fromisoformat(text)
    except ValueError:
        raise _FieldError("EPOCH", f"not an ISO-8601 time: {value!r}") from None
    if epoch.tzinfo is not None:
        epoch = epoch.astimezone(UTC).replace(tzinfo=None)
    return epoch


def _omm_record(fields: Mapping[str, Any]) -> tuple[str | None, int, Satrec]:
    """Validate one OMM record; return (name or None, catalog number, satrec) or raise _FieldError."""
    raw_id = _omm_value(fields, "NORAD_CAT_ID")
    if raw_id is None:
        raise _FieldError("NORAD_CAT_ID", "missing required field")
    try:
        norad_id = int(str(raw_id).strip()) if not isinstance(raw_id, bool | float) else None
    except ValueError:
        norad_id = None
    if norad_id is None:
        raise _FieldError("NORAD_CAT_ID", f"expected an integer, got {raw_id!r}")
    if not 1 <= norad_id <= MAX_NORAD_ID:
        raise _FieldError("NORAD_CAT_ID", f"must be within [1, {MAX_NORAD_ID}], got {norad_id}")
    epoch = _omm_epoch(_omm_value(fields, "EPOCH"))
    values = {key: _omm_number(fields, key) for key in OMM_REQUIRED if key not in ("NORAD_CAT_ID", "EPOCH")}
    for key, lo, hi, open_lo, open_hi in _OMM_RANGES:
        v = values[key]
        if (v <= lo if open_lo else v < lo) or (v >= hi if open_hi else v > hi):
            bounds = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
            raise _FieldError(key, f"{v:g} is outside {bounds}")
    normalized: dict[str, str] = dict(OMM_DEFAULTS)
    for key in OMM_DEFAULTS:
        value = _omm_value(fields, key)
        if value is not None:
            normalized[key] = str(value)
    for key in ("BSTAR", "MEAN_MOTION_DOT", "MEAN_MOTION_DDOT"):
        normalized[key] = repr(_omm_number(normalized, key))
    for key in ("EPHEMERIS_TYPE", "ELEMENT_SET_NO", "REV_AT_EPOCH"):
        try:
            normalized[key] = str(int(float(normalized[key])))
        except ValueError:
            raise _FieldError(key, f"expected an integer, got {normalized[key]!r}") from None
    if len(normalized["CLASSIFICATION_TYPE"].strip()) != 1:
        raise _FieldError("CLASSIFICATION_TYPE", f"expected one letter (U, C or S), "
                                                 f"got {normalized['CLASSIFICATION_TYPE']!r}")
    normalized["CLASSIFICATION_TYPE"] = normalized["CLASSIFICATION_TYPE"].strip()
    normalized.update({key: repr(v) for key, v in values.items()})
    normalized["EPOCH"] = epoch.strftime("%Y-%m-%dT%H:%M:%S.%f")
    # A Satrec holds at most Alpha-5's 339999; 9-digit numbers live only on our Satellite.
    normalized["NORAD_CAT_ID"] = str(norad_id if norad_id <= MAX_SATREC_NORAD_ID else 0)
    satrec = Satrec()
    try:
        omm.initialize(satrec, normalized)
    except (ValueError, TypeError, RuntimeError) as exc:  # every field was checked above; keep a clear message
        raise _FieldError("<record>", f"SGP4 cannot initialise the element set: {exc}") from None
    if satrec.error != 0:
        what = SGP4_ERRORS.get(satrec.error, "unknown error")
        raise _FieldError("MEAN_MOTION", f"SGP4 initialisation failed (error {satrec.error}: {what})")
    name_value = _omm_value(fields, "OBJECT_NAME")
    name = str(name_value).strip() if name_value is not None else None
    return name or None, norad_id, satrec


def _omm_json_records(text: str, source: str) -> Iterator[_Parsed | str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"{source}: expected a list of OMM objects, got {type(data).__name__}")
    for index, item in enumerate(data):
        where = f"{source}:[{index}]"
        if not isinstance(item, dict):
            yield f"{source}: [{index}]: expected an object, got {type(item).__name__}"
            continue
        try:
            name, norad_id, satrec = _omm_record(item)
        except _FieldError as exc:
            yield f"{source}: [{index}].{exc.field}: {exc.message}"
            continue
        yield _Parsed(name or str(norad_id), norad_id, satrec, where)


def _omm_csv_records(text: str, source: str) -> Iterator[_Parsed | str]:
    reader = omm.parse_csv(io.StringIO(text, newline=""))  # a csv.DictReader
    header = reader.fieldnames or []
    if not header:
        return
    missing = [key for key in OMM_REQUIRED if key not in header]
    if missing:
        raise InputError(f"{source}:1: header lacks required column(s) {', '.join(missing)}")
    line_before = reader.line_num
    for row in reader:
        line = line_before + 1  # first physical line of this row
        line_before = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        if None in row:
            yield f"{source}:{line}: row has more cells than the header"
            continue
        try:
            name, norad_id, satrec = _omm_record(row)
        except _FieldError as exc:
            yield f"{source}:{line}: {exc.field}: {exc.message}"
            continue
        yield _Parsed(name or str(norad_id), norad_id, satrec, f"{source}:{line}")


def parse_omm_text(text: str, source: str, *, fmt: str | None = None,
                   skip_invalid: bool = False) -> tuple[Constellation, list[str]]:
    """Parse CelesTrak GP data (OMM keywords) in JSON or CSV into a constellation.

    Parameters
    ----------
    text
        JSON (a list of objects, or one object) or CSV with a header row of OMM keywords.
    source
        File name for messages; ``Satellite.source`` is ``FILE:LINE`` (CSV) or ``FILE:[index]`` (JSON).
    fmt
        ``"json"`` or ``"csv"``; ``None`` decides by the file extension of ``source``, then by content.
    skip_invalid
        Skip bad records (each becomes a warning) instead of raising on the first one.

    Returns
    -------
    (constellation, warnings)
        As :func:`parse_tle_text`. Errors read ``FILE:LINE: FIELD: ...`` (CSV) or
        ``FILE: [index].FIELD: ...`` (JSON). Required fields: ``OMM_REQUIRED``; the others default.
    """
    if fmt is None:
        suffix = Path(source).suffix.lower()
        by_content = "json" if text.lstrip()[:1] in ("[", "{") else "csv"
        fmt = suffix[1:] if suffix in (".json", ".csv") else by_content
    if fmt not in ("json", "csv"):
        raise InputError(f"{source}: unknown OMM format {fmt!r}; expected json or csv")
    if not text.strip():
        results: list[_Parsed | str] = []
    elif fmt == "json":
        results = list(_omm_json_records(text, source))
    else:
        results = list(_omm_csv_records(text, source))
    return _finish(results, source, skip_invalid, "OMM")


def load_omm(path: str | Path, *, skip_invalid: bool = False) -> tuple[Constellation, list[str]]:
    """Read an OMM catalog file (``.json`` or ``.csv``, else by content); see :func:`parse_omm_text`."""
    return parse_omm_text(_read_text(path), str(path), skip_invalid=skip_invalid)
