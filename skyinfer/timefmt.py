"""UTC instants and durations as users write them, and as skyinfer prints them.

Inside the computation every time is seconds (float) from a named epoch; these
helpers are the only place strings become times and back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from skyinfer.errors import InputError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_utc(text: str, *, where: str = "time") -> datetime:
    """Parse an ISO-8601 instant (``2023-04-20T00:00:00Z``) as an aware UTC datetime.

    A value without a zone is taken as UTC; a value with another offset is converted.
    """
    s = str(text).strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise InputError(
            f"{where}: {text!r} is not an ISO-8601 UTC time (expected e.g. 2023-04-20T00:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_utc(dt: datetime) -> str:
    """``2023-04-20T00:00:00.000Z``: UTC with milliseconds and a ``Z``."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def format_offset_utc(epoch: datetime, t_s: float) -> str:
    """Format the instant ``t_s`` seconds after ``epoch``, rounded to the millisecond."""
    return format_utc(epoch + timedelta(milliseconds=round(float(t_s) * 1000.0)))


def parse_duration_s(text: str | float | int, *, where: str = "duration") -> float:
    """Parse ``90``, ``90s``, ``15m``, ``2h``, ``1.5d`` into seconds (a bare number is seconds)."""
    if isinstance(text, bool):
        raise InputError(f"{where}: expected a duration such as 24h, got {text!r}")
    if isinstance(text, int | float):
        value_s = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise InputError(
                f"{where}: {text!r} is not a duration (expected a number with a unit: 90s, 15m, 2h, 1d)"
            )
        value_s = float(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    if not value_s > 0.0 or value_s != value_s:
        raise InputError(f"{where}: must be positive, got {text!r}")
    return value_s
