"""Sender-specific keys and origin authentication (RFC 1949 sections 5 and 8).

A group key tells a receiver only that the sender is a member. For origin
authentication each sender makes a signing key pair of the group's suite for
the session (its sender key) and signs every data packet with it. Receivers
learn the public half from an announcement that travels on the data path,
encrypted under the group key:

- a member sender announces ``{[sender_key, senderSparams]^SK_sender}^group_key``
  itself, signed with its certificate key;
- a non-member sender, which holds no group key, first runs an authenticated
  key exchange with the primary core (standing in for Photuris or ISAKMP).
  The primary, after checking the ACL, creates a session key for the
  sender's data and announces
  ``{[sender_key, session_key, senderSparams]^SK_primary}^group_key``.

The key exchange: the sender sends a request signed with its certificate key
that carries its sender SPI, the public half of its sender key, a nonce and a
fresh HPKE public key. The primary answers, signed with its own certificate
key, with the session key sealed to that fresh HPKE key. The HPKE ``info``
binds the group, the sender, the SPI and the request's nonce and keys, so
the grant opens only for the request it answers. The sender erases the
fresh private key after opening, so later compromise of either certificate
key does not reveal the session key.
"""

from __future__ import annotations

import hashlib
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from .codec import Reader, Writer
from .crypto import CryptoSuite, KemPrivateKey, SigningKey, suite_by_code
from .documents import NONCE_SIZE, GroupAcl
from .errors import AuthenticationFailed, MalformedMessage
from .sa import KEY_SIZE, DataKey

if TYPE_CHECKING:
    # machine.py imports the message codecs, which import this module
    from .machine import GroupConfig, NodeIdentity, PeerDirectory

SENDER_KEY_LABEL = b"smkd sender key\x00"
GRANT_LABEL = b"smkd sender grant\x00"
MAX_SENDERS = 1024


def public_bytes(key: SigningKey) -> bytes:
    """Return the raw public half of a signing key."""
    return key.public_key().public_bytes_raw()


def load_verifying_key(suite: CryptoSuite, raw: bytes) -> Any:
    """Decode a raw public signing key of ``suite``; raise ``MalformedMessage``."""
    kind = {"Ed25519": ed25519.Ed25519PublicKey, "ML-DSA-65": mldsa.MLDSA65PublicKey}
    try:
        return kind[suite.signature_name].from_public_bytes(raw)
    except ValueError as error:
        raise MalformedMessage(
            f"invalid {suite.signature_name} sender key: {error}"
        ) from None


@dataclass(frozen=True)
class SenderKey:
    """A sender key and its security parameters (senderSparams).

    ``verify_key`` is the public half of the sender's signing key. A
    non-member sender's data is encrypted under ``session_key``, and a member
    sender's under the group key, so its ``session_key`` is empty.
    ``not_after`` is in seconds since the Unix epoch.
    """

    group: str
    sender: str
    sender_spi: int
    suite: int
    issued_ms: int
    not_after: int
    verify_key: bytes = field(repr=False)
    session_key: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        w = Writer()
        w.push_address(self.group)
        w.push_name(self.sender)
        w.push_u32(self.sender_spi)
        w.push_u8(self.suite)
        w.push_u64(self.issued_ms)
        w.push_u64(self.not_after)
        w.push_blob16(self.verify_key)
        w.push_blob8(self.session_key)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> SenderKey:
        r = Reader(data)
        key = cls(
            group=r.pull_address(),
            sender=r.pull_name("sender"),
            sender_spi=r.pull_u32(),
            suite=r.pull_u8(),
            issued_ms=r.pull_u64(),
            not_after=r.pull_u64(),
            verify_key=r.pull_blob16(),
            session_key=r.pull_blob8(),
        )
        r.expect_end("the sender key")
        if key.session_key and len(key.session_key) != KEY_SIZE:
            raise MalformedMessage(f"session key of {len(key.session_key)} bytes")
        return key


@dataclass(frozen=True)
class SignedSenderKey:
    """``[sender_key, senderSparams]^SK_signer``, the plaintext of an announcement."""

    body: bytes = field(repr=False)
    signer: str
    signature: bytes = field(repr=False)

    @classmethod
    def sign(
        cls, key: SenderKey, identity: NodeIdentity, suite_name: str
    ) -> SignedSenderKey:
        body = key.encode()
        signature = identity.sign(suite_name, SENDER_KEY_LABEL + body)
        return cls(body, identity.name, signature)

    def signed_bytes(self) -> bytes:
        return SENDER_KEY_LABEL + self.body

    def encode(self) -> bytes:
        w = Writer()
        w.push_blob16(self.body)
        w.push_name(self.signer)
        w.push_blob16(self.signature)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> SignedSenderKey:
        r = Reader(data)
        signed = cls(r.pull_blob16(), r.pull_name("sender key signer"), r.pull_blob16())
        r.expect_end("the signed sender key")
        return signed


