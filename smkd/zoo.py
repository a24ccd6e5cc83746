"""Convert Internet Topology Zoo GML files into smkd topology YAML.

The Topology Zoo (Knight, Nguyen, Falkner, Bowden, Roughan, "The Internet
Topology Zoo", IEEE JSAC 29(9), 2011) publishes operator networks as GML, one
node per point of presence (PoP). Each PoP becomes a router, each PoP pair with
at least one edge becomes a link, and the importer adds hosts, an initiator and
one group so that the result runs as a scenario topology.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import math
import os
import re
import sys
import textwrap
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from node.errors import ConfigError

# propagation speed of light in fibre, about two thirds of c
PROPAGATION_KM_PER_S = 200_000.0

# mean Earth radius (IUGG), for the haversine great-circle distance
EARTH_RADIUS_KM = 6371.0088

# the model gives every node an address from 127.1.0.0/16 (65,534 addresses)
MAX_NODES = 65_000

MAX_NAME = 64

# short enough that h-<router>-<k> and lan-<router> stay within MAX_NAME
MAX_ROUTER_NAME = 48

INITIATOR = "init"
GROUP_NAME = "G"
GROUP_ADDRESS = "239.1.1.1"
LAN_DELAY = "0.1ms"
INITIATOR_DELAY = "0.1ms"
SUITES = ("default", "pq")
TIMER_PROFILES = ("cbtv1", "fast")

CITATION = (
    "S. Knight, H. X. Nguyen, N. Falkner, R. Bowden and M. Roughan, "
    '"The Internet Topology Zoo", IEEE Journal on Selected Areas in '
    "Communications 29(9), 2011. Data licensed CC BY 4.0."
)

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_GML_POSITION_RE = re.compile(r"at \((\d+), (\d+)\)")


@dataclass(frozen=True)
class ImportOptions:
    """The options of one import, as passed to `import_zoo`."""

    hosts_per_router: int = 1
    cores: tuple[str, ...] | None = None
    core_count: int = 2
    default_delay_ms: float = 5.0
    outside_acl: int = 0
    suite: str = "default"
    name: str | None = None
    timers: str = "fast"


@dataclass(frozen=True)
class ImportReport:
    """Counts and choices of one import, for the header comment and the summary."""

    source: str
    name: str
    options: ImportOptions
    routers: int
    edges: int  # in the GML file, self-loops and parallel edges included
    links: int  # between PoPs, without the initiator's link
    merged_edges: int  # parallel edges folded into an earlier edge
    self_loops: int
    dropped_nodes: tuple[str, ...]  # generated names, outside the largest component
    dropped_edges: int  # edges between dropped nodes
    default_delay_links: tuple[str, ...]
    cores: tuple[str, ...]
    cores_named: bool
    hosts: tuple[str, ...]
    outside_acl_hosts: tuple[str, ...]


@dataclass(frozen=True)
class ZooImport:
    """A converted topology: the YAML-ready mapping and its import report."""

    topology: dict[str, Any]
    report: ImportReport

    def header_comment(self) -> str:
        return header_comment(self.report)


@dataclass(frozen=True)
class _Pop:
    index: int
    node_id: Hashable
    label: str | None
    name: str
    position: tuple[float, float] | None  # (latitude, longitude) in degrees


@dataclass
class _Link:
    a: _Pop
    b: _Pop
    edges: int = 0
    bandwidth: int | None = None
    name: str = ""
    delay_ms: float = 0.0
    default_delay: bool = False


@dataclass
class _Names:
    """A namespace that hands out unique names, adding -2, -3, ... on a clash."""

    taken: set[str] = field(default_factory=set)
    limit: int = MAX_NAME

    def claim(self, base: str) -> str:
        candidate = base[: self.limit]
        for number in itertools.count(2):
            if candidate not in self.taken:
                break
            suffix = f"-{number}"
            candidate = base[: self.limit - len(suffix)] + suffix

        self.taken.add(candidate)
        return candidate


def import_zoo(
    gml_path: str | os.PathLike[str],
    *,
    hosts_per_router: int = 1,
    cores: Sequence[str] | None = None,
    core_count: int = 2,
    default_delay_ms: float = 5.0,
    outside_acl: int = 0,
    suite: str = "default",
    name: str | None = None,
    timers: str = "fast",
) -> dict[str, Any]:
    """Convert a Topology Zoo GML file into a YAML-ready smkd topology mapping.

    Raises ConfigError for a missing or invalid file and for invalid options.
    `convert_zoo` takes the same arguments and also returns the import report.
    """
    options = ImportOptions(
        hosts_per_router=hosts_per_router,
        cores=None if cores is None else tuple(cores),
        core_count=core_count,
        default_delay_ms=default_delay_ms,
        outside_acl=outside_acl,
        suite=suite,
        name=name,
        timers=timers,
    )
    return convert_zoo(gml_path, options).topology


def convert_zoo(
    gml_path: str | os.PathLike[str], options: ImportOptions | None = None
) -> ZooImport:
    """Convert a Topology Zoo GML file and report what the conversion did.

    Raises ConfigError for a missing or invalid file and for invalid options.
    """
    options = options or ImportOptions()
    _check_options(options)
    path = Path(gml_path)
    graph = _read_gml(path)
    if graph.number_of_nodes() == 0:
        raise ConfigError(
            f"{path}: the GML graph has no nodes; pass a Topology Zoo file that "
            "lists its PoPs as node [ ... ] entries"
        )

    pops = _pops(graph)
    links, merged, self_loops = _merge_edges(graph, pops)
    component, dropped = _largest_component(pops, links)
    component_indexes = {pop.index for pop in component}
    component_links = [link for link in links if link.a.index in component_indexes]
    _check_size(len(component), options.hosts_per_router)

    _set_delays(component_links, options.default_delay_ms)
    _name_links(component_links)
    if options.cores is not None:
        core_pops = _resolve_cores(options.cores, pops, component, path)
    else:
        core_pops = _closest_pops(component, component_links, options.core_count)

    name = options.name or _default_name(path)
    builder = _TopologyBuilder(name, _description(graph, path), options)
    topology = builder.build(component, component_links, core_pops)
    report = ImportReport(
        source=_display_path(path),
        name=name,
        options=options,
        routers=len(component),
        edges=graph.number_of_edges(),
        links=len(component_links),
        merged_edges=merged,
        self_loops=self_loops,
        dropped_nodes=tuple(pop.name for pop in dropped),
        dropped_edges=_edge_total(links) - _edge_total(component_links),
        default_delay_links=tuple(
            link.name for link in component_links if link.default_delay
        ),
        cores=tuple(pop.name for pop in core_pops),
        cores_named=options.cores is not None,
        hosts=tuple(builder.hosts),
        outside_acl_hosts=tuple(builder.outside_acl_hosts),
    )
    return ZooImport(topology, report)


def _edge_total(links: Iterable[_Link]) -> int:
    # self-loops are not in any link, so they are not counted here
    return sum(link.edges for link in links)


def _check_options(options: ImportOptions) -> None:
    _check_count("hosts_per_router", options.hosts_per_router, minimum=0)
    _check_count("outside_acl", options.outside_acl, minimum=0)
    if options.cores is None:
        _check_count("core_count", options.core_count, minimum=1)
    elif not options.cores:
        raise ConfigError("cores is empty; name at least one core or omit cores")

    delay = options.default_delay_ms
    if not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
        raise ConfigError(
            f"default_delay_ms must be a finite number of milliseconds >= 0, "
            f"got {delay!r}"
        )
    if options.suite not in SUITES:
        raise ConfigError(
            f"unknown suite {options.suite!r}; use one of {', '.join(SUITES)}"
        )
    if options.timers not in TIMER_PROFILES:
        raise ConfigError(
            f"unknown timers profile {options.timers!r}; "
            f"use one of {', '.join(TIMER_PROFILES)}"
        )
    if options.name is not None and not _NAME_RE.fullmatch(options.name):
        raise ConfigError(
            f"invalid topology name {options.name!r}; use 1 to 64 characters "
            "from A-Z, a-z, 0-9, '_', '.' and '-'"
        )


def _check_count(option: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{option} must be an integer >= {minimum}, got {value!r}"
        )


# reading GML


def _read_gml(path: Path) -> nx.MultiGraph | nx.MultiDiGraph:
    """Parse a GML file into a multigraph, so that parallel edges always load.

    Topology Zoo files list parallel edges without the `multigraph 1` flag
    that networkx needs to accept them, so the flag is added before parsing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"GML file not found: {path}; check the path"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"cannot read GML file {path}: {error.strerror or error}; "
            "pass a readable file"
        ) from None

    # networkx 3.x reads GML as ASCII with HTML entities; other exporters write
    # UTF-8 or Latin-1, and Latin-1 decodes any byte string
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")

    try:
        return nx.parse_gml(_flag_multigraph(text), label=None)
    except nx.NetworkXError as error:
        raise ConfigError(_gml_error_message(path, str(error))) from None
    except RecursionError:
        raise ConfigError(
            f"{path}: invalid GML: brackets nested too deeply to parse; "
            "pass a Topology Zoo GML file"
        ) from None
    except (AttributeError, TypeError, ValueError, KeyError) as error:
        # networkx assumes node and edge entries are mappings of hashable ids
        raise ConfigError(
            f"{path}: not a valid GML graph ({type(error).__name__}: {error}); "
            "check that graph, node and edge entries are [ ... ] blocks"
        ) from None


