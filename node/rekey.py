"""The re-key notice that the primary core sends down the tree (RFC 1949 section 6.1).

"The primary core also creates a key encrypting key (KEK) which is used for
re-keying the group just prior to an old key exceeding its lifetime." A
scheduled re-key carries the next ``[grpKey, KEK, SParams]^SK_core`` bundle
encrypted with AES-128-GCM under the current KEK. An eviction cannot use the
KEK, which the evicted member holds too. Its notice carries the initiator's
new ACL and no bundle; the bundle travels in branch wraps instead, one per
GKDC on the way down, each under the new root of that GKDC's key tree
(node/lkh.py and node/keyserver.py).

The whole notice is signed by the primary core, so every router can check it
before passing it on, and a forged or replayed notice goes no further than
the first hop. ``activation_ms`` is how long after receipt a member starts
sending under the new key, so that the notice reaches everyone first, and
``grace_ms`` how long after activation the previous key stays accepted.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .codec import Reader, Writer
from .documents import SignedAcl
from .errors import AuthenticationFailed, MalformedMessage
from .lkh import LkhUpdate

if TYPE_CHECKING:
    # machine.py imports the message codecs, which import this module
    from .machine import GroupConfig, NodeIdentity, PeerDirectory

REKEY_LABEL = b"smkd rekey notice\x00"
BUNDLE_WRAP_LABEL = b"smkd rekey bundle\x00"
NONCE_SIZE = 12


class RekeyKind(enum.IntEnum):
    """The reason for a re-key, which fixes the key that the bundle is under."""

    SCHEDULED = 1
    EVICTION = 2


@dataclass(frozen=True)
class RekeyNotice:
    """The next epoch, its sealed bundle (scheduled re-keys) and how to move to it."""

    group: str
    epoch: int
    kind: RekeyKind
    issued_ms: int
    activation_ms: int
    grace_ms: int
    sealed_bundle: bytes = field(default=b"", repr=False)
    acl: SignedAcl | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        w = Writer()
        w.push_address(self.group)
        w.push_u32(self.epoch)
        w.push_u8(self.kind)
        w.push_u64(self.issued_ms)
        w.push_u32(self.activation_ms)
        w.push_u32(self.grace_ms)
        w.push_blob16(self.sealed_bundle)
        w.push_bool(self.acl is not None)
        if self.acl is not None:
            self.acl.encode(w)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> RekeyNotice:
        r = Reader(data)
        group = r.pull_address()
        epoch = r.pull_u32()
        kind = _pull_kind(r)
        issued_ms = r.pull_u64()
        activation_ms = r.pull_u32()
        grace_ms = r.pull_u32()
        sealed = r.pull_blob16()
        acl = SignedAcl.decode(r) if r.pull_bool() else None
        r.expect_end("the re-key notice")
        if (kind is RekeyKind.SCHEDULED) != bool(sealed):
            raise MalformedMessage(
                "a scheduled re-key carries the sealed bundle, an eviction does not"
            )
        if kind is RekeyKind.EVICTION and acl is None:
            raise MalformedMessage("an eviction carries the new ACL")
        return cls(group, epoch, kind, issued_ms, activation_ms, grace_ms, sealed, acl)


def _pull_kind(r: Reader) -> RekeyKind:
    value = r.pull_u8()
    try:
        return RekeyKind(value)
    except ValueError:
        raise MalformedMessage(f"unknown re-key kind {value}") from None


@dataclass(frozen=True)
class SignedRekey:
    """``[notice]^SK_primary``, forwarded unchanged from hop to hop."""

    body: bytes = field(repr=False)
    signer: str
    signature: bytes = field(repr=False)
    notice: RekeyNotice = field(compare=False, repr=False)

    @classmethod
    def sign(
        cls, notice: RekeyNotice, identity: NodeIdentity, suite_name: str
    ) -> SignedRekey:
        body = notice.encode()
        signature = identity.sign(suite_name, REKEY_LABEL + body)
        return cls(body, identity.name, signature, notice)

    def signed_bytes(self) -> bytes:
        return REKEY_LABEL + self.body

    def encode(self, w: Writer) -> None:
        w.push_blob32(self.body)
        w.push_name(self.signer)
        w.push_blob16(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> SignedRekey:
        body = r.pull_blob32()
        signer = r.pull_name("re-key signer")
        signature = r.pull_blob16()
        return cls(body, signer, signature, RekeyNotice.decode(body))


def verify_rekey(
    signed: SignedRekey, directory: PeerDirectory, group: GroupConfig, now: float
) -> RekeyNotice:
    """Check that the primary core signed a re-key notice for this group.

    Raises ``AuthenticationFailed`` with reason ``not-primary`` for any other
    signer, ``bad-signature`` when the signature fails and ``bad-rekey`` for
    another group.
    """
    if signed.signer != group.primary_core:
        raise AuthenticationFailed(
            f"re-key notice signed by {signed.signer}, not the primary core "
            f"{group.primary_core}",
            reason="not-primary",
        )
    core = directory.lookup(signed.signer, group.suite, now, ("core",))
    core.verify(signed.signature, signed.signed_bytes())
    if signed.notice.group != group.address:
        raise AuthenticationFailed("re-key notice for another group", reason="bad-rekey")
    return signed.notice


MAX_WRAPS = 64


@dataclass(frozen=True)
class BranchWrap:
    """One GKDC's part of an eviction: its key tree update and the bundle under it.

    ``sealed_bundle`` is the signed bundle of the new epoch, encrypted under
    the new root key of ``owner``'s key tree.
    """

    owner: str
    update: LkhUpdate = field(repr=False)
    sealed_bundle: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.push_name(self.owner)
        self.update.encode(w)
        w.push_blob16(self.sealed_bundle)

    @classmethod
    def decode(cls, r: Reader) -> BranchWrap:
        owner = r.pull_name("branch wrap owner")
        return cls(owner, LkhUpdate.decode(r), r.pull_blob16())


@dataclass(frozen=True)
class BranchWraps:
    """The branch wraps of every GKDC an eviction passed, the primary core's first."""

    wraps: tuple[BranchWrap, ...]

    def encode(self, w: Writer) -> None:
        if len(self.wraps) > MAX_WRAPS:
            raise ValueError(f"{len(self.wraps)} branch wraps exceed {MAX_WRAPS}")
        w.push_u8(len(self.wraps))
        for wrap in self.wraps:
            wrap.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> BranchWraps:
        count = r.pull_u8()
        if count > MAX_WRAPS:
            raise MalformedMessage(f"{count} branch wraps exceed {MAX_WRAPS}")
        return cls(tuple(BranchWrap.decode(r) for _ in range(count)))


