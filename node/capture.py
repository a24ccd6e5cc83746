"""Pcap captures of the datagrams that cross emulated links.

The local backend has no real interfaces to capture on, so the agent
synthesises each capture. Every datagram delivered over a link is written
with Ethernet, IPv4 and UDP headers in the classic libpcap file format, which
tcpdump, tshark and Wireshark read. ``read_pcap`` parses such files back, and
also reads Ethernet captures written by tcpdump.
"""

from __future__ import annotations

import ipaddress
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from node.errors import MalformedMessage

PCAP_MAGIC_MICROSECONDS = 0xA1B2C3D4
PCAP_MAGIC_NANOSECONDS = 0xA1B23C4D
PCAP_VERSION_MAJOR = 2
PCAP_VERSION_MINOR = 4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17
DEFAULT_TTL = 64
DEFAULT_PORT = 7777

ETHERNET_HEADER_LEN = 14
IPV4_HEADER_LEN = 20
UDP_HEADER_LEN = 8

# the IPv4 total length field is 16 bits and covers both headers
MAX_UDP_PAYLOAD = 0xFFFF - IPV4_HEADER_LEN - UDP_HEADER_LEN

_IP_FLAG_DONT_FRAGMENT = 0x4000
_IP_FLAG_MORE_FRAGMENTS = 0x2000
_IP_FRAGMENT_OFFSET_MASK = 0x1FFF

# pcapng files start with a section header block instead of a pcap magic
_PCAPNG_MAGIC = 0x0A0D0D0A

# the writer uses little-endian pcap headers, but the reader accepts both orders
_GLOBAL_HEADER = "IHHiIII"
_RECORD_HEADER = "IIII"

_ETHERNET = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_PSEUDO_HEADER = struct.Struct("!4s4sBBH")

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True)
class CapturedDatagram:
    """One UDP datagram read from a capture, with its time in Unix seconds."""

    timestamp: float
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


