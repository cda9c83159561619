"""The container's entry command as a plain process: `skyinfer agent`, health over gRPC, `skyinfer infer`,
SIGTERM -> clean exit."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from agent_harness import upload
from onnx_builders import build_cnn

from node_agent.healthcheck import check
from node_agent.healthcheck import main as healthcheck_main
from skyinfer.v1 import node_agent_pb2, node_agent_pb2_grpc

START_TIMEOUT_S = 60.0


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", "FLOCK 4Q-3", "--profile", "jetson-orin",
         "--listen", "127.0.0.1:0", "--models-dir", str(tmp_path / "models"), "--threads", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.removeprefix("listening on ")


def _wait_serving(address: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    status = check(address)
    while status != "SERVING" and time.monotonic() < deadline:
        time.sleep(0.05)
        status = check(address)
    return status


def test_agent_process_serves_infers_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    model = build_cnn()
    (tmp_path / "cnn.onnx").write_bytes(model.data)
    proc, address = _start(tmp_path, "--load", f"cnn@1={tmp_path / 'cnn.onnx'}", "--profile-name", "skysat")
    try:
        assert _wait_serving(address) == "SERVING"
        assert healthcheck_main([address]) == 0
        with grpc.insecure_channel(address) as ch:
            stub = node_agent_pb2_grpc.NodeAgentStub(ch)
            status = stub.GetStatus(node_agent_pb2.GetStatusRequest(), timeout=10)
            assert (list(status.models), status.profile, status.compute_gflops) == (["cnn@1"], "skysat", 2000.0)
            upload(stub, "other@1", build_cnn(channels=(4,)))
        x = model.tile(seed=5)
        np.save(tmp_path / "in.npy", x)
        cli = [sys.executable, "-m", "skyinfer.cli", "infer", "--agent", address]
        done = subprocess.run(
            [*cli, "--model", "cnn@1", "--input", str(tmp_path / "in.npy"), "--out", str(tmp_path / "out.npy")],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "emulated" in done.stdout
        expected = ort.InferenceSession(model.data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)
        # A user mistake: exit 2 and a one-line message naming the problem.
        np.save(tmp_path / "bad.npy", np.zeros((1, 6, 32, 32), np.float32))
        bad = subprocess.run([*cli, "--model", "cnn@1", "--input", str(tmp_path / "bad.npy")],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2
        assert bad.stderr.strip() == (
            "skyinfer infer: error: INVALID_ARGUMENT: inputs[0].shape: 'x' expected [N,3,32,32], got [1,6,32,32]"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)  # also closes the pipes
    assert "Traceback" not in stderr
    assert healthcheck_main([address, "--timeout-s", "0.5"]) == 1  # nothing listens any more


def test_a_bad_model_at_start_up_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    done = subprocess.run(
        [sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", "x", "--profile", "cubesat",
         "--models-dir", str(tmp_path / "m"), "--load", f"junk@1={tmp_path / 'junk.onnx'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout.startswith("listening on ")
    assert done.stderr.strip().startswith("skyinfer agent: error: model: onnxruntime cannot load it: ")


def test_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", "x", "--profile", "raspberry",
         "--models-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "skyinfer agent: error: profile: unknown profile 'raspberry' (known: cubesat, jetson-orin, "
        "three-body-744tops)"
    )


def test_container_commands_parse() -> None:
    """The Dockerfile's default command and every compose agent command are valid `skyinfer` invocations."""
    import json

    import yaml

    from scheduler.types import BUILTIN_PROFILES
    from skyinfer.cli import build_parser

    repo = Path(__file__).resolve().parents[2]
    cmd_line = next(line for line in (repo / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    commands = [json.loads(cmd_line.removeprefix("CMD "))]
    compose = yaml.safe_load((repo / "compose.yaml").read_text())
    agents = {name: svc for name, svc in compose["services"].items() if svc["command"][0] == "agent"}
    assert len(agents) == 3
    commands += [svc["command"] for svc in agents.values()]
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.func.__name__ == "run_agent" and args.profile in BUILTIN_PROFILES
    # The scheduler serves a scenario that exists, with the agents' satellites, under the registered profile.
    sched = parser.parse_args(compose["services"]["scheduler"]["command"])
    scenario = repo / "scenarios" / Path(sched.scenario).name
    text = scenario.read_text()
    for svc in agents.values():
        args = parser.parse_args(svc["command"])
        assert f"{args.profile_name}:" in text and args.node_id.startswith("SKYSAT-") and 'pattern: "SKYSAT-*"' in text
    node_ids = {parser.parse_args(svc["command"]).node_id.lower(): name for name, svc in agents.items()}
    assert all(node_id == name for node_id, name in node_ids.items())  # each agent named after its satellite


def test_a_listen_address_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", "x", "--profile", "cubesat",
             "--models-dir", str(tmp_path), "--listen", f"127.0.0.1:{busy}"], capture_output=True, text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"skyinfer agent: error: --listen: cannot bind 127.0.0.1:{busy}" in done.stderr
