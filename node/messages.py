"""smkd control messages: a CBTv1 control header and a security TLV block.

Layout of every datagram (UDP port 7777, big-endian)::

    0      version (4 bits) = 1, unused (4 bits)
    1      type                    2   code        3   number of cores
    4..5   header length (bytes)   6..7 checksum over the whole datagram
    8      group address          12   group mask
    16     packet origin          20   primary core
    24     target core            28   core list (number of cores x 4 bytes)
    then   TLVs: type (1 byte), length (2 bytes), value, in increasing type
           order, each type at most once; the SIGNATURE TLV comes last.

Types 1 to 8 are CBTv1's. Types from 0x10 are smkd's: the secure,
non-suppressible membership report of RFC 1949 appendix B (carried here
instead of in IGMPv3), the key delivery from a DR to its host, and the ACL
upload from the group initiator to the primary core, which RFC 1949 leaves
outside CBT. Types 0x14 to 0x16 carry the keys after the join: the primary
core's re-key notice, sent down the tree, and the key exchange of a
non-member sender with the primary core (RFC 1949 section 8). Types from
0x20 are the link-state routing protocol between
neighbouring routers (node/routing.py): hellos and link-state adverts. They
belong to no group, so their group field is 0.0.0.0 and they carry no cores.

The code byte is checked per type: CBTv1's join and join-ack codes, the
report codes, and 0 for every other type.

The signature covers every byte before the SIGNATURE TLV with the checksum
field set to zero; the checksum is computed last, over everything.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import Reader, Writer, internet_checksum
from .documents import HostToken, SignedAcl, Token
from .errors import MalformedMessage
from .rekey import BranchWraps, SignedRekey
from .senderkeys import SenderKeyGrant, SenderKeyRequest

CBT_PORT = 7777
VERSION = 1
FIXED_HEADER_SIZE = 28
MAX_CORES = 16


class MessageType(enum.IntEnum):
    JOIN_REQUEST = 1
    JOIN_ACK = 2
    JOIN_NACK = 3
    QUIT_REQUEST = 4
    QUIT_ACK = 5
    FLUSH_TREE = 6
    ECHO_REQUEST = 7
    ECHO_REPLY = 8
    MEMBERSHIP_REPORT = 0x10
    KEY_DELIVERY = 0x11
    ACL_UPLOAD = 0x12
    ACL_ACCEPT = 0x13
    REKEY = 0x14
    SENDER_KEY_REQUEST = 0x15
    SENDER_KEY_GRANT = 0x16
    HELLO = 0x20
    LINK_STATE = 0x21


class JoinCode(enum.IntEnum):
    """CBTv1 join request codes."""

    ACTIVE_JOIN = 0
    REJOIN = 1
    REJOIN_LOOP_PROBE = 2


class AckCode(enum.IntEnum):
    """CBTv1 join-ack codes: who answered, so a re-joiner knows if it must probe."""

    NORMAL = 0
    PRIMARY_REJOIN = 1
    PRIMARY_LOOP_PROBE = 2


class ReportCode(enum.IntEnum):
    """Membership report codes; REFRESH is a member that holds the key saying so."""

    JOIN = 0
    LEAVE = 1
    REFRESH = 2


# valid code bytes per message type; a type missing here takes only 0
_CODES: dict[MessageType, type[enum.IntEnum]] = {
    MessageType.JOIN_REQUEST: JoinCode,
    MessageType.JOIN_ACK: AckCode,
    MessageType.MEMBERSHIP_REPORT: ReportCode,
}

NO_GROUP = "0.0.0.0"


class TlvType(enum.IntEnum):
    TOKEN = 1
    HOST_TOKEN = 2
    ACL = 3
    SEALED_ACL = 4
    HOST_BUNDLE = 5
    HOP_BUNDLE = 6
    PATH = 7
    REASON = 8
    HELLO = 9
    LSA = 10
    HANDLE = 0x10
    REKEY = 0x11
    SENDER_REQUEST = 0x12
    SENDER_GRANT = 0x13
    HOST_PATH = 0x14
    HOP_PATH = 0x15
    BRANCH_WRAPS = 0x16
    SIGNATURE = 0xFF


class ReasonCode(enum.IntEnum):
    """The reason a join was NACKed or an ACL upload rejected (0 means accepted)."""

    ACCEPTED = 0
    NOT_ON_ACL = 1
    NO_ACL = 2
    AUTHENTICATION_FAILED = 3
    NO_ROUTE = 4
    OLDER_ACL = 5
    INVALID_ACL = 6
    LOOP = 7


@dataclass(frozen=True)
class ControlHeader:
    type: MessageType
    group: str
    origin: str = "0.0.0.0"
    primary_core: str = "0.0.0.0"
    target_core: str = "0.0.0.0"
    cores: tuple[str, ...] = ()
    code: int = 0
    group_mask: str = "0.0.0.0"

    @property
    def length(self) -> int:
        return FIXED_HEADER_SIZE + 4 * len(self.cores)

    def encode(self, w: Writer) -> None:
        if len(self.cores) > MAX_CORES:
            raise ValueError(f"{len(self.cores)} cores exceed {MAX_CORES}")
        w.push_u8(VERSION << 4)
        w.push_u8(self.type)
        w.push_u8(self.code)
        w.push_u8(len(self.cores))
        w.push_u16(self.length)
        w.push_u16(0)  # checksum, filled in last
        for address in (
            self.group, self.group_mask, self.origin,
            self.primary_core, self.target_core,
        ):
            w.push_address(address)
        for core in self.cores:
            w.push_address(core)

    @classmethod
    def decode(cls, r: Reader) -> ControlHeader:
        first = r.pull_u8()
        if first >> 4 != VERSION:
            raise MalformedMessage(f"unsupported version {first >> 4}")
        message_type = _pull_type(r)
        code = r.pull_u8()
        core_count = r.pull_u8()
        if core_count > MAX_CORES:
            raise MalformedMessage(f"{core_count} cores exceed {MAX_CORES}")
        length = r.pull_u16()
        r.pull_u16()  # checksum, verified over the whole datagram
        if length != FIXED_HEADER_SIZE + 4 * core_count:
            raise MalformedMessage(
                f"header length {length} does not match {core_count} cores"
            )
        _check_code(message_type, code)
        group, mask, origin, primary, target = (r.pull_address() for _ in range(5))
        cores = tuple(r.pull_address() for _ in range(core_count))
        return cls(message_type, group, origin, primary, target, cores, code, mask)


def _check_code(message_type: MessageType, code: int) -> None:
    codes = _CODES.get(message_type)
    valid = code == 0 if codes is None else code in {c.value for c in codes}
    if not valid:
        raise MalformedMessage(f"unknown {message_type.name} code {code}")


def _pull_type(r: Reader) -> MessageType:
    value = r.pull_u8()
    try:
        return MessageType(value)
    except ValueError:
        raise MalformedMessage(f"unknown message type {value}") from None


@dataclass(frozen=True)
class SealedBundle:
    """A secret sealed with HPKE to one named recipient.

    The secret is a signed key bundle, a packet handle secret
    (node/handles.py) or a path in a GKDC's key tree (node/lkh.py).
    """

    recipient: str
    sealed: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.push_name(self.recipient)
        w.push_bytes(self.sealed)

    @classmethod
    def decode(cls, r: Reader) -> SealedBundle:
        recipient = r.pull_name("bundle recipient")
        sealed = r.pull_bytes(r.remaining())
        if not sealed:
            raise MalformedMessage("empty sealed bundle")
        return cls(recipient, sealed)


@dataclass(frozen=True)
class SealedAcl:
    """A signed ACL sealed to the primary core, for groups whose membership is secret."""

    sealed: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.push_bytes(self.sealed)

    @classmethod
    def decode(cls, r: Reader) -> SealedAcl:
        sealed = r.pull_bytes(r.remaining())
        if not sealed:
            raise MalformedMessage("empty sealed ACL")
        return cls(sealed)


@dataclass(frozen=True)
class Path:
    """The routers a join request has passed, the designated router first."""

    routers: tuple[str, ...]

    def encode(self, w: Writer) -> None:
        w.push_names(self.routers)

    @classmethod
    def decode(cls, r: Reader) -> Path:
        return cls(r.pull_names("path router"))


@dataclass(frozen=True)
class Reason:
    code: ReasonCode
    text: str = ""

    def encode(self, w: Writer) -> None:
        w.push_u8(self.code)
        w.push_blob8(self.text.encode("utf-8")[:255])

    @classmethod
    def decode(cls, r: Reader) -> Reason:
        value = r.pull_u8()
        try:
            code = ReasonCode(value)
        except ValueError:
            raise MalformedMessage(f"unknown reason code {value}") from None
        text = r.pull_blob8().decode("utf-8", errors="replace")
        return cls(code, text)


@dataclass(frozen=True)
class Signature:
    signer: str
    suite: int
    value: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.push_name(self.signer)
        w.push_u8(self.suite)
        w.push_blob16(self.value)

    @classmethod
    def decode(cls, r: Reader) -> Signature:
        return cls(r.pull_name("signer"), r.pull_u8(), r.pull_blob16())


LSA_LABEL = b"smkd link state\0"
MAX_LSA_LINKS = 1024


@dataclass(frozen=True)
class Lsa:
    """A router's link-state advert: its identity and its live adjacencies.

    ``sequence`` is the origination time in milliseconds, so a restarted
    router's adverts supersede those of its previous run. ``links`` pairs each
    neighbour router's name with the cost of reaching it.
    """

    origin: str
    address: str
    sequence: int
    links: tuple[tuple[str, int], ...]

    def encode(self) -> bytes:
        w = Writer()
        w.push_name(self.origin)
        w.push_address(self.address)
        w.push_u64(self.sequence)
        w.push_u16(len(self.links))
        for neighbour, cost in self.links:
            w.push_name(neighbour)
            w.push_u32(cost)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Lsa:
        r = Reader(data)
        origin = r.pull_name("LSA origin")
        address = r.pull_address()
        sequence = r.pull_u64()
        count = r.pull_u16()
        # each link takes at least six bytes, so a lying count fails fast
        if count > MAX_LSA_LINKS or count * 6 > r.remaining():
            raise MalformedMessage(f"{count} LSA links cannot fit in the field")
        links = tuple(
            (r.pull_name("LSA neighbour"), r.pull_u32()) for _ in range(count)
        )
        r.expect_end("the LSA")
        return cls(origin, address, sequence, links)


@dataclass(frozen=True)
class SignedLsa:
    """``[LSA]^SK_origin``: flooded unchanged, so every router can verify the origin.

    The body is kept as received, so verification never depends on
    re-encoding the decoded fields.
    """

    body: bytes
    signature: bytes = field(repr=False)
    lsa: Lsa = field(compare=False)

    @classmethod
    def create(cls, lsa: Lsa, signature: bytes) -> SignedLsa:
        return cls(lsa.encode(), signature, lsa)

    def signed_bytes(self) -> bytes:
        return LSA_LABEL + self.body

    def encode(self, w: Writer) -> None:
        w.push_blob16(self.body)
        w.push_blob16(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> SignedLsa:
        body = r.pull_blob16()
        signature = r.pull_blob16()
        return cls(body, signature, Lsa.decode(body))


@dataclass(frozen=True)
class HelloBody:
    """What a hello tells a neighbour router.

    ``heard`` lists the routers whose hellos the sender has heard recently, so
    a router sees its own name when the adjacency works both ways.
    ``summary`` pairs each LSA origin in the sender's database with its
    sequence, so the receiver sends back the adverts the sender lacks.
    """

    heard: tuple[str, ...]
    summary: tuple[tuple[str, int], ...]

    def encode(self, w: Writer) -> None:
        w.push_names(self.heard)
        w.push_u16(len(self.summary))
        for origin, sequence in self.summary:
            w.push_name(origin)
            w.push_u64(sequence)

    @classmethod
    def decode(cls, r: Reader) -> HelloBody:
        heard = r.pull_names("heard router")
        count = r.pull_u16()
        # each entry takes at least ten bytes, so a lying count fails fast
        if count * 10 > r.remaining():
            raise MalformedMessage(f"{count} summary entries cannot fit in the field")
        summary = tuple((r.pull_name("LSA origin"), r.pull_u64()) for _ in range(count))
        return cls(heard, summary)


# the codec of each TLV's value, keyed by type
_TLV_CODECS: dict[TlvType, Any] = {
    TlvType.TOKEN: Token,
    TlvType.HOST_TOKEN: HostToken,
    TlvType.ACL: SignedAcl,
    TlvType.SEALED_ACL: SealedAcl,
    TlvType.HOST_BUNDLE: SealedBundle,
    TlvType.HOP_BUNDLE: SealedBundle,
    TlvType.PATH: Path,
    TlvType.REASON: Reason,
    TlvType.HELLO: HelloBody,
    TlvType.LSA: SignedLsa,
    TlvType.HANDLE: SealedBundle,
    TlvType.REKEY: SignedRekey,
    TlvType.SENDER_REQUEST: SenderKeyRequest,
    TlvType.SENDER_GRANT: SenderKeyGrant,
    TlvType.HOST_PATH: SealedBundle,
    TlvType.HOP_PATH: SealedBundle,
    TlvType.BRANCH_WRAPS: BranchWraps,
    TlvType.SIGNATURE: Signature,
}


class Message:
    """Base of every control message.

    A subclass is a frozen dataclass whose first field is ``header`` and
    whose ``LAYOUT`` lists ``(attribute, TLV type, required)`` in wire order.
    ``signature`` and ``signed_part`` are set by :func:`decode_message`.
    """

    TYPE: ClassVar[MessageType]
    LAYOUT: ClassVar[tuple[tuple[str, TlvType, bool], ...]]
    header: ControlHeader
    signature: Signature | None
    signed_part: bytes

    def encode_unsigned(self) -> bytes:
        """Encode the header and TLVs, without the signature and checksum."""
        if self.header.type != self.TYPE:
            raise ValueError(f"{type(self).__name__} needs a {self.TYPE.name} header")
        w = Writer()
        self.header.encode(w)
        for attribute, tlv_type, _ in self.LAYOUT:
            value = getattr(self, attribute)
            if value is not None:
                _push_tlv(w, tlv_type, value)
        return w.getvalue()


def _push_tlv(w: Writer, tlv_type: TlvType, value: Any) -> None:
    inner = Writer()
    value.encode(inner)
    w.push_u8(tlv_type)
    w.push_blob16(inner.getvalue())


@dataclass(frozen=True)
class JoinRequest(Message):
    TYPE = MessageType.JOIN_REQUEST
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("host_token", TlvType.HOST_TOKEN, True),
        ("path", TlvType.PATH, True),
    )
    header: ControlHeader
    token: Token
    host_token: HostToken
    path: Path
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class JoinAck(Message):
    """The answer to a join, with the group access package.

    ``host_bundle`` is absent in the answer to a router's re-join, which has
    no host to deliver keys to, and in a loop-probe answer, which carries no
    keys at all. The router that receives an ack checks which case it has.
    ``handle`` is the packet handle secret of the new tree link, sealed to
    the child; a loop-probe answer makes no link and carries none.
    ``host_path`` and ``hop_path`` go with the bundles of the same recipients:
    each is the recipient's path in the key tree of the GKDC that sealed the
    bundle (node/keyserver.py).
    """

    TYPE = MessageType.JOIN_ACK
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("host_token", TlvType.HOST_TOKEN, True),
        ("acl", TlvType.ACL, True),
        ("host_bundle", TlvType.HOST_BUNDLE, False),
        ("hop_bundle", TlvType.HOP_BUNDLE, False),
        ("handle", TlvType.HANDLE, False),
        ("host_path", TlvType.HOST_PATH, False),
        ("hop_path", TlvType.HOP_PATH, False),
    )
    header: ControlHeader
    token: Token
    host_token: HostToken
    acl: SignedAcl
    host_bundle: SealedBundle | None = None
    hop_bundle: SealedBundle | None = None
    handle: SealedBundle | None = None
    host_path: SealedBundle | None = None
    hop_path: SealedBundle | None = None
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class JoinNack(Message):
    TYPE = MessageType.JOIN_NACK
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("host_token", TlvType.HOST_TOKEN, True),
        ("reason", TlvType.REASON, True),
    )
    header: ControlHeader
    token: Token
    host_token: HostToken
    reason: Reason
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class MembershipReport(Message):
    """Appendix B's secure report: code JOIN or LEAVE, never suppressed."""

    TYPE = MessageType.MEMBERSHIP_REPORT
    LAYOUT = (("host_token", TlvType.HOST_TOKEN, True),)
    header: ControlHeader
    host_token: HostToken
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class KeyDelivery(Message):
    """``A --> h: [[token_h]^SK_h, {grpKey, KEK, Sparams}^PK_h]``, signed by A.

    ``handle`` is the packet handle secret between A and h, sealed to h, and
    ``host_path`` h's path in the key tree of the GKDC that sealed the bundle.
    """

    TYPE = MessageType.KEY_DELIVERY
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("host_token", TlvType.HOST_TOKEN, True),
        ("acl", TlvType.ACL, True),
        ("host_bundle", TlvType.HOST_BUNDLE, True),
        ("handle", TlvType.HANDLE, False),
        ("host_path", TlvType.HOST_PATH, False),
    )
    header: ControlHeader
    token: Token
    host_token: HostToken
    acl: SignedAcl
    host_bundle: SealedBundle
    handle: SealedBundle | None = None
    host_path: SealedBundle | None = None
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class AclUpload(Message):
    """The initiator's signed ACL, in clear or sealed to the primary core."""

    TYPE = MessageType.ACL_UPLOAD
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("acl", TlvType.ACL, False),
        ("sealed_acl", TlvType.SEALED_ACL, False),
    )
    header: ControlHeader
    token: Token
    acl: SignedAcl | None = None
    sealed_acl: SealedAcl | None = None
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.acl is None) == (self.sealed_acl is None):
            raise MalformedMessage("an ACL upload carries exactly one ACL")


