"""Failure scenarios end to end on the local backend, and per-direction links."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from node.capture import read_pcap
from node.messages import decode_message
from smkd.cli import main
from smkd.configs import write_node_configs
from smkd.model import ValidationError, load_topology

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
TOPOLOGIES = ROOT / "topologies"


def run(scenario: Path, out: Path) -> int:
    return main(["run", "-q", str(scenario), "--out", str(out)])


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "name", ["link-failure", "router-crash", "core-failover", "lossy", "leave"]
)
def test_failure_scenario_passes(tmp_path, name):
    out = tmp_path / "run"

    code = run(SCENARIOS / f"{name}.yaml", out)

    result = summary(out)
    failed = [(e["name"], e["detail"]) for e in result["expectations"]
              if not e["passed"]]
    assert code == 0, (result["ready_error"], result["action_errors"], failed)
    kinds = [e["type"] for e in result["expectations"]]
    assert kinds.count("tree_invariant") == 1


# one direction of a link

ONE_WAY = """\
name: one-way
topology: {topology}
duration: 2
timeline:
  - {{at: 0, action: join, node: h, group: G}}
  - {{at: 1, action: link_down, link: A-B, from: A}}
expect:
  - {{type: holds_key, node: h, group: G, within: 5}}
"""


def datagrams(out: Path, capture: str) -> list[tuple[float, str]]:
    """Return (time, source address) of each datagram in one capture."""
    return [(d.timestamp, d.src) for d in read_pcap(out / "captures" / capture)]


def test_link_down_in_one_direction(tmp_path):
    scenario = tmp_path / "one-way.yaml"
    scenario.write_text(ONE_WAY.format(topology=TOPOLOGIES / "figure1.yaml"))
    out = tmp_path / "run"

    run(scenario, out)

    actions = [json.loads(line) for line in (out / "runner.jsonl").read_text()
               .splitlines()]
    (down,) = [a for a in actions if a.get("action") == "link_down"]
    configs = {name: json.loads((out / "configs" / f"{name}.json").read_text())
               for name in ("A", "B")}
    a_address = configs["A"]["address"]
    b_address = configs["B"]["address"]
    after = [(t, src) for t, src in datagrams(out, "A-B.pcap") if t > down["t"] + 0.1]
    assert [src for _, src in after if src == a_address] == []
    assert any(src == b_address for _, src in after)
    lost = [json.loads(line) for line in (out / "traces" / "B.jsonl").read_text()
            .splitlines() if '"adjacency"' in line]
    assert lost[-1]["up"] is False
    assert lost[-1]["peer"] == "A"


def test_one_direction_needs_a_member(tmp_path):
    scenario = tmp_path / "one-way.yaml"
    scenario.write_text(ONE_WAY.format(topology=TOPOLOGIES / "figure1.yaml")
                        .replace("from: A", "from: C"))

    code = run(scenario, tmp_path / "run")

    assert code == 1
    assert "C does not send on A-B" in summary(tmp_path / "run")["action_errors"][0]


# per-direction impairments in the topology

DIRECTED = textwrap.dedent(
    """\
    name: directed
    timers: fast
    nodes:
      h: {role: host}
      A: {role: router}
      B: {role: router}
      C: {role: core}
      init: {role: initiator}
    links:
      - between: [A, B]
        delay: 5ms
        loss: 1%
        directions:
          A: {loss: 20%}
          B: {delay: 40ms, jitter: 1ms}
      - between: [B, C]
      - between: [init, C]
    lans:
      - name: lan-A
        routers: [A]
        hosts: [h]
        directions:
          h: {delay: 2ms}
    groups:
      - name: G
        address: 239.1.1.1
        cores: [C]
        initiator: init
        acl: {mode: include, hosts: [h]}
    """
)


def egress(configs: dict[str, Path], node: str, link: str) -> dict:
    document = json.loads(configs[node].read_text())
    (found,) = [entry for entry in document["links"] if entry["name"] == link]
    return found["egress"]


def test_directions_reach_each_sender(tmp_path):
    path = tmp_path / "directed.yaml"
    path.write_text(DIRECTED)
    topology = load_topology(path)

    configs = write_node_configs(topology, tmp_path / "run", 1, tmp_path / "ctl")

    assert egress(configs, "A", "A-B") == {
        "delay": 0.005, "jitter": 0.0, "loss": 0.2, "bandwidth": None}
    assert egress(configs, "B", "A-B") == {
        "delay": 0.04, "jitter": 0.001, "loss": 0.01, "bandwidth": None}
    assert egress(configs, "h", "lan-A")["delay"] == 0.002
    assert egress(configs, "A", "lan-A")["delay"] == 0.0


def test_direction_of_non_member_is_rejected(tmp_path):
    path = tmp_path / "directed.yaml"
    path.write_text(DIRECTED.replace("A: {loss: 20%}", "C: {loss: 20%}"))

    with pytest.raises(ValidationError) as error:
        load_topology(path)

    assert "'C' does not send on this link or LAN; use one of A, B" in str(error.value)


def test_direction_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "directed.yaml"
    path.write_text(DIRECTED.replace("{loss: 20%}", "{los: 20%}"))

    with pytest.raises(ValidationError) as error:
        load_topology(path)

    assert "los" in str(error.value)


def test_link_state_is_default_for_small_topologies():
    assert load_topology(TOPOLOGIES / "abilene.yaml").routing == "link-state"


def test_routing_can_be_static(tmp_path):
    path = tmp_path / "static.yaml"
    static = DIRECTED.replace("timers: fast\n", "timers: fast\nrouting: static\n")
    path.write_text(static)

    topology = load_topology(path)
    configs = write_node_configs(topology, tmp_path / "run", 1, tmp_path / "ctl")

    assert json.loads(configs["A"].read_text())["routing"] == "static"
    assert json.loads(configs["h"].read_text())["routing"] == "static"


def test_link_costs_follow_delay(tmp_path):
    path = tmp_path / "directed.yaml"
    path.write_text(DIRECTED)
    topology = load_topology(path)

    configs = write_node_configs(topology, tmp_path / "run", 1, tmp_path / "ctl")

    document = json.loads(configs["A"].read_text())
    assert document["routing"] == "link-state"
    assert document["link_costs"]["B"] == 5001
    assert document["link_costs"]["h"] == 1


def test_routing_messages_in_captures(tmp_path):
    out = tmp_path / "run"
    run(SCENARIOS / "figure1.yaml", out)

    types = {decode_message(d.payload).header.type.name
             for d in read_pcap(out / "captures" / "A-B.pcap")}

    assert {"HELLO", "LINK_STATE", "ECHO_REQUEST", "ECHO_REPLY"} <= types
