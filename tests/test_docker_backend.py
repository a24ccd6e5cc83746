"""Tests for the Docker backend, its capture merging and the image's entrypoint.

Tests that need a Docker engine and the smkd-node image skip without them,
except in CI, where backend_support.require makes them fail. Build the image
with docker/build, or with docker/build --offline where no registry is
reachable.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from backend_support import require

from node.capture import PcapWriter, read_pcap
from node.errors import ConfigError
from smkd.backends import docker as docker_backend
from smkd.backends.docker import captures, resources
from smkd.backends import get_backend
from smkd.cli import main
from smkd.configs import LinkAddressing, prepare_pki
from smkd.model import load_scenario, load_topology
from smkd.runner import run_scenario

REPO = Path(__file__).resolve().parent.parent
# sender-keys sends end-to-end messages between nodes without a shared link
SCENARIOS = ["figure1", "denied-host", "sender-keys", "link-failure"]

# the test runs this scenario while scenarios/link-failure.yaml does not
# exist: Chicago's tree link to the core Indianapolis fails, and Chicago
# re-joins the tree through New York
ABILENE_LINK_FAILURE = """\
name: abilene-link-failure
description: a tree link on Abilene fails after the joins
topology: {topology}
seed: 1
duration: 8
timeline:
  - {{at: 0.0, action: join, node: h-New-York-1, group: G}}
  - {{at: 0.2, action: join, node: h-Chicago-1, group: G}}
  - {{at: 0.4, action: join, node: h-Seattle-1, group: G}}
  - {{at: 0.6, action: join, node: h-Denver-1, group: G}}
  - {{at: 3.0, action: link_down, link: Chicago-Indianapolis}}
expect:
  - {{type: event, event: rejoined, node: Chicago, min: 1}}
  - {{type: all_members_hold_key, group: G, within: 5}}
  - {{type: no_key_in_clear}}