# the key exchange of a non-member sender with the primary core


@dataclass(frozen=True)
class SenderKeyRequest:
    """A non-member sender's request for a session key, in its signed message."""

    sender_spi: int
    nonce: bytes
    verify_key: bytes = field(repr=False)
    exchange_key: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.push_u32(self.sender_spi)
        w.push_bytes(self.nonce)
        w.push_blob16(self.verify_key)
        w.push_blob16(self.exchange_key)

    @classmethod
    def decode(cls, r: Reader) -> SenderKeyRequest:
        return cls(r.pull_u32(), r.pull_bytes(NONCE_SIZE), r.pull_blob16(),
                   r.pull_blob16())

    def digest(self) -> bytes:
        w = Writer()
        self.encode(w)
        return hashlib.sha256(w.getvalue()).digest()


@dataclass(frozen=True)
class SenderKeyGrant:
    """The primary core's answer: the session key sealed to the exchange key."""

    sender_spi: int
    not_after: int
    sealed: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.push_u32(self.sender_spi)
        w.push_u64(self.not_after)
        w.push_blob16(self.sealed)

    @classmethod
    def decode(cls, r: Reader) -> SenderKeyGrant:
        return cls(r.pull_u32(), r.pull_u64(), r.pull_blob16())


def grant_info(group: str, sender: str, request: SenderKeyRequest) -> bytes:
    """Return the HPKE ``info`` that binds a grant to the request it answers."""
    return (
        GRANT_LABEL
        + socket.inet_aton(group)
        + sender.encode("ascii")
        + b"\x00"
        + request.digest()
    )


# what a receiver keeps


@dataclass
class KnownSender:
    """A sender key a receiver has verified, ready to check packets with."""

    key: SenderKey
    signer: str
    verifier: Any = field(repr=False)
    session: DataKey | None = field(default=None, repr=False)

    def erase(self) -> None:
        if self.session is not None:
            self.session.erase()
            self.session = None


class SenderKeyTable:
    """The sender keys a receiver knows, one per sender, bounded in number.

    A sender's newer announcement (a later ``issued_ms``) replaces its older
    one, so a replayed old announcement changes nothing.
    """

    def __init__(self, max_senders: int = MAX_SENDERS):
        self.max_senders = max_senders
        self._senders: OrderedDict[str, KnownSender] = OrderedDict()

    def __len__(self) -> int:
        return len(self._senders)

    def __contains__(self, sender: str) -> bool:
        return sender in self._senders

    def senders(self) -> list[str]:
        return list(self._senders)

    def learn(self, key: SenderKey, signer: str, suite: CryptoSuite) -> bool:
        """Keep a verified sender key; return False when it is not newer."""
        current = self._senders.get(key.sender)
        if current is not None and key.issued_ms <= current.key.issued_ms:
            return False
        verifier = load_verifying_key(suite, key.verify_key)
        session = DataKey(key.session_key, key.sender_spi) if key.session_key else None
        self.forget(key.sender)
        self._senders[key.sender] = KnownSender(key, signer, verifier, session)
        while len(self._senders) > self.max_senders:
            _, oldest = self._senders.popitem(last=False)
            oldest.erase()
        return True

    def lookup(self, sender: str, sender_spi: int, now: float) -> KnownSender:
        """Return the sender key a packet names.

        Raises ``AuthenticationFailed`` with reason ``unknown-sender-key``
        when no key of that sender and SPI is known, and ``expired-sender-key``
        when it is past its lifetime.
        """
        known = self._senders.get(sender)
        if known is None or known.key.sender_spi != sender_spi:
            raise AuthenticationFailed(
                f"no sender key of {sender} with SPI {sender_spi:#010x}",
                reason="unknown-sender-key",
            )
        if now > known.key.not_after:
            raise AuthenticationFailed(
                f"the sender key of {sender} expired", reason="expired-sender-key"
            )
        return known

    def spi_of(self, sender: str) -> int | None:
        known = self._senders.get(sender)
        return None if known is None else known.key.sender_spi

    def forget(self, sender: str) -> None:
        known = self._senders.pop(sender, None)
        if known is not None:
            known.erase()

    def retain(self, admitted: Callable[[str], bool]) -> list[str]:
        """Forget senders for which ``admitted(name)`` is false; return them."""
        revoked = [name for name in self._senders if not admitted(name)]
        for name in revoked:
            self.forget(name)
        return revoked

    def clear(self) -> None:
        for name in list(self._senders):
            self.forget(name)


