"""gRPC edge of the agent: the NodeAgent servicer, ``create_server`` and ``serve``.

The servicer is thin: it converts protos with :mod:`node_agent.serde`, calls :class:`node_agent.agent.Agent`,
and maps domain errors to status codes (:func:`status_for`). Health (NOT_SERVING until the model store is
loaded) and reflection run on the same server.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Generic, NoReturn, TypeVar

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node_agent import serde, wire
from node_agent.agent import Agent, Cancellation
from node_agent.config import (
    LOOKAHEAD_BYTES,
    MALLOC_MMAP_THRESHOLD_BYTES,
    MALLOC_TRIM_THRESHOLD_BYTES,
    MAX_FRAME_BYTES,
    AgentConfig,
)
from node_agent.errors import LimitError, LinkDownError, ModelExistsError, UnknownModelError
from node_agent.spool import ResultSpool
from skyinfer.errors import InputError, SkyinferError
from skyinfer.v1 import fleet_pb2, node_agent_pb2, node_agent_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "skyinfer.v1.NodeAgent"
LINK_POLL_S = 0.25
# InferStream pipeline depths (requests, not bytes). A reader thread decodes up to STREAM_READ_AHEAD requests
# ahead of the one computing, and up to STREAM_SEND_AHEAD encoded responses wait to be sent while the next tile
# computes: enough to hide gRPC's per-message hand-offs behind a ~1 ms tile, small enough that a stream of
# cloud-mask tiles (1.5 MB in, 0.8 MB out) holds about 8 MB in the agent beyond gRPC's own HTTP/2 window.
STREAM_READ_AHEAD = 4
STREAM_SEND_AHEAD = 2
_T = TypeVar("_T")
# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Let glibc reuse the megabyte buffers of tile-sized calls instead of page-faulting them in every call.

    Sets malloc's mmap threshold to ``MALLOC_MMAP_THRESHOLD_BYTES`` and its trim threshold to
    ``MALLOC_TRIM_THRESHOLD_BYTES`` for the whole process (see :mod:`node_agent.config` for the figures).
    Best effort: returns False, changing nothing, where the C library is not glibc (e.g. musl).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: setting either one also turns off glibc's dynamic threshold adjustment.
    ok = mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 1 and ok
    return ok


def status_for(exc: Exception) -> grpc.StatusCode:
    """The gRPC status code of a domain error (most specific class first)."""
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ModelExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, LimitError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, LinkDownError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error")
    context.abort(code, str(exc))
    raise AssertionError("unreachable: context.abort raises")


@dataclass(frozen=True, slots=True)
class AgentDeps:
    """What the servicer works on: the agent core, its result spool and the health servicer."""

    agent: Agent
    spool: ResultSpool
    health: health.HealthServicer

    @classmethod
    def create(cls, config: AgentConfig) -> AgentDeps:
        return cls(Agent(config), ResultSpool(config.spool_path), health.HealthServicer())


class CallEnded:
    """The :class:`node_agent.agent.Cancellation` of a gRPC call: set when the call ends, so a caller that gives
    up (cancel, deadline) frees its slot instead of leaving it asleep for the rest of the emulated time.

    Registered with gRPC only when the agent first waits on it (an emulated slower node): the Event and the
    termination callback cost ~8 µs a call, for nothing when the node is faster than this host.
    Used from the call's handler thread only.
    """

    __slots__ = ("_context", "_event")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self._event: threading.Event | None = None

    def wait(self, timeout: float | None = None) -> bool:
        if self._event is None:
            self._event = threading.Event()
            if not self._context.add_callback(self._event.set):
                self._event.set()  # the call has already ended
        return self._event.wait(timeout)


class _BoundedQueue(Generic[_T]):
    """A FIFO of at most ``capacity`` items whose ``close`` wakes every waiter (queue.Queue cannot be closed).

    ``put`` blocks while full and returns False once closed; ``get`` returns the items put before ``close``
    only while open, and None once closed (the items left are dropped: the call has ended).
    """

    __slots__ = ("_capacity", "_closed", "_cond", "_items")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self._capacity = capacity
        self._items: deque[_T | None] = deque()  # None: the end (see finish)
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    def put(self, item: _T) -> bool:
        with self._cond:
            while len(self._items) >= self._capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self) -> _T | None:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def finish(self) -> None:
        """No more items: ``get`` returns the ones queued, then None."""
        # The end is an item of its own, queued even when the queue is full (it holds no tensor).
        with self._cond:
            self._items.append(None)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


@dataclass(frozen=True, slots=True)
class _StreamFailure:
    """A request of an ``InferStream`` that failed: the status and message that end the call."""

    code: grpc.StatusCode
    message: str


class _StreamPipeline:
    """The queues and the end-of-call signal shared by one ``InferStream``'s reader, runner and sender.

    ``ended`` is set by gRPC when the call terminates (it is the runner's :class:`Cancellation`: a slower
    node's emulated wait wakes at once) and by ``stop``; either closes both queues, which wakes every thread.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        # A reader's unexpected exception travels in order with the requests, so it ends the call after the
        # responses before it (closing the queues would drop it and end the call as if complete).
        self.requests: _BoundedQueue[tuple[int, wire.WireInferRequest] | Exception] = _BoundedQueue(
            STREAM_READ_AHEAD
        )
        self.responses: _BoundedQueue[bytes | _StreamFailure | BaseException] = _BoundedQueue(STREAM_SEND_AHEAD)
        self.ended = threading.Event()
        if not context.add_callback(self.stop):
            self.stop()  # the call has already ended

    def stop(self) -> None:
        self.ended.set()
        self.requests.close()
        self.responses.close()

    def read(self, request_iterator: Iterator[wire.WireInferRequest]) -> None:
        """Reader thread: requests from gRPC into ``requests`` (blocks while STREAM_READ_AHEAD are waiting)."""
        try:
            for i, request in enumerate(request_iterator):
                if not self.requests.put((i, request)):
                    return
        except grpc.RpcError:
            return  # the call was cancelled while waiting for a request: stop() runs from gRPC's callback
        except Exception as exc:  # not expected from gRPC's iterator: it ends the call (UNKNOWN), in order
            self.requests.put(exc)
        self.requests.finish()

    def run(self, infer: Callable[[wire.WireInferRequest, grpc.ServicerContext, Cancellation], bytes]) -> None:
        """Runner thread: one request at a time, in order, responses into ``responses``; stops at the first
        failure (its status goes out after the responses before it)."""
        try:
            while not self.ended.is_set():
                item = self.requests.get()
                if item is None:
                    break
                if isinstance(item, Exception):
                    self.responses.put(item)
                    return
                i, request = item
                try:
                    response: bytes | _StreamFailure | BaseException = infer(request, self.context, self.ended)
                except SkyinferError as exc:
                    response = _StreamFailure(status_for(exc), f"requests[{i}]: {exc}")
                except Exception as exc:
                    response = exc
                if not self.responses.put(response) or not isinstance(response, bytes):
                    # After a failure the requests queued behind it are not run; the reader stops too.
                    self.requests.close()
                    return
        finally:
            self.responses.finish()


def rpc_workers(profile_slots: int) -> int:
    """Threads of the agent's gRPC server: room for every slot's calls and streams, plus a few for the rest."""
    return max(8, 4 * profile_slots) + 4


def max_sessions(workers: int) -> int:
    """Open ``InferSession`` calls allowed at once: each holds one of the server's ``workers`` threads for as long
    as it is open, so half of them stay free for health checks, model loads and other calls."""
    return max(1, workers // 2)


class NodeAgentServicer(node_agent_pb2_grpc.NodeAgentServicer):
    def __init__(self, deps: AgentDeps, *, session_limit: int = 1) -> None:
        self.agent = deps.agent
        self.spool = deps.spool
        self.max_tensor_bytes = deps.agent.config.max_tensor_bytes
        self.session_limit = session_limit
        self._sessions = 0
        self._sessions_lock = threading.Lock()

    def LoadModel(
        self, request_iterator: Iterator[node_agent_pb2.LoadModelChunk], context: grpc.ServicerContext
    ) -> node_agent_pb2.ModelInfo:
        try:
            header, data = serde.split_load_stream(request_iterator)
            if header.path:
                info = self.agent.load_model_file(
                    header.model_id, Path(header.path), header.sha256, header.memory_bytes,
                    header.gflop_per_inference,
                )
            else:
                info = self.agent.load_model(
                    header.model_id, header.sha256, header.total_size_bytes, data, header.memory_bytes,
                    header.gflop_per_inference,
                )
            return serde.model_info_to_proto(info)
        except SkyinferError as exc:
            _abort(context, exc)

    def ListModels(
        self, request: node_agent_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> node_agent_pb2.ListModelsResponse:
        return node_agent_pb2.ListModelsResponse(
            models=[serde.model_info_to_proto(m) for m in self.agent.list_models()]
        )

    def UnloadModel(
        self, request: node_agent_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> node_agent_pb2.UnloadModelResponse:
        try:
            self.agent.unload_model(request.model_id, request.delete_from_store)
        except SkyinferError as exc:
            _abort(context, exc)
        return node_agent_pb2.UnloadModelResponse(unloaded=True)

    def _infer(
        self, request: wire.WireInferRequest, context: grpc.ServicerContext, gone: Cancellation
    ) -> bytes:
        """One inference; the response already serialised (see :mod:`node_agent.wire`: no tensor copies)."""
        if not request.model_id:
            raise InputError("model_id: required")
        self.agent.model(request.model_id)  # NOT_FOUND before decoding tensors
        feeds = serde.feeds_from_protos(request.inputs, self.max_tensor_bytes)
        out = self.agent.infer(request.model_id, feeds, simulated_clock=request.simulated_clock, cancelled=gone)
        if not self.agent.link_up:
            self._wait_link(context)
        return wire.encode_infer_response(
            request.model_id, request.request_id, out.outputs, real_ms=out.real_ms, emulated_ms=out.emulated_ms,
            queue_ms=out.queue_ms, energy_wh=out.energy_wh,
        )

    def _wait_link(self, context: grpc.ServicerContext) -> None:
        """Hold the result while the link is down, for as long as the caller waits (its deadline)."""
        while not self.agent.link_up:
            remaining = context.time_remaining()
            if not context.is_active() or (remaining is not None and remaining <= LINK_POLL_S):
                raise LinkDownError(f"link: {self.agent.config.node_id!r} has no contact; result not delivered")
            try:
                self.agent.wait_link_up(LINK_POLL_S)
            except LinkDownError:
                continue

    def Infer(self, request: wire.WireInferRequest, context: grpc.ServicerContext) -> bytes:
        try:
            return self._infer(request, context, CallEnded(context))
        except SkyinferError as exc:
            _abort(context, exc)

    def InferStream(
        self, request_iterator: Iterator[wire.WireInferRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """One response per request, in order; the first failing request ends the stream with its status and
        ``requests[i]: ...`` (the responses before it are delivered first; the requests after it are not run).

        A pipeline of three threads so that gRPC's per-message hand-offs overlap the computation: a reader
        thread takes requests from gRPC (up to ``STREAM_READ_AHEAD`` ahead), a runner thread runs them one at a
        time in order (one slot at a time, as a unary call), and this handler thread sends the responses (up to
        ``STREAM_SEND_AHEAD`` waiting). When the call ends (cancel, deadline, server stop) all three stop: a
        tile being emulated frees its slot at once and no further request is started.
        """
        pipe = _StreamPipeline(context)
        threading.Thread(target=pipe.read, args=(request_iterator,), name="agent-stream-read", daemon=True).start()
        threading.Thread(target=pipe.run, args=(self._infer,), name="agent-stream-run", daemon=True).start()
        try:
            while True:
                item = pipe.responses.get()
                if item is None:  # the requests are done, or the call ended
                    return
                if isinstance(item, bytes):
                    yield item
                elif isinstance(item, _StreamFailure):
                    context.abort(item.code, item.message)
                else:
                    raise item  # not a domain error: as an exception in the handler (UNKNOWN), as before
        finally:
            pipe.stop()

    def InferSession(
        self, request_iterator: Iterator[wire.WireInferRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Lock-step: read a request, run it on this thread, send its response, read the next. gRPC's client
        sends the next request only after the caller has its answer, so a pipeline (InferStream) would only add
        thread hand-offs here. A failing request ends the call with the status and message of a unary ``Infer``
        (it is always the request just sent).

        An open session holds one of the server's threads while it waits for its next request, so at most
        ``session_limit`` are open at once; one more is refused with RESOURCE_EXHAUSTED (the caller can use unary
        ``Infer``) and the other calls keep their threads."""
        with self._sessions_lock:
            if self._sessions >= self.session_limit:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"sessions: {self._sessions} open, at most {self.session_limit} on this agent; "
                              "close one or call Infer")
            self._sessions += 1
        gone = CallEnded(context)
        try:
            for request in request_iterator:
                try:
                    response = self._infer(request, context, gone)
                except SkyinferError as exc:
                    _abort(context, exc)
                yield response
        except grpc.RpcError:
            return  # the call was cancelled while waiting for a request
        finally:
            with self._sessions_lock:
                self._sessions -= 1

    def GetStatus(
        self, request: node_agent_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.NodeStatus:
        return serde.status_to_proto(self.agent.status(), len(self.spool))

    def SetLinkState(
        self, request: fleet_pb2.SetLink, context: grpc.ServicerContext
    ) -> fleet_pb2.NodeStatus:
        self.agent.set_link(request.up)
        return serde.status_to_proto(self.agent.status(), len(self.spool))


# RPCs whose messages go through node_agent.wire (tensor bytes not copied) instead of the generated classes.
_WIRE_CODEC_METHODS = frozenset({"Infer", "InferStream", "InferSession"})
_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_node_agent_servicer(servicer: NodeAgentServicer, server: grpc.Server) -> None:
    """Register every ``skyinfer.v1.NodeAgent`` RPC of ``servicer`` (what the generated
    ``add_NodeAgentServicer_to_server`` does), with ``Infer``, ``InferStream`` and ``InferSession`` decoded and
    encoded by :mod:`node_agent.wire`. Built from the service descriptor, so a method added to the proto is registered
    without a hand-kept table (answering UNIMPLEMENTED, from the generated base class, until implemented)."""
    service = node_agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        behaviour = getattr(servicer, method.name)
        if method.name in _WIRE_CODEC_METHODS:
            # The response serializer is the identity: the servicer returns bytes from wire.encode_*.
            handlers[method.name] = factory(behaviour, request_deserializer=wire.decode_infer_request)
        else:
            request_cls = message_factory.GetMessageClass(method.input_type)
            response_cls = message_factory.GetMessageClass(method.output_type)
            handlers[method.name] = factory(
                behaviour, request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # As the generated code does (grpcio >= 1.62): the method is served without a generic-handler lookup.
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def server_credentials(config: AgentConfig) -> grpc.ServerCredentials | None:
    """TLS credentials when configured; with a CA the server requires client certificates (mutual TLS)."""
    if config.tls is None:
        return None
    cert, key, ca = config.tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def create_server(config: AgentConfig, deps: AgentDeps) -> tuple[grpc.Server, int]:
    """A bound, not yet started gRPC server with NodeAgent, health (NOT_SERVING) and reflection.

    Returns
    -------
    (server, port)
        ``port`` is the bound port (useful with ``:0``).
    """
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.lookahead_bytes", LOOKAHEAD_BYTES),
        ("grpc.http2.max_frame_size", MAX_FRAME_BYTES),
    ]
    workers = rpc_workers(config.profile.slots)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent-rpc"),
                         options=options)
    add_node_agent_servicer(NodeAgentServicer(deps, session_limit=max_sessions(workers)), server)
    health_pb2_grpc.add_HealthServicer_to_server(deps.health, server)
    for name in ("", SERVICE_NAME):
        deps.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (node_agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"].full_name, health.SERVICE_NAME,
         reflection.SERVICE_NAME),
        server,
    )
    creds = server_credentials(config)
    try:
        port = server.add_secure_port(config.listen, creds) if creds else server.add_insecure_port(config.listen)
    except RuntimeError:  # grpc raises on a failed bind (older versions returned 0)
        port = 0
    if port == 0:
        raise InputError(f"--listen: cannot bind {config.listen} (in use, or not an address of this host)")
    return server, port


def set_serving(deps: AgentDeps, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    deps.agent.serving = serving
    for name in ("", SERVICE_NAME):
        deps.health.set(name, status)


def serve(
    config: AgentConfig, *, on_listening: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run an agent until SIGTERM/SIGINT (or ``stop`` is set); graceful shutdown; returns an exit code."""
    from node_agent.fleet_client import FleetClient  # only agents with --scheduler need it

    stop = stop or threading.Event()
    if not tune_malloc():
        log.debug("malloc tuning unavailable (not glibc): large tensors page-fault on every call")
    deps = AgentDeps.create(config)
    server, port = create_server(config, deps)
    server.start()
    host = config.listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    if on_listening is not None:
        on_listening(address)
    if threading.current_thread() is threading.main_thread():
        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: shutting down", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    client: FleetClient | None = None
    try:
        t0 = time.perf_counter()
        deps.agent.load_store()
        for model_id, path in config.preload:
            deps.agent.load_model_file(model_id, path)  # a bad file is a configuration mistake: exit 2
        set_serving(deps, True)
        log.info("serving on %s after %.0f ms (%d models)", address, (time.perf_counter() - t0) * 1e3,
                 len(deps.agent.list_models()))
        if config.scheduler_address:
            client = FleetClient(config, deps.agent, deps.spool, config.advertise_address or address)
            client.start()
        stop.wait()
    finally:
        deps.health.enter_graceful_shutdown()
        deps.agent.serving = False
        if client is not None:
            client.stop()
        server.stop(config.grace_s).wait()
    log.info("stopped")
    sys.stdout.flush()
    return 0
