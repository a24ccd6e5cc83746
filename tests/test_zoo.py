"""Tests for smkd.zoo: Topology Zoo GML files -> smkd topology mappings."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import ConfigError
from smkd import zoo

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "topologies" / "zoo"
ABILENE = ZOO / "Abilene.gml"
GEANT = ZOO / "Geant2012.gml"
COGENT = ZOO / "Cogentco.gml"

# the checked-in files and the options that generate them
CHECKED_IN_OPTIONS = ["--hosts-per-router", "1", "--outside-acl", "1"]
GENERATED = {
    "abilene.yaml": ("topologies/zoo/Abilene.gml", CHECKED_IN_OPTIONS),
    "geant2012.yaml": ("topologies/zoo/Geant2012.gml", CHECKED_IN_OPTIONS),
}

HAS_MODEL = importlib.util.find_spec("smkd.model") is not None


def gml(nodes: str, edges: str = "", header: str = "") -> str:
    return f"graph [\n{header}\n{nodes}\n{edges}\n]\n"


def node(node_id: int, label: str | None = None, lat=None, lon=None) -> str:
    parts = [f"id {node_id}"]
    if label is not None:
        parts.append(f'label "{label}"')
    if lat is not None:
        parts.append(f"Latitude {lat}")
    if lon is not None:
        parts.append(f"Longitude {lon}")
    return f"node [ {' '.join(parts)} ]\n"


def edge(source: int, target: int, extra: str = "") -> str:
    return f"edge [ source {source} target {target} {extra} ]\n"


def write(tmp_path: Path, text: str, name: str = "net.gml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def pop_links(topology: dict[str, Any]) -> list[dict[str, Any]]:
    """Links between PoPs, without the initiator's link."""
    return [
        link for link in topology["links"] if zoo.INITIATOR not in link["between"]
    ]


def routers(topology: dict[str, Any]) -> list[str]:
    return [
        name
        for name, attrs in topology["nodes"].items()
        if attrs["role"] in ("router", "core")
    ]


def delay_ms(link: dict[str, Any]) -> float:
    assert link["delay"].endswith("ms")
    return float(link["delay"][:-2])