def verify_origin(known: KnownSender, signature: bytes, data: bytes) -> None:
    """Check a packet's signature under its sender key.

    Raises ``AuthenticationFailed`` with reason ``forged-origin``, because a
    member that holds the group key can otherwise pass as any sender.
    """
    suite = suite_by_code(known.key.suite)
    try:
        suite.verify(known.verifier, signature, data)
    except AuthenticationFailed:
        raise AuthenticationFailed(
            f"data claiming to be from {known.key.sender} is not signed by its "
            "sender key",
            reason="forged-origin",
        ) from None


def sender_admitted(acl: GroupAcl, sender: str) -> bool:
    """Return whether the ACL lets ``sender`` send: a listed host or the initiator."""
    return sender == acl.initiator or acl.admits(sender)


def verify_announcement(
    signed: SignedSenderKey,
    packet_sender: str,
    directory: PeerDirectory,
    group: GroupConfig,
    acl: GroupAcl,
    now: float,
) -> SenderKey:
    """Authenticate an announced sender key (RFC 1949 section 8).

    A member signs its own announcement and sends it itself; the primary
    core signs and sends the announcement of a non-member, with the session
    key. Raises ``AuthenticationFailed`` with reason ``bad-sender-key`` for
    any other signer or content, ``sender-not-on-acl`` when the ACL does
    not admit the sender, and ``bad-signature`` when the signature fails.
    """
    try:
        key = SenderKey.decode(signed.body)
    except MalformedMessage as error:
        raise AuthenticationFailed(str(error), reason="bad-sender-key") from None
    if key.group != group.address or key.suite != group.suite_code:
        raise AuthenticationFailed(
            "sender key is for another group or suite", reason="bad-sender-key"
        )

    if signed.signer == key.sender and not key.session_key:
        roles: tuple[str, ...] = ("host", "initiator")
    elif signed.signer == group.primary_core and key.session_key:
        roles = ("core",)
    else:
        raise AuthenticationFailed(
            f"sender key of {key.sender} signed by {signed.signer}: neither the "
            "sender without a session key nor the primary core with one",
            reason="bad-sender-key",
        )
    if packet_sender != signed.signer:
        raise AuthenticationFailed(
            f"{packet_sender} relayed a sender key that {signed.signer} signed",
            reason="bad-sender-key",
        )
    if not sender_admitted(acl, key.sender):
        raise AuthenticationFailed(
            f"the ACL does not admit sender {key.sender}", reason="sender-not-on-acl"
        )

    signer = directory.lookup(signed.signer, group.suite, now, roles)
    signer.verify(signed.signature, signed.signed_bytes())
    if key.not_after < now:
        raise AuthenticationFailed(
            f"the sender key of {key.sender} expired", reason="expired-sender-key"
        )
    return key


def make_grant(
    suite: CryptoSuite,
    group: str,
    sender: str,
    request: SenderKeyRequest,
    session_key: bytes,
    not_after: int,
) -> SenderKeyGrant:
    """Seal a session key to the exchange key of a request, as the primary core.

    Raises ``AuthenticationFailed`` (``malformed``) when the exchange key
    does not decode.
    """
    try:
        exchange = suite.kem_public_from_bytes(request.exchange_key)
    except MalformedMessage as error:
        raise AuthenticationFailed(str(error), reason="malformed") from None
    sealed = suite.seal(exchange, session_key, grant_info(group, sender, request))
    return SenderKeyGrant(request.sender_spi, not_after, sealed)


def open_grant(
    suite: CryptoSuite,
    exchange_private: KemPrivateKey,
    group: str,
    sender: str,
    request: SenderKeyRequest,
    grant: SenderKeyGrant,
) -> bytes:
    """Open the session key of a grant that answers ``request``.

    Raises ``AuthenticationFailed`` with reason ``bad-seal``.
    """
    if grant.sender_spi != request.sender_spi:
        raise AuthenticationFailed(
            "grant names another sender SPI", reason="bad-seal"
        )
    session_key = suite.open(
        exchange_private, grant.sealed, grant_info(group, sender, request)
    )
    if len(session_key) != KEY_SIZE:
        raise AuthenticationFailed(
            f"granted session key is {len(session_key)} bytes", reason="bad-seal"
        )
    return session_key
