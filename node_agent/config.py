"""Agent configuration: which node is emulated, where it keeps models, how it talks to the scheduler."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.types import BUILTIN_PROFILES, NodeProfile
from skyinfer.errors import InputError

# Satellite names as catalogs spell them ("FLOCK 3P'-3", "NUSAT-8 (MARIE)"): one printable line.
NODE_ID_MAX_CHARS = 100
MIB = 1024**2
# HTTP/2 tuning shared by the agent's server and clients: tiles are megabytes, so a large stream window
# moves one in a single flight instead of many window-update round trips (each waiting for the other
# process to be scheduled), and maximum-size frames cut the per-frame work.
LOOKAHEAD_BYTES = 16 * MIB
MAX_FRAME_BYTES = 16 * MIB - 1  # the HTTP/2 maximum
# glibc malloc tuning for the agent process (see node_agent.service.tune_malloc): every Infer of a tile
# allocates and frees megabyte buffers (gRPC receive slices, the request's bytes, onnxruntime outputs, the
# encoded response) on gRPC's worker threads. With glibc's defaults those come from fresh mmap()s or from
# per-thread arenas trimmed back after every call, so each call page-faults its ~5 MB back in (measured:
# ~1,400 minor faults and ~2.5 ms per 1x6x256x256 tile). Serving buffers below the mmap threshold from the
# heap and keeping up to the trim threshold of free heap lets them be reused; the cost is that up to
# MALLOC_TRIM_THRESHOLD_BYTES of freed memory per arena stays resident after a burst of calls.
MALLOC_MMAP_THRESHOLD_BYTES = 16 * MIB
MALLOC_TRIM_THRESHOLD_BYTES = 32 * MIB


def default_intra_op_threads(profile: NodeProfile, cores: int | None = None) -> int:
    """onnxruntime intra-op threads per session: the host's cores shared among the profile's slots.

    Each slot runs one inference at a time; giving every slot ``cores // slots`` threads (at least one)
    keeps a fully busy node from oversubscribing the host.
    """
    n = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, n // profile.slots)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the agent's certificate and key, and the CA that signs peers (clients, scheduler)."""

    cert_path: Path
    key_path: Path
    ca_path: Path | None = None

    def __post_init__(self) -> None:
        for label, p in (("tls_cert", self.cert_path), ("tls_key", self.key_path), ("tls_ca", self.ca_path)):
            if p is not None and not Path(p).is_file():
                raise InputError(f"{label}: {p}: no such file")

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, CA bundle or None) as PEM bytes."""
        ca = self.ca_path.read_bytes() if self.ca_path is not None else None
        return self.cert_path.read_bytes(), self.key_path.read_bytes(), ca


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything an agent process needs.

    ``memory_limit_bytes`` defaults to the profile's memory; ``simulated_clock`` makes every inference report
    the emulated duration without sleeping (replay). Sizes are bytes, intervals seconds.
    """

    node_id: str
    profile: NodeProfile
    models_dir: Path
    listen: str = "127.0.0.1:0"
    spool_dir: Path | None = None
    scheduler_address: str | None = None
    scheduler_token: str | None = None  # bearer token for Fleet.Connect (schedulers without mutual TLS)
    advertise_address: str | None = None
    tls: TlsFiles | None = None
    intra_op_threads: int | None = None
    max_model_bytes: int = 512 * MIB
    max_tensor_bytes: int = 64 * MIB
    max_message_bytes: int = 80 * MIB
    memory_limit_bytes: int | None = None
    simulated_clock: bool = False
    heartbeat_interval_s: float = 5.0
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    grace_s: float = 5.0
    preload: tuple[tuple[str, Path], ...] = ()  # (model_id, ONNX file) loaded at start-up, before SERVING

    def __post_init__(self) -> None:
        if not (0 < len(self.node_id) <= NODE_ID_MAX_CHARS and self.node_id.isprintable()
                and self.node_id == self.node_id.strip()):
            raise InputError(
                f"node_id: expected a satellite name (1-{NODE_ID_MAX_CHARS} printable characters), got {self.node_id!r}"
            )
        for name in ("max_model_bytes", "max_tensor_bytes", "max_message_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name}: must be a positive integer, got {value!r}")
        if self.max_tensor_bytes > self.max_message_bytes:
            raise InputError("max_tensor_bytes: must not exceed max_message_bytes")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes < 1:
            raise InputError(f"memory_limit_bytes: must be positive, got {self.memory_limit_bytes!r}")
        if self.intra_op_threads is not None and not 1 <= self.intra_op_threads <= 256:
            raise InputError(f"intra_op_threads: must be in [1, 256], got {self.intra_op_threads!r}")
        for name in ("heartbeat_interval_s", "reconnect_min_s", "reconnect_max_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: must be > 0 s")
        if self.scheduler_token is not None and (
            not self.scheduler_token or any(c.isspace() for c in self.scheduler_token)
            or not self.scheduler_token.isprintable()
        ):
            raise InputError("scheduler_token: one line of printable characters without spaces")
        if ":" not in self.listen:
            raise InputError(f"listen: expected HOST:PORT, got {self.listen!r}")

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.models_dir / ".spool"

    @property
    def threads(self) -> int:
        """intra-op threads per session: the configured value or cores // slots, never more than the cores."""
        cores = os.cpu_count() or 1
        return min(cores, self.intra_op_threads or default_intra_op_threads(self.profile, cores))

    @property
    def memory_bytes(self) -> int:
        return self.memory_limit_bytes or self.profile.memory_bytes


def profile_by_name(name: str) -> NodeProfile:
    """A built-in node profile; InputError listing the known names otherwise."""
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_PROFILES))
        raise InputError(f"profile: unknown profile {name!r} (known: {known})") from None
