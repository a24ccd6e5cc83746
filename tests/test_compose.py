"""Tests for smkd compose: the generated compose file and the compose backend."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from pathlib import Path

import pytest
import yaml

from node.errors import ConfigError
from smkd.backends import get_backend
from smkd.cli import main
from smkd.compose import (
    RUN_DIR,
    ComposeBackend,
    compose_document,
    compose_text,
    mark_setup_done,
    relative_path,
    source_mounts,
)
from smkd.backends.docker import UNICAST_SUBNET, unicast_addresses
from smkd.configs import LinkAddressing
from smkd.model import load_scenario, load_topology

REPO = Path(__file__).resolve().parent.parent
FIGURE1 = REPO / "topologies" / "figure1.yaml"
FIGURE1_SCENARIO = REPO / "scenarios" / "figure1.yaml"
REGENERATE = (
    "smkd compose topologies/figure1.yaml --scenario scenarios/figure1.yaml "
    "-o compose.yaml"
)


@pytest.fixture
def document() -> dict:
    topology = load_topology(FIGURE1)
    scenario = load_scenario(FIGURE1_SCENARIO)
    return compose_document(topology, scenario, REPO)


def write_scenario(directory: Path, timeline: str) -> Path:
    path = directory / "scenario.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: check
        topology: {FIGURE1}
        timeline:
        {textwrap.indent(timeline, "  ")}
        expect:
          - {{type: holds_key, node: h, group: G}}
        """)
    )
    return path


# the checked-in compose.yaml


def test_compose_yaml_up_to_date(monkeypatch):
    monkeypatch.chdir(REPO)
    expected = compose_text(
        "topologies/figure1.yaml", "scenarios/figure1.yaml", "compose.yaml"
    )
    actual = (REPO / "compose.yaml").read_text()
    assert actual == expected, (
        f"compose.yaml is out of date; regenerate it: {REGENERATE}"
    )


def test_compose_yaml_names_its_run_dir():
    text = (REPO / "compose.yaml").read_text()
    assert "./runs/compose-figure1:/smkd/run" in text
    assert "runs/compose-figure1/summary.json" in text


# the document


def test_one_service_per_node_and_runner(document):
    topology = load_topology(FIGURE1)
    assert set(document["services"]) == {"runner", *topology.nodes}


def test_networks_internal_with_fixed_subnets(document):
    addressing = LinkAddressing.assign(load_topology(FIGURE1))
    subnets = {**addressing.subnets, "unicast": UNICAST_SUBNET}
    networks = document["networks"]
    assert set(networks) == set(subnets)
    for name, network in networks.items():
        assert network["internal"] is True, name
        assert network["ipam"]["config"] == [{"subnet": str(subnets[name])}]


def test_node_addresses_match_link_addressing(document):
    topology = load_topology(FIGURE1)
    addressing = LinkAddressing.assign(topology)
    unicast = unicast_addresses(topology)
    for name in topology.nodes:
        networks = document["services"][name]["networks"]
        expected = {
            seg: {"ipv4_address": addr}
            for seg, addr in addressing.interfaces(name).items()
        }
        expected["unicast"] = {"ipv4_address": unicast[name]}
        assert networks == expected, name


def test_nodes_wait_for_runner_health(document):
    for name, service in document["services"].items():
        if name == "runner":
            continue
        assert service["depends_on"] == {"runner": {"condition": "service_healthy"}}
        assert service["healthcheck"]["test"][:3] == [
            "CMD",
            "smkd-entrypoint",
            "health",
        ]
        assert service["command"] == [f"{RUN_DIR}/configs/{name}.json"]


def test_runner_runs_scenario_without_network(document):
    runner = document["services"]["runner"]
    assert runner["command"] == ["run", RUN_DIR, "/smkd/src/scenarios/figure1.yaml"]
    assert runner["network_mode"] == "none"
    assert runner["environment"] == {"SMKD_COMPOSE": "1"}
    assert runner["healthcheck"]["test"] == [
        "CMD",
        "smkd-entrypoint",
        "setup-done",
        RUN_DIR,
    ]


def test_every_service_shares_run_dir(document):
    for name, service in document["services"].items():
        assert service["volumes"][0] == f"./runs/compose-figure1:{RUN_DIR}", name


def test_every_service_can_build_image(document):
    for name, service in document["services"].items():
        assert service["image"] == "smkd-node:latest", name
        assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}


def test_without_scenario_runner_serves():
    topology = load_topology(FIGURE1)
    document = compose_document(topology, None, REPO)
    runner = document["services"]["runner"]
    assert runner["command"] == ["serve", RUN_DIR, "/smkd/src/figure1.yaml"]
    assert runner["volumes"] == [
        f"./runs/compose-figure1:{RUN_DIR}",
        "./topologies:/smkd/src:ro",
    ]


def test_paths_relative_to_output_dir(tmp_path):
    topology = load_topology(FIGURE1)
    document = compose_document(topology, None, tmp_path / "deep")
    runner = document["services"]["runner"]
    assert runner["volumes"][0] == f"./runs/compose-figure1:{RUN_DIR}"
    assert runner["volumes"][1].startswith("../")
    assert runner["build"]["context"].startswith("../")


