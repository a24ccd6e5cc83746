"""Tests of the pcap writer and reader in node.capture.

The helpers here build pcap bytes and check checksums on their own, without
the module's code, so that a shared mistake cannot hide.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.capture import (
    MAX_UDP_PAYLOAD,
    CaptureRegistry,
    CapturedDatagram,
    PcapWriter,
    internet_checksum,
    parse_pcap,
    read_pcap,
)
from node.errors import MalformedMessage

GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
ETHERNET_LEN = 14
TIMESTAMP = 1_700_000_000.25


# -- independent helpers -----------------------------------------------------


def ones_complement_sum(data: bytes) -> int:
    """Add 16-bit big-endian words with end-around carry, byte pair by pair."""
    total = 0
    for index in range(0, len(data), 2):
        high = data[index]
        low = data[index + 1] if index + 1 < len(data) else 0
        total += (high << 8) | low
        total = (total & 0xFFFF) + (total >> 16)
    return total


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a little-endian pcap file into (seconds, microseconds, frame)."""
    frames = []
    offset = GLOBAL_HEADER_LEN
    while offset < len(data):
        seconds, micros, captured, original = struct.unpack_from("<IIII", data, offset)
        assert captured == original
        offset += RECORD_HEADER_LEN
        frames.append((seconds, micros, data[offset : offset + captured]))
        offset += captured
    return frames


def ipv4_packet(
    protocol: int,
    body: bytes,
    *,
    src: bytes = bytes([10, 0, 0, 1]),
    dst: bytes = bytes([10, 0, 0, 2]),
    flags_fragment: int = 0,
    options: bytes = b"",
    version: int = 4,
) -> bytes:
    """Build an IPv4 packet; checksums are left zero since the reader ignores them."""
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(body)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,
        total,
        1,
        flags_fragment,
        64,
        protocol,
        0,
        src,
        dst,
    )
    return header + options + body


def udp_segment(payload: bytes, sport: int = 1000, dport: int = 2000) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ethernet_frame(body: bytes, ethertype: int = 0x0800) -> bytes:
    return b"\x02" * 6 + b"\x02" * 6 + struct.pack("!H", ethertype) + body


def pcap_bytes(
    frames: list[bytes],
    *,
    byte_order: str = "<",
    magic: int = 0xA1B2C3D4,
    link_type: int = 1,
    fraction: int = 500_000,
    original_extra: int = 0,
) -> bytes:
    """Build a pcap file by hand with one record per frame, one second apart."""
    data = struct.pack(byte_order + "IHHiIII", magic, 2, 4, 0, 0, 65535, link_type)
    for second, frame in enumerate(frames):
        data += struct.pack(
            byte_order + "IIII",
            1_000 + second,
            fraction,
            len(frame),
            len(frame) + original_extra,
        )
        data += frame
    return data


def write_sample(path: Path) -> list[CapturedDatagram]:
    """Write a few datagrams to ``path`` and return what was written."""
    expected = [
        CapturedDatagram(TIMESTAMP, "127.1.0.1", "127.1.0.2", 7777, 7777, b"hello"),
        CapturedDatagram(TIMESTAMP + 1, "127.1.0.2", "127.1.0.1", 7777, 7777, b""),
        CapturedDatagram(
            TIMESTAMP + 2, "127.1.0.3", "224.0.1.5", 1234, 7777, b"x" * 999
        ),
    ]
    with PcapWriter(path) as writer:
        for datagram in expected:
            writer.write_udp(
                datagram.timestamp,
                datagram.src,
                datagram.dst,
                datagram.payload,
                datagram.sport,
                datagram.dport,
            )
    return expected


# -- writer ------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    expected = write_sample(path)

    assert read_pcap(path) == expected


def test_round_trip_largest_payload(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    payload = bytes(range(256)) * 255 + bytes(range(MAX_UDP_PAYLOAD - 255 * 256))
    with PcapWriter(path) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", payload)

    (datagram,) = read_pcap(path)
    assert len(payload) == 65_507
    assert datagram.payload == payload


def test_oversized_payload_rejected(tmp_path: Path) -> None:
    with PcapWriter(tmp_path / "big.pcap") as writer:
        with pytest.raises(ValueError, match="65508 bytes"):
            writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"x" * 65_508)

    assert read_pcap(tmp_path / "big.pcap") == []