def link_between(topology: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    for link in topology["links"]:
        if set(link["between"]) == {a, b}:
            return link
    raise AssertionError(f"no link between {a} and {b}")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smkd")
    zoo.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


# Abilene: every PoP has coordinates


def test_abilene_routers_and_links():
    result = zoo.convert_zoo(ABILENE)

    assert len(routers(result.topology)) == 11
    assert len(pop_links(result.topology)) == 14
    assert result.report.routers == 11
    assert result.report.links == 14
    assert result.report.merged_edges == 0
    assert result.report.dropped_nodes == ()


def test_abilene_delays_from_coordinates():
    result = zoo.convert_zoo(ABILENE)

    assert result.report.default_delay_links == ()
    new_york_chicago = link_between(result.topology, "New-York", "Chicago")
    assert delay_ms(new_york_chicago) == pytest.approx(5.73, abs=0.05)


def test_great_circle_new_york_chicago():
    new_york = (40.71427, -74.00597)
    chicago = (41.85003, -87.65005)

    distance = zoo.great_circle_km(new_york, chicago)

    assert distance == pytest.approx(1145, abs=5)
    assert zoo.propagation_delay_ms(distance) == pytest.approx(5.7, abs=0.05)


def test_abilene_cores_by_closeness():
    topology = zoo.import_zoo(ABILENE)

    graph = nx.Graph()
    for link in pop_links(topology):
        graph.add_edge(*link["between"], delay=delay_ms(link))
    closeness = nx.closeness_centrality(graph, distance="delay")
    expected = sorted(graph, key=lambda name: (-closeness[name], name))[:2]

    cores = topology["groups"][0]["cores"]
    assert cores == expected
    assert [topology["nodes"][core]["role"] for core in cores] == ["core", "core"]
    assert link_between(topology, zoo.INITIATOR, cores[0])["delay"] == "0.1ms"


def test_abilene_core_count():
    topology = zoo.import_zoo(ABILENE, core_count=3)

    cores = topology["groups"][0]["cores"]
    assert len(cores) == 3
    assert cores[:2] == zoo.import_zoo(ABILENE)["groups"][0]["cores"]


def test_abilene_group_and_hosts():
    topology = zoo.import_zoo(ABILENE)

    group = topology["groups"][0]
    hosts = [n for n, a in topology["nodes"].items() if a["role"] == "host"]
    assert len(hosts) == 11
    assert "h-New-York-1" in hosts
    assert group["name"] == "G"
    assert group["address"] == "239.1.1.1"
    assert group["initiator"] == "init"
    assert group["suite"] == "default"
    assert group["acl"]["mode"] == "include"
    assert group["acl"]["hosts"] == sorted(hosts)
    assert topology["timers"] == "fast"
    assert topology["name"] == "abilene"


def test_abilene_lan_per_router():
    topology = zoo.import_zoo(ABILENE, hosts_per_router=2)

    lans = {lan["name"]: lan for lan in topology["lans"]}
    assert len(lans) == 11
    lan = lans["lan-Chicago"]
    assert lan["routers"] == ["Chicago"]
    assert lan["dr"] == "Chicago"
    assert lan["hosts"] == ["h-Chicago-1", "h-Chicago-2"]
    assert lan["delay"] == "0.1ms"


def test_import_is_deterministic():
    first = zoo.convert_zoo(COGENT)
    second = zoo.convert_zoo(COGENT)

    assert first.topology == second.topology
    assert first.header_comment() == second.header_comment()


# Geant2012: three PoPs without coordinates


def test_geant_default_delay_for_missing_coordinates():
    result = zoo.convert_zoo(GEANT, zoo.ImportOptions(default_delay_ms=7.5))

    no_coordinates = {"UA", "MD", "BY"}
    for link in pop_links(result.topology):
        touches = bool(no_coordinates & set(link["between"]))
        assert (link["delay"] == "7.500ms") is touches, link

    expected = sorted(
        link["name"]
        for link in pop_links(result.topology)
        if no_coordinates & set(link["between"])
    )
    assert sorted(result.report.default_delay_links) == expected
    assert len(expected) >= 3


def test_geant_header_counts_default_delays():
    result = zoo.convert_zoo(GEANT)

    count = len(result.report.default_delay_links)
    assert f"{count} links use the default 5.0 ms" in result.header_comment()


def test_geant_bandwidth_from_link_speed():
    topology = zoo.import_zoo(GEANT)

    bandwidths = {link["name"]: link.get("bandwidth") for link in pop_links(topology)}
    assert "10Gbit" in bandwidths.values()
    assert "2500Mbit" in bandwidths.values()
    assert None in bandwidths.values()


def test_geant_norway_label_stays_a_string(tmp_path):
    # "NO" is a YAML 1.1 boolean unless quoted
    result = zoo.convert_zoo(GEANT)
    out = tmp_path / "geant.yaml"

    zoo.dump_topology(result.topology, out, result.header_comment())

    loaded = yaml.safe_load(out.read_text())
    assert "NO" in loaded["nodes"]


# Cogentco: parallel edges and repeated labels


def test_cogent_parallel_edges_merged():
    result = zoo.convert_zoo(COGENT)

    edges = COGENT.read_text().count("edge [")
    assert result.report.edges == edges
    assert result.report.links == len(pop_links(result.topology))
    assert result.report.merged_edges == edges - result.report.links
    assert result.report.merged_edges > 0
    pairs = [frozenset(link["between"]) for link in pop_links(result.topology)]
    assert len(pairs) == len(set(pairs))


def test_cogent_labels_deduplicated():
    topology = zoo.import_zoo(COGENT)

    names = routers(topology)
    assert len(names) == 197
    assert len(set(names)) == 197
    assert "None" in names
    assert "None-2" in names
    assert "None-11" in names
    assert "None-12" not in names


# synthetic GML files


def test_no_coordinates_uses_default_delay(tmp_path):
    path = write(tmp_path, gml(node(1, "A") + node(2, "B"), edge(1, 2)))

    result = zoo.convert_zoo(path, zoo.ImportOptions(default_delay_ms=3.25))

    assert [link["delay"] for link in pop_links(result.topology)] == ["3.250ms"]
    assert result.report.default_delay_links == ("A-B",)


def test_one_end_without_coordinates(tmp_path):
    nodes = node(1, "A", 10.0, 10.0) + node(2, "B")
    path = write(tmp_path, gml(nodes, edge(1, 2)))

    topology = zoo.import_zoo(path)

    assert pop_links(topology)[0]["delay"] == "5.000ms"


def test_no_labels_named_by_id(tmp_path):
    path = write(tmp_path, gml(node(7) + node(12), edge(7, 12)))

    topology = zoo.import_zoo(path)

    assert routers(topology) == ["n7", "n12"]
    assert pop_links(topology)[0]["name"] == "n7-n12"


def test_labels_sanitised(tmp_path):
    nodes = (
        node(1, "New York")
        + node(2, "Z&#252;rich")
        + node(3, "St. Louis (MO)")
        + node(4, "!!!")
    )
    path = write(tmp_path, gml(nodes, edge(1, 2) + edge(2, 3) + edge(3, 4)))

    topology = zoo.import_zoo(path)

    assert routers(topology) == ["New-York", "Zurich", "St.-Louis-MO", "n4"]


def test_long_label_truncated(tmp_path):
    path = write(tmp_path, gml(node(1, "x" * 100) + node(2, "y" * 100), edge(1, 2)))

    topology = zoo.import_zoo(path, hosts_per_router=12)

    names = list(topology["nodes"])
    names += [link["name"] for link in topology["links"]]
    names += [lan["name"] for lan in topology["lans"]]
    assert max(len(name) for name in names) <= 64
    assert len(set(names)) == len(names)


def test_duplicate_labels_keep_literal_labels(tmp_path):
    nodes = node(1, "X") + node(2, "X") + node(3, "X-2") + node(4, "init")
    edges = edge(1, 2) + edge(2, 3) + edge(3, 4)
    path = write(tmp_path, gml(nodes, edges))

    topology = zoo.import_zoo(path)

    assert routers(topology) == ["X", "X-3", "X-2", "init-2"]
    assert topology["nodes"]["init"] == {"role": "initiator"}


def test_disconnected_keeps_largest_component(tmp_path):
    nodes = "".join(node(i, f"P{i}") for i in range(1, 7))
    edges = edge(1, 2) + edge(3, 4) + edge(4, 5) + edge(5, 3)
    path = write(tmp_path, gml(nodes, edges))

    result = zoo.convert_zoo(path, zoo.ImportOptions(core_count=1))

    assert routers(result.topology) == ["P3", "P4", "P5"]
    assert result.report.dropped_nodes == ("P1", "P2", "P6")
    assert result.report.dropped_edges == 1
    assert "dropped: P1, P2, P6" in result.header_comment()


def test_equal_components_keep_first_in_file(tmp_path):
    nodes = "".join(node(i, f"P{i}") for i in range(1, 5))
    path = write(tmp_path, gml(nodes, edge(3, 4) + edge(1, 2)))

    topology = zoo.import_zoo(path, core_count=1)

    assert routers(topology) == ["P1", "P2"]


def test_multigraph_flag_merges_parallel_edges(tmp_path):
    edges = edge(1, 2) + edge(2, 1) + edge(1, 2) + edge(2, 3)
    nodes = node(1, "A") + node(2, "B") + node(3, "C")
    path = write(tmp_path, gml(nodes, edges, header="multigraph 1"))

    result = zoo.convert_zoo(path)

    assert result.report.edges == 4
    assert result.report.merged_edges == 2
    assert len(pop_links(result.topology)) == 2


def test_directed_graph_merges_both_directions(tmp_path):
    nodes = node(1, "A") + node(2, "B")
    path = write(tmp_path, gml(nodes, edge(1, 2) + edge(2, 1), header="directed 1"))

    result = zoo.convert_zoo(path, zoo.ImportOptions(core_count=1))

    assert len(pop_links(result.topology)) == 1
    assert result.report.merged_edges == 1


def test_self_loops_dropped(tmp_path):
    nodes = node(1, "A") + node(2, "B")
    path = write(tmp_path, gml(nodes, edge(1, 1) + edge(1, 2)))

    result = zoo.convert_zoo(path)

    assert result.report.self_loops == 1
    assert [link["between"] for link in pop_links(result.topology)] == [["A", "B"]]


def test_parallel_link_speeds_summed(tmp_path):
    speed = "LinkSpeedRaw 10000000000.0"
    edges = edge(1, 2, speed) + edge(1, 2, speed) + edge(2, 3, "LinkSpeedRaw 1500")
    nodes = node(1, "A") + node(2, "B") + node(3, "C")
    path = write(tmp_path, gml(nodes, edges))

    topology = zoo.import_zoo(path)

    assert link_between(topology, "A", "B")["bandwidth"] == "20Gbit"
    assert link_between(topology, "B", "C")["bandwidth"] == 1500


def test_single_router(tmp_path):
    path = write(tmp_path, gml(node(1, "A")))

    topology = zoo.import_zoo(path, core_count=1)

    assert topology["groups"][0]["cores"] == ["A"]
    assert [link["between"] for link in topology["links"]] == [["init", "A"]]


def test_link_name_clash_gets_suffix(tmp_path):
    # A + B-C and A-B + C both spell A-B-C
    nodes = node(1, "A") + node(2, "B-C") + node(3, "A-B") + node(4, "C")
    path = write(tmp_path, gml(nodes, edge(1, 2) + edge(3, 4) + edge(2, 3)))

    topology = zoo.import_zoo(path)

    names = [link["name"] for link in topology["links"]]
    assert "A-B-C" in names
    assert "A-B-C-2" in names
    assert len(set(names)) == len(names)


# named cores


def test_named_cores_by_label_and_name():
    topology = zoo.import_zoo(ABILENE, cores=["Washington DC", "Denver"])

    group = topology["groups"][0]
    assert group["cores"] == ["Washington-DC", "Denver"]
    assert topology["nodes"]["Washington-DC"]["role"] == "core"
    assert topology["nodes"]["Denver"]["role"] == "core"
    assert topology["nodes"]["Kansas-City"]["role"] == "router"
    assert link_between(topology, "init", "Washington-DC")["delay"] == "0.1ms"


def test_named_core_not_found_suggests():
    with pytest.raises(ConfigError) as error:
        zoo.import_zoo(ABILENE, cores=["Chicgo"])

    assert "'Chicgo' not found" in str(error.value)
    assert "Chicago" in str(error.value)


def test_named_core_ambiguous_label(tmp_path):
    nodes = node(1, "New York") + node(2, "New York") + node(3, "Boston")
    path = write(tmp_path, gml(nodes, edge(1, 2) + edge(2, 3)))

    with pytest.raises(ConfigError, match="matches 2 nodes") as error:
        zoo.import_zoo(path, cores=["New York"])

    assert "New-York, New-York-2" in str(error.value)


def test_named_core_generated_name_before_label():
    # eleven Cogentco PoPs carry the label None, but only one is named None
    topology = zoo.import_zoo(COGENT, cores=["None", "None-2"])

    assert topology["groups"][0]["cores"] == ["None", "None-2"]


def test_named_core_outside_largest_component(tmp_path):
    nodes = "".join(node(i, f"P{i}") for i in range(1, 5))
    path = write(tmp_path, gml(nodes, edge(1, 2) + edge(2, 3)))

    with pytest.raises(ConfigError, match="not in the largest connected component"):
        zoo.import_zoo(path, cores=["P4"])


def test_named_core_twice():
    with pytest.raises(ConfigError, match="named twice"):
        zoo.import_zoo(ABILENE, cores=["Denver", "Denver"])


# hosts and the ACL


def test_outside_acl_excludes_last_hosts():
    topology = zoo.import_zoo(ABILENE, outside_acl=2)

    hosts = sorted(n for n, a in topology["nodes"].items() if a["role"] == "host")
    acl = topology["groups"][0]["acl"]["hosts"]
    assert acl == hosts[:-2]
    assert set(hosts) - set(acl) == {"h-Sunnyvale-1", "h-Washington-DC-1"}


def test_outside_acl_reported():
    result = zoo.convert_zoo(ABILENE, zoo.ImportOptions(outside_acl=1))

    assert result.report.outside_acl_hosts == ("h-Washington-DC-1",)
    assert "h-Washington-DC-1" in result.header_comment()


def test_zero_hosts_per_router():
    topology = zoo.import_zoo(ABILENE, hosts_per_router=0)

    assert "lans" not in topology
    roles = {attrs["role"] for attrs in topology["nodes"].values()}
    assert roles == {"router", "core", "initiator"}
    assert topology["groups"][0]["acl"]["hosts"] == []


def test_suite_and_name_options():
    topology = zoo.import_zoo(ABILENE, suite="pq", name="us-backbone", timers="cbtv1")

    assert topology["groups"][0]["suite"] == "pq"
    assert topology["name"] == "us-backbone"
    assert topology["timers"] == "cbtv1"


# errors


def test_error_file_not_found(tmp_path):
    with pytest.raises(ConfigError, match="GML file not found: .*missing.gml"):
        zoo.import_zoo(tmp_path / "missing.gml")


def test_error_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot read GML file"):
        zoo.import_zoo(tmp_path)


def test_error_not_gml_names_line(tmp_path):
    path = write(tmp_path, "graph [\n  node [ id 1 ]\n  node [ id ; ]\n]\n")

    with pytest.raises(ConfigError) as error:
        zoo.import_zoo(path)

    assert f"{path}:3: invalid GML" in str(error.value)


def test_error_unbalanced_brackets(tmp_path):
    path = write(tmp_path, "graph [\n  node [ id 1\n")

    with pytest.raises(ConfigError, match="invalid GML"):
        zoo.import_zoo(path)


def test_error_yaml_instead_of_gml(tmp_path):
    path = write(tmp_path, "name: x\nnodes: {}\n")

    with pytest.raises(ConfigError, match="invalid GML"):
        zoo.import_zoo(path)


def test_error_binary_file(tmp_path):
    path = tmp_path / "image.gml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")

    with pytest.raises(ConfigError, match="invalid GML"):
        zoo.import_zoo(path)


