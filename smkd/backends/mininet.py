"""The Mininet backend: every node a Mininet host with its own network namespace.

Each node runs ``python -m node CONFIG`` as its own process inside its host's
namespace. A link is a veth pair with one address per end from
:class:`~smkd.configs.LinkAddressing`. A LAN is a Linux bridge inside a
namespace of its own, so the backend creates nothing in the root namespace.
Routers and cores forward in the kernel along static shortest-path routes.
Only messages that travel end to end need them: the ACL upload from an
initiator to its primary core, and a sender's request for its sender key.

Link delay, jitter and loss come from netem where the kernel has it, and
otherwise from the agents' own link emulation; bandwidth comes from htb.
tcpdump captures one end of each link and each LAN's bridge. Agents and
tcpdump die with the backend's process (``PR_SET_PDEATHSIG``), and Mininet's
shells exit when their terminals close, so even a killed run leaves no
namespaces, interfaces or processes behind.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

import node as node_package
from node.errors import ConfigError, SmkdError

from ..configs import (
    HOP_COST,
    ROUTER_ROLES,
    LinkAddressing,
    segment_members,
    segment_peers,
    write_node_configs,
)
from ..model import Impairment, Lan, Link, Topology
from . import Backend

try:
    from mininet.net import Mininet
    from mininet.node import Switch
    from mininet.topo import Topo
except ImportError:
    # check_available() explains how to install Mininet
    Mininet = None
    Switch = Topo = object

log = logging.getLogger("smkd.mininet")

INSTALL_HINT = (
    "install it with 'apt-get install --no-install-recommends mininet' and run "
    "smkd from a venv made with 'python3 -m venv --system-site-packages'"
)

# each LAN's bridge has this name inside the LAN's own namespace
BRIDGE = "br0"

# the testbed is IPv4 only, and without IPv6 no neighbour discovery or MLD
# report appears in the captures
DISABLE_IPV6 = ("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                "net.ipv6.conf.default.disable_ipv6=1")

# with a jumbo MTU (veth allows up to 65535) every datagram crosses a link
# unfragmented, so the pcaps hold whole datagrams, as the local backend's do
LINK_MTU = 65000

# an agent needs about 0.25 s of CPU to start (Python 3.11 importing node.agent
# on a 2-core VM), so a large topology on few cores gets more time
AGENT_START_TIMEOUT = 15.0
AGENT_START_TIMEOUT_PER_AGENT = 0.25
CAPTURE_START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Interface:
    """One end of a veth pair: ``name`` inside ``node``'s namespace.

    ``address`` includes the prefix length, as in ``10.0.3.2/24``. Bridge
    ports have no address.
    """

    node: str
    segment: str
    name: str
    address: str | None = None


@dataclass(frozen=True)
class Route:
    """A static kernel route to another link's or LAN's subnet."""

    subnet: str
    via: str
    source: str

    def batch_line(self) -> str:
        """Return the route as a line for ``ip -batch``."""
        return f"route replace {self.subnet} via {self.via} src {self.source}"

    def command(self) -> str:
        return f"ip {self.batch_line()}"


@dataclass(frozen=True)
class NetworkPlan:
    """Everything the Mininet network of one topology is built from.

    ``wires`` are the veth pairs. ``bridges`` maps a LAN to the Mininet node
    that contains its bridge. ``captures`` maps a link or LAN to the node and
    interface that tcpdump listens on.
    """

    interfaces: dict[str, list[Interface]]
    wires: list[tuple[Interface, Interface]]
    bridges: dict[str, str]
    routes: dict[str, list[Route]]
    captures: dict[str, tuple[str, str]]

    @classmethod
    def build(cls, topology: Topology, addressing: LinkAddressing) -> NetworkPlan:
        interfaces: dict[str, list[Interface]] = {name: [] for name in topology.nodes}
        bridges = _bridge_names(topology)
        wires = []
        captures = {}
        for segment in [*topology.links, *topology.lans]:
            ends = [
                _attach(interfaces, addressing, member, segment.name)
                for member in segment_members(segment)
            ]
            if isinstance(segment, Link):
                wires.append((ends[0], ends[1]))
                captures[segment.name] = (ends[0].node, ends[0].name)
                continue
            bridge = bridges[segment.name]
            for port, end in enumerate(ends):
                wires.append((end, Interface(bridge, segment.name, f"p{port}")))
            captures[segment.name] = (bridge, BRIDGE)
        routes = kernel_routes(topology, addressing)
        return cls(interfaces, wires, bridges, routes, captures)

    def segment_interfaces(self, segment: str) -> list[Interface]:
        """Return both ends of every veth pair of a link or LAN."""
        return [end for wire in self.wires for end in wire if end.segment == segment]


def _attach(
    interfaces: dict[str, list[Interface]],
    addressing: LinkAddressing,
    node: str,
    segment: str,
) -> Interface:
    prefix = addressing.subnets[segment].prefixlen
    address = addressing.addresses[(node, segment)]
    interface = Interface(node, segment, f"eth{len(interfaces[node])}",
                          f"{address}/{prefix}")
    interfaces[node].append(interface)
    return interface


def _bridge_names(topology: Topology) -> dict[str, str]:
    """Name each LAN's Mininet node after the LAN, unless a node has that name."""
    used_names = set(topology.nodes)
    names = {}
    for lan in topology.lans:
        name = lan.name
        while name in used_names:
            name += "-br"
        used_names.add(name)
        names[lan.name] = name
    return names


