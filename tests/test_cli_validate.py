"""Tests of ``smkd validate`` (smkd.cli)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smkd import cli

REPO = Path(__file__).resolve().parent.parent
FIGURE1 = REPO / "topologies" / "figure1.yaml"
FIGURE1_SCENARIO = REPO / "scenarios" / "figure1.yaml"

BROKEN = """\
name: broken
nodes:
  h: {role: host}
  A: {role: router}
links:
  - between: [h, Ax]
groups:
  - name: G
    address: 10.1.1.1
"""


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    return path


def test_validate_topology_ok(capsys):
    assert cli.main(["validate", str(FIGURE1)]) == 0

    output = capsys.readouterr()
    assert output.out == f"{FIGURE1}: ok (6 nodes, 3 links, 1 group)\n"
    assert output.err == ""


def test_validate_scenario_ok(capsys):
    assert cli.main(["validate", str(FIGURE1_SCENARIO)]) == 0

    output = capsys.readouterr().out
    assert output.startswith(f"{FIGURE1_SCENARIO}: ok (2 actions, 5 expectations; ")
    assert "topologies/figure1.yaml: 6 nodes, 3 links, 1 group)" in output


def test_validate_invalid_exit_2(broken, capsys):
    assert cli.main(["validate", str(broken)]) == 2

    output = capsys.readouterr()
    lines = output.out.splitlines()
    assert f"{broken}:6: links[0].between[1]: unknown node 'Ax'" in lines[0]
    assert any(line.startswith(f"{broken}:9: groups[0].address: ") for line in lines)
    assert any("missing required key 'cores'" in line for line in lines)
    assert all(line.startswith(f"{broken}:") for line in lines)
    assert output.err == f"{len(lines)} problems in 1 of 1 file\n"


def test_validate_mixed_files(broken, capsys):
    assert cli.main(["validate", str(FIGURE1), str(broken)]) == 2

    output = capsys.readouterr()
    assert output.out.startswith(f"{FIGURE1}: ok (")
    assert f"{broken}:6:" in output.out
    assert "in 1 of 2 files" in output.err


def test_validate_missing_file(tmp_path, capsys):
    missing = tmp_path / "absent.yaml"

    assert cli.main(["validate", str(missing)]) == 2
    output = capsys.readouterr().out
    assert output == f"{missing}: file not found; check the path\n"


def test_validate_needs_a_file(capsys):
    assert cli.main(["validate"]) == 2

    assert "the following arguments are required: FILE" in capsys.readouterr().err


def test_no_subcommand_prints_help(capsys):
    assert cli.main([]) == 2

    assert "validate" in capsys.readouterr().err


def test_help_exit_0(capsys):
    assert cli.main(["--help"]) == 0

    assert "validate" in capsys.readouterr().out


def test_subcommand_table_extensible(capsys, monkeypatch):
    def add_echo_parser(subparsers):
        parser = subparsers.add_parser("echo")
        parser.add_argument("word")
        parser.set_defaults(handler=lambda args: len(args.word))

    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + [add_echo_parser])

    assert cli.main(["echo", "four"]) == 4
    assert cli.main(["validate", str(FIGURE1)]) == 0


def test_console_script_exit_code(broken):
    script = Path(sys.executable).parent / "smkd"
    if not script.exists():
        pytest.skip(f"console script {script} is not installed; run pip install -e .")

    valid = subprocess.run(
        [script, "validate", FIGURE1], capture_output=True, text=True
    )
    invalid = subprocess.run(
        [script, "validate", broken], capture_output=True, text=True
    )

    assert valid.returncode == 0
    assert valid.stdout.endswith("ok (6 nodes, 3 links, 1 group)\n")
    assert invalid.returncode == 2
    assert "unknown node 'Ax'" in invalid.stdout