def test_error_deeply_nested(tmp_path):
    path = write(tmp_path, "graph [ " + "a [ " * 5000 + "]" * 5000 + " ]")

    with pytest.raises(ConfigError, match="nested too deeply"):
        zoo.import_zoo(path)


def test_error_node_not_a_block(tmp_path):
    path = write(tmp_path, "graph [\n  node 5\n]\n")

    with pytest.raises(ConfigError, match="not a valid GML graph"):
        zoo.import_zoo(path)


def test_error_edge_to_unknown_node(tmp_path):
    path = write(tmp_path, gml(node(1, "A"), edge(1, 9)))

    with pytest.raises(ConfigError, match="undefined target 9"):
        zoo.import_zoo(path)


def test_error_no_nodes(tmp_path):
    path = write(tmp_path, "graph [\n  label \"empty\"\n]\n")

    with pytest.raises(ConfigError, match="no nodes"):
        zoo.import_zoo(path)


def test_error_negative_hosts_per_router():
    with pytest.raises(ConfigError, match="hosts_per_router must be an integer >= 0"):
        zoo.import_zoo(ABILENE, hosts_per_router=-1)


def test_error_outside_acl_too_large():
    with pytest.raises(ConfigError, match="outside_acl 12 exceeds the 11 hosts"):
        zoo.import_zoo(ABILENE, outside_acl=12)


