"""The agent's side of ``skyinfer.v1.Fleet.Connect``: register, heartbeat, run work, deliver results.

One session is one bidirectional stream. Outgoing messages go through a queue that the request generator
drains (gRPC reads it on its own thread); when the queue is idle for a heartbeat interval the generator
emits a Heartbeat. Every WorkResult is spooled to disk before it is sent and removed only on ResultAck, and
all spooled results are re-sent after each (re)connect and whenever the link comes back up. Reconnects back
off exponentially (with jitter) between ``reconnect_min_s`` and ``reconnect_max_s``.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from node_agent import serde
from node_agent.agent import Agent
from node_agent.config import LOOKAHEAD_BYTES, MAX_FRAME_BYTES, AgentConfig
from node_agent.spool import ResultSpool
from skyinfer import __version__
from skyinfer.errors import SkyinferError
from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)
_CLOSE = object()
_WAKE = object()  # makes the request generator re-read the heartbeat interval


def channel_credentials(config: AgentConfig) -> grpc.ChannelCredentials | None:
    """TLS to the scheduler: verify it with the CA; present the agent's certificate (CN = node id)."""
    if config.tls is None:
        return None
    cert, key, ca = config.tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class FleetClient:
    """Keeps one agent connected to the scheduler until :meth:`stop`."""

    def __init__(self, config: AgentConfig, agent: Agent, spool: ResultSpool, agent_address: str) -> None:
        self.config = config
        self.agent = agent
        self.spool = spool
        self.agent_address = agent_address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-client", daemon=True)
        self._outbox: queue.Queue[object] | None = None
        self._outbox_lock = threading.Lock()
        self._call: grpc.Future | None = None
        self._heartbeat_s = config.heartbeat_interval_s
        self._work = futures.ThreadPoolExecutor(max_workers=2 * config.profile.slots, thread_name_prefix="work")
        self._running: dict[str, threading.Event] = {}
        self._running_lock = threading.Lock()
        self.registered = threading.Event()
        self.sessions = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._running_lock:
            for ev in self._running.values():
                ev.set()
        self._close_session()
        self._thread.join(timeout_s)
        self._work.shutdown(wait=False, cancel_futures=True)

    def _close_session(self) -> None:
        with self._outbox_lock:
            if self._outbox is not None:
                self._outbox.put(_CLOSE)
            call = self._call
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        delay_s = self.config.reconnect_min_s
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if not self._stop.is_set():
                    # A refusal (bad node id, profile, certificate) will not fix itself: say so loudly.
                    refused = code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                       grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION)
                    log.log(logging.ERROR if refused else logging.WARNING, "scheduler %s: %s: %s",
                            self.config.scheduler_address, code.name if code else "error", detail)
            except Exception:
                log.exception("fleet session failed")
            finally:
                self.registered.clear()
            if self._stop.is_set():
                break
            if time.monotonic() - t0 > 2 * self.config.reconnect_max_s:
                delay_s = self.config.reconnect_min_s  # the session lasted: start backing off afresh
            self._stop.wait(delay_s * random.uniform(0.8, 1.2))
            delay_s = min(self.config.reconnect_max_s, delay_s * 2)

    # ------------------------------------------------------------------ one stream

    def _session(self) -> None:
        assert self.config.scheduler_address is not None
        creds = channel_credentials(self.config)
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.http2.lookahead_bytes", LOOKAHEAD_BYTES),  # Work carries tiles: megabytes
            ("grpc.http2.max_frame_size", MAX_FRAME_BYTES),
        ]
        target = self.config.scheduler_address
        with (
            grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target, options)
        ) as channel:
            stub = fleet_pb2_grpc.FleetStub(channel)
            outbox: queue.Queue[object] = queue.Queue()
            register = fleet_pb2.AgentMessage(register=fleet_pb2.Register(
                node_id=self.config.node_id, profile=self.config.profile.name,
                resident_models=[m.model_id for m in self.agent.list_models()],
                agent_address=self.agent_address, agent_version=__version__, status=self._status(),
                pending_work_ids=[r.work_id for r in self.spool.pending()],
            ))
            outbox.put(register)
            metadata = (
                (("authorization", f"Bearer {self.config.scheduler_token}"),) if self.config.scheduler_token else None
            )
            call = stub.Connect(self._requests(outbox), metadata=metadata)
            with self._outbox_lock:
                self._outbox, self._call = outbox, call
            if self._stop.is_set():
                call.cancel()
            self.sessions += 1
            try:
                for msg in call:
                    self._handle(msg)
            finally:
                with self._outbox_lock:
                    self._outbox, self._call = None, None
                outbox.put(_CLOSE)

    def _requests(self, outbox: queue.Queue[object]) -> Iterator[fleet_pb2.AgentMessage]:
        last_heartbeat = time.monotonic()
        while True:
            try:
                item = outbox.get(timeout=max(0.0, last_heartbeat + self._heartbeat_s - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _CLOSE:
                return
            if isinstance(item, fleet_pb2.AgentMessage):
                yield item
            # Heartbeats keep their period whatever else is sent (the scheduler may only count heartbeats).
            if time.monotonic() >= last_heartbeat + self._heartbeat_s:
                last_heartbeat = time.monotonic()
                yield fleet_pb2.AgentMessage(
                    heartbeat=fleet_pb2.Heartbeat(status=self._status(), sent_unix_s=time.time())
                )

    def _send(self, msg: fleet_pb2.AgentMessage) -> bool:
        with self._outbox_lock:
            if self._outbox is None:
                return False
            self._outbox.put(msg)
            return True

    def _status(self) -> fleet_pb2.NodeStatus:
        return serde.status_to_proto(self.agent.status(), len(self.spool))

    def flush_spool(self) -> int:
        """Send every unacknowledged result if the link is up; returns how many were queued."""
        if not self.agent.link_up:
            return 0
        n = 0
        for result in self.spool.pending():
            n += self._send(fleet_pb2.AgentMessage(result=result))
        return n

    # ------------------------------------------------------------------ scheduler messages

    def _handle(self, msg: fleet_pb2.SchedulerMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "registered":
            if msg.registered.heartbeat_interval_s > 0:
                self._heartbeat_s = msg.registered.heartbeat_interval_s
                with self._outbox_lock:
                    if self._outbox is not None:
                        self._outbox.put(_WAKE)
            self.registered.set()
            log.info("registered with %s", self.config.scheduler_address)
            self.flush_spool()
        elif kind == "work":
            self._take(msg.work)
        elif kind == "ack":
            self.spool.ack(msg.ack.work_id)
        elif kind == "cancel":
            with self._running_lock:
                ev = self._running.get(msg.cancel.work_id)
            if ev is not None:
                ev.set()
        elif kind == "set_link":
            self.agent.set_link(msg.set_link.up)
            if msg.set_link.up:
                self.flush_spool()

    def _take(self, work: fleet_pb2.Work) -> None:
        try:
            done = self.spool.get(work.work_id)
        except SkyinferError as exc:
            self._deliver(fleet_pb2.WorkResult(
                work_id=work.work_id, job_id=work.job_id, node_id=self.config.node_id,
                status=fleet_pb2.WORK_STATUS_FAILED, error=str(exc),
            ), spool=False)
            return
        if done is not None:  # already ran (e.g. before a restart): send the stored result again
            self._deliver(done, spool=False)
            return
        with self._running_lock:
            if work.work_id in self._running:
                return
            self._running[work.work_id] = threading.Event()
        self._work.submit(self._execute, work)

    def _execute(self, work: fleet_pb2.Work) -> None:
        with self._running_lock:
            cancelled = self._running[work.work_id]
        try:
            result = run_work(self.agent, work, cancelled, self.config.max_tensor_bytes,
                              on_start=lambda t_unix_s: self._started(work, t_unix_s))
            if self._stop.is_set() and result.status == fleet_pb2.WORK_STATUS_CANCELLED:
                # Interrupted by the agent's own shutdown, not by the scheduler: report nothing, so the work
                # is dispatched again (to this agent after its restart, or elsewhere).
                return
            self._deliver(result, spool=True)
        except Exception:
            log.exception("work %s failed", work.work_id)
        finally:
            with self._running_lock:
                self._running.pop(work.work_id, None)

    def _started(self, work: fleet_pb2.Work, t_unix_s: float) -> None:
        # Best effort, not spooled: the result that follows moves the job on even if this is lost.
        if self.agent.link_up:
            self._send(fleet_pb2.AgentMessage(started=fleet_pb2.WorkStarted(
                work_id=work.work_id, job_id=work.job_id, started_unix_s=t_unix_s)))

    def _deliver(self, result: fleet_pb2.WorkResult, *, spool: bool) -> None:
        if spool:
            self.spool.put(result)
        if self.agent.link_up:
            self._send(fleet_pb2.AgentMessage(result=result))


def run_work(agent: Agent, work: fleet_pb2.Work, cancelled: threading.Event, max_tensor_bytes: int, *,
             on_start: Callable[[float], None] | None = None) -> fleet_pb2.WorkResult:
    """Run ``work.tiles`` inferences of one Work and describe the outcome (never raises domain errors).

    ``on_start(unix_s)`` is called once the work's ``not_before`` time has passed, just before its inputs are
    checked and the first tile runs (the scheduler records RUNNING from it).
    """
    result = fleet_pb2.WorkResult(work_id=work.work_id, job_id=work.job_id, node_id=agent.config.node_id)
    wait_s = work.not_before_unix_s - time.time()
    if wait_s > 0 and not work.simulated_clock and cancelled.wait(wait_s):
        result.status = fleet_pb2.WORK_STATUS_CANCELLED
        return result
    result.started_unix_s = time.time()
    if on_start is not None:
        on_start(result.started_unix_s)
    try:
        feeds = (
            serde.feeds_from_protos(work.inputs, max_tensor_bytes) if work.inputs else agent.zero_inputs(work.model_id)
        )
        agent.check_inputs(work.model_id, feeds)
        outputs = None
        for _ in range(max(1, work.tiles)):
            if cancelled.is_set():
                result.status = fleet_pb2.WORK_STATUS_CANCELLED
                break
            out = agent.infer(work.model_id, feeds, simulated_clock=work.simulated_clock, cancelled=cancelled)
            outputs = out.outputs
            result.tiles_done += 1
            result.real_ms += out.real_ms
            result.emulated_ms += out.emulated_ms
            result.energy_wh += out.energy_wh
            result.output_bytes += sum(a.nbytes for a in out.outputs.values())
        else:
            result.status = fleet_pb2.WORK_STATUS_OK
        if work.return_outputs and outputs is not None and result.status == fleet_pb2.WORK_STATUS_OK:
            serde.add_tensors(result.outputs, outputs)
    except SkyinferError as exc:
        result.status = fleet_pb2.WORK_STATUS_FAILED
        result.error = str(exc)
    result.finished_unix_s = time.time()
    return result
