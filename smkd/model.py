"""Topologies and scenarios: the validated model that the runner executes.

``load_topology`` and ``load_scenario`` read a YAML file, check every rule of the
format (docs/topology.md, docs/scenario.md) and return frozen dataclasses with
values in SI units: seconds, loss fractions and bits per second. A file with
problems raises one ``ValidationError`` that lists all of them, each with file,
line, the offending value and a fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import itertools
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from node.errors import ConfigError
from smkd.yamlsrc import (
    Checker,
    KeyPath,
    Parser,
    Problem,
    YamlDocument,
    choice_parser,
    load_yaml,
    parse_bandwidth,
    parse_bool,
    parse_delay,
    parse_duration,
    parse_int,
    parse_loss,
    parse_name,
    parse_positive_duration,
    parse_positive_int,
    parse_text,
    suggest,
)

__all__ = [
    "Acl",
    "Action",
    "Expectation",
    "Group",
    "Impairment",
    "Lan",
    "Link",
    "Node",
    "Problem",
    "Scenario",
    "Timers",
    "Topology",
    "ValidationError",
    "load_file",
    "load_scenario",
    "load_topology",
]

ROLES = ("host", "router", "core", "initiator")
ROUTER_ROLES = frozenset({"router", "core"})
HOST_ROLES = frozenset({"host", "initiator"})
SUITES = ("default", "pq")
ACL_MODES = ("include", "exclude")

# automatic addresses come from this /16, so at most 65,534 nodes get one
AUTO_ADDRESSES = ipaddress.IPv4Network("127.1.0.0/16")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
# IANA reserves 224.0.0.0/24 for local network control, which routers do not
# forward and routing protocols use (224.0.0.15 is all-cbt-routers)
LOCAL_CONTROL = ipaddress.IPv4Network("224.0.0.0/24")


class ValidationError(ConfigError):
    """One or more problems in a topology or scenario file."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class Impairment:
    """Link emulation settings: delay and jitter in s, loss fraction, bits/s."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: int | None = None


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    address: str


@dataclass(frozen=True)
class Link:
    """A point-to-point link between nodes ``a`` and ``b``.

    ``directions`` maps an end to the impairment of what it sends, where
    that differs from ``impairment``.
    """

    name: str
    a: str
    b: str
    impairment: Impairment
    directions: dict[str, Impairment] = field(default_factory=dict)

    def impairment_from(self, sender: str) -> Impairment:
        """Return the impairment of the datagrams ``sender`` sends on the link."""
        return self.directions.get(sender, self.impairment)


@dataclass(frozen=True)
class Lan:
    """A multi-access segment; ``dr`` is its designated router."""

    name: str
    routers: tuple[str, ...]
    hosts: tuple[str, ...]
    dr: str
    impairment: Impairment
    directions: dict[str, Impairment] = field(default_factory=dict)

    def impairment_from(self, sender: str) -> Impairment:
        """Return the impairment of the datagrams ``sender`` sends on the LAN."""
        return self.directions.get(sender, self.impairment)


@dataclass(frozen=True)
class Acl:
    """A group access control list; ``validity`` is in seconds."""

    mode: str
    hosts: tuple[str, ...]
    serial: int
    validity: float


@dataclass(frozen=True)
class Group:
    """A multicast group. ``cores[0]`` is the primary core.

    ``trusted_routers`` is None when every router may act as a GKDC.
    ``central`` makes the primary core the only key distribution centre.
    ``key_lifetime`` is in seconds.
    """

    name: str
    address: str
    cores: tuple[str, ...]
    initiator: str
    acl: Acl
    trusted_routers: tuple[str, ...] | None
    strict: bool
    key_lifetime: float
    suite: str
    central: bool = False


@dataclass(frozen=True)
class Timers:
    """CBT, routing and membership timers in seconds, and retry counts."""

    echo_interval: float
    echo_timeout: float
    pending_join_interval: float
    pending_join_timeout: float
    expire_pending_join: float
    pending_quit_interval: float
    pending_quit_retries: int
    child_assert_expire: float
    report_interval: float
    report_retries: int
    hello_interval: float
    router_dead_interval: float
    lsa_refresh_interval: float
    membership_interval: float
    membership_timeout: float


TIMER_PROFILES = {
    # the echo, pending join, pending quit and child assert values are the
    # defaults of the CBT version 1 drafts (draft-ietf-idmr-cbt-spec, 1996);
    # hello, dead and refresh intervals are OSPF's (RFC 2328), and the
    # membership interval and timeout IGMPv2's query interval and group
    # membership interval (RFC 2236)
    "cbtv1": Timers(
        30.0, 90.0, 5.0, 30.0, 90.0, 5.0, 3, 180.0, 5.0, 3,
        10.0, 40.0, 1800.0, 125.0, 260.0,
    ),
    # short timers so that an emulated run settles within seconds
    "fast": Timers(
        1.0, 3.0, 1.0, 3.0, 10.0, 1.0, 3, 10.0, 1.0, 5,
        0.5, 2.0, 30.0, 2.0, 7.0,
    ),
}
TIMER_COUNTS = ("pending_quit_retries", "report_retries")
# how routers find their routes: learned from each other, or fixed at start
ROUTING_MODES = ("link-state", "static")
# above this many routers and cores the default is static routes: every
# router checks every LSA's signature, and the local backend runs all routers
# in one process, where 197 routers (Cogentco) did not converge in minutes
LINK_STATE_MAX_ROUTERS = 64


@dataclass(frozen=True)
class Topology:
    """A validated topology; ``token_window`` is in seconds."""

    name: str
    description: str
    nodes: dict[str, Node]
    links: list[Link]
    lans: list[Lan]
    groups: dict[str, Group]
    timers: Timers
    token_window: float
    source: Path
    routing: str = "link-state"

    def graph(self) -> nx.Graph:
        """Build a graph of all nodes with one edge per link and per LAN attachment.

        A LAN adds an edge from each member to each of its routers. Edges carry
        ``delay`` (s) and ``segment`` (the link or LAN name). Parallel links become
        one edge with the smallest delay.
        """
        graph = nx.Graph()
        for node in self.nodes.values():
            graph.add_node(node.name, role=node.role, address=node.address)

        for link in self.links:
            _add_edge(graph, link.a, link.b, link.impairment.delay, link.name)

        for lan in self.lans:
            for member in lan.routers + lan.hosts:
                for router in lan.routers:
                    if router != member:
                        _add_edge(graph, member, router, lan.impairment.delay, lan.name)
        return graph

    def neighbours(self, name: str) -> list[str]:
        """Return the sorted names of the nodes one link or LAN away from ``name``."""
        return sorted(self.graph().neighbors(name))

    def segment(self, name: str) -> Link | Lan | None:
        """Return the link or LAN called ``name``."""
        for segment in itertools.chain(self.links, self.lans):
            if segment.name == name:
                return segment
        return None


def _add_edge(graph: nx.Graph, a: str, b: str, delay: float, segment: str) -> None:
    if graph.has_edge(a, b) and graph.edges[a, b]["delay"] <= delay:
        return
    graph.add_edge(a, b, delay=delay, segment=segment)


@dataclass(frozen=True)
class Action:
    """A timed scenario action; ``at`` is in seconds after readiness."""

    at: float
    kind: str
    node: str | None
    group: str | None
    link: str | None
    params: dict[str, Any]
    line: int | None


@dataclass(frozen=True)
class Expectation:
    """A check of the run's traces; ``params`` contains every field but type, name."""

    kind: str
    name: str
    params: dict[str, Any]
    line: int | None


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; times are in seconds and the timeline sorted by ``at``."""

    name: str
    description: str
    topology: Topology
    seed: int
    ready_timeout: float
    duration: float
    timeline: list[Action]
    expect: list[Expectation]
    source: Path


def load_topology(path: Path | str) -> Topology:
    """Load and validate a topology file; raise ValidationError on any problem."""
    reader = _TopologyReader(load_yaml(path))
    topology = reader.read()
    if topology is None:
        raise ValidationError(_sorted(reader.check.problems))
    return topology


def load_scenario(path: Path | str) -> Scenario:
    """Load and validate a scenario and its topology file."""
    return _read_scenario(load_yaml(path))


def load_file(path: Path | str) -> Topology | Scenario:
    """Load a topology or a scenario, whichever the file is.

    A scenario is a mapping with a ``timeline`` or ``topology`` key.
    """
    document = load_yaml(path)
    if is_scenario(document.data):
        return _read_scenario(document)

    reader = _TopologyReader(document)
    topology = reader.read()
    if topology is None:
        raise ValidationError(_sorted(reader.check.problems))
    return topology


def is_scenario(data: Any) -> bool:
    return isinstance(data, dict) and ("timeline" in data or "topology" in data)


def _read_scenario(document: YamlDocument) -> Scenario:
    reader = _ScenarioReader(document)
    scenario = reader.read()
    if scenario is None:
        raise ValidationError(_sorted(reader.all_problems()))
    return scenario


def _sorted(problems: list[Problem]) -> list[Problem]:
    """Sort problems by line, keeping the files in the order they first appear."""
    files = list(dict.fromkeys(problem.file for problem in problems))
    return sorted(problems, key=lambda p: (files.index(p.file), p.line or 0))


def _listing(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    text = ", ".join(names[:limit])
    if len(names) > limit:
        text += f" and {len(names) - limit} more"
    return text


def _known(word: str, names: Collection[str]) -> str:
    """Return a hint naming the defined names, or the close ones if there are many."""
    if not names:
        return " (none are defined)"
    if len(names) <= 12:
        return f" (known: {', '.join(names)})"
    return suggest(word, list(names)).replace("; ", " (", 1) + ")"


# every event name an agent writes to its trace, so that an `event`
# expectation with a misspelt name fails validation instead of passing
TRACE_EVENTS = frozenset({
    "ack_received", "ack_sent", "acl_accepted", "acl_changed", "acl_installed",
    "acl_rejected", "acl_updated", "acl_uploaded", "acting_root", "adjacency",
    "agent_started", "became_gkdc", "branch_rekeyed", "child_expired", "child_quit",
    "core_fallback", "data_received", "data_rejected", "data_sent", "denied", "drop",
    "epoch_erased", "evicted", "flush_received", "flush_sent", "join_denied",
    "join_expired", "join_parked", "join_queued", "join_received", "join_renewed",
    "join_sent", "join_timeout", "key_erased", "key_installed", "keys_created",
    "keys_delivered", "keys_requested", "keys_updated", "link_changed", "link_drop",
    "loop_detected", "loop_probe_answered", "loop_probe_expired", "loop_probe_ok",
    "loop_probe_sent", "member_evicted", "member_expired", "member_left",
    "nack_received", "nack_sent", "older_keys_ignored", "on_tree", "parent_lost",
    "path_received", "pruned", "quit_abandoned", "quit_acked", "quit_sent",
    "rejoin_failed", "rejoin_started", "rejoined", "rekey_missed", "rekey_rejected",
    "rekey_sent", "report_duplicate", "report_received", "report_sent",
    "routes_changed", "routing_started", "send_failed", "send_started",
    "sender_key_announced", "sender_key_granted", "sender_key_learned",
    "sender_key_received", "sender_key_requested", "sender_key_revoked",
    "sender_rejected", "served", "token_rejected", "token_verified", "tree_state",
})


def parse_event_name(value: Any) -> str:
    """Parse the name of a trace event, which must be one agents write."""
    name = parse_name(value)
    if name not in TRACE_EVENTS:
        hint = suggest(name, sorted(TRACE_EVENTS))
        raise ValueError(
            f"unknown trace event {name!r}{hint} (docs/scenario.md lists them all)"
        )
    return name


def parse_loopback_address(value: Any) -> str:
    """Parse a node address, which must be a usable address in 127.0.0.0/8."""
    rule = "use a loopback address such as 127.1.0.9, or remove it to get one assigned"
    try:
        address = ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"invalid IPv4 address {value!r}; {rule}") from None
    if address not in LOOPBACK:
        raise ValueError(f"address {address} is outside 127.0.0.0/8; {rule}")
    if address in (LOOPBACK.network_address, LOOPBACK.broadcast_address):
        raise ValueError(f"address {address} is not a host address; {rule}")
    return str(address)


def parse_multicast_address(value: Any) -> str:
    """Parse a group address: IPv4 multicast outside the local control block."""
    rule = "use an address in 224.0.0.0/4 such as 239.1.1.1"
    try:
        address = ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"invalid IPv4 address {value!r}; {rule}") from None
    if address not in MULTICAST:
        raise ValueError(f"address {address} is not a multicast address; {rule}")
    if address in LOCAL_CONTROL:
        message = (
            f"address {address} is in 224.0.0.0/24, which is reserved for local "
            "network control; use an address such as 239.1.1.1"
        )
        raise ValueError(message)
    return str(address)


class _Reader:
    """Shared checks of node references against a topology's node roles.

    ``roles`` maps every defined node to its role, or to None when the role itself
    is invalid. ``roles`` is None when the topology could not be read, and then
    references are not checked.
    """

    def __init__(self, document: YamlDocument):
        self.document = document
        self.check = Checker(document)
        self.roles: dict[str, str | None] | None = {}

    def root(self, kind: str) -> dict[str, Any] | None:
        """Return the top-level mapping of a ``kind`` file, or report its absence."""
        if self.document.data is None:
            if not self.document.problems:
                message = f"the file is empty; write a {kind} in it (docs/{kind}.md)"
                self.check.report((), message)
            return None
        what = f"a mapping of {kind} keys such as name"
        return self.check.mapping(self.document.data, (), what)

    def node_ref(
        self, value: Any, path: KeyPath, roles: Collection[str] | None, user: str
    ) -> str | None:
        """Check a reference to a node, which must exist and have one of ``roles``."""
        try:
            name = parse_name(value)
        except ValueError as error:
            self.check.report(path, str(error))
            return None
        if self.roles is None:
            return name

        if name not in self.roles:
            fix = "define it under nodes or fix the name"
            message = f"unknown node '{name}'; {fix}{_known(name, list(self.roles))}"
            self.check.report(path, message)
            return None

        role = self.roles[name]
        if roles is not None and role is not None and role not in roles:
            needed = " or ".join(name for name in ROLES if name in roles)
            message = (
                f"node '{name}' has role {role}, but {user} must have role {needed}; "
                "name another node or change its role"
            )
            self.check.report(path, message)
            return None
        return name

    def node_list(
        self,
        mapping: dict[str, Any],
        path: KeyPath,
        key: str,
        roles: Collection[str] | None,
        user: str,
    ) -> tuple[str, ...]:
        """Check a list of node references; duplicates are reported and dropped."""
        if key not in mapping:
            return ()
        path = path + (key,)
        items = self.check.sequence(
            mapping[key], path, "a list of node names such as [A, B]"
        )

        names: list[str] = []
        for index, item in enumerate(items):
            name = self.node_ref(item, path + (index,), roles, user)
            if name in names:
                self.check.report(
                    path + (index,), f"'{name}' is listed twice; remove one"
                )
            elif name is not None:
                names.append(name)
        return tuple(names)

    def impairment(self, mapping: dict[str, Any], path: KeyPath) -> Impairment:
        get = self.check.get
        return Impairment(
            delay=get(mapping, path, "delay", parse_delay, 0.0),
            jitter=get(mapping, path, "jitter", parse_delay, 0.0),
            loss=get(mapping, path, "loss", parse_loss, 0.0),
            bandwidth=get(mapping, path, "bandwidth", parse_bandwidth, None),
        )

    def directions(
        self,
        mapping: dict[str, Any],
        path: KeyPath,
        members: Collection[str],
        base: Impairment,
    ) -> dict[str, Impairment]:
        """Read ``directions``: per sending member, the values that differ."""
        if "directions" not in mapping:
            return {}
        path = path + ("directions",)
        senders = self.check.mapping(
            mapping["directions"], path, "a mapping such as {A: {loss: 5%}}"
        )
        if senders is None:
            return {}
        result = {}
        for sender, values in senders.items():
            if sender not in members:
                message = (
                    f"'{sender}' does not send on this link or LAN; use one of "
                    f"{_listing(sorted(members))}"
                )
                self.check.report(path + (sender,), message)
                continue
            overrides = self.check.mapping(
                values, path + (sender,), "a mapping such as {loss: 5%}"
            )
            if overrides is None:
                continue
            self.check.check_keys(overrides, path + (sender,), IMPAIRMENT_KEYS)
            own = self.impairment(overrides, path + (sender,))
            changes = {
                key: getattr(own, key) for key in IMPAIRMENT_KEYS if key in overrides
            }
            result[str(sender)] = dataclasses.replace(base, **changes)
        return result


IMPAIRMENT_KEYS = ("delay", "jitter", "loss", "bandwidth")
TOPOLOGY_KEYS = (
    "name",
    "description",
    "timers",
    "token_window",
    "routing",
    "nodes",
    "links",
    "lans",
    "groups",
)
NODE_KEYS = ("role", "address")
LINK_KEYS = ("between", "name") + IMPAIRMENT_KEYS + ("directions",)
LAN_KEYS = ("name", "routers", "hosts", "dr") + IMPAIRMENT_KEYS + ("directions",)
GROUP_KEYS = (
    "name",
    "address",
    "cores",
    "initiator",
    "acl",
    "trusted_routers",
    "strict",
    "central",
    "key_lifetime",
    "suite",
)
GROUP_REQUIRED = ("name", "address", "cores", "initiator", "acl")
ACL_KEYS = ("mode", "hosts", "serial", "validity")
TIMER_KEYS = ("profile",) + tuple(field.name for field in dataclasses.fields(Timers))


class _TopologyReader(_Reader):
    """Reader of one topology document that collects every problem on the way.

    After ``read`` the node roles, segment names and group names stay available
    even when the file has problems, so that a scenario can still check its own
    references against them.
    """

    def __init__(self, document: YamlDocument):
        super().__init__(document)
        self.roles = {}
        self.addresses: dict[str, str] = {}
        self.segments: dict[str, KeyPath] = {}
        self.group_names: set[str] = set()
        self.group_addresses: dict[str, str] = {}
        self.pairs: dict[frozenset[str], str] = {}
        # host or initiator -> names of the links and LANs that attach it
        self.attachments: dict[str, list[str]] = {}
        # host or initiator -> the routers and cores it reaches in one hop
        self.gateways: dict[str, set[str]] = {}

    def read(self) -> Topology | None:
        """Return the topology, or None if there were problems."""
        root = self.root("topology")
        if root is None:
            return None

        self.check.check_keys(root, (), TOPOLOGY_KEYS, ("name", "nodes"))
        get = self.check.get
        name = get(root, (), "name", parse_name)
        description = get(root, (), "description", parse_text, "")
        timers = self.read_timers(root)
        token_window = get(root, (), "token_window", parse_positive_duration, 30.0)
        routing_parser = choice_parser(list(ROUTING_MODES), "routing")
        routing = get(root, (), "routing", routing_parser, None)

        self.read_nodes(root)
        known_problems = len(self.check.problems)
        links = [
            link for link in self.read_entries(root, "links", self.read_link) if link
        ]
        lans = [lan for lan in self.read_entries(root, "lans", self.read_lan) if lan]
        # a broken link or LAN would cut nodes off, so these checks wait until the
        # links and LANs are valid, to avoid reporting one mistake several times
        if len(self.check.problems) == known_problems:
            self.check_attachments()
            self.check_connectivity(links, lans)
        groups = self.read_entries(root, "groups", self.read_group)
        nodes = self.assign_addresses()
        if routing is None:
            routers = [n for n in nodes.values() if n.role in ROUTER_ROLES]
            small = len(routers) <= LINK_STATE_MAX_ROUTERS
            routing = "link-state" if small else "static"

        if self.check.problems or name is None:
            return None
        return Topology(
            name=name,
            description=description,
            nodes=nodes,
            links=links,
            lans=lans,
            groups={group.name: group for group in groups if group},
            timers=timers,
            token_window=token_window,
            source=Path(self.document.file),
            routing=routing,
        )

    def read_timers(self, root: dict[str, Any]) -> Timers:
        profile_parser = choice_parser(list(TIMER_PROFILES), "timer profile")
        value = root.get("timers", "cbtv1")
        if isinstance(value, str) or "timers" not in root:
            profile = self.check.get(root, (), "timers", profile_parser, "cbtv1")
            return TIMER_PROFILES[profile]

        path: KeyPath = ("timers",)
        timers = self.check.mapping(value, path, "a timer profile name or a mapping")
        if timers is None:
            return TIMER_PROFILES["cbtv1"]
        self.check.check_keys(timers, path, TIMER_KEYS)

        profile = self.check.get(timers, path, "profile", profile_parser, "cbtv1")
        overrides = {}
        for key in TIMER_KEYS[1:]:
            parse = (
                parse_positive_int if key in TIMER_COUNTS else parse_positive_duration
            )
            if key in timers:
                overrides[key] = self.check.get(timers, path, key, parse)
        valid = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(TIMER_PROFILES[profile], **valid)

    def read_nodes(self, root: dict[str, Any]) -> None:
        if "nodes" not in root:
            return
        nodes = self.check.mapping(
            root["nodes"], ("nodes",), "a mapping of node names to nodes"
        )
        if nodes is None:
            return

        users: dict[str, str] = {}
        for name, value in nodes.items():
            path: KeyPath = ("nodes", name)
            try:
                parse_name(name)
            except ValueError as error:
                self.check.report(path, str(error), at_key=True)
            self.roles[name], address = self.read_node(value, path)

            if address in users:
                message = (
                    f"address {address} is already used by node '{users[address]}'; "
                    "pick another or remove it to get one assigned"
                )
                self.check.report(path + ("address",), message)
            elif address is not None:
                users[address] = name
                self.addresses[name] = address

    def read_node(self, value: Any, path: KeyPath) -> tuple[str | None, str | None]:
        """Return the role and explicit address of a node; None where invalid."""
        node = self.check.mapping(value, path, "a mapping such as {role: router}")
        if node is None:
            return None, None
        self.check.check_keys(node, path, NODE_KEYS, ("role",))
        role = self.check.get(node, path, "role", choice_parser(ROLES, "role"))
        address = self.check.get(node, path, "address", parse_loopback_address)
        return role, address

    def read_entries(
        self, root: dict[str, Any], key: str, read: Callable[[Any, KeyPath], Any]
    ) -> list[Any]:
        if key not in root:
            return []
        entries = self.check.sequence(root[key], (key,), f"a list of {key}")
        return [read(entry, (key, index)) for index, entry in enumerate(entries)]

    def read_link(self, value: Any, path: KeyPath) -> Link | None:
        link = self.check.mapping(value, path, "a mapping such as {between: [A, B]}")
        if link is None:
            return None
        self.check.check_keys(link, path, LINK_KEYS, ("between",))
        name = self.check.get(link, path, "name", parse_name)
        impairment = self.impairment(link, path)

        ends = self.read_ends(link, path)
        if ends is None:
            return None
        a, b = ends
        if name is None and "name" not in link:
            name = f"{a}-{b}"
        if not self.claim_link_pair(link, path, a, b) or name is None:
            return None
        if not self.claim_segment(name, path):
            return None
        if not self.attach_link(path, a, b, name):
            return None
        directions = self.directions(link, path, (a, b), impairment)
        return Link(name, a, b, impairment, directions)

    def read_ends(self, link: dict[str, Any], path: KeyPath) -> tuple[str, str] | None:
        if "between" not in link:
            return None
        path = path + ("between",)
        ends = link["between"]
        if not isinstance(ends, list) or len(ends) != 2:
            message = f"expected two node names such as [A, B], got {ends!r}"
            self.check.report(path, message)
            return None

        a = self.node_ref(ends[0], path + (0,), None, "a link end")
        b = self.node_ref(ends[1], path + (1,), None, "a link end")
        if a is not None and a == b:
            self.check.report(path, f"a link needs two different nodes, got {a} twice")
            return None
        if a is None or b is None:
            return None
        return a, b

    def claim_link_pair(
        self, link: dict[str, Any], path: KeyPath, a: str, b: str
    ) -> bool:
        """Reject a second link between a pair unless it has its own name."""
        pair = frozenset((a, b))
        if pair in self.pairs and "name" not in link:
            message = (
                f"a second link between {a} and {b} (the first is "
                f"'{self.pairs[pair]}'); remove it, or give it a distinct name "
                "if parallel links are intended"
            )
            self.check.report(path + ("between",), message)
            return False
        self.pairs.setdefault(pair, link.get("name", f"{a}-{b}"))
        return True

    def claim_segment(self, name: str, path: KeyPath) -> bool:
        """Reserve a link or LAN name, which must be unique among both."""
        if name in self.segments:
            first = self.document.line(self.segments[name])
            message = (
                f"the name '{name}' is already used by the link or LAN at line "
                f"{first}; set a distinct name"
            )
            self.check.report(path, message)
            return False
        self.segments[name] = path
        return True

    def attach_link(self, path: KeyPath, a: str, b: str, name: str) -> bool:
        """Record a host's link attachment; a link between two hosts is invalid."""
        assert self.roles is not None
        role_a, role_b = self.roles.get(a), self.roles.get(b)
        if role_a in HOST_ROLES and role_b in HOST_ROLES:
            message = (
                f"link '{name}' connects two hosts, {a} and {b}, but hosts do not "
                "forward; link each host to a router or core, or put both on a LAN"
            )
            self.check.report(path + ("between",), message)

        for host, other in ((a, b), (b, a)):
            if self.roles.get(host) in HOST_ROLES:
                self.attachments.setdefault(host, []).append(name)
                if self.roles.get(other) in ROUTER_ROLES:
                    self.gateways.setdefault(host, set()).add(other)
        return not (role_a in HOST_ROLES and role_b in HOST_ROLES)

    def read_lan(self, value: Any, path: KeyPath) -> Lan | None:
        lan = self.check.mapping(
            value, path, "a mapping such as {name: lan-A, routers: [A]}"
        )
        if lan is None:
            return None
        self.check.check_keys(lan, path, LAN_KEYS, ("name", "routers"))
        name = self.check.get(lan, path, "name", parse_name)
        if name is not None and not self.claim_segment(name, path + ("name",)):
            name = None

        routers = self.node_list(lan, path, "routers", ROUTER_ROLES, "a LAN router")
        if lan.get("routers") == []:
            message = "a LAN needs at least one router or core; list its routers"
            self.check.report(path + ("routers",), message)
        hosts = self.node_list(lan, path, "hosts", HOST_ROLES, "a LAN host")
        dr = self.read_dr(lan, path, routers)
        impairment = self.impairment(lan, path)

        for host in hosts:
            self.attachments.setdefault(host, []).append(name or "a LAN")
            self.gateways.setdefault(host, set()).update(routers)
        directions = self.directions(lan, path, routers + hosts, impairment)
        if name is None or dr is None:
            return None
        return Lan(name, routers, hosts, dr, impairment, directions)

    def read_dr(
        self, lan: dict[str, Any], path: KeyPath, routers: tuple[str, ...]
    ) -> str | None:
        """Return the designated router, by default the LAN's first router."""
        if "dr" not in lan:
            return routers[0] if routers else None

        dr = self.node_ref(
            lan["dr"], path + ("dr",), ROUTER_ROLES, "a designated router"
        )
        if dr is not None and dr not in routers:
            message = (
                f"designated router '{dr}' is not one of this LAN's routers "
                f"({_listing(routers)}); add it to routers or pick one of them"
            )
            self.check.report(path + ("dr",), message)
            return None
        return dr

    def read_group(self, value: Any, path: KeyPath) -> Group | None:
        group = self.check.mapping(
            value, path, "a mapping with name, address, cores, initiator and acl"
        )
        if group is None:
            return None
        self.check.check_keys(group, path, GROUP_KEYS, GROUP_REQUIRED)
        get = self.check.get

        name = get(group, path, "name", parse_name)
        if name in self.group_names:
            message = (
                f"group name '{name}' is already used; give each group its own name"
            )
            self.check.report(path + ("name",), message)
            name = None
        elif name is not None:
            self.group_names.add(name)
        address = self.read_group_address(group, path)

        cores = self.node_list(group, path, "cores", {"core"}, "a group core")
        if group.get("cores") == []:
            message = "a group needs at least one core; list its cores, primary first"
            self.check.report(path + ("cores",), message)
        initiator = None
        if "initiator" in group:
            initiator_path = path + ("initiator",)
            user = "a group initiator"
            initiator = self.node_ref(
                group["initiator"], initiator_path, {"initiator"}, user
            )
        acl = self.read_acl(group, path)

        trusted = None
        if "trusted_routers" in group:
            user = "a trusted router"
            trusted = self.node_list(group, path, "trusted_routers", ROUTER_ROLES, user)
        strict = get(group, path, "strict", parse_bool, False)
        central = get(group, path, "central", parse_bool, False)
        key_lifetime = get(group, path, "key_lifetime", parse_positive_duration, 3600.0)
        suite = get(group, path, "suite", choice_parser(SUITES, "suite"), "default")

        if None in (name, address, initiator, acl) or not cores:
            return None
        return Group(
            name, address, cores, initiator, acl, trusted, strict, key_lifetime,
            suite, central,
        )

    def read_group_address(self, group: dict[str, Any], path: KeyPath) -> str | None:
        address = self.check.get(group, path, "address", parse_multicast_address)
        if address in self.group_addresses:
            message = (
                f"address {address} is already used by group "
                f"'{self.group_addresses[address]}'; pick another"
            )
            self.check.report(path + ("address",), message)
            return None
        if address is not None:
            self.group_addresses[address] = str(group.get("name"))
        return address

    def read_acl(self, group: dict[str, Any], path: KeyPath) -> Acl | None:
        if "acl" not in group:
            return None
        path = path + ("acl",)
        acl = self.check.mapping(
            group["acl"], path, "a mapping such as {mode: include, hosts: [h]}"
        )
        if acl is None:
            return None
        self.check.check_keys(acl, path, ACL_KEYS, ("mode", "hosts"))
        get = self.check.get

        mode = get(acl, path, "mode", choice_parser(ACL_MODES, "ACL mode"))
        hosts = self.node_list(acl, path, "hosts", {"host"}, "an ACL entry")
        serial = get(acl, path, "serial", parse_positive_int, 1)
        validity = get(acl, path, "validity", parse_positive_duration, 86400.0)
        if mode is None or "hosts" not in acl:
            return None
        return Acl(mode, hosts, serial, validity)

    def check_attachments(self) -> None:
        """Check that every host and initiator has exactly one attachment."""
        assert self.roles is not None
        for name, role in self.roles.items():
            if role not in HOST_ROLES:
                continue
            attachments = self.attachments.get(name, [])
            if not attachments:
                message = (
                    f"{role} '{name}' is not attached; list it under the hosts of a "
                    "LAN or link it to one router or core"
                )
                self.check.report(("nodes", name), message, at_key=True)
            elif len(attachments) > 1:
                message = (
                    f"{role} '{name}' is attached {len(attachments)} times "
                    f"({_listing(attachments)}), but a host has exactly one "
                    "attachment; keep one"
                )
                self.check.report(("nodes", name), message, at_key=True)

    def check_connectivity(self, links: list[Link], lans: list[Lan]) -> None:
        """Check that routers and cores form one network that every host reaches."""
        assert self.roles is not None
        routers = [name for name, role in self.roles.items() if role in ROUTER_ROLES]
        graph = nx.Graph()
        graph.add_nodes_from(routers)
        for link in links:
            if link.a in graph and link.b in graph:
                graph.add_edge(link.a, link.b)
        for lan in lans:
            graph.add_edges_from(itertools.combinations(lan.routers, 2))

        # the largest part counts as the network; sorting is stable, so ties go to
        # the part whose first router comes first in the file
        parts = sorted(nx.connected_components(graph), key=len, reverse=True)
        if len(parts) < 2:
            return
        main = [name for name in routers if name in parts[0]]
        for part in parts[1:]:
            cut = [name for name in routers if name in part]
            verb = "is" if len(cut) == 1 else "are"
            message = (
                f"{_listing(cut)} {verb} cut off from the other routers and cores "
                f"({_listing(main)}); add a link or LAN that joins them"
            )
            self.check.report(("nodes", cut[0]), message, at_key=True)
        self.check_host_reach(
            parts, [name for name in routers if self.roles[name] == "core"]
        )

    def check_host_reach(self, parts: list[set[str]], cores: list[str]) -> None:
        part_of = {name: index for index, part in enumerate(parts) for name in part}
        for host, gateways in self.gateways.items():
            reached = {part_of[gateway] for gateway in gateways}
            unreachable = [core for core in cores if part_of[core] not in reached]
            if unreachable:
                message = (
                    f"host '{host}' cannot reach core {_listing(unreachable)}, because "
                    f"its routers ({_listing(sorted(gateways))}) are cut off from them"
                )
                self.check.report(("nodes", host), message, at_key=True)

    def assign_addresses(self) -> dict[str, Node]:
        """Give nodes without an explicit address the next free one, in file order."""
        assert self.roles is not None
        taken = {ipaddress.IPv4Address(address) for address in self.addresses.values()}
        free = (address for address in AUTO_ADDRESSES.hosts() if address not in taken)

        nodes = {}
        for name, role in self.roles.items():
            address = self.addresses.get(name) or next(free, None)
            if address is None:
                message = (
                    f"too many nodes ({len(self.roles)}) for the automatic addresses "
                    f"in {AUTO_ADDRESSES}; give some nodes an explicit address"
                )
                self.check.report(("nodes",), message)
                return {}
            if role is not None:
                nodes[name] = Node(name, role, str(address))
        return nodes