def test_global_header_fields(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    PcapWriter(path).close()

    data = path.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, link_type = struct.unpack(
        "<IHHiIII", data
    )
    assert magic == 0xA1B2C3D4
    assert (major, minor) == (2, 4)
    assert (zone, sigfigs) == (0, 0)
    assert snaplen == 262_144
    assert link_type == 1


def test_record_timestamp_in_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        writer.write_udp(1_700_000_000.1234567, "127.1.0.1", "127.1.0.2", b"a")
        writer.write_udp(1_700_000_000.9999997, "127.1.0.1", "127.1.0.2", b"b")

    (first, second) = frames_of(path.read_bytes())
    assert first[:2] == (1_700_000_000, 123_457)
    # rounding up to a whole second carries into the seconds field
    assert second[:2] == (1_700_000_001, 0)


def test_ethernet_and_ipv4_fields(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"abc", 7000, 7001)

    (_, _, frame) = frames_of(path.read_bytes())[0]
    dst_mac, src_mac, ethertype = struct.unpack_from("!6s6sH", frame)
    assert dst_mac == bytes.fromhex("02007f010002")
    assert src_mac == bytes.fromhex("02007f010001")
    assert ethertype == 0x0800

    ip = frame[ETHERNET_LEN : ETHERNET_LEN + 20]
    version_ihl, tos, total, _, flags, ttl, protocol, _, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", ip
    )
    assert version_ihl == 0x45
    assert tos == 0
    assert total == 20 + 8 + 3
    assert flags == 0x4000
    assert ttl == 64
    assert protocol == 17
    assert socket.inet_ntoa(src) == "127.1.0.1"
    assert socket.inet_ntoa(dst) == "127.1.0.2"
    assert len(frame) == ETHERNET_LEN + total


def test_multicast_and_broadcast_macs(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "239.129.2.3", b"m")
        writer.write_udp(TIMESTAMP, "127.1.0.1", "255.255.255.255", b"b")

    multicast, broadcast = (frame for _, _, frame in frames_of(path.read_bytes()))
    # the top bit of the second octet (129) is dropped by the 23-bit mapping
    assert multicast[:6] == bytes.fromhex("01005e010203")
    assert broadcast[:6] == b"\xff" * 6


def test_ip_id_increments_per_writer(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        for _ in range(3):
            writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"x")

    ids = [
        struct.unpack_from("!H", frame, ETHERNET_LEN + 4)[0]
        for _, _, frame in frames_of(path.read_bytes())
    ]
    assert ids == [0, 1, 2]


def test_ttl_configurable(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path, ttl=1) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"x")

    (_, _, frame) = frames_of(path.read_bytes())[0]
    assert frame[ETHERNET_LEN + 8] == 1


def test_invalid_ttl_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TTL 256"):
        PcapWriter(tmp_path / "link.pcap", ttl=256)


# -- checksums ---------------------------------------------------------------


def test_internet_checksum_rfc1071_example() -> None:
    # the worked example of RFC 1071: the words sum to 0xddf2, checksum 0x220d
    data = bytes.fromhex("0001f203f4f5f6f7")

    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_internet_checksum_odd_length() -> None:
    assert internet_checksum(b"\x12\x34\x56") == ~(0x1234 + 0x5600) & 0xFFFF


@pytest.mark.parametrize("payload", [b"", b"a", b"hello", bytes(range(256)) * 40])
def test_checksums_verify(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "10.20.30.40", payload, 5, 65535)

    (_, _, frame) = frames_of(path.read_bytes())[0]
    ip_header = frame[ETHERNET_LEN : ETHERNET_LEN + 20]
    segment = frame[ETHERNET_LEN + 20 :]
    pseudo = ip_header[12:20] + struct.pack("!BBH", 0, 17, len(segment))

    # a correct checksum makes the sum over the covered bytes all ones
    assert ones_complement_sum(ip_header) == 0xFFFF
    assert ones_complement_sum(pseudo + segment) == 0xFFFF
    assert struct.unpack_from("!H", segment, 6)[0] != 0


