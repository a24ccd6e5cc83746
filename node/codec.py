"""Bounds-checked byte reader and writer, and the Internet checksum.

Every ``pull_*`` method checks the length it needs before reading, so a
truncated or lying datagram raises :class:`MalformedMessage` and nothing else.
"""

from __future__ import annotations

import re
import socket
import struct
import sys

from .errors import MalformedMessage

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid node or group name, else raise."""
    if not NAME_PATTERN.fullmatch(name):
        raise MalformedMessage(f"invalid {what} {name!r}")
    return name


class Reader:
    """Reads big-endian fields from a datagram, never past its end."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None):
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def position(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def expect_end(self, what: str) -> None:
        if self._pos != self._end:
            extra = self._end - self._pos
            raise MalformedMessage(f"{extra} trailing bytes after {what}")

    def pull_bytes(self, length: int) -> bytes:
        if length < 0 or self._pos + length > self._end:
            raise MalformedMessage(
                f"needs {length} bytes at offset {self._pos}, "
                f"{self._end - self._pos} left"
            )
        start = self._pos
        self._pos += length
        return bytes(self._data[start : self._pos])

    def pull_u8(self) -> int:
        return self.pull_bytes(1)[0]

    def pull_u16(self) -> int:
        return _U16.unpack(self.pull_bytes(2))[0]

    def pull_u32(self) -> int:
        return _U32.unpack(self.pull_bytes(4))[0]

    def pull_u64(self) -> int:
        return _U64.unpack(self.pull_bytes(8))[0]

    def pull_address(self) -> str:
        return socket.inet_ntoa(self.pull_bytes(4))

    def pull_blob8(self) -> bytes:
        return self.pull_bytes(self.pull_u8())

    def pull_blob16(self) -> bytes:
        return self.pull_bytes(self.pull_u16())

    def pull_blob32(self) -> bytes:
        return self.pull_bytes(self.pull_u32())

    def pull_name(self, what: str = "name") -> str:
        raw = self.pull_blob8()
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedMessage(f"{what} is not ASCII") from None
        return check_name(name, what)

    def pull_names(self, what: str = "name") -> tuple[str, ...]:
        count = self.pull_u16()
        # each name takes at least two bytes, so a lying count fails fast
        if count * 2 > self.remaining():
            raise MalformedMessage(f"{count} {what}s cannot fit in the field")
        return tuple(self.pull_name(what) for _ in range(count))

    def pull_bool(self) -> bool:
        value = self.pull_u8()
        if value > 1:
            raise MalformedMessage(f"flag byte {value} is neither 0 nor 1")
        return value == 1


class Writer:
    """Builds a datagram from big-endian fields; the pair of :class:`Reader`."""

    def __init__(self) -> None:
        self._parts = bytearray()

    def __len__(self) -> int:
        return len(self._parts)

    def getvalue(self) -> bytes:
        return bytes(self._parts)

    def push_bytes(self, value: bytes) -> None:
        self._parts += value

    def push_u8(self, value: int) -> None:
        self._parts.append(value)

    def push_u16(self, value: int) -> None:
        self._parts += _U16.pack(value)

    def push_u32(self, value: int) -> None:
        self._parts += _U32.pack(value)

    def push_u64(self, value: int) -> None:
        self._parts += _U64.pack(value)

    def push_address(self, value: str) -> None:
        self._parts += socket.inet_aton(value)

    def push_blob8(self, value: bytes) -> None:
        _check_length(value, 0xFF)
        self.push_u8(len(value))
        self._parts += value

    def push_blob16(self, value: bytes) -> None:
        _check_length(value, 0xFFFF)
        self.push_u16(len(value))
        self._parts += value

    def push_blob32(self, value: bytes) -> None:
        self.push_u32(len(value))
        self._parts += value

    def push_name(self, value: str) -> None:
        self.push_blob8(value.encode("ascii"))

    def push_names(self, values: tuple[str, ...]) -> None:
        self.push_u16(len(values))
        for value in values:
            self.push_name(value)

    def push_bool(self, value: bool) -> None:
        self.push_u8(1 if value else 0)


def _check_length(value: bytes, limit: int) -> None:
    if len(value) > limit:
        raise ValueError(f"field of {len(value)} bytes exceeds {limit}")


def internet_checksum(data: bytes) -> int:
    """Return the one's complement of the one's complement sum (RFC 1071)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"

    # the sum is byte-order independent up to a final swap (RFC 1071, 2.B)
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF
