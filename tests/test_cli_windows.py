"""``skyinfer windows`` end to end: real catalog, real stations, every output format, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skyinfer.cli import main

DATA = Path(__file__).parent / "data"
PLANET = DATA / "planet-2023-04-20.tle"
REPO = Path(__file__).parent.parent


def _small_tle(tmp_path: Path, n: int = 4) -> Path:
    lines = PLANET.read_text().splitlines()[: 3 * n]
    p = tmp_path / "small.tle"
    p.write_text("\r\n".join(lines) + "\r\n")
    return p


def test_json_output_real_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tle = _small_tle(tmp_path)
    out = tmp_path / "plan.json"
    code = main(["windows", "--tle", str(tle), "--station", "Svalbard:78.23:15.41:500:5",
                 "--station", "Wallops:37.94:-75.46", "--start", "2023-04-20T00:00:00Z", "--duration", "6h",
                 "--sunlight", "--format", "json", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["start"] == "2023-04-20T00:00:00.000Z" and data["end"] == "2023-04-20T06:00:00.000Z"
    passes = data["ground_contacts"]
    assert passes, "Svalbard sees polar orbiters every orbit"
    for p in passes:
        assert p["aos"] <= p["tca"] <= p["los"]
        assert p["max_elevation_deg"] >= (5.0 if p["station"] == "Svalbard" else 10.0) - 1e-6
        assert p["aos"].endswith("Z") and len(p["aos"]) == len("2023-04-20T00:00:00.000Z")
    assert {s["state"] for s in data["sunlight"]} <= {"sunlit", "penumbra", "umbra"}
    assert "wrote" in capsys.readouterr().err


def test_table_ion_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tle = _small_tle(tmp_path, 2)
    base = ["windows", "--tle", str(tle), "--station", "Svalbard:78.23:15.41", "--start", "2023-04-20T00:00:00Z",
            "--duration", "3h"]
    assert main([*base]) == 0
    table = capsys.readouterr().out
    assert "Ground contacts:" in table and "Svalbard" in table
    assert main([*base, "--format", "ion"]) == 0
    ion = capsys.readouterr().out
    assert "a contact 2023/04/20-" in ion and "gs:Svalbard" in ion
    assert main([*base, "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("kind,a,b,start,end")


def test_walker_with_grid_isl(tmp_path: Path) -> None:
    out = tmp_path / "isl.json"
    code = main(["windows", "--walker", "53:40/4/1", "--altitude-km", "550", "--isl", "grid",
                 "--start", "2023-04-20T00:00:00Z", "--duration", "1h", "--format", "json", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["isl_contacts"], "a 40-satellite Walker shell has intra-plane links"
    degree: dict[str, int] = {}
    for link in data["isl_contacts"]:
        assert link["min_range_km"] <= link["max_range_km"] <= 5000.0
        for end in (link["a"], link["b"]):
            degree[end] = degree.get(end, 0) + 1
    assert all(name.startswith("P") and "S" in name for name in degree)


def test_bundled_demo_scenario_runs(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    code = main(["windows", "--scenario", str(REPO / "scenarios" / "demo.yaml"), "--duration", "2h",
                 "--format", "json", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["ground_contacts"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--station", "X:95:0"], "latitude_deg"),
        (["--station", "X:abc:0"], "X:abc:0"),
        (["--duration", "soon"], "--duration"),
        (["--start", "yesterday"], "--start"),
        (["--isl", "mesh"], "mesh"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    tle = _small_tle(tmp_path, 1)
    base = {"--station": "Svalbard:78.23:15.41", "--duration": "1h", "--start": "2023-04-20T00:00:00Z"}
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        base[k] = v
    args = ["windows", "--tle", str(tle)]
    for k, v in base.items():
        args += [k, v]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_tle_names_file_and_line_and_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = PLANET.read_text().splitlines()[:6]
    lines[4] = lines[4][:-1] + str((int(lines[4][-1]) + 1) % 10)  # break the second record's checksum
    bad = tmp_path / "bad.tle"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.json"
    args = ["windows", "--tle", str(bad), "--station", "S:78.23:15.41", "--start", "2023-04-20T00:00:00Z",
            "--duration", "1h", "--format", "json", "--out", str(out)]
    assert main(args) == 2
    assert f"{bad}:5:" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--skip-invalid"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert len({p["satellite"] for p in json.loads(out.read_text())["ground_contacts"]}) <= 1


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "skyinfer.cli", "windows", "--tle", str(tmp_path / "nope.tle"),
                           "--station", "S:0:0", "--start", "2023-04-20T00:00:00Z", "--duration", "1h"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope.tle" in proc.stderr and "Traceback" not in proc.stderr
