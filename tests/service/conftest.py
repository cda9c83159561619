"""Fixtures of the scheduler service tests: real servers on port 0 over temporary stores, real stubs.

The base problem (contact plan of tests/service/data/service.yaml) is built once per session: propagation
dominates its cost and every server of the session serves the same scenario.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from service_harness import CLOCK_START, SCENARIO, ServerFactory

from scheduler.clock import Clock, WallClock
from scheduler.loop import LoopConfig
from scheduler.service import problem_loader
from scheduler.servicer import BackgroundServer, ServerConfig, ServerDeps
from scheduler.types import Problem
from skyinfer.scenario import load_scenario
from skyinfer.v1 import scheduler_pb2_grpc


@pytest.fixture(scope="session")
def base_problem() -> Problem:
    return problem_loader(load_scenario(SCENARIO))()


@pytest.fixture
def make_server(tmp_path: Path, base_problem: Problem) -> Iterator[ServerFactory]:
    """Start servers: ``make_server(clock=..., load_problem=..., **ServerConfig fields)``; stopped at teardown."""
    started: list[BackgroundServer] = []

    def factory(*, clock: Clock | None = None, load_problem: Callable[[], Problem] | None = None,
                wait_ready: bool = True, db_name: str = "jobs.db", **overrides: Any) -> BackgroundServer:
        overrides.setdefault("loop", LoopConfig(debounce_s=0.05, min_interval_s=0.0, time_limit_s=2.0))
        config = ServerConfig(db_path=str(tmp_path / db_name), listen="127.0.0.1:0", **overrides)
        deps = ServerDeps(load_problem=load_problem or (lambda: base_problem),
                          clock=clock or WallClock(start_utc=CLOCK_START))
        server = BackgroundServer(config, deps)
        started.append(server)
        server.start(wait_ready_s=60.0 if wait_ready else None)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> BackgroundServer:
    return make_server()


@pytest.fixture
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> scheduler_pb2_grpc.SchedulerStub:
    return scheduler_pb2_grpc.SchedulerStub(channel)
