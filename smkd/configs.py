"""Turn a validated topology into a run directory: PKI and one config per node.

Run directory layout::

    pki/                 CA, node certificates and node keys
    configs/NAME.json    each agent's config (paths relative to configs/)
    traces/NAME.jsonl    each agent's event trace
    captures/SEG.pcap    one capture per link or LAN, unicast.pcap for the rest
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import networkx as nx

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
    generate_pki(pki_dir, nodes, suites, now=now - 3600,
                 validity_seconds=30 * 86_400)
    return pki_dir


def write_node_configs(
    topology: Topology,
    run_dir: Path,
    seed: int,
    control_dir: Path,
    now: float | None = None,
    port: int = 7777,
) -> dict[str, Path]:
    """Write every node's agent config; return node name -> config path."""
    if now is None:
        now = time.time()
    configs_dir = run_dir / "configs"
    configs_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "traces").mkdir(exist_ok=True)
    (run_dir / "captures").mkdir(exist_ok=True)

    graph = topology.graph()
    routes = compute_routes(topology, graph)
    paths = {}
    for name in topology.nodes:
        document = node_config(topology, graph, name, routes.get(name, {}), seed,
                               control_dir, now, port)
        path = configs_dir / f"{name}.json"
        path.write_text(json.dumps(document, indent=1))
        paths[name] = path
    return paths


def compute_routes(
    topology: Topology, graph: nx.Graph | None = None
) -> dict[str, dict[str, str]]:
    """Return, per router or core, destination address -> next hop address.

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
            address[target]: address[path[1]]
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
        "gateway": _gateway(topology, name),
        "token_window": topology.token_window,
        "timers": asdict(topology.timers),
        "links": _links(topology, name),
        "trace": f"../traces/{name}.jsonl",
        "control": str(control_dir / f"{name}.sock"),
        "unicast_capture": "../captures/unicast.pcap",
        "seed": seed,
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
            "trusted_routers": (
                list(group.trusted_routers) if group.trusted_routers is not None else None
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
        impairment = segment.impairment
        links.append({
            "name": segment.name,
            "peers": {topology.nodes[p].address: p for p in peers},
            "egress": {
                "delay": impairment.delay,
                "jitter": impairment.jitter,
                "loss": impairment.loss,
                "bandwidth": impairment.bandwidth,
            },
            "capture": f"../captures/{segment.name}.pcap",
        })
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
