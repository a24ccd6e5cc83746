"""Turn a validated topology into a run directory: PKI and one config per node.

Run directory layout::

    pki/                 CA, node certificates and node keys
    configs/NAME.json    each agent's config (paths relative to configs/)
    traces/NAME.jsonl    each agent's event trace
    captures/SEG.pcap    one capture per link or LAN, unicast.pcap for the rest
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from node.errors import ConfigError
from node.pki import generate_pki

from .model import Group, Lan, Link, Topology

ROUTER_ROLES = ("router", "core")

# a tiny per-hop cost so that equal-delay paths prefer fewer hops
HOP_COST = 1e-6


def prepare_pki(topology: Topology, run_dir: Path, now: float | None = None) -> Path:
    pki_dir = run_dir / "pki"
    if now is None:
        now = time.time()
    suites = sorted({group.suite for group in topology.groups.values()} | {"default"})
    nodes = [(n.name, n.role, n.address) for n in topology.nodes.values()]
    # valid from an hour ago, so that small clock differences do not matter
    generate_pki(pki_dir, nodes, suites, now=now - 3600, validity_seconds=30 * 86_400)
    return pki_dir


@dataclass(frozen=True)
class LinkAddressing:
    """Interface addresses for backends where every node has real interfaces.

    Each link or LAN gets its own /24 from 10.0.0.0/8, in topology order, and
    its members get .2, .3, ... in member order (.1 is left for a container
    network's gateway). Identity addresses stay as the topology assigns them.
    """

    subnets: dict[str, ipaddress.IPv4Network]
    addresses: dict[tuple[str, str], str]

    MAX_MEMBERS = 250

    @classmethod
    def assign(cls, topology: Topology) -> LinkAddressing:
        subnets = {}
        addresses = {}
        for index, segment in enumerate([*topology.links, *topology.lans]):
            members = segment_members(segment)
            if len(members) > cls.MAX_MEMBERS:
                raise ConfigError(
                    f"{segment.name} has {len(members)} members; backends with real "
                    f"interfaces take at most {cls.MAX_MEMBERS} per link or LAN"
                )
            subnet = ipaddress.IPv4Network((10 << 24 | index << 8, 24))
            subnets[segment.name] = subnet
            for offset, member in enumerate(members, start=2):
                addresses[(member, segment.name)] = str(subnet.network_address + offset)
        return cls(subnets, addresses)

    def interfaces(self, node: str) -> dict[str, str]:
        """Return segment name -> this node's address on it."""
        return {
            seg: addr for (name, seg), addr in self.addresses.items() if name == node
        }

    def reach(self, graph: nx.Graph, node: str, peer: str) -> str:
        """Return the address at which ``node`` reaches ``peer``.

        That is the peer's address on a segment they share, or else the
        peer's address on its first segment, reached through kernel routes.
        """
        if graph.has_edge(node, peer):
            segment = graph.edges[node, peer]["segment"]
            return self.addresses[(peer, segment)]
        return next(iter(self.interfaces(peer).values()))


def write_node_configs(
    topology: Topology,
    run_dir: Path,
    seed: int,
    control_dir: Path,
    now: float | None = None,
    port: int = 7777,
    addressing: LinkAddressing | None = None,
    agent_captures: bool = True,
) -> dict[str, Path]:
    """Write every node's agent config; return node name -> config path.

    Without ``addressing`` every node uses its identity address on loopback
    (the local backend). With it, nodes bind every interface and reach peers
    at their link addresses. ``agent_captures`` makes agents write the pcaps,
    for backends that cannot run tcpdump on an interface.
    """
    if now is None:
        now = time.time()
    configs_dir = run_dir / "configs"
    configs_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "traces").mkdir(exist_ok=True)
    (run_dir / "captures").mkdir(exist_ok=True)

    graph = topology.graph()
    routes = compute_routes(topology, graph, addressing)
    paths = {}
    for name in topology.nodes:
        document = node_config(
            topology, graph, name, routes.get(name, {}), seed, control_dir, now, port
        )
        if addressing is not None:
            _use_link_addresses(document, topology, graph, addressing)
        if not agent_captures:
            for link in document["links"]:
                link["capture"] = None
            document["unicast_capture"] = None
        path = configs_dir / f"{name}.json"
        path.write_text(json.dumps(document, indent=1))
        paths[name] = path
    return paths


def _use_link_addresses(
    document: dict, topology: Topology, graph: nx.Graph, addressing: LinkAddressing
) -> None:
    name = document["name"]
    peers = set(graph.neighbors(name))
    for group in topology.groups.values():
        # the initiator's ACL upload and a sender's key exchange travel end to
        # end to the cores, so every node needs each core's link address and
        # every core needs each node's
        peers.update(topology.nodes if name in group.cores else group.cores)
    peers.discard(name)
    document["bind"] = "0.0.0.0"
    document["interfaces"] = addressing.interfaces(name)
    document["neighbours"] = {
        addressing.reach(graph, name, n): n for n in sorted(graph.neighbors(name))
    }
    document["peer_addresses"] = {
        p: addressing.reach(graph, name, p) for p in sorted(peers)
    }
    for link in document["links"]:
        link["peers"] = {
            addressing.addresses[(peer, link["name"])]: peer
            for peer in link["peers"].values()
        }


