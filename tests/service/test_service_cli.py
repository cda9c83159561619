"""`skyinfer submit | jobs | cancel` against a real server: output, and gRPC errors as exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from scheduler.servicer import BackgroundServer
from skyinfer.cli import main


def _addr(server: BackgroundServer) -> str:
    return f"127.0.0.1:{server.port}"


def test_submit_list_cancel(server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "scene.bin"
    data.write_bytes(b"\0" * 12_345)
    argv = ["submit", "--server", _addr(server), "--model", "tiny@1", "--deadline", "2h", "--priority", "3",
            "--input", str(data), "--tiles", "8", "--output-bytes", "100", "--request-id", "cli-1"]
    assert main(argv) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("job-")
    assert main(argv) == 0  # retried: same job
    out = capsys.readouterr()
    assert out.out.strip() == job_id and "submitted before" in out.err
    assert main(["submit", "--server", _addr(server), "--model", "tiny@1", "--deadline", "90m",
                 "--capture", "78.2,15.4", "--format", "json"]) == 0
    captured = json.loads(capsys.readouterr().out)
    assert captured["created"] is True and captured["spec"]["capture"]["latitude_deg"] == pytest.approx(78.2)

    assert main(["jobs", "--server", _addr(server), "--format", "json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    first = next(j for j in jobs if j["job_id"] == job_id)
    assert first["spec"]["input_bytes"] == "12345" and first["spec"]["priority"] == 3
    assert first["spec"]["input_location"] == str(data.resolve())
    assert main(["jobs", "--server", _addr(server)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["JOB_ID", "STATE", "MODEL"] and len(table) == 3

    assert main(["cancel", "--server", _addr(server), job_id, "--reason", "test"]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id} CANCELLED"
    assert main(["jobs", "--server", _addr(server), "--state", "cancelled"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [job_id]


def test_errors_become_one_line_and_exit_codes(server: BackgroundServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--server", _addr(server), "--model", "nope@1", "--deadline", "2h"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyinfer submit: INVALID_ARGUMENT: model_id: unknown model 'nope@1'")
    assert err.count("\n") == 1
    assert main(["cancel", "--server", _addr(server), "job-missing"]) == 2
    assert capsys.readouterr().err.startswith("skyinfer cancel: NOT_FOUND: job_id: no job")
    assert main(["submit", "--server", _addr(server), "--model", "tiny@1", "--deadline", "soon"]) == 2
    assert "--deadline" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert main(["jobs", "--server", f"127.0.0.1:{free}", "--timeout-s", "2"]) == 1
    assert capsys.readouterr().err.startswith("skyinfer jobs: UNAVAILABLE")


def test_serve_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = Path(__file__).parent / "data" / "service.yaml"
    assert main(["serve", "--scenario", str(scenario), "--tls-cert", "x.pem", "--db", str(tmp_path / "d")]) == 2
    assert "--tls-key" in capsys.readouterr().err
    assert main(["serve", "--scenario", str(scenario), "--token-file", str(tmp_path / "missing"),
                 "--db", str(tmp_path / "d")]) == 2
    assert "--token-file" in capsys.readouterr().err
    assert main(["serve", "--scenario", str(scenario), "--agent-listen", "nowhere", "--db", str(tmp_path / "d")]) == 2
    assert "--agent-listen: expected HOST:PORT" in capsys.readouterr().err
    with socket.socket() as taken:  # a port somebody else holds: a user mistake, not a traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for option in ("--listen", "--agent-listen"):
            assert main(["serve", "--scenario", str(scenario), option, f"127.0.0.1:{busy}",
                         "--db", str(tmp_path / "d")]) == 2
            assert f"{option}: cannot bind 127.0.0.1:{busy}" in capsys.readouterr().err
    assert main(["serve", "--scenario", str(scenario), "--db", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
