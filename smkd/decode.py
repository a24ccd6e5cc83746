"""``smkd decode``: print captures as a transcript in RFC 1949's notation.

Each smkd datagram becomes one line such as::

    0.000000  A --> B: [[token_A], [token_h]^SK_h, JOIN-REQUEST]^SK_A

in the notation of RFC 1949 appendix A: square brackets enclose a message,
``^SK_X`` marks X's signature, and ``{...}^PK_X`` encryption to X's public
key. Node names come from the signer and token names inside the messages;
an address that no message names is printed as it is. Group data packets
get one line each, with the sender, sequence number and epoch they carry,
and their ciphertext only as its size. The ``smkd
wireshark`` subcommand, also here, points at the Lua dissector shipped with
the package.
"""

from __future__ import annotations

import argparse
import enum
import importlib.resources
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.capture import CapturedDatagram, read_pcap
from node.datapacket import DataKind, DataPacket, is_data_packet
from node.documents import HostToken, SignedAcl, Token
from node.errors import MalformedMessage
from node.messages import (
    CBT_PORT,
    AckCode,
    AclAccept,
    AclUpload,
    HelloBody,
    JoinAck,
    JoinCode,
    JoinNack,
    KeyDelivery,
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
    decode_message,
)
from node.messages import Path as RouterPath
from node.rekey import BranchWraps, RekeyKind, SignedRekey
from node.senderkeys import SenderKeyGrant, SenderKeyRequest

# exit code for unreadable input, as for the other subcommands
EXIT_INVALID = 2

# seconds: a datagram captured on two interfaces (both ends of a link) appears
# in two files about a link delay apart. Copies within one file are kept,
# because those are retransmissions.
DUPLICATE_WINDOW = 1.0


@dataclass(frozen=True)
class CapturedMessage:
    """One smkd datagram from a capture, decoded or with the reason it failed.

    ``data`` holds a group data packet, which is no control message.
    """

    datagram: CapturedDatagram
    source: Path
    message: Message | None
    error: str | None = None
    data: DataPacket | None = None


def capture_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand run and capture directories into their pcap files.

    A run directory stands for its ``captures/`` folder. Raises
    FileNotFoundError for a path that does not exist or a folder without
    pcap files.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            folder = path / "captures" if (path / "captures").is_dir() else path
            found = sorted(folder.glob("*.pcap"))
            if not found:
                raise FileNotFoundError(f"no .pcap files in {folder}")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"capture {path} not found")
    return files


def read_captures(
    paths: Iterable[str | Path], port: int = CBT_PORT
) -> list[CapturedMessage]:
    """Read and decode the smkd datagrams of several pcap files, merged by time.

    Only UDP datagrams from or to ``port`` count. Raises MalformedMessage for
    a file that is not a readable pcap, and OSError when one cannot be read.
    """
    datagrams: list[tuple[CapturedDatagram, Path]] = []
    for path in capture_files(paths):
        for datagram in read_pcap(path):
            if port in (datagram.sport, datagram.dport):
                datagrams.append((datagram, path))

    # sorted() is stable, so datagrams with equal times keep their file order
    datagrams.sort(key=lambda pair: pair[0].timestamp)
    return [_decode(datagram, path) for datagram, path in _drop_duplicates(datagrams)]


def _drop_duplicates(
    datagrams: list[tuple[CapturedDatagram, Path]],
) -> list[tuple[CapturedDatagram, Path]]:
    """Drop copies of a datagram that another capture file already holds."""
    kept = []
    last_seen: dict[tuple[str, str, bytes], tuple[float, Path]] = {}
    for datagram, path in datagrams:
        key = (datagram.src, datagram.dst, datagram.payload)
        previous = last_seen.get(key)
        if previous is not None:
            previous_time, previous_path = previous
            close = datagram.timestamp - previous_time <= DUPLICATE_WINDOW
            if close and previous_path != path:
                continue
        last_seen[key] = (datagram.timestamp, path)
        kept.append((datagram, path))
    return kept


def _decode(datagram: CapturedDatagram, path: Path) -> CapturedMessage:
    try:
        if is_data_packet(datagram.payload):
            data = DataPacket.decode(datagram.payload)
            return CapturedMessage(datagram, path, None, data=data)
        return CapturedMessage(datagram, path, decode_message(datagram.payload))
    except MalformedMessage as error:
        return CapturedMessage(datagram, path, None, str(error))


