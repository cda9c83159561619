"""The foundation every command stands on: YAML with locations, times, atomic files, the CLI shell."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skyinfer.config import parse_yaml
from skyinfer.errors import InputError
from skyinfer.fileio import write_atomic
from skyinfer.timefmt import format_offset_utc, format_utc, parse_duration_s, parse_utc


def test_yaml_nodes_know_file_line_and_path() -> None:
    root = parse_yaml("a:\n  b:\n    - 1\n    - x: 2.5\n", "s.yaml")
    item = root.mapping(optional=["a"])["a"].mapping(optional=["b"])["b"].sequence()[1]
    x = item.mapping(required=["x"])["x"]
    assert (x.file, x.line, x.path) == ("s.yaml", 4, "a.b[1].x")
    assert x.as_float(min_value=0) == 2.5


def test_unknown_key_is_named_with_a_suggestion() -> None:
    root = parse_yaml("name: x\nconstelation: []\n", "s.yaml")
    with pytest.raises(InputError, match=r"s\.yaml:2: constelation: unknown key \(did you mean 'constellation'\?\)"):
        root.mapping(optional=["name", "constellation"])


def test_wrong_types_and_ranges_name_the_path() -> None:
    root = parse_yaml("n: abc\nm: -3\nb: 1\n", "f.yaml").mapping(optional=["n", "m", "b"])
    with pytest.raises(InputError, match=r"f\.yaml:1: n: expected a number"):
        root["n"].as_float()
    with pytest.raises(InputError, match=r"f\.yaml:2: m: must be >= 0"):
        root["m"].as_int(min_value=0)
    with pytest.raises(InputError, match=r"f\.yaml:3: b: expected true or false"):
        root["b"].as_bool()


def test_duplicate_keys_and_bad_yaml_are_refused() -> None:
    with pytest.raises(InputError, match=r"s\.yaml:2: a: duplicate key"):
        parse_yaml("a: 1\na: 2\n", "s.yaml")
    with pytest.raises(InputError, match=r"s\.yaml:\d+: invalid YAML"):
        parse_yaml("a: [1, 2\n", "s.yaml")


def test_times_round_trip_with_milliseconds() -> None:
    t = parse_utc("2023-04-20T00:00:00Z")
    assert t == datetime(2023, 4, 20, tzinfo=UTC)
    assert format_utc(t) == "2023-04-20T00:00:00.000Z"
    assert format_offset_utc(t, 90.1234) == "2023-04-20T00:01:30.123Z"
    assert parse_utc("2023-04-20T02:00:00+02:00") == t
    with pytest.raises(InputError, match="--start: 'yesterday' is not an ISO-8601"):
        parse_utc("yesterday", where="--start")


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0),
                                                ("1.5d", 129600.0), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1h", "0s", "2 weeks"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InputError, match="--duration"):
        parse_duration_s(text, where="--duration")


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_atomic(target, "hello")
    assert target.read_text() == "hello"
    with pytest.raises(InputError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "x.json", "x")
    assert sorted(os.listdir(tmp_path)) == ["out.json"]