def kernel_routes(
    topology: Topology, addressing: LinkAddressing
) -> dict[str, list[Route]]:
    """Return, per node, a route to every subnet it is not attached to.

    Paths are shortest by link delay, as the agents' own routes are, and pass
    only through routers and cores. Every route's source is the node's
    address on its first link or LAN, because that is the address at which
    peers that are not neighbours expect it (``LinkAddressing.reach``).
    """
    graph = topology.graph()
    forwarders = {
        n for n, data in graph.nodes(data=True) if data["role"] in ROUTER_ROLES
    }
    routes = {}
    for name in topology.nodes:
        attached = addressing.interfaces(name)
        source = next(iter(attached.values()))
        distances, paths = nx.single_source_dijkstra(
            graph.subgraph(forwarders | {name}), name,
            weight=lambda a, b, data: data["delay"] + HOP_COST,
        )
        entries = []
        for segment in [*topology.links, *topology.lans]:
            if segment.name in attached:
                continue
            exits = [m for m in segment_members(segment) if m in distances]
            if not exits:
                continue
            nearest = min(exits, key=lambda member: distances[member])
            hop = paths[nearest][1]
            via = addressing.reach(graph, name, hop)
            entries.append(Route(str(addressing.subnets[segment.name]), via, source))
        routes[name] = entries
    return routes


def qdisc_commands(interface: str, impairment: Impairment, netem: bool) -> list[str]:
    """Return the tc commands that give ``interface`` its egress impairment.

    With ``netem``, one netem qdisc applies delay, jitter, loss and rate.
    Without it, htb shapes only the bandwidth and the agents emulate the rest.
    """
    delay = round(impairment.delay * 1e6)
    jitter = round(impairment.jitter * 1e6)
    bandwidth = impairment.bandwidth
    device = f"dev {interface} root"
    if netem and (delay or jitter or impairment.loss or bandwidth):
        options = []
        if delay or jitter:
            options.append(f"delay {delay}us" + (f" {jitter}us" if jitter else ""))
        if impairment.loss:
            options.append(f"loss {impairment.loss * 100:g}%")
        if bandwidth:
            options.append(f"rate {bandwidth}bit")
        return [f"tc qdisc add {device} netem {' '.join(options)}"]
    if bandwidth:
        rate = f"rate {bandwidth}bit ceil {bandwidth}bit"
        return [
            f"tc qdisc add {device} handle 1: htb default 1",
            f"tc class add dev {interface} parent 1: classid 1:1 htb {rate}",
        ]
    return []


class LanBridge(Switch):
    """A LAN: a Linux bridge named ``br0`` in a namespace of its own.

    Every member's veth pair ends in a port of this bridge. Being in a
    namespace, the bridge and its ports vanish with the node, and their names
    cannot clash with anything in the root namespace.
    """

    def __init__(self, name: str, **params: Any):
        params["inNamespace"] = True
        # Mininet's Switch requires a datapath id, which a bridge does not use
        params.setdefault("dpid", "1")
        super().__init__(name, **params)

    def start(self, controllers: list[Any]) -> None:
        self.cmd(f"ip link add {BRIDGE} type bridge")
        for interface in self.intfList():
            if interface.name != "lo":
                self.cmd(f"ip link set dev {interface.name} master {BRIDGE} up")
        self.cmd(f"ip link set dev {BRIDGE} up")

    def connected(self) -> bool:
        return True


class SmkdTopo(Topo):
    """A Mininet topology from a :class:`NetworkPlan`: hosts, bridges, veths.

    Hosts get no address from Mininet; every interface gets the one the plan
    assigns.
    """

    def build(self, plan: NetworkPlan) -> None:
        self.plan = plan
        for name in plan.interfaces:
            self.addHost(name, ip=None)
        for bridge in plan.bridges.values():
            self.addSwitch(bridge, cls=LanBridge)
        for end1, end2 in plan.wires:
            self.addLink(
                end1.node, end2.node, intfName1=end1.name, intfName2=end2.name,
                params1=_interface_params(end1), params2=_interface_params(end2),
            )


