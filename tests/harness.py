"""A fake network that moves datagrams between in-memory state machines.

Nothing here opens a socket: each ``Transmit`` a machine emits is delivered
to the machine bound to its destination address, one hop at a time, with the
clock advanced by a fixed latency per hop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from node.codec import internet_checksum
from node.documents import AclMode, GroupAcl, KeyBundle, SignedAcl, SignedBundle
from node.errors import MalformedMessage
from node.host import make_machine
from node.machine import GroupConfig, Machine, NodeConfig, Timers, TraceEvent, Transmit
from node.messages import Message, MessageType, Signature, decode_message, sign_message
from node.pki import Directory, Identity, generate_pki

START = 1_800_000_000.0
HOP_LATENCY = 0.001
GROUP_ADDRESS = "239.1.1.1"


@dataclass
class Delivery:
    time: float
    source: str
    destination: str
    datagram: bytes

    @property
    def message(self):
        return decode_message(self.datagram)


@dataclass
class Network:
    machines: dict[str, Machine]
    addresses: dict[str, str]
    now: float = START
    queue: list[tuple[str, Transmit]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    events: dict[str, list[TraceEvent]] = field(default_factory=dict)
    intercept: object = None

    def name_of(self, address: str) -> str:
        for name, known in self.addresses.items():
            if known == address:
                return name
        raise KeyError(address)

    def collect(self) -> None:
        for name, machine in self.machines.items():
            for output in machine.pop_outputs():
                if isinstance(output, Transmit):
                    self.queue.append((name, output))
                else:
                    self.events.setdefault(name, []).append(output)

    def run(self, max_steps: int = 10_000) -> None:
        """Deliver datagrams until the network is quiet."""
        self.collect()
        steps = 0
        while self.queue:
            steps += 1
            assert steps < max_steps, "the network did not go quiet"
            sender, transmit = self.queue.pop(0)
            self.now += HOP_LATENCY
            self.inject(sender, transmit.destination, transmit.datagram)

    def inject(self, sender: str, destination: str, datagram: bytes) -> None:
        source = self.addresses[sender]
        delivery = Delivery(self.now, sender, self.name_of(destination), datagram)
        if self.intercept is not None:
            datagram = self.intercept(delivery)
            if datagram is None:
                return
            delivery.datagram = datagram
        self.deliveries.append(delivery)
        self.machines[delivery.destination].receive(datagram, source, self.now)
        self.collect()

    def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that falls due."""
        end = self.now + seconds
        while True:
            due = [
                (timer, name) for name, machine in self.machines.items()
                if (timer := machine.next_timer()) is not None and timer <= end
            ]
            if not due:
                break
            timer, name = min(due)
            self.now = max(self.now, timer)
            self.machines[name].handle_timer(self.now)
            self.run()
        self.now = end

    def trace(self, node: str, name: str | None = None) -> list[TraceEvent]:
        events = self.events.get(node, [])
        return [e for e in events if name is None or e.name == name]

    def flow(self) -> list[tuple[str, str, str]]:
        """Return (sender, receiver, message type) for every delivery so far."""
        return [
            (d.source, d.destination, d.message.header.type.name)
            for d in self.deliveries
        ]

    def delivered(
        self, message_type: MessageType, source: str | None = None,
        destination: str | None = None,
    ) -> list[Delivery]:
        """Return the deliveries of one message type, optionally on one hop.

        Datagrams that do not decode (a test injected them) are skipped.
        """
        matches = []
        for delivery in self.deliveries:
            if source not in (None, delivery.source):
                continue
            if destination not in (None, delivery.destination):
                continue
            try:
                delivered_type = delivery.message.header.type
            except MalformedMessage:
                continue
            if delivered_type is message_type:
                matches.append(delivery)
        return matches

    def join(self, host: str, group: str = "G") -> None:
        """Make ``host`` join ``group`` now and deliver until quiet."""
        self.machines[host].join(group, self.now)
        self.run()

    def group(self, node: str) -> GroupConfig:
        return self.machines[node].config.groups[0]

    def stored_bundle(self, router: str) -> KeyBundle:
        """Open the key bundle that ``router`` keeps in its local vault."""
        machine = self.machines[router]
        address = self.group(router).address
        sealed = machine.groups[address].vaulted_bundle
        assert sealed is not None, f"{router} holds no key bundle"
        signed = SignedBundle.decode(machine.vault.open(sealed, address))
        return KeyBundle.decode(signed.body)

    def sign_as(self, signer: str, message: Message) -> bytes:
        """Encode ``message`` and sign it with ``signer``'s key, as its node would."""
        machine = self.machines[signer]
        group = self.group(signer)
        unsigned = message.encode_unsigned()
        value = machine.identity.sign(group.suite, unsigned)
        return sign_message(unsigned, Signature(signer, group.suite_code, value))

    def sign_acl(self, acl: GroupAcl) -> SignedAcl:
        """Sign ``acl`` with the group initiator's key."""
        group = self.group(acl.initiator)
        body = acl.encode()
        unsigned = SignedAcl(body, b"", acl)
        signature = self.machines[acl.initiator].identity.sign(
            group.suite, unsigned.signed_bytes()
        )
        return SignedAcl(body, signature, acl)


