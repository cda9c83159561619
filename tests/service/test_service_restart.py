"""Durability: SIGKILL the server (a subprocess running `skyinfer serve`) in the middle of a burst of concurrent
submits, restart it on the same store, and find every acknowledged job with every recorded transition."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import SCENARIO, job_spec

from skyinfer.v1 import scheduler_pb2 as pb
from skyinfer.v1 import scheduler_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def _start(db: Path) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "skyinfer.cli", "serve", "--scenario", str(SCENARIO), "--listen", "127.0.0.1:0",
           "--db", str(db), "--period-s", "5", "--no-planner-process"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    assert m, f"unexpected first line {line!r}"
    port = int(m.group(1))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + 60
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "server never became SERVING"
            time.sleep(0.1)
    return proc, port


def test_sigkill_mid_burst_keeps_every_acknowledged_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    proc, port = _start(db)
    acked: dict[str, str] = {}  # request id -> job id, filled only after the server replied
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def client(worker: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            n = 0
            while not stop.is_set():
                rid = f"w{worker}-{n}"
                try:
                    reply = stub.SubmitJob(pb.SubmitJobRequest(job=job_spec(), request_id=rid), timeout=5)
                except grpc.RpcError:
                    return  # the server is gone
                with lock:
                    acked[rid] = reply.job.job_id
                    if len(acked) >= 300:
                        enough.set()
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    assert enough.wait(60), "the burst did not get going"
    os.kill(proc.pid, signal.SIGKILL)  # mid-burst: submits are in flight right now
    proc.wait(10)
    assert proc.stdout is not None
    proc.stdout.close()
    stop.set()
    for t in threads:
        t.join(10)
    assert proc.returncode == -signal.SIGKILL

    proc, port = _start(db)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            stored: dict[str, pb.Job] = {}
            token = ""
            while True:
                page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=10)
                stored.update({j.job_id: j for j in page.jobs})
                token = page.next_page_token
                if not token:
                    break
            missing = [rid for rid, job_id in acked.items() if job_id not in stored]
            assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {missing[:3]}"
            for rid, job_id in list(acked.items())[:50]:
                job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
                assert job.request_id == rid
                assert job.transitions[0].to_state == pb.JOB_STATE_PENDING
                seqs = [t.seq for t in job.transitions]
                assert seqs == sorted(seqs)
            # A retry of an acknowledged request still finds its job after the crash.
            rid, job_id = next(iter(acked.items()))
            again = stub.SubmitJob(pb.SubmitJobRequest(job=job_spec(), request_id=rid), timeout=5)
            assert (again.created, again.job.job_id) == (False, job_id)
            # The restarted server re-plans and goes on: a plan made after the restart covers every
            # acknowledged job (scheduled, or unschedulable with a reason), and new submits are accepted.
            deadline = time.monotonic() + 60
            while True:
                try:
                    plan = stub.GetPlan(pb.GetPlanRequest(), timeout=5)
                    # Planned after the restart: after every job recovered from the store was submitted.
                    last_submit_ns = max(j.submit_time.ToNanoseconds() for j in stored.values())
                    if plan.planned_at.ToNanoseconds() >= last_submit_ns and \
                            {p.job_id for p in plan.jobs} >= set(acked.values()):
                        break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "no plan covering the recovered jobs"
                time.sleep(0.2)
            assert all(p.status == "scheduled" or p.reason for p in plan.jobs)
            assert stub.SubmitJob(pb.SubmitJobRequest(job=job_spec()), timeout=5).created
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stdout is not None
        proc.stdout.close()
