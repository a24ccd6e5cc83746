"""Tests of topology and scenario loading and validation (smkd.model, smkd.yamlsrc)."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import networkx as nx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import ConfigError
from smkd import model
from smkd.model import (
    TIMER_PROFILES,
    Impairment,
    Problem,
    Scenario,
    Topology,
    ValidationError,
    load_file,
    load_scenario,
    load_topology,
)
from smkd.yamlsrc import parse_yaml

REPO = Path(__file__).resolve().parent.parent

# a small valid topology; error tests change one line of it at a time, so that
# every other line stays valid and line numbers stay put
BASE_TOPOLOGY = textwrap.dedent(
    """\
    name: base
    timers: fast
    nodes:
      h: {role: host}
      h2: {role: host}
      A: {role: router}
      B: {role: router}
      C: {role: core}
      init: {role: initiator}
    links:
      - between: [A, B]
        delay: 5ms
      - between: [B, C]
      - between: [init, C]
    lans:
      - name: lan-A
        routers: [A]
        hosts: [h, h2]
    groups:
      - name: G
        address: 239.1.1.1
        cores: [C]
        initiator: init
        acl: {mode: include, hosts: [h2, h]}
    """
)

BASE_SCENARIO = textwrap.dedent(
    """\
    name: base
    topology: topology.yaml
    timeline:
      - {at: 0, action: join, node: h, group: G}
      - {at: 1, action: join, node: h2, group: G}
    expect:
      - {type: holds_key, node: h, group: G, within: 5}
      - {type: no_key_in_clear}
    """
)


def replace_line(text: str, old: str, new: str) -> str:
    """Replace the one line of ``text`` that contains ``old`` by ``new``."""
    assert text.count(old) == 1, f"{old!r} must occur once"
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if old in line:
            indent = line[: len(line) - len(line.lstrip())]
            lines[index] = indent + new + "\n"
    return "".join(lines)


def line_of(text: str, fragment: str) -> int:
    """Return the 1-based line of the first line that contains ``fragment``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} is not in the text")


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ValidationError) as caught:
        load_file(path)
    return caught.value.problems


def only_problem(path: Path) -> Problem:
    problems = problems_of(path)
    assert len(problems) == 1, "\n".join(str(problem) for problem in problems)
    return problems[0]


def test_base_topology_valid(tmp_path):
    topology = load_topology(write(tmp_path, "topology.yaml", BASE_TOPOLOGY))

    assert topology.name == "base"
    assert len(topology.nodes) == 6


# valid files


def test_figure1_topology_values():
    topology = load_topology(REPO / "topologies" / "figure1.yaml")

    roles = {name: node.role for name, node in topology.nodes.items()}
    assert roles == {
        "h": "host",
        "h2": "host",
        "A": "router",
        "B": "router",
        "C": "core",
        "init": "initiator",
    }
    assert [link.name for link in topology.links] == ["A-B", "B-C", "init-C"]
    assert topology.links[0].impairment == Impairment(delay=0.005)
    lan = topology.lans[0]
    assert lan.name == "lan-A"
    assert lan.routers == ("A",)
    assert lan.hosts == ("h", "h2")
    assert lan.dr == "A"
    assert topology.timers == TIMER_PROFILES["fast"]


def test_figure1_group_defaults():
    group = load_topology(REPO / "topologies" / "figure1.yaml").groups["G"]

    assert group.address == "239.1.1.1"
    assert group.cores == ("C",)
    assert group.initiator == "init"
    assert group.acl.mode == "include"
    assert group.acl.hosts == ("h", "h2")
    assert group.acl.serial == 1
    assert group.acl.validity == 86400.0
    assert group.trusted_routers is None
    assert group.strict is False
    assert group.key_lifetime == 3600.0
    assert group.suite == "default"


def test_topology_defaults(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "timers: fast", "description: defaults")
    topology = load_topology(write(tmp_path, "topology.yaml", text))

    assert topology.timers == TIMER_PROFILES["cbtv1"]
    assert topology.timers.echo_interval == 30.0
    assert topology.timers.child_assert_expire == 180.0
    assert topology.token_window == 30.0
    assert topology.description == "defaults"
    assert topology.source == tmp_path / "topology.yaml"
    assert topology.links[1].impairment == Impairment()


def test_addresses_assigned_in_file_order(tmp_path):
    topology = load_topology(write(tmp_path, "topology.yaml", BASE_TOPOLOGY))

    addresses = {name: node.address for name, node in topology.nodes.items()}
    assert addresses == {
        "h": "127.1.0.1",
        "h2": "127.1.0.2",
        "A": "127.1.0.3",
        "B": "127.1.0.4",
        "C": "127.1.0.5",
        "init": "127.1.0.6",
    }


