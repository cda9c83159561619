"""Multi-host: agents in their own network namespaces (veth pairs) talk to the scheduler across them;
cutting one agent's link shows up as a lost node. Needs root and `ip netns`; skipped (reason printed) otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from node_agent.healthcheck import check

SCENARIO = Path(__file__).parent / "data" / "fleet.yaml"
NODES = ("SKYSAT-C1", "SKYSAT-C2")
CLOCK_START = datetime(2023, 4, 20, 0, 1, tzinfo=UTC)
WAIT_S = 60.0
RECONNECT_WAIT_S = 20.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"skyi-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` is not allowed here: {exc.stderr.strip()}"
    return None


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str, str, str]]]:
    """Per agent: (netns name, host-side veth, host address, agent address), torn down afterwards."""
    reason = _namespaces_unavailable()
    if reason is not None:
        print(f"SKIPPED netns test: {reason}")
        pytest.skip(reason)
    tag = os.getpid() % 100_000
    made: list[tuple[str, str, str, str]] = []
    try:
        for i in range(len(NODES)):
            ns, host_if, ns_if = f"skyi{tag}-{i}", f"sk{tag}h{i}", f"sk{tag}n{i}"
            host_ip, agent_ip = f"10.213.{i}.1", f"10.213.{i}.2"
            _ip("netns", "add", ns)
            made.append((ns, host_if, host_ip, agent_ip))
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _ip("link", "set", ns_if, "netns", ns)
            _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", ns, "addr", "add", f"{agent_ip}/30", "dev", ns_if)
            _ip("-n", ns, "link", "set", ns_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield made
    finally:
        for ns, host_if, _, _ in made:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.root
@pytest.mark.slow
def test_agents_across_namespaces_and_a_cut_link_is_a_lost_node(namespaces, tmp_path: Path) -> None:
    from scheduler.clock import SimClock
    from scheduler.loop import LoopConfig
    from scheduler.service import problem_loader
    from scheduler.servicer import BackgroundServer, ServerConfig, ServerDeps
    from skyinfer.scenario import load_scenario

    problem = problem_loader(load_scenario(SCENARIO))()
    clock = SimClock(CLOCK_START)
    config = ServerConfig(db_path=str(tmp_path / "jobs.db"), listen="0.0.0.0:0",
                          loop=LoopConfig(debounce_s=0.05, time_limit_s=2.0),
                          heartbeat_interval_s=0.2, lost_after_s=1.0)
    server = BackgroundServer(config, ServerDeps(load_problem=lambda: problem, clock=clock))
    server.start(wait_ready_s=60.0)
    procs: list[subprocess.Popen[str]] = []
    try:
        addresses = []
        for node, (ns, _, host_ip, agent_ip) in zip(NODES, namespaces, strict=True):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "skyinfer.cli", "agent", "--node-id", node,
                 "--profile", "jetson-orin", "--listen", f"{agent_ip}:0", "--threads", "1",
                 "--scheduler", f"{host_ip}:{server.port}", "--models-dir", str(tmp_path / node)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            addresses.append(proc.stdout.readline().strip().removeprefix("listening on "))
        fleet = server.app.fleet
        _wait(lambda: fleet.connected() == set(NODES))
        assert fleet.connected() == set(NODES)
        for address in addresses:  # the agents' own servers are reachable across the veths too
            assert check(address, timeout_s=10) == "SERVING"

        _ip("link", "set", namespaces[0][1], "down")  # cut SKYSAT-C1's link
        _wait(lambda: NODES[0] in fleet.lost(), tick=lambda: clock.advance_by(1.0))
        assert NODES[0] in fleet.lost()
        assert fleet.connected() == {NODES[1]}
        assert check(addresses[0], timeout_s=1) != "SERVING"

        _ip("link", "set", namespaces[0][1], "up")  # the link comes back: the agent registers again
        _wait(lambda: NODES[0] in fleet.connected(), timeout_s=RECONNECT_WAIT_S)
        assert fleet.connected() == set(NODES)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        server.stop()


def _wait(pred, timeout_s: float = WAIT_S, tick=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        if tick is not None:
            tick()
        time.sleep(0.1)
