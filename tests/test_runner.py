"""End-to-end runs of checked-in scenarios on the local backend."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

from node.capture import read_pcap
from node.messages import MessageType, ReportCode, decode_message
from smkd.cli import main

from backend_support import require

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
TOPOLOGIES = ROOT / "topologies"


def run(scenario: Path, out: Path, *extra: str) -> int:
    return main(["run", "-q", str(scenario), "--out", str(out), *extra])


def message_types(run_dir: Path) -> list[tuple[float, str, str, MessageType]]:
    """Every captured control message, in time order, across all captures."""
    seen = []
    for path in sorted((run_dir / "captures").glob("*.pcap")):
        for datagram in read_pcap(path):
            message = decode_message(datagram.payload)
            seen.append((datagram.timestamp, datagram.src, datagram.dst,
                         message.header.type))
    return sorted(seen)


@pytest.fixture(scope="module")
def figure1_run(tmp_path_factory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("figure1") / "run"
    return run(SCENARIOS / "figure1.yaml", out), out


def test_figure1_passes(figure1_run):
    code, _ = figure1_run
    assert code == 0


def test_figure1_run_directory_layout(figure1_run):
    _, out = figure1_run
    for name in ("summary.json", "junit.xml", "runner.jsonl", "logs/agents.log"):
        assert (out / name).is_file(), name
    traces = {p.stem for p in (out / "traces").glob("*.jsonl")}
    assert traces == {"h", "h2", "A", "B", "C", "init"}
    captures = {p.stem for p in (out / "captures").glob("*.pcap")}
    assert {"lan-A", "A-B", "B-C", "init-C"} <= captures


def test_figure1_summary_and_junit(figure1_run):
    _, out = figure1_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True
    assert summary["backend"] == "local"
    # the scenario's five, and the tree invariant that every run checks
    assert len(summary["expectations"]) == 6
    assert all(e["passed"] for e in summary["expectations"])
    assert summary["nodes"]["A"]["groups"]["G"]["gkdc"] is True
    suite = ElementTree.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "6"
    assert suite.get("failures") == "0"


# keepalives, routing and membership refreshes run all the time, beside
# the joins under test
BACKGROUND = {MessageType.ECHO_REQUEST, MessageType.ECHO_REPLY, MessageType.HELLO,
              MessageType.LINK_STATE}


def foreground_types(run_dir: Path) -> list[MessageType]:
    """Captured message types in time order, without the background traffic."""
    seen = []
    for path in sorted((run_dir / "captures").glob("*.pcap")):
        for datagram in read_pcap(path):
            header = decode_message(datagram.payload).header
            refresh = header.type is MessageType.MEMBERSHIP_REPORT and (
                header.code == ReportCode.REFRESH)
            if header.type not in BACKGROUND and not refresh:
                seen.append((datagram.timestamp, header.type))
    return [message_type for _, message_type in sorted(seen)]


def test_figure1_captures_in_order(figure1_run):
    _, out = figure1_run
    types = foreground_types(out)
    first_join = types.index(MessageType.MEMBERSHIP_REPORT)
    walk = types[first_join : first_join + 6]
    assert walk == [
        MessageType.MEMBERSHIP_REPORT,
        MessageType.JOIN_REQUEST,
        MessageType.JOIN_REQUEST,
        MessageType.JOIN_ACK,
        MessageType.JOIN_ACK,
        MessageType.KEY_DELIVERY,
    ]
    # h2's later join is served by A alone: a report and a key delivery
    assert types[first_join + 6 :] == [
        MessageType.MEMBERSHIP_REPORT,
        MessageType.KEY_DELIVERY,
    ]


def test_figure1_captures_open_in_tcpdump(figure1_run):
    require(shutil.which("tcpdump") is not None, "tcpdump is not installed")
    _, out = figure1_run
    result = subprocess.run(
        ["tcpdump", "-nn", "-r", str(out / "captures" / "A-B.pcap")],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) >= 2
    assert all(".7777 > " in line and "UDP" in line for line in lines)


def test_denied_host_passes(tmp_path):
    assert run(SCENARIOS / "denied-host.yaml", tmp_path / "run") == 0
    trace = (tmp_path / "run" / "traces" / "A.jsonl").read_text()
    denials = [json.loads(line) for line in trace.splitlines()
               if '"join_denied"' in line]
    # h9 hears nothing back, so it repeats its report and is denied each time
    assert denials
    assert {d["host"] for d in denials} == {"h9"}


def test_abilene_passes(tmp_path):
    assert run(SCENARIOS / "abilene.yaml", tmp_path / "run") == 0


def test_failing_expectation_exits_1_and_names_it(tmp_path, capsys):
    scenario = tmp_path / "fail.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "fail",
        "topology": str(TOPOLOGIES / "denied-host.yaml"),
        "duration": 0.5,
        "timeline": [{"at": 0, "action": "join", "node": "h9", "group": "G"}],
        "expect": [{"type": "holds_key", "node": "h9", "group": "G", "within": 1,
                    "name": "h9 gets in"}],
    }))
    assert run(scenario, tmp_path / "run") == 1
    output = capsys.readouterr().out
    assert "FAIL  h9 gets in" in output
    suite = ElementTree.parse(tmp_path / "run" / "junit.xml").getroot()
    failure = suite.find("testsuite/testcase/failure")
    assert failure is not None
    assert "never installed" in failure.get("message")


def test_typo_exits_2_and_names_line(tmp_path, capsys):
    scenario = tmp_path / "typo.yaml"
    scenario.write_text(
        "name: typo\n"
        f"topology: {TOPOLOGIES / 'figure1.yaml'}\n"
        "timeline:\n"
        "  - {at: 0, action: jion, node: h, group: G}\n"
    )
    assert run(scenario, tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert f"{scenario}:4:" in error
    assert "did you mean 'join'" in error
    assert not (tmp_path / "run").exists()


def test_existing_output_directory_rejected(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run(SCENARIOS / "figure1.yaml", out) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_backend_exits_2(tmp_path, capsys):
    assert run(SCENARIOS / "figure1.yaml", tmp_path / "run", "--backend", "nope") == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


def test_busy_addresses_move_to_free_block(tmp_path):
    import socket

    from smkd.backends.local import LocalBackend
    from smkd.model import load_topology

    topology = load_topology(TOPOLOGIES / "figure1.yaml")
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((topology.nodes["A"].address, 7777))
    try:
        placed = LocalBackend.place(topology)
    finally:
        squatter.close()
    assert placed is not topology
    assert placed.nodes["A"].address != topology.nodes["A"].address
    suffixes = {n: a.address.split(".", 2)[2] for n, a in placed.nodes.items()}
    assert suffixes == {n: a.address.split(".", 2)[2] for n, a in topology.nodes.items()}


@pytest.mark.parametrize("gml", ["Abilene", "Geant2012", "Cogentco"])
def test_imported_zoo_topology_runs_a_join(tmp_path, gml):
    topology = tmp_path / f"{gml}.yaml"
    code = main(["import-zoo", str(TOPOLOGIES / "zoo" / f"{gml}.gml"),
                 "-o", str(topology), "--outside-acl", "1"])
    assert code == 0
    assert main(["validate", str(topology)]) == 0

    document = yaml.safe_load(topology.read_text())
    hosts = sorted(n for n, node in document["nodes"].items() if node["role"] == "host")
    members = document["groups"][0]["acl"]["hosts"]
    joiners = [h for h in hosts if h in members][:3]
    scenario = tmp_path / "join.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": f"{gml.lower()}-join",
        "topology": str(topology),
        "duration": 1,
        "timeline": [{"at": 0.2 * i, "action": "join", "node": h, "group": "G"}
                     for i, h in enumerate(joiners)],
        "expect": [{"type": "all_members_hold_key", "group": "G", "within": 5},
                   {"type": "no_key_in_clear"}],
    }))
    assert run(scenario, tmp_path / "run") == 0