def test_udp_zero_checksum_sent_as_all_ones(tmp_path: Path) -> None:
    src, dst = socket.inet_aton("127.1.0.1"), socket.inet_aton("127.1.0.2")
    prefix = b"zero"

    # choose two trailing payload bytes that bring the computed checksum to 0
    length = 8 + len(prefix) + 2
    partial = src + dst + struct.pack("!BBH", 0, 17, length)
    partial += struct.pack("!HHHH", 7777, 7777, length, 0) + prefix
    filler = ~ones_complement_sum(partial) & 0xFFFF
    payload = prefix + struct.pack("!H", filler)

    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", payload)

    (_, _, frame) = frames_of(path.read_bytes())[0]
    assert struct.unpack_from("!H", frame, ETHERNET_LEN + 20 + 6)[0] == 0xFFFF


# -- writer life cycle and input checks ----------------------------------------


def test_each_write_flushed(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    writer = PcapWriter(path)
    writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"first")

    assert [d.payload for d in read_pcap(path)] == [b"first"]

    writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"second")
    assert [d.payload for d in read_pcap(path)] == [b"first", b"second"]
    writer.close()


def test_close_idempotent(tmp_path: Path) -> None:
    writer = PcapWriter(tmp_path / "link.pcap")
    writer.close()
    writer.close()

    assert writer.closed


def test_write_after_close_rejected(tmp_path: Path) -> None:
    with PcapWriter(tmp_path / "link.pcap") as writer:
        pass

    assert writer.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"x")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((TIMESTAMP, "127.1.0.300", "127.1.0.2", b"x"), "127.1.0.300"),
        ((TIMESTAMP, "127.1.0.1", "::1", b"x"), "::1"),
        ((TIMESTAMP, "127.1.0.1", "127.1.0.2", b"x", 65536), "port 65536"),
        ((TIMESTAMP, "127.1.0.1", "127.1.0.2", b"x", 7777, -1), "port -1"),
        ((-1.0, "127.1.0.1", "127.1.0.2", b"x"), "timestamp"),
        ((float("nan"), "127.1.0.1", "127.1.0.2", b"x"), "timestamp"),
        ((2.0**32, "127.1.0.1", "127.1.0.2", b"x"), "timestamp"),
    ],
)
def test_invalid_write_rejected(
    tmp_path: Path, arguments: tuple[object, ...], message: str
) -> None:
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        with pytest.raises(ValueError, match=re.escape(message)):
            writer.write_udp(*arguments)  # type: ignore[arg-type]

        # a rejected write leaves no record and does not use up an IP id
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"ok")

    (_, _, frame) = frames_of(path.read_bytes())[0]
    assert struct.unpack_from("!H", frame, ETHERNET_LEN + 4)[0] == 0


# -- registry ----------------------------------------------------------------


def test_registry_shares_writer_per_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with CaptureRegistry() as registry:
        first = registry.writer(tmp_path / "link.pcap")
        second = registry.writer(str(tmp_path / "sub" / ".." / "link.pcap"))
        other = registry.writer(tmp_path / "other.pcap")

        assert first is second
        assert other is not first
        assert registry.paths == [tmp_path / "link.pcap", tmp_path / "other.pcap"]