@dataclass(frozen=True)
class AclAccept(Message):
    """The primary core's reply to an ACL upload, with its reason code."""

    TYPE = MessageType.ACL_ACCEPT
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("reason", TlvType.REASON, True),
    )
    header: ControlHeader
    token: Token
    reason: Reason
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class Rekey(Message):
    """The primary core's signed re-key notice, passed from parent to child.

    An eviction also carries ``wraps``: the next bundle under the new key
    tree root of each GKDC on the way down (node/keyserver.py).
    """

    TYPE = MessageType.REKEY
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("rekey", TlvType.REKEY, True),
        ("wraps", TlvType.BRANCH_WRAPS, False),
    )
    header: ControlHeader
    token: Token
    rekey: SignedRekey
    wraps: BranchWraps | None = None
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class SenderKeyRequestMessage(Message):
    """A non-member sender's key exchange request to the primary core."""

    TYPE = MessageType.SENDER_KEY_REQUEST
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("request", TlvType.SENDER_REQUEST, True),
    )
    header: ControlHeader
    token: Token
    request: SenderKeyRequest
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class SenderKeyGrantMessage(Message):
    """The primary core's answer to a sender: a reason code, and the grant if accepted."""

    TYPE = MessageType.SENDER_KEY_GRANT
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("reason", TlvType.REASON, True),
        ("grant", TlvType.SENDER_GRANT, False),
    )
    header: ControlHeader
    token: Token
    reason: Reason
    grant: SenderKeyGrant | None = None
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class TreeMessage(Message):
    """QUIT, FLUSH-TREE and ECHO messages: a header and the sender's token."""

    TYPE = MessageType.ECHO_REQUEST
    LAYOUT = (("token", TlvType.TOKEN, True),)
    header: ControlHeader
    token: Token
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)

    def encode_unsigned(self) -> bytes:
        if self.header.type not in _TREE_TYPES:
            raise ValueError(f"{self.header.type.name} is not a tree message")
        w = Writer()
        self.header.encode(w)
        _push_tlv(w, TlvType.TOKEN, self.token)
        return w.getvalue()


