"""Packet handles: tags per direction, rejection paths and erasure."""

from __future__ import annotations

import pytest
from test_figure1 import holds_bytes

from node.errors import AuthenticationFailed, ConfigError
from node.handles import HANDLE_SIZE, SECRET_SIZE, HandleTable, seal_info

SECRET = bytes(range(SECRET_SIZE))
PACKET = b"a data packet"


def linked() -> tuple[HandleTable, HandleTable]:
    parent, child = HandleTable("B"), HandleTable("A")
    parent.set("A", SECRET)
    child.set("B", SECRET)
    return parent, child


def reason_of(table: HandleTable, neighbour: str, packet: bytes, handle: bytes) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        table.verify(neighbour, packet, handle)
    return caught.value.reason


def test_handle_verifies_at_the_other_end():
    parent, child = linked()

    handle = parent.tag("A", PACKET)

    assert len(handle) == HANDLE_SIZE
    child.verify("B", PACKET, handle)


def test_handle_differs_per_direction():
    parent, child = linked()

    assert parent.tag("A", PACKET) != child.tag("B", PACKET)


def test_reflected_handle_is_rejected():
    parent, _ = linked()
    handle = parent.tag("A", PACKET)

    # B's own packet sent back to B with B's tag
    assert reason_of(parent, "A", PACKET, handle) == "bad-handle"


def test_altered_packet_is_rejected():
    parent, child = linked()
    handle = parent.tag("A", PACKET)

    assert reason_of(child, "B", PACKET + b"!", handle) == "bad-handle"


def test_altered_handle_is_rejected():
    parent, child = linked()
    handle = bytearray(parent.tag("A", PACKET))
    handle[0] ^= 1

    assert reason_of(child, "B", PACKET, bytes(handle)) == "bad-handle"


def test_short_handle_is_rejected():
    parent, child = linked()

    assert reason_of(child, "B", PACKET, parent.tag("A", PACKET)[:8]) == "bad-handle"


def test_handle_under_another_secret_is_rejected():
    parent, child = linked()
    parent.set("A", bytes(SECRET_SIZE))
    parent.set("A", b"\x01" * SECRET_SIZE)

    assert reason_of(child, "B", PACKET, parent.tag("A", PACKET)) == "bad-handle"


def test_replaced_secret_is_still_accepted():
    parent, child = linked()
    in_flight = parent.tag("A", PACKET)
    new = b"\x05" * SECRET_SIZE

    parent.set("A", new)
    child.set("B", new)

    child.verify("B", PACKET, in_flight)
    child.verify("B", PACKET, parent.tag("A", PACKET))


def test_secret_replaced_twice_is_rejected():
    parent, child = linked()
    in_flight = parent.tag("A", PACKET)

    child.set("B", b"\x05" * SECRET_SIZE)
    child.set("B", b"\x06" * SECRET_SIZE)

    assert reason_of(child, "B", PACKET, in_flight) == "bad-handle"


def test_unknown_neighbour_has_no_handle():
    _, child = linked()

    assert reason_of(child, "C", PACKET, bytes(HANDLE_SIZE)) == "no-handle"
    with pytest.raises(ConfigError):
        child.tag("C", PACKET)


def test_dropped_secret_is_overwritten():
    parent, _ = linked()
    parent.set("A", b"\x05" * SECRET_SIZE)

    parent.drop("A")

    assert "A" not in parent
    assert not holds_bytes(parent, SECRET)


def test_retain_keeps_only_named_neighbours():
    table = HandleTable("B")
    for name in ("A", "C", "h"):
        table.set(name, SECRET)

    table.retain({"A"})

    assert table.neighbours() == {"A"}


def test_secret_size_is_checked():
    with pytest.raises(ConfigError):
        HandleTable("B").set("A", b"short")


def test_seal_info_binds_both_ends():
    assert seal_info("239.1.1.1", "B", "A") != seal_info("239.1.1.1", "A", "B")
    assert seal_info("239.1.1.1", "B", "A") != seal_info("239.1.1.2", "B", "A")