def test_addresses_skip_explicit_ones(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "A: {", "A: {role: router, address: 127.1.0.2}")
    text = replace_line(text, "B: {", "B: {role: router, address: 127.9.9.9}")
    topology = load_topology(write(tmp_path, "topology.yaml", text))

    addresses = {name: node.address for name, node in topology.nodes.items()}
    assert addresses == {
        "h": "127.1.0.1",
        "h2": "127.1.0.3",
        "A": "127.1.0.2",
        "B": "127.9.9.9",
        "C": "127.1.0.4",
        "init": "127.1.0.5",
    }


def test_units_converted_to_si(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "    delay: 5ms\n",
        "    delay: 1.5s\n    jitter: 250us\n    loss: 1%\n    bandwidth: 10Mbit\n",
    )
    text = replace_line(
        text,
        "between: [B, C]",
        "- {between: [B, C], delay: 7, loss: 0.02, bandwidth: 512kbit}",
    )
    text = replace_line(
        text, "between: [init, C]", "- {between: [init, C], bandwidth: 1500}"
    )
    text = replace_line(
        text, "acl:", "acl: {mode: exclude, hosts: [h2], serial: 4, validity: 2h}"
    )
    text += "    key_lifetime: 90s\n    suite: pq\n    strict: true\n"
    text += "token_window: 1.5\n"
    topology = load_topology(write(tmp_path, "topology.yaml", text))

    assert topology.links[0].impairment == Impairment(1.5, 0.00025, 0.01, 10_000_000)
    assert topology.links[1].impairment == Impairment(0.007, 0.0, 0.02, 512_000)
    assert topology.links[2].impairment.bandwidth == 1500
    group = topology.groups["G"]
    assert group.acl.mode == "exclude"
    assert group.acl.hosts == ("h2",)
    assert group.acl.serial == 4
    assert group.acl.validity == 7200.0
    assert group.key_lifetime == 90.0
    assert group.suite == "pq"
    assert group.strict is True
    assert topology.token_window == 1.5


def test_timer_mapping_overrides_profile(tmp_path):
    text = replace_line(
        BASE_TOPOLOGY,
        "timers: fast",
        "timers: {profile: fast, echo_interval: 2, report_retries: 7, "
        "echo_timeout: 500ms}",
    )
    timers = load_topology(write(tmp_path, "topology.yaml", text)).timers

    assert timers.echo_interval == 2.0
    assert timers.echo_timeout == 0.5
    assert timers.report_retries == 7
    assert timers.pending_join_interval == TIMER_PROFILES["fast"].pending_join_interval
    assert timers.expire_pending_join == 10.0


def test_trusted_routers_and_dr(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "routers: [A]", "routers: [A, B]")
    text = replace_line(text, "hosts: [h, h2]", "hosts: [h, h2]\n    dr: B")
    text += "    trusted_routers: [A, C]\n"
    topology = load_topology(write(tmp_path, "topology.yaml", text))

    assert topology.lans[0].routers == ("A", "B")
    assert topology.lans[0].dr == "B"
    assert topology.groups["G"].trusted_routers == ("A", "C")


def test_named_parallel_links_allowed(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "  - between: [B, C]\n",
        "  - between: [B, C]\n  - {between: [C, B], name: B-C-backup, delay: 20}\n",
    )
    topology = load_topology(write(tmp_path, "topology.yaml", text))

    assert [link.name for link in topology.links] == [
        "A-B",
        "B-C",
        "B-C-backup",
        "init-C",
    ]
    # the graph keeps the faster of the two parallel links
    assert topology.graph().edges["B", "C"]["delay"] == 0.0


def test_graph_and_neighbours(tmp_path):
    topology = load_topology(write(tmp_path, "topology.yaml", BASE_TOPOLOGY))
    graph = topology.graph()

    assert set(graph.nodes) == set(topology.nodes)
    assert graph.nodes["C"]["role"] == "core"
    assert graph.nodes["C"]["address"] == "127.1.0.5"
    assert graph.edges["A", "B"]["delay"] == 0.005
    assert graph.edges["A", "B"]["segment"] == "A-B"
    assert graph.edges["h", "A"]["segment"] == "lan-A"
    assert not graph.has_edge("h", "h2")
    assert nx.is_connected(graph)
    assert topology.neighbours("A") == ["B", "h", "h2"]
    assert topology.neighbours("C") == ["B", "init"]
    assert topology.segment("lan-A") is topology.lans[0]
    assert topology.segment("B-C") is topology.links[1]
    assert topology.segment("nowhere") is None


