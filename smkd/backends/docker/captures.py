"""Merge the per-node capture parts of a run into one pcap per link or LAN.

tcpdump in each container writes what its node sends on one link to
``captures/parts/SEGMENT/NODE-N.pcap`` (see docker/entrypoint.py), so every
datagram is in exactly one part, and the parts of a link merged in time
order give the link's whole traffic.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("smkd.docker")


_RECORD = "IIII"
_GLOBAL = "IHHiIII"
_MAGIC_MICROSECONDS = 0xA1B2C3D4
_MAGIC_NANOSECONDS = 0xA1B23C4D
_LINKTYPE_ETHERNET = 1
_SNAPLEN = 262_144


def merge_capture_parts(captures_dir: Path) -> list[Path]:
    """Merge ``parts/SEGMENT/*.pcap`` into ``SEGMENT.pcap``; return the merged files.

    The parts directory is removed once every segment is merged. A part that
    cannot be read is logged and left in place with its directory.
    """
    parts_dir = captures_dir / "parts"
    if not parts_dir.is_dir():
        return []
    merged = []
    complete = True
    for segment_dir in sorted(p for p in parts_dir.iterdir() if p.is_dir()):
        parts = sorted(segment_dir.glob("*.pcap"))
        output = captures_dir / f"{segment_dir.name}.pcap"
        try:
            merge_pcaps(parts, output)
        except ValueError as error:
            log.warning(
                "docker: cannot merge the captures of %s: %s", segment_dir.name, error
            )
            complete = False
            continue
        merged.append(output)
    if complete:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return merged


def merge_pcaps(parts: Iterable[Path], output: Path) -> int:
    """Write the Ethernet frames of ``parts`` to ``output`` in time order.

    Returns the number of frames. A record cut short at the end of a part
    (a capture killed mid-write) is left out. Raises ValueError for a part
    that is not a classic Ethernet pcap file.
    """
    records: list[tuple[int, int, bytes]] = []
    for part in parts:
        records.extend(read_pcap_records(part))
    # a stable sort keeps each part's own order for equal timestamps
    records.sort(key=lambda record: record[0])

    with open(output, "wb") as file:
        file.write(
            struct.pack(
                "<" + _GLOBAL,
                _MAGIC_MICROSECONDS,
                2,
                4,
                0,
                0,
                _SNAPLEN,
                _LINKTYPE_ETHERNET,
            )
        )
        for microseconds, original_length, frame in records:
            seconds, fraction = divmod(microseconds, 1_000_000)
            file.write(
                struct.pack(
                    "<" + _RECORD, seconds, fraction, len(frame), original_length
                )
            )
            file.write(frame)
    return len(records)


def read_pcap_records(path: Path) -> list[tuple[int, int, bytes]]:
    """Return (microseconds since the epoch, original length, frame) per record."""
    data = path.read_bytes()
    header_size = struct.calcsize("<" + _GLOBAL)
    if len(data) < header_size:
        # tcpdump writes its header with the first packet; no packet, no header
        return []
    order, ticks = _pcap_format(data[:4], path)
    link_type = struct.unpack_from(order + _GLOBAL, data)[6] & 0xFFFF
    if link_type != _LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {link_type}, expected 1 (Ethernet)")

    records = []
    offset = header_size
    record_size = struct.calcsize(_RECORD)
    while offset + record_size <= len(data):
        seconds, fraction, captured, original = struct.unpack_from(
            order + _RECORD, data, offset
        )
        start = offset + record_size
        if start + captured > len(data):
            break
        microseconds = seconds * 1_000_000 + fraction * 1_000_000 // ticks
        records.append((microseconds, original, data[start : start + captured]))
        offset = start + captured
    return records


def _pcap_format(magic: bytes, path: Path) -> tuple[str, int]:
    for order in ("<", ">"):
        (value,) = struct.unpack(order + "I", magic)
        if value == _MAGIC_MICROSECONDS:
            return order, 1_000_000
        if value == _MAGIC_NANOSECONDS:
            return order, 1_000_000_000
    raise ValueError(f"{path}: not a classic pcap file (magic 0x{magic.hex()})")
