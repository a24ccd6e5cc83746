"""The parts every smkd state machine shares: config, outputs and authentication.

A machine never touches a socket, a clock or the system random source. Its
caller passes datagrams in with their source address and the current time
(seconds since the Unix epoch, because tokens carry wall-clock timestamps),
and collects :class:`Transmit` and :class:`TraceEvent` outputs afterwards.
Randomness comes from the ``randbytes`` callable given at construction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .crypto import suite_by_code, suite_by_name
from .datapacket import is_data_packet
from .documents import NONCE_SIZE, GroupAcl, HostToken, SignedAcl, Token
from .errors import AuthenticationFailed, ConfigError, ProtocolError
from .messages import (
    ROUTING_TYPES, ControlHeader, Message, MessageType, Signature, decode_message,
    sign_message,
)
from .tokens import ReplayCache

log = logging.getLogger(__name__)

ROUTER_ROLES = ("router", "core")
ROUTING_MODES = ("static", "link-state")


@dataclass(frozen=True)
class Timers:
    """Protocol timers in seconds, and retry counts.

    The CBT timers default to CBTv1's values. The routing timers default to
    OSPF's (RFC 2328: HelloInterval 10 s, RouterDeadInterval 40 s,
    LSRefreshTime 1800 s). ``membership_interval`` is how often a host that
    holds the key reports again, as IGMP's query interval paces reports, and
    ``membership_timeout`` is how long a DR keeps a silent member; ``None``
    turns either off, so a host reports only until it holds the key and a DR
    keeps members until they leave. After a re-key, members keep sending under
    the previous group key for ``rekey_activation``, so that the notice
    reaches everyone first, and accept it for ``rekey_grace`` more before
    erasing it.
    """

    echo_interval: float = 30.0
    echo_timeout: float = 90.0
    pending_join_interval: float = 5.0
    pending_join_timeout: float = 30.0
    expire_pending_join: float = 90.0
    pending_quit_interval: float = 5.0
    pending_quit_retries: int = 3
    child_assert_expire: float = 180.0
    report_interval: float = 5.0
    report_retries: int = 3
    hello_interval: float = 10.0
    router_dead_interval: float = 40.0
    lsa_refresh_interval: float = 1800.0
    membership_interval: float | None = None
    membership_timeout: float | None = None
    rekey_activation: float = 1.0
    rekey_grace: float = 5.0


@dataclass(frozen=True)
class GroupConfig:
    """A node's configuration of one group: CBT's configured core list and more.

    ``acl`` is set only in the initiator's config: the list it signs and
    uploads. ``seal_acl`` seals that upload to the primary core.
    """

    name: str
    address: str
    cores: tuple[str, ...]
    core_addresses: tuple[str, ...]
    initiator: str
    suite: str = "default"
    acl: GroupAcl | None = None
    seal_acl: bool = False

    @property
    def primary_core(self) -> str:
        return self.cores[0]

    @property
    def suite_code(self) -> int:
        return suite_by_name(self.suite).code


@dataclass(frozen=True)
class NodeConfig:
    """One node's view of the network.

    ``address`` is the node's identity address: its certificate carries it
    and CBT header fields use it. ``neighbours`` maps the transport address of
    each directly connected node to its name, and ``peer_addresses`` maps a
    peer's name to the transport address to send to and expect datagrams
    from, where that differs from its identity address (a container or
    namespace reaches a neighbour at the neighbour's address on their shared
    link). ``routes`` maps a destination identity address to the next hop's
    transport address (routers); ``gateway`` is a host's or initiator's
    designated router, by name.

    ``routing`` is ``static`` (use ``routes`` as given) or ``link-state``
    (ignore ``routes`` and learn them from neighbour routers, see
    node/routing.py). ``link_costs`` maps a neighbour router's name to the
    cost this router advertises for reaching it (default 1), and
    ``routing_suite`` names the crypto suite that signs routing messages.
    """

    name: str
    role: str
    address: str
    groups: tuple[GroupConfig, ...] = ()
    neighbours: dict[str, str] = field(default_factory=dict)
    peer_addresses: dict[str, str] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    gateway: str | None = None
    token_window: float = 30.0
    replay_cache_size: int = 100_000
    timers: Timers = field(default_factory=Timers)
    routing: str = "static"
    link_costs: dict[str, int] = field(default_factory=dict)
    routing_suite: str = "default"

    def __post_init__(self) -> None:
        if self.routing not in ROUTING_MODES:
            raise ConfigError(
                f"{self.name}: unknown routing {self.routing!r}; "
                f"expected one of {', '.join(ROUTING_MODES)}"
            )

    def group_by_address(self, address: str) -> GroupConfig | None:
        for group in self.groups:
            if group.address == address:
                return group
        return None

    def group_by_name(self, name: str) -> GroupConfig | None:
        for group in self.groups:
            if group.name == name:
                return group
        return None


@dataclass(frozen=True)
class Transmit:
    """A datagram to send to ``destination`` (an IPv4 address), port 7777."""

    destination: str
    datagram: bytes = field(repr=False)
    peer: str = ""


@dataclass(frozen=True)
class TraceEvent:
    """One structured trace record; never carries key material."""

    time: float
    name: str
    fields: dict[str, Any]


class Peer(Protocol):
    name: str
    role: str
    address: str

    def verify(self, signature: bytes, data: bytes) -> None: ...

    def seal(self, plaintext: bytes, info: bytes) -> bytes: ...


class PeerDirectory(Protocol):
    def lookup(
        self, name: str, suite_name: str, now: float, roles: Iterable[str]
    ) -> Peer: ...


class NodeIdentity(Protocol):
    name: str

    def sign(self, suite_name: str, data: bytes) -> bytes: ...

    def open(self, suite_name: str, sealed: bytes, info: bytes) -> bytes: ...


# which roles may sign each message type
SIGNER_ROLES: dict[MessageType, tuple[str, ...]] = {
    MessageType.JOIN_REQUEST: ROUTER_ROLES,
    MessageType.JOIN_ACK: ROUTER_ROLES,
    MessageType.JOIN_NACK: ROUTER_ROLES,
    MessageType.QUIT_REQUEST: ROUTER_ROLES,
    MessageType.QUIT_ACK: ROUTER_ROLES,
    MessageType.FLUSH_TREE: ROUTER_ROLES,
    MessageType.ECHO_REQUEST: ROUTER_ROLES,
    MessageType.ECHO_REPLY: ROUTER_ROLES,
    MessageType.MEMBERSHIP_REPORT: ("host",),
    MessageType.KEY_DELIVERY: ROUTER_ROLES,
    MessageType.ACL_UPLOAD: ("initiator",),
    MessageType.ACL_ACCEPT: ("core",),
    MessageType.REKEY: ROUTER_ROLES,
    MessageType.SENDER_KEY_REQUEST: ("host", "initiator"),
    MessageType.SENDER_KEY_GRANT: ("core",),
    MessageType.HELLO: ROUTER_ROLES,
    MessageType.LINK_STATE: ROUTER_ROLES,
}

# messages that travel end to end rather than hop by hop
END_TO_END = frozenset({
    MessageType.ACL_UPLOAD, MessageType.ACL_ACCEPT, MessageType.SENDER_KEY_REQUEST,
    MessageType.SENDER_KEY_GRANT,
})


@dataclass
class Received:
    """A message that passed decoding, signature and token checks.

    ``group`` is ``None`` for routing messages, which belong to no group.
    """

    message: Message
    peer: Peer
    group: GroupConfig | None
    source: str


class Machine:
    """Base class of the host, router, core and initiator state machines."""

    def __init__(
        self,
        config: NodeConfig,
        identity: NodeIdentity,
        directory: PeerDirectory,
        randbytes: Callable[[int], bytes],
    ):
        self.config = config
        self.name = config.name
        self.identity = identity
        self.directory = directory
        self.randbytes = randbytes
        self.counters: Counter[str] = Counter()
        self.replay = ReplayCache(config.token_window, config.replay_cache_size)
        self._outputs: list[Transmit | TraceEvent] = []

    # outputs

    def pop_outputs(self) -> list[Transmit | TraceEvent]:
        outputs, self._outputs = self._outputs, []
        return outputs

    def trace(self, now: float, name: str, **fields: Any) -> None:
        self._outputs.append(TraceEvent(now, name, fields))

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def start(self, now: float) -> None:
        self.trace(now, "agent_started", role=self.config.role, address=self.config.address)

    # receiving

    def receive(self, datagram: bytes, source: str, now: float) -> None:
        """Process one datagram; a bad one is dropped, traced and counted."""
        self.counters["received"] += 1
        try:
            if is_data_packet(datagram):
                self.receive_data(datagram, source, now)
                return
            received = self.authenticate(datagram, source, now)
            self.dispatch(received, now)
        except ProtocolError as error:
            self.drop(now, source, error)

    def receive_data(self, datagram: bytes, source: str, now: float) -> None:
        """Process one group data packet (node/datapacket.py)."""
        raise ProtocolError(
            f"{self.config.role} does not take group data", reason="unexpected-message"
        )

    def dispatch(self, received: Received, now: float) -> None:
        raise ProtocolError(
            f"{self.config.role} does not take {received.message.header.type.name}",
            reason="unexpected-message",
        )

    def drop(self, now: float, peer: str, error: ProtocolError) -> None:
        self.counters[f"drop:{error.reason}"] += 1
        self.trace(now, "drop", peer=peer, reason=error.reason, detail=error.detail)

    def authenticate(self, datagram: bytes, source: str, now: float) -> Received:
        """Decode ``datagram`` and check its signer, signature and token."""
        message = decode_message(datagram)
        header = message.header
        group = None
        if header.type in ROUTING_TYPES:
            suite = self.config.routing_suite
        else:
            group = self.config.group_by_address(header.group)
            if group is None:
                raise ProtocolError(
                    f"unknown group {header.group}", reason="unknown-group"
                )
            suite = group.suite

        signature = message.signature
        assert signature is not None  # decode_message guarantees it
        if signature.suite != suite_by_name(suite).code:
            raise AuthenticationFailed(
                f"signed with suite {signature.suite}, expected {suite}",
                reason="wrong-suite",
            )
        peer = self.directory.lookup(
            signature.signer, suite, now, SIGNER_ROLES[header.type]
        )
        self._check_source(peer, source, header.type)
        # rate limits apply before the signature check, which costs the most
        self.admit(header.type, source, now)
        peer.verify(signature.value, message.signed_part)

        token = getattr(message, "token", None)
        if token is not None:
            self.check_token(token, peer.name, now)
        return Received(message, peer, group, source)

    def admit(self, message_type: MessageType, source: str, now: float) -> None:
        """Raise ``ProtocolError`` to drop a datagram before its signature check."""

    def lookup(
        self, name: str, group: GroupConfig, now: float, roles: Iterable[str]
    ) -> Peer:
        return self.directory.lookup(name, group.suite, now, roles)

    def address_of(self, peer: Peer) -> str:
        """Return the transport address at which this node reaches ``peer``."""
        return self.config.peer_addresses.get(peer.name, peer.address)

    def _check_source(self, peer: Peer, source: str, message_type: MessageType) -> None:
        expected = self.address_of(peer)
        if expected != source:
            raise AuthenticationFailed(
                f"{peer.name} is at {expected}, datagram came from {source}",
                reason="wrong-source",
            )
        if message_type not in END_TO_END and source not in self.config.neighbours:
            raise AuthenticationFailed(
                f"{peer.name} at {source} is not a neighbour", reason="not-neighbour"
            )

    def check_token(self, token: Token, signer: str, now: float) -> None:
        if token.sender != signer:
            raise AuthenticationFailed(
                f"token names sender {token.sender}, message signed by {signer}",
                reason="token-mismatch",
            )
        if token.recipient != self.name:
            raise AuthenticationFailed(
                f"token is for {token.recipient}, not {self.name}",
                reason="wrong-recipient",
            )
        self.replay.check(("router", token.sender, token.nonce), token.timestamp_ms, now)

    def verify_host_token(
        self,
        token: HostToken,
        group: GroupConfig,
        now: float,
        replay: bool = True,
        roles: Iterable[str] = ("host",),
    ) -> Peer:
        """Authenticate a host's signed token; ``replay`` also checks its nonce.

        A router that re-joins signs a token of the same form itself, so
        ``roles`` names the roles its signer may have.
        """
        host = self.lookup(token.host, group, now, roles)
        if token.group != group.address:
            raise AuthenticationFailed(
                f"host token is for group {token.group}", reason="token-mismatch"
            )
        if token.suite != group.suite_code:
            raise AuthenticationFailed("host token suite differs", reason="wrong-suite")
        host.verify(token.signature, token.signed_bytes())
        if replay:
            self.replay.check(("host", token.host, token.nonce), token.timestamp_ms, now)
        else:
            self.replay_window_check(token.timestamp_ms, now)
        return host

    def replay_window_check(self, timestamp_ms: int, now: float) -> None:
        window_ms = self.replay.window_ms
        if abs(int(now * 1000) - timestamp_ms) > window_ms:
            raise AuthenticationFailed(
                "host token outside the freshness window", reason="stale-token"
            )

    def verify_acl(self, signed: SignedAcl, group: GroupConfig, now: float) -> GroupAcl:
        """Check the initiator's signature and the ACL's group and validity."""
        initiator = self.lookup(signed.acl.initiator, group, now, ("initiator",))
        if initiator.name != group.initiator:
            raise AuthenticationFailed(
                f"ACL signed by {initiator.name}, group initiator is {group.initiator}",
                reason="wrong-initiator",
            )
        initiator.verify(signed.signature, signed.signed_bytes())
        acl = signed.acl
        if acl.group != group.address:
            raise AuthenticationFailed(
                f"ACL is for group {acl.group}", reason="invalid-acl"
            )
        if not acl.not_before <= now <= acl.not_after:
            raise AuthenticationFailed("ACL is outside its validity", reason="expired-acl")
        return acl

    # sending

    def new_token(self, recipient: str, now: float) -> Token:
        return Token(self.name, recipient, int(now * 1000), self.randbytes(NONCE_SIZE))

    def new_host_token(self, group: GroupConfig, now: float) -> HostToken:
        unsigned = HostToken(
            self.name, group.address, int(now * 1000),
            self.randbytes(NONCE_SIZE), group.suite_code,
        )
        signature = self.identity.sign(group.suite, unsigned.signed_bytes())
        return HostToken(
            unsigned.host, unsigned.group, unsigned.timestamp_ms,
            unsigned.nonce, unsigned.suite, signature,
        )

    def send(self, message: Message, group: GroupConfig, peer: Peer) -> None:
        self.send_signed(message, group.suite, self.address_of(peer), peer.name)

    def send_signed(
        self, message: Message, suite: str, destination: str, peer_name: str
    ) -> None:
        """Sign ``message`` with ``suite`` and queue it for ``destination``."""
        unsigned = message.encode_unsigned()
        value = self.identity.sign(suite, unsigned)
        code = suite_by_name(suite).code
        datagram = sign_message(unsigned, Signature(self.name, code, value))
        self.counters[f"sent:{message.header.type.name}"] += 1
        self._outputs.append(Transmit(destination, datagram, peer_name))

    def header(self, message_type: MessageType, group: GroupConfig, **fields: Any) -> ControlHeader:
        return ControlHeader(
            message_type,
            group.address,
            primary_core=group.core_addresses[0],
            target_core=fields.pop("target_core", group.core_addresses[0]),
            cores=group.core_addresses,
            **fields,
        )


def suite_name(code: int) -> str:
    return suite_by_code(code).name
