"""``--agents process``: one real ``skyinfer agent`` process per node, driven over gRPC.

Each node that computes gets its own process (``python -m skyinfer.cli agent
--simulated-clock``) listening on a free localhost port; models are loaded by
path (the agent copies and verifies them into its own store) and every
inference is a real ``Infer`` RPC. An ``agent_kill`` fault sends SIGKILL to
the process; the next job on that node starts a new process on the same model
store, which must come back with its models. At most ``MAX_AGENT_PROCESSES`` run at once (least
recently used first out), so that a 188-satellite scenario does not start 188 interpreters.

The agent takes a built-in profile by name; a custom profile's compute speed
is kept by scaling the declared GFLOP per inference at load time (emulated
time = GFLOP / compute_gflops, so the agent reports the custom node's time).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.types import BUILTIN_PROFILES, Job, ModelSpec, NodeProfile, gflop_per_inference
from skyinfer.replay.adapter import GROUND_NODE, AgentFailure, AgentPool, InferenceRun

START_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 60.0
# An agent process holds ~100 MB (Python, onnxruntime); past this many, the least recently used one is
# stopped (gracefully) and started again from its model store when its node next computes.
MAX_AGENT_PROCESSES = 16


@dataclass
class _Proc:
    popen: subprocess.Popen[str]
    address: str
    channel: Any
    stub: Any
    base_gflops: float
    loaded: dict[str, Any]


def _read_address(popen: subprocess.Popen[str], timeout_s: float, log_path: Path) -> str:
    """The ``listening on HOST:PORT`` line the agent prints once it serves."""
    found: list[str] = []

    def reader() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if line.startswith("listening on "):
                found.append(line.split("listening on ", 1)[1].strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    if not found:
        popen.kill()
        popen.wait(timeout=10)
        if popen.stdout is not None:
            popen.stdout.close()
        err = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
        raise AgentFailure(f"agent process did not start within {timeout_s:g} s: {err.strip()[-500:]}")
    return found[0]


class ProcessAgentPool(AgentPool):
    """Node agents as separate processes (see the module docstring)."""

    def __init__(self, root: Path, models: dict[str, ModelSpec], files: dict[str, Path],
                 profiles: dict[str, NodeProfile], *, real_tiles: int, threads: int) -> None:
        super().__init__(root, models, files, profiles, real_tiles=real_tiles, threads=threads)
        self._procs: dict[str, _Proc] = {}

    def _start(self, node: str, profile: NodeProfile) -> _Proc:
        import grpc

        from skyinfer.v1 import node_agent_pb2_grpc

        base = profile.name if profile.name in BUILTIN_PROFILES else "jetson-orin"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node) or "node"
        agent_id = "".join(ch if ch.isalnum() or ch in "._-() " else "_" for ch in node) or "node"
        models_dir = self.root / safe / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", agent_id, "--profile", base,
               "--profile-name", profile.name, "--listen", "127.0.0.1:0", "--models-dir", str(models_dir),
               "--simulated-clock", "--threads", str(self.threads), "--heartbeat-s", "3600"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # stderr (the agent's log) goes to a file: a pipe nobody reads would fill up and stall the agent.
        with (self.root / safe / "agent.log").open("a", encoding="utf-8") as log:
            popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        address = _read_address(popen, START_TIMEOUT_S, self.root / safe / "agent.log")
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
        proc = _Proc(popen, address, channel, node_agent_pb2_grpc.NodeAgentStub(channel),
                     BUILTIN_PROFILES[base].compute_gflops, {})
        listed = proc.stub.ListModels(_pb().ListModelsRequest(), timeout=RPC_TIMEOUT_S)
        proc.loaded = {m.model_id: m for m in listed.models}
        self.started += 1
        return proc

    def _proc(self, node: str, profile: NodeProfile) -> _Proc:
        proc = self._procs.pop(node, None)
        if proc is None or proc.popen.poll() is not None:
            while len(self._procs) >= MAX_AGENT_PROCESSES:
                self._stop(next(iter(self._procs)))
            proc = self._start(node, profile)
        self._procs[node] = proc  # re-inserted: the dict's order is least recently used first
        return proc

    def _stop(self, node: str) -> None:
        proc = self._procs.pop(node)
        proc.channel.close()
        if proc.popen.poll() is None:
            proc.popen.terminate()
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=10)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()

    def kill(self, node: str) -> None:
        proc = self._procs.pop(node, None)
        if proc is None:
            return
        proc.channel.close()
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()
        self.killed += 1

    def close(self) -> None:
        for node in sorted(self._procs):
            self._stop(node)

    def infer(self, node: str, profile: NodeProfile, job: Job, profiles: dict[str, NodeProfile]) -> InferenceRun:
        import grpc

        from node_agent.serde import add_tensors

        spec = self.models[job.model_id]
        gflop = gflop_per_inference(spec, profiles)
        if self.real_tiles == 0:
            return InferenceRun(job.tiles * gflop / profile.compute_gflops, 0.0, 0, "")
        if node == GROUND_NODE:  # the ground is a cloud region, not a satellite agent: run it in process
            return super().infer(node, profile, job, profiles)
        pb = _pb()
        try:
            proc = self._proc(node, profile)
            info = proc.loaded.get(job.model_id)
            if info is None:
                path = self.files[job.model_id]
                data = path.read_bytes()
                # The agent emulates with its built-in profile's speed; scale the work so that it reports
                # this node's time (emulated = gflop / compute_gflops).
                scaled = gflop * proc.base_gflops / profile.compute_gflops
                chunk = pb.LoadModelChunk(model_id=job.model_id, sha256=hashlib.sha256(data).hexdigest(),
                                          total_size_bytes=len(data), data=data, memory_bytes=spec.memory_bytes,
                                          gflop_per_inference=scaled)
                info = proc.stub.LoadModel(iter([chunk]), timeout=RPC_TIMEOUT_S)
                proc.loaded[job.model_id] = info
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(job.job_id.encode()).digest()[:8], "little"))
            n = min(self.real_tiles, job.tiles)
            real_ms = per_tile_ms = 0.0
            digest = hashlib.sha256()
            for _ in range(n):
                feeds: dict[str, np.ndarray] = {}
                for s in info.inputs:
                    shape = [d if d >= 0 else 1 for d in s.shape]
                    dtype = np.dtype(s.dtype)
                    feeds[s.name] = (rng.random(shape, dtype=np.float32).astype(dtype) if dtype.kind == "f"
                                     else np.zeros(shape, dtype))
                request = pb.InferRequest(model_id=job.model_id, request_id=f"{job.job_id}", simulated_clock=True)
                add_tensors(request.inputs, feeds)  # in place: no second copy of the inputs
                resp = proc.stub.Infer(request, timeout=RPC_TIMEOUT_S)
                real_ms += resp.real_ms
                per_tile_ms = resp.emulated_ms
                for t in sorted(resp.outputs, key=lambda t: t.name):
                    arr = np.frombuffer(t.data, dtype=np.dtype(t.dtype).newbyteorder("<"))
                    digest.update(np.argmax(arr).tobytes())
        except grpc.RpcError as exc:
            raise AgentFailure(f"agent {node!r}: {exc.code().name}: {exc.details()}") from exc
        return InferenceRun(job.tiles * per_tile_ms / 1000.0, real_ms, n, digest.hexdigest()[:16])


def _pb() -> Any:
    from skyinfer.v1 import node_agent_pb2

    return node_agent_pb2
