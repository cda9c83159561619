"""Agent.infer's slot accounting (a counter under the agent's lock): concurrency bound, queue, release on failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import build_cnn

from node_agent.agent import Agent, AgentStatus, InferOutcome
from node_agent.config import AgentConfig
from scheduler.types import BUILTIN_PROFILES
from skyinfer.errors import InputError

POLL_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0


class _Call:
    """``fn()`` on a daemon thread: a call left waiting for a slot by a bug fails the test instead of hanging it."""

    def __init__(self, fn: Callable[[], InferOutcome]) -> None:
        self._fn = fn
        self._result: InferOutcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> InferOutcome:
        self._thread.join(CALL_TIMEOUT_S)
        assert not self._thread.is_alive(), "the call is still waiting"
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _agent(tmp_path: Path, profile: str) -> Agent:
    agent = Agent(AgentConfig(node_id="SAT-1", profile=BUILTIN_PROFILES[profile], models_dir=tmp_path / "models",
                              intra_op_threads=1))
    m = build_cnn()
    path = tmp_path / "cnn.onnx"
    path.write_bytes(m.data)
    # 2 GFLOP on the Jetson Orin profile (2,000 GFLOPS) is 1 ms; 100 ms on the CubeSat (20 GFLOPS).
    agent.load_model_file("cnn@1", path, gflop_per_inference=2.0)
    return agent


def _poll(agent: Agent, pred: Callable[[AgentStatus], bool]) -> AgentStatus:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        s = agent.status()
        if pred(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.002)


def test_concurrent_calls_never_exceed_the_slots_and_the_rest_queue(tmp_path: Path) -> None:
    agent = _agent(tmp_path, "cubesat")  # one slot, 100 ms a tile
    x = np.zeros((1, 3, 32, 32), np.float32)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            s = agent.status()
            seen.append((s.slots_in_use, s.queue_length))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        calls = [_Call(lambda: agent.infer("cnn@1", {"x": x})) for _ in range(4)]
        outcomes = [c.result() for c in calls]
    finally:
        stop.set()
        watcher.join()
    assert max(in_use for in_use, _ in seen) == 1
    assert max(queued for _, queued in seen) >= 2  # three callers wait while one holds the slot
    # The last call in waited while the three before it held the slot for their emulated time (a lower bound
    # set by the emulation's sleeps, not a speed figure): its queue time covers at least two of those holds.
    assert max(o.queue_ms for o in outcomes) >= 2 * outcomes[0].emulated_ms * 0.9
    final = agent.status()
    assert (final.slots_in_use, final.queue_length, final.inferences_total) == (0, 0, 4)


def _reshape_model(path: Path) -> None:
    """x [N, 4] (N dynamic) reshaped to [1, 4]: passes the input check for any N, fails in onnxruntime if N > 1."""
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])], "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def test_a_call_that_fails_in_onnxruntime_frees_its_slot_for_the_queued_ones(tmp_path: Path) -> None:
    agent = _agent(tmp_path, "cubesat")  # one slot
    _reshape_model(tmp_path / "r.onnx")
    agent.load_model_file("reshape@1", tmp_path / "r.onnx", gflop_per_inference=2.0)  # 100 ms emulated
    x = np.zeros((1, 3, 32, 32), np.float32)
    holder = _Call(lambda: agent.infer("cnn@1", {"x": x}))
    assert _poll(agent, lambda s: s.slots_in_use == 1).slots_in_use == 1
    failing = _Call(lambda: agent.infer("reshape@1", {"x": np.zeros((2, 4), np.float32)}))
    assert _poll(agent, lambda s: s.queue_length == 1).queue_length == 1
    behind = _Call(lambda: agent.infer("cnn@1", {"x": x}))
    assert holder.result().outputs["logits"].shape == (1, 4)
    with pytest.raises(Exception, match=r"(?i)reshape"):  # onnxruntime's own error type
        failing.result()
    assert behind.result().outputs["logits"].shape == (1, 4)
    final = agent.status()
    assert (final.slots_in_use, final.queue_length, final.inferences_total) == (0, 0, 2)


def test_slots_on_a_multi_slot_node_run_side_by_side(tmp_path: Path) -> None:
    agent = _agent(tmp_path, "jetson-orin")  # two slots, 1 ms a tile: nothing waits for emulation
    x = np.zeros((1, 3, 32, 32), np.float32)
    calls = [_Call(lambda: [agent.infer("cnn@1", {"x": x}) for _ in range(10)][-1]) for _ in range(6)]
    outcomes = [c.result() for c in calls]
    assert all(o.queue_ms >= 0 for o in outcomes)
    final = agent.status()
    assert (final.slots_in_use, final.queue_length, final.inferences_total) == (0, 0, 60)
    assert final.energy_used_wh == pytest.approx(60 * outcomes[0].energy_wh)


def test_an_unknown_model_or_bad_input_takes_no_slot(tmp_path: Path) -> None:
    agent = _agent(tmp_path, "cubesat")
    with pytest.raises(InputError, match=r"inputs\[0\]\.dtype"):
        agent.infer("cnn@1", {"x": np.zeros((1, 3, 32, 32), np.float64)})
    with pytest.raises(Exception, match="not loaded"):
        agent.infer("nope@1", {"x": np.zeros((1, 3, 32, 32), np.float32)})
    s = agent.status()
    assert (s.slots_in_use, s.queue_length, s.inferences_total) == (0, 0, 0)
