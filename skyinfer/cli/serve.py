"""``skyinfer serve | submit | jobs | cancel``: run the scheduler service and talk to it.

gRPC errors become one line on stderr (``skyinfer submit: INVALID_ARGUMENT: deadline: before submit time``)
with exit code 2 for INVALID_ARGUMENT / NOT_FOUND and 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict

from scheduler.clock import WallClock
from skyinfer.errors import InputError
from skyinfer.timefmt import format_utc, parse_duration_s, parse_utc
from skyinfer.v1 import scheduler_pb2 as pb
from skyinfer.v1 import scheduler_pb2_grpc

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_USAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
STATE_NAMES = tuple(v.name.removeprefix("JOB_STATE_") for v in pb.DESCRIPTOR.enum_types_by_name["JobState"].values
                    if v.number != 0)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the scheduler service (gRPC)",
                       description="Accept jobs over gRPC, store them durably, plan and dispatch them to node agents.")
    p.add_argument("--scenario", required=True, metavar="FILE", help="scenario YAML (constellation, nodes, models)")
    p.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                   help="address to bind (default 127.0.0.1:50051; port 0 picks a free port)")
    p.add_argument("--db", default="skyinfer.db", metavar="FILE", help="SQLite job store (default skyinfer.db)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--tls-client-ca", metavar="PEM", help="CA of node agents' client certificates (mutual TLS)")
    p.add_argument("--token-file", metavar="FILE", help="bearer token that clients must present")
    p.add_argument("--policy", default="greedy", help="planner policy: greedy | cpsat | bentpipe (default greedy)")
    p.add_argument("--time-limit-s", type=float, default=5.0, help="planner time limit per round (default 5)")
    p.add_argument("--workers", type=int, default=1, help="CP-SAT workers (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--period-s", type=float, default=60.0, help="re-plan at least this often (default 60)")
    p.add_argument("--debounce-s", type=float, default=0.2,
                   help="wait this long after a job arrives for more before re-planning (default 0.2)")
    p.add_argument("--min-replan-interval-s", type=float, default=1.0,
                   help="at most one triggered re-plan per this many seconds (default 1)")
    p.add_argument("--heartbeat-interval-s", type=float, default=5.0,
                   help="agents' heartbeat interval; a node is lost after 3 missed heartbeats (default 5)")
    p.add_argument("--planner-process", action=argparse.BooleanOptionalAction, default=True,
                   help="plan in a worker process so that planning never stalls the API (default on)")
    p.add_argument("--clock", choices=("scenario", "wall"), default="scenario",
                   help="scenario: time starts at the scenario's start and runs at real speed (old TLEs stay "
                   "valid); wall: real UTC, the contact plan starts now (default scenario)")
    p.add_argument("--horizon", metavar="DURATION", help="contact plan length (default: the scenario's duration)")
    p.add_argument("--agent-listen", metavar="HOST:PORT",
                   help="a second listener for node agents; with --tls-client-ca only it requires client "
                   "certificates, and clients use --listen with server TLS and the token")
    p.set_defaults(func=run_serve)

    p = sub.add_parser("submit", help="submit an inference job", description="Submit a job; prints its id.")
    _client_args(p)
    p.add_argument("--model", required=True, metavar="NAME@VER")
    p.add_argument("--deadline", required=True, help="duration after now (2h, 90m) or an absolute UTC time")
    p.add_argument("--priority", type=int, default=1, help="1..1000 (default 1)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="FILE", help="input data uplinked from the ground (size from the file)")
    src.add_argument("--capture", metavar="LAT,LON", help="input imaged over this target (degrees)")
    src.add_argument("--onboard", metavar="SATELLITE", help="input already on this satellite")
    p.add_argument("--station", help="uplink station for --input (default: any)")
    p.add_argument("--min-elevation-deg", type=float, default=0.0, help="capture elevation mask (default 30)")
    p.add_argument("--tiles", type=int, default=1, help="inferences to run (default 1)")
    p.add_argument("--input-bytes", type=int, help="input size (default: the --input file's size, else 0)")
    p.add_argument("--output-bytes", type=int, default=0)
    p.add_argument("--destination", help="station that must receive the result (default: any)")
    p.add_argument("--request-id", default="", help="idempotency key: a retried submit never makes a second job")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_submit)

    p = sub.add_parser("jobs", help="list or watch jobs", description="List jobs, or follow their state changes.")
    _client_args(p)
    p.add_argument("--state", action="append", default=[], type=str.upper, choices=STATE_NAMES,
                   help="only jobs in this state (repeatable)")
    p.add_argument("--model", default="", metavar="NAME@VER")
    p.add_argument("--limit", type=int, default=0, help="at most this many jobs (default all)")
    p.add_argument("--watch", action="store_true", help="follow state changes (Ctrl-C to stop)")
    p.add_argument("--after", type=int, default=-1, metavar="SEQ",
                   help="with --watch: replay events after this sequence number (default: from now)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_jobs)

    p = sub.add_parser("cancel", help="cancel a job", description="Cancel a job that has not finished.")
    _client_args(p)
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--reason", default="")
    p.set_defaults(func=run_cancel)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("SKYINFER_SERVER", "127.0.0.1:50051"), metavar="ADDR",
                   help="scheduler address HOST:PORT (default $SKYINFER_SERVER or 127.0.0.1:50051)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server certificate (enables TLS)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (servers that require mutual TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="client private key")
    p.add_argument("--token-file", metavar="FILE", help="bearer token file")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-call deadline (default 30 s)")


# ---------------------------------------------------------------------------------------------------------------
# serve


def run_serve(args: argparse.Namespace) -> int:
    from scheduler.auth import TlsConfig, read_token
    from scheduler.loop import LoopConfig
    from scheduler.service import problem_loader
    from scheduler.servicer import ServerConfig, ServerDeps, serve_forever
    from skyinfer.scenario import load_scenario

    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key: give both or neither")
    if args.tls_client_ca and not args.tls_cert:
        raise InputError("--tls-client-ca: needs --tls-cert and --tls-key")
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    token = read_token(args.token_file) if args.token_file else None
    scenario = load_scenario(args.scenario)
    horizon_s = parse_duration_s(args.horizon, where="--horizon") if args.horizon else None
    if args.clock == "scenario":
        if scenario.start_utc is None:
            raise InputError(f"{args.scenario}: start: required with --clock scenario (or use --clock wall)")
        clock = scenario_clock(args.db, scenario.start_utc)
        start = scenario.start_utc
    else:
        clock = WallClock()
        start = clock.now().replace(second=0, microsecond=0)
    loader = problem_loader(scenario, start_utc=start,
                            duration_s=horizon_s or scenario.duration_s or 86400.0)
    config = ServerConfig(
        db_path=args.db, listen=args.listen, agent_listen=args.agent_listen, tls=tls, token=token,
        loop=LoopConfig(policy=args.policy, time_limit_s=args.time_limit_s, workers=args.workers, seed=args.seed,
                        period_s=args.period_s, debounce_s=args.debounce_s,
                        min_interval_s=args.min_replan_interval_s, planner_process=args.planner_process),
        heartbeat_interval_s=args.heartbeat_interval_s, lost_after_s=3.0 * args.heartbeat_interval_s,
        tune_gc=True,
    )
    host = args.listen.rpartition(":")[0]

    def listening(port: int, agent_port: int) -> None:
        print(f"listening on {host}:{port}", flush=True)
        if args.agent_listen:
            print(f"agents: listening on {args.agent_listen.rpartition(':')[0]}:{agent_port}", flush=True)

    asyncio.run(serve_forever(config, ServerDeps(load_problem=loader, clock=clock), on_listening=listening))
    return EXIT_OK


def scenario_clock(db_path: str, start_utc: datetime) -> WallClock:
    """A clock that read ``start_utc`` when this store was first served and runs at real speed since.

    The origin is kept in the store, so a restarted server resumes the scenario's time where it was
    instead of jumping back to its start (job and transition times stay in order).
    """
    from scheduler.store import Store

    with Store(db_path) as store:
        origin_unix_s = float(store.meta_setdefault("scenario_clock_origin_unix_s", repr(time.time())))
    elapsed_s = max(0.0, time.time() - origin_unix_s)
    return WallClock(start_utc=start_utc + timedelta(seconds=elapsed_s))


# ---------------------------------------------------------------------------------------------------------------
# clients


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{option}: {path}: {exc.strerror or exc}") from None


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key: give both or neither")
    if args.tls_cert and not args.tls_ca:
        raise InputError("--tls-cert: needs --tls-ca (the CA of the server certificate)")
    if args.tls_ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(args.tls_ca, "--tls-ca"),
            private_key=_read(args.tls_key, "--tls-key") if args.tls_key else None,
            certificate_chain=_read(args.tls_cert, "--tls-cert") if args.tls_cert else None)
        return grpc.secure_channel(args.server, creds)
    return grpc.insecure_channel(args.server)


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    if not args.token_file:
        return ()
    from scheduler.auth import read_token

    return (("authorization", f"Bearer {read_token(args.token_file)}"),)


def _call(command: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"skyinfer {command}: {code.name}: {details}", file=sys.stderr)
        return EXIT_USAGE if code in _USAGE_CODES else EXIT_FAILURE


def _deadline_field(text: str, spec: pb.JobSpec) -> None:
    try:
        after_s = parse_duration_s(text, where="--deadline")
    except InputError:
        try:
            when = parse_utc(text, where="--deadline")
        except InputError:
            raise InputError(f"--deadline: {text!r} is neither a duration (2h, 90m) nor a UTC time") from None
        spec.deadline.FromDatetime(when)
        return
    spec.deadline_after.CopyFrom(Duration(seconds=int(after_s), nanos=round((after_s % 1) * 1e9)))


def build_job_spec(args: argparse.Namespace) -> pb.JobSpec:
    spec = pb.JobSpec(model_id=args.model, priority=args.priority, tiles=args.tiles, output_bytes=args.output_bytes,
                      destination=args.destination or "")
    _deadline_field(args.deadline, spec)
    input_bytes = 0
    if args.capture:
        try:
            lat_s, lon_s = args.capture.split(",")
            lat, lon = float(lat_s), float(lon_s)
        except ValueError:
            raise InputError(f"--capture: expected LAT,LON in degrees, got {args.capture!r}") from None
        spec.capture.CopyFrom(pb.CaptureInput(latitude_deg=lat, longitude_deg=lon,
                                              min_elevation_deg=args.min_elevation_deg))
    elif args.onboard:
        spec.onboard.CopyFrom(pb.OnboardInput(satellite=args.onboard))
    else:
        if args.input:
            path = Path(args.input)
            if not path.is_file():
                raise InputError(f"--input: {path}: no such file")
            input_bytes = path.stat().st_size
            spec.input_location = str(path.resolve())
        spec.uplink.CopyFrom(pb.UplinkInput(station=args.station or ""))
    spec.input_bytes = args.input_bytes if args.input_bytes is not None else input_bytes
    return spec


def run_submit(args: argparse.Namespace) -> int:
    spec = build_job_spec(args)

    def call() -> int:
        with _channel(args) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            reply = stub.SubmitJob(pb.SubmitJobRequest(job=spec, request_id=args.request_id),
                                   timeout=args.timeout_s, metadata=_metadata(args))
        if args.format == "json":
            print(json.dumps(_job_dict(reply.job) | {"created": reply.created}))
        else:
            print(reply.job.job_id)
            if not reply.created:
                print(f"(request id {args.request_id!r} was submitted before; existing job returned)", file=sys.stderr)
        return EXIT_OK

    return _call("submit", call)


def _ts(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return format_utc(ts.ToDatetime(tzinfo=UTC))


def _state(value: int) -> str:
    return str(pb.JobState.Name(value)).removeprefix("JOB_STATE_")


def _job_dict(job: pb.Job) -> dict[str, Any]:
    d = MessageToDict(job, preserving_proto_field_name=True)
    d["state"] = _state(job.state)
    return d


def _iter_jobs(stub: scheduler_pb2_grpc.SchedulerStub, args: argparse.Namespace) -> Iterator[pb.Job]:
    states = [f"JOB_STATE_{s}" for s in args.state]
    token, seen = "", 0
    while True:
        reply = stub.ListJobs(pb.ListJobsRequest(states=states, model_id=args.model, page_size=500,
                                                 page_token=token), timeout=args.timeout_s, metadata=_metadata(args))
        for job in reply.jobs:
            yield job
            seen += 1
            if args.limit and seen >= args.limit:
                return
        token = reply.next_page_token
        if not token:
            return


def run_jobs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise InputError(f"--limit: must be >= 0, got {args.limit}")

    def call() -> int:
        with _channel(args) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            if args.watch:
                return _watch(stub, args)
            jobs = list(_iter_jobs(stub, args))
        if args.format == "json":
            print(json.dumps([_job_dict(j) for j in jobs], indent=1))
            return EXIT_OK
        rows = [("JOB_ID", "STATE", "MODEL", "PRI", "NODE", "DEADLINE", "REASON")]
        rows += [(j.job_id, _state(j.state), j.spec.model_id, str(j.spec.priority), j.node or "-",
                  _ts(j.spec.deadline), j.reason) for j in jobs]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6])
        return EXIT_OK

    return _call("jobs", call)


def _watch(stub: scheduler_pb2_grpc.SchedulerStub, args: argparse.Namespace) -> int:
    states = [f"JOB_STATE_{s}" for s in args.state]
    request = pb.WatchJobsRequest(after_seq=max(0, args.after), from_now=args.after < 0, states=states)
    # No deadline: a watch runs until interrupted.
    for ev in stub.WatchJobs(request, metadata=_metadata(args)):
        if args.format == "json":
            d = MessageToDict(ev, preserving_proto_field_name=True)
            d["from_state"], d["to_state"] = _state(ev.from_state), _state(ev.to_state)
            print(json.dumps(d), flush=True)
        else:
            src = _state(ev.from_state) if ev.from_state else "-"
            print(f"{ev.seq:>8}  {_ts(ev.time)}  {ev.job_id}  {src} -> {_state(ev.to_state)}  {ev.reason}",
                  flush=True)
    return EXIT_OK


def run_cancel(args: argparse.Namespace) -> int:
    def call() -> int:
        with _channel(args) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            job = stub.CancelJob(pb.CancelJobRequest(job_id=args.job_id, reason=args.reason),
                                 timeout=args.timeout_s, metadata=_metadata(args))
        print(f"{job.job_id} {_state(job.state)}")
        return EXIT_OK

    return _call("cancel", call)
