"""The agent's model store on disk: ``<models_dir>/<model_id>/model.onnx`` plus ``meta.json``.

Every model enters through :meth:`ModelStore.stage`, which streams the bytes into a private temporary
directory while hashing them, refuses anything over the size limit, truncated or with the wrong sha256, and
:meth:`ModelStore.commit` then renames the directory into place (a rename is atomic, so a crash never leaves a
half-written model under its id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import LimitError
from scheduler.types import MODEL_ID_RE
from skyinfer.errors import InputError
from skyinfer.fileio import write_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
SHA256_HEX_LEN = 64


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A verified model file and what was declared about it (0: not declared)."""

    model_id: str
    path: Path
    sha256: str
    size_bytes: int
    memory_bytes: int
    gflop_per_inference: float = 0.0
    counted_gflop: float = 0.0  # counted from the graph at the first load (saves a profiled run at restart)

    def __post_init__(self) -> None:
        check_model_id(self.model_id)
        if len(self.sha256) != SHA256_HEX_LEN:
            raise InputError(f"model {self.model_id!r}: sha256: expected 64 hex digits")
        if self.size_bytes < 1 or self.memory_bytes < 1:
            raise InputError(f"model {self.model_id!r}: size_bytes/memory_bytes: must be positive")
        if self.gflop_per_inference < 0 or self.counted_gflop < 0:
            raise InputError(f"model {self.model_id!r}: gflop_per_inference: must be >= 0")


def check_model_id(model_id: str) -> None:
    if not MODEL_ID_RE.match(model_id):
        raise InputError(f"model_id: expected name@version (letters, digits, ._-), got {model_id!r}")


def check_sha256(sha256: str) -> str:
    s = sha256.strip().lower()
    if len(s) != SHA256_HEX_LEN or any(c not in "0123456789abcdef" for c in s):
        raise InputError(f"sha256: expected 64 hex digits, got {sha256!r}")
    return s


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelStore:
    """Verified ONNX files under ``root``; at most ``max_model_bytes`` each."""

    def __init__(self, root: Path, max_model_bytes: int) -> None:
        self.root = Path(root)
        self.max_model_bytes = max_model_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / ".staging"
        shutil.rmtree(self._staging, ignore_errors=True)  # leftovers of a crash mid-upload
        self._staging.mkdir()

    def stage(
        self, model_id: str, sha256: str, total_size_bytes: int, chunks: Iterable[bytes],
        memory_bytes: int = 0, gflop_per_inference: float = 0.0,
    ) -> StoredModel:
        """Write ``chunks`` to a staging directory, checking size and sha256 as they arrive.

        Raises
        ------
        LimitError
            Declared or received size over the limit.
        InputError
            Bad id or digest, size mismatch (truncated or extra bytes), sha256 mismatch.
        """
        check_model_id(model_id)
        expected = check_sha256(sha256)
        if total_size_bytes < 1:
            raise InputError("total_size_bytes: must be > 0")
        if total_size_bytes > self.max_model_bytes:
            raise LimitError(
                f"total_size_bytes: {total_size_bytes} bytes over the model size limit {self.max_model_bytes} bytes"
            )
        tmp = self._staging / uuid.uuid4().hex
        tmp.mkdir()
        try:
            h = hashlib.sha256()
            received = 0
            with (tmp / MODEL_FILE).open("wb") as f:
                for chunk in chunks:
                    received += len(chunk)
                    if received > total_size_bytes:
                        raise InputError(f"data: more bytes than total_size_bytes {total_size_bytes}")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if received < total_size_bytes:
                raise InputError(f"data: truncated: received {received} of {total_size_bytes} bytes")
            actual = h.hexdigest()
            if actual != expected:
                raise InputError(f"sha256: mismatch: declared {expected}, data hashes to {actual}")
            stored = StoredModel(
                model_id, tmp / MODEL_FILE, actual, received, memory_bytes or received, gflop_per_inference
            )
            write_atomic(tmp / META_FILE, json.dumps(_meta(stored), indent=1))
            return stored
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def discard(self, staged: StoredModel) -> None:
        if staged.path.parent.parent == self._staging:
            shutil.rmtree(staged.path.parent, ignore_errors=True)

    def commit(self, staged: StoredModel) -> StoredModel:
        """Move a staged model under its id (replacing an older copy); return it at its final path."""
        final = self.root / staged.model_id
        if final.exists():
            old = self._staging / f"old-{uuid.uuid4().hex}"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(staged.path.parent, final)
        _fsync_dir(self.root)
        return StoredModel(
            staged.model_id, final / MODEL_FILE, staged.sha256, staged.size_bytes, staged.memory_bytes,
            staged.gflop_per_inference, staged.counted_gflop,
        )

    def remember_counted_gflop(self, stored: StoredModel, gflop: float) -> StoredModel:
        """Record the counted GFLOP in ``meta.json`` (atomically) so a restart need not count again."""
        updated = StoredModel(
            stored.model_id, stored.path, stored.sha256, stored.size_bytes, stored.memory_bytes,
            stored.gflop_per_inference, gflop,
        )
        write_atomic(stored.path.parent / META_FILE, json.dumps(_meta(updated), indent=1))
        return updated

    def delete(self, model_id: str) -> None:
        check_model_id(model_id)
        shutil.rmtree(self.root / model_id, ignore_errors=True)

    def scan(self) -> tuple[list[StoredModel], list[str]]:
        """Verified models on disk, and one message per directory refused (bad meta, missing file, sha256)."""
        good: list[StoredModel] = []
        bad: list[str] = []
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            try:
                meta = json.loads((d / META_FILE).read_text())
                stored = StoredModel(
                    str(meta["model_id"]), d / MODEL_FILE, str(meta["sha256"]), int(meta["size_bytes"]),
                    int(meta["memory_bytes"]), float(meta.get("gflop_per_inference", 0.0)),
                    float(meta.get("counted_gflop", 0.0)),
                )
                if stored.model_id != d.name:
                    raise InputError(f"meta.json: model_id {stored.model_id!r} does not match the directory")
                actual = sha256_file(stored.path)
                if actual != stored.sha256:
                    raise InputError(f"sha256: mismatch: stored {stored.sha256}, file hashes to {actual}")
                good.append(stored)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                bad.append(f"{d}: {exc}")
        return good, bad


def _meta(m: StoredModel) -> dict[str, object]:
    return {
        "model_id": m.model_id, "sha256": m.sha256, "size_bytes": m.size_bytes,
        "memory_bytes": m.memory_bytes, "gflop_per_inference": m.gflop_per_inference,
        "counted_gflop": m.counted_gflop,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