_OMIT = object()


@dataclass(frozen=True)
class _Field:
    """One field of an action or expectation.

    ``kind`` is "node", "group" or "link" for a reference into the topology,
    "nodes" for a list of node references, or "value" for a value that
    ``parse`` converts. A node reference must have one of
    ``roles`` (any role if None). An absent optional field takes ``default``, or is
    left out when the default is ``_OMIT``.
    """

    kind: str
    required: bool = False
    roles: frozenset[str] | None = None
    parse: Parser | None = None
    default: Any = None


@dataclass(frozen=True)
class _Spec:
    fields: dict[str, _Field]
    # at least one of these fields must be present
    one_of: tuple[str, ...] = ()


def _node(roles: Collection[str] | None = None, required: bool = True) -> _Field:
    return _Field("node", required, frozenset(roles) if roles else None)


def _group() -> _Field:
    return _Field("group", required=True)


def _nodes(roles: Collection[str]) -> _Field:
    return _Field("nodes", False, frozenset(roles), default=_OMIT)


def _value(parse: Parser, default: Any = None, required: bool = False) -> _Field:
    return _Field("value", required, parse=parse, default=default)


def _parse_size(value: Any) -> int:
    # 60,000 bytes leave room below the 65,507-byte UDP payload limit for the
    # data header with its length fields (at most 105 bytes), the AEAD tag
    # (16), the sender's signature (3,309 with ML-DSA-65) and the handle (16)
    size = parse_positive_int(value)
    if size > 60000:
        raise ValueError(f"invalid size {size}; use at most 60000 bytes")
    return size


