"""Group data packets: CBT-mode data with an encrypted body and a packet handle.

CBTv1 carries data in "CBT mode" under its own header, type 0xff, with an
on-tree flag and the primary core's address. smkd keeps that type and flag
and adds the security fields. Layout (UDP port 7777, big-endian)::

    0     version (4 bits) = 1, unused (4 bits)   1  type = 0xff
    2     flags (bit 0: on-tree)                  3  hop limit
    4     kind (0 data, 1 sender-key announcement)
    5     group address          9  primary core address
    13    group SPI (0: under the sender's own session key)
    17    epoch                  21 sender SPI
    25    sequence number (64 bits)
    33    sender name (length byte, then ASCII)
    then  ciphertext (32-bit length), origin signature (16-bit length),
          packet handle (8-bit length: 0 off the tree, else 16 bytes)

Bytes 4 up to the ciphertext are the origin header: the AEAD binds them as
associated data, and with the ciphertext they are what the sender's key signs.
The flags, hop limit and handle change at every hop; the handle's MAC covers
every byte before it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from .codec import Reader, Writer
from .errors import MalformedMessage

DATA_TYPE = 0xFF
VERSION = 1
ON_TREE = 0x01
DEFAULT_HOP_LIMIT = 32
MAX_PAYLOAD = 65_507

ORIGIN_LABEL = b"smkd data origin\x00"


class DataKind(enum.IntEnum):
    DATA = 0
    SENDER_KEY = 1


def is_data_packet(datagram: bytes) -> bool:
    """Tell a data packet from a control message by its type byte."""
    return len(datagram) >= 2 and datagram[1] == DATA_TYPE


@dataclass(frozen=True)
class DataPacket:
    """One group data packet as it travels over one hop."""

    kind: DataKind
    group: str
    primary_core: str
    group_spi: int
    epoch: int
    sender_spi: int
    seq: int
    sender: str
    ciphertext: bytes = field(repr=False)
    signature: bytes = field(default=b"", repr=False)
    on_tree: bool = False
    hop_limit: int = DEFAULT_HOP_LIMIT
    handle: bytes = field(default=b"", repr=False)

    def origin_header(self) -> bytes:
        """Return the fields the AEAD binds as associated data."""
        w = Writer()
        w.push_u8(self.kind)
        w.push_address(self.group)
        w.push_address(self.primary_core)
        w.push_u32(self.group_spi)
        w.push_u32(self.epoch)
        w.push_u32(self.sender_spi)
        w.push_u64(self.seq)
        w.push_name(self.sender)
        return w.getvalue()

    def signed_bytes(self) -> bytes:
        """Return what the sender's key signs: the origin header and ciphertext."""
        w = Writer()
        w.push_bytes(ORIGIN_LABEL)
        w.push_bytes(self.origin_header())
        w.push_blob32(self.ciphertext)
        return w.getvalue()

    def handled_bytes(self) -> bytes:
        """Return every byte before the handle, which the handle's MAC covers."""
        w = Writer()
        w.push_u8(VERSION << 4)
        w.push_u8(DATA_TYPE)
        w.push_u8(ON_TREE if self.on_tree else 0)
        w.push_u8(self.hop_limit)
        w.push_bytes(self.origin_header())
        w.push_blob32(self.ciphertext)
        w.push_blob16(self.signature)
        return w.getvalue()

    def encode(self) -> bytes:
        w = Writer()
        w.push_bytes(self.handled_bytes())
        w.push_blob8(self.handle)
        return w.getvalue()

    def next_hop(self, on_tree: bool, handle: bytes) -> DataPacket:
        """Return this packet as forwarded: hop limit down by one, new handle."""
        return replace(
            self, on_tree=on_tree, hop_limit=self.hop_limit - 1, handle=handle
        )

    @classmethod
    def decode(cls, datagram: bytes) -> DataPacket:
        """Decode one data packet; raise ``MalformedMessage`` for anything wrong."""
        r = Reader(datagram)
        first = r.pull_u8()
        if first >> 4 != VERSION:
            raise MalformedMessage(f"unsupported version {first >> 4}")
        if r.pull_u8() != DATA_TYPE:
            raise MalformedMessage("not a data packet")
        flags = r.pull_u8()
        if flags & ~ON_TREE:
            raise MalformedMessage(f"unknown data flags {flags:#04x}")
        hop_limit = r.pull_u8()
        kind = _pull_kind(r)
        packet = cls(
            kind=kind,
            group=r.pull_address(),
            primary_core=r.pull_address(),
            group_spi=r.pull_u32(),
            epoch=r.pull_u32(),
            sender_spi=r.pull_u32(),
            seq=r.pull_u64(),
            sender=r.pull_name("data sender"),
            ciphertext=r.pull_blob32(),
            signature=r.pull_blob16(),
            on_tree=bool(flags & ON_TREE),
            hop_limit=hop_limit,
            handle=r.pull_blob8(),
        )
        r.expect_end("the data packet")
        return packet


def _pull_kind(r: Reader) -> DataKind:
    value = r.pull_u8()
    try:
        return DataKind(value)
    except ValueError:
        raise MalformedMessage(f"unknown data kind {value}") from None
