"""Work results kept on disk until the scheduler acknowledges them: ``<spool_dir>/<work_id>.pb``.

Each result is a serialized ``skyinfer.v1.WorkResult`` written atomically, so after a crash or restart the
spool holds exactly the results not yet acknowledged, and the agent re-sends them after it reconnects.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from skyinfer.errors import InputError
from skyinfer.fileio import write_atomic
from skyinfer.v1 import fleet_pb2

WORK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$")


def check_work_id(work_id: str) -> None:
    if not WORK_ID_RE.match(work_id):
        raise InputError(f"work_id: expected 1-200 letters, digits and ._:- (got {work_id!r})")


class ResultSpool:
    """Unacknowledged WorkResults by work_id. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, work_id: str) -> Path:
        check_work_id(work_id)
        return self.root / f"{work_id}.pb"

    def put(self, result: fleet_pb2.WorkResult) -> None:
        with self._lock:
            write_atomic(self._path(result.work_id), result.SerializeToString())

    def get(self, work_id: str) -> fleet_pb2.WorkResult | None:
        p = self._path(work_id)
        with self._lock:
            if not p.exists():
                return None
            return fleet_pb2.WorkResult.FromString(p.read_bytes())

    def ack(self, work_id: str) -> bool:
        """Drop an acknowledged result; False when it was not (or no longer) spooled."""
        p = self._path(work_id)
        with self._lock:
            try:
                p.unlink()
                return True
            except FileNotFoundError:
                return False

    def pending(self) -> list[fleet_pb2.WorkResult]:
        """Every unacknowledged result, oldest first."""
        with self._lock:
            files = sorted(self.root.glob("*.pb"), key=lambda p: (p.stat().st_mtime_ns, p.name))
            return [fleet_pb2.WorkResult.FromString(p.read_bytes()) for p in files]

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for _ in self.root.glob("*.pb"))
