"""Server side of ``skyinfer.v1.Fleet``: node agents connect, register, heartbeat, take work, report results.

One bidirectional stream per agent. The first agent message must be ``Register``: the node id must be a
satellite of the scenario that has a node profile, and under mutual TLS it must equal the CN of the
agent's client certificate (else PERMISSION_DENIED). The scheduler answers ``Registered`` and from then on
sends ``Work``/``Cancel``; every ``WorkResult`` is stored (SUCCEEDED/FAILED) and acknowledged with
``ResultAck``. Results are idempotent per ``work_id``: a re-sent result is acknowledged again, a result for
work that is no longer current (the job was re-planned elsewhere) is acknowledged and dropped.

:class:`FleetRegistry` is the thread-safe directory of agent sessions that the planning loop (a thread)
uses to send messages and to find nodes that stopped heartbeating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from scheduler import serde
from scheduler.auth import peer_common_name
from scheduler.clock import Clock
from scheduler.service import JobService
from scheduler.store import JobState, NewTransition, NodeRecord, Store, TransitionRecord
from skyinfer.errors import InputError
from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc

if TYPE_CHECKING:
    from scheduler.loop import PlanningLoop

log = logging.getLogger(__name__)

SCHEDULER_VERSION = "skyinfer-scheduler/1"
_OUTBOX_LIMIT = 10_000
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


@dataclass
class AgentSession:
    """One connected agent. ``outbox`` is drained by its stream; ``last_heartbeat_mono_s`` is monotonic."""

    node_id: str
    profile: str
    resident_models: tuple[str, ...]
    outbox: asyncio.Queue[fleet_pb2.SchedulerMessage]
    last_heartbeat_mono_s: float
    status: fleet_pb2.NodeStatus = field(default_factory=fleet_pb2.NodeStatus)
    closed: bool = False
    lost: bool = False  # closed because it went silent: the stream ends with UNAVAILABLE


class FleetRegistry:
    """Connected agents by node id. Safe to call from any thread; sends hop onto the server's event loop."""

    def __init__(self, aio_loop: asyncio.AbstractEventLoop, *, heartbeat_interval_s: float,
                 lost_after_s: float) -> None:
        self._aio_loop = aio_loop
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lost_after_s = lost_after_s
        self._lock = threading.Lock()
        self._sessions: dict[str, AgentSession] = {}
        self._lost: set[str] = set()

    def attach(self, session: AgentSession) -> AgentSession | None:
        """Make ``session`` current for its node; returns the session it replaces (to be closed)."""
        with self._lock:
            old = self._sessions.get(session.node_id)
            self._sessions[session.node_id] = session
            self._lost.discard(session.node_id)
        return old

    def detach(self, session: AgentSession) -> None:
        """The stream ended. The node is not lost yet: it may reconnect before ``lost_after_s``."""
        session.closed = True

    def heartbeat(self, session: AgentSession, status: fleet_pb2.NodeStatus | None) -> None:
        with self._lock:
            session.last_heartbeat_mono_s = time.monotonic()
            if status is not None:
                session.status = status

    def connected(self) -> set[str]:
        """Nodes whose agent has a live stream and is heartbeating."""
        now = time.monotonic()
        with self._lock:
            return {n for n, s in self._sessions.items()
                    if not s.closed and now - s.last_heartbeat_mono_s <= self.lost_after_s}

    def lost(self) -> set[str]:
        with self._lock:
            return set(self._lost)

    def collect_lost(self) -> list[str]:
        """Nodes that went silent for ``lost_after_s`` since the last call: they are marked lost and removed."""
        now = time.monotonic()
        out: list[tuple[str, AgentSession]] = []
        with self._lock:
            for node, s in list(self._sessions.items()):
                if now - s.last_heartbeat_mono_s > self.lost_after_s:
                    out.append((node, s))
                    self._lost.add(node)
                    del self._sessions[node]
                    s.closed = True
                    s.lost = True
        for _, s in out:
            # End the silent agent's stream (its writer waits on the outbox), so that an agent that is in
            # fact alive notices, reconnects and registers again.
            with contextlib.suppress(RuntimeError):  # event loop closed (shutdown)
                self._aio_loop.call_soon_threadsafe(s.outbox.put_nowait, fleet_pb2.SchedulerMessage())
        return [node for node, _ in out]

    def send(self, node_id: str, message: fleet_pb2.SchedulerMessage) -> bool:
        """Queue ``message`` for the node's agent; False when it is not connected."""
        with self._lock:
            session = self._sessions.get(node_id)
        if session is None or session.closed:
            return False

        def put() -> None:
            if session.outbox.qsize() < _OUTBOX_LIMIT:
                session.outbox.put_nowait(message)
            else:
                log.warning("fleet: outbox of %s full; dropping a message", node_id)

        try:
            self._aio_loop.call_soon_threadsafe(put)
        except RuntimeError:  # event loop closed (shutdown)
            return False
        return True


def accept_result(store: Store, clock: Clock, node_id: str,
                  msg: fleet_pb2.WorkResult) -> TransitionRecord | None:
    """Store a node's result when it is for the job's current work on that node; None when stale/duplicate."""
    state, result, reason = serde.work_result_from_proto(msg)
    try:
        job = store.get(msg.job_id)
    except LookupError:
        log.warning("fleet: result from %s for unknown job %r (work %s) dropped", node_id, msg.job_id, msg.work_id)
        return None
    if job.work_id != msg.work_id or job.node != node_id:
        log.info("fleet: stale result %s from %s for job %s (current work %r on %r) dropped",
                 msg.work_id, node_id, job.job_id, job.work_id, job.node)
        return None
    change = NewTransition(job.job_id, state, reason, node=node_id, result=result,
                           expect=frozenset({JobState.DISPATCHED, JobState.RUNNING}))
    (rec,) = store.transition([change], now=clock.now())
    return rec