def test_registry_interleaved_writers(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    registry = CaptureRegistry()

    # two agents on one link each ask the registry and append in turn
    for index in range(4):
        sender = f"127.1.0.{1 + index % 2}"
        writer = registry.writer(path)
        writer.write_udp(TIMESTAMP + index, sender, "127.1.0.9", b"%d" % index)
    registry.close()

    payloads = [datagram.payload for datagram in read_pcap(path)]
    assert payloads == [b"0", b"1", b"2", b"3"]


def test_registry_close_closes_all(tmp_path: Path) -> None:
    registry = CaptureRegistry(ttl=7)
    writers = [registry.writer(tmp_path / f"{name}.pcap") for name in "abc"]
    registry.close()
    registry.close()

    assert all(writer.closed for writer in writers)
    assert all(writer.ttl == 7 for writer in writers)
    with pytest.raises(ValueError, match="closed"):
        registry.writer(tmp_path / "a.pcap")


# -- reader: other writers' files ------------------------------------------------


def test_read_big_endian() -> None:
    frame = ethernet_frame(ipv4_packet(17, udp_segment(b"big endian")))
    data = pcap_bytes([frame], byte_order=">")

    (datagram,) = parse_pcap(data)
    assert datagram == CapturedDatagram(
        1000.5, "10.0.0.1", "10.0.0.2", 1000, 2000, b"big endian"
    )


def test_read_nanosecond_magic() -> None:
    frame = ethernet_frame(ipv4_packet(17, udp_segment(b"nano")))
    for byte_order in "<>":
        data = pcap_bytes(
            [frame], byte_order=byte_order, magic=0xA1B23C4D, fraction=123_456_789
        )

        (datagram,) = parse_pcap(data)
        assert datagram.timestamp == pytest.approx(1000.123456789, abs=1e-9)
        assert datagram.payload == b"nano"


def test_read_skips_non_udp_frames() -> None:
    frames = [
        ethernet_frame(b"\x00" * 28, ethertype=0x0806),  # ARP
        ethernet_frame(ipv4_packet(6, b"\x00" * 20)),  # TCP
        ethernet_frame(ipv4_packet(17, udp_segment(b"more"), flags_fragment=0x2000)),
        ethernet_frame(ipv4_packet(17, b"tail", flags_fragment=0x0010)),
        b"\x01\x02\x03",  # shorter than an Ethernet header
        ethernet_frame(ipv4_packet(17, udp_segment(b"kept"))),
    ]

    datagrams = parse_pcap(pcap_bytes(frames))
    assert [datagram.payload for datagram in datagrams] == [b"kept"]
    assert datagrams[0].timestamp == 1005.5


def test_read_ignores_ethernet_padding() -> None:
    frame = ethernet_frame(ipv4_packet(17, udp_segment(b"hi"))) + b"\x00" * 16

    (datagram,) = parse_pcap(pcap_bytes([frame]))
    assert datagram.payload == b"hi"


def test_read_ipv4_options() -> None:
    packet = ipv4_packet(17, udp_segment(b"opt"), options=b"\x01\x01\x01\x00")

    (datagram,) = parse_pcap(pcap_bytes([ethernet_frame(packet)]))
    assert datagram.payload == b"opt"


def test_read_link_type_with_fcs_bits() -> None:
    frame = ethernet_frame(ipv4_packet(17, udp_segment(b"fcs")))
    link_type = 1 | 0x1000_0000 | (4 << 29)

    (datagram,) = parse_pcap(pcap_bytes([frame], link_type=link_type))
    assert datagram.payload == b"fcs"


@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap is not installed")
def test_read_editcap_nanosecond_file(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    converted = tmp_path / "nsec.pcap"
    expected = write_sample(path)
    subprocess.run(
        ["editcap", "-F", "nsecpcap", str(path), str(converted)],
        check=True,
        capture_output=True,
        timeout=60,
    )

    assert converted.read_bytes()[:4] == struct.pack("<I", 0xA1B23C4D)
    assert read_pcap(converted) == expected


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_read_tcpdump_loopback_capture(tmp_path: Path) -> None:
    path = tmp_path / "lo.pcap"
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    payloads = [b"tcpdump %d" % index for index in range(3)]

    capture = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-nn", "-U", "-c", str(len(payloads)), "-w", str(path)]
        + ["udp", "and", "dst", "port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # tcpdump reports "listening on lo" once its filter is in place
        assert capture.stderr is not None
        banner = capture.stderr.readline().decode()
        while banner and "listening on" not in banner:
            banner = capture.stderr.readline().decode()
        if not banner:
            pytest.skip("tcpdump exited without capturing on lo (no permission?)")

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))
            for payload in payloads:
                sender.sendto(payload, ("127.0.0.1", port))
        capture.wait(timeout=20)
    finally:
        if capture.poll() is None:
            capture.terminate()
            capture.wait(timeout=10)
        assert capture.stderr is not None
        capture.stderr.close()
        receiver.close()

    datagrams = read_pcap(path)
    assert [datagram.payload for datagram in datagrams] == payloads
    assert all(datagram.dport == port for datagram in datagrams)
    assert all(datagram.src == "127.0.0.1" for datagram in datagrams)
    assert abs(datagrams[0].timestamp - time.time()) < 60


# -- reader: rejections ----------------------------------------------------------


def offset_in(error: pytest.ExceptionInfo[MalformedMessage]) -> int:
    found = re.search(r"byte offset (\d+)", str(error.value))
    assert found is not None, str(error.value)
    return int(found.group(1))


def valid_frame(payload: bytes = b"ok") -> bytes:
    return ethernet_frame(ipv4_packet(17, udp_segment(payload)))


def test_empty_file_rejected() -> None:
    with pytest.raises(MalformedMessage, match="truncated pcap file header") as error:
        parse_pcap(b"")
    assert offset_in(error) == 0


def test_unknown_magic_rejected() -> None:
    with pytest.raises(MalformedMessage, match="unknown magic 0xdeadbeef") as error:
        parse_pcap(b"\xde\xad\xbe\xef" + b"\x00" * 20)
    assert offset_in(error) == 0


def test_pcapng_rejected() -> None:
    data = bytes.fromhex("0a0d0d0a") + b"\x00" * 28

    with pytest.raises(MalformedMessage, match="pcapng"):
        parse_pcap(data)


def test_unsupported_version_rejected() -> None:
    data = bytearray(pcap_bytes([]))
    data[4:6] = struct.pack("<H", 1)

    with pytest.raises(MalformedMessage, match="version 1.4") as error:
        parse_pcap(bytes(data))
    assert offset_in(error) == 4


def test_non_ethernet_link_type_rejected() -> None:
    with pytest.raises(MalformedMessage, match="link type 101") as error:
        parse_pcap(pcap_bytes([], link_type=101))
    assert offset_in(error) == 20


def test_truncated_record_header_rejected() -> None:
    data = pcap_bytes([valid_frame()]) + b"\x00" * 10

    with pytest.raises(MalformedMessage, match="truncated record header") as error:
        parse_pcap(data)
    assert offset_in(error) == len(data) - 10


def test_truncated_frame_rejected() -> None:
    data = pcap_bytes([valid_frame()])

    with pytest.raises(MalformedMessage, match="truncated captured frame") as error:
        parse_pcap(data[:-1])
    assert offset_in(error) == GLOBAL_HEADER_LEN + RECORD_HEADER_LEN


def test_timestamp_fraction_out_of_range_rejected() -> None:
    data = pcap_bytes([valid_frame()], fraction=1_000_000)

    with pytest.raises(MalformedMessage, match="fraction 1000000") as error:
        parse_pcap(data)
    assert offset_in(error) == GLOBAL_HEADER_LEN + 4


def test_wrong_ip_version_rejected() -> None:
    frame = ethernet_frame(ipv4_packet(17, udp_segment(b"v6"), version=6))

    with pytest.raises(MalformedMessage, match="IP version 6") as error:
        parse_pcap(pcap_bytes([frame]))
    assert offset_in(error) == GLOBAL_HEADER_LEN + RECORD_HEADER_LEN + ETHERNET_LEN


def test_short_ipv4_header_length_rejected() -> None:
    packet = bytearray(ipv4_packet(17, udp_segment(b"x")))
    packet[0] = 0x44

    with pytest.raises(MalformedMessage, match="header length 16"):
        parse_pcap(pcap_bytes([ethernet_frame(bytes(packet))]))


def test_ipv4_total_length_past_frame_rejected() -> None:
    frame = valid_frame()[:-1]

    with pytest.raises(MalformedMessage, match="truncated, 29 bytes captured"):
        parse_pcap(pcap_bytes([frame]))


def test_snaplen_cut_packet_rejected() -> None:
    frame = valid_frame()[:-1]

    with pytest.raises(MalformedMessage, match="cut by the snapshot length"):
        parse_pcap(pcap_bytes([frame], original_extra=1))


def test_truncated_ipv4_header_rejected() -> None:
    frame = ethernet_frame(b"\x45\x00\x00")

    with pytest.raises(MalformedMessage, match="truncated IPv4 header"):
        parse_pcap(pcap_bytes([frame]))


def test_truncated_udp_header_rejected() -> None:
    frame = ethernet_frame(ipv4_packet(17, b"\x00" * 7))

    with pytest.raises(MalformedMessage, match="truncated UDP header"):
        parse_pcap(pcap_bytes([frame]))


def test_udp_length_past_packet_rejected() -> None:
    segment = bytearray(udp_segment(b"abc"))
    segment[4:6] = struct.pack("!H", 12)

    with pytest.raises(MalformedMessage, match="UDP length 12") as error:
        parse_pcap(pcap_bytes([ethernet_frame(ipv4_packet(17, bytes(segment)))]))
    assert offset_in(error) == GLOBAL_HEADER_LEN + RECORD_HEADER_LEN + ETHERNET_LEN + 20


def test_udp_length_below_header_rejected() -> None:
    segment = bytearray(udp_segment(b"abc"))
    segment[4:6] = struct.pack("!H", 7)

    with pytest.raises(MalformedMessage, match="UDP length 7"):
        parse_pcap(pcap_bytes([ethernet_frame(ipv4_packet(17, bytes(segment)))]))


def test_missing_file_is_os_error(tmp_path: Path) -> None:
    # only the contents are checked; a missing file is the caller's problem
    with pytest.raises(FileNotFoundError):
        read_pcap(tmp_path / "missing.pcap")


# -- reader: garbage -----------------------------------------------------------


def parse_or_malformed(data: bytes) -> None:
    try:
        datagrams = parse_pcap(data)
    except MalformedMessage as error:
        assert "byte offset" in str(error)
        return
    assert all(isinstance(datagram, CapturedDatagram) for datagram in datagrams)


@given(st.binary(max_size=512))
def test_garbage_only_malformed(data: bytes) -> None:
    parse_or_malformed(data)


@given(
    st.sampled_from(["<", ">"]),
    st.sampled_from([0xA1B2C3D4, 0xA1B23C4D]),
    st.binary(max_size=512),
)
def test_garbage_records_only_malformed(
    byte_order: str, magic: int, body: bytes
) -> None:
    parse_or_malformed(pcap_bytes([], byte_order=byte_order, magic=magic) + body)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_capture_only_malformed(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "sample.pcap"
    if not path.exists():
        write_sample(path)
    original = bytearray(path.read_bytes())

    mutated = original[: data.draw(st.integers(0, len(original)), label="length")]
    positions = st.integers(0, max(len(mutated) - 1, 0))
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        if mutated:
            mutated[data.draw(positions)] = data.draw(st.integers(0, 255))
    parse_or_malformed(bytes(mutated))


# -- external readers --------------------------------------------------------


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_tcpdump_reads_capture(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    write_sample(path)

    result = subprocess.run(
        ["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert "IP 127.1.0.1.7777 > 127.1.0.2.7777: UDP, length 5" in lines[0]
    assert "IP 127.1.0.2.7777 > 127.1.0.1.7777: UDP, length 0" in lines[1]
    assert "IP 127.1.0.3.1234 > 224.0.1.5.7777: UDP, length 999" in lines[2]


def tshark_check(path: Path) -> tuple[str, list[str]]:
    """Return tshark's detailed output and each frame's checksum statuses."""
    options = ["-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"]
    detail = subprocess.run(
        ["tshark", "-r", str(path), *options, "-V"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert detail.returncode == 0, detail.stderr
    fields = subprocess.run(
        ["tshark", "-r", str(path), *options, "-T", "fields"]
        + ["-e", "ip.checksum.status", "-e", "udp.checksum.status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fields.returncode == 0, fields.stderr
    return detail.stdout, fields.stdout.splitlines()


def bad_lines(detail: str) -> list[str]:
    pattern = re.compile(r"\[.*(Bad|incorrect|Malformed).*\]|Malformed Packet")
    return [line for line in detail.splitlines() if pattern.search(line)]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_finds_no_bad_packets(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    write_sample(path)
    with PcapWriter(tmp_path / "big.pcap") as writer:
        payload = b"\xab" * MAX_UDP_PAYLOAD
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", payload)

    for capture in (path, tmp_path / "big.pcap"):
        detail, statuses = tshark_check(capture)
        assert bad_lines(detail) == []
        # status 1 is Wireshark's PROTO_CHECKSUM_E_GOOD for both checksums
        assert statuses and all(line == "1\t1" for line in statuses), statuses


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_detects_corrupted_checksum(tmp_path: Path) -> None:
    # a control: the check above must be able to fail
    path = tmp_path / "link.pcap"
    with PcapWriter(path) as writer:
        writer.write_udp(TIMESTAMP, "127.1.0.1", "127.1.0.2", b"payload")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    detail, statuses = tshark_check(path)
    assert bad_lines(detail) != []
    assert statuses == ["1\t0"]
