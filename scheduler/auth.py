"""Authentication for the scheduler server: TLS credentials, a bearer-token interceptor, agent identity.

- Clients (``skyinfer.v1.Scheduler``) present ``authorization: Bearer <token>`` when a token file is
  configured; otherwise the call fails with UNAUTHENTICATED. The token is compared in constant time.
- With a client CA (``--tls-client-ca``) the server requires mutual TLS. Node agents (``skyinfer.v1.Fleet``)
  prove their node id with it: the certificate's CN must equal the node id they register (else
  PERMISSION_DENIED). gRPC Python cannot ask for a certificate without requiring it, so with a single listener
  every connection needs one; with a separate agent listener (``--agent-listen``) only that one requires
  client certificates and clients use the main listener with server TLS and the token. Without a client CA,
  agents need the bearer token like any client (when one is configured).
- The health service stays open so that load balancers and orchestrators can probe it.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from skyinfer.errors import InputError

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
FLEET_PREFIX = "/skyinfer.v1.Fleet/"


def read_token(path: str | Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped); it must not be empty."""
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"--token-file: {p}: {exc.strerror or exc}") from None
    if not token:
        raise InputError(f"--token-file: {p}: the file is empty")
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise InputError(f"--token-file: {p}: the token must be one line of printable characters without spaces")
    return token


def _read_bytes(path: str | Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{option}: {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """PEM file paths: the server's certificate and key, and optionally the CA that signs agent certificates."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def server_credentials(self, *, client_certificates: bool = True) -> grpc.ServerCredentials:
        """Credentials of a listener; with a client CA and ``client_certificates`` every connection must present
        a certificate it signed (gRPC Python cannot request one without requiring it)."""
        cert = _read_bytes(self.cert_file, "--tls-cert")
        key = _read_bytes(self.key_file, "--tls-key")
        ca = (_read_bytes(self.client_ca_file, "--tls-client-ca")
              if self.client_ca_file and client_certificates else None)
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def peer_common_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """CN of the verified client certificate of this call, or None without one."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or [])
    return names[0].decode("utf-8", "replace") if names else None


def _deny_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same call type as ``handler`` that fails every call with ``code``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover  (makes this an async generator)

    deser, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, deser, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, deser, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, deser, ser)
    return grpc.unary_unary_rpc_method_handler(unary, deser, ser)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every method but health (and Fleet under mutual TLS)."""

    def __init__(self, token: str, *, fleet_uses_mtls: bool) -> None:
        self._expected = f"Bearer {token}".encode()
        self._fleet_uses_mtls = fleet_uses_mtls

    def _exempt(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return True
        return self._fleet_uses_mtls and method.startswith(FLEET_PREFIX)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or self._exempt(method):
            return handler
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        if presented and hmac.compare_digest(presented, self._expected):
            return handler
        why = "missing bearer token" if not presented else "invalid bearer token"
        return _deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, f"authorization: {why}")


class BearerToken(grpc.AuthMetadataPlugin):
    """Client side: attach the token to every call (use over TLS; see :func:`client_channel`)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)
