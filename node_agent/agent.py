"""The agent's core: resident models, emulated node (speed, memory, slots, energy, link) and inference.

Plain Python over numpy arrays; the gRPC servicer and the fleet client convert protos and call it.

Emulation of the node profile
-----------------------------
* Speed: ``emulated_ms = work_scale x gflop_per_inference / profile.compute_gflops x 1000``; ``work_scale``
  is the input's size relative to the one-tile warm-up input (a batch of 4 counts 4). When the emulated node is
  slower than this host (emulated > real), the call sleeps the difference while still holding its slot, so
  callers see the node's latency and throughput; when it is faster, nothing can be done about the real time,
  and both figures are reported. With a simulated clock (replay) nothing sleeps.
* Slots: at most ``profile.slots`` calls run at once; calls waiting for a slot are the queue.
* Energy above idle: ``(active_power_w - idle_power_w) / slots x emulated_s`` per call (the scheduler's model).
* Memory: the declared memory of resident models must fit ``memory_bytes``.
* Link: while down, results wait for it to come up (``wait_link_up``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from node_agent.config import AgentConfig
from node_agent.errors import LimitError, LinkDownError, ModelExistsError, UnknownModelError
from node_agent.runtime import ModelRuntime, TensorSpec, count_gflop
from node_agent.store import ModelStore, StoredModel, check_model_id, check_sha256, sha256_file
from skyinfer.errors import InputError

log = logging.getLogger(__name__)
READ_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A resident model as clients see it."""

    model_id: str
    sha256: str
    size_bytes: int
    memory_bytes: int
    gflop_per_inference: float
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    warmup_ms: float
    emulated_ms_per_inference: float


@dataclass(frozen=True, slots=True)
class InferOutcome:
    """Outputs by name, and the call's real, emulated and queueing times (ms) and energy above idle (Wh)."""

    outputs: dict[str, np.ndarray]
    real_ms: float
    emulated_ms: float
    queue_ms: float
    energy_wh: float


@dataclass(frozen=True, slots=True)
class AgentStatus:
    node_id: str
    profile: str
    slots_total: int
    slots_in_use: int
    queue_length: int
    energy_used_wh: float
    link_up: bool
    models: tuple[str, ...]
    memory_used_bytes: int
    memory_total_bytes: int
    serving: bool
    inferences_total: int
    compute_gflops: float


class Cancellation(Protocol):
    """What :meth:`Agent.infer` waits on while emulating a slower node (``threading.Event`` is one)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds; True as soon as the work is cancelled."""
        ...


@dataclass(slots=True)
class _Resident:
    stored: StoredModel
    runtime: ModelRuntime
    info: ModelInfo