def test_graph_lan_joins_routers(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "routers: [A]", "routers: [A, B]")
    graph = load_topology(write(tmp_path, "topology.yaml", text)).graph()

    assert graph.edges["h", "B"]["segment"] == "lan-A"
    # the LAN (no delay) is faster than the A-B link (5 ms), so it wins
    assert graph.edges["A", "B"]["segment"] == "lan-A"
    assert graph.edges["A", "B"]["delay"] == 0.0


def test_yaml_merge_keys(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "    delay: 5ms\n", "    <<: &wan {delay: 5ms, loss: 2%}\n"
    ).replace(
        "  - between: [B, C]\n", "  - between: [B, C]\n    <<: *wan\n    delay: 1\n"
    )
    topology = load_topology(write(tmp_path, "topology.yaml", text))

    assert topology.links[0].impairment == Impairment(delay=0.005, loss=0.02)
    assert topology.links[1].impairment == Impairment(delay=0.001, loss=0.02)


def test_figure1_scenario_values():
    scenario = load_scenario(REPO / "scenarios" / "figure1.yaml")

    assert scenario.name == "figure1"
    assert scenario.topology.name == "figure1"
    assert scenario.seed == 1
    assert [(action.at, action.kind, action.node) for action in scenario.timeline] == [
        (0.0, "join", "h"),
        (2.0, "join", "h2"),
    ]
    kinds = [expectation.kind for expectation in scenario.expect]
    assert kinds == ["holds_key", "holds_key", "gkdc", "gkdc", "no_key_in_clear"]


def test_scenario_defaults(tmp_path):
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    scenario = load_scenario(write(tmp_path, "scenario.yaml", BASE_SCENARIO))

    assert scenario.seed == 0
    assert scenario.ready_timeout == 20.0
    assert scenario.duration == 2.0
    assert scenario.description == ""
    assert scenario.source == tmp_path / "scenario.yaml"
    assert scenario.topology.source == tmp_path / "topology.yaml"


def test_scenario_topology_path_relative(tmp_path):
    (tmp_path / "topologies").mkdir()
    (tmp_path / "scenarios").mkdir()
    write(tmp_path / "topologies", "t.yaml", BASE_TOPOLOGY)
    text = replace_line(BASE_SCENARIO, "topology:", "topology: ../topologies/t.yaml")
    scenario = load_scenario(write(tmp_path / "scenarios", "s.yaml", text))

    assert scenario.topology.source == tmp_path / "topologies" / "t.yaml"


def test_timeline_sorted_stably(tmp_path):
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    text = textwrap.dedent(
        """\
        name: order
        topology: topology.yaml
        seed: 7
        ready: {timeout: 5}
        duration: 10
        timeline:
          - {at: 3, action: leave, node: h, group: G}
          - {at: 1, action: join, node: h, group: G}
          - {at: 1, action: rekey, group: G}
          - {at: 0.5, action: link_down, link: A-B}
          - {at: 1, action: link_up, link: lan-A}
        """
    )
    scenario = load_scenario(write(tmp_path, "scenario.yaml", text))

    assert [(action.at, action.kind) for action in scenario.timeline] == [
        (0.5, "link_down"),
        (1.0, "join"),
        (1.0, "rekey"),
        (1.0, "link_up"),
        (3.0, "leave"),
    ]
    assert [action.line for action in scenario.timeline] == [10, 8, 9, 11, 7]
    assert scenario.seed == 7
    assert scenario.ready_timeout == 5.0
    assert scenario.duration == 10.0


def test_action_fields_and_params(tmp_path):
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    text = textwrap.dedent(
        """\
        name: actions
        topology: topology.yaml
        timeline:
          - {at: 0, action: send, node: init, group: G}
          - {at: 1, action: send, node: h, group: G, count: 9, size: 20, interval: 5ms}
          - {at: 2, action: link_set, link: A-B, loss: 20%, delay: 10ms}
          - {at: 3, action: node_stop, node: B}
          - {at: 4, action: node_start, node: B}
          - {at: 5, action: wait, seconds: 2}
        """
    )
    timeline = load_scenario(write(tmp_path, "scenario.yaml", text)).timeline

    assert timeline[0].params == {"count": 1, "size": 100, "interval": 0.1}
    assert timeline[1].node == "h"
    assert timeline[1].group == "G"
    assert timeline[1].params == {"count": 9, "size": 20, "interval": 0.005}
    assert timeline[2].link == "A-B"
    assert timeline[2].node is None
    assert timeline[2].params == {"loss": 0.2, "delay": 0.01}
    assert timeline[3].kind == "node_stop"
    assert timeline[3].node == "B"
    assert timeline[5].params == {"seconds": 2.0}