def test_error_outside_acl_without_hosts():
    with pytest.raises(ConfigError, match="outside_acl 1 exceeds the 0 hosts"):
        zoo.import_zoo(ABILENE, hosts_per_router=0, outside_acl=1)


def test_error_address_space_exceeded(tmp_path):
    path = write(tmp_path, gml(node(1, "A") + node(2, "B"), edge(1, 2)))

    with pytest.raises(ConfigError, match="65,000") as error:
        zoo.import_zoo(path, hosts_per_router=40_000)

    assert "80003 nodes" in str(error.value)


def test_address_space_limit_is_inclusive(tmp_path):
    # 2 routers + 2 * 32,499 hosts + init = 65,001, one too many
    path = write(tmp_path, gml(node(1, "A") + node(2, "B"), edge(1, 2)))

    with pytest.raises(ConfigError, match="65001 nodes"):
        zoo.import_zoo(path, hosts_per_router=32_499)


def test_error_core_count_too_large():
    with pytest.raises(ConfigError, match="core_count 12 exceeds the 11 routers"):
        zoo.import_zoo(ABILENE, core_count=12)


def test_error_core_count_zero():
    with pytest.raises(ConfigError, match="core_count must be an integer >= 1"):
        zoo.import_zoo(ABILENE, core_count=0)


