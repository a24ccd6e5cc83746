"""Tests of ``smkd bench``: the quick study end to end, and its parts.

The quick study runs real agents on loopback in worker processes. Its test
checks the shape of the output and the counts that do not depend on the
machine's speed, never the timings.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import pytest

from smkd.bench import MODES, QUICK_SIZES, Study, parse_study
from smkd.benchagents import (
    CountingDirectory,
    CountingIdentity,
    _join_order,
)
from smkd.benchnet import BenchNetwork, build_network, initiator_config, partition
from smkd.benchreport import CSV_COLUMNS, RunResult
from smkd.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("bench") / "quick"
    code = main(["bench", "--quick", "--quiet", "--out", str(out)])
    return code, out


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as file:
        return list(csv.DictReader(file))


# the quick study


def test_quick_study_exits_zero(quick_study):
    code, _ = quick_study

    assert code == 0


def test_quick_study_csv_columns(quick_study):
    _, out = quick_study

    with open(out / "results.csv", newline="") as file:
        header = next(csv.reader(file))

    assert tuple(header) == CSV_COLUMNS


def test_quick_study_runs_every_mode(quick_study):
    _, out = quick_study

    rows = read_rows(out)

    runs = Counter((row["target_hosts"], row["mode"]) for row in rows)
    expected = {(str(size), mode) for size in QUICK_SIZES for mode in MODES}
    assert set(runs) == expected
    assert all(count == 1 for count in runs.values())
    assert {row["topology"] for row in rows} == {"abilene"}


def test_quick_study_keys_every_host(quick_study):
    _, out = quick_study

    for row in read_rows(out):
        assert int(row["hosts"]) >= int(row["target_hosts"])
        assert row["hosts_keyed"] == row["hosts"], row["mode"]
        assert float(row["join_p50_s"]) <= float(row["join_p99_s"])
        assert float(row["join_p99_s"]) <= float(row["join_max_s"])
        assert float(row["all_keyed_s"]) > 0


def test_quick_study_measures_rekey(quick_study):
    _, out = quick_study

    for row in read_rows(out):
        assert row["rekeyed_hosts"] == row["hosts_keyed"], row["mode"]
        assert float(row["rekey_s"]) > 0


def test_quick_study_measures_data(quick_study):
    _, out = quick_study

    for row in read_rows(out):
        packets = int(row["data_packets"])
        receivers = int(row["hosts_keyed"]) - 1
        assert packets >= 5
        assert int(row["data_deliveries"]) == packets * receivers, row["mode"]
        assert float(row["data_packets_per_s"]) > 0
        assert float(row["data_deliveries_per_s"]) >= float(row["data_packets_per_s"])


def test_quick_study_measures_floor(quick_study):
    _, out = quick_study

    for row in read_rows(out):
        for operation in ("sign", "verify", "seal", "open", "cert_verify"):
            assert float(row[f"{operation}_us"]) > 0
        assert float(row["crypto_floor_ms"]) > 0
        assert float(row["cpu_per_join_ms"]) > 0
        assert float(row["peak_memory_mib"]) > 0
        # every join signs a report and a host token and opens one bundle
        assert float(row["sign_per_join"]) >= 2
        assert float(row["open_per_join"]) >= 1


def test_quick_study_central_loads_core(quick_study):
    _, out = quick_study
    rows = {(row["target_hosts"], row["mode"]): row for row in read_rows(out)}

    small, large = (str(size) for size in QUICK_SIZES)
    distributed = [int(rows[(s, "distributed")]["core_crypto_ops"]) for s in (small, large)]
    central = [int(rows[(s, "central")]["core_crypto_ops"]) for s in (small, large)]

    # the distributed core serves one join per branch, whatever the host count
    assert distributed[0] == distributed[1]
    # the central core authenticates and seals to every host itself
    hosts = [int(rows[(s, "central")]["hosts"]) for s in (small, large)]
    for ops, count in zip(central, hosts, strict=True):
        assert ops >= 2 * count
    assert central[1] > central[0]
    assert central[0] > distributed[0]


def test_quick_study_latencies_per_host(quick_study):
    _, out = quick_study
    keyed = sum(int(row["hosts_keyed"]) for row in read_rows(out))

    with open(out / "latencies.csv", newline="") as file:
        latencies = list(csv.DictReader(file))

    assert len(latencies) == keyed
    assert all(float(row["latency_s"]) > 0 for row in latencies)


def test_quick_study_writes_plots(quick_study):
    _, out = quick_study

    for name in ("core-load.png", "join-latency-cdf.png"):
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name


def test_quick_study_summary_table(quick_study):
    _, out = quick_study

    summary = (out / "summary.md").read_text()

    assert "Command: `smkd bench" in summary
    assert "Machine: " in summary
    table = [line for line in summary.splitlines() if line.startswith("| abilene")]
    assert len(table) == len(QUICK_SIZES) * len(MODES)


def test_quick_study_keeps_traces(quick_study):
    _, out = quick_study

    for row in read_rows(out):
        directory = out / "runs" / f"abilene-{row['target_hosts']}" / row["mode"]
        traces = sorted(path.name for path in (directory / "traces").iterdir())
        workers = int(row["workers"])
        assert traces == [f"worker-{index}.jsonl" for index in range(workers)]


# options


def bench_args(**changes) -> argparse.Namespace:
    values = {
        "quick": False, "topologies": None, "sizes": None, "modes": None,
        "workers": 2, "join_timeout": 120.0, "stall_timeout": 30.0, "seed": 1,
        "out": None, "profile": False, "joins_per_turn": 20,
    }
    values.update(changes)
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    "changes",
    [
        {"topologies": "atlantis"},
        {"modes": "anarchy"},
        {"sizes": "ten"},
        {"sizes": "0"},
        {"workers": 0},
        {"join_timeout": 0.0},
        {"joins_per_turn": 0},
    ],
    ids=["topology", "mode", "size-text", "size-zero", "workers", "timeout",
         "joins-per-turn"],
)
def test_parse_study_rejects_invalid(changes, tmp_path):
    from node.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_study(bench_args(out=str(tmp_path / "out"), **changes))


def test_parse_study_quick_defaults(tmp_path):
    study = parse_study(bench_args(quick=True, out=str(tmp_path / "out")))

    assert study.topologies == ("abilene",)
    assert study.sizes == QUICK_SIZES
    assert study.modes == MODES


def test_bench_invalid_option_exits_two(tmp_path, capsys):
    code = main(["bench", "--modes", "anarchy", "--out", str(tmp_path / "out")])

    assert code == 2
    assert "invalid mode anarchy" in capsys.readouterr().err


def test_bench_rejects_full_out_dir(tmp_path, capsys):
    (tmp_path / "kept.txt").write_text("x")

    code = main(["bench", "--quick", "--out", str(tmp_path)])

    assert code == 2
    assert "not empty" in capsys.readouterr().err


# networks and workers


@pytest.fixture(scope="module")
def abilene(tmp_path_factory: pytest.TempPathFactory) -> BenchNetwork:
    out = tmp_path_factory.mktemp("abilene")
    return build_network("abilene", 20, out, seed=1)


def test_network_has_no_core_hosts(abilene):
    group = next(iter(abilene.topology.groups.values()))

    for lan in abilene.topology.lans:
        assert not set(lan.routers) & set(group.cores)
    assert len(abilene.hosts) >= 20
    assert abilene.primary_core == group.cores[0]


def test_initiator_config_per_mode(abilene):
    import json

    for mode in MODES:
        document = json.loads(initiator_config(abilene, mode).read_text())
        acl = document["groups"][0]["acl"]
        assert acl["hosts"] == ["h-*"]
        assert acl["strict"] is (mode == "strict")
        assert acl["central"] is (mode == "central")


def test_partition_keeps_lans_together(abilene, tmp_path):
    initiator = initiator_config(abilene, "distributed")

    specs = partition(abilene, initiator, 2, tmp_path)

    group = next(iter(abilene.topology.groups.values()))
    first = list(specs[0].configs)
    assert first == [*group.cores, group.initiator]
    assert specs[0].configs[group.initiator] == initiator
    owner = {name: spec.index for spec in specs for name in spec.configs}
    assert set(owner) == set(abilene.topology.nodes)
    for lan in abilene.topology.lans:
        assert len({owner[name] for name in lan.routers + lan.hosts}) == 1
    assert len(specs) == 3


def test_join_order_round_robin():
    hosts = ["h-A-2", "h-B-1", "h-A-1", "h-B-10", "h-B-2"]

    assert sorted(hosts, key=_join_order) == ["h-A-1", "h-B-1", "h-A-2", "h-B-2",
                                              "h-B-10"]


# counting proxies


class FakeIdentity:
    name = "n"

    def sign(self, suite_name, data):
        return b"s" + data

    def open(self, suite_name, sealed, info):
        return sealed[1:]


class FakePeer:
    def __init__(self, name):
        self.name = name
        self.role = "host"
        self.address = "127.1.0.9"

    def verify(self, signature, data):
        return None

    def seal(self, plaintext, info):
        return b"x" + plaintext


class FakeDirectory:
    verifications = 3

    def __init__(self):
        self.peers = {"p": FakePeer("p")}

    def lookup(self, name, suite_name, now, roles):
        return self.peers[name]


def test_counting_identity_counts():
    operations: Counter[str] = Counter()
    identity = CountingIdentity(FakeIdentity(), operations)

    assert identity.sign("default", b"d") == b"sd"
    assert identity.open("default", b"xd", b"") == b"d"
    identity.sign("default", b"e")

    assert operations == {"sign": 2, "open": 1}
    assert identity.name == "n"


def test_counting_directory_counts_peers():
    operations: Counter[str] = Counter()
    inner = FakeDirectory()
    directory = CountingDirectory(inner, operations)

    peer = directory.lookup("p", "default", 0.0, ("host",))
    peer.verify(b"s", b"d")
    peer.verify(b"s", b"d")
    assert peer.seal(b"d", b"") == b"xd"

    assert operations == {"verify": 2, "seal": 1}
    assert directory.lookup("p", "default", 0.0, ("host",)) is peer
    assert directory.verifications == 3
    assert peer.role == "host"


def test_counting_directory_follows_reload():
    operations: Counter[str] = Counter()
    inner = FakeDirectory()
    directory = CountingDirectory(inner, operations)
    first = directory.lookup("p", "default", 0.0, ("host",))

    inner.peers["p"] = FakePeer("p")
    second = directory.lookup("p", "default", 0.0, ("host",))

    assert second is not first
    assert second.peer is inner.peers["p"]


# percentiles


def result_with(latencies: list[float]) -> RunResult:
    return RunResult(
        topology="t", mode="m", target_hosts=1, routers=1, hosts=len(latencies),
        hosts_keyed=len(latencies), workers=1, core={"messages": 0, "crypto_ops": 0},
        busiest_node="n", busiest={"messages": 0, "crypto_ops": 0},
        latencies=sorted(latencies), all_keyed_seconds=None, peak_memory_mib=1.0,
        cpu_per_join=None, crypto_floor=None, operations_per_join={},
        operation_seconds={}, report_retransmissions=0, join_timeouts=0, drops=0,
        socket_drops=0, start_seconds=0.0, join_phase_seconds=0.0,
    )


def test_percentile_nearest_rank():
    result = result_with([float(i) for i in range(1, 101)])

    assert result.percentile(50) == 50.0
    assert result.percentile(99) == 99.0
    assert result.percentile(100) == 100.0


def test_percentile_small_sample():
    result = result_with([0.2, 0.1])

    assert result.percentile(50) == 0.1
    assert result.percentile(99) == 0.2


def test_percentile_without_latencies():
    assert result_with([]).percentile(50) is None


# placement


def test_run_moves_network_when_address_taken(tmp_path):
    import socket

    from smkd.backends.local import PORT
    from smkd.bench import Progress, _run_placed

    study = Study(("abilene",), (9,), ("distributed",), 1, 60.0, 30.0, 1, tmp_path)
    network = build_network("abilene", 9, tmp_path, study.seed)
    core_address = network.topology.nodes[network.primary_core].address
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((core_address, PORT))
    try:
        result, moved = _run_placed(
            network, "distributed", study, Progress(quiet=True), "test"
        )
    finally:
        squatter.close()

    assert moved.topology.nodes[moved.primary_core].address != core_address
    assert result.hosts_keyed == result.hosts
