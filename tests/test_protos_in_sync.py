"""The committed gRPC stubs match what protoc generates from proto/skyinfer/v1 today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from skyinfer import protos


def test_generated_stubs_match_protos() -> None:
    problems = protos.drift()
    assert problems == [], f"stubs out of date ({problems}); run `python -m skyinfer.protos`"


def test_drift_detects_an_edited_proto(tmp_path: Path) -> None:
    # A copy of the repo layout with one proto changed must be reported, or the check above proves nothing.
    (tmp_path / "proto").mkdir()
    subprocess.run(["cp", "-r", str(protos.PROTO_ROOT / "skyinfer"), str(tmp_path / "proto")], check=True)
    (tmp_path / "skyinfer").mkdir()
    subprocess.run(["cp", "-r", str(protos.REPO_ROOT / "skyinfer" / "v1"), str(tmp_path / "skyinfer")], check=True)
    assert protos.drift(tmp_path) == []
    tensor = tmp_path / "proto" / "skyinfer" / "v1" / "tensor.proto"
    tensor.write_text(tensor.read_text() + "\nmessage Extra { int32 x = 1; }\n")
    assert protos.drift(tmp_path) == ["differs: tensor_pb2.py", "differs: tensor_pb2.pyi"]


def test_check_command_exit_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "skyinfer.protos", "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
