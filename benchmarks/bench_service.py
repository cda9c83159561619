"""Scheduler service benchmark: SubmitJob throughput and latency with the durable store, against a bare gRPC
echo server measured in the same run, then 1,000 concurrent WatchJobs streams held while jobs flow.

    .venv/bin/python benchmarks/bench_service.py [--rounds 5] [--requests 4000] [--concurrency 64] [--watchers 1000]

Both servers run in their own subprocess (as in production: the client's Python does not share the
server's GIL); the same asyncio client drives both. The echo server is a bare ``grpc.aio`` server, the
kind the scheduler uses. The scheduler serves tests/service/data/service.yaml with a fresh SQLite store
(WAL, synchronous=FULL: each acknowledged submit is fsynced) and keeps planning as jobs arrive, as it
would in production.

The load of this shared 2-core machine drifts within seconds, so the two servers are measured in
alternating bursts (echo, SubmitJob, echo, ..., echo): each SubmitJob burst is compared with the mean of
the echo bursts just before and after it, and the figure is the median of those ratios. Before each echo
burst the benchmark waits until the scheduler (and its planner worker) is idle again, so that planning
left over from a SubmitJob burst does not slow the echo down.

The target is measured against the raw echo (its handler returns the request bytes unparsed). As a
reference, the same echo server also answers a *typed* echo (the server parses the SubmitJobRequest and
serialises it again, as any protobuf service does), run right after each raw echo burst; SubmitJob's ratio
to it is printed too, labelled as a reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from skyinfer.v1 import scheduler_pb2 as pb  # noqa: E402
from skyinfer.v1 import scheduler_pb2_grpc  # noqa: E402

SCENARIO = REPO / "tests" / "service" / "data" / "service.yaml"
ECHO_METHOD = "/bench.Echo/Echo"
TYPED_ECHO_METHOD = "/bench.Echo/TypedEcho"


# ---------------------------------------------------------------------------------------------------------------
# echo server (subprocess)


async def _serve_echo() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def typed_echo(request: pb.SubmitJobRequest,
                         context: grpc.aio.ServicerContext[pb.SubmitJobRequest, pb.SubmitJobRequest]
                         ) -> pb.SubmitJobRequest:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=None, response_serializer=None),
        # The reference of a typed service: the same message parsed and serialised again by the server.
        "TypedEcho": grpc.unary_unary_rpc_method_handler(typed_echo, pb.SubmitJobRequest.FromString,
                                                         pb.SubmitJobRequest.SerializeToString),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def _spawn(cmd: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on [\d.]+:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process ``pid`` and by its live children (the planner
    worker), from /proc; NaN where there is no /proc."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        used = []
        for p in (pid, *_children(pid)):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            used.append((int(fields[11]) + int(fields[12])) / ticks)
        return used[0], sum(used[1:])
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = task / "children"
        if children.exists():
            out += [int(c) for c in children.read_text().split()]
    return out


def _measured(pid: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run()``'s figures plus the server's CPU microseconds per request: unlike requests per second, that
    barely depends on what else loads the machine, so it tells the cost of a request even on a busy machine."""
    own, children = _cpu_s(pid)
    stats = run()
    own_after, children_after = _cpu_s(pid)
    return stats | {"server_cpu_us": 1e6 * (own_after - own) / stats["n"],
                    "children_cpu_us": 1e6 * (children_after - children) / stats["n"]}


# ---------------------------------------------------------------------------------------------------------------
# load generator


def _request(i: int) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(
        job=pb.JobSpec(model_id="tiny@1", deadline_after=Duration(seconds=7200), input_bytes=10_000,
                       output_bytes=1_000, tiles=4, priority=1 + i % 5),
        request_id=f"bench-{os.getpid()}-{time.monotonic_ns()}-{i}")


