"""The gRPC server of the scheduler: thin ``skyinfer.v1.Scheduler`` servicer, health, reflection, Fleet.

Servicer methods convert the request (:mod:`scheduler.serde`), call :class:`~scheduler.service.JobService`
and map domain exceptions to status codes; nothing else. The server is ``grpc.aio`` so that thousands of
``WatchJobs`` streams and agent connections cost a coroutine each, not a thread; blocking work (SQLite
reads, the planner) runs in threads.

:func:`create_server` builds and starts a server; :class:`BackgroundServer` runs one on its own event loop
thread (tests, benchmarks); :func:`serve_forever` is what ``skyinfer serve`` runs (SIGTERM: graceful stop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from scheduler import serde
from scheduler.auth import BearerTokenInterceptor, TlsConfig
from scheduler.clock import Clock, WallClock
from scheduler.fleet import FleetRegistry, FleetServicer
from scheduler.loop import LoopConfig, PlanningLoop
from scheduler.service import Catalog, EventHub, JobService, NotReadyError
from scheduler.store import ConflictError, JobSpec, NotFoundError, Store, StoreError, TransitionError
from scheduler.types import Problem
from skyinfer.errors import InputError
from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc, scheduler_pb2_grpc
from skyinfer.v1 import scheduler_pb2 as pb

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

SCHEDULER_SERVICE = pb.DESCRIPTOR.services_by_name["Scheduler"].full_name
FLEET_SERVICE = fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name
# Requests are small (a job spec; an agent's result carries at most one tile's outputs inline); replies can
# hold a page of 1,000 jobs. Explicit limits keep a bad client from making the server buffer gigabytes.
MAX_RECEIVE_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_SEND_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How to run the server. ``listen`` is ``HOST:PORT`` (port 0: any free port)."""

    db_path: str
    listen: str = "127.0.0.1:50051"
    # A second listener for node agents (HOST:PORT, port 0: any free one). With mutual TLS only this one
    # requires client certificates; clients keep server TLS and the token on ``listen``.
    agent_listen: str | None = None
    tls: TlsConfig | None = None
    token: str | None = None
    loop: LoopConfig = field(default_factory=LoopConfig)
    heartbeat_interval_s: float = 5.0
    lost_after_s: float = 15.0  # three missed heartbeats
    max_concurrent_streams: int = 0  # 0: grpc default
    event_window: int = 100_000  # newest job events kept in memory for WatchJobs; older ones are read from disk
    # Tune the garbage collector for a long-running server once the scenario is loaded (see _tune_gc). A
    # process-wide setting: `skyinfer serve` turns it on; tests and embedders keep their own.
    tune_gc: bool = False

    def __post_init__(self) -> None:
        for option, address in (("--listen", self.listen), ("--agent-listen", self.agent_listen)):
            if address is None:
                continue
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise InputError(f"{option}: expected HOST:PORT (e.g. 127.0.0.1:50051), got {address!r}")
        if not 0 < self.heartbeat_interval_s < self.lost_after_s:
            raise InputError("heartbeat_interval_s: must be positive and below lost_after_s")
        if self.tls is not None and self.tls.client_ca_file and not self.tls.cert_file:
            raise InputError("--tls-client-ca: needs --tls-cert and --tls-key")


@dataclass(frozen=True, slots=True)
class ServerDeps:
    """What the server runs on. ``load_problem`` builds the base problem (scenario + contact plan, no jobs);
    it is slow, so it runs in a thread after the server has started (health is NOT_SERVING until it is done).
    """

    load_problem: Callable[[], Problem]
    clock: Clock = field(default_factory=WallClock)


def _status_for(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, TransitionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, ConflictError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, NotReadyError | StoreError):
        return grpc.StatusCode.UNAVAILABLE
    return None


