"""``skyinfer agent`` (run a node agent) and ``skyinfer infer`` (call one)."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from node_agent.config import MIB, AgentConfig, TlsFiles, profile_by_name
from scheduler.types import BUILTIN_PROFILES, NodeProfile
from skyinfer.errors import InputError, SkyinferError
from skyinfer.fileio import write_atomic

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run a node agent: ONNX inference on an emulated satellite computer",
        description="Serve skyinfer.v1.NodeAgent over gRPC, emulating a node profile's speed, memory, slots, "
        "energy and link; with --scheduler, register with the scheduler and take work from it.",
    )
    p.add_argument("--node-id", required=True, help="node name (the satellite's name)")
    p.add_argument("--profile", required=True, help=f"node profile: {', '.join(sorted(BUILTIN_PROFILES))}")
    p.add_argument("--profile-name", metavar="NAME",
                   help="register under this profile name (a scenario's profile based on --profile)")
    p.add_argument("--load", action="append", default=[], metavar="NAME@VER=FILE",
                   help="load this ONNX file at start-up (repeatable; FILE 'csmask' = DLR's cloud mask from "
                   "skyinfer[models])")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (port 0: any free port)")
    p.add_argument("--advertise", metavar="HOST:PORT", help="address the scheduler should use (default: bound)")
    p.add_argument("--models-dir", type=Path, help="model store (default ./skyinfer-models/NODE_ID)")
    p.add_argument("--spool-dir", type=Path, help="unacknowledged results (default MODELS_DIR/.spool)")
    p.add_argument("--scheduler", metavar="ADDR", help="scheduler HOST:PORT to register with")
    p.add_argument("--token-file", type=Path, help="bearer token for the scheduler (when it does not use mutual TLS)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate (serve TLS; client certificate to the scheduler)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-ca", type=Path, help="PEM CA: require client certificates, verify the scheduler")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default cores / profile slots)")
    p.add_argument("--max-model-mb", type=float, default=512.0, help="model size limit (default 512 MiB)")
    p.add_argument("--max-tensor-mb", type=float, default=64.0, help="tensor size limit (default 64 MiB)")
    p.add_argument("--memory-limit-mb", type=float, help="resident model memory (default: the profile's)")
    p.add_argument("--simulated-clock", action="store_true", help="never sleep to emulate a slower node (replay)")
    p.add_argument("--heartbeat-s", type=float, default=5.0, help="heartbeat interval (default 5 s)")
    p.set_defaults(func=run_agent)

    q = sub.add_parser(
        "infer",
        help="run one inference on a node agent",
        description="Load a .npy array, call NodeAgent.Infer on the model's first input, save the first output.",
    )
    q.add_argument("--agent", required=True, metavar="ADDR", help="agent HOST:PORT")
    q.add_argument("--model", required=True, metavar="NAME@VER")
    q.add_argument("--input", required=True, type=Path, metavar="FILE.npy")
    q.add_argument("--out", type=Path, metavar="FILE.npy", help="write the first output here (atomically)")
    q.add_argument("--timeout-s", type=float, default=60.0)
    q.add_argument("--tls-ca", type=Path, help="PEM CA to verify the agent (enables TLS)")
    q.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    q.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    q.set_defaults(func=run_infer)


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_ca is not None:
            raise InputError("--tls-ca: serving TLS needs --tls-cert and --tls-key as well")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise InputError("--tls-cert/--tls-key: give both")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)


def _preload(specs: list[str]) -> tuple[tuple[str, Path], ...]:
    from node_agent.models import find_csmask_model

    out = []
    for spec in specs:
        model_id, sep, file = spec.partition("=")
        if not sep or not model_id or not file:
            raise InputError(f"--load: expected NAME@VER=FILE, got {spec!r}")
        if file == "csmask":
            found = find_csmask_model()
            if found is None:
                raise InputError("--load: csmask: ukis-csmask is not installed (pip install 'skyinfer[models]')")
            path = found
        else:
            path = Path(file)
            if not path.is_file():
                raise InputError(f"--load: {path}: no such file")
        out.append((model_id, path))
    return tuple(out)


def _profile(args: argparse.Namespace) -> NodeProfile:
    profile = profile_by_name(args.profile)
    if args.profile_name:
        profile = replace(profile, name=args.profile_name)
    return profile


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"--token-file: {path}: {exc.strerror or exc}") from None
    if not token:
        raise InputError(f"--token-file: {path}: the file is empty")
    return token


def _mib(label: str, value: float | None) -> int | None:
    if value is None:
        return None
    if not value > 0:
        raise InputError(f"{label}: must be > 0")
    return int(value * MIB)


def run_agent(args: argparse.Namespace) -> int:
    from node_agent.service import serve

    config = AgentConfig(
        node_id=args.node_id, profile=_profile(args), preload=_preload(args.load),
        models_dir=args.models_dir or Path("skyinfer-models") / args.node_id, listen=args.listen,
        spool_dir=args.spool_dir, scheduler_address=args.scheduler, scheduler_token=_token(args.token_file),
        advertise_address=args.advertise,
        tls=_tls(args), intra_op_threads=args.threads, max_model_bytes=_mib("--max-model-mb", args.max_model_mb) or 1,
        max_tensor_bytes=_mib("--max-tensor-mb", args.max_tensor_mb) or 1,
        max_message_bytes=max(80 * MIB, (_mib("--max-tensor-mb", args.max_tensor_mb) or 0) + 16 * MIB),
        memory_limit_bytes=_mib("--memory-limit-mb", args.memory_limit_mb), simulated_clock=args.simulated_clock,
        heartbeat_interval_s=args.heartbeat_s,
    )

    def listening(address: str) -> None:
        print(f"listening on {address}", flush=True)

    return serve(config, on_listening=listening)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    from node_agent.client import channel_options

    options = channel_options()
    if args.tls_ca is None and args.tls_cert is None:
        return grpc.insecure_channel(args.agent, options)

    def read(p: Path | None) -> bytes | None:
        return Path(p).read_bytes() if p is not None else None

    creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    return grpc.secure_channel(args.agent, creds, options)


def run_infer(args: argparse.Namespace) -> int:
    from node_agent.client import AgentClient
    from skyinfer.v1 import node_agent_pb2, node_agent_pb2_grpc

    try:
        arr = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--input: {args.input}: not a readable .npy file ({exc})") from exc
    with _channel(args) as channel:
        stub = node_agent_pb2_grpc.NodeAgentStub(channel)
        try:
            models = stub.ListModels(node_agent_pb2.ListModelsRequest(), timeout=args.timeout_s).models
            model = next((m for m in models if m.model_id == args.model), None)
            if model is None:
                loaded = ", ".join(m.model_id for m in models) or "none"
                raise InputError(f"--model: {args.model!r} is not loaded on {args.agent} (loaded: {loaded})")
            # The copy-free codec of node_agent.wire: the tile is copied once, into the request.
            result = AgentClient(channel).infer(args.model, {model.inputs[0].name: arr}, timeout_s=args.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                        grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise InputError(f"{code.name}: {detail}") from None
            raise SkyinferError(f"agent {args.agent}: {code.name if code else 'error'}: {detail}") from None
    name, out = next(iter(result.outputs.items()))
    if args.out is not None:
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        write_atomic(args.out, buf.getvalue())
    print(
        f"{args.model} on {args.agent}: output {name} {out.dtype.name}{list(out.shape)}; "
        f"real {result.real_ms:.2f} ms, emulated {result.emulated_ms:.2f} ms, "
        f"energy {result.energy_wh * 3600:.3f} J",
        file=sys.stdout,
    )
    return 0
