"""Networks for the tree-maintenance and routing tests.

Like ``harness.build``, but every router may run link-state routing and
every node gets short timers, so that failures and repairs play out within
seconds of fake time. Links fail by an ``intercept`` that drops what
crosses them, and a router crashes by being cut off the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import networkx as nx
from harness import Network, Spec, make_acl

from node.host import make_machine
from node.machine import GroupConfig, Machine, NodeConfig, Timers
from node.pki import Directory, Identity, generate_pki

FAST = Timers(
    echo_interval=1.0,
    echo_timeout=3.0,
    pending_join_interval=1.0,
    pending_join_timeout=3.0,
    expire_pending_join=10.0,
    pending_quit_interval=1.0,
    pending_quit_retries=3,
    child_assert_expire=6.0,
    report_interval=1.0,
    report_retries=5,
    hello_interval=0.5,
    router_dead_interval=2.0,
    lsa_refresh_interval=30.0,
    membership_interval=2.0,
    membership_timeout=7.0,
)


@dataclass
class Faults:
    """Links cut in both directions and nodes cut off, applied by ``intercept``."""

    links: set[frozenset[str]] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)

    def __call__(self, delivery) -> bytes | None:
        ends = {delivery.source, delivery.destination}
        if frozenset(ends) in self.links or ends & self.nodes:
            return None
        return delivery.datagram

    def cut(self, a: str, b: str) -> None:
        self.links.add(frozenset((a, b)))

    def mend(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))


def build_network(
    spec: Spec,
    pki_dir: Path,
    routing: str = "link-state",
    timers: Timers = FAST,
    seed: int = 1,
    costs: dict[tuple[str, str], int] | None = None,
) -> Network:
    """Make one machine per node of ``spec`` and start them; return the network.

    ``costs`` sets the link cost of some router pairs, both ways.
    """
    names = sorted(spec.roles)
    addresses = {name: f"127.1.0.{i + 1}" for i, name in enumerate(names)}
    if not (pki_dir / "certs").exists():
        nodes = [(n, spec.roles[n], addresses[n]) for n in names]
        generate_pki(pki_dir, nodes, [spec.suite], now=1_800_000_000.0 - 3600)

    graph = nx.Graph()
    graph.add_nodes_from(names)
    graph.add_edges_from(spec.links)
    group = GroupConfig(
        name="G", address="239.1.1.1", cores=spec.cores,
        core_addresses=tuple(addresses[c] for c in spec.cores),
        initiator=spec.initiator, suite=spec.suite,
    )
    rng = random.Random(seed)
    directory = Directory(pki_dir)
    machines = {}
    for name in names:
        config = node_config(name, spec, graph, addresses, group, routing, timers,
                             costs or {})
        identity = Identity.load(pki_dir, name, [spec.suite])
        machines[name] = make_machine(config, identity, directory, rng.randbytes)
    network = Network(machines, addresses)
    network.faults = Faults()
    network.intercept = network.faults
    for machine in machines.values():
        machine.start(network.now)
    network.run()
    return network


def node_config(
    name: str,
    spec: Spec,
    graph: nx.Graph,
    addresses: dict[str, str],
    group: GroupConfig,
    routing: str,
    timers: Timers,
    costs: dict[tuple[str, str], int],
) -> NodeConfig:
    role = spec.roles[name]
    neighbours = {addresses[n]: n for n in graph.neighbors(name)}
    routes = {}
    if role in ("router", "core"):
        paths = nx.single_source_shortest_path(graph, name)
        for target, path in paths.items():
            if len(path) > 1:
                routes[addresses[target]] = addresses[path[1]]
    gateway = None
    if role in ("host", "initiator"):
        gateway = next(iter(graph.neighbors(name)), None)
    if role == "initiator":
        group = replace(group, acl=make_acl(spec))
    link_costs = {}
    for (a, b), cost in costs.items():
        if name in (a, b):
            link_costs[b if a == name else a] = cost
    return NodeConfig(
        name=name, role=role, address=addresses[name], groups=(group,),
        neighbours=neighbours, routes=routes, gateway=gateway, timers=timers,
        routing=routing if role in ("router", "core") else "static",
        link_costs=link_costs,
    )


def restart(net: Network, name: str, pki_dir: Path, seed: int = 99) -> Machine:
    """Replace ``name``'s machine by a fresh one from the same config."""
    old = net.machines[name]
    identity = Identity.load(pki_dir, name, [old.config.groups[0].suite])
    rng = random.Random(seed)
    machine = make_machine(old.config, identity, Directory(pki_dir), rng.randbytes)
    net.machines[name] = machine
    machine.start(net.now)
    net.run()
    return machine
