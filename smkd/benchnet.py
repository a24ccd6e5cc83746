"""The networks of ``smkd bench``: Topology Zoo imports placed, keyed and split.

A bench network is a Topology Zoo import with hosts on a LAN at every router
but the cores, moved to a free loopback block, with its PKI and agent configs
written once and shared by the three modes. Each mode gets its own copy of
the initiator's config, and the nodes are split over worker processes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import random
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import SmkdError

from .backends.local import PORT
from .benchagents import JOINS_PER_TURN, WorkerSpec
from .configs import prepare_pki, write_node_configs
from .model import Topology, load_topology
from .zoo import ImportOptions, convert_zoo, format_topology, header_comment

ZOO_DIR = Path(__file__).resolve().parent.parent / "topologies" / "zoo"
TOPOLOGIES = {
    "abilene": "Abilene.gml",
    "geant2012": "Geant2012.gml",
    "cogentco": "Cogentco.gml",
}
# one ACL entry admits every host the importer names, so the signed ACL in
# every join-ack stays small however many hosts there are
HOST_PATTERN = "h-*"

# CBT version 1 timers: the report repeats every 5 s and a DR retransmits a
# join every 5 s, so a run under load shows the protocol's own retries
TIMER_PROFILE = "cbtv1"

# the first 127.k.0.0/16 block the bench tries for its agents' addresses
FIRST_BLOCK = 101


class BenchError(SmkdError):
    """A benchmark run could not be carried out."""


class AddressInUse(BenchError):
    """An agent could not bind its address: another process took it."""


@dataclass(frozen=True)
class BenchNetwork:
    """One generated topology with its PKI and agent configs, shared by the modes."""

    name: str
    target_hosts: int
    directory: Path
    topology: Topology
    configs: dict[str, Path]
    hosts_per_router: int

    @property
    def hosts(self) -> list[str]:
        return [n.name for n in self.topology.nodes.values() if n.role == "host"]

    @property
    def routers(self) -> list[str]:
        roles = ("router", "core")
        return [n.name for n in self.topology.nodes.values() if n.role in roles]

    @property
    def primary_core(self) -> str:
        return next(iter(self.topology.groups.values())).cores[0]


def build_network(name: str, target_hosts: int, out: Path, seed: int) -> BenchNetwork:
    """Import a Topology Zoo network with about ``target_hosts`` hosts, ready to run.

    Hosts sit on a LAN at every router except the cores, so the primary core's
    load is its key distribution work alone. Each of those routers gets the
    same number of hosts, rounded up, so a run has at least ``target_hosts``.
    """
    gml = ZOO_DIR / TOPOLOGIES[name]
    bare = convert_zoo(gml, ImportOptions(hosts_per_router=0, name=name))
    with_hosts = bare.report.routers - len(bare.report.cores)
    per_router = max(1, math.ceil(target_hosts / with_hosts))
    options = ImportOptions(
        hosts_per_router=per_router, name=f"{name}-{target_hosts}", timers=TIMER_PROFILE
    )
    imported = convert_zoo(gml, options)
    mapping = _without_core_hosts(imported.topology, imported.report.cores)
    # fixed shortest-path routes: no routing messages add to the load, and
    # joins need not wait for link-state routing to converge
    mapping["routing"] = "static"

    directory = out / "runs" / f"{name}-{target_hosts}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "topology.yaml"
    comment = header_comment(imported.report) + (
        "\nsmkd bench removed the hosts of the cores' LANs, set static routing "
        "and lists no host in the ACL; the initiator's agent config admits "
        f"{HOST_PATTERN}."
    )
    path.write_text(format_topology(mapping, comment), encoding="utf-8")

    topology = place(load_topology(path))
    # the certificates carry the addresses, so a new placement needs a new PKI
    shutil.rmtree(directory / "pki", ignore_errors=True)
    prepare_pki(topology, directory)
    configs = write_node_configs(
        topology, directory, seed, directory / "ctl", agent_captures=False
    )
    return BenchNetwork(
        name, target_hosts, directory, topology, configs, per_router
    )


def place(topology: Topology) -> Topology:
    """Move the topology to a free 127.k.0.0/16 block with k from 101 to 254.

    ``smkd run`` starts at 127.1 and counts up, so a high block keeps a bench
    clear of runs that start while it is busy. The search starts at a block
    drawn from the process id, so that two benches seldom pick the same one.
    Each node keeps the last two octets of its address.
    """
    blocks = list(range(FIRST_BLOCK, 255))
    start = random.Random(os.getpid()).randrange(len(blocks))
    for block in blocks[start:] + blocks[:start]:
        nodes = {
            name: dataclasses.replace(node, address=_in_block(node.address, block))
            for name, node in topology.nodes.items()
        }
        if _all_free(node.address for node in nodes.values()):
            return dataclasses.replace(topology, nodes=nodes)
    raise BenchError(
        f"no 127.k.0.0/16 block from k = {FIRST_BLOCK} has UDP port {PORT} free "
        f"for all {len(topology.nodes)} nodes; stop other runs and try again"
    )


def _in_block(address: str, block: int) -> str:
    octets = ipaddress.IPv4Address(address).packed
    return str(ipaddress.IPv4Address(bytes([127, block]) + octets[2:]))


def _all_free(addresses: Iterable[str]) -> bool:
    for address in addresses:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((address, PORT))
        except OSError:
            return False
        finally:
            probe.close()
    return True


def _without_core_hosts(mapping: dict[str, Any], cores: tuple[str, ...]) -> dict[str, Any]:
    lans = []
    removed: set[str] = set()
    for lan in mapping.get("lans", []):
        if set(lan["routers"]) & set(cores):
            removed.update(lan["hosts"])
        else:
            lans.append(lan)
    mapping = dict(mapping)
    mapping["nodes"] = {k: v for k, v in mapping["nodes"].items() if k not in removed}
    mapping["lans"] = lans
    group = dict(mapping["groups"][0])
    group["acl"] = {**group["acl"], "hosts": []}
    mapping["groups"] = [group]
    return mapping


def initiator_config(network: BenchNetwork, mode: str) -> Path:
    """Write the initiator's config for ``mode``: the ACL admits every host.

    The copy sits one directory below the network's directory, as the
    original does, so its relative paths (``../pki``) still resolve.
    """
    group = next(iter(network.topology.groups.values()))
    original = network.configs[group.initiator]
    document = json.loads(original.read_text())
    acl = document["groups"][0]["acl"]
    acl["hosts"] = [HOST_PATTERN]
    acl["strict"] = mode == "strict"
    acl["central"] = mode == "central"
    path = network.directory / mode / original.name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    return path


def partition(
    network: BenchNetwork, initiator: Path, workers: int, mode_dir: Path,
    profile: bool = False, joins_per_turn: int = JOINS_PER_TURN,
) -> list[WorkerSpec]:
    """Split the nodes over ``workers`` processes plus one for the cores.

    Worker 0 runs the cores, then the initiator, so the primary core is up
    before the initiator uploads the ACL at its start. It has a process of its
    own, as a key distribution centre would have a machine of its own, so a
    central KDC is not slowed by the routers and hosts it serves. Each LAN
    goes to one of the other workers with its DR.
    """
    topology = network.topology
    group = next(iter(topology.groups.values()))
    units = [list(lan.routers) + list(lan.hosts) for lan in topology.lans]
    placed = {name for unit in units for name in unit}
    loose = [name for name in network.routers if name not in placed]
    units.sort(key=len, reverse=True)

    kdc = sorted(loose, key=lambda name: name not in group.cores)
    lan_workers: list[list[str]] = [[] for _ in range(workers)]
    for unit in units:
        min(lan_workers, key=len).extend(unit)
    assigned = [kdc + [group.initiator], *lan_workers]

    specs = []
    for index, names in enumerate(assigned):
        configs = {
            name: initiator if name == group.initiator else network.configs[name]
            for name in names
        }
        specs.append(WorkerSpec(
            index,
            configs,
            trace_path=mode_dir / "traces" / f"worker-{index}.jsonl",
            group=group.name,
            joins_per_turn=joins_per_turn,
            log_path=mode_dir / "logs" / f"worker-{index}.log",
            profile_path=mode_dir / f"worker-{index}.prof" if profile else None,
        ))
    return specs
