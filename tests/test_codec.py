"""The bounds-checked reader and writer, and the Internet checksum."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.codec import Reader, Writer, check_name, internet_checksum
from node.errors import MalformedMessage

names = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)


@given(
    u8=st.integers(0, 0xFF),
    u16=st.integers(0, 0xFFFF),
    u32=st.integers(0, 0xFFFF_FFFF),
    u64=st.integers(0, 2**64 - 1),
    blob8=st.binary(max_size=0xFF),
    blob16=st.binary(max_size=600),
    blob32=st.binary(max_size=600),
    name=names,
    many=st.lists(names, max_size=5).map(tuple),
    flag=st.booleans(),
    octets=st.tuples(*[st.integers(0, 255)] * 4),
)
def test_fields_round_trip(
    u8, u16, u32, u64, blob8, blob16, blob32, name, many, flag, octets
):
    address = ".".join(str(octet) for octet in octets)
    w = Writer()
    w.push_u8(u8)
    w.push_u16(u16)
    w.push_u32(u32)
    w.push_u64(u64)
    w.push_blob8(blob8)
    w.push_blob16(blob16)
    w.push_blob32(blob32)
    w.push_name(name)
    w.push_names(many)
    w.push_bool(flag)
    w.push_address(address)

    r = Reader(w.getvalue())
    assert r.pull_u8() == u8
    assert r.pull_u16() == u16
    assert r.pull_u32() == u32
    assert r.pull_u64() == u64
    assert r.pull_blob8() == blob8
    assert r.pull_blob16() == blob16
    assert r.pull_blob32() == blob32
    assert r.pull_name() == name
    assert r.pull_names() == many
    assert r.pull_bool() is flag
    assert r.pull_address() == address
    assert r.at_end()
    r.expect_end("the test fields")


def test_writer_is_big_endian():
    w = Writer()
    w.push_u16(0x0102)
    w.push_u32(0x03040506)
    w.push_u64(0x0708)

    assert w.getvalue() == bytes([1, 2, 3, 4, 5, 6]) + bytes(6) + bytes([7, 8])
    assert len(w) == 14


@pytest.mark.parametrize(
    "pull, data",
    [
        (Reader.pull_u8, b""),
        (Reader.pull_u16, b"\x01"),
        (Reader.pull_u32, b"\x01\x02\x03"),
        (Reader.pull_u64, b"\x00" * 7),
        (Reader.pull_address, b"\x7f\x00\x01"),
        (Reader.pull_blob8, b"\x03ab"),
        (Reader.pull_blob16, b"\x00\x05abcd"),
        (Reader.pull_blob32, b"\x00\x00\x00\x02a"),
        (Reader.pull_name, b"\x04abc"),
    ],
)
def test_read_past_end_is_malformed(pull, data):
    with pytest.raises(MalformedMessage):
        pull(Reader(data))


def test_reader_stops_at_its_end_offset():
    r = Reader(b"\x01\x02\x03\x04", start=1, end=3)

    assert r.pull_u16() == 0x0203
    assert r.at_end()
    with pytest.raises(MalformedMessage):
        r.pull_u8()


def test_negative_length_is_malformed():
    with pytest.raises(MalformedMessage):
        Reader(b"abc").pull_bytes(-1)


def test_failed_read_consumes_nothing():
    r = Reader(b"\x00\x09abc")

    with pytest.raises(MalformedMessage):
        r.pull_blob16()
    assert r.position == 2
    assert r.remaining() == 3


def test_trailing_bytes_are_malformed():
    r = Reader(b"\x01\x02")
    r.pull_u8()

    with pytest.raises(MalformedMessage, match="1 trailing bytes after the field"):
        r.expect_end("the field")


@pytest.mark.parametrize(
    "raw",
    [b"", b"has space", b"semi;colon", b"x" * 65, "caf\u00e9".encode("latin-1")],
)
def test_invalid_name_is_malformed(raw):
    w = Writer()
    w.push_blob8(raw)

    with pytest.raises(MalformedMessage):
        Reader(w.getvalue()).pull_name()


def test_check_name_returns_valid_name():
    assert check_name("router-1.lan_2") == "router-1.lan_2"


def test_lying_name_count_is_malformed():
    # 1000 names need at least 2000 bytes, and only 4 follow the count
    data = (1000).to_bytes(2, "big") + b"\x01a\x01b"

    with pytest.raises(MalformedMessage, match="cannot fit"):
        Reader(data).pull_names()


@pytest.mark.parametrize("value", [2, 0x80, 0xFF])
def test_invalid_flag_is_malformed(value):
    with pytest.raises(MalformedMessage):
        Reader(bytes([value])).pull_bool()


def test_oversized_blob_is_rejected_on_write():
    with pytest.raises(ValueError):
        Writer().push_blob8(bytes(256))
    with pytest.raises(ValueError):
        Writer().push_blob16(bytes(0x10000))


def test_checksum_matches_rfc1071_example():
    # RFC 1071 section 3: these bytes sum to ddf2, whose complement is 220d
    data = bytes.fromhex("0001f203f4f5f6f7")

    assert internet_checksum(data) == 0x220D


def test_checksum_pads_odd_length_with_zero():
    assert internet_checksum(b"\x12\x34\x56") == internet_checksum(b"\x12\x34\x56\x00")


@given(st.binary(max_size=300).map(lambda b: b + b"\0\0"))
def test_checksum_in_place_sums_to_zero(data):
    # a datagram that contains its own checksum verifies to zero
    body = data if len(data) % 2 == 0 else data + b"\0"
    checksum = internet_checksum(body)
    stamped = body[:-2] + checksum.to_bytes(2, "big")

    assert internet_checksum(stamped) == 0