def _wrap_aad(group: str, epoch: int, kind: RekeyKind, owner: str) -> bytes:
    return (
        BUNDLE_WRAP_LABEL
        + socket.inet_aton(group)
        + epoch.to_bytes(4, "big")
        + bytes([kind])
        + owner.encode("ascii")
    )


def seal_bundle_under(
    key: bytes, plaintext: bytes, group: str, epoch: int, kind: RekeyKind,
    nonce: bytes, owner: str = "",
) -> bytes:
    """Encrypt a signed bundle under the KEK or a key tree's root key.

    ``owner`` names the GKDC whose key tree the key belongs to, for branch
    wraps; the KEK has none.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce of {len(nonce)} bytes, expected {NONCE_SIZE}")
    aad = _wrap_aad(group, epoch, kind, owner)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_bundle_under(
    key: bytes, sealed: bytes, group: str, epoch: int, kind: RekeyKind,
    owner: str = "",
) -> bytes:
    """Decrypt what :func:`seal_bundle_under` made; raise ``AuthenticationFailed``.

    The reason is ``bad-seal``: the bundle is under another key, for another
    epoch or owner, or altered.
    """
    nonce, ciphertext = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:]
    try:
        aad = _wrap_aad(group, epoch, kind, owner)
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise AuthenticationFailed(
            f"the epoch {epoch} bundle does not open under this key", reason="bad-seal"
        ) from None