def accept_started(store: Store, clock: Clock, node_id: str,
                   msg: fleet_pb2.WorkStarted) -> TransitionRecord | None:
    """Record RUNNING when a node starts the job's current work; None when stale, duplicate or already past."""
    try:
        job = store.get(msg.job_id)
    except LookupError:
        log.warning("fleet: start from %s for unknown job %r (work %s) ignored", node_id, msg.job_id, msg.work_id)
        return None
    if job.work_id != msg.work_id or job.node != node_id or job.state is not JobState.DISPATCHED:
        return None
    # The transition carries the scheduler's clock (simulated in replay-like setups), not the agent's.
    change = NewTransition(job.job_id, JobState.RUNNING, f"{node_id} started the work ({msg.work_id})",
                           node=node_id, expect=frozenset({JobState.DISPATCHED}))
    (rec,) = store.transition([change], now=clock.now())
    return rec


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(self, registry: FleetRegistry, store: Store, service: JobService, clock: Clock,
                 loop: PlanningLoop, *, require_client_cert: bool) -> None:
        self._registry = registry
        self._store = store
        self._service = service
        self._clock = clock
        self._loop = loop
        self._require_client_cert = require_client_cert

    async def _check_register(self, reg: fleet_pb2.Register, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        catalog = self._service.catalog
        if catalog is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "starting: the contact plan is not loaded yet")
            return
        if not reg.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register.node_id: required")
        if reg.node_id not in catalog.satellites:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"register.node_id: {reg.node_id!r} is not a satellite of the scenario")
        if reg.node_id not in catalog.compute_nodes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"register.node_id: satellite {reg.node_id!r} has no node profile in the scenario")
        expected_profile = catalog.compute_nodes[reg.node_id]
        if reg.profile and reg.profile != expected_profile:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"register.profile: {reg.profile!r} but the scenario gives {reg.node_id!r} the "
                                f"profile {expected_profile!r}")
        if self._require_client_cert:
            cn = peer_common_name(context)
            if cn is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "register: a client certificate signed by the fleet CA is required")
            if cn != reg.node_id:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"register.node_id: {reg.node_id!r} does not match the client certificate "
                                    f"CN {cn!r}")

    async def Connect(self, request_iterator: AsyncIterator[fleet_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # read()/write() on the context rather than the iterator: the reader runs as its own task.
        first = await context.read()
        if first is _EOF or first.WhichOneof("kind") != "register":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register: the first message must be Register")
            return
        reg = first.register
        await self._check_register(reg, context)
        session = AgentSession(node_id=reg.node_id, profile=reg.profile, resident_models=tuple(reg.resident_models),
                               outbox=asyncio.Queue(), last_heartbeat_mono_s=time.monotonic(), status=reg.status)
        old = self._registry.attach(session)
        if old is not None:
            old.closed = True
            old.outbox.put_nowait(fleet_pb2.SchedulerMessage())  # wake its writer so that it ends
        await asyncio.to_thread(self._store.upsert_node, NodeRecord(
            reg.node_id, "connected", self._clock.now(), tuple(reg.resident_models),
            f"agent {reg.agent_version or '?'} at {reg.agent_address or '?'}"))
        log.info("fleet: %s registered (%s)", reg.node_id, context.peer())
        await context.write(fleet_pb2.SchedulerMessage(registered=fleet_pb2.Registered(
            node_id=reg.node_id, heartbeat_interval_s=self._registry.heartbeat_interval_s,
            scheduler_version=SCHEDULER_VERSION)))
        self._loop.node_registered(reg.node_id)
        reader = asyncio.create_task(self._read(session, context))
        try:
            while not session.closed:
                msg = await session.outbox.get()
                if session.closed or not msg.WhichOneof("kind"):
                    break
                await context.write(msg)
        finally:
            reader.cancel()
            self._registry.detach(session)
            log.info("fleet: %s disconnected", reg.node_id)
        if session.lost:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"node {reg.node_id} marked lost: no heartbeat for {self._registry.lost_after_s:g} s; "
                                "reconnect and register again")

    async def _read(self, session: AgentSession, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            while True:
                msg = await context.read()
                if msg is _EOF:
                    break
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    self._registry.heartbeat(session, msg.heartbeat.status)
                elif kind == "result":
                    self._registry.heartbeat(session, None)
                    await self._on_result(session, msg.result)
                elif kind == "started":
                    self._registry.heartbeat(session, None)
                    await asyncio.to_thread(accept_started, self._store, self._clock, session.node_id,
                                            msg.started)
                else:
                    log.warning("fleet: %s sent %s after registering; ignored", session.node_id, kind)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fleet: reading from %s failed", session.node_id)
        finally:
            session.closed = True
            session.outbox.put_nowait(fleet_pb2.SchedulerMessage())  # wake the writer

    async def _on_result(self, session: AgentSession, result: fleet_pb2.WorkResult) -> None:
        try:
            rec = await asyncio.to_thread(accept_result, self._store, self._clock, session.node_id, result)
        except InputError as exc:
            log.warning("fleet: bad result from %s: %s", session.node_id, exc)
            rec = None
        if rec is not None:
            self._loop.trigger(f"result of {rec.job_id}")
        # Acknowledge even stale/duplicate results: the agent may drop them from its spool.
        session.outbox.put_nowait(fleet_pb2.SchedulerMessage(ack=fleet_pb2.ResultAck(work_id=result.work_id)))