def test_error_empty_cores():
    with pytest.raises(ConfigError, match="cores is empty"):
        zoo.import_zoo(ABILENE, cores=[])


def test_error_unknown_suite():
    with pytest.raises(ConfigError, match="unknown suite 'rsa'"):
        zoo.import_zoo(ABILENE, suite="rsa")


def test_error_invalid_name():
    with pytest.raises(ConfigError, match="invalid topology name 'a b'"):
        zoo.import_zoo(ABILENE, name="a b")


def test_error_negative_default_delay():
    with pytest.raises(ConfigError, match="default_delay_ms"):
        zoo.import_zoo(ABILENE, default_delay_ms=-1.0)


GML_VALUES = ["1", "2.5", "-200", "NAN", "INF", '"a"', '"None"', '"init"', '"x y"',
              '"&#252;"', '""', "[ ]", "[ a 1 ]"]
NAME_RE = r"[A-Za-z0-9_.-]{1,64}"


@st.composite
def gml_documents(draw) -> str:
    """Small GML graphs with arbitrary ids, labels, coordinates and edges."""
    value = st.sampled_from(GML_VALUES)
    lines = ["graph ["]
    if draw(st.booleans()):
        lines.append(f"multigraph {draw(st.sampled_from(['0', '1']))}")
    for node_id in range(draw(st.integers(0, 5))):
        keys = draw(st.lists(st.sampled_from(["label", "Latitude", "Longitude"])))
        attrs = " ".join(f"{key} {draw(value)}" for key in keys)
        lines.append(f"node [ id {node_id} {attrs} ]")
    for _ in range(draw(st.integers(0, 6))):
        source, target = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        speed = f"LinkSpeedRaw {draw(value)}" if draw(st.booleans()) else ""
        lines.append(f"edge [ source {source} target {target} {speed} ]")
    lines.append("]")
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=gml_documents(), hosts=st.integers(0, 2))
def test_any_gml_gives_consistent_topology_or_config_error(
    tmp_path_factory, text, hosts
):
    path = tmp_path_factory.mktemp("gml") / "g.gml"
    path.write_text(text)

    try:
        topology = zoo.import_zoo(path, core_count=1, hosts_per_router=hosts)
    except ConfigError:
        return

    nodes = topology["nodes"]
    link_names = [link["name"] for link in topology["links"]]
    link_names += [lan["name"] for lan in topology.get("lans", [])]
    assert all(re.fullmatch(NAME_RE, name) for name in [*nodes, *link_names])
    assert len(set(link_names)) == len(link_names)
    for link in topology["links"]:
        assert set(link["between"]) <= set(nodes)
        assert link["between"][0] != link["between"][1]
    assert topology["groups"][0]["cores"][0] in nodes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.sampled_from(list('graphnodeidedgesource []"#1x\n'))))
