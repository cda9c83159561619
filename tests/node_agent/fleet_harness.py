"""A protocol harness standing in for the scheduler's Fleet server in the agent's tests.

It is a real gRPC Fleet server that records what agents send and lets a test send scheduler messages;
the scheduler's own server is tested with its code.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc

WAIT_S = 20.0


@dataclass
class Session:
    to_agent: queue.Queue[fleet_pb2.SchedulerMessage | None] = field(default_factory=queue.Queue)
    from_agent: queue.Queue[fleet_pb2.AgentMessage] = field(default_factory=queue.Queue)
    peer_common_names: list[bytes] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def send(self, **kind: object) -> None:
        self.to_agent.put(fleet_pb2.SchedulerMessage(**kind))

    def next(self, kind: str, timeout_s: float = WAIT_S) -> fleet_pb2.AgentMessage:
        """The next message of ``kind`` (others, e.g. heartbeats, are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.from_agent.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.WhichOneof("kind") == kind:
                return msg


class FleetHarness(fleet_pb2_grpc.FleetServicer):
    def __init__(self) -> None:
        self.sessions: queue.Queue[Session] = queue.Queue()

    def Connect(self, request_iterator: Iterator[fleet_pb2.AgentMessage], context: grpc.ServicerContext
                ) -> Iterator[fleet_pb2.SchedulerMessage]:
        s = Session()
        s.peer_common_names = list(context.auth_context().get("x509_common_name", []))
        s.metadata = {k: str(v) for k, v in context.invocation_metadata()}
        self.sessions.put(s)

        def pump() -> None:
            try:
                for m in request_iterator:
                    s.from_agent.put(m)
            except grpc.RpcError:
                pass
            s.to_agent.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while context.is_active():
            try:
                out = s.to_agent.get(timeout=0.1)
            except queue.Empty:
                continue
            if out is None:
                return
            yield out