def _interface_params(interface: Interface) -> dict[str, Any]:
    return {"ip": interface.address} if interface.address else {}


@functools.cache
def netem_available() -> bool:
    """Tell whether this kernel has netem, tried in a throwaway namespace."""
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        return False
    result = subprocess.run(
        ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem",
         "delay", "1ms"],
        capture_output=True, check=False,
    )
    return result.returncode == 0


def link_emulation() -> str:
    if netem_available():
        return "netem in the kernel (delay, jitter, loss, bandwidth)"
    return ("agent-side (delay, jitter, loss: this kernel has no netem); "
            "htb in the kernel (bandwidth)")


def ip_batch(lines: list[str]) -> str:
    """Return a shell command that runs ``ip`` commands in one process.

    One ``ip`` process per route made a topology of a hundred nodes take many
    seconds to configure.
    """
    return "ip -batch - <<'END'\n" + "\n".join(lines) + "\nEND"


def _die_with_parent() -> None:
    # runs in the child before exec: agents and tcpdump must not outlive the
    # backend, even when it is killed
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _agent_environment() -> dict[str, str]:
    # the agents import ``node`` from this checkout, installed or not
    root = str(Path(node_package.__file__).resolve().parent.parent)
    environment = dict(os.environ)
    paths = [root, *filter(None, [environment.get("PYTHONPATH")])]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


