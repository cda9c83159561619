"""A terminal progress bar that stays silent for short runs and non-terminals."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Draws ``label [#####     ] 42% ETA 3s`` on ``stream`` when it is a terminal.

    Nothing is drawn during the first ``delay_s`` seconds, so quick commands
    stay quiet; nothing at all when the stream is not a terminal.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, delay_s: float = 2.0,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.delay_s = delay_s
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._t0 = time.monotonic()
        self._drawn = False
        self._last_draw = 0.0

    def __call__(self, done: float, total: float, detail: str = "") -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        elapsed = now - self._t0
        if elapsed < self.delay_s or (now - self._last_draw < 0.2 and done < total):
            return
        frac = min(max(done / total, 0.0), 1.0)
        width = 30
        filled = int(frac * width)
        eta = f" ETA {elapsed / frac - elapsed:4.0f}s" if 0 < frac < 1 else ""
        extra = f" {detail}" if detail else ""
        self.stream.write(f"\r{self.label} [{'#' * filled}{' ' * (width - filled)}] {frac * 100:3.0f}%{eta}{extra}")
        self.stream.flush()
        self._drawn = True
        self._last_draw = now

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