def _flag_multigraph(text: str) -> str:
    """Insert `multigraph 1` right after the first `graph [`, on the same line.

    Quoted strings and comments are skipped, and line numbers stay as they are
    in the file, so that parse errors point at the right line.
    """
    pattern = re.compile(r'"[^"]*"|#[^\n]*|\bgraph\s*\[')
    for match in pattern.finditer(text):
        if match.group().startswith("graph"):
            return f"{text[: match.end()]} multigraph 1 {text[match.end():]}"

    return text


def _gml_error_message(path: Path, detail: str) -> str:
    detail = detail.splitlines()[0] if detail else "unknown error"
    if len(detail) > 200:
        detail = detail[:200] + "..."

    position = _GML_POSITION_RE.search(detail)
    where = f"{path}:{position.group(1)}" if position else str(path)
    return (
        f"{where}: invalid GML: {detail}; pass a Topology Zoo GML file "
        "(graph [ node [ id ... ] edge [ source ... target ... ] ])"
    )


# PoPs and their names


def _pops(graph: nx.Graph) -> dict[Hashable, _Pop]:
    """Name every GML node in file order, so that names do not depend on edges."""
    entries = list(graph.nodes(data=True))
    labels = [_label(attrs) for _, attrs in entries]
    bases = [
        _sanitise(label) if label is not None else "" for label in labels
    ]
    bases = [
        base or _sanitise(f"n{node_id}") or "n"
        for base, (node_id, _) in zip(bases, entries)
    ]

    # a label's first holder keeps it, so later duplicates never take a real label
    names = _Names(set(bases) | {INITIATOR}, limit=MAX_ROUTER_NAME)
    first_holders: set[str] = set()
    pops: dict[Hashable, _Pop] = {}
    for index, ((node_id, attrs), label, base) in enumerate(
        zip(entries, labels, bases)
    ):
        if base in first_holders or base == INITIATOR:
            name = names.claim(base)
        else:
            name = base
            first_holders.add(base)
        pops[node_id] = _Pop(index, node_id, label, name, _position(attrs))

    return pops


