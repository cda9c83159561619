"""Calling an agent's ``Infer`` / ``InferStream`` from Python without copying tensors more than once.

The generated stub works too (the messages are ordinary protobuf); this client is what ``skyinfer infer`` and
the benchmark use: requests are encoded straight from the arrays and responses decoded as views of the
received bytes (:mod:`node_agent.wire`), and the multi-callables are created once per client, not per call.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from node_agent import serde, wire
from node_agent.config import LOOKAHEAD_BYTES, MAX_FRAME_BYTES, MIB

INFER_METHOD = "/skyinfer.v1.NodeAgent/Infer"
INFER_STREAM_METHOD = "/skyinfer.v1.NodeAgent/InferStream"
# Outputs are limited by the agent's own message limit; the client accepts whatever it sends.
CLIENT_MAX_MESSAGE_BYTES = 256 * MIB
# Requests of an InferStream sent ahead of their responses (AgentClient.infer_stream's default window): more than
# the agent's own pipeline holds (service.STREAM_READ_AHEAD + one running + STREAM_SEND_AHEAD), so it never waits
# for the caller, and few enough that a stream of cloud-mask tiles holds about 12 MB of requests in the caller.
STREAM_WINDOW = 8


def channel_options(max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel options for talking to an agent: message limits and the agent's HTTP/2 window and frame size
    (a tile moves in one flight, see :mod:`node_agent.config`)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.http2.lookahead_bytes", LOOKAHEAD_BYTES),
        ("grpc.http2.max_frame_size", MAX_FRAME_BYTES),
    ]


@dataclass(frozen=True, slots=True)
class InferResult:
    """One ``InferResponse``: outputs by name (read-only arrays viewing the response), times in ms, energy in Wh."""

    model_id: str
    request_id: str
    outputs: dict[str, np.ndarray]
    real_ms: float
    emulated_ms: float
    queue_ms: float
    energy_wh: float


def _result(response: wire.WireInferResponse) -> InferResult:
    outputs = {
        t.name: serde.tensor_to_array(t, f"outputs[{i}]", len(t.data)) for i, t in enumerate(response.outputs)
    }
    return InferResult(
        response.model_id, response.request_id, outputs, response.real_ms, response.emulated_ms,
        response.queue_ms, response.energy_wh,
    )


class AgentClient:
    """``Infer`` and ``InferStream`` on a channel to an agent (the caller owns and closes the channel)."""

    def __init__(self, channel: grpc.Channel) -> None:
        # Requests are serialised by wire.encode_infer_request before the call (identity serializer here).
        # _registered_method, as in generated stubs (grpcio >= 1.62, not in the type stubs): the channel
        # registers the method once instead of passing its name with every call.
        self._infer = channel.unary_unary(  # type: ignore[call-arg]
            INFER_METHOD, response_deserializer=wire.decode_infer_response, _registered_method=True
        )
        self._infer_stream = channel.stream_stream(  # type: ignore[call-arg]
            INFER_STREAM_METHOD, response_deserializer=wire.decode_infer_response, _registered_method=True
        )

    def infer(
        self, model_id: str, inputs: Mapping[str, np.ndarray], *, timeout_s: float | None = None,
        request_id: str = "", simulated_clock: bool = False,
    ) -> InferResult:
        """One inference; raises ``grpc.RpcError`` with the agent's status and message on failure."""
        request = wire.encode_infer_request(model_id, inputs, request_id=request_id, simulated_clock=simulated_clock)
        return _result(self._infer(request, timeout=timeout_s))

    def infer_stream(
        self, model_id: str, batches: Iterable[Mapping[str, np.ndarray]], *, timeout_s: float | None = None,
        simulated_clock: bool = False, window: int = STREAM_WINDOW,
    ) -> Generator[InferResult, None, None]:
        """One response per element of ``batches``, in order, over one ``InferStream`` call
        (``request_id`` is the element's index).

        Requests are sent ahead without waiting for the responses before them, at most ``window`` of them
        unanswered: ``batches`` is read (and each element encoded) only when a request may go out, so a
        generator of tiles is not drained into memory. gRPC's request thread does the reading and encoding
        while the caller handles the responses. Closing the returned generator early cancels the call. A failing
        element ends the stream with the agent's status and ``requests[i]: ...`` after the responses before it.
        """
        if window < 1:
            raise ValueError(f"window: must be >= 1, got {window}")
        credits = threading.Semaphore(window)
        finished = threading.Event()

        def requests() -> Iterator[bytes]:
            elements = iter(batches)
            for i in itertools.count():
                credits.acquire()  # before reading the element: ``batches`` is read no further than the window
                if finished.is_set():
                    return
                inputs = next(elements, None)
                if inputs is None:
                    return
                yield wire.encode_infer_request(model_id, inputs, request_id=str(i), simulated_clock=simulated_clock)

        call = self._infer_stream(requests(), timeout=timeout_s)
        try:
            for response in call:
                credits.release()
                yield _result(response)
        finally:
            finished.set()
            credits.release()  # wakes gRPC's request thread if it waits for a credit, so it ends
            call.cancel()  # no-op after a normal end; stops the agent's work if the caller gave up early