class PcapWriter:
    """Writes UDP datagrams to a classic pcap file with Ethernet framing.

    Each record is flushed as it is written, so a reader that opens the file
    during a run finds only whole records. ``ttl`` is the IPv4 TTL written in
    every packet.
    """

    def __init__(self, path: str | os.PathLike[str], ttl: int = DEFAULT_TTL):
        if not 0 <= ttl <= 255:
            raise ValueError(f"invalid IPv4 TTL {ttl}: expected 0 to 255")

        self.path = Path(path)
        self.ttl = ttl
        self._next_ip_id = 0
        self._file: BinaryIO | None = open(self.path, "wb")

        header = struct.pack(
            "<" + _GLOBAL_HEADER,
            PCAP_MAGIC_MICROSECONDS,
            PCAP_VERSION_MAJOR,
            PCAP_VERSION_MINOR,
            0,
            0,
            SNAPLEN,
            LINKTYPE_ETHERNET,
        )
        try:
            self._file.write(header)
            self._file.flush()
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._file is None

    def write_udp(
        self,
        timestamp: float,
        src: str | ipaddress.IPv4Address,
        dst: str | ipaddress.IPv4Address,
        payload: bytes,
        sport: int = DEFAULT_PORT,
        dport: int = DEFAULT_PORT,
    ) -> None:
        """Append one UDP datagram sent at ``timestamp`` (Unix seconds).

        Raises ValueError for an invalid address, port or timestamp, for a
        payload over MAX_UDP_PAYLOAD bytes, or when the writer is closed.
        """
        if self._file is None:
            raise ValueError(f"pcap writer for {self.path} is closed")

        seconds, microseconds = _split_timestamp(timestamp)
        frame = _encode_udp_frame(
            ipaddress.IPv4Address(src),
            ipaddress.IPv4Address(dst),
            bytes(payload),
            sport,
            dport,
            ip_id=self._next_ip_id,
            ttl=self.ttl,
        )
        record = struct.pack(
            "<" + _RECORD_HEADER, seconds, microseconds, len(frame), len(frame)
        )

        # one write per record, then flush, so readers never see half of one
        self._file.write(record + frame)
        self._file.flush()
        self._next_ip_id = (self._next_ip_id + 1) & 0xFFFF

    def close(self) -> None:
        """Close the file. Closing again does nothing."""
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class CaptureRegistry:
    """Shared pcap writers, one for each capture file.

    Several agents in one process deliver over the same link, so they must
    append to one writer instead of each truncating the file.
    """

    def __init__(self, ttl: int = DEFAULT_TTL):
        self.ttl = ttl
        self._writers: dict[Path, PcapWriter] = {}
        self._closed = False

    def writer(self, path: str | os.PathLike[str]) -> PcapWriter:
        """Return the writer for ``path``, opening the file on first use."""
        if self._closed:
            raise ValueError("capture registry is closed")

        # resolve so that two spellings of one path share a writer
        key = Path(path).resolve()
        writer = self._writers.get(key)
        if writer is None:
            writer = PcapWriter(key, ttl=self.ttl)
            self._writers[key] = writer
        return writer

    @property
    def paths(self) -> list[Path]:
        return list(self._writers)

    def close(self) -> None:
        """Close every writer, even if one fails. Closing again does nothing."""
        self._closed = True
        first_error: OSError | None = None
        for writer in self._writers.values():
            try:
                writer.close()
            except OSError as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def __enter__(self) -> CaptureRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def internet_checksum(data: bytes) -> int:
    """Return the RFC 1071 one's complement checksum of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _split_timestamp(timestamp: float) -> tuple[int, int]:
    if not math.isfinite(timestamp) or timestamp < 0:
        raise ValueError(f"invalid capture timestamp {timestamp!r}")

    seconds, microseconds = divmod(round(timestamp * 1_000_000), 1_000_000)
    if seconds > 0xFFFFFFFF:
        raise ValueError(f"capture timestamp {timestamp} does not fit pcap's u32")
    return seconds, microseconds


def _encode_udp_frame(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    payload: bytes,
    sport: int,
    dport: int,
    *,
    ip_id: int,
    ttl: int,
) -> bytes:
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ValueError(
            f"UDP payload of {len(payload)} bytes exceeds the IPv4 maximum of "
            f"{MAX_UDP_PAYLOAD} bytes"
        )
    for port in (sport, dport):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"invalid UDP port {port}")

    udp = _encode_udp(src, dst, payload, sport, dport)
    ip = _encode_ipv4_header(src, dst, len(udp), ip_id, ttl)
    ethernet = _ETHERNET.pack(_mac_for(dst), _mac_for(src), ETHERTYPE_IPV4)
    return ethernet + ip + udp


def _encode_udp(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    payload: bytes,
    sport: int,
    dport: int,
) -> bytes:
    length = UDP_HEADER_LEN + len(payload)
    pseudo = _PSEUDO_HEADER.pack(src.packed, dst.packed, 0, IPPROTO_UDP, length)
    unsummed = _UDP.pack(sport, dport, length, 0) + payload
    checksum = internet_checksum(pseudo + unsummed)

    # RFC 768: a computed zero is sent as all ones, since zero means "none"
    checksum = checksum or 0xFFFF
    return _UDP.pack(sport, dport, length, checksum) + payload


def _encode_ipv4_header(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    udp_length: int,
    ip_id: int,
    ttl: int,
) -> bytes:
    fields = [
        0x45,  # version 4, IHL 5 words
        0,
        IPV4_HEADER_LEN + udp_length,
        ip_id,
        _IP_FLAG_DONT_FRAGMENT,
        ttl,
        IPPROTO_UDP,
        0,
        src.packed,
        dst.packed,
    ]
    fields[7] = internet_checksum(_IPV4.pack(*fields))
    return _IPV4.pack(*fields)


def _mac_for(address: ipaddress.IPv4Address) -> bytes:
    """Return the Ethernet address a frame to or from ``address`` carries."""
    if address == _BROADCAST:
        return b"\xff" * 6
    if address.is_multicast:
        # RFC 1112: 01:00:5e followed by the low 23 bits of the group address
        low_bits = int(address) & 0x7FFFFF
        return b"\x01\x00\x5e" + low_bits.to_bytes(3, "big")

    # locally administered unicast, 02:00 then the IPv4 address
    return b"\x02\x00" + address.packed


def read_pcap(path: str | os.PathLike[str]) -> list[CapturedDatagram]:
    """Read the UDP datagrams of a pcap file, in file order.

    Raises MalformedMessage, naming the byte offset, for anything that is not
    a well-formed classic pcap file with Ethernet link type.
    """
    return parse_pcap(Path(path).read_bytes())


def parse_pcap(data: bytes) -> list[CapturedDatagram]:
    """Parse the UDP datagrams out of the bytes of a pcap file.

    Both byte orders and both the microsecond and nanosecond magic are
    accepted. Frames that are not IPv4/UDP, and IPv4 fragments, are skipped.
    An IPv4/UDP frame with inconsistent lengths, or one cut short by the
    snapshot length, raises MalformedMessage because its payload would be
    wrong.
    """
    reader = _Reader(data)
    byte_order, ticks_per_second = _parse_global_header(reader)

    datagrams = []
    while not reader.at_end():
        timestamp, frame, snapped = _parse_record(
            reader, byte_order, ticks_per_second
        )
        datagram = _parse_frame(frame, timestamp, snapped)
        if datagram is not None:
            datagrams.append(datagram)
    return datagrams


class _Reader:
    """Bounds-checked reader over ``data[offset:end]``.

    Offsets stay relative to the start of the file, so errors can name them.
    """

    def __init__(self, data: bytes, offset: int = 0, end: int | None = None):
        self.data = data
        self.offset = offset
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.offset

    def at_end(self) -> bool:
        return self.offset >= self.end

    def pull(self, layout: str, description: str) -> tuple[Any, ...]:
        size = struct.calcsize(layout)
        self.require(size, description)
        values = struct.unpack_from(layout, self.data, self.offset)
        self.offset += size
        return values

    def pull_reader(self, length: int, description: str) -> _Reader:
        """Return a reader over the next ``length`` bytes and skip past them."""
        self.require(length, description)
        inner = _Reader(self.data, self.offset, self.offset + length)
        self.offset += length
        return inner

    def require(self, length: int, description: str) -> None:
        if self.remaining() < length:
            problem = f"truncated {description}: needs {length} bytes"
            raise _malformed(self.offset, f"{problem}, {self.remaining()} left")


def _malformed(offset: int, problem: str) -> MalformedMessage:
    return MalformedMessage(f"malformed pcap at byte offset {offset}: {problem}")


def _parse_global_header(reader: _Reader) -> tuple[str, int]:
    """Return the struct byte order and timestamp ticks per second."""
    reader.require(struct.calcsize("<" + _GLOBAL_HEADER), "pcap file header")
    magic_bytes = reader.data[0:4]
    byte_order, ticks_per_second = _identify_magic(magic_bytes)

    fields = reader.pull(byte_order + _GLOBAL_HEADER, "pcap file header")
    major, link_type = fields[1], fields[6]
    if major != PCAP_VERSION_MAJOR:
        raise _malformed(4, f"unsupported pcap version {major}.{fields[2]}")

    # the upper 16 bits of the field may carry FCS details, not the type
    if link_type & 0xFFFF != LINKTYPE_ETHERNET:
        raise _malformed(
            20, f"unsupported link type {link_type & 0xFFFF}, expected 1 (Ethernet)"
        )
    return byte_order, ticks_per_second


def _identify_magic(magic_bytes: bytes) -> tuple[str, int]:
    for byte_order in ("<", ">"):
        (magic,) = struct.unpack(byte_order + "I", magic_bytes)
        if magic == PCAP_MAGIC_MICROSECONDS:
            return byte_order, 1_000_000
        if magic == PCAP_MAGIC_NANOSECONDS:
            return byte_order, 1_000_000_000

    if magic_bytes == _PCAPNG_MAGIC.to_bytes(4, "big"):
        raise _malformed(0, "pcapng is not supported, convert with editcap -F pcap")
    raise _malformed(0, f"unknown magic 0x{magic_bytes.hex()}, not a pcap file")


def _parse_record(
    reader: _Reader, byte_order: str, ticks_per_second: int
) -> tuple[float, _Reader, bool]:
    """Return the timestamp, the frame and whether the snaplen cut the frame."""
    header_offset = reader.offset
    seconds, ticks, captured_length, original_length = reader.pull(
        byte_order + _RECORD_HEADER, "record header"
    )
    if ticks >= ticks_per_second:
        raise _malformed(
            header_offset + 4,
            f"timestamp fraction {ticks} exceeds {ticks_per_second - 1}",
        )

    frame = reader.pull_reader(captured_length, "captured frame")
    timestamp = seconds + ticks / ticks_per_second
    return timestamp, frame, captured_length < original_length


def _parse_frame(
    frame: _Reader, timestamp: float, snapped: bool
) -> CapturedDatagram | None:
    # too short to hold an ethertype, so it cannot be an IPv4 frame
    if frame.remaining() < ETHERNET_HEADER_LEN:
        return None

    _, _, ethertype = frame.pull(_ETHERNET.format, "Ethernet header")
    if ethertype != ETHERTYPE_IPV4:
        return None
    return _parse_ipv4(frame, timestamp, snapped)


def _parse_ipv4(
    frame: _Reader, timestamp: float, snapped: bool
) -> CapturedDatagram | None:
    start = frame.offset
    (
        version_ihl,
        _,
        total_length,
        _,
        flags_fragment,
        _,
        protocol,
        _,
        src,
        dst,
    ) = frame.pull(_IPV4.format, "IPv4 header")

    version, header_length = version_ihl >> 4, (version_ihl & 0x0F) * 4
    if version != 4:
        raise _malformed(start, f"IP version {version} in an IPv4 frame")
    if header_length < IPV4_HEADER_LEN or total_length < header_length:
        raise _malformed(
            start,
            f"IPv4 header length {header_length} with total length {total_length}",
        )
    _require_captured(frame, start, total_length, snapped)

    fragment_bits = _IP_FLAG_MORE_FRAGMENTS | _IP_FRAGMENT_OFFSET_MASK
    if protocol != IPPROTO_UDP or flags_fragment & fragment_bits:
        return None

    # skip IPv4 options, and ignore Ethernet padding after total_length
    packet = _Reader(frame.data, start + header_length, start + total_length)
    src_text = str(ipaddress.IPv4Address(src))
    dst_text = str(ipaddress.IPv4Address(dst))
    return _parse_udp(packet, timestamp, src_text, dst_text)


def _require_captured(
    frame: _Reader, start: int, total_length: int, snapped: bool
) -> None:
    captured = frame.end - start
    if total_length <= captured:
        return

    cause = "cut by the snapshot length" if snapped else "truncated"
    raise _malformed(
        start,
        f"IPv4 packet of {total_length} bytes {cause}, {captured} bytes captured",
    )


def _parse_udp(
    packet: _Reader, timestamp: float, src: str, dst: str
) -> CapturedDatagram:
    start = packet.offset
    sport, dport, length, _ = packet.pull(_UDP.format, "UDP header")
    if not UDP_HEADER_LEN <= length <= UDP_HEADER_LEN + packet.remaining():
        raise _malformed(
            start,
            f"UDP length {length} does not fit the IPv4 payload of "
            f"{UDP_HEADER_LEN + packet.remaining()} bytes",
        )

    payload = bytes(packet.data[packet.offset : start + length])
    return CapturedDatagram(timestamp, src, dst, sport, dport, payload)