async def _drive(call: Callable[[int], Awaitable[object]], requests: int, concurrency: int) -> dict[str, float]:
    """Run ``requests`` calls with ``concurrency`` in flight; return throughput and latency percentiles."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / wall, "p50_ms": 1e3 * statistics.median(latencies),
            "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))], "n": float(len(latencies))}


async def bench_echo(port: int, requests: int, concurrency: int, *, typed: bool = False) -> dict[str, float]:
    # The client does the same protobuf work as for SubmitJob: build and serialize a request, parse the reply.
    # The raw echo returns the bytes it got; the typed one parses them and serialises the message again.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        echo = ch.unary_unary(TYPED_ECHO_METHOD if typed else ECHO_METHOD, pb.SubmitJobRequest.SerializeToString,
                              pb.SubmitJobRequest.FromString)
        await echo(_request(0))  # connect

        async def call(i: int) -> object:
            return await echo(_request(i), timeout=30)

        return await _drive(call, requests, concurrency)


async def bench_submit(port: int, requests: int, concurrency: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)

        async def call(i: int) -> object:
            return await stub.SubmitJob(_request(i), timeout=30)

        return await _drive(call, requests, concurrency)


async def hold_watchers(port: int, watchers: int, after_seq: int, followers: int, cancels: int) -> None:
    """Watcher process: hold ``watchers`` streams; print when every stream has seen each cancellation."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(10)]
    stubs = [scheduler_pb2_grpc.SchedulerStub(ch) for ch in channels]
    seen: dict[str, int] = {}
    follower_seqs: list[list[int]] = [[] for _ in range(followers)]
    done = asyncio.Event()

    async def watch(k: int) -> None:
        states = [] if k < followers else [pb.JOB_STATE_CANCELLED]
        call = stubs[k % len(stubs)].WatchJobs(pb.WatchJobsRequest(after_seq=after_seq, states=states))
        try:
            async for ev in call:
                if k < followers:
                    follower_seqs[k].append(ev.seq)
                if ev.to_state == pb.JOB_STATE_CANCELLED:
                    seen[ev.job_id] = seen.get(ev.job_id, 0) + 1
                    if seen[ev.job_id] == watchers:
                        print(json.dumps({"job_id": ev.job_id, "all_unix_s": time.time()}), flush=True)
                        if sum(1 for n in seen.values() if n == watchers) == cancels:
                            done.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise

    tasks = [asyncio.create_task(watch(k)) for k in range(watchers)]
    await done.wait()
    ordered = all(seqs == sorted(seqs) and len(set(seqs)) == len(seqs) for seqs in follower_seqs)
    print(json.dumps({"follower_events": min(len(x) for x in follower_seqs), "ordered": ordered}), flush=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close(None)


async def bench_watchers(port: int, watchers: int, requests: int, concurrency: int,
                         cancels: int) -> dict[str, float]:
    """Hold ``watchers`` streams in another process (most wait for cancellations, 2 follow everything)
    while jobs flow; cancel jobs now and then and time the fan-out to every stream."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        # Streams start at the first job's arrival, so a stream that attaches late still sees its cancellation.
        first = (await stub.SubmitJob(_request(0), timeout=30)).job.job_id
        cursor = (await stub.GetJob(pb.GetJobRequest(job_id=first), timeout=30)).transitions[0].seq
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--hold-watchers", str(port), "--watchers", str(watchers),
            "--after-seq", str(cursor), "--cancels", str(cancels + 1), stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        out = proc.stdout
        try:
            async def cancel_and_wait(job_id: str) -> float:
                t0 = time.time()
                await stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30)
                line = json.loads(await out.readline())
                assert line["job_id"] == job_id, line
                return float(line["all_unix_s"]) - t0

            # Every stream is up once all of them have seen the first cancellation.
            await asyncio.wait_for(cancel_and_wait(first), 300)
            ids: list[str] = []

            async def call(i: int) -> object:
                reply = await stub.SubmitJob(_request(i), timeout=30)
                ids.append(reply.job.job_id)
                return reply

            fanout_s: list[float] = []

            async def canceller() -> None:
                # Cancel a job of its own every ~50 ms, in the middle of the submit load.
                for i in range(cancels):
                    await asyncio.sleep(0.05)
                    job_id = (await stub.SubmitJob(_request(-1 - i), timeout=30)).job.job_id
                    fanout_s.append(await cancel_and_wait(job_id))

            load = asyncio.create_task(_drive(call, requests, concurrency))
            cancelling = asyncio.create_task(canceller())
            stats = await load
            await cancelling
            summary = json.loads(await out.readline())
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert summary["ordered"], "events out of order or repeated"
    fanout_s.sort()
    return stats | {"fanout_p50_ms": 1e3 * statistics.median(fanout_s), "fanout_max_ms": 1e3 * fanout_s[-1],
                    "events_per_follower": float(summary["follower_events"]), "cancels": float(len(fanout_s))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="SubmitJob bursts, each between two echo bursts")
    parser.add_argument("--requests", type=int, default=4000, help="calls per burst")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `skyinfer serve` (repeatable), e.g. --serve-arg=--policy=cpsat")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold-watchers", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--after-seq", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("rounds", "requests", "concurrency", "watchers", "cancels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.serve_echo:
        asyncio.run(_serve_echo())
        return 0
    if args.hold_watchers:
        asyncio.run(hold_watchers(args.hold_watchers, args.watchers, args.after_seq, 2, args.cancels))
        return 0

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"{args.rounds} rounds of {args.requests} requests, {args.concurrency} in flight")
    echo_proc, echo_port = _spawn([sys.executable, __file__, "--serve-echo"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = _spawn([sys.executable, "-m", "skyinfer.cli", "serve", "--scenario", str(SCENARIO),
                                 "--listen", "127.0.0.1:0", "--db", str(Path(tmp) / "bench.db"), *args.serve_arg])
            try:
                _wait_ready(port)
                rounds = _alternate(args, echo_proc.pid, echo_port, proc.pid, port)
                watch = asyncio.run(bench_watchers(port, args.watchers, args.requests // 2, args.concurrency,
                                                   args.cancels))
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        echo_proc.terminate()
        echo_proc.wait(10)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    med = statistics.median
    ratios = [r["ratio"] for r in rounds]
    submits = [r["submit"] for r in rounds]
    echoes = [e for r in rounds for e in (r["echo_before"], r["echo_after"])]
    print(f"SubmitJob / echo: median {med(ratios):.0%} over {len(ratios)} rounds "
          f"(min {min(ratios):.0%}, max {max(ratios):.0%}); target >= 50%")
    print(f"  SubmitJob (SQLite WAL, FULL sync): median {med(s['rps'] for s in submits):.0f} req/s, "
          f"p50 {med(s['p50_ms'] for s in submits):.2f} ms, p99 {med(s['p99_ms'] for s in submits):.2f} ms, "
          f"server CPU {med(s['server_cpu_us'] for s in submits):.0f} us/req "
          f"(+ planner worker {med(s['children_cpu_us'] for s in submits):.0f})")
    print(f"  echo (bare gRPC aio, same client): median {med(e['rps'] for e in echoes):.0f} req/s, "
          f"p50 {med(e['p50_ms'] for e in echoes):.2f} ms, p99 {med(e['p99_ms'] for e in echoes):.2f} ms, "
          f"server CPU {med(e['server_cpu_us'] for e in echoes):.0f} us/req")
    typed_ratios = [r["typed_ratio"] for r in rounds]
    typed_echoes = [e for r in rounds for e in (r["typed_before"], r["typed_after"])]
    print(f"  reference, not the target: SubmitJob / typed echo (the same message parsed and serialised again by "
          f"the server) median {med(typed_ratios):.0%} (min {min(typed_ratios):.0%}, max {max(typed_ratios):.0%}); "
          f"typed echo median {med(e['rps'] for e in typed_echoes):.0f} req/s, server CPU "
          f"{med(e['server_cpu_us'] for e in typed_echoes):.0f} us/req")
    print(f"SubmitJob with {args.watchers} WatchJobs streams held {watch['rps']:8.0f} req/s   "
          f"p50 {watch['p50_ms']:6.2f} ms   p99 {watch['p99_ms']:6.2f} ms")
    print(f"  cancellation fan-out to all {args.watchers} streams: p50 {watch['fanout_p50_ms']:.1f} ms, "
          f"max {watch['fanout_max_ms']:.1f} ms over {watch['cancels']:.0f} cancellations; "
          f"each of 2 unfiltered followers got {watch['events_per_follower']:.0f} events in order")
    return 0


def _alternate(args: argparse.Namespace, echo_pid: int, echo_port: int, pid: int,
               port: int) -> list[dict[str, Any]]:
    """Echo and SubmitJob bursts in turn; each SubmitJob burst with the echo bursts around it (raw and typed
    echo bursts run back to back in each gap)."""
    n, c = args.requests, args.concurrency
    asyncio.run(bench_echo(echo_port, min(n, 500), c))  # all warmed up alike
    asyncio.run(bench_echo(echo_port, min(n, 500), c, typed=True))
    asyncio.run(bench_submit(port, min(n, 500), c))
    _wait_idle(pid)

    def echoes() -> tuple[dict[str, float], dict[str, float]]:
        return (_measured(echo_pid, lambda: asyncio.run(bench_echo(echo_port, n, c))),
                _measured(echo_pid, lambda: asyncio.run(bench_echo(echo_port, n, c, typed=True))))

    echo, typed = echoes()
    rounds: list[dict[str, Any]] = []
    for k in range(args.rounds):
        submit = _measured(pid, lambda: asyncio.run(bench_submit(port, n, c)))
        _wait_idle(pid)
        after, typed_after = echoes()
        ratio = submit["rps"] / ((echo["rps"] + after["rps"]) / 2.0)
        typed_ratio = submit["rps"] / ((typed["rps"] + typed_after["rps"]) / 2.0)
        rounds.append({"submit": submit, "echo_before": echo, "echo_after": after, "ratio": ratio,
                       "typed_before": typed, "typed_after": typed_after, "typed_ratio": typed_ratio})
        print(f"round {k + 1}: echo {echo['rps']:5.0f} / typed {typed['rps']:5.0f} req/s | SubmitJob "
              f"{submit['rps']:5.0f} req/s (p50 {submit['p50_ms']:5.1f} ms, p99 {submit['p99_ms']:5.1f} ms, server "
              f"CPU {submit['server_cpu_us']:3.0f} us/req + planner worker {submit['children_cpu_us']:3.0f}) | "
              f"echo {after['rps']:5.0f} / typed {typed_after['rps']:5.0f} req/s (server CPU "
              f"{after['server_cpu_us']:3.0f} / {typed_after['server_cpu_us']:3.0f} us/req) "
              f"-> {ratio:.0%} of the echo, {typed_ratio:.0%} of the typed echo", flush=True)
        echo, typed = after, typed_after
    return rounds


def _wait_idle(pid: int, timeout_s: float = 120.0) -> None:
    """Wait until process ``pid`` and its children (the planner worker) use under 5 % of a core over 0.5 s:
    planning triggered by a burst of submits must not run into the next echo burst."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = sum(_cpu_s(pid))
        time.sleep(0.5)
        if not sum(_cpu_s(pid)) - before > 0.025:  # NaN (no /proc) counts as idle
            return
    print(f"warning: the scheduler was still busy after {timeout_s:.0f} s", file=sys.stderr)


def _wait_ready(port: int, timeout_s: float = 120.0) -> None:
    """Wait until the server is SERVING and has finished its first planning round: the planner worker
    process starts (imports, builds its copy of the contact plan) during that round, a one-off start-up
    cost that would otherwise fall into the measured burst."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                health_pb2.HealthCheckResponse.SERVING:
            if time.monotonic() > deadline:
                raise SystemExit("scheduler never became SERVING")
            time.sleep(0.1)
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        while True:
            try:
                stub.GetPlan(pb.GetPlanRequest(), timeout=5)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise SystemExit(f"no first plan: {exc.code()}") from exc
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