class _RoutingMessage(Message):
    """Base of the routing messages, which belong to no group."""

    def __post_init__(self) -> None:
        header = self.header
        if header.group != NO_GROUP or header.cores:
            raise MalformedMessage(
                f"{header.type.name} names group {header.group} or a core list; "
                "routing messages belong to no group"
            )


@dataclass(frozen=True)
class Hello(_RoutingMessage):
    """A signed hello to one neighbour router."""

    TYPE = MessageType.HELLO
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("hello", TlvType.HELLO, True),
    )
    header: ControlHeader
    token: Token
    hello: HelloBody
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class LinkStateUpdate(_RoutingMessage):
    """One LSA passed to a neighbour, signed by the hop; the LSA by its origin."""

    TYPE = MessageType.LINK_STATE
    LAYOUT = (
        ("token", TlvType.TOKEN, True),
        ("lsa", TlvType.LSA, True),
    )
    header: ControlHeader
    token: Token
    lsa: SignedLsa
    signature: Signature | None = field(default=None, compare=False)
    signed_part: bytes = field(default=b"", compare=False, repr=False)


ROUTING_TYPES = frozenset({MessageType.HELLO, MessageType.LINK_STATE})

_TREE_TYPES = frozenset({
    MessageType.QUIT_REQUEST, MessageType.QUIT_ACK, MessageType.FLUSH_TREE,
    MessageType.ECHO_REQUEST, MessageType.ECHO_REPLY,
})

MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        JoinRequest, JoinAck, JoinNack, MembershipReport, KeyDelivery,
        AclUpload, AclAccept, Rekey, SenderKeyRequestMessage,
        SenderKeyGrantMessage, Hello, LinkStateUpdate,
    )
}
for _tree_type in _TREE_TYPES:
    MESSAGE_CLASSES[_tree_type] = TreeMessage


def sign_message(unsigned: bytes, signature: Signature) -> bytes:
    """Append the SIGNATURE TLV to ``unsigned`` and fill in the checksum."""
    w = Writer()
    w.push_bytes(unsigned)
    _push_tlv(w, TlvType.SIGNATURE, signature)
    datagram = bytearray(w.getvalue())
    datagram[6:8] = internet_checksum(bytes(datagram)).to_bytes(2, "big")
    return bytes(datagram)


def decode_message(datagram: bytes, check_checksum: bool = True) -> Message:
    """Decode one datagram; raise :class:`MalformedMessage` for anything wrong."""
    if check_checksum and internet_checksum(datagram) != 0:
        raise MalformedMessage("bad checksum")
    r = Reader(datagram)
    header = ControlHeader.decode(r)
    values, signature, signature_at = _pull_tlvs(r)
    if signature is None:
        raise MalformedMessage("missing signature")

    signed_part = bytearray(datagram[:signature_at])
    signed_part[6:8] = b"\0\0"
    cls = MESSAGE_CLASSES[header.type]
    fields = _fields_for(cls, header, values)
    return cls(
        header=header, signature=signature, signed_part=bytes(signed_part), **fields
    )


