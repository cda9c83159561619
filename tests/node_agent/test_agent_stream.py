"""InferStream as a pipeline, against a real agent on port 0: order, errors mid-stream, cancellation, bounded
read-ahead in the agent and the bounded send window of AgentClient."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from agent_harness import RunningAgent, upload
from onnx_builders import BuiltModel

from node_agent import serde
from node_agent.client import INFER_STREAM_METHOD, AgentClient, channel_options
from node_agent.service import STREAM_READ_AHEAD
from skyinfer.v1 import fleet_pb2, node_agent_pb2

LOGIT_ATOL = 1e-5
STREAM_THREAD_PREFIX = "agent-stream-"


def _reference(model: BuiltModel, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {model.input_name: x})[0])


def _request(model: BuiltModel, x: np.ndarray, request_id: str, model_id: str = "cnn@1") -> node_agent_pb2.InferRequest:
    return node_agent_pb2.InferRequest(model_id=model_id, inputs=[serde.array_to_tensor(model.input_name, x)],
                                       request_id=request_id)


def _status(agent: RunningAgent) -> fleet_pb2.NodeStatus:
    return agent.stub.GetStatus(node_agent_pb2.GetStatusRequest(), timeout=5)


def _poll(pred: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _stream_threads() -> list[str]:
    """The agent's per-stream threads still alive (the agent runs in this process)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(STREAM_THREAD_PREFIX)]


def _settled(count: Callable[[], int], quiet_s: float = 0.5, timeout_s: float = 20.0) -> int:
    """``count()`` once it has not changed for ``quiet_s`` (the stream has stopped being read)."""
    deadline = time.monotonic() + timeout_s
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


@pytest.fixture
def agent(start_agent: Callable[..., RunningAgent], small_cnn: BuiltModel) -> RunningAgent:
    running: RunningAgent = start_agent(profile="jetson-orin")  # two slots: two streams run side by side
    upload(running.stub, "cnn@1", small_cnn)
    return running


