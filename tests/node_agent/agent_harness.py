"""Helpers of the agent tests: a running agent (real server on port 0, real channel) and LoadModel streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from onnx_builders import BuiltModel

from node_agent.config import AgentConfig
from node_agent.service import AgentDeps
from skyinfer.v1 import node_agent_pb2, node_agent_pb2_grpc

CHUNK_BYTES = 4096


@dataclass
class RunningAgent:
    config: AgentConfig
    deps: AgentDeps
    server: grpc.Server
    port: int
    channel: grpc.Channel
    stub: node_agent_pb2_grpc.NodeAgentStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(0).wait()


def chunks_of(model_id: str, data: bytes, sha256: str, total: int | None = None, **extra: Any
              ) -> Iterator[node_agent_pb2.LoadModelChunk]:
    """A LoadModel stream: header in the first chunk, data split into CHUNK_BYTES pieces."""
    pieces = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    first = node_agent_pb2.LoadModelChunk(
        model_id=model_id, sha256=sha256, total_size_bytes=len(data) if total is None else total,
        data=pieces[0], **extra,
    )
    yield first
    for p in pieces[1:]:
        yield node_agent_pb2.LoadModelChunk(data=p)


def upload(stub: node_agent_pb2_grpc.NodeAgentStub, model_id: str, model: BuiltModel, **extra: Any
           ) -> node_agent_pb2.ModelInfo:
    return stub.LoadModel(chunks_of(model_id, model.data, model.sha256, **extra), timeout=30)


def tls_channel(config: AgentConfig, port: int) -> grpc.Channel:
    assert config.tls is not None
    # Tests that need TLS build their own channels; this one verifies the server only.
    ca = config.tls.ca_path.read_bytes() if config.tls.ca_path else None
    return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