def _pull_tlvs(r: Reader) -> tuple[dict[TlvType, Any], Signature | None, int]:
    values: dict[TlvType, Any] = {}
    last_type = 0
    while not r.at_end():
        start = r.position
        raw_type = r.pull_u8()
        value_bytes = r.pull_blob16()
        if raw_type <= last_type:
            raise MalformedMessage(f"TLV type {raw_type} out of order or repeated")
        try:
            tlv_type = TlvType(raw_type)
        except ValueError:
            raise MalformedMessage(f"unknown TLV type {raw_type}") from None
        inner = Reader(value_bytes)
        value = _TLV_CODECS[tlv_type].decode(inner)
        inner.expect_end(f"TLV {tlv_type.name}")
        last_type = raw_type
        if tlv_type is TlvType.SIGNATURE:
            r.expect_end("the signature")
            return values, value, start
        values[tlv_type] = value
    return values, None, r.position


def _fields_for(
    cls: type[Message], header: ControlHeader, values: dict[TlvType, Any]
) -> dict[str, Any]:
    layout = cls.LAYOUT
    fields = {}
    for attribute, tlv_type, required in layout:
        value = values.pop(tlv_type, None)
        if value is None and required:
            raise MalformedMessage(f"{header.type.name} lacks its {tlv_type.name} TLV")
        fields[attribute] = value
    if values:
        names = ", ".join(t.name for t in values)
        raise MalformedMessage(f"{header.type.name} cannot carry {names}")
    return fields


def replace(message: Message, **changes: Any) -> Message:
    """Return a copy of ``message`` with fields changed, as dataclasses.replace."""
    return dataclasses.replace(message, **changes)  # type: ignore[type-var]