def _label(attrs: Mapping[str, Any]) -> str | None:
    label = attrs.get("label")
    if label is None or isinstance(label, (dict, list)):
        return None
    return str(label)


def _sanitise(text: str) -> str:
    """Turn a label into a name: ASCII only, spaces to '-', other characters dropped."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore")
    name = re.sub(r"\s+", "-", ascii_text.decode("ascii").strip())
    name = re.sub(r"[^A-Za-z0-9_.-]", "", name)
    return name[:MAX_ROUTER_NAME]


def _position(attrs: Mapping[str, Any]) -> tuple[float, float] | None:
    latitude = _coordinate(attrs.get("Latitude"), 90.0)
    longitude = _coordinate(attrs.get("Longitude"), 180.0)
    if latitude is None or longitude is None:
        return None
    return latitude, longitude


def _coordinate(value: object, bound: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or abs(value) > bound:
        return None
    return float(value)


# links


def _merge_edges(
    graph: nx.Graph, pops: Mapping[Hashable, _Pop]
) -> tuple[list[_Link], int, int]:
    """Fold the GML edges into one link per PoP pair.

    Returns the links in PoP order, the number of edges merged into an earlier
    edge between the same pair, and the number of self-loops dropped.
    """
    links: dict[tuple[int, int], _Link] = {}
    merged = 0
    self_loops = 0
    for source, target, attrs in graph.edges(data=True):
        if source == target:
            self_loops += 1
            continue

        a, b = sorted((pops[source], pops[target]), key=lambda pop: pop.index)
        link = links.get((a.index, b.index))
        if link is None:
            link = links[(a.index, b.index)] = _Link(a, b)
        else:
            merged += 1

        link.edges += 1
        speed = _link_speed(attrs)
        if speed is not None:
            # parallel circuits add capacity, so stated speeds are summed
            link.bandwidth = (link.bandwidth or 0) + speed

    return [links[key] for key in sorted(links)], merged, self_loops


def _link_speed(attrs: Mapping[str, Any]) -> int | None:
    speed = attrs.get("LinkSpeedRaw")
    if isinstance(speed, bool) or not isinstance(speed, (int, float)):
        return None
    if not math.isfinite(speed) or speed < 1:
        return None
    return round(speed)


def _largest_component(
    pops: Mapping[Hashable, _Pop], links: Sequence[_Link]
) -> tuple[list[_Pop], list[_Pop]]:
    """Split the PoPs into the largest connected component and the rest.

    Of two components of equal size the one with the earlier PoP in the file wins.
    """
    graph = nx.Graph()
    graph.add_nodes_from(pop.index for pop in pops.values())
    graph.add_edges_from((link.a.index, link.b.index) for link in links)
    largest = max(
        nx.connected_components(graph),
        key=lambda component: (len(component), -min(component)),
    )

    ordered = sorted(pops.values(), key=lambda pop: pop.index)
    component = [pop for pop in ordered if pop.index in largest]
    dropped = [pop for pop in ordered if pop.index not in largest]
    return component, dropped


def _check_size(routers: int, hosts_per_router: int) -> None:
    nodes = routers * (1 + hosts_per_router) + 1
    if nodes > MAX_NODES:
        raise ConfigError(
            f"the topology would have {nodes} nodes ({routers} routers, "
            f"{hosts_per_router} hosts per router and the initiator), more than "
            f"the {MAX_NODES:,} that the address space holds; "
            "lower hosts_per_router or import a smaller network"
        )


def _set_delays(links: Iterable[_Link], default_delay_ms: float) -> None:
    for link in links:
        if link.a.position is None or link.b.position is None:
            link.delay_ms = round(float(default_delay_ms), 3)
            link.default_delay = True
        else:
            distance = great_circle_km(link.a.position, link.b.position)
            link.delay_ms = round(propagation_delay_ms(distance), 3)


def great_circle_km(
    origin: tuple[float, float], destination: tuple[float, float]
) -> float:
    """Return the haversine distance in km between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*origin, *destination))
    half_chord = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(half_chord)))


