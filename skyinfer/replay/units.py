"""Scenario values users write by hand: instants, offsets, durations, sizes and ranges."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from skyinfer.config import Node
from skyinfer.errors import InputError
from skyinfer.timefmt import parse_duration_s, parse_utc

_ZERO_RE = re.compile(r"^0+(\.0*)?\s*(ms|s|m|min|h|d)?$")


def duration_s(node: Node, *, allow_zero: bool = False) -> float:
    """A duration (``90``, ``90s``, ``15m``, ``2h``, ``1d``) in seconds."""
    v = node.value.strip().removeprefix("+") if isinstance(node.value, str) else node.value
    if allow_zero and (v in (0, 0.0) or (isinstance(v, str) and _ZERO_RE.match(v))):
        return 0.0
    try:
        return parse_duration_s(v, where=node.where)
    except InputError:
        raise node.error(f"expected a duration such as 90s, 15m, 2h, got {node.value!r}") from None


def offset_s(node: Node, epoch_utc: datetime) -> float:
    """An instant of the scenario: an offset after its start (``0``, ``2h``, ``+90m``) or an ISO UTC time.

    Returns seconds after ``epoch_utc``.
    """
    v = node.value
    if isinstance(v, str) and re.match(r"^\s*\d{4}-\d{2}-\d{2}", v):
        t = parse_utc(v, where=node.where)
        return (t - epoch_utc).total_seconds()
    if isinstance(v, datetime):  # YAML turns unquoted timestamps into datetimes
        t = parse_utc(v.isoformat(), where=node.where)
        return (t - epoch_utc).total_seconds()
    return duration_s(node, allow_zero=True)


def size_bytes(node: Node) -> int:
    """A size: bytes as a number or with a unit (``250MB``, ``1.5GB``, ``64KiB``): the scenario's one size parser."""
    from scheduler.problem import parse_size_bytes

    return parse_size_bytes(node)


@dataclass(frozen=True, slots=True)
class Range:
    """A closed range ``[low, high]`` a generator draws uniformly from (``low == high``: a constant)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise InputError(f"range: low {self.low!r} is above high {self.high!r}")


def range_of(node: Node, parse: str) -> Range:
    """A single value or a two-element list ``[low, high]``; ``parse`` is duration|size|int|float."""
    items = node.sequence() if node.is_sequence() else [node, node]
    if len(items) != 2:
        raise node.error(f"expected one value or a list [low, high], got {len(items)} values")
    lo, hi = (_scalar(n, parse) for n in items)
    if lo > hi:
        raise node.error(f"low {items[0].value!r} is above high {items[1].value!r}")
    return Range(lo, hi)


def _scalar(node: Node, parse: str) -> float:
    if parse == "duration":
        return duration_s(node)
    if parse == "size":
        return float(size_bytes(node))
    if parse == "int":
        return float(node.as_int(min_value=1))
    return node.as_float()
