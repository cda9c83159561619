"""Container health check: ``python -m node_agent.healthcheck HOST:PORT [--service NAME] [--tls-ca PEM ...]``.

Exit 0 when the gRPC health service answers SERVING, 1 otherwise (Docker's HEALTHCHECK convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0,
          credentials: grpc.ChannelCredentials | None = None) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) or ``UNREACHABLE: <code>``."""
    with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return f"UNREACHABLE: {code.name if code else exc}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node_agent.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("address")
    p.add_argument("--service", default="")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.add_argument("--tls-ca", type=Path)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    args = p.parse_args(argv)
    creds = None
    if args.tls_ca or args.tls_cert:
        def read(x: Path | None) -> bytes | None:
            return x.read_bytes() if x else None
        creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    status = check(args.address, args.service, args.timeout_s, creds)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