def test_expectation_names_and_params(tmp_path):
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    text = textwrap.dedent(
        """\
        name: expect
        topology: topology.yaml
        expect:
          - {type: holds_key, node: h, group: G, within: 5}
          - {type: denied, node: h2, group: G, within: 2.5}
          - {type: lacks_key, node: h2, group: G}
          - {type: gkdc, node: A, group: G}
          - {type: not_gkdc, node: B, group: G, name: B stays out}
          - {type: all_members_hold_key, group: G, within: 10}
          - {type: no_key_in_clear}
          - {type: event, node: A, event: token_rejected, reason: replayed, max: 5}
          - {type: event, event: ack_sent}
          - {type: received, node: h2, group: G, from: h, min: 10}
        """
    )
    expect = load_scenario(write(tmp_path, "scenario.yaml", text)).expect

    assert [expectation.name for expectation in expect] == [
        "h holds the key of G within 5 s",
        "h2 is denied access to G within 2.5 s",
        "h2 lacks the key of G",
        "A is a GKDC of G",
        "B stays out",
        "every member of G holds the key within 10 s",
        "no key appears in the clear",
        "A traces token_rejected (replayed) 1 to 5 times",
        "some node traces ack_sent at least 1 time",
        "h2 receives at least 10 datagrams of G from h",
    ]
    assert expect[0].params == {"node": "h", "group": "G", "within": 5.0}
    assert expect[6].params == {}
    assert expect[7].params["max"] == 5
    assert expect[8].params == {
        "node": None,
        "event": "ack_sent",
        "reason": None,
        "min": 1,
        "max": None,
    }
    assert expect[9].params["from"] == "h"
    assert [expectation.line for expectation in expect] == list(range(4, 14))


# one test per class of topology error: the problem names the file, the line,
# the offending value and a fix


def check_topology_error(
    tmp_path: Path, old: str, new: str, *fragments: str, path: str | None = None
) -> Problem:
    """Change one line of the base topology and check the one problem it causes."""
    text = replace_line(BASE_TOPOLOGY, old, new)
    file = write(tmp_path, "topology.yaml", text)
    problem = only_problem(file)

    assert problem.file == str(file)
    assert problem.line == line_of(text, new)
    for fragment in fragments:
        assert fragment in problem.message
    if path is not None:
        assert problem.path == path
    assert str(problem).startswith(f"{file}:{problem.line}: ")
    return problem


def test_error_typo_key_suggests(tmp_path):
    check_topology_error(
        tmp_path,
        "initiator: init",
        "inititor: init",
        "unknown key 'inititor'",
        "did you mean 'initiator'?",
        path="groups[0].inititor",
    )


def test_error_typo_key_in_acl(tmp_path):
    check_topology_error(
        tmp_path,
        "acl: {mode",
        "acl: {mode: include, hots: [h, h2]}",
        "unknown key 'hots'",
        "did you mean 'hosts'?",
        path="groups[0].acl.hots",
    )


def test_error_unknown_node_in_link(tmp_path):
    check_topology_error(
        tmp_path,
        "between: [A, B]",
        "- between: [A, Bx]",
        "unknown node 'Bx'",
        "define it under nodes or fix the name",
        "(known: h, h2, A, B, C, init)",
        path="links[0].between[1]",
    )


def test_error_host_to_host_link(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "hosts: [h, h2]", "hosts: [h]")
    text = text.replace(
        "  - between: [init, C]\n", "  - between: [init, C]\n  - between: [h2, h]\n"
    )
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "between: [h2, h]")
    assert problem.path == "links[3].between"
    assert "link 'h2-h' connects two hosts, h2 and h" in problem.message
    assert "link each host to a router or core" in problem.message


def test_error_group_not_multicast(tmp_path):
    check_topology_error(
        tmp_path,
        "address: 239.1.1.1",
        "address: 10.1.1.1",
        "10.1.1.1 is not a multicast address",
        "224.0.0.0/4",
        path="groups[0].address",
    )


def test_error_group_in_local_control_block(tmp_path):
    check_topology_error(
        tmp_path,
        "address: 239.1.1.1",
        "address: 224.0.0.15",
        "224.0.0.0/24",
        "239.1.1.1",
    )


def test_error_group_address_invalid(tmp_path):
    check_topology_error(
        tmp_path,
        "address: 239.1.1.1",
        "address: 239.1.1",
        "invalid IPv4 address '239.1.1'",
    )