def propagation_delay_ms(distance_km: float) -> float:
    return distance_km / PROPAGATION_KM_PER_S * 1000.0


def _name_links(links: Iterable[_Link]) -> None:
    # link and LAN names share one namespace, and links claim theirs first
    names = _Names()
    for link in links:
        link.name = names.claim(f"{link.a.name}-{link.b.name}")


# cores


def _resolve_cores(
    requested: Sequence[str],
    pops: Mapping[Hashable, _Pop],
    component: Sequence[_Pop],
    path: Path,
) -> list[_Pop]:
    """Find each named core by generated name, then by GML label."""
    component_indexes = {pop.index for pop in component}
    cores: list[_Pop] = []
    for core in requested:
        pop = _find_pop(core.strip(), pops, path)
        if pop.index not in component_indexes:
            raise ConfigError(
                f"core {core!r} ({pop.name}) is not in the largest connected "
                f"component of {path}, so it is dropped; name a core from the "
                "largest component"
            )
        if pop in cores:
            raise ConfigError(
                f"core {core!r} ({pop.name}) is named twice; name each core once"
            )
        cores.append(pop)

    return cores


def _find_pop(core: str, pops: Mapping[Hashable, _Pop], path: Path) -> _Pop:
    by_name = {pop.name: pop for pop in pops.values()}
    if core in by_name:
        return by_name[core]

    by_label = [pop for pop in pops.values() if pop.label == core]
    if len(by_label) == 1:
        return by_label[0]
    if len(by_label) > 1:
        choices = ", ".join(pop.name for pop in by_label)
        raise ConfigError(
            f"core {core!r} matches {len(by_label)} nodes with that label in "
            f"{path}; name one by its generated name: {choices}"
        )

    labels = {pop.label for pop in pops.values() if pop.label}
    candidates = sorted(set(by_name) | labels)
    close = difflib.get_close_matches(core, candidates, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "no close match"
    raise ConfigError(
        f"core {core!r} not found in {path} ({hint}); name a node by its "
        "label or its generated router name"
    )


def _closest_pops(
    component: Sequence[_Pop], links: Sequence[_Link], core_count: int
) -> list[_Pop]:
    """Rank PoPs by closeness centrality over link delay and take the first ones.

    Ties go to the smaller name. CBT puts cores near the centre of the network
    so that join paths, and the branches they build, stay short.
    """
    if core_count > len(component):
        raise ConfigError(
            f"core_count {core_count} exceeds the {len(component)} routers in the "
            f"largest connected component; use a core_count of 1 to {len(component)}"
        )

    graph = nx.Graph()
    graph.add_nodes_from(pop.name for pop in component)
    for link in links:
        graph.add_edge(link.a.name, link.b.name, delay=link.delay_ms)
    closeness = nx.closeness_centrality(graph, distance="delay")

    # rounding keeps float noise from deciding ties between equal delays
    def rank(pop: _Pop) -> tuple[float, str]:
        return -round(closeness[pop.name], 9), pop.name

    return sorted(component, key=rank)[:core_count]


# the topology mapping


class _TopologyBuilder:
    """Assemble the YAML mapping: routers, links, LANs, hosts, initiator, group."""

    def __init__(self, name: str, description: str, options: ImportOptions):
        self.name = name
        self.description = description
        self.options = options
        self.hosts: list[str] = []
        self.outside_acl_hosts: list[str] = []

    def build(
        self, pops: Sequence[_Pop], links: Sequence[_Link], cores: Sequence[_Pop]
    ) -> dict[str, Any]:
        core_names = [pop.name for pop in cores]
        node_names = _Names({pop.name for pop in pops} | {INITIATOR})
        link_names = _Names({link.name for link in links})

        nodes: dict[str, dict[str, str]] = {}
        for pop in pops:
            nodes[pop.name] = {"role": "core" if pop.name in core_names else "router"}
        lans = self._lans(pops, nodes, node_names, link_names)
        nodes[INITIATOR] = {"role": "initiator"}

        link_entries = [_link_entry(link) for link in links]
        link_entries.append(
            {
                "between": [INITIATOR, core_names[0]],
                "name": link_names.claim(f"{INITIATOR}-{core_names[0]}"),
                "delay": INITIATOR_DELAY,
            }
        )

        topology: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "timers": self.options.timers,
            "nodes": nodes,
            "links": link_entries,
        }
        if lans:
            topology["lans"] = lans
        topology["groups"] = [self._group(core_names)]
        return topology

    def _lans(
        self,
        pops: Sequence[_Pop],
        nodes: dict[str, dict[str, str]],
        node_names: _Names,
        link_names: _Names,
    ) -> list[dict[str, Any]]:
        lans: list[dict[str, Any]] = []
        if self.options.hosts_per_router == 0:
            return lans

        for pop in pops:
            hosts = [
                node_names.claim(f"h-{pop.name}-{k}")
                for k in range(1, self.options.hosts_per_router + 1)
            ]
            for host in hosts:
                nodes[host] = {"role": "host"}
            self.hosts.extend(hosts)
            lans.append(
                {
                    "name": link_names.claim(f"lan-{pop.name}"),
                    "routers": [pop.name],
                    "hosts": hosts,
                    "dr": pop.name,
                    "delay": LAN_DELAY,
                }
            )

        return lans

    def _group(self, core_names: list[str]) -> dict[str, Any]:
        outside = self.options.outside_acl
        if outside > len(self.hosts):
            raise ConfigError(
                f"outside_acl {outside} exceeds the {len(self.hosts)} hosts; "
                f"use a value from 0 to {len(self.hosts)} or raise hosts_per_router"
            )

        # the last hosts in name order stay off the ACL for "denied" scenarios
        by_name = sorted(self.hosts)
        split = len(by_name) - outside
        self.outside_acl_hosts = by_name[split:]
        return {
            "name": GROUP_NAME,
            "address": GROUP_ADDRESS,
            "cores": core_names,
            "initiator": INITIATOR,
            "acl": {
                "mode": "include",
                "hosts": by_name[:split],
                "serial": 1,
                "validity": "1d",
            },
            "suite": self.options.suite,
        }


