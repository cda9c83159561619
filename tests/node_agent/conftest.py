"""Fixtures of the agent tests: real agents on port 0 with real channels; small CNNs built at test time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_harness import RunningAgent, tls_channel, upload
from onnx_builders import BuiltModel, build_cnn

from node_agent.config import AgentConfig
from node_agent.service import AgentDeps, create_server, set_serving
from scheduler.types import BUILTIN_PROFILES
from skyinfer.v1 import node_agent_pb2_grpc


@pytest.fixture(scope="session")
def small_cnn() -> BuiltModel:
    return build_cnn()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Start an agent: ``start_agent(profile="jetson-orin", models_dir=..., **config_overrides)``."""
    started: list[RunningAgent] = []

    def start(profile: str = "three-body-744tops", models_dir: Path | None = None, serving: bool = True,
              **overrides: Any) -> RunningAgent:
        config = AgentConfig(
            node_id=overrides.pop("node_id", "sat-1"), profile=BUILTIN_PROFILES[profile],
            models_dir=models_dir or tmp_path / "models", intra_op_threads=1,
        )
        config = replace(config, **overrides)
        deps = AgentDeps.create(config)
        server, port = create_server(config, deps)
        server.start()
        if serving:
            deps.agent.load_store()
            set_serving(deps, True)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}") if config.tls is None else tls_channel(config, port)
        agent = RunningAgent(config, deps, server, port, channel, node_agent_pb2_grpc.NodeAgentStub(channel))
        started.append(agent)
        return agent

    yield start
    for a in started:
        a.stop()


@pytest.fixture
def cnn_agent(start_agent: Callable[..., RunningAgent], small_cnn: BuiltModel) -> RunningAgent:
    """An agent (default profile) with ``small_cnn`` loaded as ``cnn@1``."""
    running: RunningAgent = start_agent()
    upload(running.stub, "cnn@1", small_cnn)
    return running