def address_names(messages: Iterable[CapturedMessage]) -> dict[str, str]:
    """Map addresses to the node names that the messages sent from or to them carry.

    A signed message names its sender, and a router token names its
    recipient. Where an address is named differently, the commonest name wins.
    """
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for captured in messages:
        message = captured.message
        if message is None:
            continue
        if message.signature is not None:
            votes[captured.datagram.src][message.signature.signer] += 1
        token = getattr(message, "token", None)
        if token is not None:
            votes[captured.datagram.dst][token.recipient] += 1
    return {address: names.most_common(1)[0][0] for address, names in votes.items()}


def sender_of(captured: CapturedMessage, names: dict[str, str]) -> str:
    message = captured.message
    if message is not None and message.signature is not None:
        return message.signature.signer
    return names.get(captured.datagram.src, captured.datagram.src)


def receiver_of(captured: CapturedMessage, names: dict[str, str]) -> str:
    token = getattr(captured.message, "token", None)
    if token is not None:
        return token.recipient
    return names.get(captured.datagram.dst, captured.datagram.dst)


def notation(message: Message) -> str:
    """Write ``message`` in RFC 1949's notation, without the ``A --> B:`` part.

    Reports and key deliveries appear as RFC 1949 section 6.2 writes them,
    without the signature that smkd adds to every datagram. The fields view
    shows that signature.
    """
    signer = message.signature.signer if message.signature is not None else "?"
    if isinstance(message, MembershipReport):
        return f"[{_host_token(message.host_token)}, {_report_name(message)}]"
    if isinstance(message, KeyDelivery):
        return (
            f"[{_host_token(message.host_token)}, "
            f"{{grpKey, KEK, Sparams}}^PK_{message.host_bundle.recipient}]"
        )
    return f"[{', '.join(_signed_parts(message))}]^SK_{signer}"


def _signed_parts(message: Message) -> list[str]:
    """Return the parts of a signed router message, in the RFC's order."""
    name = _type_name(message)
    if isinstance(message, JoinAck) and message.host_bundle is not None:
        # the RFC folds the sender's token into the group access package
        return [_host_token(message.host_token), "grpAP", name]

    parts = [_token(message.token)] if hasattr(message, "token") else []
    host_token = getattr(message, "host_token", None)
    if host_token is not None:
        parts.append(_host_token(host_token))
    if isinstance(message, JoinAck):
        # an ack to a router's re-join has no host, so no key pair for one
        parts.append(f"[ACL]^SK_{message.acl.acl.initiator}")
        if message.hop_bundle is not None:
            parts.append(f"{{grpKey, KEK, Sparams}}^PK_{message.hop_bundle.recipient}")
    if isinstance(message, AclUpload):
        parts.append(_acl_upload_part(message))
    if isinstance(message, Rekey):
        parts.extend(_rekey_parts(message))
    if isinstance(message, SenderKeyRequestMessage):
        spi = message.request.sender_spi
        parts.append(f"[SPI 0x{spi:08x}, sender key, exchange key]")
    if isinstance(message, SenderKeyGrantMessage) and message.grant is not None:
        parts.append("{session key}^PK_exchange")
    lsa = getattr(message, "lsa", None)
    if lsa is not None:
        parts.append(f"[LSA]^SK_{lsa.lsa.origin}")
    rejected = isinstance(
        message, (JoinNack, AclAccept, SenderKeyGrantMessage)
    ) and (message.reason.code is not ReasonCode.ACCEPTED)
    if rejected:
        name = f"{name} ({message.reason.code.name})"
    parts.append(name)
    return parts


def _rekey_parts(message: Rekey) -> list[str]:
    """Write a re-key notice and, for an eviction, its branch wraps."""
    signed = message.rekey
    notice = signed.notice
    inside = [f"epoch {notice.epoch}"]
    if notice.kind is RekeyKind.SCHEDULED:
        inside.insert(0, f"{{[grpKey, KEK, Sparams]^SK_{signed.signer}}}^KEK")
    if notice.acl is not None:
        inside.append(f"[ACL]^SK_{notice.acl.acl.initiator}")
    parts = [f"[{', '.join(inside)}]^SK_{signed.signer}"]
    for wrap in message.wraps.wraps if message.wraps is not None else ():
        parts.append(f"{{[grpKey, KEK, Sparams]^SK_{signed.signer}}}^LKH_{wrap.owner}")
    return parts


def _token(token: Token) -> str:
    return f"[token_{token.sender}]"


def _host_token(host_token: HostToken) -> str:
    return f"[token_{host_token.host}]^SK_{host_token.host}"