class MininetBackend(Backend):
    name = "mininet"

    @classmethod
    def check_available(cls) -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("it needs root to create network namespaces: run it "
                            "with sudo, e.g. 'sudo .venv/bin/smkd run ...'")
        if Mininet is None:
            problems.append(f"Mininet's Python package is not importable from "
                            f"{sys.executable}: {INSTALL_HINT}")
        tools = {"mnexec": "mininet", "tcpdump": "tcpdump", "ip": "iproute2",
                 "tc": "iproute2"}
        for tool, package in tools.items():
            if shutil.which(tool) is None:
                problems.append(f"{tool} is not on PATH: install it with "
                                f"'apt-get install --no-install-recommends {package}'")
        if problems:
            raise ConfigError("the mininet backend cannot run: " + "; ".join(problems))

    @classmethod
    def write_configs(
        cls, topology: Topology, run_dir: Path, seed: int, control_dir: Path
    ) -> dict[str, Path]:
        addressing = LinkAddressing.assign(topology)
        paths = write_node_configs(
            topology, run_dir, seed, control_dir,
            addressing=addressing, agent_captures=False,
        )
        for path in paths.values():
            document = json.loads(path.read_text())
            _leave_to_kernel(document, netem_available())
            path.write_text(json.dumps(document, indent=1))
        return paths

    def __init__(self, topology: Topology, run_dir: Path, configs: dict[str, Path],
                 control_dir: Path, python: str | None = None):
        super().__init__(topology, run_dir, configs, control_dir)
        self.python = python or sys.executable
        self.plan = NetworkPlan.build(topology, LinkAddressing.assign(topology))
        self.netem = netem_available()
        self.impairments = {
            segment.name: segment.impairment
            for segment in [*topology.links, *topology.lans]
        }
        self.net: Any = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.captures: dict[str, subprocess.Popen[bytes]] = {}

    # lifecycle

    async def start(self) -> None:
        # Mininet's host-wide tuning of sysctls and limits is skipped, so the
        # machine's settings stay unchanged.
        # NOTE: all namespaces share one ARP table, limited by
        # net.ipv4.neigh.default.gc_thresh3 (1024 by default), which may cap
        # topologies at about 500 links.
        Mininet.inited = True
        atexit.register(self.stop_now)
        self.net = Mininet(topo=SmkdTopo(self.plan), controller=None, build=False)
        try:
            self.net.build()
            self.net.start()
        except Exception as error:
            # Mininet raises plain Exception, for example when a veth pair
            # cannot be created
            message = f"Mininet could not build the network: {error}"
            raise ConfigError(message) from error
        self.prepare_network()
        self.launch_agents()
        await self.wait_for_agents(list(self.configs))

    def prepare_network(self) -> None:
        """Configure every namespace of a started network and start the captures."""
        for name in self.plan.interfaces:
            self._configure_node(name)
        for bridge in self.plan.bridges.values():
            self._configure_bridge(bridge)
        for segment in self.plan.captures:
            self._start_capture(segment)
        self._wait_for_captures()

    def launch_agents(self) -> None:
        for name in self.configs:
            self._launch_agent(name)

    async def stop(self) -> None:
        self.stop_now()

    def stop_now(self) -> None:
        """Stop agents and captures and remove the network; safe to call twice."""
        atexit.unregister(self.stop_now)
        try:
            self.stop_processes()
        finally:
            net, self.net = self.net, None
            if net is not None:
                net.stop()

    def stop_processes(self) -> None:
        # agents first, so that the captures see their last datagrams
        _terminate(self.agents)
        _terminate(self.captures)

    # nodes

    async def start_node(self, name: str) -> None:
        self._check_node(name)
        agent = self.agents.get(name)
        if agent is not None and agent.poll() is None:
            raise ConfigError(f"node {name} is already running")
        self._launch_agent(name)
        await self.wait_for_agents([name])

    async def stop_node(self, name: str) -> None:
        self._check_node(name)
        agent = self.agents.pop(name, None)
        if agent is None or agent.poll() is not None:
            raise ConfigError(f"node {name} is not running")
        _terminate({name: agent})

    def _check_node(self, name: str) -> None:
        if name not in self.configs:
            raise ConfigError(f"no node named {name!r}")

    def _launch_agent(self, name: str) -> None:
        log_path = self.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "node", str(self.configs[name].resolve())]
        with open(log_path, "ab") as log_file:
            self.agents[name] = self.net[name].popen(
                command, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_agent_environment(),
                preexec_fn=_die_with_parent,
            )

    async def wait_for_agents(self, names: list[str]) -> None:
        """Wait until every named agent responds to ``status`` on its control socket."""
        timeout = AGENT_START_TIMEOUT + AGENT_START_TIMEOUT_PER_AGENT * len(names)
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting:
            _raise_if_cancelled()
            for name in list(waiting):
                self._check_alive(name)
                try:
                    await self.command(name, {"cmd": "status"})
                except SmkdError:
                    continue
                waiting.remove(name)
            if waiting and time.monotonic() > deadline:
                raise ConfigError(
                    f"timed out after {timeout:g} s waiting for agents "
                    f"{', '.join(waiting)} to respond. See {self.run_dir / 'logs'}"
                )
            await asyncio.sleep(0.05)

    def _check_alive(self, name: str) -> None:
        status = self.agents[name].poll()
        if status is None:
            return
        log_path = self.run_dir / "logs" / f"{name}.log"
        lines = log_path.read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "(empty log)"
        raise ConfigError(f"agent {name} exited with status {status} at start. "
                          f"{log_path} ends with: {last}")

    # links

    async def set_link(
        self, segment: str, up: bool | None = None, impairment: Impairment | None = None
    ) -> None:
        found = self.topology.segment(segment)
        if found is None:
            raise ConfigError(f"no link or LAN named {segment!r}")
        if up is not None:
            self._set_state(found, up)
        if impairment is not None:
            self.impairments[segment] = impairment
            for interface in self._member_interfaces(segment):
                self._shape(interface, impairment)
            if not self.netem:
                await self._tell_agents(found, impairment)

    def _set_state(self, segment: Link | Lan, up: bool) -> None:
        state = "up" if up else "down"
        by_node: dict[str, list[str]] = {}
        for interface in self.plan.segment_interfaces(segment.name):
            command = f"ip link set dev {interface.name} {state}"
            by_node.setdefault(interface.node, []).append(command)
        if up:
            # Linux deletes the routes through an interface that goes down
            for member in segment_members(segment):
                routes = [route.batch_line() for route in self.plan.routes[member]]
                by_node[member].append(ip_batch(routes))
        for name, commands in by_node.items():
            self._run(name, commands)

    async def _tell_agents(self, segment: Link | Lan, impairment: Impairment) -> None:
        # the agents emulate delay, jitter and loss, and htb goes on shaping
        # the bandwidth
        emulated = dataclasses.replace(impairment, bandwidth=None)
        request = {"cmd": "link", "link": segment.name,
                   "impairment": dataclasses.asdict(emulated)}
        for member in segment_members(segment):
            agent = self.agents.get(member)
            running = agent is not None and agent.poll() is None
            if running and segment_peers(self.topology, segment, member):
                await self.command(member, request)

    def _member_interfaces(self, segment: str) -> list[Interface]:
        return [i for i in self.plan.segment_interfaces(segment) if i.address]

    # network configuration

    def _configure_node(self, name: str) -> None:
        role = self.topology.nodes[name].role
        interfaces = self.plan.interfaces[name]
        settings = [
            "net.ipv4.conf.all.rp_filter=0",
            *(f"net.ipv4.conf.{i.name}.rp_filter=0" for i in interfaces),
            f"net.ipv4.ip_forward={1 if role in ROUTER_ROLES else 0}",
        ]
        links = [f"link set dev {i.name} mtu {LINK_MTU}" for i in interfaces]
        routes = [route.batch_line() for route in self.plan.routes[name]]
        commands = [DISABLE_IPV6, f"sysctl -qw {' '.join(settings)}",
                    ip_batch(links + routes)]
        for interface in interfaces:
            commands += self._shaping(interface, self.impairments[interface.segment])
        self._run(name, commands)

    def _configure_bridge(self, bridge: str) -> None:
        ports = [i.name for i in self.net[bridge].intfList() if i.name != "lo"]
        links = [f"link set dev {name} mtu {LINK_MTU}" for name in [*ports, BRIDGE]]
        self._run(bridge, [DISABLE_IPV6, ip_batch(links)])

    def _shape(self, interface: Interface, impairment: Impairment) -> None:
        self._run(interface.node, self._shaping(interface, impairment))

    def _shaping(self, interface: Interface, impairment: Impairment) -> list[str]:
        # deleting fails harmlessly where only the default qdisc is
        remove = f"{{ tc qdisc del dev {interface.name} root 2>/dev/null || true; }}"
        return [remove, *qdisc_commands(interface.name, impairment, self.netem)]

    def _run(self, name: str, commands: list[str]) -> None:
        """Run shell commands in a node's namespace, stopping at the first failure.

        One process runs them all, to save a round trip through Mininet's
        shell per command. The exit status decides, because tc also prints
        warnings on success.
        """
        # -x traces each command to stderr, so the last trace names the failure
        script = "set -ex\n" + "\n".join(commands)
        process = self.net[name].popen(["sh", "-c", script], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = process.communicate()[0].decode(errors="replace").splitlines()
        if process.returncode == 0:
            return
        traced = [line[2:] for line in output if line.startswith("+ ")]
        failed = traced[-1] if traced else "the first command"
        messages = [line for line in output if not line.startswith("+ ")]
        raise ConfigError(f"{name}: '{failed}' failed with status "
                          f"{process.returncode}: {' '.join(messages) or 'no output'}")

    # captures

    def _start_capture(self, segment: str) -> None:
        name, interface = self.plan.captures[segment]
        pcap = self.run_dir / "captures" / f"{segment}.pcap"
        pcap.parent.mkdir(parents=True, exist_ok=True)
        log_path = self._capture_log(segment)
        command = ["tcpdump", "-i", interface, "-w", str(pcap.resolve()), "-U", "-n",
                   "-s", "0", "-Z", "root"]
        with open(log_path, "wb") as log_file:
            self.captures[segment] = self.net[name].popen(
                command, stdout=subprocess.DEVNULL, stderr=log_file,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )

    def _wait_for_captures(self) -> None:
        deadline = time.monotonic() + CAPTURE_START_TIMEOUT
        waiting = set(self.captures)
        while waiting:
            for segment in list(waiting):
                text = self._capture_log(segment).read_text(errors="replace")
                if "listening on" in text:
                    waiting.discard(segment)
                elif self.captures[segment].poll() is not None:
                    raise ConfigError(f"tcpdump on {segment} failed: {text.strip()}")
            if waiting and time.monotonic() > deadline:
                raise ConfigError(f"tcpdump did not start on {', '.join(waiting)} "
                                  f"within {CAPTURE_START_TIMEOUT:g} s")
            time.sleep(0.02)

    def _capture_log(self, segment: str) -> Path:
        return self.run_dir / "logs" / f"tcpdump-{segment}.log"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "link_emulation": link_emulation(),
            "captures": "tcpdump on one end of each link and on each LAN's bridge",
            "nodes": "one Mininet host and agent process per node",
        }


def _raise_if_cancelled() -> None:
    # asyncio.wait_for in Python 3.11 drops a cancellation (Ctrl-C) when the
    # awaited call has just finished, as a connection to a missing socket
    # does. The task still counts the request, so check for it here.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _leave_to_kernel(document: dict[str, Any], netem: bool) -> None:
    """Hand the parts of link emulation that the kernel does to the kernel."""
    if netem:
        document["emulate_links"] = False
        return
    for link in document["links"]:
        link["egress"]["bandwidth"] = None


def _terminate(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop processes with SIGTERM, then SIGKILL those still running."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, process in processes.items():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %g s; killing it", name, STOP_TIMEOUT)
            process.kill()
            process.wait()
    processes.clear()