def test_error_cut_off_router_and_host(tmp_path):
    # without the B-C link, core C (and init) are cut off from A, B and the hosts
    text = BASE_TOPOLOGY.replace("  - between: [B, C]\n", "")
    problems = problems_of(write(tmp_path, "topology.yaml", text))

    assert [problem.path for problem in problems] == ["nodes.h", "nodes.h2", "nodes.C"]
    cut_off = problems[2]
    assert cut_off.line == line_of(text, "C: {role: core}")
    assert "C is cut off from the other routers and cores (A, B)" in cut_off.message
    assert "add a link or LAN" in cut_off.message
    for problem, host in zip(problems, ("h", "h2"), strict=False):
        assert problem.line == line_of(text, f"  {host}: {{role: host}}")
        assert f"host '{host}' cannot reach core C" in problem.message


def test_error_duplicate_address(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "A: {", "A: {role: router, address: 127.1.0.9}")
    text = replace_line(text, "B: {", "B: {role: router, address: 127.1.0.9}")
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "B: {")
    assert problem.path == "nodes.B.address"
    assert "127.1.0.9 is already used by node 'A'" in problem.message
    assert "pick another" in problem.message


def test_error_address_outside_loopback(tmp_path):
    check_topology_error(
        tmp_path,
        "A: {",
        "A: {role: router, address: 10.0.0.1}",
        "10.0.0.1 is outside 127.0.0.0/8",
        "remove it to get one assigned",
    )


def test_error_bad_duration(tmp_path):
    check_topology_error(
        tmp_path,
        "delay: 5ms",
        "delay: 5 parsecs",
        "invalid duration '5 parsecs'",
        "'5ms'",
        path="links[0].delay",
    )


def test_error_negative_duration(tmp_path):
    check_topology_error(
        tmp_path,
        "delay: 5ms",
        "delay: -5",
        "invalid duration -5",
        "must not be negative",
    )


@pytest.mark.parametrize(
    ("new", "fragments"),
    [
        ("loss: 100%", ("invalid loss rate '100%'", "'1%'")),
        ("loss: 1", ("invalid loss rate 1", "fraction such as 0.01")),
        ("loss: lots", ("invalid loss rate 'lots'",)),
        ("bandwidth: 10Mbt", ("invalid bandwidth '10Mbt'", "'10Mbit'")),
        ("bandwidth: 0", ("invalid bandwidth 0", "at least 1 bit/s")),
        ("jitter: [1]", ("expected a duration, got a list",)),
    ],
)
def test_error_bad_impairment(tmp_path, new, fragments):
    check_topology_error(tmp_path, "delay: 5ms", new, *fragments)


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("name: base", "name: my topology", ("invalid name 'my topology'", "1-64")),
        ("timers: fast", "timers: fastt", ("unknown timer profile 'fastt'", "'fast'")),
        ("timers: fast", "timers: {echo_interval: 0}", ("greater than zero",)),
        ("h2: {", "h2: {role: hots}", ("unknown role 'hots'", "did you mean 'host'?")),
        (
            "h2: {",
            "h2: {role: host, ip: 127.1.1.1}",
            ("unknown key 'ip'", "role, address"),
        ),
        ("h2: {", "h2: host", ("expected a mapping such as {role: router}",)),
        ("between: [A, B]", "- between: [A, A]", ("two different nodes, got A twice",)),
        ("between: [A, B]", "- between: [A, B, C]", ("expected two node names",)),
        (
            "routers: [A]",
            "routers: [h, A]",
            ("node 'h' has role host", "router or core"),
        ),
        ("routers: [A]", "routers: []", ("at least one router or core",)),
        ("hosts: [h, h2]", "hosts: [h, h2, C]", ("node 'C' has role core", "host or")),
        ("hosts: [h, h2]", "hosts: [h, h2, h]", ("'h' is listed twice",)),
        ("cores: [C]", "cores: [A]", ("node 'A' has role router", "have role core")),
        ("cores: [C]", "cores: []", ("at least one core",)),
        ("initiator: init", "initiator: h", ("node 'h' has role host", "initiator")),
        ("acl: {", "acl: {mode: inclde, hosts: [h]}", ("unknown ACL mode 'inclde'",)),
        ("acl: {", "acl: {mode: include, hosts: [init]}", ("role initiator",)),
        (
            "acl: {",
            "acl: {mode: include, hosts: [h], serial: 0}",
            ("whole number >= 1",),
        ),
        ("acl: {", "acl: {mode: include}", ("missing required key 'hosts'",)),
    ],
)
def test_error_one_line_change(tmp_path, old, new, fragments):
    check_topology_error(tmp_path, old, new, *fragments)


@pytest.mark.parametrize(
    ("addition", "fragments"),
    [
        ("    suite: quantum\n", ("unknown suite 'quantum'", "valid: default, pq")),
        ("    strict: yes please\n", ("expected true or false",)),
        ("    key_lifetime: soon\n", ("invalid duration 'soon'",)),
        ("    trusted_routers: [h]\n", ("node 'h' has role host", "router or core")),
    ],
)
def test_error_group_option(tmp_path, addition, fragments):
    text = BASE_TOPOLOGY + addition
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, addition.strip())
    for fragment in fragments:
        assert fragment in problem.message


