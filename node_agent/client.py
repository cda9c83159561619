"""Calling an agent's ``Infer`` / ``InferStream`` / ``InferSession`` from Python without copying tensors more than
once.

The generated stub works too (the messages are ordinary protobuf); this client is what ``skyinfer infer`` and
the benchmark use: requests are encoded straight from the arrays and responses decoded as views of the
received bytes (:mod:`node_agent.wire`), and the multi-callables are created once per client, not per call.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import grpc
import numpy as np

from node_agent import serde, wire
from node_agent.config import LOOKAHEAD_BYTES, MAX_FRAME_BYTES, MIB

INFER_METHOD = "/skyinfer.v1.NodeAgent/Infer"
INFER_STREAM_METHOD = "/skyinfer.v1.NodeAgent/InferStream"
INFER_SESSION_METHOD = "/skyinfer.v1.NodeAgent/InferSession"
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
        self._infer_session = channel.stream_stream(  # type: ignore[call-arg]
            INFER_SESSION_METHOD, response_deserializer=wire.decode_infer_response, _registered_method=True
        )

    def session(self, *, timeout_s: float | None = None) -> InferSession:
        """An :class:`InferSession` on this channel (close it, or use it as a context manager)."""
        return InferSession(self._infer_session, timeout_s)

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


class InferSession:
    """Inferences one at a time over a long-lived ``InferSession`` call: for a caller that needs each result
    before it sends the next input. Each :meth:`infer` sends one request on the open call and waits for its
    response, so the set-up of a unary call (a new HTTP/2 stream, its headers and call objects on both sides)
    is paid once per session instead of once per inference: on this project's 2-core host that is ~0.3 ms of
    the ~1 ms a unary ``Infer`` adds (``benchmarks/bench_agent.py``).

    Calls are serialised (lock-step; use several sessions, or unary ``Infer``, for concurrency). A failing
    request raises ``grpc.RpcError`` with the status and message a unary call would give, and ends the call;
    the next :meth:`infer` opens a new one, so a session outlives bad requests and agent restarts as unary
    calls do. ``timeout_s`` is gRPC's deadline of each call the session opens, not of one inference: a session
    whose call has expired fails its next inference with DEADLINE_EXCEEDED and then opens a new call. An open
    session holds one of the agent's threads: close it when done (the agent refuses sessions beyond its limit
    with RESOURCE_EXHAUSTED).
    """

    def __init__(self, method: grpc.StreamStreamMultiCallable, timeout_s: float | None) -> None:
        self._method = method
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[bytes | None] | None = None
        self._call: _ResponseStream | None = None
        self._closed = False

    def infer(
        self, model_id: str, inputs: Mapping[str, np.ndarray], *, request_id: str = "",
        simulated_clock: bool = False,
    ) -> InferResult:
        """One inference (as :meth:`AgentClient.infer`); raises ``grpc.RpcError`` on failure."""
        request = wire.encode_infer_request(model_id, inputs, request_id=request_id, simulated_clock=simulated_clock)
        with self._lock:
            if self._closed:
                raise ValueError("the session is closed")
            if self._requests is None or self._call is None:
                self._requests, self._call = self._open()
            self._requests.put(request)
            try:
                response = next(self._call)
            except grpc.RpcError:
                self._drop()
                raise
            except StopIteration:  # the agent ended the call without an answer (not expected)
                self._drop()
                raise _SessionEnded() from None
            return _result(response)

    def _open(self) -> tuple[queue.SimpleQueue[bytes | None], _ResponseStream]:
        """A new call and the queue its request generator reads (None ends it)."""
        requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

        def send() -> Iterator[bytes]:
            while (item := requests.get()) is not None:
                yield item

        return requests, self._method(send(), timeout=self._timeout_s)  # type: ignore[return-value]

    def _drop(self) -> None:
        """End the current call (if any): its request generator returns, and the call is cancelled."""
        if self._requests is not None:
            self._requests.put(None)
        if self._call is not None:
            self._call.cancel()
        self._requests = self._call = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> InferSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _ResponseStream(Iterator[wire.WireInferResponse], Protocol):
    """What gRPC returns for a stream-stream call: the responses, and the call's ``cancel``."""

    def cancel(self) -> bool: ...


class _SessionEnded(grpc.RpcError):
    """The agent closed a session's call without answering the request (reported as UNAVAILABLE)."""

    def __init__(self) -> None:
        super().__init__("the agent ended the session without answering")

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the agent ended the session without answering"
