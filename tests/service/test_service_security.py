"""TLS, mutual TLS for agents (certificate CN = node id) and the bearer token for clients.

Certificates are made per test with ``tests/tlsutil.py`` (cryptography)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import ProtocolAgent, ServerFactory, details, events, job_spec, submit
from tlsutil import TestCA, make_ca

from scheduler.auth import TlsConfig
from skyinfer.v1 import scheduler_pb2 as pb
from skyinfer.v1 import scheduler_pb2_grpc

TOKEN = "s3cr3t-token-for-tests"


def test_token_is_required_for_client_calls(make_server: ServerFactory) -> None:
    server = make_server(token=TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitJob(pb.SubmitJobRequest(job=job_spec()), timeout=5, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert details(err.value).startswith("authorization:")
        with pytest.raises(grpc.RpcError) as err:  # server-streaming calls too
            list(stub.WatchJobs(pb.WatchJobsRequest(), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", f"Bearer {TOKEN}"),)
        reply = stub.SubmitJob(pb.SubmitJobRequest(job=job_spec()), timeout=5, metadata=good)
        assert reply.created
        listed = stub.ListJobs(pb.ListJobsRequest(), timeout=5, metadata=good)
        assert [j.job_id for j in listed.jobs] == [reply.job.job_id]
        # Health stays open for probes.
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


def _tls_server(make_server: ServerFactory, tmp_path: Path, **kw: object) -> tuple[int, TestCA]:
    ca = make_ca(tmp_path / "pki")
    cert = ca.issue(tmp_path / "pki", "localhost")
    server = make_server(tls=TlsConfig(str(cert.cert_path), str(cert.key_path), str(ca.cert_path)), **kw)
    return server.port, ca


def test_tls_clients_and_token(make_server: ServerFactory, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    cert = ca.issue(tmp_path / "pki", "localhost")
    port = make_server(tls=TlsConfig(str(cert.cert_path), str(cert.key_path)), token=TOKEN).port
    creds = grpc.ssl_channel_credentials(root_certificates=ca.pem)
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            submit(stub)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # access_token_call_credentials sends "authorization: Bearer <token>" on every call of the channel.
    authed = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(TOKEN))
    with grpc.secure_channel(f"localhost:{port}", authed) as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        reply = submit(stub)
        assert reply.created
        assert events(stub, count=1, job_ids=[reply.job.job_id], timeout_s=5)[0].job_id == reply.job.job_id
    # A plaintext client cannot talk to a TLS server.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            scheduler_pb2_grpc.SchedulerStub(ch).ListJobs(pb.ListJobsRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_agents_prove_their_node_id_with_a_client_certificate(make_server: ServerFactory, tmp_path: Path) -> None:
    port, ca = _tls_server(make_server, tmp_path, token=TOKEN)
    issued = ca.issue(tmp_path / "pki", "SKYSAT-C1", client=True)
    good = (issued.cert_pem, issued.key_pem)
    untrusted = make_ca(tmp_path / "other", "some other CA")
    rogue = untrusted.issue(tmp_path / "other", "SKYSAT-C1", client=True)

    def connect(cert: tuple[bytes, bytes] | None, node: str) -> ProtocolAgent:
        creds = grpc.ssl_channel_credentials(root_certificates=ca.pem, private_key=cert[1] if cert else None,
                                             certificate_chain=cert[0] if cert else None)
        channel = grpc.secure_channel(f"localhost:{port}", creds)
        return ProtocolAgent(channel, node)

    agent = connect(good, "SKYSAT-C1")
    assert agent.next(kind="registered").registered.node_id == "SKYSAT-C1"
    agent.close()
    agent = connect(good, "SKYSAT-C2")  # a valid certificate, but for another node
    with pytest.raises(grpc.RpcError) as err:
        agent.next()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not match the client certificate CN 'SKYSAT-C1'" in details(err.value)
    agent.close()
    agent = connect(None, "SKYSAT-C1")  # no client certificate: the handshake fails
    with pytest.raises(grpc.RpcError) as err:
        agent.next()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    agent.close()
    # Operators' tools carry a certificate from the same CA and still need the token.
    operator = ca.issue(tmp_path / "pki", "operator", client=True)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.pem, private_key=operator.key_pem,
                                         certificate_chain=operator.cert_pem)
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            submit(stub)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.SubmitJob(pb.SubmitJobRequest(job=job_spec()), timeout=5,
                               metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert reply.created
    agent = connect((rogue.cert_pem, rogue.key_pem), "SKYSAT-C1")  # signed by an untrusted CA
    with pytest.raises(grpc.RpcError) as err:
        agent.next()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    agent.close()


def test_a_separate_agent_listener_requires_certificates_only_from_agents(make_server: ServerFactory,
                                                                         tmp_path: Path) -> None:
    """--agent-listen with mutual TLS: clients keep server TLS and the token on the main port (no certificate);
    agents prove their node id on the agent port; Fleet is refused on the main port."""
    ca = make_ca(tmp_path / "pki")
    cert = ca.issue(tmp_path / "pki", "localhost")
    server = make_server(tls=TlsConfig(str(cert.cert_path), str(cert.key_path), str(ca.cert_path)), token=TOKEN,
                         agent_listen="127.0.0.1:0")
    assert server.app is not None
    port, agent_port = server.port, server.app.agent_port
    assert agent_port not in (0, port)
    plain_tls = grpc.ssl_channel_credentials(root_certificates=ca.pem)
    authed = grpc.composite_channel_credentials(plain_tls, grpc.access_token_call_credentials(TOKEN))
    with grpc.secure_channel(f"localhost:{port}", authed) as ch:  # an operator without a certificate
        assert submit(scheduler_pb2_grpc.SchedulerStub(ch)).created
    issued = ca.issue(tmp_path / "pki", "SKYSAT-C1", client=True)
    with_cert = grpc.ssl_channel_credentials(root_certificates=ca.pem, private_key=issued.key_pem,
                                             certificate_chain=issued.cert_pem)
    agent = ProtocolAgent(grpc.secure_channel(f"localhost:{agent_port}", with_cert), "SKYSAT-C1")
    assert agent.next(kind="registered").registered.node_id == "SKYSAT-C1"
    agent.close()
    agent = ProtocolAgent(grpc.secure_channel(f"localhost:{port}", plain_tls), "SKYSAT-C1")  # the client port
    with pytest.raises(grpc.RpcError) as err:
        agent.next()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "client certificate" in details(err.value)
    agent.close()
    with grpc.secure_channel(f"localhost:{agent_port}", authed) as ch:  # no certificate: no handshake
        with pytest.raises(grpc.RpcError) as err:
            submit(scheduler_pb2_grpc.SchedulerStub(ch))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