_LINK = _Field("link", required=True)
_WITHIN = _value(parse_duration)
# the member whose sending direction alone an action changes
_SENDER = _Field("node", required=False, default=_OMIT)

ACTIONS: dict[str, _Spec] = {
    "join": _Spec({"node": _node({"host"}), "group": _group()}),
    "leave": _Spec({"node": _node({"host"}), "group": _group()}),
    "send": _Spec(
        {
            "node": _node(HOST_ROLES),
            "group": _group(),
            "count": _value(parse_positive_int, 1),
            "size": _value(_parse_size, 100),
            "interval": _value(parse_duration, 0.1),
            "forge_as": _Field("node", False, HOST_ROLES, default=_OMIT),
        }
    ),
    "rekey": _Spec({"group": _group()}),
    "acl_update": _Spec(
        {"group": _group(), "remove": _nodes({"host"}), "add": _nodes({"host"})},
        one_of=("remove", "add"),
    ),
    "link_down": _Spec({"link": _LINK, "from": _SENDER}),
    "link_up": _Spec({"link": _LINK, "from": _SENDER}),
    "link_set": _Spec(
        {
            "link": _LINK,
            "from": _SENDER,
            "delay": _value(parse_delay, _OMIT),
            "jitter": _value(parse_delay, _OMIT),
            "loss": _value(parse_loss, _OMIT),
            "bandwidth": _value(parse_bandwidth, _OMIT),
        },
        one_of=IMPAIRMENT_KEYS,
    ),
    "node_stop": _Spec({"node": _node()}),
    "node_start": _Spec({"node": _node()}),
    "wait": _Spec({"seconds": _value(parse_duration, required=True)}),
}