def _link_entry(link: _Link) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "between": [link.a.name, link.b.name],
        "name": link.name,
        "delay": f"{link.delay_ms:.3f}ms",
    }
    if link.bandwidth is not None:
        entry["bandwidth"] = format_bandwidth(link.bandwidth)
    return entry


def format_bandwidth(bits_per_second: int) -> str | int:
    """Format bits/s with the largest unit that divides it, else as a number."""
    for unit, scale in (("Gbit", 10**9), ("Mbit", 10**6), ("kbit", 10**3)):
        if bits_per_second % scale == 0:
            return f"{bits_per_second // scale}{unit}"
    return bits_per_second


def _default_name(path: Path) -> str:
    name = _sanitise(path.stem).lower()[:MAX_NAME]
    return name or "zoo"


def _description(graph: nx.Graph, path: Path) -> str:
    network = str(graph.graph.get("Network") or graph.graph.get("label") or "")
    network = network.strip() or path.stem
    date = str(graph.graph.get("NetworkDate") or "").strip()
    when = f" ({date})" if date else ""
    return f"{network}{when} from the Internet Topology Zoo, file {path.name}"


def _display_path(path: Path) -> str:
    # an absolute path would leak the importing machine's layout into the file
    return path.name if path.is_absolute() else path.as_posix()


