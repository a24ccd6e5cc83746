"""The signed documents that travel inside smkd's security TLVs.

RFC 1949 names them: tokens (appendix A), the group access control list
signed by the group initiator (section 6.1), and the
``[grpKey, KEK, SParams]^SK_core`` key bundle that the primary core signs and
every GKDC seals to the next hop (section 6.2). Each has its encoding and
decoding side by side; signatures cover the exact encoded body.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass, field

from .codec import Reader, Writer
from .errors import MalformedMessage

NONCE_SIZE = 16

# ACL entries are host names or shell-style patterns such as ``h-*``, so that
# an inclusion list for thousands of hosts still fits in one datagram.
_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]]{1,64}")

HOST_TOKEN_LABEL = b"smkd host token\0"
ACL_LABEL = b"smkd group acl\0"
BUNDLE_LABEL = b"smkd key bundle\0"


@dataclass(frozen=True)
class Token:
    """A router's token ``[t, r, recipient]``; the message carrying it is signed."""

    sender: str
    recipient: str
    timestamp_ms: int
    nonce: bytes

    def encode(self, w: Writer) -> None:
        w.push_u64(self.timestamp_ms)
        w.push_bytes(self.nonce)
        w.push_name(self.sender)
        w.push_name(self.recipient)

    @classmethod
    def decode(cls, r: Reader) -> Token:
        timestamp_ms = r.pull_u64()
        nonce = r.pull_bytes(NONCE_SIZE)
        sender = r.pull_name("token sender")
        recipient = r.pull_name("token recipient")
        return cls(sender, recipient, timestamp_ms, nonce)