def test_error_dr_not_lan_router(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "    hosts: [h, h2]\n", "    hosts: [h, h2]\n    dr: B\n"
    )
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "dr: B")
    assert (
        "designated router 'B' is not one of this LAN's routers (A)" in problem.message
    )


def test_error_host_not_attached(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "hosts: [h, h2]", "hosts: [h]")
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "h2: {")
    assert "host 'h2' is not attached" in problem.message
    assert "link it to one router or core" in problem.message


def test_error_host_attached_twice(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "  - between: [init, C]\n", "  - between: [init, C]\n  - between: [h, B]\n"
    )
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "h: {")
    assert "'h' is attached 2 times (h-B, lan-A)" in problem.message


def test_error_unnamed_parallel_link(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "  - between: [B, C]\n", "  - between: [B, C]\n  - between: [C, B]\n"
    )
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "between: [C, B]")
    assert "a second link between C and B (the first is 'B-C')" in problem.message
    assert "give it a distinct name" in problem.message


def test_error_duplicate_segment_name(tmp_path):
    text = BASE_TOPOLOGY.replace(
        "  - between: [B, C]\n", "  - between: [B, C]\n    name: lan-A\n"
    )
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == line_of(text, "- name: lan-A")
    assert "the name 'lan-A' is already used" in problem.message
    assert f"line {line_of(text, 'between: [B, C]')}" in problem.message


def test_error_duplicate_group(tmp_path):
    group = BASE_TOPOLOGY[BASE_TOPOLOGY.index("  - name: G\n") :]
    text = BASE_TOPOLOGY + group
    problems = problems_of(write(tmp_path, "topology.yaml", text))

    assert [problem.path for problem in problems] == [
        "groups[1].name",
        "groups[1].address",
    ]
    assert "group name 'G' is already used" in problems[0].message
    assert "239.1.1.1 is already used by group 'G'" in problems[1].message
    assert problems[0].line == len(BASE_TOPOLOGY.splitlines()) + 1


def test_error_duplicate_key(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "h2: {", "h: {role: host}")
    problems = problems_of(write(tmp_path, "topology.yaml", text))

    duplicate = problems[0]
    assert duplicate.line == 5
    assert duplicate.path == "nodes.h"
    assert "duplicate key 'h' (first at line 4)" in duplicate.message


def test_error_yaml_syntax(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "A: {", "A: {role: router")
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.message.startswith("invalid YAML: ")
    assert "starts on line 6" in problem.message
    assert problem.line == 7


def test_error_yaml_tab_indent(tmp_path):
    text = BASE_TOPOLOGY.replace("  A: {role: router}", "\tA: {role: router}")
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert problem.line == 6
    assert "invalid YAML" in problem.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "expected a mapping of topology keys"),
        ("name: x\n", "missing required key 'nodes'"),
        ("name: x\nnodes: []\n", "expected a mapping of node names to nodes"),
        ("name: x\nnodes: {}\nlinks: {}\n", "expected a list of links"),
        ("name: x\nnodes: {}\nwhen: 2001-13-45\n", "month must be in 1..12"),
        ("name: x\nnodes: !!set {a}\n", "unsupported YAML tag"),
        ("name: x\nnodes: &n {a: *n}\n", "recursive YAML alias"),
    ],
)
def test_error_malformed_file(tmp_path, text, fragment):
    problems = problems_of(write(tmp_path, "topology.yaml", text))

    assert any(fragment in problem.message for problem in problems), problems


def test_error_missing_file(tmp_path):
    problem = only_problem(tmp_path / "absent.yaml")

    assert problem.line is None
    assert problem.message == "file not found; check the path"


def test_error_unreadable_file(tmp_path):
    problem = only_problem(tmp_path)

    assert problem.file == str(tmp_path)
    assert problem.message.startswith("failed to read the file: ")


def test_error_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    problem = only_problem(path)

    assert "not UTF-8 text" in problem.message


def test_error_nested_too_deeply(tmp_path):
    text = "name: x\nnodes: " + "[" * 2000 + "]" * 2000 + "\n"
    problem = only_problem(write(tmp_path, "topology.yaml", text))

    assert "nested too deeply" in problem.message