class Agent:
    """An emulated satellite edge node holding ONNX models. Thread-safe."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.profile = config.profile
        self.store = ModelStore(config.models_dir, config.max_model_bytes)
        self._models: dict[str, _Resident] = {}
        # Guards changes to _models and the counters below. A single read (a dict lookup, a bool) takes no lock:
        # under the GIL it sees either the old or the new value, which is all a caller can know anyway.
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one model load at a time (memory accounting, disk)
        # Slots are the _in_use counter under _lock (one lock round trip per call on a free slot; a
        # threading.Semaphore would add its own Python-level condition on top); queued calls wait here.
        self._slot_free = threading.Condition(self._lock)
        # Energy above idle per emulated millisecond of one slot: (active - idle) / slots, in Wh per ms.
        self._energy_per_emulated_ms_wh = (
            (self.profile.active_power_w - self.profile.idle_power_w) / self.profile.slots / 3.6e6
        )
        self._in_use = 0
        self._waiting = 0
        self._energy_wh = 0.0
        self._inferences = 0
        self._link = threading.Condition()
        self._link_up = True
        self.serving = False
        self.refused_at_start: list[str] = []

    # ------------------------------------------------------------------ models

    def load_store(self) -> None:
        """Load every verified model of the store; refuse (and log) the ones that fail, keep the rest."""
        good, bad = self.store.scan()
        for stored in good:
            try:
                self._admit(stored, committed=True)
            except InputError as exc:
                bad.append(f"{stored.path}: {exc}")
        for msg in bad:
            log.error("model store: refused %s", msg)
        self.refused_at_start = bad

    def load_model(
        self, model_id: str, sha256: str, total_size_bytes: int, chunks: Iterable[bytes],
        memory_bytes: int = 0, gflop_per_inference: float = 0.0,
    ) -> ModelInfo:
        """Verify, store and load a model streamed as ``chunks``; see :meth:`ModelStore.stage` for refusals."""
        check_model_id(model_id)
        sha = check_sha256(sha256)
        with self._lock:
            current = self._models.get(model_id)
        if current is not None:
            if current.stored.sha256 == sha:
                for _ in chunks:  # same bytes already resident: drain the upload and answer idempotently
                    pass
                return current.info
            raise ModelExistsError(f"model_id: {model_id!r} is loaded with another sha256; unload it first")
        with self._load_lock:
            self._check_memory(model_id, memory_bytes or total_size_bytes)
            staged = self.store.stage(model_id, sha, total_size_bytes, chunks, memory_bytes, gflop_per_inference)
            try:
                return self._admit(staged, committed=False)
            except BaseException:
                self.store.discard(staged)
                raise

    def load_model_file(
        self, model_id: str, path: Path, sha256: str = "", memory_bytes: int = 0, gflop_per_inference: float = 0.0
    ) -> ModelInfo:
        """Load an ONNX file readable by the agent (copied into the store); ``sha256`` checked when given."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"path: {p}: no such file")
        size = p.stat().st_size
        if size > self.config.max_model_bytes:
            raise LimitError(f"path: {p}: {size} bytes over the model size limit {self.config.max_model_bytes} bytes")
        digest = sha256 or sha256_file(p)

        def chunks() -> Iterable[bytes]:
            with p.open("rb") as f:
                yield from iter(lambda: f.read(READ_CHUNK_BYTES), b"")

        return self.load_model(model_id, digest, size, chunks(), memory_bytes, gflop_per_inference)

    def _check_memory(self, model_id: str, need_bytes: int) -> None:
        with self._lock:
            used = sum(r.stored.memory_bytes for r in self._models.values())
        limit = self.config.memory_bytes
        if used + need_bytes > limit:
            raise LimitError(
                f"memory_bytes: model {model_id!r} needs {need_bytes} bytes but only {limit - used} of "
                f"{limit} bytes are free on {self.profile.name!r}"
            )

    def _admit(self, stored: StoredModel, committed: bool) -> ModelInfo:
        self._check_memory(stored.model_id, stored.memory_bytes)
        runtime = ModelRuntime(stored.path, self.config.threads)
        gflop = stored.gflop_per_inference or stored.counted_gflop
        counted = False
        if gflop <= 0:
            try:
                gflop = count_gflop(stored.path, runtime.warmup_feeds)
                counted = True
            except Exception as exc:  # profiling is best effort; fall back to "no compute to emulate"
                log.warning("model %s: could not count FLOPs (%s); declare gflop_per_inference", stored.model_id, exc)
                gflop = 0.0
        if not committed:
            # The session already holds the graph in memory, so renaming its file into place is safe.
            stored = self.store.commit(stored)
        if counted:
            stored = self.store.remember_counted_gflop(stored, gflop)
        info = ModelInfo(
            model_id=stored.model_id, sha256=stored.sha256, size_bytes=stored.size_bytes,
            memory_bytes=stored.memory_bytes, gflop_per_inference=gflop, inputs=runtime.inputs,
            outputs=runtime.outputs, warmup_ms=runtime.warmup_ms,
            emulated_ms_per_inference=gflop / self.profile.compute_gflops * 1e3,
        )
        with self._lock:
            self._models[stored.model_id] = _Resident(stored, runtime, info)
        log.info("model %s loaded (%.3f GFLOP, warm-up %.1f ms)", stored.model_id, gflop, runtime.warmup_ms)
        return info

    def unload_model(self, model_id: str, delete_from_store: bool = False) -> None:
        check_model_id(model_id)
        with self._lock:
            if self._models.pop(model_id, None) is None:
                raise UnknownModelError(f"model_id: {model_id!r} is not loaded on {self.config.node_id!r}")
        if delete_from_store:
            self.store.delete(model_id)

    def list_models(self) -> list[ModelInfo]:
        with self._lock:
            return [r.info for _, r in sorted(self._models.items())]

    def model(self, model_id: str) -> ModelInfo:
        return self._resident(model_id).info

    def _resident(self, model_id: str) -> _Resident:
        r = self._models.get(model_id)  # one atomic read: no lock (see __init__)
        if r is None:
            with self._lock:
                loaded = ", ".join(sorted(self._models)) or "none"
            raise UnknownModelError(
                f"model_id: {model_id!r} is not loaded on {self.config.node_id!r} (loaded: {loaded})"
            )
        return r

    # ------------------------------------------------------------------ inference

    def check_inputs(self, model_id: str, feeds: Mapping[str, np.ndarray]) -> None:
        self._resident(model_id).runtime.check(feeds)

    def zero_inputs(self, model_id: str) -> dict[str, np.ndarray]:
        """One tile of zeros in the model's declared shapes (dynamic axes at warm-up size)."""
        return dict(self._resident(model_id).runtime.warmup_feeds)

    def infer(
        self, model_id: str, feeds: Mapping[str, np.ndarray], *, simulated_clock: bool = False,
        cancelled: Cancellation | None = None,
    ) -> InferOutcome:
        """Run one inference on the emulated node: check inputs, wait for a slot, run, emulate the duration.

        ``cancelled`` is waited on only while emulating a slower node (a caller that gives up frees its slot).
        """
        resident = self._resident(model_id)
        resident.runtime.check(feeds)
        emulated_ms = (
            resident.runtime.work_scale(feeds) * resident.info.gflop_per_inference / self.profile.compute_gflops * 1e3
        )
        slots = self.profile.slots
        t_queue = time.perf_counter()
        with self._lock:
            if self._in_use >= slots:  # no free slot: the call is queued (counted as waiting) until one frees
                self._waiting += 1
                try:
                    while self._in_use >= slots:
                        self._slot_free.wait()
                finally:
                    self._waiting -= 1
            self._in_use += 1
        try:
            t0 = time.perf_counter()
            queue_ms = (t0 - t_queue) * 1e3
            outputs = resident.runtime.run(feeds)
            real_ms = (time.perf_counter() - t0) * 1e3
            if not (simulated_clock or self.config.simulated_clock) and emulated_ms > real_ms:
                # A slower node: hold the slot for the rest of the emulated time (wakes early on cancel).
                wait_s = (emulated_ms - real_ms) / 1e3
                if cancelled is not None:
                    cancelled.wait(wait_s)
                else:
                    time.sleep(wait_s)
        except BaseException:
            with self._lock:
                self._release_slot()
            raise
        energy_wh = self._energy_per_emulated_ms_wh * emulated_ms
        with self._lock:  # one lock for the slot and all the call's accounting
            self._release_slot()
            self._energy_wh += energy_wh
            self._inferences += 1
        return InferOutcome(outputs, real_ms, emulated_ms, queue_ms, energy_wh)

    def _release_slot(self) -> None:
        """Give back a slot (caller holds ``_lock``) and wake one queued call, if any."""
        self._in_use -= 1
        if self._waiting:
            self._slot_free.notify()

    # ------------------------------------------------------------------ link and status

    def set_link(self, up: bool) -> None:
        with self._link:
            self._link_up = up
            self._link.notify_all()
        log.info("link %s", "up" if up else "down")

    @property
    def link_up(self) -> bool:
        return self._link_up  # one atomic read (checked on every Infer): no lock; set_link notifies waiters

    def wait_link_up(self, timeout_s: float | None) -> None:
        """Return once the link is up; LinkDownError after ``timeout_s`` seconds (None: wait for ever)."""
        with self._link:
            if not self._link.wait_for(lambda: self._link_up, timeout=timeout_s):
                raise LinkDownError(f"link: {self.config.node_id!r} has no contact; result not delivered")

    def status(self) -> AgentStatus:
        link_up = self.link_up
        with self._lock:
            return AgentStatus(
                node_id=self.config.node_id, profile=self.profile.name, slots_total=self.profile.slots,
                slots_in_use=self._in_use, queue_length=self._waiting, energy_used_wh=self._energy_wh,
                link_up=link_up, models=tuple(sorted(self._models)),
                memory_used_bytes=sum(r.stored.memory_bytes for r in self._models.values()),
                memory_total_bytes=self.config.memory_bytes, serving=self.serving,
                inferences_total=self._inferences, compute_gflops=self.profile.compute_gflops,
            )