def test_rendered_file_has_no_aliases(monkeypatch):
    monkeypatch.chdir(REPO)
    text = compose_text("topologies/figure1.yaml", None, None)
    assert "&id" not in text
    assert "*id" not in text
    assert yaml.safe_load(text)["services"]["A"]["hostname"] == "A"


# source mounts


def test_source_mounts_keep_relative_layout(tmp_path):
    (tmp_path / "a" / "s").mkdir(parents=True)
    (tmp_path / "t").mkdir()
    scenario = tmp_path / "a" / "s" / "x.yaml"
    topology = tmp_path / "t" / "y.yaml"
    volumes, paths = source_mounts([scenario, topology], tmp_path)
    assert volumes == ["./a/s:/smkd/src/a/s:ro", "./t:/smkd/src/t:ro"]
    assert paths[scenario] == "/smkd/src/a/s/x.yaml"
    assert paths[topology] == "/smkd/src/t/y.yaml"


def test_relative_path_forms(tmp_path):
    assert relative_path(tmp_path, tmp_path) == "."
    assert relative_path(tmp_path / "x", tmp_path) == "./x"
    assert relative_path(tmp_path, tmp_path / "x") == ".."


# rejected input


def test_rejects_engine_actions(tmp_path):
    scenario = write_scenario(tmp_path, "- {at: 0, action: link_down, link: A-B}")
    with pytest.raises(ConfigError, match="link_down needs the Docker engine"):
        compose_text(str(FIGURE1), str(scenario), None)


def test_rejects_node_stop(tmp_path):
    scenario = write_scenario(tmp_path, "- {at: 0, action: node_stop, node: B}")
    with pytest.raises(ConfigError, match="--backend docker"):
        compose_text(str(FIGURE1), str(scenario), None)


def test_rejects_other_topology():
    with pytest.raises(ConfigError, match="pass its own topology"):
        compose_text(
            str(REPO / "topologies" / "denied-host.yaml"), str(FIGURE1_SCENARIO), None
        )


def test_rejects_node_named_runner(tmp_path):
    topology = tmp_path / "t.yaml"
    text = FIGURE1.read_text()
    topology.write_text(
        text.replace("init:", "runner:")
        .replace("init", "runner")
        .replace("runneriator", "initiator")
    )
    with pytest.raises(ConfigError, match="named 'runner'"):
        compose_text(str(topology), None, None)


def test_cli_exits_2_for_engine_actions(tmp_path, capsys):
    scenario = write_scenario(tmp_path, "- {at: 0, action: link_up, link: A-B}")
    code = main(["compose", str(FIGURE1), "--scenario", str(scenario)])
    assert code == 2
    assert "link_up needs the Docker engine" in capsys.readouterr().err


def test_cli_writes_output_file(tmp_path):
    output = tmp_path / "compose.yaml"
    code = main(["compose", str(FIGURE1), "-o", str(output)])
    assert code == 0
    document = yaml.safe_load(output.read_text())
    assert document["services"]["runner"]["command"][0] == "serve"


# the compose backend


def test_compose_backend_registered():
    assert get_backend("compose") is ComposeBackend


def test_compose_backend_only_in_runner(monkeypatch):
    monkeypatch.delenv("SMKD_COMPOSE", raising=False)
    with pytest.raises(ConfigError, match="--backend docker"):
        ComposeBackend.check_available()
    monkeypatch.setenv("SMKD_COMPOSE", "1")
    ComposeBackend.check_available()


def test_compose_configs_use_link_addresses(tmp_path):
    topology = load_topology(FIGURE1)
    addressing = LinkAddressing.assign(topology)
    configs = ComposeBackend.write_configs(topology, tmp_path, 1, Path(RUN_DIR) / "ctl")
    document = yaml.safe_load(configs["A"].read_text())
    assert document["bind"] == "0.0.0.0"
    unicast = unicast_addresses(topology)
    assert document["interfaces"] == {
        **addressing.interfaces("A"),
        "unicast": unicast["A"],
    }
    # C shares no link with A, so A reaches it over the unicast network
    assert document["peer_addresses"]["C"] == unicast["C"]
    assert document["peer_addresses"]["B"] == addressing.addresses[("B", "A-B")]
    assert document["control"] == f"{RUN_DIR}/ctl/A.sock"
    assert all(link["capture"] is None for link in document["links"])
    assert document["unicast_capture"] is None


def test_compose_backend_rejects_faults(tmp_path):
    topology = load_topology(FIGURE1)
    backend = ComposeBackend(topology, tmp_path, {}, tmp_path)
    with pytest.raises(ConfigError, match="Docker engine"):
        asyncio.run(backend.set_link("A-B", up=False))
    with pytest.raises(ConfigError, match="Docker engine"):
        asyncio.run(backend.stop_node("A"))


def test_setup_marker_names_this_host(tmp_path):
    mark_setup_done(tmp_path)
    assert (tmp_path / ".setup-done").read_text() == socket.gethostname() + "\n"