def test_error_too_many_nodes(tmp_path, monkeypatch):
    # a /30 has two host addresses, too few for the six nodes of the base topology
    monkeypatch.setattr(model, "AUTO_ADDRESSES", ipaddress.IPv4Network("127.1.0.0/30"))
    problem = only_problem(write(tmp_path, "topology.yaml", BASE_TOPOLOGY))

    assert problem.path == "nodes"
    assert problem.line == line_of(BASE_TOPOLOGY, "nodes:") + 1
    assert "too many nodes (6)" in problem.message
    assert "127.1.0.0/30" in problem.message
    assert "explicit address" in problem.message


def test_all_errors_collected(tmp_path):
    text = replace_line(BASE_TOPOLOGY, "between: [A, B]", "- between: [A, Bx]")
    text = replace_line(text, "address: 239.1.1.1", "address: 10.1.1.1")
    text = replace_line(text, "delay: 5ms", "delay: soon")
    text = replace_line(text, "timers: fast", "timer: fast")
    file = write(tmp_path, "topology.yaml", text)

    with pytest.raises(ValidationError) as caught:
        load_topology(file)
    error = caught.value

    assert isinstance(error, ConfigError)
    lines = [problem.line for problem in error.problems]
    assert lines == [
        line_of(text, "timer: fast"),
        line_of(text, "[A, Bx]"),
        line_of(text, "delay: soon"),
        line_of(text, "10.1.1.1"),
    ]
    assert str(error).splitlines() == [str(problem) for problem in error.problems]


# scenario errors


def check_scenario_error(
    tmp_path: Path, old: str, new: str, *fragments: str
) -> Problem:
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    text = replace_line(BASE_SCENARIO, old, new)
    file = write(tmp_path, "scenario.yaml", text)
    problems = problems_of(file)

    assert len(problems) == 1, "\n".join(str(problem) for problem in problems)
    problem = problems[0]
    assert problem.file == str(file)
    assert problem.line == line_of(text, new)
    for fragment in fragments:
        assert fragment in problem.message
    return problem


def test_error_unknown_action_lists_valid(tmp_path):
    problem = check_scenario_error(
        tmp_path,
        "node: h2,",
        "- {at: 1, action: jion, node: h2, group: G}",
        "unknown action 'jion'",
        "did you mean 'join'?",
        "valid: join, leave, send, rekey, acl_update, link_down, link_up, link_set, "
        "node_stop, node_start, wait",
    )
    assert problem.path == "timeline[1].action"


def test_error_expectation_unknown_node(tmp_path):
    problem = check_scenario_error(
        tmp_path,
        "type: holds_key",
        "- {type: holds_key, node: hh, group: G, within: 5}",
        "unknown node 'hh'",
        "define it under nodes",
        "known: h, h2, A, B, C, init",
    )
    assert problem.path == "expect[0].node"


@pytest.mark.parametrize(
    ("new", "fragments"),
    [
        ("- {at: 1, action: join, node: A, group: G}", ("role router", "host")),
        ("- {at: 1, action: join, node: init, group: G}", ("role initiator",)),
        (
            "- {at: 1, action: join, node: h2, group: H}",
            ("unknown group 'H'", "(known: G)"),
        ),
        ("- {at: -1, action: join, node: h2, group: G}", ("must not be negative",)),
        ("- {action: join, node: h2, group: G}", ("missing required key 'at'",)),
        ("- {at: 1, node: h2, group: G}", ("missing required key 'action'",)),
        (
            "- {at: 1, action: join, node: h2}",
            ("missing required key 'group' for join",),
        ),
        (
            "- {at: 1, action: join, node: h2, group: G, count: 2}",
            ("unknown key 'count'",),
        ),
        ("- {at: 1, action: send, node: A, group: G}", ("role router",)),
        ("- {at: 1, action: send, node: h, group: G, size: 70000}", ("at most 60000",)),
        (
            "- {at: 1, action: link_down, link: A-C}",
            ("unknown link or LAN 'A-C'", "B-C"),
        ),
        ("- {at: 1, action: link_set, link: A-B}", ("at least one of delay",)),
        ("- {at: 1, action: link_set, link: A-B, loss: 2}", ("invalid loss rate 2",)),
        ("- {at: 1, action: node_stop, node: X}", ("unknown node 'X'",)),
        ("- {at: 1, action: wait}", ("missing required key 'seconds'",)),
        ("- 5", ("expected a mapping such as {at: 0, action: join",)),
    ],
)
def test_error_bad_action(tmp_path, new, fragments):
    check_scenario_error(tmp_path, "node: h2,", new, *fragments)


