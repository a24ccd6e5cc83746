"""Creating, sealing and opening ``{[grpKey, KEK, SParams]^SK_core}^PK_x``.

The HPKE ``info`` binds each seal to its group and its named recipient, so a
bundle sealed to one node cannot be opened by another, nor relabelled.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .crypto import fingerprint
from .documents import KeyBundle, SignedBundle
from .errors import AuthenticationFailed, MalformedMessage
from .machine import GroupConfig, NodeIdentity, Peer, PeerDirectory
from .messages import SealedBundle

SEAL_LABEL = b"smkd bundle seal\0"


def seal_info(group_address: str, recipient: str) -> bytes:
    return SEAL_LABEL + socket.inet_aton(group_address) + recipient.encode("ascii")


def sign_bundle(
    bundle: KeyBundle, identity: NodeIdentity, group: GroupConfig
) -> SignedBundle:
    """Sign a fresh bundle as the primary core."""
    body = bundle.encode()
    unsigned = SignedBundle(body, identity.name, b"")
    signature = identity.sign(group.suite, unsigned.signed_bytes())
    return SignedBundle(body, identity.name, signature)


def seal_bundle(
    signed: SignedBundle, recipient: Peer, group: GroupConfig
) -> SealedBundle:
    sealed = recipient.seal(signed.encode(), seal_info(group.address, recipient.name))
    return SealedBundle(recipient.name, sealed)


@dataclass(frozen=True)
class OpenedBundle:
    signed: SignedBundle
    bundle: KeyBundle


def open_bundle(
    sealed: SealedBundle,
    identity: NodeIdentity,
    directory: PeerDirectory,
    group: GroupConfig,
    now: float,
) -> OpenedBundle:
    """Open a bundle sealed to this node and authenticate the primary core.

    Raises ``AuthenticationFailed`` (``bad-seal`` when it is not ours or was
    tampered with, ``bad-bundle`` when its signer or content is wrong).
    """
    if sealed.recipient != identity.name:
        raise AuthenticationFailed(
            f"bundle is sealed to {sealed.recipient}", reason="bad-seal"
        )
    plaintext = identity.open(
        group.suite, sealed.sealed, seal_info(group.address, identity.name)
    )
    return verify_signed_bundle(plaintext, directory, group, now)


def verify_signed_bundle(
    plaintext: bytes, directory: PeerDirectory, group: GroupConfig, now: float
) -> OpenedBundle:
    try:
        signed = SignedBundle.decode(plaintext)
        bundle = KeyBundle.decode(signed.body)
    except MalformedMessage as error:
        raise AuthenticationFailed(str(error), reason="bad-bundle") from None
    if signed.signer != group.primary_core:
        raise AuthenticationFailed(
            f"bundle signed by {signed.signer}, not the primary core "
            f"{group.primary_core}",
            reason="bad-bundle",
        )
    core = directory.lookup(signed.signer, group.suite, now, ("core",))
    core.verify(signed.signature, signed.signed_bytes())
    if bundle.group != group.address or bundle.suite != group.suite_code:
        raise AuthenticationFailed("bundle is for another group", reason="bad-bundle")
    if bundle.not_after < now:
        raise AuthenticationFailed(
            f"bundle epoch {bundle.epoch} expired at {bundle.not_after}",
            reason="expired-key",
        )
    return OpenedBundle(signed, bundle)


def key_fields(bundle: KeyBundle) -> dict[str, object]:
    """Trace fields that identify a bundle without revealing it."""
    return {
        "epoch": bundle.epoch,
        "spi": bundle.spi,
        "group_key_fp": fingerprint(bundle.group_key),
        "kek_fp": fingerprint(bundle.kek),
    }
