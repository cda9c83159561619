"""Time for the scheduler service: the wall clock for ``serve``, a simulated clock for scenario replay.

Everything in the service asks its clock for "now" (an aware UTC ``datetime``) and waits through it,
so a replay can drive the same planning loop in simulated time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, aware UTC."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set or ``timeout_s`` of this clock's time has passed; True if set."""
        ...


class WallClock:
    """Real time. ``start_utc`` (optional) makes the clock read that instant now and run at real speed from
    there: a scenario whose TLEs are from the past can be served "live" at its own epoch."""

    def __init__(self, start_utc: datetime | None = None) -> None:
        if start_utc is not None and start_utc.tzinfo is None:
            raise ValueError("start_utc: must be an aware UTC datetime")
        self._offset = timedelta(0) if start_utc is None else start_utc - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))


class SimClock:
    """Simulated time that moves only when :meth:`advance_to` is called.

    :meth:`wait` returns when the event is set, or as soon as simulated time has moved ``timeout_s`` past
    the moment the wait began (or when real ``max_real_wait_s`` elapse, so a forgotten clock never hangs).
    """

    def __init__(self, start_utc: datetime, *, max_real_wait_s: float = 3600.0) -> None:
        if start_utc.tzinfo is None:
            raise ValueError("start_utc: must be an aware UTC datetime")
        self._now = start_utc
        self._cond = threading.Condition()
        self._max_real_wait_s = max_real_wait_s

    def now(self) -> datetime:
        with self._cond:
            return self._now

    def advance_to(self, t_utc: datetime) -> None:
        """Move simulated time forward to ``t_utc`` (never backwards)."""
        with self._cond:
            if t_utc < self._now:
                raise ValueError(f"advance_to: {t_utc.isoformat()} is before the current {self._now.isoformat()}")
            self._now = t_utc
            self._cond.notify_all()

    def advance_by(self, delta_s: float) -> None:
        self.advance_to(self.now() + timedelta(seconds=delta_s))

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        with self._cond:
            until = self._now + timedelta(seconds=max(0.0, timeout_s))
        real_deadline = time.monotonic() + self._max_real_wait_s
        while not event.is_set():
            with self._cond:
                if self._now >= until:
                    return False
                # Poll the event in short slices: it is a threading.Event, not tied to our condition.
                self._cond.wait(0.05)
            if time.monotonic() > real_deadline:
                return event.is_set()
        return True