def _rpc(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map domain exceptions of a unary handler to gRPC status codes."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
        try:
            return await fn(self, request, context)
        except Exception as exc:
            code = _status_for(exc)
            if code is None:
                raise
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises

    return wrapper


class Completions:
    """Hands work from the store's writer thread to the event loop, one loop wake-up per commit.

    ``asyncio.wrap_future`` wakes the loop once per future, and every ``call_soon_threadsafe`` writes to the
    loop's wake-up socket; a group commit resolves dozens of submits and publishes their events at once, so
    here everything posted meanwhile (results of store futures via :meth:`wait`, the event hub's fan-out via
    :meth:`post`) runs in one callback, in the order it was posted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[Any], None], Any]] = []
        self._scheduled = False

    def wait(self, fut: concurrent.futures.Future[R]) -> asyncio.Future[R]:
        afut: asyncio.Future[R] = self._loop.create_future()
        # A caller that gives up (deadline, cancellation) withdraws its request if it has not run yet.
        afut.add_done_callback(lambda a: fut.cancel() if a.cancelled() else None)
        fut.add_done_callback(lambda f: self.post(_resolve, (afut, f)))
        return afut

    def post(self, fn: Callable[[T], None], arg: T) -> None:
        """Run ``fn(arg)`` on the loop soon (thread-safe)."""
        with self._lock:
            self._pending.append((fn, arg))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # loop closed at shutdown
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
            self._scheduled = False
        for fn, arg in items:
            try:
                fn(arg)
            except Exception:
                log.exception("callback from the store failed")


def _resolve(pair: tuple[asyncio.Future[Any], concurrent.futures.Future[Any]]) -> None:
    afut, fut = pair
    if afut.done():
        return
    if fut.cancelled():
        afut.cancel()
    elif (exc := fut.exception()) is not None:
        afut.set_exception(exc)
    else:
        afut.set_result(fut.result())


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, service: JobService, clock: Clock, hub: EventHub, completions: Completions) -> None:
        self._service = service
        self._clock = clock
        self._hub = hub
        self._completions = completions

    @_rpc
    async def SubmitJob(self, request: pb.SubmitJobRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.SubmitJobResponse:
        now = self._clock.now()
        if not request.HasField("job"):
            raise InputError("job: required")
        msg, with_id = request.job, bool(request.request_id)

        def make_spec() -> tuple[JobSpec, str]:
            # On the store's writer thread, for the whole group commit at once (see JobService.submit_deferred).
            spec = serde.job_spec_from_proto(msg, now=now)
            return spec, serde.request_fingerprint(msg) if with_id else ""

        return await self._completions.wait(self._service.submit_deferred(
            make_spec, now=now, request_id=request.request_id, finish=serde.submit_reply))

    @_rpc
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Job:
        job, transitions = await asyncio.to_thread(self._service.get, request.job_id)
        return serde.job_to_proto(job, transitions)

    @_rpc
    async def ListJobs(self, request: pb.ListJobsRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListJobsResponse:
        states = [serde.state_from_proto(s) for s in request.states]
        jobs, token = await asyncio.to_thread(self._service.list, states=states, model_id=request.model_id,
                                              page_size=request.page_size, page_token=request.page_token)
        return pb.ListJobsResponse(jobs=[serde.job_to_proto(j, inline_output=False) for j in jobs],
                                   next_page_token=token)

    @_rpc
    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Job:
        job = await asyncio.to_thread(self._service.cancel, request.job_id, now=self._clock.now(),
                                      reason=request.reason)
        return serde.job_to_proto(job)

    @_rpc
    async def GetPlan(self, request: pb.GetPlanRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.PlanView:
        stored = self._service.plan()
        if stored is None:
            raise NotReadyError("plan: no plan yet (the first planning round has not finished)")
        return await asyncio.to_thread(serde.plan_to_proto, stored)

    async def WatchJobs(self, request: pb.WatchJobsRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.JobEvent]:
        try:
            if request.after_seq < 0:
                raise InputError(f"after_seq: must be >= 0, got {request.after_seq}")
            if len(request.job_ids) > 10_000:
                raise InputError("job_ids: at most 10000")
            states = [serde.state_from_proto(s) for s in request.states]
        except InputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        after = self._hub.latest_seq if request.from_now else request.after_seq
        # The stream ends when the client cancels or its deadline passes: grpc cancels this coroutine.
        async for ev in self._hub.watch(after_seq=after, job_ids=request.job_ids, states=states):
            yield serde.event_to_proto(ev)


class SchedulerApp:
    """A running scheduler: the gRPC server plus the store, service, planning loop and fleet behind it."""

    def __init__(self, config: ServerConfig, deps: ServerDeps) -> None:
        self.config = config
        self.deps = deps
        self.store = Store(config.db_path)
        self.service = JobService(self.store)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing from grpc-stubs
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.agent_port = 0  # bound port of ServerConfig.agent_listen (0: none)
        self.loop: PlanningLoop | None = None
        self.fleet: FleetRegistry | None = None
        self.hub: EventHub | None = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.startup: asyncio.Task[None] | None = None

    async def start(self) -> int:
        aio_loop = asyncio.get_running_loop()
        cfg = self.config
        completions = Completions(aio_loop)
        self.hub = EventHub(self.store, aio_loop, capacity=cfg.event_window, post=completions.post)
        self.fleet = FleetRegistry(aio_loop, heartbeat_interval_s=cfg.heartbeat_interval_s,
                                   lost_after_s=cfg.lost_after_s)
        self.loop = PlanningLoop(self.store, self.service, self.deps.clock, self.fleet, cfg.loop)
        interceptors = []
        if cfg.token:
            mtls = cfg.tls is not None and bool(cfg.tls.client_ca_file)
            interceptors.append(BearerTokenInterceptor(cfg.token, fleet_uses_mtls=mtls))
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if cfg.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", cfg.max_concurrent_streams))
        server = grpc.aio.server(interceptors=interceptors, options=options)
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(
            SchedulerServicer(self.service, self.deps.clock, self.hub, completions), server)
        fleet_pb2_grpc.add_FleetServicer_to_server(
            FleetServicer(self.fleet, self.store, self.service, self.deps.clock, self.loop,
                          require_client_cert=cfg.tls is not None and bool(cfg.tls.client_ca_file)), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SCHEDULER_SERVICE, FLEET_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        for name in ("", SCHEDULER_SERVICE, FLEET_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        separate = cfg.agent_listen is not None
        port = _bind(server, "--listen", cfg.listen,
                     cfg.tls.server_credentials(client_certificates=not separate) if cfg.tls is not None else None)
        if cfg.agent_listen is not None:
            self.agent_port = _bind(server, "--agent-listen", cfg.agent_listen,
                                    cfg.tls.server_credentials() if cfg.tls is not None else None)
        await server.start()
        self.server, self.port = server, port
        self.startup = asyncio.create_task(self._load())
        return port

    async def _load(self) -> None:
        try:
            problem = await asyncio.to_thread(self.deps.load_problem)
        except Exception as exc:  # reported through health and the log; the server keeps answering
            log.exception("loading the scenario failed")
            self.load_error = exc
            return
        assert self.loop is not None
        self.service.catalog = Catalog.from_problem(problem)
        self.loop.start(problem, load_problem=self.deps.load_problem)
        if self.config.tune_gc:
            _tune_gc()
        for name in ("", SCHEDULER_SERVICE, FLEET_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.ready.set()
        log.info("ready: contact plan %s .. %s loaded", problem.contact_plan.start_utc,
                 problem.contact_plan.end_utc)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Graceful stop: report NOT_SERVING, finish in-flight calls (up to ``grace_s``), stop the loop."""
        await self.health.enter_graceful_shutdown()
        if self.startup is not None and not self.startup.done():
            self.startup.cancel()
        if self.hub is not None:
            self.hub.close()
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.loop is not None:
            await asyncio.to_thread(self.loop.stop)
        await asyncio.to_thread(self.store.close)


def _bind(server: grpc.aio.Server, option: str, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add a listener; the bound port. A refused address (in use, unknown host) is the user's InputError."""
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:  # grpc raises on a failed bind (older versions returned 0)
        raise InputError(f"{option}: cannot bind {address} (in use, or not an address of this host)") from exc
    if port == 0:
        raise InputError(f"{option}: cannot bind {address} (in use, or not an address of this host)")
    return port


GC_THRESHOLDS = (20_000, 20, 50)


def _tune_gc() -> None:
    """Make cyclic garbage collection cheap for the rest of the process's life.

    The modules, scenario and contact plan loaded by now (~90,000 objects) live as long as the server, yet
    every full collection traversed them again: under a burst of submits, collections took ~8 % of the
    server's time, most of it in full collections. ``gc.freeze`` moves them out of the collector's sight;
    a higher first threshold lets the short-lived objects of a request die before a collection looks at
    them. Reference counting still frees everything that is not in a cycle at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def create_server(config: ServerConfig, deps: ServerDeps) -> tuple[SchedulerApp, int]:
    """Build and start the server on the running event loop; returns the app and the bound port."""
    app = SchedulerApp(config, deps)
    try:
        port = await app.start()
    except BaseException:
        app.store.close()
        raise
    return app, port


class BackgroundServer:
    """A scheduler server on its own event-loop thread (tests, benchmarks, embedding)."""

    def __init__(self, config: ServerConfig, deps: ServerDeps) -> None:
        self._config = config
        self._deps = deps
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scheduler-server", daemon=True)
        self.app: SchedulerApp | None = None
        self.port = 0

    def start(self, *, wait_ready_s: float | None = 60.0) -> int:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(create_server(self._config, self._deps), self._loop)
        self.app, self.port = fut.result()
        if wait_ready_s is not None and not self.app.ready.wait(wait_ready_s):
            raise TimeoutError(f"server not ready after {wait_ready_s} s: {self.app.load_error!r}")
        return self.port

    def stop(self, grace_s: float = 1.0) -> None:
        if self.app is not None:
            asyncio.run_coroutine_threadsafe(self.app.stop(grace_s), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(config: ServerConfig, deps: ServerDeps, *,
                        on_listening: Callable[[int, int], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully. ``on_listening(port, agent_port)`` once bound
    (``agent_port`` 0 without a separate agent listener)."""
    app, port = await create_server(config, deps)
    if on_listening is not None:
        on_listening(port, app.agent_port)
    stop = asyncio.Event()
    aio_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            aio_loop.add_signal_handler(sig, stop.set)
    try:
        stopping = asyncio.create_task(stop.wait())
        if app.startup is not None:
            await asyncio.wait({stopping, app.startup}, return_when=asyncio.FIRST_COMPLETED)
            if app.load_error is not None:
                # The scenario cannot be served (e.g. a mistake in its nodes/models sections): fail loudly.
                raise app.load_error
        await stopping
    finally:
        log.info("shutting down")
        await app.stop(5.0)