def _acl_upload_part(message: AclUpload) -> str:
    signer = message.signature.signer if message.signature is not None else "?"
    if message.acl is not None:
        return f"[ACL]^SK_{message.acl.acl.initiator}"
    return f"{{[ACL]^SK_{signer}}}^PK_{message.token.recipient}"


def _report_name(message: MembershipReport) -> str:
    code = message.header.code
    if code == ReportCode.JOIN:
        return "IGMP group membership report"
    if code == ReportCode.LEAVE:
        return "IGMP leave report"
    return f"IGMP group membership report ({_code_name(ReportCode, code)})"


def _type_name(message: Message) -> str:
    """Name the message type as CBT does, with its code unless that is 0."""
    name = message.header.type.name.replace("_", "-")
    code = message.header.code
    if code == 0:
        return name
    if message.header.type is MessageType.JOIN_REQUEST:
        return f"{name} ({_code_name(JoinCode, code)})"
    if message.header.type is MessageType.JOIN_ACK:
        return f"{name} ({_code_name(AckCode, code)})"
    return f"{name} (code {code})"


def _code_name(codes: type[enum.IntEnum], value: int) -> str:
    try:
        return codes(value).name.replace("_", "-").lower()
    except ValueError:
        return f"code {value}"


def transcript_line(
    captured: CapturedMessage, names: dict[str, str], start: float
) -> str:
    """Format one datagram as ``time  sender --> receiver: notation``."""
    elapsed = captured.datagram.timestamp - start
    route = f"{sender_of(captured, names)} --> {receiver_of(captured, names)}"
    if captured.data is not None:
        return f"{elapsed:10.6f}  {route}: {data_notation(captured.data)}"
    if captured.message is None:
        size = len(captured.datagram.payload)
        return (
            f"{elapsed:10.6f}  {route}: malformed datagram of {size} bytes: "
            f"{captured.error}"
        )
    return f"{elapsed:10.6f}  {route}: {notation(captured.message)}"


def data_notation(packet: DataPacket) -> str:
    """Write a group data packet: whose, which one, under which key."""
    key = f"grpKey_{packet.epoch}" if packet.group_spi else f"K_{packet.sender}"
    if packet.kind is DataKind.SENDER_KEY:
        body = f"{{[sender_key]^SK_{packet.sender}}}^{key}"
        return f"[{body}, SENDER-KEY #{packet.seq}]"
    body = f"{{data #{packet.seq}}}^{key}"
    return f"[{body}]^SK_sender_{packet.sender}"


def field_lines(captured: CapturedMessage) -> list[str]:
    """Describe the fields behind one transcript line, one part per line."""
    datagram = captured.datagram
    route = f"{datagram.src}:{datagram.sport} -> {datagram.dst}:{datagram.dport}"
    size = len(datagram.payload)
    lines = [f"datagram: {route}, {size} bytes, in {captured.source.name}"]
    if captured.data is not None:
        lines.append(_describe_data(captured.data))
        return lines
    message = captured.message
    if message is None:
        return lines
    lines.append(_header_line(message))
    for attribute, value in _tlv_values(message):
        lines.append(_describe(value, attribute))
    return lines


def _describe_data(packet: DataPacket) -> str:
    handle = f"handle {len(packet.handle)} bytes" if packet.handle else "no handle"
    return (
        f"data: {packet.kind.name.lower()} from {packet.sender}, group {packet.group}, "
        f"group SPI 0x{packet.group_spi:08x} epoch {packet.epoch}, sender SPI "
        f"0x{packet.sender_spi:08x}, seq {packet.seq}, "
        f"{'on' if packet.on_tree else 'off'} tree, hop limit {packet.hop_limit}, "
        f"ciphertext {len(packet.ciphertext)} bytes, "
        f"signature {len(packet.signature)} bytes, {handle}"
    )


def _header_line(message: Message) -> str:
    header = message.header
    cores = ", ".join(header.cores) or "none"
    return (
        f"header: {header.type.name} code {header.code}, group {header.group} "
        f"mask {header.group_mask}, origin {header.origin}, primary core "
        f"{header.primary_core}, target core {header.target_core}, cores {cores}"
    )


def _tlv_values(message: Message) -> list[tuple[str, Any]]:
    values = [
        (attribute, getattr(message, attribute)) for attribute, _, _ in message.LAYOUT
    ]
    values.append(("signature", message.signature))
    return [(attribute, value) for attribute, value in values if value is not None]