EXPECTATIONS: dict[str, _Spec] = {
    "holds_key": _Spec({"node": _node(), "group": _group(), "within": _WITHIN}),
    "denied": _Spec({"node": _node(HOST_ROLES), "group": _group(), "within": _WITHIN}),
    "lacks_key": _Spec({"node": _node(), "group": _group()}),
    "gkdc": _Spec({"node": _node(ROUTER_ROLES), "group": _group()}),
    "not_gkdc": _Spec({"node": _node(ROUTER_ROLES), "group": _group()}),
    "all_members_hold_key": _Spec({"group": _group(), "within": _WITHIN}),
    "no_key_in_clear": _Spec({}),
    "tree_recovers": _Spec({"group": _group(), "within": _WITHIN}),
    "on_tree": _Spec({"node": _node(ROUTER_ROLES), "group": _group()}),
    "off_tree": _Spec({"node": _node(ROUTER_ROLES), "group": _group()}),
    "event": _Spec(
        {
            "node": _node(required=False),
            "event": _value(parse_event_name, required=True),
            "reason": _value(parse_name),
            "min": _value(parse_int, 1),
            "max": _value(parse_int),
        }
    ),
    "received": _Spec(
        {
            "node": _node(HOST_ROLES),
            "group": _group(),
            "from": _node(HOST_ROLES, required=False),
            "min": _value(parse_int, 1),
            "max": _value(parse_int),
        }
    ),
}