"""


def load_entrypoint() -> ModuleType:
    path = REPO / "docker" / "entrypoint.py"
    loader = importlib.machinery.SourceFileLoader("smkd_entrypoint", str(path))
    spec = importlib.util.spec_from_loader("smkd_entrypoint", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


entrypoint = load_entrypoint()


def require_engine() -> object:
    """Return a Docker SDK client, or skip (fail in CI) without engine or image."""
    try:
        docker_backend.DockerBackend.check_available()
    except ConfigError as error:
        require(False, str(error))
    return docker_backend.connect_engine()


def own_resources(client: object) -> list:
    label = f"{resources.OWNER_LABEL}={resources.owner_label()}"
    return [
        *client.containers.list(all=True, filters={"label": label}),
        *client.networks.list(filters={"label": label}),
    ]


def write_part(path: Path, datagrams: list[tuple[float, str, str, bytes]]) -> None:
    with PcapWriter(path) as writer:
        for timestamp, source, destination, payload in datagrams:
            writer.write_udp(timestamp, source, destination, payload)


# merging captures


def test_merge_orders_by_time(tmp_path):
    write_part(
        tmp_path / "A-1.pcap",
        [(10.0, "10.0.0.2", "10.0.0.3", b"a1"), (12.0, "10.0.0.2", "10.0.0.3", b"a2")],
    )
    write_part(tmp_path / "B-1.pcap", [(11.0, "10.0.0.3", "10.0.0.2", b"b1")])
    output = tmp_path / "A-B.pcap"
    count = captures.merge_pcaps(sorted(tmp_path.glob("*-1.pcap")), output)
    assert count == 3
    assert [d.payload for d in read_pcap(output)] == [b"a1", b"b1", b"a2"]
    assert [d.timestamp for d in read_pcap(output)] == [10.0, 11.0, 12.0]


def test_merge_drops_cut_record(tmp_path):
    part = tmp_path / "A-1.pcap"
    write_part(
        part,
        [
            (1.0, "10.0.0.2", "10.0.0.3", b"whole"),
            (2.0, "10.0.0.2", "10.0.0.3", b"cut short"),
        ],
    )
    part.write_bytes(part.read_bytes()[:-4])
    records = captures.read_pcap_records(part)
    assert len(records) == 1


def test_merge_skips_empty_part(tmp_path):
    (tmp_path / "A-1.pcap").write_bytes(b"")
    write_part(tmp_path / "B-1.pcap", [(1.0, "10.0.0.3", "10.0.0.2", b"x")])
    output = tmp_path / "out.pcap"
    assert captures.merge_pcaps(sorted(tmp_path.glob("*-1.pcap")), output) == 1


def test_merge_reads_nanosecond_big_endian(tmp_path):
    frame = b"\x00" * 20
    header = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(">IIII", 5, 250_000_000, len(frame), len(frame))
    part = tmp_path / "x.pcap"
    part.write_bytes(header + record + frame)
    assert captures.read_pcap_records(part) == [(5_250_000, 20, frame)]


def test_merge_rejects_other_link_type(tmp_path):
    part = tmp_path / "x.pcap"
    part.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    with pytest.raises(ValueError, match="link type 101"):
        captures.read_pcap_records(part)


def test_merge_rejects_pcapng(tmp_path):
    part = tmp_path / "x.pcap"
    part.write_bytes(bytes.fromhex("0a0d0d0a") + b"\x00" * 24)
    with pytest.raises(ValueError, match="not a classic pcap"):
        captures.read_pcap_records(part)


def test_merge_parts_per_segment(tmp_path):
    parts = tmp_path / "parts"
    (parts / "A-B").mkdir(parents=True)
    (parts / "lan-A").mkdir()
    write_part(parts / "A-B" / "A-1.pcap", [(1.0, "10.0.0.2", "10.0.0.3", b"x")])
    write_part(parts / "A-B" / "A-2.pcap", [(3.0, "10.0.0.2", "10.0.0.3", b"z")])
    write_part(parts / "lan-A" / "h-1.pcap", [(2.0, "10.0.3.3", "10.0.3.2", b"y")])
    merged = captures.merge_capture_parts(tmp_path)
    assert merged == [tmp_path / "A-B.pcap", tmp_path / "lan-A.pcap"]
    assert [d.payload for d in read_pcap(tmp_path / "A-B.pcap")] == [b"x", b"z"]
    assert not parts.exists()


def test_merge_keeps_unreadable_parts(tmp_path):
    parts = tmp_path / "parts" / "A-B"
    parts.mkdir(parents=True)
    (parts / "A-1.pcap").write_bytes(b"\x00" * 40)
    assert captures.merge_capture_parts(tmp_path) == []
    assert (parts / "A-1.pcap").exists()


# the entrypoint


def test_netem_arguments_units():
    impairment = {
        "delay": 0.005,
        "jitter": 0.001,
        "loss": 0.02,
        "bandwidth": 10_000_000,
    }
    assert entrypoint.netem_arguments(impairment) == [
        "netem",
        "delay",
        "5000us",
        "1000us",
        "loss",
        "2%",
        "rate",
        "10000000bit",
    ]


def test_netem_arguments_unimpaired():
    impairment = {"delay": 0.0, "jitter": 0.0, "loss": 0.0, "bandwidth": None}
    assert entrypoint.netem_arguments(impairment) == ["netem", "delay", "0us"]


def test_netem_state_overrides_config(tmp_path):
    configured = {"delay": 0.001}
    assert entrypoint.segment_impairment(tmp_path, "A", "A-B", configured) == configured
    (tmp_path / "netem" / "A").mkdir(parents=True)
    (tmp_path / "netem" / "A" / "A-B.json").write_text(json.dumps({"delay": 0.02}))
    changed = entrypoint.segment_impairment(tmp_path, "A", "A-B", configured)
    assert changed == {"delay": 0.02}
    assert entrypoint.segment_impairment(tmp_path, "B", "A-B", configured) == configured


def test_netem_direction_down_drops_all():
    arguments = entrypoint.netem_arguments({"delay": 0.001, "up": False})
    assert arguments == ["netem", "delay", "1000us", "loss", "100%"]


def test_owner_parsing():
    assert entrypoint.parse_owner("") is None
    assert entrypoint.parse_owner("1000:100") == (1000, 100)
    assert entrypoint.parse_owner("1000") == (1000, 1000)


def test_next_part_keeps_old_parts(tmp_path):
    assert entrypoint.next_part(tmp_path, "A").name == "A-1.pcap"
    (tmp_path / "A-1.pcap").touch()
    (tmp_path / "A-2.pcap").touch()
    assert entrypoint.next_part(tmp_path, "A").name == "A-3.pcap"


def test_setup_done_needs_own_marker(tmp_path):
    assert entrypoint.check_setup_done(tmp_path) == 1
    (tmp_path / ".setup-done").write_text("another-container\n")
    assert entrypoint.check_setup_done(tmp_path) == 1
    (tmp_path / ".setup-done").write_text(entrypoint.socket.gethostname() + "\n")
    assert entrypoint.check_setup_done(tmp_path) == 0


def test_health_fails_without_agent(tmp_path):
    config = tmp_path / "A.json"
    config.write_text(json.dumps({"control": str(tmp_path / "A.sock")}))
    assert entrypoint.check_health(config) == 1


def test_usage_error_exits_2():
    assert entrypoint.main([]) == 2
    assert entrypoint.main(["health"]) == 2


# availability


def test_registered_as_docker():
    assert get_backend("docker") is docker_backend.DockerBackend


def require_sdk() -> None:
    installed = importlib.util.find_spec("docker") is not None
    require(
        installed, "the Docker SDK for Python is not installed (pip install docker)"
    )


def test_missing_sdk_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(ConfigError, match=r"pip install 'smkd\[docker\]'"):
        docker_backend.DockerBackend.check_available()


def test_unreachable_engine_explained(monkeypatch):
    require_sdk()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ConfigError, match="cannot reach the Docker engine"):
        docker_backend.DockerBackend.check_available()


def test_run_exits_2_without_engine(tmp_path, monkeypatch, capsys):
    require_sdk()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    scenario = str(REPO / "scenarios" / "figure1.yaml")
    code = main(["run", scenario, "--backend", "docker", "--out", str(tmp_path / "r")])
    assert code == 2
    error = capsys.readouterr().err
    assert "cannot reach the Docker engine" in error
    assert "DOCKER_HOST" in error


def test_missing_image_explained(monkeypatch):
    require_engine()
    monkeypatch.setenv("SMKD_IMAGE", "smkd-node:no-such-tag")
    with pytest.raises(ConfigError, match="docker/build"):
        docker_backend.DockerBackend.check_available()


# on a Docker engine


def test_netem_probe_matches_kernel():
    client = require_engine()
    # netem is built in or loaded, or a module the kernel can load on demand
    modules = Path("/lib/modules") / os.uname().release
    has_netem = Path("/sys/module/sch_netem").exists() or any(
        modules.glob("kernel/net/sched/sch_netem.ko*")
    )
    docker_backend.DockerBackend._netem.clear()
    assert docker_backend.DockerBackend.netem_available(client) == has_netem


def test_netem_configs_leave_links_to_kernel(tmp_path, monkeypatch):
    require_engine()
    backend_class = docker_backend.DockerBackend
    monkeypatch.setattr(
        backend_class, "netem_available", classmethod(lambda c, _: True)
    )
    topology = load_scenario(REPO / "scenarios" / "figure1.yaml").topology
    configs = backend_class.write_configs(topology, tmp_path, 1, tmp_path / "ctl")
    document = json.loads(configs["A"].read_text())
    assert document["emulate_links"] is False


def test_unicast_reaches_peers_without_link(tmp_path, monkeypatch):
    require_engine()
    topology = load_scenario(REPO / "scenarios" / "figure1.yaml").topology
    configs = docker_backend.DockerBackend.write_configs(
        topology, tmp_path, 1, tmp_path / "ctl"
    )
    addressing = LinkAddressing.assign(topology)
    unicast = docker_backend.unicast_addresses(topology)
    document = json.loads(configs["h"].read_text())
    assert document["interfaces"] == {
        **addressing.interfaces("h"),
        "unicast": unicast["h"],
    }
    assert document["peer_addresses"]["C"] == unicast["C"]
    assert document["peer_addresses"]["init"] == unicast["init"]
    assert document["peer_addresses"]["A"] == addressing.addresses[("A", "lan-A")]


def test_unicast_addresses_distinct():
    topology = load_scenario(REPO / "scenarios" / "figure1.yaml").topology
    addresses = docker_backend.unicast_addresses(topology)
    assert sorted(addresses) == sorted(topology.nodes)
    assert len(set(addresses.values())) == len(addresses)
    assert all(
        ipaddress.ip_address(a) in docker_backend.UNICAST_SUBNET
        for a in addresses.values()
    )


def test_unicast_name_reserved(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        (REPO / "topologies" / "figure1.yaml")
        .read_text()
        .replace("name: lan-A", "name: unicast")
    )
    topology = load_topology(path)
    with pytest.raises(ConfigError, match="rename it"):
        docker_backend.unicast_addresses(topology)


def test_agent_emulation_forced(monkeypatch):
    monkeypatch.setenv("SMKD_LINK_EMULATION", "agent")
    assert docker_backend.DockerBackend.netem_available(None) is False


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_passes_on_docker(name, tmp_path):
    path = REPO / "scenarios" / f"{name}.yaml"
    if name == "link-failure" and not path.exists():
        path = tmp_path / "link-failure.yaml"
        topology = REPO / "topologies" / "abilene.yaml"
        path.write_text(ABILENE_LINK_FAILURE.format(topology=topology))
    client = require_engine()
    result = run_scenario(path, backend="docker", out=str(tmp_path / name), quiet=True)
    failed = [
        f"{o.expectation.name}: {o.detail}" for o in result.outcomes if not o.passed
    ]
    assert result.ready_error is None
    assert result.action_errors == []
    assert failed == []
    assert result.passed
    assert sorted(p.name for p in (tmp_path / name / "captures").glob("*.pcap"))
    assert own_resources(client) == []


def test_faults_reach_containers(tmp_path):
    client = require_engine()
    scenario = load_scenario(REPO / "scenarios" / "figure1.yaml")
    topology = scenario.topology
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    prepare_pki(topology, run_dir)
    control_dir = run_dir / "ctl"
    configs = docker_backend.DockerBackend.write_configs(
        topology, run_dir, 1, control_dir
    )
    backend = docker_backend.DockerBackend(topology, run_dir, configs, control_dir)
    addressing = LinkAddressing.assign(topology)

    async def exercise() -> None:
        await backend.start()
        try:
            await check_link_down_and_up(backend, addressing)
            await check_one_direction(backend)
            await check_node_stop_and_start(backend)
        finally:
            await backend.stop()

    asyncio.run(exercise())
    assert own_resources(client) == []
    assert (run_dir / "captures" / "A-B.pcap").exists()
    assert not (run_dir / "captures" / "parts").exists()
    assert "[B] " in (run_dir / "logs" / "agents.log").read_text()


def attached_networks(backend: object, node: str) -> set[str]:
    container = backend.containers[node]
    container.reload()
    return set(container.attrs["NetworkSettings"]["Networks"])


async def check_link_down_and_up(backend: object, addressing: LinkAddressing) -> None:
    network = backend.networks["A-B"].name
    parts = backend.run_dir / "captures" / "parts" / "A-B"
    assert network in attached_networks(backend, "A")

    await backend.set_link("A-B", up=False)
    assert network not in attached_networks(backend, "A")
    assert network not in attached_networks(backend, "B")
    assert backend.networks["lan-A"].name in attached_networks(backend, "A")

    before = len(list(parts.glob("A-*.pcap")))
    await backend.set_link("A-B", up=True)
    assert network in attached_networks(backend, "A")
    settings = backend.containers["B"].attrs["NetworkSettings"]["Networks"][network]
    assert settings["IPAddress"] == addressing.addresses[("B", "A-B")]
    # the capture on the new interface is a new part beside the old one
    assert len(list(parts.glob("A-*.pcap"))) == before + 1


async def check_one_direction(backend: object) -> None:
    await backend.set_direction("A-B", "A", up=False)
    trace = backend.run_dir / "traces" / "A.jsonl"
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    changes = [e for e in events if e["event"] == "link_changed"]
    assert changes[-1]["link"] == "A-B"
    assert changes[-1]["up"] is False
    # B's direction and the network stay up
    assert backend.networks["A-B"].name in attached_networks(backend, "B")
    b_trace = backend.run_dir / "traces" / "B.jsonl"
    assert "link_changed" not in b_trace.read_text()
    with pytest.raises(ConfigError, match="not on A-B"):
        await backend.set_direction("A-B", "h", up=False)


async def check_node_stop_and_start(backend: object) -> None:
    await backend.stop_node("h2")
    backend.containers["h2"].reload()
    assert backend.containers["h2"].status == "exited"
    with pytest.raises(ConfigError, match="not running"):
        await backend.stop_node("h2")

    await backend.start_node("h2")
    answer = await backend.command("h2", {"cmd": "status"})
    assert answer["ok"] is True
    with pytest.raises(ConfigError, match="already running"):
        await backend.start_node("h2")


def test_stale_resources_removed():
    client = require_engine()
    import docker

    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    owner = f"{socket.gethostname()}:{pid_max + 1}"
    network = client.networks.create(
        "smkd-test-stale",
        driver="bridge",
        internal=True,
        labels={resources.OWNER_LABEL: owner},
    )
    try:
        resources.remove_stale_resources(client)
        names = [n.name for n in client.networks.list(names=["smkd-test-stale"])]
        assert names == []
    finally:
        try:
            network.remove()
        except docker.errors.NotFound:
            pass


def test_live_run_resources_kept():
    client = require_engine()
    owner = f"{socket.gethostname()}:{os.getpid()}"
    network = client.networks.create(
        "smkd-test-live",
        driver="bridge",
        internal=True,
        labels={resources.OWNER_LABEL: owner},
    )
    try:
        resources.remove_stale_resources(client)
        names = [n.name for n in client.networks.list(names=["smkd-test-live"])]
        assert names == ["smkd-test-live"]
    finally:
        network.remove()
