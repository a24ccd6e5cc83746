"""Sample smkd datagrams for the capture tests: every message type and TLV.

The datagrams are built with the project's own encoders. Their signatures are
placeholder bytes, because the decoder and the dissector read signatures but
never verify them.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from node.capture import PcapWriter
from node.documents import AclMode, GroupAcl, HostToken, SignedAcl, Token
from node.lkh import KeyRef, LkhUpdate, WrappedKey
from node.messages import (
    NO_GROUP,
    AckCode,
    AclAccept,
    AclUpload,
    ControlHeader,
    Hello,
    HelloBody,
    JoinAck,
    JoinCode,
    JoinNack,
    JoinRequest,
    KeyDelivery,
    LinkStateUpdate,
    Lsa,
    MembershipReport,
    Message,
    MessageType,
    Reason,
    ReasonCode,
    Rekey,
    ReportCode,
    SealedAcl,
    SealedBundle,
    SenderKeyGrantMessage,
    SenderKeyRequestMessage,
    Signature,
    SignedLsa,
    TreeMessage,
    sign_message,
)
from node.messages import Path as RouterPath
from node.rekey import BranchWrap, BranchWraps, RekeyKind, RekeyNotice, SignedRekey
from node.senderkeys import SenderKeyGrant, SenderKeyRequest

GROUP = "239.9.9.9"
TIME_MS = 1_800_000_000_123
ADDRESSES = {
    "h": "127.9.0.1",
    "A": "127.9.0.2",
    "B": "127.9.0.3",
    "C": "127.9.0.4",
    "init": "127.9.0.5",
    "s": "127.9.0.6",
}

# (source address, destination address, UDP payload)
Datagram = tuple[str, str, bytes]

PCAP_HEADER_SIZE = 24
PCAP_RECORD_HEADER = struct.Struct("<IIII")


def header(message_type: MessageType, code: int = 0) -> ControlHeader:
    return ControlHeader(
        message_type,
        GROUP,
        origin=ADDRESSES["A"],
        primary_core=ADDRESSES["C"],
        target_core=ADDRESSES["C"],
        cores=(ADDRESSES["C"], ADDRESSES["B"]),
        code=code,
        group_mask="255.255.255.255",
    )


def token(sender: str, recipient: str) -> Token:
    return Token(sender, recipient, TIME_MS, bytes(range(16)))


def host_token(host: str = "h") -> HostToken:
    return HostToken(host, GROUP, TIME_MS - 5, bytes(range(16, 32)), 1, b"\x11" * 64)


def signed_acl() -> SignedAcl:
    acl = GroupAcl(
        group=GROUP,
        serial=7,
        mode=AclMode.EXCLUDE,
        hosts=("h9", "x-*"),
        not_before=1_799_000_000,
        not_after=1_801_000_000,
        initiator="init",
        suite=1,
        key_lifetime=600,
        strict=True,
        trusted_routers=("A", "B"),
    )
    return SignedAcl.create(acl, b"\x22" * 64)


def routing_header(message_type: MessageType) -> ControlHeader:
    # routing messages belong to no group and carry no core list
    return ControlHeader(message_type, NO_GROUP, origin=ADDRESSES["A"])


def signed_lsa() -> SignedLsa:
    lsa = Lsa("C", ADDRESSES["C"], TIME_MS + 3, (("A", 5), ("B", 12)))
    return SignedLsa.create(lsa, b"\x77" * 64)


def signed_rekey() -> SignedRekey:
    notice = RekeyNotice(
        group=GROUP, epoch=3, kind=RekeyKind.EVICTION, issued_ms=TIME_MS,
        activation_ms=1000, grace_ms=5000, acl=signed_acl(),
    )
    body = notice.encode()
    return SignedRekey(body, "C", b"\x88" * 64, notice)


def branch_wraps() -> BranchWraps:
    entry = WrappedKey(KeyRef(4, 2), KeyRef(2, 3), b"\x99" * 44)
    return BranchWraps((
        BranchWrap("C", LkhUpdate(1, (entry, entry)), b"\xaa" * 90),
        BranchWrap("B", LkhUpdate(2, ()), b"\xbb" * 91),
    ))


def sign(message: Message, signer: str) -> bytes:
    return sign_message(message.encode_unsigned(), Signature(signer, 1, b"\x33" * 64))


def sample_messages() -> list[tuple[str, str, bytes]]:
    """Return (sender, receiver, datagram) for every message type smkd sends.

    Each datagram is signed by its sender.
    """
    bundle_h = SealedBundle("h", b"\x44" * 80)
    bundle_b = SealedBundle("B", b"\x55" * 81)
    handle_b = SealedBundle("B", b"\x45" * 80)
    path_h = SealedBundle("h", b"\x46" * 82)
    path_b = SealedBundle("B", b"\x47" * 83)
    report = header(MessageType.MEMBERSHIP_REPORT, ReportCode.LEAVE)
    rejoin = header(MessageType.JOIN_REQUEST, JoinCode.REJOIN)
    nack_reason = Reason(ReasonCode.NOT_ON_ACL, "h is not admitted")
    messages: list[tuple[str, str, Message]] = [
        ("h", "A", MembershipReport(report, host_token())),
        (
            "A",
            "B",
            JoinRequest(rejoin, token("A", "B"), host_token(), RouterPath(("A", "B"))),
        ),
        (
            "C",
            "B",
            JoinAck(
                header(MessageType.JOIN_ACK),
                token("C", "B"),
                host_token(),
                signed_acl(),
                bundle_h,
                bundle_b,
                handle_b,
                path_h,
                path_b,
            ),
        ),
        (
            "C",
            "B",
            JoinNack(
                header(MessageType.JOIN_NACK),
                token("C", "B"),
                host_token(),
                nack_reason,
            ),
        ),
        (
            "A",
            "h",
            KeyDelivery(
                header(MessageType.KEY_DELIVERY),
                token("A", "h"),
                host_token(),
                signed_acl(),
                bundle_h,
                SealedBundle("h", b"\x48" * 80),
                path_h,
            ),
        ),
        (
            "init",
            "C",
            AclUpload(
                header(MessageType.ACL_UPLOAD),
                token("init", "C"),
                sealed_acl=SealedAcl(b"\x66" * 120),
            ),
        ),
        (
            "C",
            "init",
            AclAccept(
                header(MessageType.ACL_ACCEPT),
                token("C", "init"),
                Reason(ReasonCode.OLDER_ACL),
            ),
        ),
    ]
    tree_types = (
        MessageType.QUIT_REQUEST,
        MessageType.QUIT_ACK,
        MessageType.FLUSH_TREE,
        MessageType.ECHO_REQUEST,
        MessageType.ECHO_REPLY,
    )
    for tree_type in tree_types:
        messages.append(("A", "B", TreeMessage(header(tree_type), token("A", "B"))))

    # the answer to a router's re-join has no host to deliver keys to
    primary_rejoin = header(MessageType.JOIN_ACK, AckCode.PRIMARY_REJOIN)
    messages.append(
        (
            "C",
            "B",
            JoinAck(
                primary_rejoin,
                token("C", "B"),
                host_token(),
                signed_acl(),
                hop_bundle=bundle_b,
            ),
        )
    )
    hello = HelloBody(("B", "C"), (("B", TIME_MS + 1), ("C", TIME_MS + 2)))
    messages.append(
        ("A", "B", Hello(routing_header(MessageType.HELLO), token("A", "B"), hello))
    )
    messages.append(
        (
            "A",
            "B",
            LinkStateUpdate(
                routing_header(MessageType.LINK_STATE), token("A", "B"), signed_lsa()
            ),
        )
    )
    messages.append(
        ("B", "A", Rekey(header(MessageType.REKEY), token("B", "A"), signed_rekey(),
                         branch_wraps()))
    )
    request = SenderKeyRequest(0x51, bytes(range(16)), b"\xcc" * 32, b"\xdd" * 32)
    messages.append(
        ("s", "C", SenderKeyRequestMessage(header(MessageType.SENDER_KEY_REQUEST),
                                           token("s", "C"), request))
    )
    grant = SenderKeyGrant(0x51, 1_800_003_600, b"\xee" * 64)
    messages.append(
        ("C", "s", SenderKeyGrantMessage(header(MessageType.SENDER_KEY_GRANT),
                                         token("C", "s"), Reason(ReasonCode.ACCEPTED),
                                         grant))
    )
    return [
        (sender, receiver, sign(message, sender))
        for sender, receiver, message in messages
    ]


def addressed(samples: list[tuple[str, str, bytes]]) -> list[Datagram]:
    """Replace the node names of samples with their addresses."""
    return [
        (ADDRESSES[sender], ADDRESSES[receiver], payload)
        for sender, receiver, payload in samples
    ]


def write_datagrams(
    path: Path,
    datagrams: list[Datagram],
    start: float = 1_800_000_000.0,
    port: int = 7777,
) -> None:
    """Write datagrams to a pcap file, one millisecond apart."""
    with PcapWriter(path) as writer:
        for index, (source, destination, payload) in enumerate(datagrams):
            writer.write_udp(
                start + index / 1000,
                source,
                destination,
                payload,
                sport=port,
                dport=port,
            )


def write_prefixes(path: Path, datagrams: list[Datagram]) -> int:
    """Write every strict, non-empty prefix of each datagram; return how many."""
    prefixes = [
        (source, destination, payload[:size])
        for source, destination, payload in datagrams
        for size in range(1, len(payload))
    ]
    write_datagrams(path, prefixes)
    return len(prefixes)


def write_snapped(path: Path, full_capture: Path, keep: int) -> int:
    """Copy a pcap file, cutting every frame to ``keep`` bytes as a snaplen does.

    The record headers keep the original length, so readers see captures
    shorter than the datagrams on the wire. Returns the number of frames.
    """
    data = full_capture.read_bytes()
    output = bytearray(data[:PCAP_HEADER_SIZE])
    offset, frames = PCAP_HEADER_SIZE, 0
    while offset < len(data):
        seconds, micros, captured, original = PCAP_RECORD_HEADER.unpack_from(
            data, offset
        )
        frame = data[
            offset + PCAP_RECORD_HEADER.size : offset
            + PCAP_RECORD_HEADER.size
            + captured
        ]
        cut = frame[:keep]
        output += PCAP_RECORD_HEADER.pack(seconds, micros, len(cut), original) + cut
        offset += PCAP_RECORD_HEADER.size + captured
        frames += 1
    path.write_bytes(bytes(output))
    return frames


def write_garbage(
    path: Path, datagrams: list[Datagram], seed: int = 1, flips: int = 40
) -> None:
    """Write copies of the datagrams with random bytes changed, and random noise."""
    rng = random.Random(seed)
    garbage = []
    for source, destination, payload in datagrams:
        for _ in range(flips):
            changed = bytearray(payload)
            for _ in range(rng.randint(1, 4)):
                changed[rng.randrange(len(changed))] = rng.randrange(256)
            garbage.append((source, destination, bytes(changed)))
        noise = rng.randbytes(rng.randint(1, 400))
        garbage.append((source, destination, noise))
    write_datagrams(path, garbage)