ACTION_EXAMPLE = "{at: 0, action: join, node: h, group: G}"
EXPECTATION_EXAMPLE = "{type: holds_key, node: h, group: G, within: 5}"
SCENARIO_KEYS = (
    "name",
    "description",
    "topology",
    "seed",
    "ready",
    "duration",
    "timeline",
    "expect",
)


class _ScenarioReader(_Reader):
    """Reader of one scenario document and of the topology file that it names."""

    def __init__(self, document: YamlDocument):
        super().__init__(document)
        self.topology_reader: _TopologyReader | None = None

    def all_problems(self) -> list[Problem]:
        problems = list(self.check.problems)
        if self.topology_reader is not None:
            problems += self.topology_reader.check.problems
        return problems

    def read(self) -> Scenario | None:
        """Return the scenario, or None if it or its topology had problems."""
        root = self.root("scenario")
        if root is None:
            return None

        self.check.check_keys(root, (), SCENARIO_KEYS, ("name", "topology"))
        get = self.check.get
        name = get(root, (), "name", parse_name)
        description = get(root, (), "description", parse_text, "")
        topology = self.read_topology(root)
        seed = get(root, (), "seed", parse_int, 0)
        ready_timeout = self.read_ready(root)
        duration = get(root, (), "duration", parse_duration, 2.0)
        timeline = self.read_list(root, "timeline", ACTION_EXAMPLE, self.read_action)
        expect = self.read_list(
            root, "expect", EXPECTATION_EXAMPLE, self.read_expectation
        )

        if self.all_problems() or name is None or topology is None:
            return None
        return Scenario(
            name=name,
            description=description,
            topology=topology,
            seed=seed,
            ready_timeout=ready_timeout,
            duration=duration,
            timeline=sorted(timeline, key=lambda action: action.at),
            expect=expect,
            source=Path(self.document.file),
        )

    def read_topology(self, root: dict[str, Any]) -> Topology | None:
        """Load the topology named by the scenario, relative to the scenario file."""
        # without a readable topology, references cannot be checked
        self.roles = None
        reference = self.check.get(root, (), "topology", parse_text)
        if reference is None:
            return None

        path = Path(os.path.normpath(Path(self.document.file).parent / reference))
        if not path.is_file():
            message = (
                f"topology file {reference!r} not found (looked for {path}); "
                "the path is relative to the scenario file"
            )
            self.check.report(("topology",), message)
            return None

        self.topology_reader = _TopologyReader(load_yaml(path))
        topology = self.topology_reader.read()
        if self.topology_reader.document.data is not None:
            self.roles = self.topology_reader.roles
        return topology

    def read_ready(self, root: dict[str, Any]) -> float:
        if "ready" not in root:
            return 20.0
        ready = self.check.mapping(
            root["ready"], ("ready",), "a mapping such as {timeout: 20}"
        )
        if ready is None:
            return 20.0
        self.check.check_keys(ready, ("ready",), ("timeout",))
        return self.check.get(
            ready, ("ready",), "timeout", parse_positive_duration, 20.0
        )

    def read_list(
        self,
        root: dict[str, Any],
        key: str,
        example: str,
        read: Callable[[dict[str, Any], KeyPath], Any],
    ) -> list[Any]:
        """Read the timeline or the expectations, each entry a mapping."""
        if key not in root or root[key] is None:
            return []
        entries = self.check.sequence(root[key], (key,), f"a list of {key} entries")

        results = []
        for index, entry in enumerate(entries):
            path: KeyPath = (key, index)
            mapping = self.check.mapping(entry, path, f"a mapping such as {example}")
            if mapping is None:
                continue
            result = read(mapping, path)
            if result is not None:
                results.append(result)
        return results

    def read_action(self, action: dict[str, Any], path: KeyPath) -> Action | None:
        kind = self.read_kind(action, path, "action", ACTIONS)
        at = self.check.get(action, path, "at", parse_duration)
        if "at" not in action:
            self.check.report(
                path, "missing required key 'at'; add the time in seconds"
            )
        if kind is None:
            return None

        fields = self.read_fields(action, path, ("at", "action"), ACTIONS[kind], kind)
        if fields is None or at is None:
            return None
        node = fields.pop("node", None)
        group = fields.pop("group", None)
        link = fields.pop("link", None)
        return Action(at, kind, node, group, link, fields, self.document.line(path))

    def read_expectation(
        self, expectation: dict[str, Any], path: KeyPath
    ) -> Expectation | None:
        kind = self.read_kind(expectation, path, "type", EXPECTATIONS)
        name = self.check.get(expectation, path, "name", parse_text)
        if kind is None:
            return None

        spec = EXPECTATIONS[kind]
        params = self.read_fields(expectation, path, ("type", "name"), spec, kind)
        if params is None:
            return None
        if params.get("max") is not None and params["max"] < params["min"]:
            message = f"max {params['max']} is below min {params['min']}; raise max"
            self.check.report(path + ("max",), message)
            return None
        name = name or _expectation_name(kind, params)
        return Expectation(kind, name, params, self.document.line(path))

    def read_kind(
        self, mapping: dict[str, Any], path: KeyPath, key: str, specs: dict[str, _Spec]
    ) -> str | None:
        """Read the action or expectation type that selects the fields to check."""
        kind = self.check.get(mapping, path, key, choice_parser(list(specs), key))
        if key in mapping:
            return kind

        # the type is unknown, so only keys that no type accepts can be reported
        known = {key, "at", "name"}.union(*(spec.fields for spec in specs.values()))
        self.check.check_keys(mapping, path, [key] + sorted(known - {key}))
        if not any(difflib.get_close_matches(other, [key]) for other in mapping):
            valid = ", ".join(specs)
            self.check.report(path, f"missing required key '{key}'; add one of {valid}")
        return None

    def read_fields(
        self,
        mapping: dict[str, Any],
        path: KeyPath,
        common: tuple[str, ...],
        spec: _Spec,
        kind: str,
    ) -> dict[str, Any] | None:
        """Read the fields of one action or expectation; None if one is invalid."""
        self.check.check_keys(mapping, path, common + tuple(spec.fields))
        values: dict[str, Any] = {}
        valid = True
        for key, field in spec.fields.items():
            if key in mapping:
                value = self.read_field(mapping[key], path + (key,), field, kind)
                valid = valid and value is not None
                values[key] = value
            elif field.required:
                self.check.report(path, f"missing required key '{key}' for {kind}")
                valid = False
            elif field.default is not _OMIT:
                values[key] = field.default

        if spec.one_of and not any(key in mapping for key in spec.one_of):
            needed = ", ".join(spec.one_of)
            self.check.report(path, f"{kind} needs at least one of {needed}; add one")
            valid = False
        return values if valid else None

    def read_field(self, value: Any, path: KeyPath, field: _Field, kind: str) -> Any:
        if field.kind == "node":
            return self.node_ref(value, path, field.roles, f"the node of {kind}")
        if field.kind == "nodes":
            return self.node_refs(value, path, field.roles, kind)
        if field.kind == "value":
            assert field.parse is not None
            try:
                return field.parse(value)
            except ValueError as error:
                self.check.report(path, str(error))
                return None

        try:
            name = parse_name(value)
        except ValueError as error:
            self.check.report(path, str(error))
            return None
        return self.check_reference(name, path, field.kind)

    def node_refs(
        self, value: Any, path: KeyPath, roles: Collection[str] | None, kind: str
    ) -> tuple[str, ...] | None:
        """Check a non-empty list of node references."""
        if not isinstance(value, list) or not value:
            message = "expected a non-empty list of node names, such as [h2]"
            self.check.report(path, message)
            return None
        names = [
            self.node_ref(item, path + (index,), roles, f"each node of {kind}")
            for index, item in enumerate(value)
        ]
        if any(name is None for name in names):
            return None
        return tuple(name for name in names if name is not None)

    def check_reference(self, name: str, path: KeyPath, kind: str) -> str | None:
        """Check that a group, or a link or LAN, exists in the topology."""
        if self.topology_reader is None or self.roles is None:
            return name
        if kind == "group":
            known, what, fix = self.topology_reader.group_names, "group", "under groups"
        else:
            known = set(self.topology_reader.segments)
            what, fix = "link or LAN", "under links or lans"
        if name in known:
            return name

        message = f"unknown {what} '{name}'; define it {fix} in the topology"
        self.check.report(path, message + _known(name, sorted(known)))
        return None


