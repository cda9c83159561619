"""Node agent overhead, memory and start-up: ``python benchmarks/bench_agent.py [--repeats N]``.

* Infer through a real agent process (gRPC over loopback, input/output serialised) against the same model in
  an onnxruntime session called directly in this process, with the same session options and thread count,
  calls interleaved; medians of ``--repeats`` calls. The agent emulates ``three-body-744tops`` (faster than
  this host), so no emulation sleep is added and the difference is pure agent overhead.
  - a ~1 ms CNN (target: at most 1 ms added per call);
  - a ~100 ms model: DLR's cloud mask when ``ukis-csmask`` is installed, else a larger built CNN on a
    6x256x256 tile standing in for it (target: at most 5% relative overhead).
* Idle RSS of an agent process (no model, and with the small model), and start-up time to SERVING.

Models are built with onnx.helper (the test suite's builder); onnx is a dev dependency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "node_agent"))

from onnx_builders import build_cnn  # noqa: E402

from node_agent import serde  # noqa: E402
from node_agent.config import LOOKAHEAD_BYTES, MAX_FRAME_BYTES  # noqa: E402
from node_agent.healthcheck import check  # noqa: E402
from node_agent.models import find_csmask_model  # noqa: E402
from node_agent.runtime import session_options  # noqa: E402
from node_agent.store import sha256_file  # noqa: E402
from skyinfer.v1 import node_agent_pb2, node_agent_pb2_grpc  # noqa: E402

THREADS = 1
CHUNK_BYTES = 1 << 20


def start_agent(models_dir: Path, threads: int) -> tuple[subprocess.Popen[str], str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", "bench", "--profile", "three-body-744tops",
         "--models-dir", str(models_dir), "--threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip().removeprefix("listening on ")
    while check(address, timeout_s=1.0) != "SERVING":
        time.sleep(0.005)
    return proc, address, (time.perf_counter() - t0) * 1e3


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(stub: node_agent_pb2_grpc.NodeAgentStub, model_id: str, path: Path) -> node_agent_pb2.ModelInfo:
    data = path.read_bytes()
    sha = sha256_file(path)

    def chunks():
        for i in range(0, len(data), CHUNK_BYTES):
            yield node_agent_pb2.LoadModelChunk(model_id=model_id, sha256=sha, total_size_bytes=len(data),
                                                data=data[i:i + CHUNK_BYTES])

    return stub.LoadModel(chunks(), timeout=300)


def compare(stub: node_agent_pb2_grpc.NodeAgentStub, model_id: str, path: Path, repeats: int
            ) -> tuple[float, float, float, float]:
    """Median ms: through the agent (client wall time), direct, the agent's own session time (real_ms), and the
    median of the paired differences agent - direct (each agent call next to a direct call: robust to the
    machine's load drifting during the run)."""
    sess = ort.InferenceSession(str(path), session_options(THREADS), providers=["CPUExecutionProvider"])
    spec = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = node_agent_pb2.InferRequest(model_id=model_id, inputs=[serde.array_to_tensor(spec.name, x)])
    for _ in range(max(3, repeats // 10)):  # warm both (first calls pay allocations and page faults)
        stub.Infer(request, timeout=60)
        sess.run(None, {spec.name: x})
    via_agent, direct, in_agent = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        resp = stub.Infer(request, timeout=60)
        serde.tensor_to_array(resp.outputs[0], "o", 1 << 40)  # the client decodes, as a real caller would
        via_agent.append(time.perf_counter() - t0)
        in_agent.append(resp.real_ms / 1e3)
        t0 = time.perf_counter()
        sess.run(None, {spec.name: x})
        direct.append(time.perf_counter() - t0)
    paired = [a - d for a, d in zip(via_agent, direct, strict=True)]
    return tuple(statistics.median(v) * 1e3 for v in (via_agent, direct, in_agent, paired))  # type: ignore[return-value]


def build_io_model() -> bytes:
    """A model that computes nothing (Slice 6 -> 3 channels) with the cloud mask's input and output sizes:
    its time through the agent is the pure cost of moving a 1x6x256x256 tile in and 1x3x256x256 out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 3), ("a", 1))]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])], "io",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 256, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 256, 256])], consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200, help="calls per small-model measurement (large: /10)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        small = build_cnn(3, 64, (32, 32))
        (tmp / "small.onnx").write_bytes(small.data)
        (tmp / "io.onnx").write_bytes(build_io_model())
        csmask = find_csmask_model()
        if csmask is not None:
            large_path, large_name = csmask, f"cloud mask ({csmask.name})"
        else:
            large = build_cnn(6, 256, (32, 64, 64))
            large_path, large_name = tmp / "large.onnx", "built CNN 6x256x256 (csmask not installed)"
            large_path.write_bytes(large.data)

        startups, rss_idle = [], []
        for i in range(3):
            proc, address, startup_ms = start_agent(tmp / f"idle{i}", THREADS)
            time.sleep(0.5)
            startups.append(startup_ms)
            rss_idle.append(rss_mib(proc.pid))
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()  # type: ignore[union-attr]

        proc, address, _ = start_agent(tmp / "models", THREADS)
        try:
            with grpc.insecure_channel(address, [("grpc.max_receive_message_length", 1 << 28),
                                                 ("grpc.http2.lookahead_bytes", LOOKAHEAD_BYTES),
                                                 ("grpc.http2.max_frame_size", MAX_FRAME_BYTES)]) as ch:
                stub = node_agent_pb2_grpc.NodeAgentStub(ch)
                info_s = upload(stub, "small@1", tmp / "small.onnx")
                rss_small = rss_mib(proc.pid)
                agent_s, direct_s, real_s, paired_s = compare(stub, "small@1", tmp / "small.onnx", args.repeats)
                upload(stub, "io@1", tmp / "io.onnx")
                agent_io, direct_io, _, _ = compare(stub, "io@1", tmp / "io.onnx", max(20, args.repeats // 3))
                info_l = upload(stub, "large@1", large_path)
                agent_l, direct_l, real_l, paired_l = compare(stub, "large@1", large_path, max(10, args.repeats // 10))
                rss_both = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()  # type: ignore[union-attr]

    load = os.getloadavg()
    print(f"onnxruntime {ort.__version__}, {THREADS} intra-op thread(s), medians; host: {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} at the end (other work on the machine inflates every figure)")
    print(f"small CNN 3x64x64 ({info_s.gflop_per_inference * 1e3:.1f} MFLOP): direct {direct_s:.3f} ms, "
          f"via agent {agent_s:.3f} ms, added {paired_s:.3f} ms per call (paired median; target <= 1 ms); "
          f"session time inside the agent {real_s:.3f} ms")
    print(f"{large_name} ({info_l.gflop_per_inference:.2f} GFLOP): direct {direct_l:.1f} ms, via agent "
          f"{agent_l:.1f} ms, overhead {paired_l / direct_l * 100:.2f}% (paired median; target <= 5%); "
          f"session time inside the agent {real_l:.1f} ms, so the RPC path adds {agent_l - real_l:.1f} ms "
          f"({(agent_l - real_l) / real_l * 100:.2f}%)")
    print(f"moving a cloud-mask tile (1x6x256x256 float32 in, 1x3x256x256 out, no compute): via agent "
          f"{agent_io:.2f} ms, direct {direct_io:.2f} ms")
    print(f"start-up to SERVING (empty store): median {statistics.median(startups):.0f} ms "
          f"(runs: {', '.join(f'{s:.0f}' for s in startups)})")
    print(f"RSS per agent: idle {statistics.median(rss_idle):.0f} MiB, with small model {rss_small:.0f} MiB, "
          f"with both models {rss_both:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