@dataclass(frozen=True)
class HostToken:
    """A host's token ``[t, r]^SK_h``: no recipient, signed by the host.

    The host cannot tell which GKDC will acknowledge its join, so its token names
    no recipient (RFC 1949, section 6.2); it names the group instead.
    """

    host: str
    group: str
    timestamp_ms: int
    nonce: bytes
    suite: int
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        w = Writer()
        w.push_bytes(HOST_TOKEN_LABEL)
        self._encode_fields(w)
        return w.getvalue()

    def _encode_fields(self, w: Writer) -> None:
        w.push_u64(self.timestamp_ms)
        w.push_bytes(self.nonce)
        w.push_name(self.host)
        w.push_address(self.group)
        w.push_u8(self.suite)

    def encode(self, w: Writer) -> None:
        self._encode_fields(w)
        w.push_blob16(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> HostToken:
        timestamp_ms = r.pull_u64()
        nonce = r.pull_bytes(NONCE_SIZE)
        host = r.pull_name("host")
        group = r.pull_address()
        suite = r.pull_u8()
        signature = r.pull_blob16()
        return cls(host, group, timestamp_ms, nonce, suite, signature)


class AclMode(enum.IntEnum):
    INCLUDE = 1
    EXCLUDE = 2


@dataclass(frozen=True)
class GroupAcl:
    """The group access control list and the group policy that travels with it.

    ``trusted_routers`` is the optional trusted-router ACL (section 6.1):
    ``None`` lets every router become a GKDC. ``strict`` selects section 7's
    mode, in which only cores authenticate joins and hold keys. ``central``
    selects the central KDC that section 4 argues does not scale: the primary
    core authenticates and keys every joining host itself, and no router,
    secondary cores included, holds keys.
    """

    group: str
    serial: int
    mode: AclMode
    hosts: tuple[str, ...]
    not_before: int
    not_after: int
    initiator: str
    suite: int
    key_lifetime: int
    strict: bool = False
    trusted_routers: tuple[str, ...] | None = None
    central: bool = False

    def admits(self, host: str) -> bool:
        listed = any(fnmatch.fnmatchcase(host, entry) for entry in self.hosts)
        return listed if self.mode is AclMode.INCLUDE else not listed

    def may_hold_keys(self, router: str, role: str) -> bool:
        """Return whether ``router`` (role router or core) may become a GKDC."""
        if self.central:
            return False
        if self.strict and role != "core":
            return False
        if self.trusted_routers is None:
            return True
        return router in self.trusted_routers

    def encode(self) -> bytes:
        w = Writer()
        w.push_address(self.group)
        w.push_u32(self.serial)
        w.push_u8(self.mode)
        w.push_u64(self.not_before)
        w.push_u64(self.not_after)
        w.push_name(self.initiator)
        w.push_u8(self.suite)
        w.push_u32(self.key_lifetime)
        w.push_bool(self.strict)
        _push_patterns(w, self.hosts)
        w.push_bool(self.trusted_routers is not None)
        if self.trusted_routers is not None:
            w.push_names(self.trusted_routers)
        w.push_bool(self.central)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> GroupAcl:
        r = Reader(data)
        group = r.pull_address()
        serial = r.pull_u32()
        mode = _pull_mode(r)
        not_before = r.pull_u64()
        not_after = r.pull_u64()
        initiator = r.pull_name("initiator")
        suite = r.pull_u8()
        key_lifetime = r.pull_u32()
        strict = r.pull_bool()
        hosts = _pull_patterns(r)
        trusted = r.pull_names("trusted router") if r.pull_bool() else None
        central = r.pull_bool()
        r.expect_end("the group ACL")
        return cls(
            group, serial, mode, hosts, not_before, not_after, initiator,
            suite, key_lifetime, strict, trusted, central,
        )


def _pull_mode(r: Reader) -> AclMode:
    value = r.pull_u8()
    try:
        return AclMode(value)
    except ValueError:
        raise MalformedMessage(f"unknown ACL mode {value}") from None


def _push_patterns(w: Writer, patterns: tuple[str, ...]) -> None:
    w.push_u16(len(patterns))
    for pattern in patterns:
        w.push_blob8(pattern.encode("ascii"))


def _pull_patterns(r: Reader) -> tuple[str, ...]:
    count = r.pull_u16()
    if count * 2 > r.remaining():
        raise MalformedMessage(f"{count} ACL entries cannot fit in the field")
    patterns = []
    for _ in range(count):
        raw = r.pull_blob8()
        text = raw.decode("ascii", errors="replace")
        if not _PATTERN.fullmatch(text):
            raise MalformedMessage(f"invalid ACL entry {text!r}")
        patterns.append(text)
    return tuple(patterns)


@dataclass(frozen=True)
class SignedAcl:
    """``[ACL]^SK_initiator``: the encoded ACL body and the initiator's signature.

    The body is kept as received, so verification never depends on
    re-encoding the decoded fields.
    """

    body: bytes
    signature: bytes
    acl: GroupAcl = field(compare=False, repr=False)

    @classmethod
    def create(cls, acl: GroupAcl, signature: bytes) -> SignedAcl:
        return cls(acl.encode(), signature, acl)

    def signed_bytes(self) -> bytes:
        return ACL_LABEL + self.body

    def encode(self, w: Writer) -> None:
        w.push_blob16(self.body)
        w.push_blob16(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> SignedAcl:
        body = r.pull_blob16()
        signature = r.pull_blob16()
        return cls(body, signature, GroupAcl.decode(body))


@dataclass(frozen=True)
class KeyBundle:
    """The (group key, KEK, SA parameters) bundle that a GKDC hands on.

    The SA parameters are the SPI, the crypto suite (which fixes the
    algorithms), the epoch of the group key and its expiry time.
    """

    group: str
    epoch: int
    spi: int
    suite: int
    not_after: int
    group_key: bytes = field(repr=False)
    kek: bytes = field(repr=False)

    def encode(self) -> bytes:
        w = Writer()
        w.push_address(self.group)
        w.push_u32(self.epoch)
        w.push_u32(self.spi)
        w.push_u8(self.suite)
        w.push_u64(self.not_after)
        w.push_blob8(self.group_key)
        w.push_blob8(self.kek)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> KeyBundle:
        r = Reader(data)
        bundle = cls(
            group=r.pull_address(),
            epoch=r.pull_u32(),
            spi=r.pull_u32(),
            suite=r.pull_u8(),
            not_after=r.pull_u64(),
            group_key=r.pull_blob8(),
            kek=r.pull_blob8(),
        )
        r.expect_end("the key bundle")
        return bundle


@dataclass(frozen=True)
class SignedBundle:
    """``[grpKey, KEK, SParams]^SK_core``: the plaintext that gets sealed."""

    body: bytes = field(repr=False)
    signer: str
    signature: bytes = field(repr=False)

    def signed_bytes(self) -> bytes:
        return BUNDLE_LABEL + self.body

    def encode(self) -> bytes:
        w = Writer()
        w.push_blob16(self.body)
        w.push_name(self.signer)
        w.push_blob16(self.signature)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> SignedBundle:
        r = Reader(data)
        body = r.pull_blob16()
        signer = r.pull_name("bundle signer")
        signature = r.pull_blob16()
        r.expect_end("the signed key bundle")
        return cls(body, signer, signature)