@dataclass
class Spec:
    """A small topology: roles, point-to-point links and LAN attachments."""

    roles: dict[str, str]
    links: list[tuple[str, str]]
    cores: tuple[str, ...] = ("C",)
    initiator: str = "init"
    acl_hosts: tuple[str, ...] = ("h", "h2")
    acl_mode: AclMode = AclMode.INCLUDE
    trusted_routers: tuple[str, ...] | None = None
    strict: bool = False
    central: bool = False
    suite: str = "default"
    serial: int = 1
    seal_acl: bool = False


def with_checksum(datagram: bytes) -> bytes:
    """Recompute the checksum of a datagram that a test has edited."""
    edited = bytearray(datagram)
    edited[6:8] = b"\0\0"
    edited[6:8] = internet_checksum(bytes(edited)).to_bytes(2, "big")
    return bytes(edited)


def figure1_spec(**changes) -> Spec:
    """RFC 1949 Figure 1: h behind DR A, then B, then the primary core C."""
    spec = Spec(
        roles={"h": "host", "h2": "host", "h9": "host", "A": "router",
               "B": "router", "C": "core", "init": "initiator"},
        links=[("h", "A"), ("h2", "A"), ("h9", "A"), ("A", "B"), ("B", "C"),
               ("init", "C")],
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def make_acl(spec: Spec, now: float = START) -> GroupAcl:
    from node.crypto import suite_by_name

    return GroupAcl(
        group=GROUP_ADDRESS,
        serial=spec.serial,
        mode=spec.acl_mode,
        hosts=spec.acl_hosts,
        not_before=int(now) - 60,
        not_after=int(now) + 86_400,
        initiator=spec.initiator,
        suite=suite_by_name(spec.suite).code,
        key_lifetime=3600,
        strict=spec.strict,
        trusted_routers=spec.trusted_routers,
        central=spec.central,
    )


def build(spec: Spec, pki_dir: Path, seed: int = 1) -> Network:
    """Make one machine per node of ``spec``, with keys from ``pki_dir``."""
    names = sorted(spec.roles)
    addresses = {name: f"127.1.0.{i + 1}" for i, name in enumerate(names)}
    if not (pki_dir / "certs").exists():
        nodes = [(n, spec.roles[n], addresses[n]) for n in names]
        generate_pki(pki_dir, nodes, [spec.suite], now=START - 3600)

    graph = nx.Graph()
    graph.add_nodes_from(names)
    graph.add_edges_from(spec.links)
    group = GroupConfig(
        name="G",
        address=GROUP_ADDRESS,
        cores=spec.cores,
        core_addresses=tuple(addresses[c] for c in spec.cores),
        initiator=spec.initiator,
        suite=spec.suite,
        seal_acl=spec.seal_acl,
    )
    rng = random.Random(seed)
    directory = Directory(pki_dir)
    machines = {}
    for name in names:
        machines[name] = _machine(name, spec, graph, addresses, group, pki_dir,
                                  directory, rng)
    network = Network(machines, addresses)
    for machine in machines.values():
        machine.start(network.now)
    return network


def _machine(name, spec, graph, addresses, group, pki_dir, directory, rng) -> Machine:
    role = spec.roles[name]
    neighbours = {addresses[n]: n for n in graph.neighbors(name)}
    routes = {}
    if role in ("router", "core"):
        paths = nx.single_source_shortest_path(graph, name)
        for target, path in paths.items():
            if len(path) > 1:
                routes[addresses[target]] = addresses[path[1]]
    gateway = next(iter(graph.neighbors(name)), None) if role in ("host", "initiator") else None
    if role == "initiator":
        group = GroupConfig(**{**group.__dict__, "acl": make_acl(spec)})
    config = NodeConfig(
        name=name, role=role, address=addresses[name], groups=(group,),
        neighbours=neighbours, routes=routes, gateway=gateway,
        timers=Timers(report_interval=1.0, pending_join_interval=1.0,
                      expire_pending_join=10.0),
    )
    identity = Identity.load(pki_dir, name, [spec.suite])
    return make_machine(config, identity, directory, rng.randbytes)