def _expectation_name(kind: str, params: dict[str, Any]) -> str:
    """Build the readable default name of an expectation."""
    node, group = params.get("node"), params.get("group")
    within = params.get("within")
    deadline = f" within {within:g} s" if within is not None else ""
    if kind == "holds_key":
        return f"{node} holds the key of {group}{deadline}"
    if kind == "denied":
        return f"{node} is denied access to {group}{deadline}"
    if kind == "lacks_key":
        return f"{node} lacks the key of {group}"
    if kind == "gkdc":
        return f"{node} is a GKDC of {group}"
    if kind == "not_gkdc":
        return f"{node} is not a GKDC of {group}"
    if kind == "all_members_hold_key":
        return f"every member of {group} holds the key{deadline}"
    if kind == "no_key_in_clear":
        return "no key appears in the clear"
    if kind == "tree_recovers":
        return f"the tree of {group} is sound again{deadline} after the last fault"
    if kind == "on_tree":
        return f"{node} is on the tree of {group} at the end"
    if kind == "off_tree":
        return f"{node} is off the tree of {group} at the end"
    if kind == "event":
        return _event_name(params)
    sender = f" from {params['from']}" if params.get("from") else ""
    if params.get("max") is not None:
        count = f"{params['min']} to {params['max']}"
        if params["min"] == params["max"]:
            count = f"exactly {params['min']}"
        return f"{node} receives {count} datagrams of {group}{sender}"
    return f"{node} receives at least {params['min']} datagrams of {group}{sender}"


def _event_name(params: dict[str, Any]) -> str:
    subject = params["node"] or "some node"
    reason = f" ({params['reason']})" if params["reason"] else ""
    low, high = params["min"], params["max"]
    if high is None:
        count = f"at least {low} {'time' if low == 1 else 'times'}"
    elif low == high:
        count = f"exactly {low} {'time' if low == 1 else 'times'}"
    else:
        count = f"{low} to {high} times"
    return f"{subject} traces {params['event']}{reason} {count}"
