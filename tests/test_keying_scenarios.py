"""The re-keying, sender-key and eviction scenarios, end to end on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from backend_support import require

from node.capture import read_pcap
from node.datapacket import DataKind, DataPacket, is_data_packet
from smkd.cli import main
from smkd.decode import dissector_path, read_captures, transcript

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"


def run(name: str, out: Path) -> tuple[int, Path]:
    run_dir = out / name
    code = main(["run", "-q", str(SCENARIOS / f"{name}.yaml"), "--out", str(run_dir)])
    return code, run_dir


def captured_data_of(pcap: Path) -> list[DataPacket]:
    return [
        DataPacket.decode(datagram.payload)
        for datagram in read_pcap(pcap)
        if is_data_packet(datagram.payload)
    ]


def captured_data(run_dir: Path) -> list[DataPacket]:
    packets = []
    for path in sorted((run_dir / "captures").glob("*.pcap")):
        packets += captured_data_of(path)
    return packets


def events(run_dir: Path, node: str, name: str) -> list[dict]:
    path = run_dir / "traces" / f"{node}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if r["event"] == name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, Path]]:
    out = tmp_path_factory.mktemp("keying")
    return {name: run(name, out) for name in ("rekey", "sender-keys", "evict")}


@pytest.mark.parametrize("name", ["rekey", "sender-keys", "evict"])
def test_scenario_passes(runs, name):
    code, run_dir = runs[name]
    summary = json.loads((run_dir / "summary.json").read_text())

    assert code == 0, [o for o in summary.get("expectations", []) if not o.get("passed")]
    assert summary["passed"]


@pytest.mark.parametrize("name", ["rekey", "sender-keys", "evict"])
def test_captures_hold_only_ciphertext(runs, name):
    _, run_dir = runs[name]

    packets = captured_data(run_dir)
    payloads = [p.ciphertext for p in packets if p.kind is DataKind.DATA]
    assert payloads
    assert all(b"smkd data from" not in payload for payload in payloads)


def test_rekey_data_crosses_epochs(runs):
    _, run_dir = runs["rekey"]

    epochs = {e["epoch"] for e in events(run_dir, "h2", "data_received")}
    assert len(epochs) >= 3


def test_evicted_host_reads_nothing_after_eviction(runs):
    _, run_dir = runs["evict"]
    evicted_at = events(run_dir, "h2", "evicted")[0]["t"]

    later = [e for e in events(run_dir, "h2", "data_received") if e["t"] > evicted_at]
    assert later == []


def test_decode_names_every_data_packet(runs):
    _, run_dir = runs["sender-keys"]

    lines = transcript(read_captures([run_dir]))

    assert not [line for line in lines if "malformed" in line]
    assert any("^SK_sender_h" in line for line in lines)
    assert any("SENDER-KEY-GRANT" in line for line in lines)


def test_dissector_reads_data_packets(runs):
    require(shutil.which("tshark") is not None, "tshark is not installed")
    _, run_dir = runs["sender-keys"]
    pcap = run_dir / "captures" / "lan-A.pcap"
    expected = captured_data_of(pcap)

    result = subprocess.run(
        ["tshark", "-X", f"lua_script:{dissector_path()}", "-r", str(pcap),
         "-Y", "smkd.data.sender", "-T", "fields", "-e", "smkd.data.sender",
         "-e", "smkd.data.seq", "-e", "_ws.expert.group"],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(row[0], int(row[1])) for row in rows] == [
        (p.sender, p.seq) for p in expected
    ]
    assert all(row[2] == "" for row in rows)