def test_pipelined_streams_answer_every_tile_in_order(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    # Tiles of different batch sizes, so a response out of order or paired with another request's input
    # cannot match its reference; two streams at once share the agent's slots.
    batches = [np.concatenate([small_cnn.tile(seed=100 * s + k) for k in range(1 + s % 3)]) for s in range(40)]
    results: dict[str, list[np.ndarray]] = {}
    ids: dict[str, list[str]] = {}

    def stream(name: str, tiles: list[np.ndarray], window: int) -> None:
        with grpc.insecure_channel(agent.address, channel_options()) as channel:
            out = list(AgentClient(channel).infer_stream(
                "cnn@1", ({small_cnn.input_name: t} for t in tiles), timeout_s=60, window=window))
        results[name] = [r.outputs["logits"] for r in out]
        ids[name] = [r.request_id for r in out]

    threads = [threading.Thread(target=stream, args=("a", batches, 8)),
               threading.Thread(target=stream, args=("b", batches[::-1], 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, tiles in (("a", batches), ("b", batches[::-1])):
        assert ids[name] == [str(i) for i in range(len(tiles))]
        for x, y in zip(tiles, results[name], strict=True):
            np.testing.assert_allclose(y, _reference(small_cnn, x), atol=LOGIT_ATOL)
    assert _status(agent).inferences_total == 2 * len(batches)
    assert _poll(lambda: not _stream_threads()), _stream_threads()


@pytest.mark.parametrize(("bad", "code", "details"), [
    ("shape", grpc.StatusCode.INVALID_ARGUMENT,
     "requests[3]: inputs[0].shape: 'x' expected [N,3,32,32], got [1,6,32,32]"),
    ("model", grpc.StatusCode.NOT_FOUND,
     "requests[3]: model_id: 'nope@1' is not loaded on 'sat-1' (loaded: cnn@1)"),
])
def test_an_error_mid_stream_ends_it_after_the_responses_before_it(
    agent: RunningAgent, small_cnn: BuiltModel, bad: str, code: grpc.StatusCode, details: str
) -> None:
    tiles = [small_cnn.tile(seed=s) for s in range(8)]
    requests = [_request(small_cnn, t, f"t{i}") for i, t in enumerate(tiles)]
    if bad == "shape":
        requests[3] = _request(small_cnn, np.zeros((1, 6, 32, 32), np.float32), "t3")
    else:
        requests[3] = _request(small_cnn, tiles[3], "t3", model_id="nope@1")
    received: list[node_agent_pb2.InferResponse] = []
    with pytest.raises(grpc.RpcError) as err:
        for response in agent.stub.InferStream(iter(requests), timeout=30):
            received.append(response)
    assert err.value.code() == code
    assert err.value.details() == details
    assert [r.request_id for r in received] == ["t0", "t1", "t2"]
    for t, r in zip(tiles, received, strict=False):
        np.testing.assert_allclose(serde.tensor_to_array(r.outputs[0], "o", 1 << 20), _reference(small_cnn, t),
                                   atol=LOGIT_ATOL)
    # The requests read ahead behind the failing one were not run, and the stream's threads ended.
    assert _status(agent).inferences_total == 3
    assert _poll(lambda: not _stream_threads()), _stream_threads()
    # The agent keeps serving, streams included.
    with grpc.insecure_channel(agent.address, channel_options()) as channel:
        again = list(AgentClient(channel).infer_stream("cnn@1", [{small_cnn.input_name: tiles[0]}], timeout_s=30))
    np.testing.assert_allclose(again[0].outputs["logits"], _reference(small_cnn, tiles[0]), atol=LOGIT_ATOL)


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_stream_given_up_mid_tile_frees_the_slot_and_runs_nothing_more(
    start_agent: Callable[..., RunningAgent], small_cnn: BuiltModel, how: str
) -> None:
    agent: RunningAgent = start_agent(profile="cubesat")  # one slot
    upload(agent.stub, "cnn@1", small_cnn, gflop_per_inference=72_000.0)  # one hour a tile on the CubeSat
    requests = [_request(small_cnn, small_cnn.tile(seed=s), f"t{s}") for s in range(6)]
    if how == "cancel":
        call = agent.stub.InferStream(iter(requests), timeout=600)
        assert _poll(lambda: _status(agent).slots_in_use == 1)
        call.cancel()
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.CANCELLED
    else:
        with pytest.raises(grpc.RpcError) as err:
            list(agent.stub.InferStream(iter(requests), timeout=1.0))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Without the cancellation the slot would stay asleep for the rest of the emulated hour, and the tiles
    # read ahead would each take another hour.
    assert _poll(lambda: _status(agent).slots_in_use == 0)
    assert _poll(lambda: not _stream_threads()), _stream_threads()
    status = _status(agent)
    assert (status.inferences_total, status.queue_length) == (1, 0)
    resp = agent.stub.Infer(node_agent_pb2.InferRequest(
        model_id="cnn@1", inputs=[serde.array_to_tensor("x", small_cnn.tile())], simulated_clock=True), timeout=30)
    assert resp.emulated_ms == pytest.approx(3.6e6)


class _Counting:
    """Requests made on demand, counting how many the stream has taken (each a 64-tile batch, ~0.8 MB)."""

    def __init__(self, model: BuiltModel, total: int, encode: bool) -> None:
        self.taken = 0
        self._batch = np.concatenate([model.tile(seed=s) for s in range(64)])
        self._model, self._total, self._encode = model, total, encode
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[node_agent_pb2.InferRequest | dict[str, np.ndarray]]:
        for i in range(self._total):
            with self._lock:
                self.taken += 1
            yield _request(self._model, self._batch, f"t{i}") if self._encode else {self._model.input_name: self._batch}

    def count(self) -> int:
        with self._lock:
            return self.taken


def test_the_agent_reads_a_stream_only_a_bounded_way_ahead(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    """With the link down the first result is held, so the pipeline stalls: the agent must not keep reading.
    The generated stub sends as fast as gRPC lets it, so what is taken from the generator is bounded only by
    the agent's read-ahead plus HTTP/2 flow control (the agent's 16 MiB stream window: ~20 of these requests)."""
    total = 150  # ~120 MB if the agent read it all into memory
    requests = _Counting(small_cnn, total, encode=True)
    agent.deps.agent.set_link(False)
    call = agent.stub.InferStream(iter(requests), timeout=120)
    try:
        assert _poll(lambda: _status(agent).inferences_total == 1)  # the runner holds the first result
        taken = _settled(requests.count, quiet_s=1.0)
        assert STREAM_READ_AHEAD < taken < total // 3
        assert _status(agent).inferences_total == 1  # nothing runs behind the held result
    finally:
        agent.deps.agent.set_link(True)
    responses = list(call)
    assert [r.request_id for r in responses] == [f"t{i}" for i in range(total)]
    assert requests.count() == total


def test_agent_client_sends_at_most_its_window_ahead(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    requests = _Counting(small_cnn, 20, encode=False)
    agent.deps.agent.set_link(False)  # the first result is held: nothing is answered, so no credit comes back
    with grpc.insecure_channel(agent.address, channel_options()) as channel:
        results = AgentClient(channel).infer_stream("cnn@1", iter(requests), timeout_s=120, window=3)  # type: ignore[arg-type]
        first: list[object] = []
        consumer = threading.Thread(target=lambda: first.append(next(results)))
        consumer.start()
        try:
            assert _settled(requests.count, quiet_s=1.0) == 3
        finally:
            agent.deps.agent.set_link(True)
        consumer.join(60)
        rest = list(results)
    assert len(first) == 1 and len(rest) == 19
    assert requests.count() == 20
    with grpc.insecure_channel(agent.address) as channel, pytest.raises(ValueError, match="window: must be >= 1"):
        next(AgentClient(channel).infer_stream("cnn@1", [], window=0))


def test_closing_agent_clients_iterator_early_cancels_the_stream(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    requests = _Counting(small_cnn, 200, encode=False)
    with grpc.insecure_channel(agent.address, channel_options()) as channel:
        results = AgentClient(channel).infer_stream("cnn@1", iter(requests), timeout_s=120, window=4)  # type: ignore[arg-type]
        assert [next(results).request_id for _ in range(2)] == ["0", "1"]
        results.close()
    assert _poll(lambda: not _stream_threads()), _stream_threads()
    # At most the two answered and the four in the window were sent, so at most those ran.
    assert requests.count() <= 2 + 4
    assert _status(agent).inferences_total <= 2 + 4


def test_a_malformed_request_mid_stream_ends_it_with_internal(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    good = [_request(small_cnn, small_cnn.tile(seed=s), f"t{s}").SerializeToString() for s in range(2)]
    raw = agent.channel.stream_stream(INFER_STREAM_METHOD, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        list(raw(iter([*good, b"\x0a\x10truncated", *good]), timeout=30))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert _poll(lambda: not _stream_threads()), _stream_threads()
    with grpc.insecure_channel(agent.address, channel_options()) as channel:  # the agent keeps serving
        again = list(AgentClient(channel).infer_stream("cnn@1", [{small_cnn.input_name: small_cnn.tile()}] * 3,
                                                       timeout_s=30))
    assert [r.request_id for r in again] == ["0", "1", "2"]