# output


def header_comment(report: ImportReport) -> str:
    """Write the header for a generated file: source, credit, options, decisions."""
    options = report.options
    cores_option = ",".join(options.cores) if options.cores else "auto"
    if report.cores_named:
        core_rule = "named with --cores"
    else:
        core_rule = "highest closeness centrality over link delay"
    dropped = ", ".join(report.dropped_nodes) or "none"
    lines = [
        f"Generated by smkd import-zoo from {report.source}.",
        f"Source data: {CITATION}",
        f"Options: hosts_per_router={options.hosts_per_router} cores={cores_option} "
        f"core_count={options.core_count} default_delay_ms={options.default_delay_ms} "
        f"outside_acl={options.outside_acl} suite={options.suite} "
        f"timers={options.timers} name={report.name}",
        f"Routers: {report.routers}, one per PoP. Links: {report.links} from "
        f"{report.edges} GML edges ({report.merged_edges} parallel edges merged, "
        f"{report.self_loops} self-loops dropped, {report.dropped_edges} edges "
        "outside the largest component dropped).",
        "Delay: great-circle distance at 200,000 km/s. "
        f"{len(report.default_delay_links)} links use the default "
        f"{options.default_delay_ms} ms because an end has no coordinates.",
        f"Nodes outside the largest connected component, dropped: {dropped}.",
        f"Cores ({core_rule}, primary first): {', '.join(report.cores)}.",
        f"Hosts outside the ACL of {GROUP_NAME}: "
        f"{', '.join(report.outside_acl_hosts) or 'none'}.",
    ]
    return "\n".join(lines)


def summary_line(report: ImportReport) -> str:
    """Summarise an import on one line for the command's output."""
    return (
        f"{report.name}: {report.routers} routers, {report.links} links "
        f"({report.merged_edges} parallel edges merged, {report.self_loops} "
        f"self-loops and {report.dropped_edges} edges outside the largest "
        f"component dropped), {len(report.dropped_nodes)} nodes dropped, "
        f"{len(report.hosts)} hosts, cores {', '.join(report.cores)}, "
        f"{len(report.default_delay_links)} links with the default delay"
    )