def test_garbage_raises_config_error_only(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("garbage") / "g.gml"
    path.write_text(text)

    try:
        topology = zoo.import_zoo(path, core_count=1)
    except ConfigError:
        return
    assert topology["nodes"]


# output


def test_dump_topology_round_trip(tmp_path):
    result = zoo.convert_zoo(ABILENE)
    out = tmp_path / "abilene.yaml"

    zoo.dump_topology(result.topology, out, result.header_comment())

    text = out.read_text()
    assert yaml.safe_load(text) == result.topology
    header = text.split("\nname:")[0].splitlines()
    assert all(line.startswith("#") for line in header)
    assert max(len(line) for line in header) <= 88


def test_header_credits_source_and_options():
    result = zoo.convert_zoo(ABILENE, zoo.ImportOptions(outside_acl=1))

    header = " ".join(result.header_comment().split())
    assert "The Internet Topology Zoo" in header
    assert "Knight" in header
    assert "CC BY 4.0" in header
    assert "Abilene.gml" in header
    assert "hosts_per_router=1" in header
    assert "outside_acl=1" in header
    assert "/work" not in header


def test_format_bandwidth_units():
    assert zoo.format_bandwidth(10_000_000_000) == "10Gbit"
    assert zoo.format_bandwidth(2_500_000_000) == "2500Mbit"
    assert zoo.format_bandwidth(512_000) == "512kbit"
    assert zoo.format_bandwidth(1500) == 1500


# command line


def test_cli_writes_stdout(capsys):
    code = run_cli(["import-zoo", str(ABILENE), "--outside-acl", "1"])

    out, err = capsys.readouterr()
    assert code == 0
    assert yaml.safe_load(out)["name"] == "abilene"
    assert err.startswith("abilene: 11 routers, 14 links")
    assert "cores Kansas-City, Indianapolis" in err
    assert "0 links with the default delay" in err


def test_cli_writes_output_file(tmp_path, capsys):
    out = tmp_path / "g.yaml"

    code = run_cli(
        ["import-zoo", str(GEANT), "-o", str(out), "--cores", "DE, UK",
         "--hosts-per-router", "2", "--name", "geant", "--suite", "pq"]
    )

    stdout, err = capsys.readouterr()
    assert code == 0
    assert stdout == ""
    topology = yaml.safe_load(out.read_text())
    assert topology["groups"][0]["cores"] == ["DE", "UK"]
    assert topology["groups"][0]["suite"] == "pq"
    assert len(topology["lans"][0]["hosts"]) == 2
    assert "3 links with the default delay" in err


def test_cli_bad_input_exit_2(tmp_path, capsys):
    code = run_cli(["import-zoo", str(tmp_path / "none.gml")])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "error: GML file not found" in err


def test_cli_unknown_core_exit_2(capsys):
    code = run_cli(["import-zoo", str(ABILENE), "--cores", "Chicgo"])

    _, err = capsys.readouterr()
    assert code == 2
    assert "did you mean Chicago" in err


def test_cli_unwritable_output_exit_2(tmp_path, capsys):
    code = run_cli(["import-zoo", str(ABILENE), "-o", str(tmp_path / "no/such.yaml")])

    _, err = capsys.readouterr()
    assert code == 2
    assert "cannot write" in err


# checked-in files


@pytest.mark.parametrize("target", sorted(GENERATED))
def test_checked_in_file_is_current(target, tmp_path, monkeypatch, capsys):
    source, options = GENERATED[target]
    monkeypatch.chdir(REPO)
    out = tmp_path / target

    assert run_cli(["import-zoo", source, "-o", str(out), *options]) == 0

    assert out.read_text() == (REPO / "topologies" / target).read_text()


def test_zoo_copies_match_readme():
    readme = (ZOO / "README.md").read_text()

    for path in (ABILENE, GEANT, COGENT):
        assert path.name in readme


@pytest.mark.skipif(not HAS_MODEL, reason="smkd.model is not written yet")
@pytest.mark.parametrize("target", sorted(GENERATED))
def test_checked_in_file_validates(target):
    from smkd.model import load_topology

    topology = load_topology(REPO / "topologies" / target)

    assert len(topology.groups["G"].cores) == 2


@pytest.mark.skipif(not HAS_MODEL, reason="smkd.model is not written yet")
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hosts_per_router": 0},
        {"hosts_per_router": 2, "outside_acl": 3, "core_count": 3},
    ],
)
@pytest.mark.parametrize("source", [ABILENE, GEANT, COGENT])
def test_generated_topology_validates(source, options, tmp_path):
    from smkd.model import load_topology

    result = zoo.convert_zoo(source, zoo.ImportOptions(**options))
    out = tmp_path / "t.yaml"
    zoo.dump_topology(result.topology, out, result.header_comment())

    topology = load_topology(out)

    assert len(topology.nodes) == len(result.topology["nodes"])


@pytest.mark.skipif(not HAS_MODEL, reason="smkd.model is not written yet")
@pytest.mark.parametrize(
    "nodes, edges",
    [
        (node(1, "A"), ""),
        (node(1, "A", 1.0, 1.0) + node(2, "B", 1.0, 1.0), edge(1, 2)),
        (
            node(1, "A") + node(2, "B-C") + node(3, "A-B") + node(4, "C")
            + node(5, "init"),
            edge(1, 2) + edge(3, 4) + edge(2, 3) + edge(5, 1),
        ),
        (node(1, "x" * 100) + node(2, "y" * 100), edge(1, 2)),
    ],
    ids=["single-router", "zero-delay", "name-clashes", "long-labels"],
)
def test_edge_case_topology_validates(nodes, edges, tmp_path):
    from smkd.model import load_topology

    path = write(tmp_path, gml(nodes, edges))
    result = zoo.convert_zoo(path, zoo.ImportOptions(core_count=1, hosts_per_router=3))
    out = tmp_path / "t.yaml"
    zoo.dump_topology(result.topology, out, result.header_comment())

    topology = load_topology(out)

    assert set(topology.nodes) == set(result.topology["nodes"])
