"""The data packet codec: round trips, per-hop fields and garbage."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.datapacket import (
    DATA_TYPE,
    DataKind,
    DataPacket,
    is_data_packet,
)
from node.errors import MalformedMessage
from node.messages import decode_message

PACKET = DataPacket(
    kind=DataKind.DATA,
    group="239.1.1.1",
    primary_core="127.1.0.3",
    group_spi=0x11223344,
    epoch=2,
    sender_spi=0xAABBCCDD,
    seq=7,
    sender="h",
    ciphertext=b"\x01" * 40,
    signature=b"\x02" * 64,
    on_tree=True,
    hop_limit=30,
    handle=b"\x03" * 16,
)


def test_round_trip():
    assert DataPacket.decode(PACKET.encode()) == PACKET


def test_round_trip_off_tree_without_handle():
    packet = dataclasses.replace(PACKET, on_tree=False, handle=b"", signature=b"")

    assert DataPacket.decode(packet.encode()) == packet


def test_is_told_apart_from_control_messages():
    datagram = PACKET.encode()

    assert is_data_packet(datagram)
    assert datagram[1] == DATA_TYPE
    with pytest.raises(MalformedMessage):
        decode_message(datagram)


def test_next_hop_changes_only_per_hop_fields():
    forwarded = PACKET.next_hop(on_tree=False, handle=b"")

    assert forwarded.hop_limit == PACKET.hop_limit - 1
    assert forwarded.signed_bytes() == PACKET.signed_bytes()
    assert forwarded.origin_header() == PACKET.origin_header()
    assert forwarded.handled_bytes() != PACKET.handled_bytes()


@pytest.mark.parametrize(
    "change",
    [
        {"group_spi": 1}, {"epoch": 3}, {"sender_spi": 1}, {"seq": 8},
        {"sender": "h2"}, {"kind": DataKind.SENDER_KEY}, {"group": "239.1.1.2"},
    ],
)
def test_origin_fields_are_signed(change):
    changed = dataclasses.replace(PACKET, **change)

    assert changed.signed_bytes() != PACKET.signed_bytes()
    assert changed.origin_header() != PACKET.origin_header()


def test_ciphertext_is_signed_not_in_header():
    changed = dataclasses.replace(PACKET, ciphertext=b"\x09" * 40)

    assert changed.signed_bytes() != PACKET.signed_bytes()
    assert changed.origin_header() == PACKET.origin_header()


@pytest.mark.parametrize(
    "offset, value",
    [(0, 0x20), (1, 0x01), (2, 0x80), (4, 9)],
)
def test_bad_header_bytes_are_malformed(offset, value):
    datagram = bytearray(PACKET.encode())
    datagram[offset] = value

    with pytest.raises(MalformedMessage):
        DataPacket.decode(bytes(datagram))


def test_trailing_bytes_are_malformed():
    with pytest.raises(MalformedMessage):
        DataPacket.decode(PACKET.encode() + b"\x00")


def test_truncation_is_malformed():
    datagram = PACKET.encode()
    for end in range(len(datagram)):
        with pytest.raises(MalformedMessage):
            DataPacket.decode(datagram[:end])


@given(st.binary(max_size=200))
def test_garbage_raises_only_malformed(data):
    try:
        DataPacket.decode(data)
    except MalformedMessage:
        pass


@given(st.binary(min_size=1, max_size=120))
def test_garbage_after_valid_prefix(data):
    try:
        DataPacket.decode(PACKET.encode()[:40] + data)
    except MalformedMessage:
        pass
