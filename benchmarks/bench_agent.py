"""Node agent overhead, memory and start-up: ``python benchmarks/bench_agent.py [--repeats N]``.

* ``Infer`` through a real agent process (``skyinfer agent``, gRPC over TCP loopback, the client of
  ``skyinfer infer``: :class:`node_agent.client.AgentClient`) against the same model in an onnxruntime session
  called directly in this process. Both sessions use ``node_agent.runtime.session_options(1)``: one intra-op
  thread, sequential, no spinning (the agent runs with ``--threads 1``), so the other core is free for the
  RPC machinery on this 2-core host. The agent emulates ``three-body-744tops`` (faster than this host), so no
  emulation sleep is added and the difference is pure agent overhead. Calls are interleaved; medians, and the
  median of the paired differences agent - direct (robust to the machine's load drifting during the run); the
  order of the paths is shuffled every round, so that no path always follows the direct call.
  Two ways of calling through the agent: a unary ``Infer`` per call (AgentClient.infer), and one request at a
  time over an open ``InferSession`` call (AgentClient.session: no per-call set-up of a gRPC call).
  - a ~1 ms CNN (target: at most 1 ms added per call);
  - a ~100 ms model: DLR's cloud mask when ``ukis-csmask`` is installed, else a larger built CNN on a
    6x256x256 tile standing in for it (target: at most 5% relative overhead).
* Where the time goes, measured in the same interleaved loop: a bare gRPC server (the agent's server options,
  a handler that only runs the same session on the raw request bytes, no protobuf, no agent; called unary and
  one request at a time over an open stream) and a bare TCP
  socket server running the same session. socket - direct is the floor of any two-process design; bare gRPC
  - socket is gRPC's own cost (Python's sync server and client); agent - bare gRPC is the agent's own work.
* ``InferStream``: a batch of N tiles over one stream (the agent pipelines them: requests read ahead while a tile
  computes, responses sent while the next one computes) against the same N tiles run directly, blocks
  alternating; per-tile overhead, printed next to the unary ``Infer`` overhead of the same run.
* Moving a cloud-mask-sized tile (a Slice model, no compute) with AgentClient and with the generated stub.
* Idle RSS of an agent process (no model, and with the small model), and start-up time to SERVING.

Models are built with onnx.helper (the test suite's builder); onnx is a dev dependency.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "node_agent"))

from onnx_builders import build_cnn  # noqa: E402

from node_agent import serde  # noqa: E402
from node_agent.client import AgentClient, InferSession, channel_options  # noqa: E402
from node_agent.config import LOOKAHEAD_BYTES, MAX_FRAME_BYTES  # noqa: E402
from node_agent.healthcheck import check  # noqa: E402
from node_agent.models import find_csmask_model  # noqa: E402
from node_agent.runtime import session_options  # noqa: E402
from node_agent.store import sha256_file  # noqa: E402
from skyinfer.v1 import node_agent_pb2, node_agent_pb2_grpc  # noqa: E402

THREADS = 1
CHUNK_BYTES = 1 << 20
BARE_METHOD = "/bench.Bare/Run"
BARE_STREAM_METHOD = "/bench.Bare/Stream"
LEN_BYTES = 8  # length prefix of the socket server's frames
STREAM_TILES_SMALL = 50  # tiles per InferStream batch (small CNN)
STREAM_TILES_LARGE = 8  # tiles per InferStream batch (cloud mask: ~1 s of compute per stream)


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


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(stub: node_agent_pb2_grpc.NodeAgentStub, model_id: str, path: Path) -> node_agent_pb2.ModelInfo:
    data = path.read_bytes()
    sha = sha256_file(path)

    def chunks() -> Iterator[node_agent_pb2.LoadModelChunk]:
        for i in range(0, len(data), CHUNK_BYTES):
            yield node_agent_pb2.LoadModelChunk(model_id=model_id, sha256=sha, total_size_bytes=len(data),
                                                data=data[i:i + CHUNK_BYTES])

    return stub.LoadModel(chunks(), timeout=300)


# ---------------------------------------------------------------- bare servers (child processes)


def _session(path: str) -> tuple[ort.InferenceSession, str, list[int]]:
    sess = ort.InferenceSession(path, session_options(THREADS), providers=["CPUExecutionProvider"])
    spec = sess.get_inputs()[0]
    return sess, spec.name, [d if isinstance(d, int) else 1 for d in spec.shape]


def serve_bare(kind: str, model_path: str) -> None:
    """A server that runs the session on the raw request bytes (float32 input of the declared shape) and
    answers the first output's raw bytes: no protobuf, no agent. Prints its port, serves until killed."""
    sess, name, shape = _session(model_path)

    def run(data: bytes | memoryview) -> bytes:
        x = np.frombuffer(data, np.float32).reshape(shape)
        return np.ascontiguousarray(sess.run(None, {name: x})[0]).tobytes()

    if kind == "grpc":
        from concurrent import futures

        from node_agent.service import tune_malloc

        tune_malloc()  # as the agent does
        options = [("grpc.max_receive_message_length", 1 << 28), ("grpc.max_send_message_length", 1 << 28),
                   ("grpc.so_reuseport", 0), ("grpc.http2.lookahead_bytes", LOOKAHEAD_BYTES),
                   ("grpc.http2.max_frame_size", MAX_FRAME_BYTES)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        service, method = BARE_METHOD.strip("/").split("/")
        stream_method = BARE_STREAM_METHOD.rsplit("/", 1)[1]

        def lock_step(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            for request in requests:
                yield run(request)

        handlers = {method: grpc.unary_unary_rpc_method_handler(lambda request, context: run(request)),
                    stream_method: grpc.stream_stream_rpc_method_handler(lock_step)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(port, flush=True)
        server.wait_for_termination()
        return
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 26)
    while True:
        n = _recv_frame(conn, buf)
        if n < 0:
            return
        out = run(memoryview(buf)[:n])
        conn.sendall(len(out).to_bytes(LEN_BYTES, "little") + out)


def _recv_exactly(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        k = conn.recv_into(view[got:])
        if k == 0:
            return False
        got += k
    return True


def _recv_frame(conn: socket.socket, buf: bytearray) -> int:
    head = bytearray(LEN_BYTES)
    if not _recv_exactly(conn, memoryview(head)):
        return -1
    n = int.from_bytes(head, "little")
    return n if _recv_exactly(conn, memoryview(buf)[:n]) else -1


def start_bare(kind: str, model_path: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", kind, str(model_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def bare_grpc_call(channel: grpc.Channel) -> Callable[[np.ndarray], object]:
    call = channel.unary_unary(BARE_METHOD, _registered_method=True)  # type: ignore[call-arg]
    return lambda x: call(x.tobytes(), timeout=60)


def bare_grpc_stream_call(channel: grpc.Channel) -> tuple[Callable[[np.ndarray], object], Callable[[], None]]:
    """One request at a time over one open stream (what InferSession does, without the agent), and its closer."""
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def send() -> Iterator[bytes]:
        while (item := requests.get()) is not None:
            yield item

    responses = channel.stream_stream(BARE_STREAM_METHOD)(send(), timeout=3600)

    def call(x: np.ndarray) -> object:
        requests.put(x.tobytes())
        return next(responses)

    return call, lambda: (requests.put(None), responses.cancel())


def bare_socket_call(port: int) -> Callable[[np.ndarray], object]:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 26)

    def call(x: np.ndarray) -> object:
        conn.sendall(x.nbytes.to_bytes(LEN_BYTES, "little") + x.tobytes())
        return _recv_frame(conn, buf)

    return call


# ---------------------------------------------------------------- measurements


def interleaved(path: Path, calls: dict[str, Callable[[np.ndarray], object]], repeats: int
                ) -> tuple[float, dict[str, tuple[float, float]]]:
    """Median direct ms, and per path (median ms, median of paired differences path - direct in ms)."""
    sess, name, shape = _session(str(path))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    everything: dict[str, Callable[[np.ndarray], object]] = {"direct": lambda a: sess.run(None, {name: a}), **calls}
    for _ in range(max(3, repeats // 10)):  # warm all (first calls pay allocations and page faults)
        for f in everything.values():
            f(x)
    times: dict[str, list[float]] = {k: [] for k in everything}
    order = list(everything.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        # A new order every round (seeded), so that on average every path follows every other equally often:
        # what ran just before a call matters (the same agent call was measured 0.1 ms slower right after the
        # direct run, whose data fills this process's caches, than right after another call to the agent),
        # and a fixed order, or a rotation of one (which keeps the neighbours), charges that to one path.
        shuffle(order)
        for k, f in order:
            t0 = time.perf_counter()
            f(x)
            times[k].append(time.perf_counter() - t0)
    direct = times["direct"]
    out = {
        k: (statistics.median(v) * 1e3, statistics.median([a - d for a, d in zip(v, direct, strict=True)]) * 1e3)
        for k, v in times.items() if k != "direct"
    }
    return statistics.median(direct) * 1e3, out


def agent_call(client: AgentClient, model_id: str, input_name: str, real_ms: list[float]
               ) -> Callable[[np.ndarray], object]:
    def call(x: np.ndarray) -> object:
        result = client.infer(model_id, {input_name: x}, timeout_s=60)
        real_ms.append(result.real_ms)
        return result

    return call


def session_call(session: InferSession, model_id: str, input_name: str) -> Callable[[np.ndarray], object]:
    return lambda x: session.infer(model_id, {input_name: x})


def stream_overhead(client: AgentClient, model_id: str, path: Path, tiles: int, rounds: int
                    ) -> tuple[float, float, float]:
    """InferStream of ``tiles`` tiles against the same tiles run directly, blocks alternating for ``rounds``
    rounds: medians of the per-tile ms over the stream, direct, and of the per-round paired difference."""
    sess, name, shape = _session(str(path))
    rng = np.random.default_rng(1)
    batch = [rng.standard_normal(shape).astype(np.float32) for _ in range(tiles)]
    via, direct = [], []

    def run_stream() -> float:
        t0 = time.perf_counter()
        n = sum(1 for _ in client.infer_stream(model_id, ({name: x} for x in batch), timeout_s=600))
        assert n == tiles
        return time.perf_counter() - t0

    def run_direct() -> float:
        t0 = time.perf_counter()
        for x in batch:
            sess.run(None, {name: x})
        return time.perf_counter() - t0

    for r in range(rounds + 1):
        # The two blocks swap places every round (the one that goes second finds the other's data in cache).
        if r % 2:
            d_s, v_s = run_direct(), run_stream()
        else:
            v_s, d_s = run_stream(), run_direct()
        if r:  # the first round warms both
            via.append(v_s / tiles * 1e3)
            direct.append(d_s / tiles * 1e3)
    paired = statistics.median([v - d for v, d in zip(via, direct, strict=True)])
    return statistics.median(via), statistics.median(direct), paired


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
    p.add_argument("--serve-bare", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_bare:
        serve_bare(*args.serve_bare)
        return 0
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        small = build_cnn(3, 64, (32, 32))
        small_path = tmp / "small.onnx"
        small_path.write_bytes(small.data)
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
            stop(proc)

        proc, address, _ = start_agent(tmp / "models", THREADS)
        bare: list[subprocess.Popen[str]] = []
        try:
            with grpc.insecure_channel(address, channel_options()) as ch:
                stub = node_agent_pb2_grpc.NodeAgentStub(ch)
                client = AgentClient(ch)
                info_s = upload(stub, "small@1", small_path)
                rss_small = rss_mib(proc.pid)
                info_l = upload(stub, "large@1", large_path)
                results = {}
                for label, path, info, repeats in (("small", small_path, info_s, args.repeats),
                                                   ("large", large_path, info_l, max(10, args.repeats // 10))):
                    g_proc, g_port = start_bare("grpc", path)
                    s_proc, s_port = start_bare("socket", path)
                    bare += [g_proc, s_proc]
                    real: list[float] = []
                    with grpc.insecure_channel(f"127.0.0.1:{g_port}", channel_options()) as g_ch, \
                            client.session(timeout_s=3600) as session:
                        bare_stream, close_bare_stream = bare_grpc_stream_call(g_ch)
                        calls = {"agent": agent_call(client, f"{label}@1", info.inputs[0].name, real),
                                 "agent session": session_call(session, f"{label}@1", info.inputs[0].name),
                                 "bare gRPC": bare_grpc_call(g_ch), "bare gRPC stream": bare_stream,
                                 "bare socket": bare_socket_call(s_port)}
                        results[label] = (*interleaved(path, calls, repeats), statistics.median(real))
                        close_bare_stream()
                    for b in (g_proc, s_proc):
                        b.kill()
                        b.wait()
                        assert b.stdout is not None
                        b.stdout.close()
                stream_s = stream_overhead(client, "small@1", small_path, tiles=STREAM_TILES_SMALL,
                                           rounds=max(5, args.repeats // 20))
                stream_l = stream_overhead(client, "large@1", large_path, tiles=STREAM_TILES_LARGE, rounds=5)
                upload(stub, "io@1", tmp / "io.onnx")
                request_io = node_agent_pb2.InferRequest(model_id="io@1")

                def via_stub(x: np.ndarray) -> object:
                    # What a caller with the generated classes does: build, send, decode (copies included).
                    del request_io.inputs[:]
                    serde.add_tensors(request_io.inputs, {"x": x})
                    resp = stub.Infer(request_io, timeout=60)
                    return serde.tensor_to_array(resp.outputs[0], "o", 1 << 40)

                io_real: list[float] = []
                direct_io, io = interleaved(
                    tmp / "io.onnx", {"AgentClient": agent_call(client, "io@1", "x", io_real),
                                      "generated stub": via_stub}, max(20, args.repeats // 3))
                rss_both = rss_mib(proc.pid)
        finally:
            stop(proc)
            for b in bare:
                if b.poll() is None:
                    b.kill()
                    b.wait()

    load = os.getloadavg()
    print(f"onnxruntime {ort.__version__}, grpcio {grpc.__version__}, {THREADS} intra-op thread(s) in both sessions, "
          f"medians; host: {os.cpu_count()} cores, load average {load_start:.1f} at the start, {load[0]:.1f} at "
          f"the end (other work on the machine inflates every figure)")
    for label, name in (("small", f"small CNN 3x64x64 ({info_s.gflop_per_inference * 1e3:.1f} MFLOP)"),
                        ("large", f"{large_name} ({info_l.gflop_per_inference:.2f} GFLOP)")):
        direct, paths, real_median = results[label]
        agent_ms, added = paths["agent"]
        session_ms, session_added = paths["agent session"]
        target = "target <= 1 ms" if label == "small" else "target <= 5%"
        print(f"{name}: direct {direct:.3f} ms; session time inside the agent {real_median:.3f} ms ({target})")
        print(f"  unary Infer:                {agent_ms:.3f} ms, added {added:.3f} ms per call = "
              f"{added / direct * 100:.1f}% (paired median)")
        print(f"  InferSession (call open):   {session_ms:.3f} ms, added {session_added:.3f} ms per call = "
              f"{session_added / direct * 100:.1f}% (paired median)")
        floor = ", ".join(f"{k} adds {paths[k][1]:.3f} ms" for k in ("bare gRPC", "bare gRPC stream", "bare socket"))
        print(f"  same run, same session behind other servers: {floor}; so gRPC's own path costs "
              f"{paths['bare gRPC'][1] - paths['bare socket'][1]:.3f} ms (unary) / "
              f"{paths['bare gRPC stream'][1] - paths['bare socket'][1]:.3f} ms (stream), and the agent's own "
              f"work {added - paths['bare gRPC'][1]:.3f} ms (unary) / "
              f"{session_added - paths['bare gRPC stream'][1]:.3f} ms (session)")
    for label, name, (via, direct, added) in (("small", f"small CNN, {STREAM_TILES_SMALL} tiles", stream_s),
                                              ("large", f"{large_name}, {STREAM_TILES_LARGE} tiles", stream_l)):
        unary = results[label][1]["agent"][1]
        print(f"InferStream, {name} a stream: {via:.3f} ms a tile vs {direct:.3f} ms direct, "
              f"{added:.3f} ms added per tile ({added / direct * 100:.1f}%; paired median over rounds); "
              f"unary Infer, same run: {unary:.3f} ms added per call")
    print(f"moving a cloud-mask tile (1x6x256x256 float32 in, 1x3x256x256 out, no compute; direct "
          f"{direct_io:.2f} ms): AgentClient {io['AgentClient'][0]:.2f} ms, generated stub "
          f"{io['generated stub'][0]:.2f} ms")
    print(f"start-up to SERVING (empty store): median {statistics.median(startups):.0f} ms "
          f"(runs: {', '.join(f'{s:.0f}' for s in startups)})")
    print(f"RSS per agent: idle {statistics.median(rss_idle):.0f} MiB, with small model {rss_small:.0f} MiB, "
          f"with both models {rss_both:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