def format_topology(mapping: Mapping[str, Any], header_comment: str) -> str:
    """Render a topology mapping as YAML under a '#' comment header."""
    header = "".join(
        f"# {line}".rstrip() + "\n" for line in _wrap_lines(header_comment)
    )
    body = yaml.safe_dump(
        mapping, sort_keys=False, default_flow_style=None, width=88
    )
    return header + body


def _wrap_lines(text: str) -> list[str]:
    # "# " and the 88-column limit leave 86 columns per line
    lines: list[str] = []
    for paragraph in text.splitlines():
        wrapped = textwrap.wrap(paragraph, width=86, subsequent_indent="  ")
        lines.extend(wrapped or [""])
    return lines


def dump_topology(
    mapping: Mapping[str, Any],
    path: str | os.PathLike[str],
    header_comment: str,
) -> None:
    """Write a topology mapping as YAML to `path`, under a '#' comment header."""
    Path(path).write_text(format_topology(mapping, header_comment), encoding="utf-8")


# command line


def add_parser(subparsers: Any) -> None:
    """Register the import-zoo subcommand, with `run_import_zoo` as its handler."""
    parser = subparsers.add_parser(
        "import-zoo",
        help="convert a Topology Zoo GML file into a topology YAML file",
        description=(
            "Convert an Internet Topology Zoo GML file into an smkd topology: "
            "one router per PoP, links with great-circle delays, hosts on a LAN "
            "per router, an initiator and one group G. A one-line summary goes "
            "to stderr."
        ),
    )
    parser.add_argument("gml", metavar="GML", help="Topology Zoo GML file to convert")
    parser.add_argument(
        "-o", "--output", metavar="OUT.yaml",
        help="topology file to write (default: standard output)",
    )

    # hosts and cores
    parser.add_argument(
        "--hosts-per-router", type=int, default=1, metavar="N",
        help="hosts on each router's LAN; 0 adds no LANs (default: 1)",
    )
    parser.add_argument(
        "--cores", metavar="A,B",
        help="comma-separated cores, primary first, by GML label or generated "
        "name (default: chosen by closeness centrality)",
    )
    parser.add_argument(
        "--core-count", type=int, default=2, metavar="N",
        help="number of cores chosen by closeness centrality (default: 2)",
    )

    # links and the group
    parser.add_argument(
        "--default-delay", type=float, default=5.0, metavar="MS",
        help="delay in ms of links with an end that has no coordinates "
        "(default: 5.0)",
    )
    parser.add_argument(
        "--outside-acl", type=int, default=0, metavar="N",
        help="number of hosts, last in name order, left off the ACL (default: 0)",
    )
    parser.add_argument(
        "--suite", choices=SUITES, default="default",
        help="crypto suite of group G (default: default)",
    )
    parser.add_argument(
        "--name", metavar="NAME",
        help="topology name (default: the GML file name, lowercased)",
    )

    parser.set_defaults(handler=run_import_zoo)


def run_import_zoo(args: argparse.Namespace) -> int:
    """Run import-zoo from parsed arguments; return 0 on success, 2 on bad input."""
    cores = None
    if args.cores is not None:
        cores = tuple(part.strip() for part in args.cores.split(",") if part.strip())
    options = ImportOptions(
        hosts_per_router=args.hosts_per_router,
        cores=cores,
        core_count=args.core_count,
        default_delay_ms=args.default_delay,
        outside_acl=args.outside_acl,
        suite=args.suite,
        name=args.name,
    )

    try:
        result = convert_zoo(args.gml, options)
        text = format_topology(result.topology, result.header_comment())
        if args.output is None:
            sys.stdout.write(text)
        else:
            Path(args.output).write_text(text, encoding="utf-8")
    except ConfigError as error:
        print(f"smkd import-zoo: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"smkd import-zoo: error: cannot write {args.output}: "
            f"{error.strerror or error}; pass a writable path to -o",
            file=sys.stderr,
        )
        return 2

    print(summary_line(result.report), file=sys.stderr)
    return 0