@pytest.mark.parametrize(
    ("new", "fragments"),
    [
        (
            "- {type: holds_keys, node: h, group: G}",
            ("unknown type 'holds_keys'", "holds_key"),
        ),
        ("- {name: x}", ("missing required key 'type'", "add one of holds_key")),
        ("- {type: gkdc, node: h, group: G}", ("role host", "router or core")),
        ("- {type: denied, node: A, group: G}", ("role router",)),
        (
            "- {type: holds_key, node: h, group: G, within: -2}",
            ("must not be negative",),
        ),
        (
            "- {type: holds_key, node: h, group: G, witin: 2}",
            ("did you mean 'within'?",),
        ),
        ("- {type: event, event: drop, min: 3, max: 2}", ("max 2 is below min 3",)),
        (
            "- {type: event, event: join_denid, max: 0, min: 0}",
            ("unknown trace event 'join_denid'", "did you mean 'join_denied'"),
        ),
        ("- {type: event, node: A}", ("missing required key 'event' for event",)),
        ("- {type: received, node: h2, group: G, from: A}", ("role router",)),
        ("- {type: all_members_hold_key}", ("missing required key 'group'",)),
    ],
)
def test_error_bad_expectation(tmp_path, new, fragments):
    check_scenario_error(tmp_path, "type: holds_key", new, *fragments)


def test_error_missing_type_typo_suggests(tmp_path):
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    text = replace_line(BASE_SCENARIO, "type: holds_key", "- {typ: holds_key}")
    problems = problems_of(write(tmp_path, "scenario.yaml", text))

    assert [problem.path for problem in problems] == ["expect[0].typ"]
    assert "did you mean 'type'?" in problems[0].message


def test_error_scenario_topology_missing(tmp_path):
    text = replace_line(BASE_SCENARIO, "topology:", "topology: nowhere.yaml")
    problem = only_problem(write(tmp_path, "scenario.yaml", text))

    assert problem.line == 2
    assert problem.path == "topology"
    assert "topology file 'nowhere.yaml' not found" in problem.message
    assert "relative to the scenario file" in problem.message


def test_error_scenario_and_topology_together(tmp_path):
    topology = replace_line(BASE_TOPOLOGY, "address: 239.1.1.1", "address: 10.1.1.1")
    topology_file = write(tmp_path, "topology.yaml", topology)
    text = replace_line(
        BASE_SCENARIO, "node: h2,", "- {at: 1, action: join, node: h3, group: G}"
    )
    scenario_file = write(tmp_path, "scenario.yaml", text)
    problems = problems_of(scenario_file)

    assert [(problem.file, problem.line) for problem in problems] == [
        (str(scenario_file), line_of(text, "h3")),
        (str(topology_file), line_of(topology, "10.1.1.1")),
    ]
    assert "unknown node 'h3'" in problems[0].message
    assert "not a multicast address" in problems[1].message


def test_error_scenario_top_level(tmp_path):
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    text = BASE_SCENARIO + "ready: {timeout: 0}\nduration: -1\nseed: x\nextra: 1\n"
    problems = problems_of(write(tmp_path, "scenario.yaml", text))

    assert [problem.path for problem in problems] == [
        "ready.timeout",
        "duration",
        "seed",
        "extra",
    ]


def test_is_scenario_detection():
    assert model.is_scenario({"timeline": []})
    assert model.is_scenario({"topology": "t.yaml"})
    assert not model.is_scenario({"name": "t", "nodes": {}})
    assert not model.is_scenario(["timeline"])


# every checked-in file must stay valid

CHECKED_IN = sorted(
    path.relative_to(REPO)
    for directory in ("topologies", "scenarios")
    for path in (REPO / directory).rglob("*.yaml")
)


@pytest.mark.parametrize("relative", CHECKED_IN, ids=str)
def test_checked_in_file_valid(relative):
    loaded = load_file(REPO / relative)

    if relative.parts[0] == "scenarios":
        assert isinstance(loaded, Scenario)
    else:
        assert isinstance(loaded, Topology)


def test_checked_in_files_found():
    names = {str(path) for path in CHECKED_IN}

    assert "topologies/figure1.yaml" in names
    assert "scenarios/denied-host.yaml" in names


# garbage in: only problems come out, never another exception

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["h", "A", "C", "init", "G", "5ms", "1%", "10Mbit", "239.1.1.1"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "nodes",
                    "links",
                    "lans",
                    "groups",
                    "role",
                    "between",
                    "hosts",
                    "routers",
                    "cores",
                    "acl",
                    "mode",
                    "timeline",
                    "at",
                    "action",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_parse_yaml_never_raises(text):
    document = parse_yaml(text, "fuzz.yaml")

    for problem in document.problems:
        assert problem.file == "fuzz.yaml"
        assert problem.message


@settings(max_examples=200, deadline=None)
@given(data=yaml_values)
def test_topology_garbage_only_problems(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "topology.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    try:
        load_file(path)
    except ValidationError as error:
        assert error.problems
