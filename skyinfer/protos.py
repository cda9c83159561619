"""Regenerate the gRPC stubs: ``python -m skyinfer.protos [--check]``.

Every ``proto/skyinfer/v1/*.proto`` is compiled into ``skyinfer/v1/`` (``_pb2.py``, ``_pb2_grpc.py``,
``_pb2.pyi``). The proto paths mirror the Python package, so the generated modules import each other as
``skyinfer.v1.x_pb2``. ``--check`` regenerates into a temporary directory and exits 1 when the committed
stubs differ (CI runs it through ``tests/test_protos_in_sync.py``).

``grpc_tools.protoc`` runs as a subprocess: importing it into a process that also loaded ortools aborts Python.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PACKAGE_DIR = Path("skyinfer") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
INIT_TEXT = '"""Generated gRPC stubs for skyinfer.v1 (do not edit; run `python -m skyinfer.protos`)."""\n'


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The ``.proto`` sources, sorted, relative to ``proto_root``."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE_DIR).glob("*.proto"))


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every proto into ``out_root/skyinfer/v1``; return the generated files relative to ``out_root``.

    Raises
    ------
    RuntimeError
        When protoc fails (its stderr is in the message).
    """
    sources = proto_files(proto_root)
    if not sources:
        raise RuntimeError(f"no .proto files under {proto_root / PACKAGE_DIR}")
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}",
        f"--python_out={out_root}", f"--grpc_python_out={out_root}", f"--pyi_out={out_root}",
        *(str(s) for s in sources),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed ({proc.returncode}): {proc.stderr.strip()}")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    return sorted(
        p.relative_to(out_root) for p in (out_root / PACKAGE_DIR).iterdir()
        if p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES)
    )


def drift(repo_root: Path = REPO_ROOT) -> list[str]:
    """Names of generated files that are missing, extra or different in ``repo_root/skyinfer/v1``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name for p in generate(Path(tmp), repo_root / "proto")}
        committed_dir = repo_root / PACKAGE_DIR
        committed = {
            p.name for p in committed_dir.iterdir()
            if p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES)
        } if committed_dir.is_dir() else set()
        problems = [f"missing: {n}" for n in sorted(fresh - committed)]
        problems += [f"stale (no .proto): {n}" for n in sorted(committed - fresh)]
        for name in sorted(fresh & committed):
            if not filecmp.cmp(Path(tmp) / PACKAGE_DIR / name, committed_dir / name, shallow=False):
                problems.append(f"differs: {name}")
        return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyinfer.protos", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are out of date")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for line in problems:
            print(f"skyinfer/v1: {line}", file=sys.stderr)
        if problems:
            print("run `python -m skyinfer.protos` to regenerate", file=sys.stderr)
            return 1
        print("protos in sync")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        target = REPO_ROOT / PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        fresh = {p.name for p in files}
        for old in target.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES) and old.name not in fresh:
                old.unlink()
        for rel in files:
            shutil.copyfile(Path(tmp) / rel, REPO_ROOT / rel)
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
