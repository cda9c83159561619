"""TLS and mutual TLS on the agent's server, and the agent's client certificate towards the scheduler."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from agent_harness import RunningAgent, upload
from tlsutil import make_ca

from node_agent.config import TlsFiles
from skyinfer.v1 import node_agent_pb2, node_agent_pb2_grpc


def _list(channel: grpc.Channel) -> list[str]:
    stub = node_agent_pb2_grpc.NodeAgentStub(channel)
    return [m.model_id for m in stub.ListModels(node_agent_pb2.ListModelsRequest(), timeout=5).models]


def test_tls_server_verified_by_ca(start_agent, small_cnn, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server = ca.issue(tmp_path / "pki", "localhost")
    agent: RunningAgent = start_agent(tls=TlsFiles(server.cert_path, server.key_path))
    creds = grpc.ssl_channel_credentials(ca.pem)
    with grpc.secure_channel(f"localhost:{agent.port}", creds) as ch:
        upload(node_agent_pb2_grpc.NodeAgentStub(ch), "cnn@1", small_cnn)
        assert _list(ch) == ["cnn@1"]
    # A client trusting another CA refuses the agent.
    other = make_ca(tmp_path / "other")
    with grpc.secure_channel(f"localhost:{agent.port}", grpc.ssl_channel_credentials(other.pem)) as ch, \
            pytest.raises(grpc.RpcError) as err:
        _list(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Plaintext is refused too.
    with grpc.insecure_channel(f"localhost:{agent.port}") as ch, pytest.raises(grpc.RpcError):
        _list(ch)


def test_mutual_tls_requires_a_client_certificate(start_agent, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server = ca.issue(tmp_path / "pki", "localhost")
    client = ca.issue(tmp_path / "pki", "scheduler", client=True)
    agent: RunningAgent = start_agent(tls=TlsFiles(server.cert_path, server.key_path, ca.cert_path))
    with grpc.secure_channel(f"localhost:{agent.port}", grpc.ssl_channel_credentials(ca.pem)) as ch, \
            pytest.raises(grpc.RpcError) as err:
        _list(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    creds = grpc.ssl_channel_credentials(ca.pem, client.key_pem, client.cert_pem)
    with grpc.secure_channel(f"localhost:{agent.port}", creds) as ch:
        assert _list(ch) == []
    # A client certificate from a foreign CA is refused.
    rogue = make_ca(tmp_path / "rogue").issue(tmp_path / "rogue", "scheduler", client=True)
    creds = grpc.ssl_channel_credentials(ca.pem, rogue.key_pem, rogue.cert_pem)
    with grpc.secure_channel(f"localhost:{agent.port}", creds) as ch, pytest.raises(grpc.RpcError):
        _list(ch)


def test_agent_registers_over_mutual_tls_with_its_node_id_as_cn(tmp_path: Path) -> None:
    from concurrent import futures

    from fleet_harness import WAIT_S, FleetHarness

    from node_agent.config import AgentConfig
    from node_agent.fleet_client import FleetClient
    from node_agent.service import AgentDeps
    from scheduler.types import BUILTIN_PROFILES
    from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc

    ca = make_ca(tmp_path / "pki")
    sched_cert = ca.issue(tmp_path / "pki", "localhost")
    agent_cert = ca.issue(tmp_path / "pki", "FLOCK 4Q-2", client=True)
    h = FleetHarness()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fleet_pb2_grpc.add_FleetServicer_to_server(h, server)
    creds = grpc.ssl_server_credentials([(sched_cert.key_pem, sched_cert.cert_pem)], ca.pem, True)
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    config = AgentConfig(
        node_id="FLOCK 4Q-2", profile=BUILTIN_PROFILES["cubesat"], models_dir=tmp_path / "m",
        scheduler_address=f"localhost:{port}", tls=TlsFiles(agent_cert.cert_path, agent_cert.key_path, ca.cert_path),
        reconnect_min_s=0.05,
    )
    deps = AgentDeps.create(config)
    client = FleetClient(config, deps.agent, deps.spool, "localhost:1")
    client.start()
    try:
        s = h.sessions.get(timeout=WAIT_S)
        assert s.next("register").register.node_id == "FLOCK 4Q-2"
        assert s.peer_common_names == [b"FLOCK 4Q-2"]
        s.send(registered=fleet_pb2.Registered())
        assert client.registered.wait(WAIT_S)
    finally:
        client.stop()
        server.stop(0).wait()