def _describe(value: Any, attribute: str = "") -> str:
    """Describe one TLV value; ciphertext appears only as its size."""
    sealed_secret = _SEALED_SECRETS.get(attribute)
    if sealed_secret is not None:
        size = len(value.sealed)
        return f"{{{sealed_secret}}}^PK_{value.recipient}: {size} bytes sealed"
    describe = _DESCRIBERS.get(type(value))
    if describe is None:
        return f"{type(value).__name__}: {value!r}"
    return describe(value)


def _describe_token(token: Token) -> str:
    return (
        f"token_{token.sender}: [t {_utc_ms(token.timestamp_ms)}, "
        f"r {token.nonce.hex()}, {token.recipient}]"
    )


def _describe_host_token(token: HostToken) -> str:
    return (
        f"token_{token.host}: [t {_utc_ms(token.timestamp_ms)}, "
        f"r {token.nonce.hex()}, group {token.group}]^SK_{token.host}, "
        f"suite {token.suite}, signature {len(token.signature)} bytes"
    )


def _describe_bundle(bundle: SealedBundle) -> str:
    return (
        f"{{grpKey, KEK, Sparams}}^PK_{bundle.recipient}: "
        f"{len(bundle.sealed)} bytes sealed"
    )


def _describe_reason(reason: Reason) -> str:
    text = f": {reason.text}" if reason.text else ""
    return f"reason: {reason.code.name}{text}"


def _describe_signature(signature: Signature) -> str:
    return (
        f"signature: SK_{signature.signer}, suite {signature.suite}, "
        f"{len(signature.value)} bytes"
    )


def _describe_hello(hello: HelloBody) -> str:
    summary = ", ".join(f"{origin} {sequence}" for origin, sequence in hello.summary)
    return (
        f"hello: heard {', '.join(hello.heard) or 'nobody'}; "
        f"LSA summary {summary or 'empty'}"
    )


def _describe_lsa(signed: SignedLsa) -> str:
    lsa = signed.lsa
    links = ", ".join(f"{neighbour} cost {cost}" for neighbour, cost in lsa.links)
    return (
        f"[LSA]^SK_{lsa.origin}: address {lsa.address}, sequence {lsa.sequence}, "
        f"links {links or 'none'}; body {len(signed.body)} bytes, "
        f"signature {len(signed.signature)} bytes"
    )


def _describe_acl(signed: SignedAcl) -> str:
    acl = signed.acl
    trusted = (
        "any router"
        if acl.trusted_routers is None
        else ", ".join(acl.trusted_routers) or "none"
    )
    return (
        f"[ACL]^SK_{acl.initiator}: group {acl.group} serial {acl.serial}, "
        f"{acl.mode.name.lower()} {', '.join(acl.hosts) or 'nobody'}, "
        f"valid {_utc(acl.not_before)} to {_utc(acl.not_after)}, suite {acl.suite}, "
        f"key lifetime {acl.key_lifetime} s, strict {acl.strict}, "
        f"central {acl.central}, trusted routers {trusted}; "
        f"body {len(signed.body)} bytes, "
        f"signature {len(signed.signature)} bytes"
    )


def _describe_rekey(signed: SignedRekey) -> str:
    notice = signed.notice
    acl = f", ACL serial {notice.acl.acl.serial}" if notice.acl is not None else ""
    return (
        f"[re-key]^SK_{signed.signer}: {notice.kind.name.lower()}, group "
        f"{notice.group} epoch {notice.epoch}, issued {_utc_ms(notice.issued_ms)}, "
        f"activation {notice.activation_ms} ms, grace {notice.grace_ms} ms, "
        f"bundle under the KEK {len(notice.sealed_bundle)} bytes{acl}; "
        f"signature {len(signed.signature)} bytes"
    )


def _describe_wraps(wraps: BranchWraps) -> str:
    parts = [
        f"{wrap.owner}: {len(wrap.update.entries)} key wraps to root "
        f"{wrap.update.root_id}, bundle {len(wrap.sealed_bundle)} bytes"
        for wrap in wraps.wraps
    ]
    return f"branch wraps: {'; '.join(parts) or 'none'}"


def _describe_sender_request(request: SenderKeyRequest) -> str:
    return (
        f"sender key request: SPI 0x{request.sender_spi:08x}, nonce "
        f"{request.nonce.hex()}, sender key {len(request.verify_key)} bytes, "
        f"exchange key {len(request.exchange_key)} bytes"
    )


def _describe_sender_grant(grant: SenderKeyGrant) -> str:
    return (
        f"{{session key}}^PK_exchange: SPI 0x{grant.sender_spi:08x}, until "
        f"{_utc(grant.not_after)}, {len(grant.sealed)} bytes sealed"
    )