def compute_routes(
    topology: Topology,
    graph: nx.Graph | None = None,
    addressing: LinkAddressing | None = None,
) -> dict[str, dict[str, str]]:
    """Return, per router or core, destination address -> next hop address.

    Destinations are identity addresses. The next hop is the neighbour's
    identity address, or its link address when ``addressing`` is given.
    Routes use shortest paths by link delay over routers and cores only:
    hosts never forward.
    """
    if graph is None:
        graph = topology.graph()
    transit = graph.subgraph(
        n for n, data in graph.nodes(data=True) if data["role"] in ROUTER_ROLES
    )
    address = {n.name: n.address for n in topology.nodes.values()}
    routes: dict[str, dict[str, str]] = {}
    for source in transit.nodes:
        paths = nx.single_source_dijkstra_path(
            transit, source, weight=lambda a, b, d: d["delay"] + HOP_COST
        )
        routes[source] = {
            address[target]: (
                addressing.reach(graph, source, path[1])
                if addressing
                else address[path[1]]
            )
            for target, path in paths.items()
            if len(path) > 1
        }
    return routes


def node_config(
    topology: Topology,
    graph: nx.Graph,
    name: str,
    routes: dict[str, str],
    seed: int,
    control_dir: Path,
    now: float,
    port: int,
) -> dict[str, Any]:
    node = topology.nodes[name]
    neighbours = {topology.nodes[n].address: n for n in sorted(graph.neighbors(name))}
    suites = sorted({g.suite for g in topology.groups.values()} | {"default"})
    routing = topology.routing if node.role in ROUTER_ROLES else "static"
    return {
        "name": name,
        "role": node.role,
        "address": node.address,
        "port": port,
        "pki": "../pki",
        "suites": suites,
        "groups": [_group(topology, g, name, now) for g in topology.groups.values()],
        "neighbours": neighbours,
        "routes": routes,
        "routing": routing,
        "link_costs": link_costs(graph, name),
        "gateway": _gateway(topology, name),
        "token_window": topology.token_window,
        "timers": asdict(topology.timers),
        "links": _links(topology, name),
        "trace": f"../traces/{name}.jsonl",
        "control": str(control_dir / f"{name}.sock"),
        "unicast_capture": "../captures/unicast.pcap",
        "seed": seed,
    }


def link_costs(graph: nx.Graph, name: str) -> dict[str, int]:
    """Return the link-state cost of each neighbour: its delay in us, plus one.

    The extra unit per hop makes equal-delay paths prefer fewer hops, as
    ``compute_routes`` does.
    """
    return {
        peer: round(graph.edges[name, peer]["delay"] * 1_000_000) + 1
        for peer in sorted(graph.neighbors(name))
    }


def _group(topology: Topology, group: Group, name: str, now: float) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": group.name,
        "address": group.address,
        "cores": list(group.cores),
        "core_addresses": [topology.nodes[c].address for c in group.cores],
        "initiator": group.initiator,
        "suite": group.suite,
    }
    if name == group.initiator:
        acl = group.acl
        document["acl"] = {
            "mode": acl.mode,
            "hosts": list(acl.hosts),
            "serial": acl.serial,
            # a minute of slack for clocks that differ between nodes
            "not_before": int(now) - 60,
            "not_after": int(now + acl.validity),
            "key_lifetime": int(group.key_lifetime),
            "strict": group.strict,
            "central": group.central,
            "trusted_routers": (
                list(group.trusted_routers)
                if group.trusted_routers is not None
                else None
            ),
        }
    return document


def _gateway(topology: Topology, name: str) -> str | None:
    if topology.nodes[name].role in ROUTER_ROLES:
        return None
    for lan in topology.lans:
        if name in lan.hosts:
            return lan.dr
    for link in topology.links:
        if name in (link.a, link.b):
            return link.b if link.a == name else link.a
    return None


def _links(topology: Topology, name: str) -> list[dict[str, Any]]:
    links = []
    for segment in [*topology.links, *topology.lans]:
        peers = segment_peers(topology, segment, name)
        if not peers:
            continue
        impairment = segment.impairment_from(name)
        links.append(
            {
                "name": segment.name,
                "peers": {topology.nodes[p].address: p for p in peers},
                "egress": {
                    "delay": impairment.delay,
                    "jitter": impairment.jitter,
                    "loss": impairment.loss,
                    "bandwidth": impairment.bandwidth,
                },
                "capture": f"../captures/{segment.name}.pcap",
            }
        )
    return links


def segment_peers(topology: Topology, segment: Link | Lan, name: str) -> list[str]:
    """Return the nodes that ``name`` talks to directly over ``segment``."""
    if isinstance(segment, Link):
        if name == segment.a:
            return [segment.b]
        if name == segment.b:
            return [segment.a]
        return []
    members = segment.routers + segment.hosts
    if name not in members:
        return []
    if name in segment.routers:
        return [m for m in members if m != name]
    return list(segment.routers)


def segment_members(segment: Link | Lan) -> tuple[str, ...]:
    if isinstance(segment, Link):
        return (segment.a, segment.b)
    return segment.routers + segment.hosts