# the TLVs that carry a sealed secret other than a key bundle, by attribute
_SEALED_SECRETS = {
    "handle": "packet handle secret",
    "host_path": "key tree path",
    "hop_path": "key tree path",
}

_DESCRIBERS: dict[type, Callable[[Any], str]] = {
    Token: _describe_token,
    HostToken: _describe_host_token,
    SignedAcl: _describe_acl,
    SealedAcl: lambda sealed: f"{{[ACL]}}^PK_core: {len(sealed.sealed)} bytes sealed",
    SealedBundle: _describe_bundle,
    RouterPath: lambda path: f"path: {' > '.join(path.routers)}",
    Reason: _describe_reason,
    HelloBody: _describe_hello,
    SignedLsa: _describe_lsa,
    Signature: _describe_signature,
    SignedRekey: _describe_rekey,
    BranchWraps: _describe_wraps,
    SenderKeyRequest: _describe_sender_request,
    SenderKeyGrant: _describe_sender_grant,
}


def _utc(seconds: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return f"{seconds} s"


def _utc_ms(milliseconds: int) -> str:
    return f"{_utc(milliseconds // 1000)}.{milliseconds % 1000:03d}"


def transcript(messages: Sequence[CapturedMessage], fields: bool = False) -> list[str]:
    """Format datagrams as transcript lines, with their fields when asked."""
    if not messages:
        return []
    names = address_names(messages)
    start = messages[0].datagram.timestamp
    lines = [f"# seconds since {_utc(start)} UTC; names from signers and tokens"]
    for captured in messages:
        lines.append(transcript_line(captured, names, start))
        if fields:
            lines.extend(f"              {line}" for line in field_lines(captured))
    return lines


def add_decode_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="print captures as an RFC 1949 transcript",
        description=(
            "Print the smkd datagrams of one or more pcap files, merged by time, "
            "one line per message in RFC 1949's notation, for example "
            "'A --> B: [[token_A], [token_h]^SK_h, JOIN-REQUEST]^SK_A'. Times are "
            "seconds since the first datagram. A datagram that does not decode "
            "is printed as malformed, with the reason."
        ),
    )
    parser.add_argument(
        "captures",
        nargs="+",
        metavar="CAPTURE",
        help="pcap file, or a run directory for all its captures",
    )
    parser.add_argument(
        "--fields",
        action="store_true",
        help="print the fields behind each line below it",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=CBT_PORT,
        help=f"UDP port of smkd traffic (default {CBT_PORT})",
    )
    parser.set_defaults(handler=run_decode)


def run_decode(args: argparse.Namespace) -> int:
    try:
        messages = read_captures(args.captures, args.port)
    except (OSError, MalformedMessage) as error:
        print(f"smkd decode: {error}", file=sys.stderr)
        return EXIT_INVALID
    if not messages:
        print(f"smkd decode: no UDP datagrams on port {args.port}", file=sys.stderr)
        return 0
    for line in transcript(messages, args.fields):
        print(line)
    return 0


def dissector_path() -> Path:
    """Return the path of the Wireshark Lua dissector installed with smkd."""
    resource = importlib.resources.files("smkd") / "wireshark" / "smkd.lua"
    return Path(str(resource))


def install_steps(path: Path) -> str:
    return f"""\
Wireshark dissector for smkd: {path}

Install it for Wireshark and tshark by copying it into the personal Lua
plugins folder ("Help > About Wireshark > Folders" shows where it is):

    mkdir -p ~/.local/lib/wireshark/plugins
    cp {path} ~/.local/lib/wireshark/plugins/

then restart Wireshark or reload Lua plugins with Ctrl+Shift+L. To use it
for one tshark run without installing:

    tshark -X lua_script:{path} -r CAPTURE.pcap -V

It decodes UDP port {CBT_PORT}. Set another port in "Edit > Preferences >
Protocols > SMKD", or with tshark's -o smkd.port:PORT. Filter with fields
such as smkd.type, smkd.host_token.host or smkd.signature.signer."""


def add_wireshark_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "wireshark",
        help="show where the Wireshark dissector is and how to install it",
        description="Print the path of smkd's Wireshark Lua dissector and the "
        "steps to install it.",
    )
    parser.add_argument(
        "--path", action="store_true", help="print only the path, for use in scripts"
    )
    parser.set_defaults(handler=run_wireshark)


def run_wireshark(args: argparse.Namespace) -> int:
    path = dissector_path()
    print(path if args.path else install_steps(path))
    return 0
